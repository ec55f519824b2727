//! The rule model every list format parses into, and the sink parsers feed.
//!
//! Parsers stream rules into a [`RuleSink`] instead of returning a `Vec`, so
//! a 10M-line list is hashed into the index as it is read and never exists as
//! 10M owned strings.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::name::NameRejection;

/// The longest line any format accepts. Names are at most 253 bytes, and
/// the longest real rules (adblock with modifiers, RPZ with local data) stay
/// well under 1 KiB; a longer line is garbage, and refusing it up front
/// keeps parsing time and memory linear in the input.
pub const MAX_LINE_BYTES: usize = 4096;

/// A list's file format. Chosen by the operator (`format = "…"`), never
/// guessed, so that a publisher changing its format is an error, not a silent
/// change of meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListFormat {
    /// `0.0.0.0 a.com b.com` lines.
    Hosts,
    /// One name a line.
    Domains,
    /// `*.a.com` lines (a.com and its subdomains, as publishers intend).
    Wildcard,
    /// AdGuard DNS filter syntax.
    Adblock,
    /// `address=/a.com/…`, `local=/a.com/`, `server=/a.com/`.
    Dnsmasq,
    /// A Response Policy Zone file.
    Rpz,
    /// One hex SHA-256 digest of a normalized name a line.
    Sha256,
    /// One IP address or CIDR prefix a line, matched against answers.
    Ip,
}

impl ListFormat {
    /// Every format, in documentation order.
    pub const ALL: [Self; 8] = [
        Self::Hosts,
        Self::Domains,
        Self::Wildcard,
        Self::Adblock,
        Self::Dnsmasq,
        Self::Rpz,
        Self::Sha256,
        Self::Ip,
    ];

    /// Whether the format's rules go into the name index: digest and
    /// answer-address rules live outside it.
    pub fn has_name_rules(self) -> bool {
        !matches!(self, Self::Sha256 | Self::Ip)
    }

    /// The name used in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hosts => "hosts",
            Self::Domains => "domains",
            Self::Wildcard => "wildcard",
            Self::Adblock => "adblock",
            Self::Dnsmasq => "dnsmasq",
            Self::Rpz => "rpz",
            Self::Sha256 => "sha256",
            Self::Ip => "ip",
        }
    }
}

impl fmt::Display for ListFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ListFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|f| f.as_str() == s).ok_or_else(|| {
            format!(
                "unknown list format `{s}` (expected one of hosts, domains, wildcard, adblock, dnsmasq, rpz, sha256, ip)"
            )
        })
    }
}

/// Which names a name rule covers, relative to its name `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `n` only (adblock `|n^`, RPZ `n CNAME .`).
    Exact,
    /// `n` and every name under it (the default for every format).
    Subtree,
    /// Names under `n` but not `n` itself (RPZ `*.n CNAME .`).
    SubdomainsOnly,
}

/// What a matching rule asks for. The list's own `action` and `mandatory`
/// settings are applied on top of this when the snapshot is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleAction {
    /// Block, answered the way the client's profile says.
    Block,
    /// Block even over non-important exceptions (adblock `$important`).
    BlockImportant,
    /// Let the name through (adblock `@@`, RPZ `rpz-passthru.`).
    Allow,
    /// An exception that beats important blocks (`@@…$important`).
    AllowImportant,
    /// Answer NOERROR with no records (RPZ `CNAME *.`).
    NoData,
    /// Send no answer at all (RPZ `CNAME rpz-drop.`).
    Drop,
    /// Answer with the rule's local data (RPZ local-data records).
    Rewrite,
}

impl RuleAction {
    /// Whether this action lets the name through.
    pub fn is_allow(self) -> bool {
        matches!(self, Self::Allow | Self::AllowImportant)
    }
}

/// One record of RPZ local data, answered instead of the real one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LocalData {
    /// An A record.
    A(Ipv4Addr),
    /// An AAAA record.
    Aaaa(Ipv6Addr),
    /// A CNAME to a normalized name (no trailing dot).
    Cname(String),
}

/// What a rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleTarget<'a> {
    /// A normalized domain name and the names it covers.
    Name {
        /// The normalized name (lower case, punycode, no trailing dot).
        name: &'a str,
        /// Which names around `name` match.
        scope: Scope,
    },
    /// A pattern matched against the whole normalized query name.
    Pattern {
        /// A regular expression in `regex` crate syntax, matched against the
        /// lower-case query name without trailing dot.
        regex: String,
        /// A literal every matching name contains, if the pattern has one; the
        /// pattern matcher uses it as an Aho-Corasick prefilter.
        required_literal: Option<String>,
    },
    /// An address prefix matched against addresses in answers (RPZ `rpz-ip`).
    AnswerIp(IpNet),
    /// The SHA-256 digest of a normalized name; matches that name and every
    /// name under it.
    NameDigest([u8; 32]),
}

/// One parsed rule, with the line it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule<'a> {
    /// The 1-based line number in the source file.
    pub line: u32,
    /// What the rule matches.
    pub target: RuleTarget<'a>,
    /// What the rule asks for.
    pub action: RuleAction,
    /// Local data for [`RuleAction::Rewrite`]; empty otherwise.
    pub local_data: Vec<LocalData>,
}

/// Why a line was refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LineRejection {
    /// The name on the line is not a valid domain name.
    Name(NameRejection),
    /// The line does not have the shape its format requires.
    Syntax(&'static str),
    /// An adblock modifier shieldns does not implement (named).
    UnsupportedModifier(String),
    /// An RPZ feature shieldns does not implement (named).
    UnsupportedRpz(&'static str),
    /// A pattern that did not compile as a regular expression.
    BadPattern(String),
    /// A line that is not valid UTF-8.
    NotUtf8,
    /// A line longer than [`MAX_LINE_BYTES`]: no rule of any
    /// format is that long, so it is garbage (or a binary file).
    TooLong,
    /// A one-label name (`com`, `vn`): as a rule it would match a whole
    /// top-level domain. Allowed only on a list with `allow_tld_rules`.
    SingleLabel,
}

impl fmt::Display for LineRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(r) => write!(f, "{r}"),
            Self::Syntax(why) => write!(f, "syntax: {why}"),
            Self::UnsupportedModifier(m) => write!(f, "unsupported modifier `${m}`"),
            Self::UnsupportedRpz(what) => write!(f, "unsupported RPZ feature: {what}"),
            Self::BadPattern(e) => write!(f, "bad pattern: {e}"),
            Self::NotUtf8 => f.write_str("line is not valid UTF-8"),
            Self::TooLong => write!(
                f,
                "line is longer than {} bytes (no rule is; a binary or corrupt file?)",
                MAX_LINE_BYTES
            ),
            Self::SingleLabel => f.write_str(
                "single-label name (would block a whole TLD; set `allow_tld_rules = true` on a list meant to)",
            ),
        }
    }
}

impl LineRejection {
    /// Whether the line is not a rule of its format at all (bad bytes,
    /// bad syntax, a malformed name), as opposed to a well-formed rule
    /// shieldns does not apply (an IP literal in a domain list, a TLD, an
    /// unsupported modifier). A list mostly of malformed lines is refused.
    pub fn is_malformed(&self) -> bool {
        !matches!(
            self,
            Self::Name(NameRejection::IpLiteral)
                | Self::SingleLabel
                | Self::UnsupportedModifier(_)
                | Self::UnsupportedRpz(_)
        )
    }
}

impl From<NameRejection> for LineRejection {
    fn from(r: NameRejection) -> Self {
        Self::Name(r)
    }
}

/// Why a rule line was skipped without being an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SkipReason {
    /// A hosts-file line for localhost, broadcast and the like, which every
    /// hosts file carries and which must never be blocked.
    LocalHostEntry,
    /// An adblock rule disabled by a matching `$badfilter` rule.
    DisabledByBadfilter,
}

/// Receives what a parser finds, line by line.
///
/// Every non-blank, non-comment line ends in exactly one of: one or more
/// `rule` calls (the line was accepted), one `skip`, or one `reject`; or,
/// for a line naming several names (hosts, dnsmasq), `rule` calls for its
/// valid names followed by one `reject` for the first invalid one, so a
/// stray token never costs the line's good names.
pub trait RuleSink {
    /// A rule from an accepted line.
    fn rule(&mut self, rule: Rule<'_>);
    /// A line refused with a reason; `text` is the raw line.
    fn reject(&mut self, line: u32, text: &str, reason: LineRejection);
    /// A rule line deliberately ignored.
    fn skip(&mut self, line: u32, reason: SkipReason);
}

/// Counts of what one list contained, line by line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LineCounts {
    /// Lines that produced at least one rule.
    pub accepted: u64,
    /// Rule lines skipped on purpose (localhost entries, `$badfilter`).
    pub skipped: u64,
    /// Lines refused with a reason.
    pub rejected: u64,
    /// Rules produced (a hosts line may carry several names).
    pub rules: u64,
    /// Lines counted both accepted and rejected: their valid names kept, a
    /// stray token refused (see [`RuleSink`]).
    pub partial: u64,
}

impl LineCounts {
    /// All rule lines: accepted, skipped and rejected.
    pub fn rule_lines(&self) -> u64 {
        self.accepted + self.skipped + self.rejected - self.partial
    }
}
