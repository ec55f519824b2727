//! shieldns-index: list parsing and the compact, immutable suffix index.
//!
//! This crate is pure: it takes list bytes and policy settings and returns an
//! immutable [`Snapshot`] that answers "what happens to this name for this
//! client?" without I/O, locks or allocation. It has no sockets, no tokio and
//! no file access; the `sync` crate reads files and the `resolver` crate
//! serves queries, and both meet at `Snapshot`, published through one
//! `ArcSwap` owned by the binary.
//!
//! Key design decision: names are not stored. Each rule is stored as a 64-bit
//! hash of its label chain (hashed from the root down, so the query walk
//! computes every suffix's hash incrementally in one pass) plus a 4-byte line
//! number and a 2-byte tag, sorted by hash and bucketed by the hash's top
//! bits: about 15 bytes per name and one cache-line probe per label.
//! Provenance is (list, line); the rule text is re-read from the source file
//! when an operator asks `explain`.

pub mod format;
pub mod name;
pub mod rule;

pub use format::parse;
pub use rule::{LineCounts, LineRejection, ListFormat, LocalData, Rule, RuleAction, RuleSink, RuleTarget, Scope};

pub mod childsafe;
mod decide;
mod digest;
mod pattern;
pub mod policy;
mod snapshot;
mod suffix;

pub use childsafe::{
    BypassDefence, Dns64, ProfilePolicy, Rebinding, SafeSearch, SafeSearchRewrite, Schedule, bypass_defence,
};
pub use decide::{Decision, ede};
pub use digest::name_digest;
pub use jiff::Timestamp;
pub use policy::{BlockResponse, ListAction, ListId, ListPolicy, Profile, ProfileConfig, ProfileId};
pub use snapshot::{
    Hit, IndexError, ListInfo, Matched, NameWarmer, REJECTED_EXAMPLES, REJECTED_TEXT_CHARS, RejectedLine, Snapshot,
    SnapshotBuilder, UNMATCHED_PROFILE, Verdict, check_list, check_list_from,
};
pub use suffix::MAX_LISTS;
