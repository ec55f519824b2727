//! The one policy decision: what happens to a question asked by a profile's
//! client at a time.
//!
//! Every transport (the UDP fast path, the full handler behind TCP and the
//! slow UDP path) and `shieldns explain` call [`Snapshot::decide`]; none of
//! them restates the precedence. It is: the lists (mandatory, important,
//! allow, block, schedules: [`Snapshot::decide_at`]), then the profile's
//! policy beyond lists (bypass defences, blocked query types, safe search:
//! [`crate::Profile::policy_for`]). The access list comes before it, in
//! [`Snapshot::client_policy`], because a refused client has no profile.
//!
//! Key design decision: the decision is a value, not an answer. How it is
//! encoded (wire bytes on the fast path, records behind the handler, text in
//! `explain`) is the caller's, so the decision stays pure and allocation-free.

use jiff::Timestamp;

use crate::childsafe::{BypassDefence, ProfilePolicy};
use crate::policy::ProfileId;
use crate::snapshot::{Hit, Snapshot, Verdict};

/// RFC 8914 Extended DNS Error info codes shieldns sends.
pub mod ede {
    /// Other: the EXTRA-TEXT says what.
    pub const OTHER: u16 = 0;
    /// Stale Answer (served from an expired cache entry).
    pub const STALE_ANSWER: u16 = 3;
    /// DNSSEC Bogus.
    pub const DNSSEC_BOGUS: u16 = 6;
    /// DNSKEY Missing.
    pub const DNSKEY_MISSING: u16 = 9;
    /// RRSIGs Missing.
    pub const RRSIGS_MISSING: u16 = 10;
    /// Blocked: a list without a category, or a policy block.
    pub const BLOCKED: u16 = 15;
    /// Censored: a mandatory (legally required) list.
    pub const CENSORED: u16 = 16;
    /// Filtered: a category list the client's profile blocks, or the
    /// profile's own filtering (bypass defences, query types).
    pub const FILTERED: u16 = 17;
    /// Not Authoritative (RD=0 and nothing cached).
    pub const NOT_AUTHORITATIVE: u16 = 20;
    /// No Reachable Authority.
    pub const NO_REACHABLE_AUTHORITY: u16 = 22;

    /// The code's name in RFC 8914's registry, for operators.
    pub fn name(code: u16) -> &'static str {
        match code {
            STALE_ANSWER => "Stale Answer",
            DNSSEC_BOGUS => "DNSSEC Bogus",
            DNSKEY_MISSING => "DNSKEY Missing",
            RRSIGS_MISSING => "RRSIGs Missing",
            BLOCKED => "Blocked",
            CENSORED => "Censored",
            FILTERED => "Filtered",
            NOT_AUTHORITATIVE => "Not Authoritative",
            NO_REACHABLE_AUTHORITY => "No Reachable Authority",
            _ => "Other",
        }
    }
}

/// What happens to a question for a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A list rule blocks the name; its action says how (block, NODATA,
    /// drop, RPZ local data).
    List(Hit),
    /// The lists let the name through, and the profile's own policy answers
    /// instead of the upstream.
    Policy(ProfilePolicy),
    /// Resolve, then check the answer; the allow rule that let the name
    /// through, if one matched.
    Resolve(Option<Hit>),
}

impl Decision {
    /// The EDE code the answer carries, if it is not resolved: the list's
    /// (see [`Snapshot::ede_code`]) or [`ede::FILTERED`] for the profile's
    /// blocks; a safe-search rewrite carries none.
    pub fn ede_code(&self, snapshot: &Snapshot) -> Option<u16> {
        match self {
            Self::List(hit) => Some(snapshot.ede_code(hit)),
            Self::Policy(ProfilePolicy::Bypass(_) | ProfilePolicy::BlockedQueryType) => Some(ede::FILTERED),
            Self::Policy(ProfilePolicy::SafeSearch(_)) | Self::Resolve(_) => None,
        }
    }

    /// What a profile policy answer says of itself: the EXTRA-TEXT of its
    /// EDE (e.g. `policy=bypass-protection reason=firefox-canary`); `qtype`
    /// is the question's type in presentation form.
    pub fn policy_text(policy: ProfilePolicy, qtype: &dyn std::fmt::Display) -> String {
        match policy {
            ProfilePolicy::Bypass(BypassDefence::Nxdomain(what) | BypassDefence::Nodata(what)) => {
                format!("policy=bypass-protection reason={what}")
            }
            ProfilePolicy::BlockedQueryType => format!("policy=block-qtypes type={qtype}"),
            ProfilePolicy::SafeSearch(rewrite) => format!("policy=safe-search engine={}", rewrite.engine),
        }
    }
}

impl Snapshot {
    /// Decides a question: `name` normalized (lower case, no trailing dot),
    /// `qtype` its record type, for a client of `profile` at `at` (which
    /// only schedules read). Never allocates, never fails.
    pub fn decide(&self, profile: ProfileId, name: &str, qtype: u16, at: Timestamp) -> Decision {
        match self.decide_at(name, profile, at) {
            Verdict::Block(hit) => Decision::List(hit),
            verdict => match self.profile(profile).policy_for(name, qtype) {
                Some(policy) => Decision::Policy(policy),
                None => Decision::Resolve(match verdict {
                    Verdict::Allow(hit) => Some(hit),
                    Verdict::Pass | Verdict::Block(_) => None,
                }),
            },
        }
    }
}
