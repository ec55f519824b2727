//! The resolver's configuration sections: `[server]`, `[upstream]`, `[cache]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

/// `[server]`: where shieldns listens and whom it answers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses to serve DNS on, over both UDP and TCP.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Client networks allowed to query; everyone else gets REFUSED.
    #[serde(default = "default_allow")]
    pub allow: Vec<IpNet>,
    /// The largest UDP response shieldns sends (EDNS payload size; RFC 9715
    /// and the DNS Flag Day 2020 recommend 1232).
    #[serde(default = "default_udp_payload")]
    pub udp_payload: u16,
    /// UDP sockets per listen address (SO_REUSEPORT), each served by a
    /// thread of its own, to use more than one core for UDP.
    #[serde(default = "default_udp_sockets")]
    pub udp_sockets: usize,
    /// Seconds an idle TCP connection is kept open.
    #[serde(default = "default_tcp_idle_timeout")]
    pub tcp_idle_timeout: u64,
    /// Seconds to wait for in-flight queries on SIGTERM before exiting.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: u64,
    /// UDP queries the full handler may work on at once (cache misses,
    /// upstream waits). Past it new ones are dropped and counted, as an
    /// overloaded resolver must: clients retry, and memory stays bounded.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            allow: default_allow(),
            udp_payload: default_udp_payload(),
            udp_sockets: default_udp_sockets(),
            tcp_idle_timeout: default_tcp_idle_timeout(),
            shutdown_grace: default_shutdown_grace(),
            max_in_flight: default_max_in_flight(),
        }
    }
}

fn default_listen() -> Vec<SocketAddr> {
    vec![
        SocketAddr::from(([127, 0, 0, 1], 5353)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 5353)),
    ]
}

fn default_allow() -> Vec<IpNet> {
    // Loopback only: shieldns is never an open resolver by default.
    vec![
        IpNet::V4(ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(127, 0, 0, 0), 8)),
        IpNet::from(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    ]
}

fn default_udp_payload() -> u16 {
    1232
}
fn default_udp_sockets() -> usize {
    1
}
fn default_tcp_idle_timeout() -> u64 {
    10
}
fn default_max_in_flight() -> usize {
    20_000
}
fn default_shutdown_grace() -> u64 {
    5
}

/// How shieldns resolves names it does not block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamMode {
    /// Full recursion from the root hints.
    #[default]
    Recursive,
    /// Forwarding to `upstream.forward` servers, with failover.
    Forward,
}

/// `[upstream]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Recursive or forward.
    #[serde(default)]
    pub mode: UpstreamMode,
    /// Forwarders (`address:port`), tried in order with failover.
    #[serde(default)]
    pub forward: Vec<SocketAddr>,
    /// A root hints zone file; built-in IANA hints when absent.
    #[serde(default)]
    pub root_hints: Option<PathBuf>,
    /// DNSSEC validation in recursive mode (bogus answers become SERVFAIL
    /// with EDE 6).
    #[serde(default = "yes")]
    pub dnssec: bool,
    /// A trust anchor file (DS or DNSKEY records of the root) replacing the
    /// built-in root KSKs.
    #[serde(default)]
    pub trust_anchor: Option<PathBuf>,
    /// Milliseconds to wait for one upstream query before trying the next.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Allow recursion to name servers on loopback and private addresses.
    /// Off by default so a hostile delegation cannot aim queries at the
    /// operator's internal network; lab setups turn it on.
    #[serde(default)]
    pub allow_private_nameservers: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            mode: UpstreamMode::Recursive,
            forward: Vec::new(),
            root_hints: None,
            dnssec: true,
            trust_anchor: None,
            timeout_ms: default_timeout_ms(),
            allow_private_nameservers: false,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_timeout_ms() -> u64 {
    2000
}

/// `[cache]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The most answers kept (by the answer cache; the UDP fast path's
    /// encoded copies are bounded by the same number, split evenly among
    /// the UDP sockets).
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Lower bound on a cached answer's TTL, in seconds.
    #[serde(default)]
    pub min_ttl: u32,
    /// Upper bound on a cached answer's TTL, in seconds.
    #[serde(default = "default_max_ttl")]
    pub max_ttl: u32,
    /// Upper bound on a cached negative answer's TTL (RFC 2308), in seconds.
    #[serde(default = "default_negative_max_ttl")]
    pub negative_max_ttl: u32,
    /// Serve expired answers when upstreams fail (RFC 8767).
    #[serde(default = "yes")]
    pub serve_stale: bool,
    /// How long past expiry an answer may still be served stale, in seconds
    /// (RFC 8767 suggests 1–3 days).
    #[serde(default = "default_stale_window")]
    pub stale_window: u32,
    /// Refresh popular answers in the background shortly before they expire.
    #[serde(default = "yes")]
    pub prefetch: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: default_max_entries(),
            min_ttl: 0,
            max_ttl: default_max_ttl(),
            negative_max_ttl: default_negative_max_ttl(),
            serve_stale: true,
            stale_window: default_stale_window(),
            prefetch: true,
        }
    }
}

fn default_max_entries() -> u64 {
    200_000
}
fn default_max_ttl() -> u32 {
    86_400
}
fn default_negative_max_ttl() -> u32 {
    3_600
}
fn default_stale_window() -> u32 {
    86_400
}
