//! shieldns-metrics: the live metrics of the resolver and the daemon.
//!
//! Key design decision: the hot path never hashes a label set. Fixed label
//! sets (rcode, protocol, EDE, cache result) are resolved once when
//! [`Metrics`] is built. Profile and list labels come from the snapshot and
//! change on reload, so [`Metrics::install`] resolves every child for a new
//! snapshot into a table indexed by profile and list position before the
//! snapshot is published; a query finds the table by its snapshot's
//! identity (one lock-free `ArcSwap` load) and pays one atomic add per
//! counter. Labels are bounded: never a client address or a query name.
//!
//! The `prometheus` crate (named in the design) was measured against
//! `prometheus-client` on the hot path (`cargo bench -p shieldns-metrics`,
//! figures in benches/RESULTS.md) and kept.

mod tables;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use shieldns_index::{ListId, ProfileId, Snapshot};

pub use tables::{NO_PROFILE, SUPERSEDED, Transport};
use tables::{ProfileCounters, Table, Tables};

/// Errors registering or rendering metrics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The prometheus registry refused a metric or could not encode.
    #[error("metrics: {reason}")]
    Prometheus {
        /// Why.
        reason: String,
    },
}

impl From<prometheus::Error> for MetricsError {
    fn from(error: prometheus::Error) -> Self {
        Self::Prometheus {
            reason: error.to_string(),
        }
    }
}

/// A policy action beyond list blocks, counted by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyAction {
    /// A safe-search rewrite.
    SafeSearch,
    /// A bypass defence answer (DoH canary, Private Relay, DDR).
    Bypass,
    /// A query type blocked by profile.
    QueryType,
    /// An answer blocked because a CNAME target is listed.
    CnameInspection,
    /// An answer blocked by an answer-IP rule.
    AnswerIp,
    /// An answer blocked by rebinding protection.
    Rebinding,
    /// An AAAA answer synthesized by DNS64.
    Dns64,
}

impl PolicyAction {
    const ALL: [Self; 7] = [
        Self::SafeSearch,
        Self::Bypass,
        Self::QueryType,
        Self::CnameInspection,
        Self::AnswerIp,
        Self::Rebinding,
        Self::Dns64,
    ];

    /// The label value (also the query log's policy name).
    pub fn label(self) -> &'static str {
        match self {
            Self::SafeSearch => "safe_search",
            Self::Bypass => "bypass_protection",
            Self::QueryType => "block_qtypes",
            Self::CnameInspection => "cname_inspection",
            Self::AnswerIp => "answer_ip",
            Self::Rebinding => "rebinding_protection",
            Self::Dns64 => "dns64",
        }
    }
}

/// Why a query or a connection got no answer at all (or, for `Malformed`
/// with a readable header, only FORMERR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Discard {
    /// A message with QR=1: answers are never answered.
    Response,
    /// A datagram shorter than a header, or one whose question does not
    /// parse (answered FORMERR when the client is allowed).
    Malformed,
    /// A query from a source the access list refuses that could not even
    /// be parsed (a readable one gets REFUSED).
    NotAllowed,
    /// Over the client prefix's rate limit.
    RateLimited,
    /// A TCP connection from a source the access list refuses, closed at
    /// accept.
    TcpNotAllowed,
    /// A TCP connection over `server.tcp_max_connections`.
    TcpConnectionLimit,
    /// A TCP connection over `server.tcp_max_connections_per_client`.
    TcpClientLimit,
    /// An encrypted connection whose TLS handshake failed or timed out.
    TlsHandshake,
    /// A DoH request that is not a DNS query (wrong path, method, media
    /// type or encoding), answered with an HTTP error.
    BadHttpRequest,
    /// A PROXY protocol header from a source not in
    /// `server.trusted_proxies`: dropped, since it could claim any address.
    UntrustedProxy,
    /// An encrypted connection over its listener's `max_connections`.
    ListenerConnectionLimit,
    /// An encrypted connection over its listener's
    /// `max_connections_per_prefix`.
    PrefixConnectionLimit,
    /// An encrypted connection over its listener's `max_handshakes` (TLS
    /// handshakes in progress at once).
    HandshakeLimit,
    /// An encrypted connection over its listener's
    /// `max_handshakes_per_prefix`.
    PrefixHandshakeLimit,
}

impl Discard {
    /// Every reason, in label order.
    pub const ALL: [Self; 14] = [
        Self::Response,
        Self::Malformed,
        Self::NotAllowed,
        Self::RateLimited,
        Self::TcpNotAllowed,
        Self::TcpConnectionLimit,
        Self::TcpClientLimit,
        Self::TlsHandshake,
        Self::BadHttpRequest,
        Self::UntrustedProxy,
        Self::ListenerConnectionLimit,
        Self::PrefixConnectionLimit,
        Self::HandshakeLimit,
        Self::PrefixHandshakeLimit,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Response => "response",
            Self::Malformed => "malformed",
            Self::NotAllowed => "not_allowed",
            Self::RateLimited => "rate_limited",
            Self::TcpNotAllowed => "tcp_not_allowed",
            Self::TcpConnectionLimit => "tcp_connection_limit",
            Self::TcpClientLimit => "tcp_client_limit",
            Self::TlsHandshake => "tls_handshake",
            Self::BadHttpRequest => "bad_http_request",
            Self::UntrustedProxy => "untrusted_proxy",
            Self::ListenerConnectionLimit => "listener_connection_limit",
            Self::PrefixConnectionLimit => "prefix_connection_limit",
            Self::HandshakeLimit => "tls_handshake_limit",
            Self::PrefixHandshakeLimit => "prefix_handshake_limit",
        }
    }
}

/// What the daemon knows about one configured list, for the per-list
/// gauges. Times are Unix seconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListStatus {
    /// The list name.
    pub name: String,
    /// Whether the list is mandatory.
    pub mandatory: bool,
    /// When the version in force was published or fetched (file lists: the
    /// file's modification time), if known.
    pub version_time: Option<f64>,
    /// The last successful sync check (`url` lists only).
    pub last_success: Option<f64>,
    /// The configured refresh interval (`url` lists only).
    pub refresh: Option<Duration>,
    /// Consecutive failed sync checks.
    pub consecutive_failures: u32,
}

/// Cumulative counts for the compliance store's rollups; the store
/// subtracts the previous reading to get each interval's delta.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RollupReading {
    /// `(profile, rcode) → queries`.
    pub queries: HashMap<(String, String), u64>,
    /// `(profile, list, category) → blocks`.
    pub blocks: HashMap<(String, String, String), u64>,
}

/// Every metric, with pre-resolved children.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    answered: [IntCounter; tables::RCODES.len()],
    refused: IntCounter,
    overload_drops: IntCounter,
    discarded: [IntCounter; Discard::ALL.len()],
    rate_limit_slips: IntCounter,
    tcp_connections: prometheus::IntGauge,
    blocked_by_ede: [IntCounter; 3],
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    policy_actions: [IntCounter; 7],
    queries: IntCounterVec,
    blocked: IntCounterVec,
    no_profile: ProfileCounters,
    superseded: ProfileCounters,
    superseded_blocks: IntCounter,
    response_duration: [Histogram; tables::PROTOCOLS.len()],
    upstream_duration: Histogram,
    tables: ArcSwap<Tables>,
    list_entries: GaugeVec,
    list_version_time: GaugeVec,
    list_version_age: GaugeVec,
    list_last_success: GaugeVec,
    list_refresh: GaugeVec,
    list_mandatory: GaugeVec,
    list_failing: GaugeVec,
    sync_failures: IntCounterVec,
    reloads: IntCounterVec,
    start_time: Gauge,
    /// The per-list status last set, for the age gauge (computed at scrape
    /// time) and for removing children of lists that left the config.
    lists: Mutex<Vec<ListStatus>>,
    log_queued: IntCounter,
    log_dropped: IntCounter,
    log_written: IntCounter,
    store_dropped: IntCounter,
}

/// Buckets from 50 µs to ~6.5 s: a cache hit answers in tens of
/// microseconds, a cold recursion in hundreds of milliseconds.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.000_05, 2.0, 18).unwrap_or_else(|_| vec![0.001, 0.01, 0.1, 1.0])
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Self, MetricsError> {
        Self::with_version(env!("CARGO_PKG_VERSION"))
    }

    /// Like [`Metrics::new`], with the version `shieldns_build_info` reports.
    pub fn with_version(version: &str) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
            let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok(vec)
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, MetricsError> {
            let vec = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok(vec)
        };
        let responses = counter_vec(
            "shieldns_resolver_responses_total",
            "Resolved (not blocked) responses by rcode.",
            &["rcode"],
        )?;
        let blocked_by_ede = counter_vec(
            "shieldns_policy_blocked_total",
            "List blocks by RFC 8914 EDE code (all profiles and lists).",
            &["ede"],
        )?;
        let refused = IntCounter::new("shieldns_acl_refused_total", "Queries refused by the access list.")?;
        registry.register(Box::new(refused.clone()))?;
        let overload_drops = IntCounter::new(
            "shieldns_resolver_overload_drops_total",
            "UDP queries dropped because server.max_in_flight queries were already being resolved.",
        )?;
        registry.register(Box::new(overload_drops.clone()))?;
        let discarded = counter_vec(
            "shieldns_resolver_discarded_total",
            "Queries and TCP connections given no answer (malformed: FORMERR at most), by reason.",
            &["reason"],
        )?;
        let rate_limit_slips = IntCounter::new(
            "shieldns_resolver_rate_limit_slips_total",
            "Queries over server.rate_limit answered with an empty TC=1 answer (the slip) instead of dropped.",
        )?;
        registry.register(Box::new(rate_limit_slips.clone()))?;
        let tcp_connections = prometheus::IntGauge::new("shieldns_tcp_connections", "Open DNS-over-TCP connections.")?;
        registry.register(Box::new(tcp_connections.clone()))?;
        let cache = counter_vec(
            "shieldns_cache_lookups_total",
            "Lookups in shieldns's own answer caches (the packet caches of UDP and of the stream transports; the hickory engine's answer cache) by result.",
            &["result"],
        )?;
        let policy = counter_vec(
            "shieldns_policy_actions_total",
            "Policy actions beyond list blocks, by action.",
            &["action"],
        )?;
        let queries = counter_vec(
            "shieldns_resolver_queries_total",
            "Answered queries by client profile, transport and response code (blocks included).",
            &["profile", "protocol", "rcode"],
        )?;
        let blocked = counter_vec(
            "shieldns_policy_list_blocks_total",
            "List blocks by category, list, client profile and RFC 8914 EDE code.",
            &["category", "list", "profile", "ede"],
        )?;
        let response_duration = HistogramVec::new(
            HistogramOpts::new(
                "shieldns_resolver_response_duration_seconds",
                "Time from receiving a query to sending its response, by transport.",
            )
            .buckets(latency_buckets()),
            &["protocol"],
        )?;
        registry.register(Box::new(response_duration.clone()))?;
        let upstream_duration = Histogram::with_opts(
            HistogramOpts::new(
                "shieldns_upstream_duration_seconds",
                "Time the upstream (recursion or forwarder) took per cache miss, failures included.",
            )
            .buckets(latency_buckets()),
        )?;
        registry.register(Box::new(upstream_duration.clone()))?;
        let list_entries = gauge_vec(
            "shieldns_list_entries",
            "Rules loaded from the list in the policy in force.",
            &["list"],
        )?;
        let list_version_time = gauge_vec(
            "shieldns_list_version_timestamp_seconds",
            "When the list version in force was fetched (file lists: modified), Unix time.",
            &["list"],
        )?;
        let list_version_age = gauge_vec(
            "shieldns_list_version_age_seconds",
            "Age of the list version in force at scrape time.",
            &["list"],
        )?;
        let list_last_success = gauge_vec(
            "shieldns_list_last_sync_success_timestamp_seconds",
            "Last successful sync check of a `url` list, Unix time.",
            &["list"],
        )?;
        let list_refresh = gauge_vec(
            "shieldns_list_refresh_seconds",
            "Configured refresh interval of a `url` list.",
            &["list"],
        )?;
        let list_mandatory = gauge_vec(
            "shieldns_list_mandatory",
            "1 for a mandatory list, 0 otherwise (join target for alerts).",
            &["list"],
        )?;
        let list_failing = gauge_vec(
            "shieldns_list_sync_consecutive_failures",
            "Consecutive failed sync checks of a `url` list (0 after a success).",
            &["list"],
        )?;
        let sync_failures = counter_vec(
            "shieldns_sync_failures_total",
            "Failed list sync checks by list and reason class.",
            &["list", "reason"],
        )?;
        let reloads = counter_vec(
            "shieldns_daemon_reloads_total",
            "Policy reloads (SIGHUP) by result.",
            &["result"],
        )?;
        let build_info = gauge_vec("shieldns_build_info", "Always 1; the version in a label.", &["version"])?;
        build_info.with_label_values(&[version]).set(1.0);
        let start_time = Gauge::new(
            "shieldns_daemon_start_time_seconds",
            "When the daemon started, Unix time.",
        )?;
        registry.register(Box::new(start_time.clone()))?;
        start_time.set(unix_now());
        let log = counter_vec(
            "shieldns_querylog_events_total",
            "Query-log events by outcome: queued, dropped (queue full) or written.",
            &["result"],
        )?;
        let store_dropped = IntCounter::new(
            "shieldns_store_events_dropped_total",
            "Compliance-store events dropped because the writer's queue was full.",
        )?;
        registry.register(Box::new(store_dropped.clone()))?;
        let policy_actions = PolicyAction::ALL.map(|action| policy.with_label_values(&[action.label()]));
        let protocols = tables::PROTOCOLS.map(|p| response_duration.with_label_values(&[p]));
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        Ok(Self {
            answered: tables::RCODES.map(|rcode| responses.with_label_values(&[rcode])),
            refused,
            overload_drops,
            discarded: Discard::ALL.map(|reason| discarded.with_label_values(&[reason.label()])),
            rate_limit_slips,
            tcp_connections,
            blocked_by_ede: ["15", "16", "17"].map(|ede| blocked_by_ede.with_label_values(&[ede])),
            cache_hits: cache.with_label_values(&["hit"]),
            cache_misses: cache.with_label_values(&["miss"]),
            policy_actions,
            no_profile: ProfileCounters::resolve(&queries, NO_PROFILE),
            superseded: ProfileCounters::resolve(&queries, SUPERSEDED),
            superseded_blocks: blocked.with_label_values(&[SUPERSEDED, SUPERSEDED, SUPERSEDED, SUPERSEDED]),
            queries,
            blocked,
            response_duration: protocols,
            upstream_duration,
            tables: ArcSwap::from_pointee(Tables::default()),
            list_entries,
            list_version_time,
            list_version_age,
            list_last_success,
            list_refresh,
            list_mandatory,
            list_failing,
            sync_failures,
            reloads,
            start_time,
            lists: Mutex::new(Vec::new()),
            log_queued: log.with_label_values(&["queued"]),
            log_dropped: log.with_label_values(&["dropped"]),
            log_written: log.with_label_values(&["written"]),
            store_dropped,
            registry,
        })
    }

    /// Resolves the profile and list children of a snapshot about to be
    /// published. Call it before the snapshot is stored, so no query ever
    /// sees a snapshot without its table. The previous table is kept for
    /// queries still in flight on the previous snapshot. Also sets the
    /// per-list entry gauges. Off the hot path (it hashes every label set).
    pub fn install(&self, snapshot: &Snapshot) {
        let table = Arc::new(Table::build(snapshot, &self.queries, &self.blocked));
        let old = self.tables.load_full();
        self.tables.store(Arc::new(Tables {
            current: Some(table),
            previous: old.current.clone(),
        }));
        for list in snapshot.lists() {
            let entries = list.counts.rules as f64;
            self.list_entries.with_label_values(&[&list.policy.name]).set(entries);
            self.list_mandatory
                .with_label_values(&[&list.policy.name])
                .set(f64::from(u8::from(list.policy.mandatory)));
        }
    }

    /// Counts one answered query (blocks included) and its response time.
    /// `profile` is `None` when the query never got one (ACL refusal,
    /// malformed request).
    pub fn query(&self, snapshot: Option<(&Snapshot, ProfileId)>, transport: Transport, rcode: u16, elapsed: Duration) {
        match snapshot {
            None => {
                if let Some(counter) = self.no_profile.get(transport, rcode) {
                    counter.inc();
                }
            }
            Some((snapshot, profile)) => self.count_query(&self.tables.load(), snapshot, profile, transport, rcode, 1),
        };
        self.observe(transport, elapsed);
    }

    /// A tally for one UDP thread's fast-path answers (see [`AnswerTally`]).
    pub fn answer_tally(&self) -> AnswerTally {
        AnswerTally {
            groups: Vec::with_capacity(TALLY_GROUPS),
            // Index 0 is the UDP series (`tables::PROTOCOLS`), the only
            // transport of the fast path; a constant index into a fixed-size
            // array, checked at compile time.
            durations: self.response_duration[0].local(),
        }
    }

    /// Adds a tally to the shared series and empties it: per group of equal
    /// answers, the per-profile query counter, and the per-list block
    /// counter and EDE aggregate (a block) or the cache-hit and rcode
    /// counters (a packet-cache hit); and the response times. The same
    /// series [`Metrics::query`], [`Metrics::list_blocked`] and
    /// [`Metrics::cache_hit`] count, at one `ArcSwap` load per flush.
    /// `snapshot` is the one the tallied answers were decided under: its
    /// profile and list positions name the series.
    pub fn flush_answers(&self, snapshot: &Snapshot, tally: &mut AnswerTally) {
        if tally.groups.is_empty() {
            return;
        }
        let tables = self.tables.load();
        for group in tally.groups.drain(..) {
            let TallyKey { profile, block, rcode } = group.key;
            self.count_query(&tables, snapshot, profile, Transport::Udp, rcode, group.answers);
            match block {
                Some((list, ede)) => self.count_block(&tables, snapshot, profile, list, ede, group.answers),
                None => {
                    self.cache_hits.inc_by(group.answers);
                    self.count_answered(rcode, group.answers);
                }
            }
        }
        tally.durations.flush();
    }

    /// Counts a list block for a profile.
    pub fn list_blocked(&self, snapshot: &Snapshot, profile: ProfileId, list: ListId, ede: u16) {
        self.count_block(&self.tables.load(), snapshot, profile, list, ede, 1);
    }

    /// Adds `queries` to the per-profile query counter of `snapshot`'s
    /// table, or to the superseded series when the table is gone.
    fn count_query(
        &self,
        tables: &Tables,
        snapshot: &Snapshot,
        profile: ProfileId,
        transport: Transport,
        rcode: u16,
        queries: u64,
    ) {
        match tables
            .find(snapshot)
            .and_then(|t| t.profile_index(profile).and_then(|i| t.profile(i)))
        {
            Some(counters) => counters.get(transport, rcode),
            None => self.superseded.get(transport, rcode),
        }
        .inspect(|counter| counter.inc_by(queries));
    }

    /// Adds `blocks` to the per-list, per-profile block counter of
    /// `snapshot`'s table (or the superseded one), and to the aggregate by
    /// EDE code.
    fn count_block(
        &self,
        tables: &Tables,
        snapshot: &Snapshot,
        profile: ProfileId,
        list: ListId,
        ede: u16,
        blocks: u64,
    ) {
        match tables
            .find(snapshot)
            .and_then(|t| t.profile_index(profile).and_then(|p| t.block(list, p)))
        {
            Some(counter) => counter.inc_by(blocks),
            None => self.superseded_blocks.inc_by(blocks),
        }
        self.count_blocked(ede, blocks);
    }

    /// Records a response time by transport.
    fn observe(&self, transport: Transport, elapsed: Duration) {
        if let Some(histogram) = self.response_duration.get(transport.index()) {
            histogram.observe(elapsed.as_secs_f64());
        }
    }

    /// Counts a block by EDE code only (the aggregate series).
    pub fn blocked(&self, ede: u16) {
        self.count_blocked(ede, 1);
    }

    fn count_blocked(&self, ede: u16, blocks: u64) {
        let index = match ede {
            shieldns_index::ede::CENSORED => 1,
            shieldns_index::ede::FILTERED => 2,
            _ => 0,
        };
        if let Some(counter) = self.blocked_by_ede.get(index) {
            counter.inc_by(blocks);
        }
    }

    /// Counts a resolved (not blocked) response by its rcode (`u16` value).
    pub fn answered(&self, rcode: impl Into<u16>) {
        self.count_answered(rcode.into(), 1);
    }

    fn count_answered(&self, rcode: u16, answers: u64) {
        if let Some(counter) = self.answered.get(tables::rcode_index(rcode)) {
            counter.inc_by(answers);
        }
    }

    /// Counts a policy action.
    pub fn policy(&self, action: PolicyAction) {
        if let Some(counter) = PolicyAction::ALL
            .iter()
            .position(|a| *a == action)
            .and_then(|i| self.policy_actions.get(i))
        {
            counter.inc();
        }
    }

    /// Counts a query refused by the access list.
    pub fn refused(&self) {
        self.refused.inc();
    }

    /// Counts a UDP query dropped for overload.
    pub fn overload_drop(&self) {
        self.overload_drops.inc();
    }

    /// Counts a query or connection given no answer.
    pub fn discarded(&self, reason: Discard) {
        if let Some(counter) = Discard::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.discarded.get(i))
        {
            counter.inc();
        }
    }

    /// Counts a rate-limited query answered with TC=1.
    pub fn rate_limit_slip(&self) {
        self.rate_limit_slips.inc();
    }

    /// Adds `delta` (negative when connections close) to the open TCP
    /// connections.
    pub fn tcp_connections(&self, delta: i64) {
        self.tcp_connections.add(delta);
    }

    /// Counts a cache hit.
    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    /// Counts a cache miss.
    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    /// Records how long one upstream resolution took.
    pub fn upstream(&self, elapsed: Duration) {
        self.upstream_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a reload by result.
    pub fn reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Counts a failed sync check; `reason` must be a bounded class (see
    /// the binary's classifier), never free text.
    pub fn sync_failure(&self, list: &str, reason: &str) {
        self.sync_failures.with_label_values(&[list, reason]).inc();
    }

    /// Replaces the per-list status gauges; children of lists no longer
    /// configured are removed so dashboards do not show ghosts.
    pub fn set_lists(&self, lists: Vec<ListStatus>) {
        let mut current = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        for old in current.iter() {
            if !lists.iter().any(|l| l.name == old.name) {
                for vec in self.list_gauges() {
                    let _ = vec.remove_label_values(&[&old.name]);
                }
            }
        }
        for list in &lists {
            let name = [list.name.as_str()];
            self.list_mandatory
                .with_label_values(&name)
                .set(f64::from(u8::from(list.mandatory)));
            self.list_failing
                .with_label_values(&name)
                .set(f64::from(list.consecutive_failures));
            match list.version_time {
                Some(at) => self.list_version_time.with_label_values(&name).set(at),
                None => {
                    let _ = self.list_version_time.remove_label_values(&name);
                    let _ = self.list_version_age.remove_label_values(&name);
                }
            }
            if let Some(at) = list.last_success {
                self.list_last_success.with_label_values(&name).set(at);
            }
            if let Some(refresh) = list.refresh {
                self.list_refresh.with_label_values(&name).set(refresh.as_secs_f64());
            }
        }
        *current = lists;
    }

    fn list_gauges(&self) -> [&GaugeVec; 7] {
        [
            &self.list_entries,
            &self.list_version_time,
            &self.list_version_age,
            &self.list_last_success,
            &self.list_refresh,
            &self.list_mandatory,
            &self.list_failing,
        ]
    }

    /// Counts a compliance-store event dropped on a full queue.
    pub fn store_dropped(&self) {
        self.store_dropped.inc();
    }

    /// The counters of `shieldns_querylog_events_total`: queued, dropped
    /// (queue full) and written, for the query log to count with.
    pub fn query_log_counters(&self) -> [IntCounter; 3] {
        [
            self.log_queued.clone(),
            self.log_dropped.clone(),
            self.log_written.clone(),
        ]
    }

    /// The profile name a query's table knows, for the query log.
    pub fn profile_name(snapshot: &Snapshot, profile: ProfileId) -> &str {
        &snapshot.profile(profile).name
    }

    /// Cumulative query and block counts for the store's rollups.
    pub fn rollup_reading(&self) -> RollupReading {
        let mut reading = RollupReading::default();
        for_each_counter(&self.queries, |label, value| {
            *reading.queries.entry((label("profile"), label("rcode"))).or_default() += value;
        });
        for_each_counter(&self.blocked, |label, value| {
            *reading
                .blocks
                .entry((label("profile"), label("list"), label("category")))
                .or_default() += value;
        });
        reading
    }

    /// When the daemon started (Unix seconds).
    pub fn start_time(&self) -> f64 {
        self.start_time.get()
    }

    /// Renders the Prometheus text exposition. Ages are computed here, at
    /// scrape time, from the version timestamps.
    pub fn render(&self) -> Result<String, MetricsError> {
        let now = unix_now();
        for list in self.lists.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            if let Some(at) = list.version_time {
                self.list_version_age
                    .with_label_values(&[&list.name])
                    .set((now - at).max(0.0));
            }
        }
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| MetricsError::Prometheus { reason: e.to_string() })
    }
}

/// Calls `f` with a label getter and the value of every child of `vec`.
fn for_each_counter(vec: &IntCounterVec, mut f: impl FnMut(&dyn Fn(&str) -> String, u64)) {
    for family in prometheus::core::Collector::collect(vec) {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            // Counters are integers stored as f64 in the exposition model;
            // the cast is exact below 2^53.
            f(&label, metric.get_counter().get_value() as u64);
        }
    }
}

/// Now as Unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Distinct kinds of answer a tally expects in one batch without growing:
/// one profile's blocks and cache hits, NXDOMAIN and NOERROR.
const TALLY_GROUPS: usize = 8;

/// The fast-path answers of one UDP thread, counted without atomic
/// operations and added to the shared series by [`Metrics::flush_answers`]
/// (the UDP thread flushes at most every millisecond while busy, at once
/// when a batch comes after a quiet millisecond).
///
/// Why: with every answer adding to the same shared counters, two UDP
/// threads on two cores pass those counters' cache lines back and forth at
/// every answer; equal answers (the common case: one profile, one list) now
/// cost one add per series per flush instead of one per answer.
#[derive(Debug)]
pub struct AnswerTally {
    groups: Vec<TallyGroup>,
    /// The UDP response-time histogram's thread-local side.
    durations: prometheus::local::LocalHistogram,
}

impl AnswerTally {
    /// Counts one answer: a list block (`block` holds the list and its EDE
    /// code) or a packet-cache hit (`None`), with the rcode sent.
    pub fn add(&mut self, profile: ProfileId, block: Option<(ListId, u16)>, rcode: u16) {
        let key = TallyKey { profile, block, rcode };
        match self.groups.iter_mut().find(|group| group.key == key) {
            Some(group) => group.answers += 1,
            None => self.groups.push(TallyGroup { key, answers: 1 }),
        }
    }

    /// Records the response time of `answers` answers (a batch's: the
    /// same for every answer in it).
    pub fn took(&mut self, elapsed: Duration, answers: usize) {
        let seconds = elapsed.as_secs_f64();
        for _ in 0..answers {
            self.durations.observe(seconds);
        }
    }

    /// Whether nothing is waiting to be flushed.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TallyKey {
    profile: ProfileId,
    block: Option<(ListId, u16)>,
    rcode: u16,
}

#[derive(Debug)]
struct TallyGroup {
    key: TallyKey,
    answers: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use shieldns_index::{ListFormat, ListPolicy, ProfileConfig, SnapshotBuilder};

    fn snapshot(profiles: &[(&str, &str)]) -> Arc<Snapshot> {
        let mut builder = SnapshotBuilder::new();
        builder.set_access(vec!["0.0.0.0/0".parse().unwrap()]);
        builder
            .add_list(
                ListPolicy::block("adult", Some("adult"), ListFormat::Domains),
                b"adult.test\n",
            )
            .unwrap();
        for (name, net) in profiles {
            let config: ProfileConfig = toml::from_str(&format!(
                "name = \"{name}\"\nclients = [\"{net}\"]\nblock = [\"adult\"]\n"
            ))
            .unwrap();
            builder.add_profile(config);
        }
        Arc::new(builder.build().unwrap())
    }

    /// Metrics installed for a snapshot with a `kids` (10/8) and a `staff`
    /// (192.168/16) profile, and those profiles' ids.
    fn kids_and_staff() -> (Metrics, Arc<Snapshot>, ProfileId, ProfileId) {
        let metrics = Metrics::new().unwrap();
        let snapshot = snapshot(&[("kids", "10.0.0.0/8"), ("staff", "192.168.0.0/16")]);
        metrics.install(&snapshot);
        let kids = snapshot.profile_for("10.1.2.3".parse().unwrap());
        let staff = snapshot.profile_for("192.168.1.1".parse().unwrap());
        (metrics, snapshot, kids, staff)
    }

    #[test]
    fn counts_by_profile_list_and_ede_through_reloads() {
        let (metrics, first, kids, staff) = kids_and_staff();
        metrics.query(Some((&first, kids)), Transport::Udp, 3, Duration::from_millis(1));
        metrics.query(Some((&first, kids)), Transport::Udp, 3, Duration::from_millis(1));
        metrics.query(Some((&first, staff)), Transport::Tcp, 0, Duration::from_millis(1));
        metrics.query(None, Transport::Udp, 5, Duration::from_millis(1));
        metrics.list_blocked(&first, kids, ListId(0), 17);
        // A reload with the profiles in another order: the old snapshot's
        // in-flight queries still count under their own labels.
        let second = snapshot(&[("staff", "192.168.0.0/16"), ("kids", "10.0.0.0/8")]);
        metrics.install(&second);
        metrics.list_blocked(&first, kids, ListId(0), 17);
        let kids2 = second.profile_for("10.1.2.3".parse().unwrap());
        metrics.list_blocked(&second, kids2, ListId(0), 17);
        // Two reloads later the first snapshot's table is gone.
        metrics.install(&snapshot(&[("kids", "10.0.0.0/8")]));
        metrics.query(Some((&first, kids)), Transport::Udp, 0, Duration::from_millis(1));
        let text = metrics.render().unwrap();
        for line in [
            r#"shieldns_resolver_queries_total{profile="kids",protocol="udp",rcode="NXDOMAIN"} 2"#,
            r#"shieldns_resolver_queries_total{profile="staff",protocol="tcp",rcode="NOERROR"} 1"#,
            r#"shieldns_resolver_queries_total{profile="none",protocol="udp",rcode="REFUSED"} 1"#,
            r#"shieldns_resolver_queries_total{profile="superseded",protocol="udp",rcode="NOERROR"} 1"#,
            r#"shieldns_policy_list_blocks_total{category="adult",ede="17",list="adult",profile="kids"} 3"#,
            r#"shieldns_policy_blocked_total{ede="17"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        let reading = metrics.rollup_reading();
        assert_eq!(reading.queries[&("kids".into(), "NXDOMAIN".into())], 2);
        assert_eq!(reading.blocks[&("kids".into(), "adult".into(), "adult".into())], 3);
    }

    #[test]
    fn a_tally_counts_what_single_calls_count_once_flushed() {
        let (metrics, first, kids, staff) = kids_and_staff();
        let mut tally = metrics.answer_tally();
        for _ in 0..3 {
            tally.add(kids, Some((ListId(0), 17)), 3);
        }
        tally.add(staff, None, 0);
        tally.add(staff, None, 3);
        tally.took(Duration::from_micros(20), 5);
        let line = r#"shieldns_resolver_queries_total{profile="kids",protocol="udp",rcode="NXDOMAIN"} 3"#;
        assert!(
            !metrics.render().unwrap().lines().any(|l| l == line),
            "nothing counted before the flush"
        );
        metrics.flush_answers(&first, &mut tally);
        assert!(tally.is_empty());
        let text = metrics.render().unwrap();
        for line in [
            line,
            r#"shieldns_resolver_queries_total{profile="staff",protocol="udp",rcode="NOERROR"} 1"#,
            r#"shieldns_resolver_queries_total{profile="staff",protocol="udp",rcode="NXDOMAIN"} 1"#,
            r#"shieldns_policy_list_blocks_total{category="adult",ede="17",list="adult",profile="kids"} 3"#,
            r#"shieldns_policy_blocked_total{ede="17"} 3"#,
            r#"shieldns_resolver_response_duration_seconds_count{protocol="udp"} 5"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        // A second flush of the emptied tally adds nothing.
        metrics.flush_answers(&first, &mut tally);
        assert_eq!(metrics.render().unwrap(), text);
    }

    #[test]
    fn list_gauges_follow_the_configuration() {
        let metrics = Metrics::new().unwrap();
        let status = |name: &str| ListStatus {
            name: name.into(),
            mandatory: true,
            version_time: Some(unix_now() - 100.0),
            last_success: Some(1_700_000_000.0),
            refresh: Some(Duration::from_secs(3600)),
            consecutive_failures: 2,
        };
        metrics.set_lists(vec![status("a"), status("b")]);
        metrics.sync_failure("a", "http");
        let text = metrics.render().unwrap();
        assert!(
            text.contains(r#"shieldns_list_refresh_seconds{list="b"} 3600"#),
            "{text}"
        );
        assert!(
            text.contains(r#"shieldns_sync_failures_total{list="a",reason="http"} 1"#),
            "{text}"
        );
        let age = text
            .lines()
            .find_map(|l| l.strip_prefix(r#"shieldns_list_version_age_seconds{list="a"} "#))
            .unwrap();
        let age: f64 = age.parse().unwrap();
        assert!((99.0..200.0).contains(&age), "{age}");
        metrics.set_lists(vec![status("a")]);
        let text = metrics.render().unwrap();
        assert!(!text.contains(r#"list="b""#), "{text}");
    }
}
