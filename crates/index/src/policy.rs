//! Policy settings the snapshot enforces: lists and profiles, as configured.
//!
//! These types deserialize straight from the `[[list]]` and `[[profile]]`
//! tables of the configuration (the list's source keys belong to the sync
//! crate, which embeds [`ListPolicy`]).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Deserialize;

use crate::childsafe::{ProfilePolicy, bypass_defence};
use crate::suffix::ListSet;

/// What a list's rules do by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListAction {
    /// Rules block (exceptions inside the list, like adblock `@@`, still allow).
    #[default]
    Block,
    /// Every rule allows: an allowlist. Allowlists apply to every profile.
    Allow,
}

/// The policy part of one `[[list]]`: identity and how its rules count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPolicy {
    /// Unique list name, used in EDE text, metrics and `explain`.
    pub name: String,
    /// Category a profile blocks by name. A block list without a category
    /// applies to every profile.
    pub category: Option<String>,
    /// The file format.
    pub format: crate::rule::ListFormat,
    /// Block or allow.
    pub action: ListAction,
    /// Enforced for every client whatever its profile or allowlists say (the
    /// national CSAM list).
    pub mandatory: bool,
    /// Whether the list may hold no rules at all. Otherwise an empty or
    /// comments-only list fails the build (a truncated download or an
    /// emptied file must not silently switch its category off); a mandatory
    /// list is never allowed to be empty.
    pub allow_empty: bool,
    /// Whether one-label rules (`com`, `zip`) may block a whole top-level
    /// domain. Off, they are rejected line by line in every format.
    pub allow_tld_rules: bool,
}

impl ListPolicy {
    /// A block list's policy as `[[list]]` has it by default: not
    /// mandatory, never empty, no top-level-domain rules. Other lists
    /// change fields with struct update syntax.
    pub fn block(name: impl Into<String>, category: Option<&str>, format: crate::rule::ListFormat) -> Self {
        Self {
            name: name.into(),
            category: category.map(Into::into),
            format,
            action: ListAction::Block,
            mandatory: false,
            allow_empty: false,
            allow_tld_rules: false,
        }
    }
}

/// How a profile answers a blocked query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockResponse {
    /// NXDOMAIN with an SOA (the default).
    #[default]
    Nxdomain,
    /// NOERROR with no answer and an SOA.
    Nodata,
    /// `0.0.0.0` for A and `::` for AAAA; NODATA for other types.
    Null,
    /// The profile's sinkhole addresses (an information page).
    Sinkhole,
    /// REFUSED.
    Refused,
}

/// One `[[profile]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Unique profile name.
    pub name: String,
    /// Client networks; a client gets the profile whose prefix matches longest.
    pub clients: Vec<IpNet>,
    /// Categories blocked for these clients.
    #[serde(default)]
    pub block: Vec<String>,
    /// How blocked queries are answered.
    #[serde(default)]
    pub block_response: BlockResponse,
    /// TTL of block answers and of the SOA that negative block answers carry.
    #[serde(default = "default_block_ttl")]
    pub block_ttl: u32,
    /// The IPv4 address for `block_response = "sinkhole"`.
    #[serde(default)]
    pub sinkhole_ipv4: Option<Ipv4Addr>,
    /// The IPv6 address for `block_response = "sinkhole"`.
    #[serde(default)]
    pub sinkhole_ipv6: Option<Ipv6Addr>,
    /// Safe search: `true`, or a table choosing engines.
    #[serde(default)]
    pub safe_search: crate::childsafe::SafeSearchConfig,
    /// Time windows that block extra categories.
    #[serde(default)]
    pub schedule: Vec<crate::childsafe::ScheduleConfig>,
    /// Block public names that answer with private, loopback or link-local
    /// addresses.
    #[serde(default)]
    pub rebinding_protection: bool,
    /// Local domains exempt from rebinding protection (e.g. `home.arpa`).
    #[serde(default)]
    pub rebinding_allow: Vec<String>,
    /// Defeat filter bypass: Firefox's DoH canary, iCloud Private Relay and
    /// DDR discovery.
    #[serde(default)]
    pub bypass_protection: bool,
    /// Query types answered NODATA (e.g. `["HTTPS", "ANY"]`).
    #[serde(default)]
    pub block_qtypes: Vec<String>,
    /// Check every name in an answer's CNAME chain against the lists
    /// (CNAME cloaking). Default: on.
    #[serde(default = "yes")]
    pub inspect_cnames: bool,
    /// Synthesize AAAA from A for IPv6-only clients (RFC 6147).
    #[serde(default)]
    pub dns64: bool,
    /// The DNS64 prefix; must be a /96.
    #[serde(default = "default_dns64_prefix")]
    pub dns64_prefix: ipnet::Ipv6Net,
    /// Client IDs that select this profile on the encrypted listeners,
    /// whatever the client's address: the `{id}` of a DoH path
    /// `/dns-query/{id}` or of a DoT server name `{id}.{client_id_domain}`
    /// (a device behind a school's or a home's NAT). Matched without
    /// regard to case; the access list still applies to the address.
    #[serde(default)]
    pub client_ids: Vec<String>,
}

impl ProfileConfig {
    /// A profile with every optional key at its default.
    pub fn new(name: impl Into<String>, clients: Vec<IpNet>) -> Self {
        Self {
            name: name.into(),
            clients,
            block: Vec::new(),
            block_response: BlockResponse::default(),
            block_ttl: DEFAULT_BLOCK_TTL,
            sinkhole_ipv4: None,
            sinkhole_ipv6: None,
            safe_search: crate::childsafe::SafeSearchConfig::default(),
            schedule: Vec::new(),
            rebinding_protection: false,
            rebinding_allow: Vec::new(),
            bypass_protection: false,
            block_qtypes: Vec::new(),
            inspect_cnames: true,
            dns64: false,
            dns64_prefix: default_dns64_prefix(),
            client_ids: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_dns64_prefix() -> ipnet::Ipv6Net {
    ipnet::Ipv6Net::new_assert(std::net::Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96)
}

/// The default `block_ttl`: short enough that an unblocked name recovers
/// quickly, long enough that clients do not re-ask at once.
pub const DEFAULT_BLOCK_TTL: u32 = 60;

fn default_block_ttl() -> u32 {
    DEFAULT_BLOCK_TTL
}

/// Identifies a profile inside one snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProfileId(pub(crate) u16);

impl ProfileId {
    /// The profile's position in [`crate::Snapshot::profiles`].
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// Identifies a list inside one snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListId(pub u16);

/// A profile as the snapshot holds it.
#[derive(Clone, Debug)]
pub struct Profile {
    /// The configured name (`unmatched` for the implicit fallback profile).
    pub name: String,
    /// Its client networks.
    pub clients: Vec<IpNet>,
    /// The blocked categories.
    pub categories: Vec<String>,
    /// How blocks are answered.
    pub block_response: BlockResponse,
    /// Block answer TTL.
    pub block_ttl: u32,
    /// Sinkhole IPv4 address.
    pub sinkhole_ipv4: Option<Ipv4Addr>,
    /// Sinkhole IPv6 address.
    pub sinkhole_ipv6: Option<Ipv6Addr>,
    /// Safe-search rewrites.
    pub safe_search: crate::childsafe::SafeSearch,
    /// Schedules adding categories in time windows.
    pub schedules: Vec<crate::childsafe::Schedule>,
    /// Rebinding protection, when on.
    pub rebinding: Option<crate::childsafe::Rebinding>,
    /// Bypass defences on.
    pub bypass_protection: bool,
    /// Query type codes answered NODATA.
    pub blocked_qtypes: Vec<u16>,
    /// CNAME-chain inspection on.
    pub inspect_cnames: bool,
    /// DNS64, when on.
    pub dns64: Option<crate::childsafe::Dns64>,
    pub(crate) enabled: ListSet,
    pub(crate) uses_digests: bool,
    pub(crate) uses_patterns: bool,
}

impl Profile {
    /// Profile policy for a name the lists let through, in the one
    /// precedence the resolver and `explain` share: bypass defences, then
    /// blocked query types, then safe search.
    pub fn policy_for(&self, name: &str, qtype: u16) -> Option<ProfilePolicy> {
        if self.bypass_protection
            && let Some(defence) = bypass_defence(name)
        {
            return Some(ProfilePolicy::Bypass(defence));
        }
        if self.blocked_qtypes.contains(&qtype) {
            return Some(ProfilePolicy::BlockedQueryType);
        }
        self.safe_search.rewrite(name).map(ProfilePolicy::SafeSearch)
    }
}
