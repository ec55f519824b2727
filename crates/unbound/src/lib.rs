//! shieldns-unbound: a small safe wrapper of libunbound, NLnet Labs'
//! validating, caching recursive resolver library, driven from Tokio.
//!
//! This is the workspace's only crate with `unsafe` code: the C API behind
//! [`ffi`], every call with a `// SAFETY:` comment. There is no C code of
//! ours; the library is the system's (`libunbound-dev`, found through
//! pkg-config by `build.rs`).
//!
//! Key design decision: one [`Resolver`] is several libunbound contexts,
//! each with its own background worker thread (`ub_ctx_async(ctx, 1)`) and
//! its own caches, and a query goes to the context picked by a hash of its
//! lower-cased name, so each context's cache owns a share of the name space
//! and no two contexts cache the same answer. Results come back through each
//! context's `ub_fd`, which a Tokio task watches with [`AsyncFd`] and drains
//! with `ub_process`; the library runs the result callback there, which hands
//! the answer (copied out of the library's `ub_result`, then freed) to the
//! waiting future over a oneshot channel.
//!
//! Queries are never cancelled with `ub_cancel`: in thread mode it only
//! flags the query while the worker keeps resolving, and once it succeeds
//! the callback that owns the channel never runs, so the channel would have
//! to be freed by whichever side loses a race. Instead the callback always
//! runs and always frees it; a caller that gave up has dropped the receiver
//! and the answer is discarded (it is still cached by the library).

#![allow(unsafe_code)]

mod ffi;

use std::ffi::{CStr, CString, c_int, c_void};
use std::hash::{BuildHasher, Hasher};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Errors of the libunbound wrapper.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnboundError {
    /// libunbound refused a setting (`ub_ctx_set_option` and friends).
    #[error("libunbound rejected {what}: {reason}")]
    Setting {
        /// The option and value, or the call, at fault.
        what: String,
        /// `ub_strerror` of the error code.
        reason: String,
    },
    /// The context could not be created or finalized (bad settings found
    /// only when libunbound reads them: root hints, trust anchor files).
    #[error("libunbound could not start: {reason}")]
    Init {
        /// Why.
        reason: String,
    },
    /// A setting holds a NUL byte and cannot be passed to C.
    #[error("{what} contains a NUL byte")]
    Nul {
        /// The setting.
        what: String,
    },
    /// Registering the context's descriptor with Tokio failed.
    #[error("cannot watch libunbound's result descriptor: {0}")]
    Io(#[from] std::io::Error),
    /// A query failed inside the library (not a DNS failure: those come back
    /// as an [`Answer`] with rcode SERVFAIL).
    #[error("libunbound query failed: {reason}")]
    Query {
        /// `ub_strerror` of the error code.
        reason: String,
    },
}

/// What a context is built from, applied in this order before the context is
/// finalized. Option names are libunbound's (`unbound.conf(5)`), with or
/// without the trailing colon.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `(name, value)` pairs for `ub_ctx_set_option`.
    pub options: Vec<(String, String)>,
    /// Trust anchors, one DS or DNSKEY record in zone-file format each.
    pub trust_anchors: Vec<String>,
    /// Zone files of DS or DNSKEY trust anchors.
    pub trust_anchor_files: Vec<PathBuf>,
    /// RFC 5011 trust-anchor state files, which libunbound rewrites.
    pub auto_trust_anchor_files: Vec<PathBuf>,
    /// Forward everything to these recursive servers (`addr` or
    /// `addr@port`), in order; empty means recursion.
    pub forwarders: Vec<String>,
    /// Built-in local zones to drop (e.g. `test.`, `invalid.`), so their
    /// names are resolved rather than answered locally.
    pub removed_local_zones: Vec<String>,
    /// libunbound's verbosity (0: errors only), written to stderr.
    pub verbosity: u8,
}

/// One answer, copied out of libunbound's `ub_result`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The DNS rcode (2, SERVFAIL, when resolution failed).
    pub rcode: u16,
    /// The reply in wire format as the library made it (ID 0, RD RA, AD
    /// when secure, an OPT record with DO); empty or a bare header when
    /// resolution failed.
    pub packet: Vec<u8>,
    /// Validated secure.
    pub secure: bool,
    /// Validation failed; the data is still in `packet`.
    pub bogus: bool,
    /// Why validation failed, when it did.
    pub why_bogus: Option<String>,
    /// The answer was NXDOMAIN.
    pub nxdomain: bool,
    /// The answer has data for the question.
    pub havedata: bool,
    /// Smallest TTL of the answer (or the negative TTL).
    pub ttl: u32,
}

/// A libunbound context, owned.
struct Context {
    ptr: NonNull<ffi::UbCtx>,
}

// SAFETY: libunbound(3): "all functions are thread-safe, and a context can
// be used in a threaded (as well as in a non-threaded) environment";
// its own locks (cfglock, qqpipe_lock, rrpipe_lock) guard the context.
unsafe impl Send for Context {}
// SAFETY: as for Send: every function of the API may be called on one
// context from several threads at once.
unsafe impl Sync for Context {}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `ub_ctx_create` and is deleted once, here.
        // Outstanding async queries are killed without their callbacks (their
        // channels leak, which only happens when the resolver is torn down).
        unsafe { ffi::ub_ctx_delete(self.ptr.as_ptr()) }
    }
}

fn strerror(code: c_int) -> String {
    // SAFETY: ub_strerror returns a pointer to a static string for any code.
    let text = unsafe { ffi::ub_strerror(code) };
    if text.is_null() {
        return format!("error {code}");
    }
    // SAFETY: non-null, NUL-terminated, static (see above).
    unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
}

fn c_string(what: &str, value: &str) -> Result<CString, UnboundError> {
    CString::new(value).map_err(|_| UnboundError::Nul { what: what.to_owned() })
}

fn c_path(what: &str, path: &Path) -> Result<CString, UnboundError> {
    c_string(what, &path.to_string_lossy())
}

impl Context {
    /// Creates, configures and finalizes a context in thread mode.
    fn new(settings: &Settings) -> Result<Self, UnboundError> {
        // SAFETY: no preconditions; NULL on failure, checked below.
        let raw = unsafe { ffi::ub_ctx_create() };
        let ptr = NonNull::new(raw).ok_or_else(|| UnboundError::Init {
            reason: "ub_ctx_create failed".into(),
        })?;
        let context = Self { ptr };
        let ctx = context.ptr.as_ptr();
        let check = |what: String, code: c_int| {
            if code == 0 {
                Ok(())
            } else {
                Err(UnboundError::Setting {
                    what,
                    reason: strerror(code),
                })
            }
        };
        // SAFETY: `ctx` is a live context, not yet finalized; 1 selects a
        // background thread rather than a forked process.
        check("ub_ctx_async".into(), unsafe { ffi::ub_ctx_async(ctx, 1) })?;
        // SAFETY: `ctx` is live; the level is a plain integer.
        check("verbosity".into(), unsafe {
            ffi::ub_ctx_debuglevel(ctx, c_int::from(settings.verbosity))
        })?;
        for (name, value) in &settings.options {
            let name = if name.ends_with(':') {
                name.clone()
            } else {
                format!("{name}:")
            };
            let what = format!("option {name} {value}");
            let (c_name, c_value) = (c_string(&what, &name)?, c_string(&what, value)?);
            // SAFETY: `ctx` is live; both strings are NUL-terminated and
            // outlive the call (libunbound copies them).
            check(what, unsafe {
                ffi::ub_ctx_set_option(ctx, c_name.as_ptr(), c_value.as_ptr())
            })?;
        }
        for anchor in &settings.trust_anchors {
            let what = format!("trust anchor {anchor}");
            let c_anchor = c_string(&what, anchor)?;
            // SAFETY: `ctx` is live; the string is copied by the library.
            check(what, unsafe { ffi::ub_ctx_add_ta(ctx, c_anchor.as_ptr()) })?;
        }
        for file in &settings.trust_anchor_files {
            let what = format!("trust anchor file {}", file.display());
            let c_file = c_path(&what, file)?;
            // SAFETY: as above; the file is read at finalize.
            check(what, unsafe { ffi::ub_ctx_add_ta_file(ctx, c_file.as_ptr()) })?;
        }
        for file in &settings.auto_trust_anchor_files {
            let what = format!("auto trust anchor file {}", file.display());
            let c_file = c_path(&what, file)?;
            // SAFETY: as above.
            check(what, unsafe { ffi::ub_ctx_add_ta_autr(ctx, c_file.as_ptr()) })?;
        }
        for forwarder in &settings.forwarders {
            let what = format!("forwarder {forwarder}");
            let c_forwarder = c_string(&what, forwarder)?;
            // SAFETY: as above.
            check(what, unsafe { ffi::ub_ctx_set_fwd(ctx, c_forwarder.as_ptr()) })?;
        }
        // Removing a local zone finalizes the context (reading root hints and
        // anchors, where bad files surface as UB_INITFAIL); with nothing to
        // remove, removing a name that is never a zone finalizes it as well.
        let finalize = ["shieldns-finalize.invalid.".to_owned()];
        let zones = if settings.removed_local_zones.is_empty() {
            &finalize[..]
        } else {
            &settings.removed_local_zones[..]
        };
        for zone in zones {
            let c_zone = c_string("local zone", zone)?;
            // SAFETY: `ctx` is live; the name is parsed and not kept.
            let code = unsafe { ffi::ub_ctx_zone_remove(ctx, c_zone.as_ptr()) };
            match code {
                0 => {}
                -3 => {
                    return Err(UnboundError::Setting {
                        what: format!("local zone {zone}"),
                        reason: strerror(code),
                    });
                }
                _ => return Err(UnboundError::Init { reason: strerror(code) }),
            }
        }
        Ok(context)
    }

    fn fd(&self) -> RawFd {
        // SAFETY: `ctx` is live; the descriptor stays the context's for its
        // whole life and is never closed by us.
        unsafe { ffi::ub_fd(self.ptr.as_ptr()) }
    }
}

/// Checks `settings` the way [`Resolver::new`] applies them: one context is
/// configured and finalized (reading root hints and anchor files), then
/// dropped. Sends no query and needs no runtime.
pub fn check(settings: &Settings) -> Result<(), UnboundError> {
    Context::new(settings).map(drop)
}

/// The library's version string, e.g. "1.17.1".
pub fn version() -> String {
    // SAFETY: returns a static NUL-terminated string.
    let text = unsafe { ffi::ub_version() };
    if text.is_null() {
        return String::from("unknown");
    }
    // SAFETY: non-null, NUL-terminated, static.
    unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
}

/// The context's result descriptor, borrowed: owned and closed by the
/// context, only watched here.
struct ResultFd(RawFd);

impl AsRawFd for ResultFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// One context and its watched descriptor. Field order is drop order: the
/// descriptor is deregistered from Tokio before the context closes it.
struct Shard {
    fd: AsyncFd<ResultFd>,
    context: Context,
}

type Sender = oneshot::Sender<Result<Answer, UnboundError>>;

/// The result callback: runs inside `ub_process`, on the driver task.
///
/// # Safety
/// `mydata` is the `Box<Sender>` leaked by [`Resolver::resolve`] for this
/// query, and libunbound calls this at most once per query; `result` is
/// NULL or a `ub_result` this function owns.
unsafe extern "C" fn on_result(mydata: *mut c_void, err: c_int, result: *mut ffi::UbResult) {
    // SAFETY: see the function's contract: the box is ours, once.
    let sender = unsafe { Box::from_raw(mydata.cast::<Sender>()) };
    let outcome = if err != 0 {
        Err(UnboundError::Query { reason: strerror(err) })
    } else if result.is_null() {
        Err(UnboundError::Query {
            reason: "no result".into(),
        })
    } else {
        // SAFETY: non-null and ours until ub_resolve_free below.
        let r = unsafe { &*result };
        let packet = match (r.answer_packet.is_null(), usize::try_from(r.answer_len)) {
            (false, Ok(len)) if len > 0 => {
                // SAFETY: libunbound's answer_packet holds answer_len bytes.
                unsafe { std::slice::from_raw_parts(r.answer_packet.cast::<u8>(), len) }.to_vec()
            }
            _ => Vec::new(),
        };
        let why_bogus = (!r.why_bogus.is_null()).then(|| {
            // SAFETY: non-null, NUL-terminated, owned by the result.
            unsafe { CStr::from_ptr(r.why_bogus) }.to_string_lossy().into_owned()
        });
        Ok(Answer {
            rcode: u16::try_from(r.rcode).unwrap_or(2),
            packet,
            secure: r.secure != 0,
            bogus: r.bogus != 0,
            why_bogus,
            nxdomain: r.nxdomain != 0,
            havedata: r.havedata != 0,
            ttl: u32::try_from(r.ttl).unwrap_or(0),
        })
    };
    if !result.is_null() {
        // SAFETY: the result is ours and freed once; nothing points into it
        // any more (the packet and text were copied).
        unsafe { ffi::ub_resolve_free(result) };
    }
    // The receiver may be gone (the caller's deadline passed): then the
    // answer is dropped here.
    let _ = sender.send(outcome);
}

/// Several libunbound contexts behind one async `resolve`.
pub struct Resolver {
    shards: Vec<Arc<Shard>>,
    drivers: Vec<JoinHandle<()>>,
    hasher: foldhash::fast::FixedState,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("contexts", &self.shards.len())
            .finish()
    }
}

impl Resolver {
    /// Builds `contexts` contexts (at least one) from `settings` and starts
    /// a driver task for each. Must be called inside a Tokio runtime.
    pub fn new(settings: &Settings, contexts: usize) -> Result<Self, UnboundError> {
        let mut shards = Vec::new();
        for _ in 0..contexts.max(1) {
            let context = Context::new(settings)?;
            // SAFETY: the descriptor is the context's, open from
            // `ub_ctx_create` until `ub_ctx_delete`; the shard drops the
            // AsyncFd before the context (field order), and `ResultFd` always
            // returns this same descriptor.
            let fd = unsafe { AsyncFd::register_with_interest(ResultFd(context.fd()), tokio::io::Interest::READABLE) }
                .map_err(|e| UnboundError::Io(std::io::Error::from(e)))?;
            shards.push(Arc::new(Shard { fd, context }));
        }
        let drivers = shards.iter().map(|shard| tokio::spawn(drive(shard.clone()))).collect();
        Ok(Self {
            shards,
            drivers,
            hasher: foldhash::fast::FixedState::with_seed(0x5348_4945_4c44),
        })
    }

    /// Resolves `name` (presentation form; case is kept in the answer's
    /// question) for `rrtype`/`rrclass`. Resolution failures are answers with
    /// rcode SERVFAIL; `Err` means the library itself failed.
    pub async fn resolve(&self, name: &str, rrtype: u16, rrclass: u16) -> Result<Answer, UnboundError> {
        let shard = self.shard_for(name).ok_or_else(|| UnboundError::Query {
            reason: "the resolver has no context".into(),
        })?;
        let c_name = c_string("query name", name)?;
        let (sender, receiver) = oneshot::channel();
        let mydata = Box::into_raw(Box::new(sender)).cast::<c_void>();
        let mut id: c_int = 0;
        // SAFETY: the context is live (the shard is held by `self`); the name
        // is copied by the library; `mydata` is a leaked Box<Sender> that
        // `on_result`, the callback given here, takes back exactly once.
        let code = unsafe {
            ffi::ub_resolve_async(
                shard.context.ptr.as_ptr(),
                c_name.as_ptr(),
                c_int::from(rrtype),
                c_int::from(rrclass),
                mydata,
                on_result,
                &raw mut id,
            )
        };
        if code != 0 {
            // SAFETY: the query was not queued, so the callback will never
            // run and the box is still ours to free.
            drop(unsafe { Box::from_raw(mydata.cast::<Sender>()) });
            return Err(UnboundError::Query { reason: strerror(code) });
        }
        receiver.await.unwrap_or_else(|_| {
            Err(UnboundError::Query {
                reason: "the context was shut down".into(),
            })
        })
    }

    /// How many contexts share the name space.
    pub fn contexts(&self) -> usize {
        self.shards.len()
    }

    /// The context that owns `name`'s share of the name space. `None` only
    /// for a resolver without contexts, which `new` never makes.
    fn shard_for(&self, name: &str) -> Option<&Shard> {
        let mut hasher = self.hasher.build_hasher();
        for byte in name.trim_end_matches('.').bytes() {
            hasher.write_u8(byte.to_ascii_lowercase());
        }
        let count = u64::try_from(self.shards.len()).ok().filter(|&n| n > 0)?;
        let index = usize::try_from(hasher.finish() % count).ok()?;
        self.shards.get(index).map(|shard| &**shard)
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        for driver in &self.drivers {
            driver.abort();
        }
    }
}

/// Drains one context's results whenever its descriptor is readable.
async fn drive(shard: Arc<Shard>) {
    loop {
        let mut guard = match shard.fd.readable().await {
            Ok(guard) => guard,
            Err(error) => {
                tracing::error!(%error, "libunbound result descriptor failed; this context stops answering");
                return;
            }
        };
        let ctx = shard.context.ptr.as_ptr();
        // SAFETY: the context is live (held by `shard`); ub_process reads
        // every queued result without blocking and runs `on_result` for each.
        let code = unsafe { ffi::ub_process(ctx) };
        if code != 0 {
            tracing::warn!(reason = %strerror(code), "ub_process failed");
        }
        // SAFETY: as above; ub_poll only checks the descriptor.
        if unsafe { ffi::ub_poll(ctx) } == 0 {
            // Tokio clears readiness only if no new event arrived since it
            // was reported, so a result queued after ub_poll still wakes us.
            guard.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_reported() {
        assert!(version().chars().next().is_some_and(|c| c.is_ascii_digit()));
    }

    #[test]
    fn a_bad_option_is_named() {
        let settings = Settings {
            options: vec![("qname-minimisation".into(), "perhaps".into())],
            ..Settings::default()
        };
        let error = Context::new(&settings).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("qname-minimisation: perhaps"), "{error}");
        assert!(error.contains("syntax"), "{error}");
    }

    #[test]
    fn an_unreadable_anchor_file_fails_at_start() {
        let settings = Settings {
            trust_anchor_files: vec![PathBuf::from("/nonexistent/anchors.zone")],
            ..Settings::default()
        };
        assert!(matches!(Context::new(&settings), Err(UnboundError::Init { .. })));
    }

    #[tokio::test]
    async fn local_data_is_answered_through_the_async_path() {
        // `localhost.` is a built-in local zone: answered by the worker
        // without any network, through the same callback as real answers.
        let resolver = Resolver::new(&Settings::default(), 2).unwrap();
        let answer = resolver.resolve("localhost.", 1, 1).await.unwrap();
        assert_eq!(answer.rcode, 0);
        assert!(answer.havedata);
        assert!(answer.packet.len() > 12);
        let nothing = resolver.resolve("nothing.invalid.", 1, 1).await.unwrap();
        assert!(nothing.nxdomain);
        assert_eq!(nothing.rcode, 3);
    }
}
