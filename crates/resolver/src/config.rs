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
    /// Client networks allowed to query; everyone else gets REFUSED. Never
    /// empty: that would refuse every client (the error names the line).
    #[serde(default = "default_allow", deserialize_with = "non_empty_networks")]
    pub allow: Vec<IpNet>,
    /// The largest UDP response shieldns sends (EDNS payload size; RFC 9715
    /// and the DNS Flag Day 2020 recommend 1232).
    #[serde(default = "default_udp_payload")]
    pub udp_payload: u16,
    /// UDP sockets per listen address (SO_REUSEPORT), each served by a
    /// thread of its own, to use more than one core for UDP.
    #[serde(default = "default_udp_sockets")]
    pub udp_sockets: usize,
    /// Seconds an idle TCP connection is kept open (a tenth of it, at least
    /// one second, once three quarters of `tcp_max_connections` are open).
    #[serde(default = "default_tcp_idle_timeout")]
    pub tcp_idle_timeout: u64,
    /// Open TCP connections at most, all clients together; lowered at start
    /// when the descriptor limit would not leave room for upstream sockets.
    #[serde(default = "default_tcp_max_connections")]
    pub tcp_max_connections: usize,
    /// Open TCP connections at most from one client address.
    #[serde(default = "default_tcp_max_connections_per_client")]
    pub tcp_max_connections_per_client: usize,
    /// Queries of one TCP connection resolved at once (RFC 7766 §6.2.1.1
    /// pipelining); reading pauses past it.
    #[serde(default = "default_tcp_pipeline")]
    pub tcp_pipeline: usize,
    /// The text a `CH TXT` query for `id.server.` or `hostname.bind.`
    /// (RFC 4892) is answered with; none (REFUSED, like any other class)
    /// by default.
    #[serde(default)]
    pub chaos_identity: Option<String>,
    /// The text a `CH TXT` query for `version.bind.` or `version.server.`
    /// is answered with; none (REFUSED) by default.
    #[serde(default)]
    pub chaos_version: Option<String>,
    /// `[server.rate_limit]`: per-prefix UDP rate limits for allowed
    /// clients; none (no limit) unless the table is present.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Seconds to wait for in-flight queries on SIGTERM before exiting.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: u64,
    /// UDP queries the full handler may work on at once (cache misses,
    /// upstream waits). Past it new ones are dropped and counted, as an
    /// overloaded resolver must: clients retry, and memory stays bounded.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Load balancers (dnsdist, haproxy) whose PROXY protocol headers (v2
    /// on UDP and TCP, v1 on TCP) name the real client, which then drives
    /// the access list, the profile, rate limits and logs. A header from
    /// any other source is dropped and counted. Default: none (no header is
    /// looked for).
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// `[[server.listener]]`: encrypted listeners (DoT, DoH), each with its
    /// own address and certificate; none by default.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
}

/// One `[[server.listener]]`: DNS over TLS or over HTTPS on an address, with
/// a PEM certificate chain and key (re-read on SIGHUP; open connections
/// keep the certificate they started with).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `dot` (RFC 7858, ALPN `dot`), `doh` (RFC 8484, HTTP/2 and HTTP/1.1,
    /// GET and POST) or `doq` (RFC 9250, ALPN `doq`, on UDP).
    pub protocol: EncryptedProtocol,
    /// The address to listen on (TCP; UDP for DoQ), e.g. `0.0.0.0:853`.
    pub address: SocketAddr,
    /// The certificate chain, PEM (relative: against the config file).
    pub certificate: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// DoH: the path queries are sent to; `{path}/{id}` carries a client ID.
    #[serde(default = "default_doh_path")]
    pub path: String,
    /// The resolver's name on this listener's certificate, advertised by
    /// DDR (RFC 9462): `_dns.resolver.arpa` and `_dns.{name}` SVCB queries
    /// are answered with every named listener (ALPN, port, DoH path), so
    /// clients upgrade to the filtered encrypted resolver. None: the
    /// listener is not advertised.
    #[serde(default)]
    pub name: Option<String>,
    /// DoT and DoQ: the domain under which a server name `{id}.{domain}` carries a
    /// client ID (the certificate then needs `*.{domain}`); none: no IDs
    /// from server names.
    #[serde(default)]
    pub client_id_domain: Option<String>,
    /// What a client ID no profile lists gets: `address` (the profile of
    /// the client's address) or `refuse` (REFUSED).
    #[serde(default)]
    pub unknown_client_id: UnknownClientId,
    /// Seconds a TLS handshake may take before the connection is closed.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: u64,
    /// DoH: concurrent HTTP/2 streams per connection.
    #[serde(default = "default_http2_streams")]
    pub http2_max_streams: u32,
    /// Connections this listener holds at once, within the
    /// `server.tcp_max_connections` every TCP listener shares (for DoQ,
    /// QUIC connections). None: only the shared cap.
    #[serde(default, deserialize_with = "some_at_least_one")]
    pub max_connections: Option<usize>,
    /// Connections one client prefix (`ipv4_prefix`, `ipv6_prefix`) holds
    /// on this listener at once.
    #[serde(default = "default_listener_prefix_connections", deserialize_with = "at_least_one")]
    pub max_connections_per_prefix: usize,
    /// TLS handshakes in progress on this listener at once: the costly
    /// step, capped so that a flood of them cannot starve open connections.
    #[serde(default = "default_listener_handshakes", deserialize_with = "at_least_one")]
    pub max_handshakes: usize,
    /// TLS handshakes in progress from one client prefix at once.
    #[serde(default = "default_listener_prefix_handshakes", deserialize_with = "at_least_one")]
    pub max_handshakes_per_prefix: usize,
    /// The IPv4 prefix length the per-prefix caps group clients by.
    #[serde(default = "default_listener_ipv4_prefix", deserialize_with = "ipv4_prefix_length")]
    pub ipv4_prefix: u8,
    /// The IPv6 prefix length the per-prefix caps group clients by.
    #[serde(default = "default_ipv6_prefix", deserialize_with = "ipv6_prefix_length")]
    pub ipv6_prefix: u8,
}

fn default_listener_prefix_connections() -> usize {
    256
}
fn default_listener_handshakes() -> usize {
    256
}
fn default_listener_prefix_handshakes() -> usize {
    32
}
fn default_listener_ipv4_prefix() -> u8 {
    24
}

fn at_least_one<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    match usize::deserialize(deserializer)? {
        0 => Err(serde::de::Error::custom(
            "must be at least 1 (0 would refuse every connection)",
        )),
        value => Ok(value),
    }
}

fn some_at_least_one<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    at_least_one(deserializer).map(Some)
}

fn prefix_length<'de, D: serde::Deserializer<'de>>(deserializer: D, width: u8) -> Result<u8, D::Error> {
    match u8::deserialize(deserializer)? {
        length @ 1.. if length <= width => Ok(length),
        length => Err(serde::de::Error::custom(format!(
            "{length}: a prefix length is 1 to {width}"
        ))),
    }
}

fn ipv4_prefix_length<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    prefix_length(deserializer, 32)
}

fn ipv6_prefix_length<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    prefix_length(deserializer, 128)
}

/// `listener.protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncryptedProtocol {
    /// DNS over TLS.
    Dot,
    /// DNS over HTTPS.
    Doh,
    /// DNS over QUIC.
    Doq,
}

/// `listener.unknown_client_id`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownClientId {
    /// The profile of the client's address.
    #[default]
    Address,
    /// REFUSED.
    Refuse,
}

fn default_doh_path() -> String {
    String::from("/dns-query")
}

fn default_handshake_timeout() -> u64 {
    5
}

fn default_http2_streams() -> u32 {
    100
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            allow: default_allow(),
            udp_payload: default_udp_payload(),
            udp_sockets: default_udp_sockets(),
            tcp_idle_timeout: default_tcp_idle_timeout(),
            tcp_max_connections: default_tcp_max_connections(),
            tcp_max_connections_per_client: default_tcp_max_connections_per_client(),
            tcp_pipeline: default_tcp_pipeline(),
            chaos_identity: None,
            chaos_version: None,
            rate_limit: None,
            shutdown_grace: default_shutdown_grace(),
            max_in_flight: default_max_in_flight(),
            trusted_proxies: Vec::new(),
            listeners: Vec::new(),
        }
    }
}

/// `[server.rate_limit]`: a token bucket per client prefix for UDP queries
/// (TCP cannot be spoofed and is bounded by its connection caps).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Queries a second one prefix may send, sustained.
    #[serde(default = "default_rate")]
    pub queries_per_second: u32,
    /// Queries one prefix may send at once after a quiet spell; default
    /// twice `queries_per_second`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// The IPv4 prefix length clients are grouped by.
    #[serde(default = "default_ipv4_prefix")]
    pub ipv4_prefix: u8,
    /// The IPv6 prefix length clients are grouped by.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Every `slip`-th query over the limit gets an empty TC=1 answer, so
    /// a real client retries over TCP; 0 never.
    #[serde(default = "default_slip")]
    pub slip: u32,
    /// Networks never limited (e.g. a school's NAT address, a monitoring
    /// probe).
    #[serde(default)]
    pub exempt: Vec<IpNet>,
}

fn default_rate() -> u32 {
    200
}
fn default_ipv4_prefix() -> u8 {
    32
}
fn default_ipv6_prefix() -> u8 {
    56
}
fn default_slip() -> u32 {
    2
}

fn default_listen() -> Vec<SocketAddr> {
    vec![
        SocketAddr::from(([127, 0, 0, 1], 5353)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 5353)),
    ]
}

fn non_empty_networks<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    let networks = Vec::<IpNet>::deserialize(deserializer)?;
    if networks.is_empty() {
        return Err(serde::de::Error::custom(
            "an empty access list would refuse every client; list the client networks \
             (\"0.0.0.0/0\", \"::/0\" for all, behind a firewall)",
        ));
    }
    Ok(networks)
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
fn default_tcp_max_connections() -> usize {
    1024
}
fn default_tcp_max_connections_per_client() -> usize {
    64
}
fn default_tcp_pipeline() -> usize {
    32
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

/// Which library resolves: libunbound (the default) or hickory's
/// experimental recursor and forwarder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamEngine {
    /// NLnet Labs' libunbound: validating, caching, hardened recursion and
    /// forwarding (Deckard: see `tests/conformance/passing.txt`).
    #[default]
    Unbound,
    /// hickory-dns's recursor and forwarder (Deckard: 7 of 191 scenarios);
    /// kept for comparison, not for production.
    Hickory,
}

/// `[upstream]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The resolution library.
    #[serde(default)]
    pub engine: UpstreamEngine,
    /// Recursive or forward.
    #[serde(default)]
    pub mode: UpstreamMode,
    /// Forwarders (`address:port`), tried in order with failover.
    #[serde(default)]
    pub forward: Vec<SocketAddr>,
    /// A root hints zone file; built-in IANA hints when absent.
    #[serde(default)]
    pub root_hints: Option<PathBuf>,
    /// DNSSEC validation (bogus answers become SERVFAIL with EDE 6, unless
    /// the client set CD). With libunbound it applies to forward mode too.
    #[serde(default = "yes")]
    pub dnssec: bool,
    /// Trust anchors, one DS or DNSKEY record each in zone-file form
    /// (`". IN DS 20326 8 2 E06D..."`), for any zone. Absent: the IANA root
    /// anchors (KSK-2017 and KSK-2024) built in, unless a file below is
    /// given. An explicit empty list means no anchor (nothing validates).
    #[serde(default)]
    pub trust_anchors: Option<Vec<String>>,
    /// Zone files of DS or DNSKEY trust anchors, any zone, several allowed.
    #[serde(default)]
    pub trust_anchor_files: Vec<PathBuf>,
    /// An RFC 5011 trust-anchor state file (libunbound's `auto-trust-anchor-file`),
    /// kept up to date by the resolver: it must be writable. Opt-in, since it
    /// sends periodic DNSKEY probes.
    #[serde(default)]
    pub auto_trust_anchor_file: Option<PathBuf>,
    /// Negative trust anchors: zones treated as insecure (not validated),
    /// e.g. a domain whose operator broke its DNSSEC.
    #[serde(default)]
    pub negative_trust_anchors: Vec<String>,
    /// QNAME minimisation (RFC 9156): authorities see only the labels they
    /// need.
    #[serde(default = "yes")]
    pub qname_minimisation: bool,
    /// Accept glue only from a zone's own servers (in-bailiwick).
    #[serde(default = "yes")]
    pub harden_glue: bool,
    /// Query authorities over IPv4.
    #[serde(default = "yes")]
    pub do_ip4: bool,
    /// Query authorities over IPv6 (an IPv6-only network sets `do_ip4 = false`).
    #[serde(default = "yes")]
    pub do_ip6: bool,
    /// Source addresses for upstream queries (empty: the system's choice).
    #[serde(default)]
    pub outgoing_interfaces: Vec<std::net::IpAddr>,
    /// Milliseconds to wait for one upstream query before trying the next
    /// (hickory engine only; libunbound adapts its own retry timers).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Milliseconds one resolution may take before the client gets SERVFAIL
    /// with EDE 22 (libunbound engine; the resolution goes on and its answer
    /// is cached for the client's retry).
    #[serde(default = "default_resolution_timeout_ms")]
    pub resolution_timeout_ms: u64,
    /// Allow recursion to name servers on private addresses (RFC 1918, ULA,
    /// link-local). Off by default so a hostile delegation cannot aim
    /// queries at the operator's internal network; lab setups turn it on.
    /// With the hickory engine it also allows loopback.
    #[serde(default)]
    pub allow_private_nameservers: bool,
    /// Allow name servers on 127.0.0.0/8 and ::1 (libunbound engine).
    #[serde(default)]
    pub allow_loopback_nameservers: bool,
    /// Zones libunbound answers locally by default (RFC 6761/6303: `test.`,
    /// `invalid.`, `onion.`, `localhost.`, `home.arpa.`, private reverse
    /// zones) that should be resolved upstream instead.
    #[serde(default)]
    pub resolve_local_zones: Vec<String>,
    /// libunbound contexts, each a worker thread with its own share of the
    /// name space and of the cache; 0 means one per core.
    #[serde(default)]
    pub contexts: usize,
    /// Bytes of libunbound's record caches (message and RRset caches, 1:2),
    /// split among the contexts.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// Sockets each context may have open towards authorities.
    #[serde(default = "default_outgoing_range")]
    pub outgoing_range: u32,
    /// Further libunbound options by their `unbound.conf(5)` name, for what
    /// has no key of its own (e.g. `"target-fetch-policy" = "0 0 0 0 0"`).
    /// Applied last; a bad name or value stops the start with libunbound's
    /// error.
    #[serde(default)]
    pub unbound_options: std::collections::BTreeMap<String, String>,
}

impl UpstreamConfig {
    /// `contexts` with 0 resolved to the number of cores.
    pub(crate) fn context_count(&self) -> usize {
        match self.contexts {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            engine: UpstreamEngine::default(),
            mode: UpstreamMode::Recursive,
            forward: Vec::new(),
            root_hints: None,
            dnssec: true,
            trust_anchors: None,
            trust_anchor_files: Vec::new(),
            auto_trust_anchor_file: None,
            negative_trust_anchors: Vec::new(),
            qname_minimisation: true,
            harden_glue: true,
            do_ip4: true,
            do_ip6: true,
            outgoing_interfaces: Vec::new(),
            timeout_ms: default_timeout_ms(),
            resolution_timeout_ms: default_resolution_timeout_ms(),
            allow_private_nameservers: false,
            allow_loopback_nameservers: false,
            resolve_local_zones: Vec::new(),
            contexts: 0,
            cache_bytes: default_cache_bytes(),
            outgoing_range: default_outgoing_range(),
            unbound_options: std::collections::BTreeMap::new(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_timeout_ms() -> u64 {
    2000
}
fn default_resolution_timeout_ms() -> u64 {
    4000
}
fn default_cache_bytes() -> u64 {
    64 << 20
}
fn default_outgoing_range() -> u32 {
    1024
}

/// `[cache]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The most answers kept: the packet caches' encoded copies, split
    /// evenly among the UDP sockets and the stream transports' shared cache,
    /// and the hickory engine's answer cache (libunbound's cache is sized by
    /// `upstream.cache_bytes`).
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Bytes the packet caches' answers may take at most (split like
    /// `max_entries`), and the hickory engine's answer cache likewise.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
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
    /// Refresh an answer asked for again in the last tenth of its TTL in
    /// the background, before it expires; the packet caches leave such
    /// questions to the engine's cache (hickory engine; libunbound's library
    /// build has no prefetch, and a refresh through it would be answered
    /// from its own cache).
    #[serde(default = "yes")]
    pub prefetch: bool,
    /// Seconds a resolution failure (SERVFAIL: no reachable authority, or
    /// validation failed) is remembered for its name and type and answered
    /// at once, with the same EDE, instead of waiting on the upstream again
    /// (RFC 9520: at least 1 s, at most 5 min). 0 turns it off.
    #[serde(default = "default_failure_ttl")]
    pub failure_ttl: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: default_max_entries(),
            max_bytes: default_max_bytes(),
            min_ttl: 0,
            max_ttl: default_max_ttl(),
            negative_max_ttl: default_negative_max_ttl(),
            serve_stale: true,
            stale_window: default_stale_window(),
            prefetch: true,
            failure_ttl: default_failure_ttl(),
        }
    }
}

fn default_failure_ttl() -> u32 {
    5
}

fn default_max_bytes() -> u64 {
    256 << 20
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
