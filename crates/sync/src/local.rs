//! Local list files kept like downloads.
//!
//! Every start and reload takes each `path` list through the loading rules
//! a download goes through: only a regular file, at most `max_bytes`, the
//! index's verdicts (empty, nothing valid, mostly malformed, single-label
//! names), and the shrink guard against the version in force. The version
//! it accepts is kept in `sync.cache_dir` with the same state file as a
//! download (`NAME.json`), and builds read the kept copy.
//!
//! Key design decision: a refused file never lifts protection, at start
//! either. The build then enforces the last accepted version and reports
//! the refusal (logged, counted as a sync failure, shown by `lists status`);
//! only a list that was never accepted fails the build. `shieldns lists
//! update --force NAME` accepts a file the shrink guard refused.

use std::io::Read as _;
use std::path::Path;

use sha2::Digest as _;

use crate::cache::{self, CachedVersion, Failure, ListState};
use crate::{ListConfig, SyncError};

/// What keeping a file list did.
#[derive(Debug)]
pub enum Kept {
    /// The file is the version in force.
    Unchanged,
    /// The file passed the rules and is now the version in force.
    Accepted {
        /// Entries in the new version.
        entries: u64,
        /// Entries in the version it replaced, if any.
        previous: Option<u64>,
    },
}

/// Reads a list file under the loading rules' first two: a regular file
/// (not a device, FIFO or directory: `/dev/zero` would never end) of at
/// most the list's `max_bytes`.
pub fn read_file(list: &ListConfig, path: &Path) -> Result<Vec<u8>, SyncError> {
    let mut bytes = Vec::new();
    read_into(list, path, &mut bytes)?;
    Ok(bytes)
}

/// The sha256 of a list file under the same rules, read 64 KiB at a time
/// (an unchanged file is never held whole).
fn file_digest(list: &ListConfig, path: &Path) -> Result<String, SyncError> {
    let mut hasher = sha2::Sha256::new();
    read_into(list, path, &mut HashWriter(&mut hasher))?;
    Ok(hex::encode(hasher.finalize()))
}

struct HashWriter<'a>(&'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes a list file's bytes to `out` under the rules above; `Vec`
/// outputs are sized to the file first.
fn read_into(list: &ListConfig, path: &Path, out: &mut dyn std::io::Write) -> Result<(), SyncError> {
    let read_error = |source| SyncError::Read {
        list: list.name.clone(),
        path: path.to_path_buf(),
        cause: source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(SyncError::NotRegular {
            list: list.name.clone(),
            path: path.to_path_buf(),
        });
    }
    let too_large = || SyncError::FileTooLarge {
        list: list.name.clone(),
        path: path.to_path_buf(),
        max_bytes: list.max_bytes,
    };
    if metadata.len() > list.max_bytes {
        return Err(too_large());
    }
    // The file may grow while it is read: read one byte past the cap to
    // tell.
    let copied = std::io::copy(&mut file.take(list.max_bytes.saturating_add(1)), out).map_err(read_error)?;
    if copied > list.max_bytes {
        return Err(too_large());
    }
    Ok(())
}

/// Takes the file at `path` through the loading rules and, if it passes,
/// keeps it as the list's version in force in `cache_dir`. A refusal is
/// recorded in the list's state (so `lists status` and the failure counter
/// show it) and returned; the version in force, if any, stays.
pub fn keep(list: &ListConfig, path: &Path, cache_dir: &Path, forced: bool) -> Result<Kept, SyncError> {
    let mut state = cache::load_state(cache_dir, &list.name)?.unwrap_or_else(|| ListState {
        list: list.name.clone(),
        ..ListState::default()
    });
    let source = format!("file://{}", path.display());
    let kept = state
        .current
        .as_ref()
        .filter(|c| state.url == source && cache_dir.join(&c.file).is_file());
    let result = accept(list, path, cache_dir, kept, forced);
    if matches!(result, Ok(None)) && state.consecutive_failures == 0 && state.last_success.is_some() {
        // A reload of an unchanged file records nothing new.
        return Ok(Kept::Unchanged);
    }
    let now = cache::now();
    state.url = source;
    state.last_check = Some(now.clone());
    let outcome = match result {
        Ok(version) => {
            state.last_success = Some(now);
            state.consecutive_failures = 0;
            match version {
                None => Ok(Kept::Unchanged),
                Some(mut version) => {
                    let previous = state.current.as_ref();
                    version.serial = previous.map_or(1, |c| c.serial + 1);
                    let outcome = Kept::Accepted {
                        entries: version.entries,
                        previous: previous.map(|c| c.entries),
                    };
                    state.current = Some(version);
                    Ok(outcome)
                }
            }
        }
        Err(error) => {
            state.last_failure = Some(Failure {
                at: now,
                reason: error.to_string(),
            });
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            Err(error)
        }
    };
    // The state file commits a new version (see `cache`); only then are
    // older versions deleted.
    cache::store_state(cache_dir, &state)?;
    if let (Ok(Kept::Accepted { .. }), Some(current)) = (&outcome, &state.current) {
        cache::remove_stale(cache_dir, &list.name, current);
    }
    outcome
}

/// The rules themselves: `None` when the file is the version in force,
/// else the new version, its data file written (the state commits it).
fn accept(
    list: &ListConfig,
    path: &Path,
    cache_dir: &Path,
    kept: Option<&CachedVersion>,
    forced: bool,
) -> Result<Option<CachedVersion>, SyncError> {
    if let Some(kept) = kept
        && file_digest(list, path)? == kept.sha256
    {
        return Ok(None);
    }
    let bytes = read_file(list, path)?;
    let digest = hex::encode(sha2::Sha256::digest(&bytes));
    let entries = crate::syncer::count_entries(list, &bytes)?;
    crate::syncer::shrink_guard(list, kept, entries, forced)?;
    let (file, _) = cache::store_version(cache_dir, &list.name, &digest, &bytes, None)?;
    Ok(Some(CachedVersion {
        file,
        signature_file: None,
        sha256: digest,
        etag: None,
        last_modified: None,
        fetched_at: cache::now(),
        entries,
        bytes: bytes.len() as u64,
        serial: 0,
        soa_serial: None,
    }))
}
