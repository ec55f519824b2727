//! shieldns-compliance: what a provider must be able to prove, kept and
//! reported.
//!
//! [`Recorder`] turns what the daemon does (policies published, list sync
//! checks, refused list files, reloads) into the live list metrics and
//! rows of the compliance [`store`] (SQLite); [`report`] computes the
//! half-yearly report from that store alone, in Markdown, CSV, JSON or
//! HTML.
//!
//! Key design decision: everything arrives as a value the daemon passes
//! along (a sync pass report, a build's list loads), never by reading the
//! sync crate's state files behind its back, so each check is counted
//! exactly once and the metrics, `lists status` and the report agree.

mod recorder;
pub mod report;
mod store;

use std::path::PathBuf;

pub use recorder::Recorder;
pub use store::StorageConfig;

/// Why the compliance store or a report failed.
#[derive(Debug, thiserror::Error)]
pub enum ComplianceError {
    /// An SQLite operation failed.
    #[error("{what}: {cause}")]
    Store {
        /// What was being done.
        what: String,
        /// Why it failed.
        cause: rusqlite::Error,
    },
    /// The store's directory cannot be created.
    #[error("storage.dir: cannot create {}: {cause}", dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// There is no store to report from.
    #[error("no compliance store at {} (has the daemon run with this storage.dir?)", .0.display())]
    NoStore(PathBuf),
    /// The report's period is not two dates in order.
    #[error("{0}")]
    Period(String),
    /// The report cannot be encoded.
    #[error("cannot encode the report: {0}")]
    Json(#[from] serde_json::Error),
    /// The store's writer thread cannot be started.
    #[error("cannot start the compliance store writer: {0}")]
    Thread(std::io::Error),
}

impl From<rusqlite::Error> for ComplianceError {
    /// A query of the report: the statements are fixed, so the cause says
    /// enough.
    fn from(cause: rusqlite::Error) -> Self {
        Self::Store {
            what: "cannot read the compliance store".into(),
            cause,
        }
    }
}
