//! Child-protection policy beyond lists: safe search, schedules, bypass
//! defences, query-type blocking, rebinding protection and DNS64 settings,
//! compiled per profile when a snapshot is built.
//!
//! Everything here is pure name, address and time arithmetic; the resolver
//! applies the results. Time is an input (`jiff::Timestamp`), never read
//! here behind the caller's back, so schedule edges are testable exactly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;
use jiff::Timestamp;
use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::suffix::ListSet;

//------------ Safe search ---------------------------------------------------

/// `safe_search = true` or a table choosing engines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SafeSearchConfig {
    /// All engines on (`true`) or off (`false`).
    Enabled(bool),
    /// Per-engine choice.
    Engines(SafeSearchEngines),
}

/// By hand rather than `#[serde(untagged)]`: a typo in the table
/// (`gogle = true`) then says which key is unknown and which are allowed,
/// not "data did not match any variant of untagged enum".
impl<'de> Deserialize<'de> for SafeSearchConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SafeSearchConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false, or a table { google, bing, duckduckgo, youtube }")
            }
            fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Self::Value, E> {
                Ok(SafeSearchConfig::Enabled(value))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                SafeSearchEngines::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(SafeSearchConfig::Engines)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Default for SafeSearchConfig {
    fn default() -> Self {
        Self::Enabled(false)
    }
}

/// `safe_search = { google = true, bing = true, duckduckgo = true, youtube = "strict" }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafeSearchEngines {
    /// Google Search, every country domain.
    #[serde(default = "yes")]
    pub google: bool,
    /// Bing.
    #[serde(default = "yes")]
    pub bing: bool,
    /// DuckDuckGo.
    #[serde(default = "yes")]
    pub duckduckgo: bool,
    /// YouTube restricted mode.
    #[serde(default)]
    pub youtube: YoutubeMode,
}

fn yes() -> bool {
    true
}

/// YouTube restricted mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum YoutubeMode {
    /// `restrict.youtube.com`.
    #[default]
    Strict,
    /// `restrictmoderate.youtube.com`.
    Moderate,
    /// No rewrite.
    Off,
}

/// The compiled safe-search settings of a profile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SafeSearch {
    google: bool,
    bing: bool,
    duckduckgo: bool,
    youtube: Option<YoutubeMode>,
}

/// A safe-search rewrite: the engine and the host the name is rewritten to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SafeSearchRewrite {
    /// `google`, `bing`, `duckduckgo` or `youtube`.
    pub engine: &'static str,
    /// The safe-search host (no trailing dot), answered as a CNAME.
    pub target: &'static str,
}

impl SafeSearch {
    pub(crate) fn compile(config: &SafeSearchConfig) -> Self {
        match config {
            SafeSearchConfig::Enabled(false) => Self::default(),
            SafeSearchConfig::Enabled(true) => Self {
                google: true,
                bing: true,
                duckduckgo: true,
                youtube: Some(YoutubeMode::Strict),
            },
            SafeSearchConfig::Engines(engines) => Self {
                google: engines.google,
                bing: engines.bing,
                duckduckgo: engines.duckduckgo,
                youtube: (engines.youtube != YoutubeMode::Off).then_some(engines.youtube),
            },
        }
    }

    /// Whether any engine is rewritten.
    pub fn is_enabled(&self) -> bool {
        self.google || self.bing || self.duckduckgo || self.youtube.is_some()
    }

    /// The rewrite for a normalized query name, if it is a search engine's
    /// host this profile enforces safe search on. Targets are the engines'
    /// documented safe-search hosts (Google support 186669 and 6214622,
    /// Bing and DuckDuckGo's own documentation).
    pub fn rewrite(&self, name: &str) -> Option<SafeSearchRewrite> {
        if self.google && is_google_search(name) {
            return Some(SafeSearchRewrite {
                engine: "google",
                target: "forcesafesearch.google.com",
            });
        }
        if self.bing && matches!(name, "bing.com" | "www.bing.com") {
            return Some(SafeSearchRewrite {
                engine: "bing",
                target: "strict.bing.com",
            });
        }
        if self.duckduckgo && matches!(name, "duckduckgo.com" | "www.duckduckgo.com" | "start.duckduckgo.com") {
            return Some(SafeSearchRewrite {
                engine: "duckduckgo",
                target: "safe.duckduckgo.com",
            });
        }
        if let Some(mode) = self.youtube
            && matches!(
                name,
                "youtube.com"
                    | "www.youtube.com"
                    | "m.youtube.com"
                    | "youtubei.googleapis.com"
                    | "youtube.googleapis.com"
                    | "www.youtube-nocookie.com"
            )
        {
            let target = match mode {
                YoutubeMode::Moderate => "restrictmoderate.youtube.com",
                _ => "restrict.youtube.com",
            };
            return Some(SafeSearchRewrite {
                engine: "youtube",
                target,
            });
        }
        None
    }
}

/// Google Search hosts: `google.X` and `www.google.X` for Google's country
/// domains, which all have the shape `com`, `cat`, a two-letter country code,
/// or `co.CC` / `com.CC`. Matching the shape instead of shipping a list keeps
/// new country domains covered; a test checks it against Google's published
/// list when the shared corpus is present.
fn is_google_search(name: &str) -> bool {
    let rest = name.strip_prefix("www.").unwrap_or(name);
    let Some(suffix) = rest.strip_prefix("google.") else {
        return false;
    };
    let is_cc = |label: &str| label.len() == 2 && label.bytes().all(|b| b.is_ascii_lowercase());
    match suffix.split_once('.') {
        None => suffix == "com" || suffix == "cat" || is_cc(suffix),
        Some((second, cc)) => matches!(second, "co" | "com") && is_cc(cc),
    }
}

//------------ Schedules ------------------------------------------------------

/// The time zone schedules use unless they name one: the province's.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Ho_Chi_Minh";

/// One `[[profile.schedule]]` table: extra categories blocked in a window.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Days the window starts on: `mon`…`sun`, `weekdays`, `weekend`,
    /// `daily`. Default: every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// `"HH:MM-HH:MM"`; an end before the start runs overnight into the
    /// next day; equal start and end mean the whole day.
    pub time: String,
    /// IANA time zone. Default: Asia/Ho_Chi_Minh.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Categories blocked during the window, in addition to `block`.
    pub block: Vec<String>,
}

/// A compiled schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The window as configured, for reports.
    pub time: String,
    /// The time zone name.
    pub time_zone: String,
    /// The categories it adds.
    pub categories: Vec<String>,
    tz: TimeZone,
    /// Bit `n` set: the window starts on weekday `n` (Monday = 0).
    days: u8,
    start_minute: u16,
    end_minute: u16,
    pub(crate) lists: ListSet,
}

/// Why a schedule did not compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScheduleError(pub(crate) String);

impl Schedule {
    pub(crate) fn compile(config: &ScheduleConfig, lists: ListSet) -> Result<Self, ScheduleError> {
        let time_zone = config.time_zone.clone().unwrap_or_else(|| DEFAULT_TIME_ZONE.to_owned());
        let tz = TimeZone::get(&time_zone)
            .map_err(|e| ScheduleError(format!("time_zone = \"{time_zone}\" is not a known time zone ({e})")))?;
        let mut days = 0u8;
        for day in &config.days {
            days |= match day.to_ascii_lowercase().as_str() {
                "mon" | "monday" => 1,
                "tue" | "tuesday" => 1 << 1,
                "wed" | "wednesday" => 1 << 2,
                "thu" | "thursday" => 1 << 3,
                "fri" | "friday" => 1 << 4,
                "sat" | "saturday" => 1 << 5,
                "sun" | "sunday" => 1 << 6,
                "weekdays" => 0b001_1111,
                "weekend" => 0b110_0000,
                "daily" | "all" => 0b111_1111,
                other => {
                    return Err(ScheduleError(format!(
                        "days: `{other}` is not a day (mon…sun, weekdays, weekend, daily)"
                    )));
                }
            };
        }
        if config.days.is_empty() {
            days = 0b111_1111;
        }
        let (start, end) = config
            .time
            .split_once('-')
            .ok_or_else(|| ScheduleError(format!("time = \"{}\": expected \"HH:MM-HH:MM\"", config.time)))?;
        let start_minute = parse_minute(start.trim())
            .ok_or_else(|| ScheduleError(format!("time = \"{}\": bad start `{start}`", config.time)))?;
        let end_minute = parse_minute(end.trim())
            .ok_or_else(|| ScheduleError(format!("time = \"{}\": bad end `{end}`", config.time)))?;
        Ok(Self {
            time: config.time.clone(),
            time_zone,
            categories: config.block.clone(),
            tz,
            days,
            start_minute,
            end_minute,
            lists,
        })
    }

    /// Whether the window is open at `at`.
    pub fn is_active(&self, at: Timestamp) -> bool {
        let local = self.tz.to_datetime(at);
        let minute = u16::from(local.hour().unsigned_abs()) * 60 + u16::from(local.minute().unsigned_abs());
        let today = weekday_bit(local.weekday());
        let yesterday = weekday_bit(local.weekday().previous());
        let (start, end) = (self.start_minute, self.end_minute);
        if start == end {
            self.days & today != 0
        } else if start < end {
            self.days & today != 0 && (start..end).contains(&minute)
        } else {
            // Overnight: the evening part belongs to the start day, the
            // morning part to the day before it.
            (self.days & today != 0 && minute >= start) || (self.days & yesterday != 0 && minute < end)
        }
    }
}

fn weekday_bit(day: Weekday) -> u8 {
    1 << (day.to_monday_zero_offset().unsigned_abs())
}

fn parse_minute(text: &str) -> Option<u16> {
    let (hours, minutes) = text.split_once(':')?;
    let hours: u16 = hours.parse().ok()?;
    let minutes: u16 = minutes.parse().ok()?;
    // 24:00 is accepted as the end of the day.
    (hours < 24 && minutes < 60 || hours == 24 && minutes == 0).then_some(hours * 60 + minutes)
}

//------------ Bypass defences, query types, rebinding -----------------------

/// What bypass protection answers for a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BypassDefence {
    /// NXDOMAIN: Firefox's DoH canary (`use-application-dns.net`) and iCloud
    /// Private Relay (`mask.icloud.com`, `mask-h2.icloud.com`), which clients
    /// treat as "do not bypass this resolver".
    Nxdomain(&'static str),
    /// NODATA: DDR discovery under `resolver.arpa` (RFC 9462), so clients
    /// are not told of an encrypted resolver that skips the filter.
    Nodata(&'static str),
}

/// The bypass defence for a normalized name, if any.
pub fn bypass_defence(name: &str) -> Option<BypassDefence> {
    match name {
        "use-application-dns.net" => Some(BypassDefence::Nxdomain("firefox-canary")),
        "mask.icloud.com" | "mask-h2.icloud.com" => Some(BypassDefence::Nxdomain("icloud-private-relay")),
        "resolver.arpa" => Some(BypassDefence::Nodata("ddr")),
        _ if name.ends_with(".resolver.arpa") => Some(BypassDefence::Nodata("ddr")),
        _ => None,
    }
}

/// A verdict of profile policy beyond the lists, for a name the lists let
/// through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfilePolicy {
    /// A bypass defence answer.
    Bypass(BypassDefence),
    /// The query type is blocked (answered NODATA).
    BlockedQueryType,
    /// A safe-search rewrite.
    SafeSearch(SafeSearchRewrite),
}

/// Parses a record type name (`A`, `HTTPS`, `ANY`, `TYPE65`) to its code.
pub fn qtype_code(name: &str) -> Option<u16> {
    let upper = name.to_ascii_uppercase();
    let code = match upper.as_str() {
        "A" => 1,
        "NS" => 2,
        "CNAME" => 5,
        "SOA" => 6,
        "PTR" => 12,
        "HINFO" => 13,
        "MX" => 15,
        "TXT" => 16,
        "AAAA" => 28,
        "SRV" => 33,
        "NAPTR" => 35,
        "DS" => 43,
        "RRSIG" => 46,
        "DNSKEY" => 48,
        "SVCB" => 64,
        "HTTPS" => 65,
        "AXFR" => 252,
        "ANY" => 255,
        other => return other.strip_prefix("TYPE").and_then(|n| n.parse().ok()),
    };
    Some(code)
}

/// Rebinding protection of a profile: answers for public names must not
/// point into private, loopback or link-local space.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rebinding {
    /// Normalized local domains exempt from the check (and their subdomains).
    pub allow: Vec<String>,
}

impl Rebinding {
    /// Whether `address` in an answer for `name` is a rebinding attempt.
    pub fn blocks(&self, name: &str, address: IpAddr) -> bool {
        let exempt = self.allow.iter().any(|domain| {
            name == domain
                || name
                    .strip_suffix(domain.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        });
        !exempt && is_internal(address)
    }
}

/// Private, loopback, link-local, unspecified and unique-local addresses
/// (RFC 1918, RFC 1122, RFC 3927, RFC 4193, RFC 4291), including IPv4 ones
/// mapped into IPv6. Carrier-grade NAT space (100.64.0.0/10) is not
/// included: some ISPs number subscriber-facing services there.
pub fn is_internal(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal_v4(v4),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback() || v6.is_unspecified() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
            }
        },
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.octets()[0] == 0
}

//------------ DNS64 ----------------------------------------------------------

/// The well-known DNS64 prefix (RFC 6052).
pub const DEFAULT_DNS64_PREFIX: &str = "64:ff9b::/96";

/// DNS64 synthesis for one profile (RFC 6147), with a /96 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dns64 {
    /// The prefix.
    pub prefix: Ipv6Net,
}

impl Dns64 {
    /// The synthesized AAAA address for an A record, or `None` for IPv4
    /// addresses RFC 6147 §5.1.4 excludes (unspecified, loopback, broadcast
    /// and the like) and that a translator could not reach anyway.
    pub fn synthesize(&self, v4: Ipv4Addr) -> Option<Ipv6Addr> {
        if v4.is_unspecified() || v4.is_loopback() || v4.is_broadcast() || v4.octets()[0] == 0 {
            return None;
        }
        let prefix = u128::from(self.prefix.network());
        Some(Ipv6Addr::from(prefix | u128::from(u32::from(v4))))
    }

    /// Whether an AAAA address in a real answer should be ignored when
    /// deciding to synthesize (IPv4-mapped addresses, RFC 6147 §5.1.4).
    pub fn ignores_aaaa(address: Ipv6Addr) -> bool {
        address.to_ipv4_mapped().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_country_domains_by_shape() {
        for name in [
            "google.com",
            "www.google.com",
            "google.co.uk",
            "www.google.com.hk",
            "google.de",
            "google.cat",
        ] {
            assert!(is_google_search(name), "{name}");
        }
        for name in [
            "mail.google.com",
            "google.example.org",
            "notgoogle.com",
            "google.evil.example",
            "google.comx",
        ] {
            assert!(!is_google_search(name), "{name}");
        }
    }

    #[test]
    fn safe_search_engines_and_modes() {
        let all = SafeSearch::compile(&SafeSearchConfig::Enabled(true));
        assert_eq!(all.rewrite("www.bing.com").map(|r| r.target), Some("strict.bing.com"));
        assert_eq!(
            all.rewrite("duckduckgo.com").map(|r| r.target),
            Some("safe.duckduckgo.com")
        );
        assert_eq!(
            all.rewrite("www.youtube.com").map(|r| r.target),
            Some("restrict.youtube.com")
        );
        assert_eq!(all.rewrite("example.com"), None);
        let moderate = SafeSearch::compile(&SafeSearchConfig::Engines(SafeSearchEngines {
            google: false,
            bing: true,
            duckduckgo: true,
            youtube: YoutubeMode::Moderate,
        }));
        assert_eq!(
            moderate.rewrite("m.youtube.com").map(|r| r.target),
            Some("restrictmoderate.youtube.com")
        );
        assert_eq!(moderate.rewrite("www.google.com"), None);
        assert!(!SafeSearch::compile(&SafeSearchConfig::Enabled(false)).is_enabled());
    }

    fn schedule(days: &[&str], time: &str) -> Schedule {
        let config = ScheduleConfig {
            days: days.iter().map(|d| (*d).to_owned()).collect(),
            time: time.to_owned(),
            time_zone: Some("Asia/Ho_Chi_Minh".to_owned()),
            block: vec!["games".to_owned()],
        };
        Schedule::compile(&config, ListSet::empty()).unwrap()
    }

    fn at(local: &str) -> Timestamp {
        // Asia/Ho_Chi_Minh is UTC+7 all year.
        format!("{local}+07:00").parse::<Timestamp>().unwrap()
    }

    #[test]
    fn schedule_edges_are_exact() {
        // 2026-11-30 is a Monday.
        let school = schedule(&["weekdays"], "08:00-16:30");
        assert!(!school.is_active(at("2026-11-30T07:59:59")));
        assert!(school.is_active(at("2026-11-30T08:00:00")));
        assert!(school.is_active(at("2026-11-30T16:29:59")));
        assert!(!school.is_active(at("2026-11-30T16:30:00")));
        assert!(!school.is_active(at("2026-11-29T10:00:00")), "Sunday");
    }

    #[test]
    fn overnight_windows_belong_to_their_start_day() {
        let night = schedule(&["fri"], "22:00-06:00");
        assert!(night.is_active(at("2026-12-04T23:00:00")), "Friday night");
        assert!(night.is_active(at("2026-12-05T05:59:00")), "Saturday early morning");
        assert!(!night.is_active(at("2026-12-05T06:00:00")));
        assert!(
            !night.is_active(at("2026-12-04T05:00:00")),
            "Friday early morning belongs to Thursday"
        );
    }

    #[test]
    fn bad_schedules_name_the_problem() {
        let bad = |days: &[&str], time: &str, tz: &str| {
            let config = ScheduleConfig {
                days: days.iter().map(|d| (*d).to_owned()).collect(),
                time: time.to_owned(),
                time_zone: Some(tz.to_owned()),
                block: vec![],
            };
            Schedule::compile(&config, ListSet::empty()).unwrap_err().0
        };
        assert!(bad(&["funday"], "08:00-09:00", "UTC").contains("funday"));
        assert!(bad(&[], "8-9", "UTC").contains("8-9"));
        assert!(bad(&[], "08:00-25:00", "UTC").contains("25:00"));
        assert!(bad(&[], "08:00-09:00", "Mars/Olympus").contains("Mars/Olympus"));
    }

    #[test]
    fn internal_addresses_and_exemptions() {
        let rebinding = Rebinding {
            allow: vec!["home.arpa".to_owned()],
        };
        for address in [
            "10.0.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(
                rebinding.blocks("evil.example.com", address.parse().unwrap()),
                "{address}"
            );
        }
        assert!(!rebinding.blocks("evil.example.com", "192.0.2.1".parse().unwrap()));
        assert!(!rebinding.blocks("nas.home.arpa", "192.168.1.1".parse().unwrap()));
        assert!(rebinding.blocks("nothome.arpa", "192.168.1.1".parse().unwrap()));
    }

    #[test]
    fn dns64_synthesis() {
        let dns64 = Dns64 {
            prefix: DEFAULT_DNS64_PREFIX.parse().unwrap(),
        };
        assert_eq!(
            dns64.synthesize("192.0.2.33".parse().unwrap()),
            Some("64:ff9b::c000:221".parse().unwrap())
        );
        assert_eq!(dns64.synthesize("127.0.0.1".parse().unwrap()), None);
        assert!(Dns64::ignores_aaaa("::ffff:192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn bypass_names() {
        assert_eq!(
            bypass_defence("use-application-dns.net"),
            Some(BypassDefence::Nxdomain("firefox-canary"))
        );
        assert_eq!(bypass_defence("_dns.resolver.arpa"), Some(BypassDefence::Nodata("ddr")));
        assert_eq!(bypass_defence("example.com"), None);
        assert_eq!(qtype_code("https"), Some(65));
        assert_eq!(qtype_code("TYPE999"), Some(999));
        assert_eq!(qtype_code("BOGUS"), None);
    }
}
