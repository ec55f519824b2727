//! Per-snapshot handle tables: the profile and list label sets come from the
//! snapshot and change on reload, so the labelled children for one snapshot
//! generation are resolved once, when that snapshot is installed, into plain
//! vectors indexed by profile and list position. A query finds its table by
//! the identity of the snapshot it loaded, then indexes; it never hashes a
//! label set.

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec};
use shieldns_index::{ListId, ProfileId, Snapshot};

/// Response codes with their own label value; everything else is `other`.
pub(crate) const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];

/// Transport label values, in [`Transport`] order.
pub(crate) const PROTOCOLS: [&str; 5] = ["udp", "tcp", "dot", "doh", "doq"];

/// The transport a query arrived on: the `protocol` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Plain UDP.
    Udp,
    /// Plain TCP (RFC 7766).
    Tcp,
    /// DNS over TLS (RFC 7858).
    Dot,
    /// DNS over HTTPS (RFC 8484).
    Doh,
    /// DNS over QUIC (RFC 9250).
    Doq,
}

impl Transport {
    /// Its position in [`PROTOCOLS`].
    pub(crate) fn index(self) -> usize {
        match self {
            Self::Udp => 0,
            Self::Tcp => 1,
            Self::Dot => 2,
            Self::Doh => 3,
            Self::Doq => 4,
        }
    }

    /// The label value (`udp`, `tcp`, `dot`, `doh`, `doq`), also the query
    /// log's.
    pub fn label(self) -> &'static str {
        PROTOCOLS[self.index()]
    }

    /// Whether answers are datagrams (truncated to the client's payload).
    pub fn is_datagram(self) -> bool {
        self == Self::Udp
    }
}

/// The label value for queries that never got a profile (refused by the
/// access list, malformed, not a query).
pub const NO_PROFILE: &str = "none";

/// The label value used when a query's snapshot is older than every table
/// still kept (a query in flight across two reloads). Bounded, and rare.
pub const SUPERSEDED: &str = "superseded";

/// The index of an rcode in [`RCODES`].
pub(crate) fn rcode_index(rcode: u16) -> usize {
    usize::from(rcode).min(RCODES.len() - 1)
}

/// One profile's query counters: `[protocol][rcode]`.
#[derive(Debug)]
pub(crate) struct ProfileCounters {
    pub(crate) queries: [[IntCounter; RCODES.len()]; PROTOCOLS.len()],
}

impl ProfileCounters {
    pub(crate) fn resolve(family: &IntCounterVec, profile: &str) -> Self {
        Self {
            queries: PROTOCOLS
                .map(|protocol| RCODES.map(|rcode| family.with_label_values(&[profile, protocol, rcode]))),
        }
    }

    pub(crate) fn get(&self, transport: Transport, rcode: u16) -> Option<&IntCounter> {
        self.queries
            .get(transport.index())
            .and_then(|row| row.get(rcode_index(rcode)))
    }
}

/// One snapshot's handles.
#[derive(Debug)]
pub(crate) struct Table {
    /// The snapshot's generation: unique per build in the process, so a
    /// table can never be mistaken for another snapshot's.
    generation: u64,
    profiles: Vec<ProfileCounters>,
    /// Blocked counters, `list * profiles.len() + profile`.
    blocks: Vec<IntCounter>,
}

impl Table {
    pub(crate) fn build(snapshot: &Snapshot, queries: &IntCounterVec, blocked: &IntCounterVec) -> Self {
        let profiles: Vec<ProfileCounters> = snapshot
            .profiles()
            .iter()
            .map(|p| ProfileCounters::resolve(queries, &p.name))
            .collect();
        let mut blocks = Vec::with_capacity(snapshot.lists().len() * profiles.len());
        for list in snapshot.lists() {
            let category = list.policy.category.as_deref().unwrap_or("none");
            let ede = ede_label(list.policy.mandatory, list.policy.category.is_some());
            for profile in snapshot.profiles() {
                blocks.push(blocked.with_label_values(&[category, &list.policy.name, &profile.name, ede]));
            }
        }
        Self {
            generation: snapshot.generation(),
            profiles,
            blocks,
        }
    }

    pub(crate) fn is_for(&self, snapshot: &Snapshot) -> bool {
        self.generation == snapshot.generation()
    }

    /// The position of `profile` in the snapshot's profile slice.
    pub(crate) fn profile_index(&self, profile: ProfileId) -> Option<usize> {
        Some(profile.index()).filter(|&i| i < self.profiles.len())
    }

    pub(crate) fn profile(&self, index: usize) -> Option<&ProfileCounters> {
        self.profiles.get(index)
    }

    pub(crate) fn block(&self, list: ListId, profile: usize) -> Option<&IntCounter> {
        self.blocks.get(usize::from(list.0) * self.profiles.len() + profile)
    }
}

/// The EDE code of a list's blocks, as `Snapshot::ede_code` assigns it.
pub(crate) fn ede_label(mandatory: bool, has_category: bool) -> &'static str {
    if mandatory {
        "16"
    } else if has_category {
        "17"
    } else {
        "15"
    }
}

/// The tables a query may need: the installed snapshot's and its
/// predecessor's (queries in flight across one reload still count under
/// their own snapshot's labels).
#[derive(Debug, Default)]
pub(crate) struct Tables {
    pub(crate) current: Option<Arc<Table>>,
    pub(crate) previous: Option<Arc<Table>>,
}

impl Tables {
    pub(crate) fn find(&self, snapshot: &Snapshot) -> Option<&Table> {
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .map(Arc::as_ref)
            .find(|t| t.is_for(snapshot))
    }
}
