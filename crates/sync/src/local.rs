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

/// Opens a list file under the loading rules' first two: a regular file
/// (not a device, FIFO or directory: `/dev/zero` would never end) of at
/// most the list's `max_bytes`. Returns it with a reader capped one byte
/// past `max_bytes` (the file may grow while it is read) and its length.
pub(crate) fn open(list: &ListConfig, path: &Path) -> Result<(std::io::Take<std::fs::File>, u64), SyncError> {
    let read_error = |cause| SyncError::Read {
        list: list.name.clone(),
        path: path.to_path_buf(),
        cause,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(SyncError::NotRegular {
            list: list.name.clone(),
            path: path.to_path_buf(),
        });
    }
    if metadata.len() > list.max_bytes {
        return Err(too_large(list, path));
    }
    Ok((file.take(list.max_bytes.saturating_add(1)), metadata.len()))
}

pub(crate) fn too_large(list: &ListConfig, path: &Path) -> SyncError {
    SyncError::FileTooLarge {
        list: list.name.clone(),
        path: path.to_path_buf(),
        max_bytes: list.max_bytes,
    }
}

fn read_error(list: &ListConfig, path: &Path, cause: std::io::Error) -> SyncError {
    SyncError::Read {
        list: list.name.clone(),
        path: path.to_path_buf(),
        cause,
    }
}

/// Reads a list file whole under the rules of [`open`] (the one-shot
/// commands; the daemon streams, see [`keep`]).
pub fn read_file(list: &ListConfig, path: &Path) -> Result<Vec<u8>, SyncError> {
    let (mut reader, len) = open(list, path)?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    reader.read_to_end(&mut bytes).map_err(|e| read_error(list, path, e))?;
    if bytes.len() as u64 > list.max_bytes {
        return Err(too_large(list, path));
    }
    Ok(bytes)
}

/// The sha256 of a list file under the rules of [`open`], read a buffer at
/// a time (an unchanged file is never held whole).
fn file_digest(list: &ListConfig, path: &Path) -> Result<String, SyncError> {
    let (mut reader, _) = open(list, path)?;
    let mut hasher = sha2::Sha256::new();
    let read = std::io::copy(&mut reader, &mut hasher).map_err(|e| read_error(list, path, e))?;
    if read > list.max_bytes {
        return Err(too_large(list, path));
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A reader whose bytes are hashed (sha256) and, when given a file, copied
/// to it as they pass: the check of a changed file copies it to the staging
/// file that becomes the kept version, and a build hashes the kept copy it
/// parses.
pub(crate) struct HashingReader<'a, R> {
    inner: R,
    hasher: sha2::Sha256,
    copy: Option<&'a mut std::fs::File>,
    read: u64,
}

impl<'a, R> HashingReader<'a, R> {
    pub(crate) fn new(inner: R, copy: Option<&'a mut std::fs::File>) -> Self {
        Self {
            inner,
            hasher: sha2::Sha256::new(),
            copy,
            read: 0,
        }
    }

    /// The bytes read and their sha256.
    pub(crate) fn finish(self) -> (u64, [u8; 32]) {
        (self.read, self.hasher.finalize().into())
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        let chunk = buffer.get(..read).unwrap_or_default();
        self.hasher.update(chunk);
        if let Some(copy) = &mut self.copy {
            std::io::Write::write_all(copy, chunk)?;
        }
        self.read += read as u64;
        Ok(read)
    }
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
    // The list's name is its identity: a `path` moved to another file is
    // still held to the version in force (a smaller file needs `--force`).
    let kept = state.current.as_ref().filter(|c| cache_dir.join(&c.file).is_file());
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
/// else the new version, its data file written (the state commits it). The
/// file is read twice at most: hashed (unchanged: done), then checked as it
/// is copied to the cache, a buffer at a time, so a reload never holds a
/// big list's text beside the index in force.
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
    let (reader, _) = open(list, path)?;
    let mut staged = cache::Staged::create(cache_dir, &list.name)?;
    let mut tee = HashingReader::new(reader, Some(staged.file()));
    let checked = shieldns_index::check_list_from(list.policy(), &mut tee);
    std::io::copy(&mut tee, &mut std::io::sink()).map_err(|e| read_error(list, path, e))?;
    let (read, digest) = tee.finish();
    let digest = hex::encode(digest);
    if read > list.max_bytes {
        return Err(too_large(list, path));
    }
    let entries = match checked {
        Ok((info, _)) => info.counts.rules,
        Err(error) => return Err(crate::syncer::refused_version(list, &error)),
    };
    crate::syncer::shrink_guard(list, kept, entries, forced)?;
    let file = staged.commit(&digest)?;
    Ok(Some(CachedVersion {
        file,
        signature_file: None,
        sha256: digest,
        etag: None,
        last_modified: None,
        fetched_at: cache::now(),
        entries,
        bytes: read,
        serial: 0,
        soa_serial: None,
    }))
}
