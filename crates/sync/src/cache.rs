//! The last-known-good cache: each verified download, its signature and a
//! JSON state file per list in `sync.cache_dir`.
//!
//! Layout, for a list named `NAME`:
//! - `NAME-<16 hex of sha256>.list` and `.minisig`: a verified version;
//! - `NAME.json`: the state ([`ListState`]): which version is current, its
//!   metadata, and the last check, success and failure.
//!
//! Versions are named by content and the state file is replaced last, by
//! rename: that rename is the commit point. A crash before it leaves the
//! previous state naming the previous files, which are deleted only after
//! the commit, so the cache is never half-updated.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::SyncError;

/// The metadata of the version in force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedVersion {
    /// The data file, relative to the cache directory.
    pub file: String,
    /// The detached minisign signature, relative to the cache directory.
    #[serde(default)]
    pub signature_file: Option<String>,
    /// The body's sha256 (hex).
    pub sha256: String,
    /// The ETag the publisher sent with it.
    #[serde(default)]
    pub etag: Option<String>,
    /// The Last-Modified header the publisher sent with it.
    #[serde(default)]
    pub last_modified: Option<String>,
    /// When it was downloaded (RFC 3339).
    pub fetched_at: String,
    /// Rules it contains.
    pub entries: u64,
    /// Bytes (after gzip decoding).
    pub bytes: u64,
    /// This cache's version counter: 1 for the first version, then +1 for
    /// each accepted change.
    pub serial: u64,
    /// For a zone transfer, the zone's SOA serial.
    #[serde(default)]
    pub soa_serial: Option<u32>,
}

/// A failed attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// When (RFC 3339).
    pub at: String,
    /// Why, in one line.
    pub reason: String,
}

/// Everything the cache knows about one list; `NAME.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListState {
    /// The list name.
    pub list: String,
    /// The URL it was last fetched from.
    pub url: String,
    /// The verified version in force, if any.
    #[serde(default)]
    pub current: Option<CachedVersion>,
    /// The last time the publisher was asked (RFC 3339).
    #[serde(default)]
    pub last_check: Option<String>,
    /// The last check that ended with the list verified and in force
    /// (a new version, or 304 Not Modified).
    #[serde(default)]
    pub last_success: Option<String>,
    /// The last failed check.
    #[serde(default)]
    pub last_failure: Option<Failure>,
    /// Failed checks since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
}

impl ListState {
    /// The version, as status shows it: ETag, serial and digest prefix.
    pub fn version(&self) -> Option<String> {
        let current = self.current.as_ref()?;
        let mut parts = vec![format!("serial {}", current.serial)];
        if let Some(soa) = current.soa_serial {
            parts.push(format!("SOA serial {soa}"));
        }
        if let Some(etag) = &current.etag {
            parts.push(format!("etag {etag}"));
        }
        parts.push(format!(
            "sha256 {}",
            current.sha256.get(..16).unwrap_or(&current.sha256)
        ));
        Some(parts.join(", "))
    }
}

/// The current time as RFC 3339 (seconds).
pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn state_path(dir: &Path, list: &str) -> PathBuf {
    dir.join(format!("{list}.json"))
}

/// Reads `NAME.json`; `None` when the list was never cached. A state file
/// that does not parse is an error: it is this program's own output.
pub fn load_state(dir: &Path, list: &str) -> Result<Option<ListState>, SyncError> {
    let path = state_path(dir, list);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SyncError::Cache {
                list: list.to_owned(),
                path,
                cause: source,
            });
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|e| SyncError::Cache {
        list: list.to_owned(),
        path,
        cause: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// The current version's data file, if the cache has one.
pub(crate) fn current_file(dir: &Path, list: &str) -> Option<PathBuf> {
    let state = load_state(dir, list).ok()??;
    Some(dir.join(state.current?.file))
}

/// Writes `NAME.json` atomically, creating the cache directory if needed
/// (a first start with the publisher down records its failure too).
pub(crate) fn store_state(dir: &Path, state: &ListState) -> Result<(), SyncError> {
    let path = state_path(dir, &state.list);
    std::fs::create_dir_all(dir).map_err(|source| SyncError::Cache {
        list: state.list.clone(),
        path: dir.to_path_buf(),
        cause: source,
    })?;
    let text = serde_json::to_vec_pretty(state).map_err(|e| SyncError::Cache {
        list: state.list.clone(),
        path: path.clone(),
        cause: std::io::Error::other(e),
    })?;
    write_atomic(&path, &text).map_err(|source| SyncError::Cache {
        list: state.list.clone(),
        path,
        cause: source,
    })
}

/// Writes a new verified version's data (and signature) under
/// content-derived names. The state file, written after, commits it.
pub(crate) fn store_version(
    dir: &Path,
    list: &str,
    sha256_hex: &str,
    body: &[u8],
    signature: Option<&[u8]>,
) -> Result<(String, Option<String>), SyncError> {
    let cache_error = |path: &Path, source| SyncError::Cache {
        list: list.to_owned(),
        path: path.to_path_buf(),
        cause: source,
    };
    std::fs::create_dir_all(dir).map_err(|e| cache_error(dir, e))?;
    let stem = format!("{list}-{}", sha256_hex.get(..16).unwrap_or(sha256_hex));
    let file = format!("{stem}.list");
    write_atomic(&dir.join(&file), body).map_err(|e| cache_error(&dir.join(&file), e))?;
    let signature_file = match signature {
        Some(bytes) => {
            let name = format!("{stem}.minisig");
            write_atomic(&dir.join(&name), bytes).map_err(|e| cache_error(&dir.join(&name), e))?;
            Some(name)
        }
        None => None,
    };
    Ok((file, signature_file))
}

/// A new version being written to the cache as it is read (a `path`
/// list's file): a temporary file that [`Staged::commit`] syncs and renames
/// to its content-derived name, and that is deleted if it is dropped
/// uncommitted.
pub(crate) struct Staged {
    dir: PathBuf,
    list: String,
    path: PathBuf,
    file: File,
    committed: bool,
}

impl Staged {
    pub(crate) fn create(dir: &Path, list: &str) -> Result<Self, SyncError> {
        let path = dir.join(format!(".{list}.{}.staged", std::process::id()));
        let cache_error = |path: &Path, cause| SyncError::Cache {
            list: list.to_owned(),
            path: path.to_path_buf(),
            cause,
        };
        std::fs::create_dir_all(dir).map_err(|e| cache_error(dir, e))?;
        let file = File::create(&path).map_err(|e| cache_error(&path, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            list: list.to_owned(),
            path,
            file,
            committed: false,
        })
    }

    /// The file being written.
    pub(crate) fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Syncs the data and renames it to `NAME-<16 hex of sha256>.list`; the
    /// state file, written after, commits it. Returns the file name.
    pub(crate) fn commit(mut self, sha256_hex: &str) -> Result<String, SyncError> {
        let name = format!("{}-{}.list", self.list, sha256_hex.get(..16).unwrap_or(sha256_hex));
        let target = self.dir.join(&name);
        let result = (|| {
            self.file.sync_all()?;
            std::fs::rename(&self.path, &target)?;
            File::open(&self.dir)?.sync_all()
        })();
        result.map_err(|cause| SyncError::Cache {
            list: self.list.clone(),
            path: target,
            cause,
        })?;
        self.committed = true;
        Ok(name)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Deletes versions of `list` other than the current one. Best effort: a
/// leftover file costs disk, never correctness.
pub(crate) fn remove_stale(dir: &Path, list: &str, keep: &CachedVersion) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let prefix = format!("{list}-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        // Exactly 16 hex digits and our extension: `a-b-…` (list `a-b`)
        // must not be mistaken for a version of list `a`.
        let Some((hash, ext)) = rest.split_once('.') else {
            continue;
        };
        let ours = hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && matches!(ext, "list" | "minisig");
        let current = name == keep.file || Some(name) == keep.signature_file.as_deref();
        if ours && !current {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Temp file in the same directory, fsync, rename over `path`, fsync the
/// directory: after a crash `path` holds either the old or the new bytes.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_commit_replaces_versions() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_state(dir.path(), "a").unwrap(), None);
        let (file, sig) = store_version(dir.path(), "a", &"ab".repeat(32), b"x.test\n", Some(b"sig")).unwrap();
        assert_eq!(file, format!("a-{}.list", "ab".repeat(8)));
        let version = CachedVersion {
            file: file.clone(),
            signature_file: sig,
            sha256: "ab".repeat(32),
            fetched_at: now(),
            entries: 1,
            bytes: 7,
            serial: 1,
            ..CachedVersion::default()
        };
        let state = ListState {
            list: "a".into(),
            url: "https://127.0.0.1/a".into(),
            current: Some(version.clone()),
            ..ListState::default()
        };
        store_state(dir.path(), &state).unwrap();
        assert_eq!(load_state(dir.path(), "a").unwrap(), Some(state));
        assert_eq!(current_file(dir.path(), "a"), Some(dir.path().join(&file)));

        // A second version, then cleanup keeps only it (and list `a-b`'s
        // files, which merely share the prefix).
        let (file2, _) = store_version(dir.path(), "a", &"cd".repeat(32), b"y.test\n", None).unwrap();
        store_version(dir.path(), "a-b", &"ef".repeat(32), b"z.test\n", None).unwrap();
        let keep = CachedVersion {
            file: file2.clone(),
            signature_file: None,
            ..version
        };
        remove_stale(dir.path(), "a", &keep);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![format!("a-b-{}.list", "ef".repeat(8)), file2, "a.json".into()]
        );
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), "{not json").unwrap();
        let error = load_state(dir.path(), "a").unwrap_err().to_string();
        assert!(error.contains("a.json"), "{error}");
    }
}
