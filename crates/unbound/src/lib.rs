//! shieldns-unbound: a small safe wrapper of libunbound, NLnet Labs'
//! validating, caching recursive resolver library, driven from Tokio.
//!
//! This is the workspace's only crate with `unsafe` code: the C API behind
//! [`ffi`], every call with a `// SAFETY:` comment. There is no C code of
//! ours; the library is the system's (`libunbound-dev`, found through
//! pkg-config by `build.rs`).
//!
//! Key design decision: one [`Resolver`] is several libunbound contexts in
//! the library's event mode (`ub_ctx_create_event`), each owned by a thread
//! of its own that runs the context's libevent loop, with its own caches; a
//! query goes to the context picked by a hash of its lower-cased name, so
//! each context's cache owns a share of the name space and no two contexts
//! cache the same answer. Queries reach a context's thread through a queue
//! and one eventfd wake-up per batch, and its answers leave as the wire
//! packet the library hands the callback, over a oneshot channel. The
//! library's thread mode (`ub_ctx_async`) was measured first: it moves every
//! query and every result through a socketpair with two writes, two reads
//! and four `fcntl`s each way, which cost more CPU than shieldns's whole
//! filter path.
//!
//! Queries are never cancelled with `ub_cancel`: the callback always runs
//! and always frees its channel; a caller that gave up has dropped the
//! receiver and the answer is discarded (it is still cached by the library).

#![allow(unsafe_code)]

mod ffi;

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::hash::{BuildHasher, Hasher};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::oneshot;

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
    /// The context's thread or its wake-up descriptor could not be made.
    #[error("cannot start a libunbound context's thread: {0}")]
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

/// One answer, copied out of the library's callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The DNS rcode (2, SERVFAIL, when resolution failed).
    pub rcode: u16,
    /// The reply in wire format as the library made it (ID 0, RD RA, AD
    /// when secure, an OPT record with DO); empty when resolution failed.
    pub packet: Vec<u8>,
    /// Validated secure.
    pub secure: bool,
    /// Validation failed; the data is still in `packet`.
    pub bogus: bool,
    /// Why validation failed, when it did.
    pub why_bogus: Option<String>,
    /// The answer was NXDOMAIN.
    pub nxdomain: bool,
    /// The answer section holds records.
    pub havedata: bool,
}

impl Answer {
    /// From the callback's values: `rcode` is 0 unless resolution failed,
    /// and then the packet is not to be read; otherwise the DNS rcode is the
    /// packet's.
    fn from_callback(rcode: c_int, packet: &[u8], sec: c_int, why_bogus: Option<String>) -> Self {
        let header = if rcode == 0 { packet.get(..12) } else { None };
        let Some(header) = header else {
            return Self {
                rcode: u16::try_from(rcode).ok().filter(|&r| r != 0).unwrap_or(2),
                packet: Vec::new(),
                secure: false,
                bogus: false,
                why_bogus: None,
                nxdomain: false,
                havedata: false,
            };
        };
        let dns_rcode = u16::from(header[3] & 0x0f);
        Self {
            rcode: dns_rcode,
            packet: packet.to_vec(),
            secure: sec == 2,
            bogus: sec == 1,
            why_bogus,
            nxdomain: dns_rcode == 3,
            havedata: dns_rcode == 0 && (header[6] != 0 || header[7] != 0),
        }
    }
}

/// A libevent loop, owned by the thread that runs it.
struct EventBase {
    ptr: NonNull<ffi::EventBase>,
}

impl EventBase {
    fn new() -> Result<Self, UnboundError> {
        // SAFETY: no preconditions; NULL on failure, checked.
        let raw = unsafe { ffi::event_base_new() };
        let ptr = NonNull::new(raw).ok_or_else(|| UnboundError::Init {
            reason: "event_base_new failed".into(),
        })?;
        Ok(Self { ptr })
    }
}

impl Drop for EventBase {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `event_base_new` and is freed once, here,
        // after every context and event on it (their owners drop first).
        unsafe { ffi::event_base_free(self.ptr.as_ptr()) }
    }
}

/// A libunbound context, owned.
struct Context {
    ptr: NonNull<ffi::UbCtx>,
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `ub_ctx_create_event` and is deleted once,
        // here, on the thread that runs its event base, before the base is
        // freed. Queries still resolving get no callback (their channels
        // leak, which only happens when the resolver is torn down).
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
    /// Creates, configures and finalizes a context on `base`, which must
    /// outlive it and be run only by the thread that uses the context.
    fn new(settings: &Settings, base: &EventBase) -> Result<Self, UnboundError> {
        // SAFETY: `base` is a live event base; NULL on failure, checked below.
        let raw = unsafe { ffi::ub_ctx_create_event(base.ptr.as_ptr()) };
        let ptr = NonNull::new(raw).ok_or_else(|| UnboundError::Init {
            reason: "ub_ctx_create_event failed".into(),
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
}

/// Checks `settings` the way [`Resolver::new`] applies them: one context is
/// configured and finalized (reading root hints and anchor files), then
/// dropped. Sends no query and needs no runtime.
pub fn check(settings: &Settings) -> Result<(), UnboundError> {
    let base = EventBase::new()?;
    Context::new(settings, &base).map(drop)
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

type Sender = oneshot::Sender<Result<Answer, UnboundError>>;

/// A query on its way to a context's thread.
struct Request {
    name: CString,
    rrtype: u16,
    rrclass: u16,
    sender: Sender,
}

/// What the resolving side and a context's thread share: the queries not
/// yet handed to the library, the descriptor that wakes the thread, and the
/// order to stop.
struct Inbox {
    queue: Mutex<Vec<Request>>,
    wake: EventFd,
    stop: AtomicBool,
}

impl Inbox {
    /// Queues `request`; the thread is woken only by the push that finds the
    /// queue empty, since it drains the whole queue on each wake-up.
    fn push(&self, request: Request) -> Result<(), UnboundError> {
        let was_empty = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let was_empty = queue.is_empty();
            queue.push(request);
            was_empty
        };
        if was_empty {
            self.wake.write(1).map_err(std::io::Error::from)?;
        }
        Ok(())
    }

    fn take(&self) -> Vec<Request> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// One context: its inbox and, for the record, its thread (which ends by
/// itself once told to stop).
struct Shard {
    inbox: Arc<Inbox>,
}

/// What a context's thread hands its libevent callback.
struct Loop {
    inbox: Arc<Inbox>,
    context: Context,
    base: NonNull<ffi::EventBase>,
}

/// The result callback: runs on the context's thread, inside its event loop
/// (or inside `ub_resolve_event` for local data).
///
/// # Safety
/// `mydata` is the `Box<Sender>` leaked by [`submit`] for this query, and
/// libunbound calls this at most once per query; `packet` holds
/// `packet_len` bytes and `why_bogus` is NULL or a NUL-terminated string,
/// both valid for the call.
unsafe extern "C" fn on_answer(
    mydata: *mut c_void,
    rcode: c_int,
    packet: *mut c_void,
    packet_len: c_int,
    sec: c_int,
    why_bogus: *mut c_char,
    _was_ratelimited: c_int,
) {
    // SAFETY: see the function's contract: the box is ours, once.
    let sender = unsafe { Box::from_raw(mydata.cast::<Sender>()) };
    let bytes = match (packet.is_null(), usize::try_from(packet_len)) {
        // SAFETY: the library's buffer holds `packet_len` bytes for the call.
        (false, Ok(len)) if rcode == 0 => unsafe { std::slice::from_raw_parts(packet.cast::<u8>(), len) },
        _ => &[],
    };
    let why_bogus = (!why_bogus.is_null()).then(|| {
        // SAFETY: non-null and NUL-terminated for the call (the contract).
        unsafe { CStr::from_ptr(why_bogus) }.to_string_lossy().into_owned()
    });
    // The receiver may be gone (the caller's deadline passed): then the
    // answer is dropped here.
    let _ = sender.send(Ok(Answer::from_callback(rcode, bytes, sec, why_bogus)));
}

/// Hands one query to the library, on the context's thread.
fn submit(context: &Context, request: Request) {
    let Request {
        name,
        rrtype,
        rrclass,
        sender,
    } = request;
    let mydata = Box::into_raw(Box::new(sender)).cast::<c_void>();
    let mut id: c_int = 0;
    // SAFETY: the context is live and used only on this thread; the name is
    // copied by the library; `mydata` is a leaked Box<Sender> that
    // `on_answer`, the callback given here, takes back exactly once.
    let code = unsafe {
        ffi::ub_resolve_event(
            context.ptr.as_ptr(),
            name.as_ptr(),
            c_int::from(rrtype),
            c_int::from(rrclass),
            mydata,
            on_answer,
            &raw mut id,
        )
    };
    if code != 0 {
        // SAFETY: the query was not taken, so the callback will never run
        // and the box is still ours.
        let sender = unsafe { Box::from_raw(mydata.cast::<Sender>()) };
        let _ = sender.send(Err(UnboundError::Query { reason: strerror(code) }));
    }
}

/// The inbox's libevent callback: drains the queue into the library, or
/// ends the loop when told to stop.
///
/// # Safety
/// `arg` is the thread's `Loop`, which outlives the event loop.
unsafe extern "C" fn on_wake(_fd: c_int, _what: i16, arg: *mut c_void) {
    // SAFETY: see the function's contract.
    let state = unsafe { &*arg.cast::<Loop>() };
    // Reset the counter before draining: a push after the drain wakes us
    // again. EAGAIN (already reset) is fine.
    let _ = state.inbox.wake.read();
    if state.inbox.stop.load(Ordering::Acquire) {
        // SAFETY: the base is live and this is its own loop's thread.
        unsafe { ffi::event_base_loopbreak(state.base.as_ptr()) };
        return;
    }
    for request in state.inbox.take() {
        submit(&state.context, request);
    }
}

/// A context's thread: builds the context on its own event base, reports
/// how that went, then runs the loop until told to stop.
fn run_context(settings: &Settings, inbox: Arc<Inbox>, ready: &std::sync::mpsc::Sender<Result<(), UnboundError>>) {
    let base = match EventBase::new() {
        Ok(base) => base,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let context = match Context::new(settings, &base) {
        Ok(context) => context,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let fd = inbox.wake.as_raw_fd();
    let state = Box::new(Loop {
        inbox,
        context,
        base: base.ptr,
    });
    let arg = std::ptr::from_ref::<Loop>(&state).cast_mut().cast::<c_void>();
    // SAFETY: the base is live; `fd` is the inbox's eventfd, open while
    // `state` holds the inbox; `arg` points at `state`, which outlives the
    // event (freed below, before `state` drops).
    let event = unsafe { ffi::event_new(base.ptr.as_ptr(), fd, ffi::EV_READ | ffi::EV_PERSIST, on_wake, arg) };
    // SAFETY: `event` is NULL or a new event, added without a timeout.
    if event.is_null() || unsafe { ffi::event_add(event, std::ptr::null()) } != 0 {
        let _ = ready.send(Err(UnboundError::Init {
            reason: "cannot watch the context's wake-up descriptor".into(),
        }));
        if !event.is_null() {
            // SAFETY: a live event, freed once.
            unsafe { ffi::event_free(event) };
        }
        return;
    }
    if ready.send(Ok(())).is_err() {
        // SAFETY: as below.
        unsafe { ffi::event_free(event) };
        return;
    }
    // SAFETY: the base is live; this thread alone runs it; it returns on
    // `event_base_loopbreak` (the inbox's stop) or when nothing is left
    // to watch, which the persistent inbox event rules out.
    let code = unsafe { ffi::event_base_dispatch(base.ptr.as_ptr()) };
    if code < 0 {
        tracing::error!("a libunbound context's event loop failed; its share of names gets no answers");
    }
    // SAFETY: the event is live and freed once; the loop no longer runs.
    unsafe { ffi::event_free(event) };
    // The context (in `state`) goes before the base it runs on.
    drop(state);
    drop(base);
}

/// Several libunbound contexts behind one async `resolve`.
pub struct Resolver {
    shards: Vec<Shard>,
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
    /// Builds `contexts` contexts (at least one) from `settings`, each on a
    /// thread of its own, and waits until every one is finalized (so bad
    /// root hints or anchor files fail here). Needs no runtime; `resolve`
    /// may then be awaited from any.
    pub fn new(settings: &Settings, contexts: usize) -> Result<Self, UnboundError> {
        let mut shards = Vec::new();
        for index in 0..contexts.max(1) {
            let inbox = Arc::new(Inbox {
                queue: Mutex::new(Vec::new()),
                wake: EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                    .map_err(std::io::Error::from)?,
                stop: AtomicBool::new(false),
            });
            let (ready, started) = std::sync::mpsc::channel();
            let (thread_settings, thread_inbox) = (settings.clone(), inbox.clone());
            std::thread::Builder::new()
                .name(format!("shieldns-unbound-{index}"))
                .spawn(move || run_context(&thread_settings, thread_inbox, &ready))?;
            let shard = Shard { inbox };
            match started.recv() {
                Ok(Ok(())) => shards.push(shard),
                Ok(Err(error)) => return Err(error),
                Err(_) => {
                    return Err(UnboundError::Init {
                        reason: "a context's thread ended while starting".into(),
                    });
                }
            }
        }
        Ok(Self {
            shards,
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
        let (sender, receiver) = oneshot::channel();
        shard.inbox.push(Request {
            name: c_string("query name", name)?,
            rrtype,
            rrclass,
            sender,
        })?;
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
        self.shards.get(index)
    }
}

impl Drop for Resolver {
    /// Tells every context's thread to stop; each deletes its context and
    /// event base on its own (not waited for: deleting a large cache takes
    /// a while, and nothing here needs it gone).
    fn drop(&mut self) {
        for shard in &self.shards {
            shard.inbox.stop.store(true, Ordering::Release);
            if let Err(error) = shard.inbox.wake.write(1) {
                tracing::warn!(%error, "cannot tell a libunbound context to stop");
            }
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
        let error = check(&settings).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("qname-minimisation: perhaps"), "{error}");
        assert!(error.contains("syntax"), "{error}");
    }

    #[test]
    fn an_unreadable_anchor_file_fails_at_start() {
        let settings = Settings {
            trust_anchor_files: vec![PathBuf::from("/nonexistent/anchors.zone")],
            ..Settings::default()
        };
        assert!(matches!(check(&settings), Err(UnboundError::Init { .. })));
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
