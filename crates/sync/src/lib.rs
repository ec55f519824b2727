//! shieldns-sync: keeps every configured list current and turns the lists
//! into a snapshot, off the hot path.
//!
//! Lists come from local files, from starter lists compiled into the binary
//! (`builtin:` paths), or from publishers over HTTPS (`url`). A [`Syncer`]
//! downloads `url` lists (conditional GET, gzip, timeouts, a size cap
//! enforced while streaming, retries with backoff), verifies them (sha256
//! pin, minisign signature, a parse, the shrink guard) and writes each
//! verified version atomically to a last-known-good cache. Builds read `url`
//! lists only from that cache, so the resolver starts with protection on
//! even while a publisher is down.
//!
//! Key design decisions: all-or-nothing, and the caller publishes. A
//! snapshot is built from every list or not at all, and a download replaces
//! a list's cached copy only once it is fully verified: a failure at any
//! step keeps the previous version in force. This crate never touches the
//! `ArcSwap`; the binary stores the snapshot it returns, so a failed build
//! or a failed sync can never replace the last good policy.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use shieldns_index::{IndexError, ProfileConfig, Snapshot, SnapshotBuilder};

mod builtin;
pub mod cache;
mod config;
mod fetch;
pub mod local;
mod syncer;
pub mod task;
mod xfr;

pub use builtin::{BUILTIN_PREFIX, get as builtin_list};
pub use cache::{CachedVersion, Failure, ListState};
pub use config::{
    DEFAULT_CACHE_DIR, DEFAULT_MAX_BYTES, DEFAULT_MAX_SHRINK, DEFAULT_REFRESH, ListConfig, ListSource, RemoteList,
    SyncConfig, Transfer, TsigKey,
};
pub use syncer::{ListOutcome, NoProgress, Outcome, PassReport, Progress, Syncer};

/// Errors building a snapshot, each naming the list and file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// A list file could not be read.
    #[error("list `{list}`: cannot read {}: {cause}", path.display())]
    Read {
        /// The list.
        list: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A list's `path` is not a regular file (a device, FIFO, directory).
    #[error("list `{list}`: {} is not a regular file", path.display())]
    NotRegular {
        /// The list.
        list: String,
        /// The path.
        path: PathBuf,
    },
    /// A list file is larger than the list's `max_bytes`.
    #[error("list `{list}`: {} is larger than max_bytes ({max_bytes} bytes)", path.display())]
    FileTooLarge {
        /// The list.
        list: String,
        /// The file.
        path: PathBuf,
        /// The cap.
        max_bytes: u64,
    },
    /// A `builtin:` path names no built-in list.
    #[error("list `{list}`: no built-in list `{name}` (built-in lists: {available})")]
    UnknownBuiltin {
        /// The list.
        list: String,
        /// The name after `builtin:`.
        name: String,
        /// What exists.
        available: String,
    },
    /// A `url` list has no verified copy in the cache yet.
    #[error("list `{list}`: no verified copy in {} yet (run `shieldns lists update`, or check `shieldns lists status` for the last failure)", cache_dir.display())]
    NotCached {
        /// The list.
        list: String,
        /// The cache directory.
        cache_dir: PathBuf,
    },
    /// The cache directory or a file in it could not be read or written.
    #[error("list `{list}`: cache file {}: {cause}", path.display())]
    Cache {
        /// The list.
        list: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// `sync.ca_file` could not be used.
    #[error("sync.ca_file {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The HTTPS client could not be built from `[sync]`.
    #[error("[sync]: cannot build the HTTPS client: {reason}")]
    Client {
        /// Why.
        reason: String,
    },
    /// The publisher answered with a status other than 200 (or 304).
    #[error("list `{list}`: HTTP {status} {reason} from {url}")]
    Http {
        /// The list.
        list: String,
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// The connection or the transfer failed (DNS, TCP, TLS, a truncated
    /// body, bad gzip).
    #[error("list `{list}`: download from {url} failed: {reason}")]
    Transport {
        /// The list.
        list: String,
        /// The URL.
        url: String,
        /// The error and its causes.
        reason: String,
    },
    /// A zone transfer was refused or malformed.
    #[error("list `{list}`: zone transfer from {server}: {reason}")]
    Transfer {
        /// The list.
        list: String,
        /// The `source`.
        server: String,
        /// Why.
        reason: String,
    },
    /// The download took longer than `sync.timeout` (or the connection than
    /// `sync.connect_timeout`).
    #[error("list `{list}`: download from {url} timed out (sync.timeout {})", humantime::format_duration(*after))]
    Timeout {
        /// The list.
        list: String,
        /// The URL.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// The body is larger than the list's `max_bytes`.
    #[error("list `{list}`: {url} is larger than max_bytes ({max_bytes} bytes); download stopped")]
    TooLarge {
        /// The list.
        list: String,
        /// The URL.
        url: String,
        /// The cap.
        max_bytes: u64,
    },
    /// The body does not match the list's `sha256` pin.
    #[error("list `{list}`: sha256 mismatch: expected {expected}, got {actual}")]
    Sha256Mismatch {
        /// The list.
        list: String,
        /// The pin.
        expected: String,
        /// The body's digest.
        actual: String,
    },
    /// The minisign signature is missing, unreadable or does not verify.
    #[error("list `{list}`: minisign signature {url}: {reason}")]
    Signature {
        /// The list.
        list: String,
        /// The signature's URL.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// Verification could not run.
    #[error("list `{list}`: {reason}")]
    Verify {
        /// The list.
        list: String,
        /// Why.
        reason: String,
    },
    /// A new version fails the loading rules (garbage, an error page,
    /// empty, mostly malformed).
    #[error("list `{list}`: the new version has no valid {format} entries to enforce: {reason}")]
    NoEntries {
        /// The list.
        list: String,
        /// The list's format.
        format: String,
        /// The loading rule's verdict.
        reason: String,
    },
    /// The shrink guard refused an update.
    #[error(
        "list `{list}`: update refused: it would shrink the list from {previous} to {new} entries, more than max_shrink ({max_shrink} %); apply it with `shieldns lists update --force {list}`"
    )]
    Shrink {
        /// The list.
        list: String,
        /// Entries in force.
        previous: u64,
        /// Entries in the download.
        new: u64,
        /// The limit, percent.
        max_shrink: u8,
    },
    /// The index refused a list or profile.
    #[error("{}{cause}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    Index {
        /// The list file involved, when the error is about a list.
        file: Option<PathBuf>,
        /// The index error.
        cause: IndexError,
    },
}

/// What loading one list produced, for logs and `check-config`.
#[derive(Clone, Debug)]
pub struct ListLoad {
    /// The list name.
    pub name: String,
    /// Where it came from.
    pub source: String,
    /// Bytes read.
    pub bytes: usize,
    /// Rules accepted.
    pub rules: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// The first rejected lines (line, text, reason).
    pub rejected_examples: Vec<shieldns_index::RejectedLine>,
    /// The sync state of the copy the build read (`url` lists, and `path`
    /// lists kept in `sync.cache_dir`): the version in force and its
    /// checks. `None` for built-in lists and files read directly.
    pub state: Option<cache::ListState>,
}

impl ListLoad {
    fn new(
        list: &ListConfig,
        source: String,
        bytes: usize,
        info: &shieldns_index::ListInfo,
        state: Option<cache::ListState>,
    ) -> Self {
        Self {
            name: list.name.clone(),
            source,
            bytes,
            rules: info.counts.rules,
            rejected: info.counts.rejected,
            rejected_examples: info.rejected_examples.clone(),
            state,
        }
    }
}

/// Everything a snapshot is built from.
#[derive(Clone, Copy, Debug)]
pub struct PolicySources<'a> {
    /// The `[[list]]` tables.
    pub lists: &'a [ListConfig],
    /// The `[[profile]]` tables.
    pub profiles: &'a [ProfileConfig],
    /// `server.allow`.
    pub allow: &'a [IpNet],
    /// The configuration file's directory, for relative list paths.
    pub base_dir: &'a Path,
    /// How `path` lists are read.
    pub files: FileLists<'a>,
}

/// How a build treats `path` lists (see [`local`]).
#[derive(Clone, Copy, Debug)]
pub enum FileLists<'a> {
    /// Read each file under the loading rules and keep nothing: the
    /// one-shot commands (`check-config`, `explain`), which say what the
    /// files hold now. A `url` list not downloaded yet, mandatory or not,
    /// is reported in [`Built::not_downloaded`] rather than failing.
    Read,
    /// Keep each accepted file in `cache_dir` and enforce the kept version,
    /// falling back to it when a file is refused: the daemon.
    Keep {
        /// `sync.cache_dir`, resolved.
        cache_dir: &'a Path,
    },
}

/// A built snapshot and how it was built.
#[derive(Debug)]
pub struct Built {
    /// The snapshot, ready to publish.
    pub snapshot: Snapshot,
    /// Per-list results, in configuration order.
    pub lists: Vec<ListLoad>,
    /// Wall time of the whole build.
    pub elapsed: Duration,
    /// `path` lists whose file was refused, each enforced from its last
    /// accepted version instead: the caller logs and counts them.
    pub refused: Vec<Refused>,
    /// `url` lists with no verified copy yet, built empty (mandatory ones
    /// only under [`FileLists::Read`]: the daemon refuses to start without
    /// them).
    pub not_downloaded: Vec<String>,
}

/// A `path` list's file refused by a build (see [`Built::refused`]).
#[derive(Debug)]
pub struct Refused {
    /// The list.
    pub list: String,
    /// Whether it is mandatory.
    pub mandatory: bool,
    /// Why.
    pub error: SyncError,
}

/// Reads every list and builds a snapshot. Blocking (file I/O and CPU):
/// call it from a blocking thread, never from the resolver's hot path.
pub fn build_snapshot(sources: PolicySources<'_>) -> Result<Built, SyncError> {
    let started = Instant::now();
    let mut builder = SnapshotBuilder::new();
    builder.set_access(sources.allow.to_vec());
    let mut loads = Vec::with_capacity(sources.lists.len());
    // Size the name index for every list at once: grown list by list, a
    // small list after a big one would double the array (and copy it),
    // which is what a reload must not cost.
    builder.reserve_rules(
        sources
            .lists
            .iter()
            .map(|list| estimated_lines(list, sources.base_dir))
            .sum(),
    );
    let mut refused = Vec::new();
    let mut not_downloaded = Vec::new();
    for list in sources.lists {
        if let (ListSource::File(path), FileLists::Keep { cache_dir }) = (&list.source, sources.files) {
            // Relative to the configuration; `join` keeps an absolute path.
            let path = sources.base_dir.join(path);
            if let Err(error) = local::keep(list, &path, cache_dir, false) {
                // The last accepted version, if there is one, stays in force.
                match CachedCopy::find_in(list, cache_dir) {
                    Ok(_) => refused.push(Refused {
                        list: list.name.clone(),
                        mandatory: list.mandatory,
                        error,
                    }),
                    Err(_) => return Err(error),
                }
            }
            loads.push(add_kept(&mut builder, list, cache_dir, &path)?);
            continue;
        }
        if let ListSource::File(path) = &list.source
            && shieldns_index::format::is_line_local(list.format)
        {
            // Read mode: parsed as it is read (see
            // `SnapshotBuilder::add_list_from`), under the same rules;
            // adblock and RPZ, read whole anyway, go through `read_list`,
            // which sizes the buffer to the file once.
            // Relative to the configuration; `join` keeps an absolute path.
            let path = sources.base_dir.join(path);
            let (mut reader, _) = local::open(list, &path)?;
            let (info, bytes) =
                builder
                    .add_list_from(list.policy(), &mut reader)
                    .map_err(|cause| SyncError::Index {
                        file: Some(path.clone()),
                        cause,
                    })?;
            if bytes > list.max_bytes {
                return Err(local::too_large(list, &path));
            }
            loads.push(ListLoad::new(
                list,
                path.display().to_string(),
                usize::try_from(bytes).unwrap_or(usize::MAX),
                info,
                None,
            ));
            continue;
        }
        let mut policy = list.policy();
        let (bytes, source, file) = match &list.source {
            // A `url` list's cached copy is parsed as it is read, like a
            // local file, and verified on the way.
            ListSource::Remote(remote) => match add_cached(&mut builder, list, remote) {
                Ok(load) => {
                    loads.push(load);
                    continue;
                }
                // A non-mandatory `url` list that was never downloaded has
                // no last-known-good version: it is enforced empty (keeping
                // list ids aligned with the configuration) until its first
                // verified download, rather than keeping the resolver from
                // starting. A mandatory list without a copy fails the build.
                Err(SyncError::NotCached { .. }) if !list.mandatory || matches!(sources.files, FileLists::Read) => {
                    not_downloaded.push(list.name.clone());
                    policy.allow_empty = true;
                    policy.mandatory = false;
                    (
                        Vec::new(),
                        format!(
                            "{} (no verified copy yet: empty until the first successful download)",
                            list.describe_source()
                        ),
                        None,
                    )
                }
                Err(error) => return Err(error),
            },
            _ => read_list(list, sources.base_dir)?,
        };
        let info = builder.add_list(policy, &bytes).map_err(|source| SyncError::Index {
            file: file.clone(),
            cause: source,
        })?;
        loads.push(ListLoad::new(list, source, bytes.len(), info, None));
    }
    for profile in sources.profiles {
        builder.add_profile(profile.clone());
    }
    let snapshot = builder.build().map_err(|source| SyncError::Index {
        file: None,
        cause: source,
    })?;
    Ok(Built {
        snapshot,
        lists: loads,
        elapsed: started.elapsed(),
        refused,
        not_downloaded,
    })
}

/// About how many lines a list has (its newlines, counted without holding
/// the text), to size the index; 0 when it cannot be read now, which only
/// costs the index a regrowth.
fn estimated_lines(list: &ListConfig, base_dir: &Path) -> usize {
    if !list.format.has_name_rules() {
        return 0;
    }
    let path = match &list.source {
        // Only a regular file within its cap is counted: `/dev/zero` has
        // no end (the build then refuses it with its reason).
        ListSource::File(_) => list
            .resolved_path(base_dir)
            .filter(|path| std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= list.max_bytes)),
        ListSource::Builtin(name) => {
            return builtin::get(name).map_or(0, shieldns_index::format::count_lines);
        }
        ListSource::Remote(remote) => remote.cache_dir.as_deref().and_then(|dir| {
            let state = cache::load_state(dir, &list.name).ok()??;
            Some(dir.join(state.current?.file))
        }),
    };
    match path.map(std::fs::File::open) {
        Some(Ok(file)) => shieldns_index::format::count_lines_in(file),
        _ => 0,
    }
}

/// Reads one list's bytes: the file, the built-in copy, or the verified
/// cached copy of a `url` list (verified again on every read).
pub fn read_list(list: &ListConfig, base_dir: &Path) -> Result<(Vec<u8>, String, Option<PathBuf>), SyncError> {
    match &list.source {
        ListSource::File(path) => {
            // Relative to the configuration; `join` keeps an absolute path.
            let path = base_dir.join(path);
            let bytes = local::read_file(list, &path)?;
            Ok((bytes, path.display().to_string(), Some(path)))
        }
        ListSource::Builtin(name) => match builtin::get(name) {
            Some(bytes) => Ok((bytes.to_vec(), format!("{BUILTIN_PREFIX}{name}"), None)),
            None => Err(SyncError::UnknownBuiltin {
                list: list.name.clone(),
                name: name.clone(),
                available: builtin::names().join(", "),
            }),
        },
        ListSource::Remote(remote) => read_cached(list, remote),
    }
}

/// Reads a `url` list's cached copy and checks it again: its digest against
/// the state file, the `sha256` pin and the minisign signature.
fn read_cached(list: &ListConfig, remote: &RemoteList) -> Result<(Vec<u8>, String, Option<PathBuf>), SyncError> {
    let copy = CachedCopy::find(list, remote)?;
    let bytes = std::fs::read(&copy.path).map_err(|source| copy.read_error(list, source))?;
    copy.check_digest(list, syncer::verify(list, remote, &bytes, copy.signature.as_deref())?)?;
    Ok((bytes, copy.describe(remote), Some(copy.path)))
}

/// The current cached copy of a `url` list: its data file, its state and
/// its signature (small, read whole).
struct CachedCopy {
    path: PathBuf,
    current: cache::CachedVersion,
    signature: Option<Vec<u8>>,
    /// The state file the copy was found through.
    state: cache::ListState,
}

impl CachedCopy {
    fn find(list: &ListConfig, remote: &RemoteList) -> Result<Self, SyncError> {
        match remote.cache_dir.as_deref() {
            Some(dir) => Self::find_in(list, dir),
            None => Err(SyncError::NotCached {
                list: list.name.clone(),
                cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
            }),
        }
    }

    fn find_in(list: &ListConfig, dir: &Path) -> Result<Self, SyncError> {
        let not_cached = || SyncError::NotCached {
            list: list.name.clone(),
            cache_dir: dir.to_path_buf(),
        };
        let state = cache::load_state(dir, &list.name)?.ok_or_else(not_cached)?;
        let current = state
            .current
            .clone()
            .filter(|current| dir.join(&current.file).is_file())
            .ok_or_else(not_cached)?;
        let signature = match &current.signature_file {
            Some(file) => {
                let path = dir.join(file);
                Some(std::fs::read(&path).map_err(|source| SyncError::Cache {
                    list: list.name.clone(),
                    path,
                    cause: source,
                })?)
            }
            None => None,
        };
        Ok(Self {
            path: dir.join(&current.file),
            current,
            signature,
            state,
        })
    }

    /// Adds the copy to `builder`, parsed as `reader` reads it, and reads
    /// it to its end: the parser stops at the end of the file, so a
    /// verifying reader has seen all of it, but a format that ever stopped
    /// early must not leave bytes unverified.
    fn parse<'b>(
        &self,
        builder: &'b mut SnapshotBuilder,
        list: &ListConfig,
        reader: &mut impl std::io::Read,
    ) -> Result<(&'b shieldns_index::ListInfo, u64), SyncError> {
        let (info, bytes) = builder
            .add_list_from(list.policy(), &mut *reader)
            .map_err(|source| SyncError::Index {
                file: Some(self.path.clone()),
                cause: source,
            })?;
        std::io::copy(reader, &mut std::io::sink()).map_err(|source| self.read_error(list, source))?;
        Ok((info, bytes))
    }

    fn read_error(&self, list: &ListConfig, source: std::io::Error) -> SyncError {
        SyncError::Cache {
            list: list.name.clone(),
            path: self.path.clone(),
            cause: source,
        }
    }

    /// Checks the digest of what was read against the state file's.
    fn check_digest(&self, list: &ListConfig, digest: [u8; 32]) -> Result<(), SyncError> {
        if hex::encode(digest) == self.current.sha256 {
            return Ok(());
        }
        Err(self.read_error(
            list,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "sha256 is {}, the state file says {}",
                    hex::encode(digest),
                    self.current.sha256
                ),
            ),
        ))
    }

    fn describe(&self, remote: &RemoteList) -> String {
        format!("{} (cached, serial {})", remote.url, self.current.serial)
    }
}

/// Feeds what a build reads from a cached copy to its [`syncer::Verifier`].
struct VerifyingReader<'a, R> {
    inner: R,
    verifier: syncer::Verifier<'a>,
}

impl<R: std::io::Read> std::io::Read for VerifyingReader<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.verifier.update(buffer.get(..read).unwrap_or_default());
        Ok(read)
    }
}

/// Adds a `url` list's cached copy to `builder`, parsing it as it is read
/// (like a local file) and verifying it on the way: the digest against the
/// state file, the `sha256` pin and the minisign signature are checked once
/// the whole copy has been read, and a copy that fails them fails the build.
/// Returns the load report.
fn add_cached(builder: &mut SnapshotBuilder, list: &ListConfig, remote: &RemoteList) -> Result<ListLoad, SyncError> {
    let copy = CachedCopy::find(list, remote)?;
    let signed = syncer::Signed::decode(list, remote, copy.signature.as_deref())?;
    let file = std::fs::File::open(&copy.path).map_err(|source| copy.read_error(list, source))?;
    let mut reader = VerifyingReader {
        inner: file,
        verifier: syncer::Verifier::new(list, remote, signed.as_ref())?,
    };
    let (info, bytes) = copy.parse(builder, list, &mut reader)?;
    copy.check_digest(list, reader.verifier.finish()?)?;
    Ok(ListLoad::new(
        list,
        copy.describe(remote),
        usize::try_from(bytes).unwrap_or(usize::MAX),
        info,
        Some(copy.state),
    ))
}

/// Adds a `path` list's kept version (see [`local`]) to `builder`, parsing
/// it as it is read and checking its digest against the state file once
/// the whole copy has been read.
fn add_kept(
    builder: &mut SnapshotBuilder,
    list: &ListConfig,
    cache_dir: &Path,
    path: &Path,
) -> Result<ListLoad, SyncError> {
    let copy = CachedCopy::find_in(list, cache_dir)?;
    let file = std::fs::File::open(&copy.path).map_err(|source| copy.read_error(list, source))?;
    let mut reader = local::HashingReader::new(file, None);
    let (info, bytes) = copy.parse(builder, list, &mut reader)?;
    copy.check_digest(list, reader.finish().1)?;
    Ok(ListLoad::new(
        list,
        format!("{} (kept copy, serial {})", path.display(), copy.current.serial),
        usize::try_from(bytes).unwrap_or(usize::MAX),
        info,
        Some(copy.state),
    ))
}
