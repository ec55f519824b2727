//! shieldns-sync: turns configured lists into a published snapshot, off the
//! hot path.
//!
//! This crate reads list files (or lists compiled into the binary, `builtin:`
//! paths), hands their bytes to the index crate, and returns a complete
//! [`Snapshot`] or an error naming the list, file and reason. It never
//! touches the `ArcSwap` itself: the caller stores the result, so a failed
//! build can never replace the last good snapshot.
//!
//! Key design decision: all-or-nothing. A snapshot is built from every list
//! or not at all; one broken list keeps the previous snapshot in force.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::Deserialize;
use shieldns_index::{IndexError, ListAction, ListFormat, ListPolicy, ProfileConfig, Snapshot, SnapshotBuilder};

mod builtin;

pub use builtin::BUILTIN_PREFIX;

/// One `[[list]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListConfig {
    /// Unique name, shown in EDE text, metrics and `explain`.
    pub name: String,
    /// Category profiles block by name; none means every profile.
    #[serde(default)]
    pub category: Option<String>,
    /// File format.
    pub format: ListFormat,
    /// Local file, relative to the configuration file's directory, or
    /// `builtin:NAME` for a starter list compiled into the binary.
    pub path: PathBuf,
    /// `block` (default) or `allow`.
    #[serde(default)]
    pub action: ListAction,
    /// Enforced for every client, over every allowlist.
    #[serde(default)]
    pub mandatory: bool,
}

impl ListConfig {
    /// The index crate's view of this list.
    pub fn policy(&self) -> ListPolicy {
        ListPolicy {
            name: self.name.clone(),
            category: self.category.clone(),
            format: self.format,
            action: self.action,
            mandatory: self.mandatory,
        }
    }

    /// The file this list is read from, resolved against `base_dir`
    /// (`None` for built-in lists).
    pub fn resolved_path(&self, base_dir: &Path) -> Option<PathBuf> {
        if self.path.to_string_lossy().starts_with(BUILTIN_PREFIX) {
            None
        } else if self.path.is_absolute() {
            Some(self.path.clone())
        } else {
            Some(base_dir.join(&self.path))
        }
    }
}

/// Errors building a snapshot, each naming the list and file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// A list file could not be read.
    #[error("list `{list}`: cannot read {}: {source}", path.display())]
    Read {
        /// The list.
        list: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
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
    /// The index refused a list or profile.
    #[error("{}{source}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    Index {
        /// The list file involved, when the error is about a list.
        file: Option<PathBuf>,
        /// The index error.
        source: IndexError,
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
}

/// Reads every list and builds a snapshot. Blocking (file I/O and CPU):
/// call it from a blocking thread, never from the resolver's hot path.
pub fn build_snapshot(sources: PolicySources<'_>) -> Result<Built, SyncError> {
    let started = Instant::now();
    let mut builder = SnapshotBuilder::new();
    builder.set_access(sources.allow.to_vec());
    let mut loads = Vec::with_capacity(sources.lists.len());
    for list in sources.lists {
        let (bytes, source, file) = read_list(list, sources.base_dir)?;
        let info = builder
            .add_list(list.policy(), &bytes)
            .map_err(|source| SyncError::Index {
                file: file.clone(),
                source,
            })?;
        loads.push(ListLoad {
            name: list.name.clone(),
            source,
            bytes: bytes.len(),
            rules: info.counts.rules,
            rejected: info.counts.rejected,
            rejected_examples: info.rejected_examples.clone(),
        });
    }
    for profile in sources.profiles {
        builder.add_profile(profile.clone());
    }
    let snapshot = builder
        .build()
        .map_err(|source| SyncError::Index { file: None, source })?;
    Ok(Built {
        snapshot,
        lists: loads,
        elapsed: started.elapsed(),
    })
}

/// Reads one list's bytes: the file, or the built-in copy.
pub fn read_list(list: &ListConfig, base_dir: &Path) -> Result<(Vec<u8>, String, Option<PathBuf>), SyncError> {
    match list.resolved_path(base_dir) {
        Some(path) => match std::fs::read(&path) {
            Ok(bytes) => Ok((bytes, path.display().to_string(), Some(path))),
            Err(source) => Err(SyncError::Read {
                list: list.name.clone(),
                path,
                source,
            }),
        },
        None => {
            let text = list.path.to_string_lossy();
            let name = text.trim_start_matches(BUILTIN_PREFIX);
            match builtin::get(name) {
                Some(bytes) => Ok((bytes.to_vec(), text.into_owned(), None)),
                None => Err(SyncError::UnknownBuiltin {
                    list: list.name.clone(),
                    name: name.to_owned(),
                    available: builtin::names().join(", "),
                }),
            }
        }
    }
}
