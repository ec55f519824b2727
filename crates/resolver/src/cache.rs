//! The answer cache in front of both upstream modes.
//!
//! Entries are whole answers keyed by (name, type, DO bit). An entry lives
//! in the cache for its TTL plus the serve-stale window; within its TTL it is
//! served directly, after that only when the upstream fails (RFC 8767).
//! Negative answers are cached for the SOA's negative TTL (RFC 2308).
//! Bounded by `cache.max_entries` through moka's TinyLFU eviction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, Record, RecordType};
use moka::sync::Cache;

use crate::config::CacheConfig;
use crate::resolved::UpstreamFailure;
use crate::stream_cache::StreamCache;

/// The cache key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    pub(crate) name: LowerName,
    pub(crate) qtype: RecordType,
    pub(crate) dnssec_ok: bool,
}

/// One cached answer.
#[derive(Debug)]
pub(crate) struct CachedAnswer {
    pub(crate) rcode: ResponseCode,
    pub(crate) answers: Vec<Record>,
    pub(crate) authorities: Vec<Record>,
    pub(crate) authentic_data: bool,
    inserted: Instant,
    ttl: u32,
    prefetching: AtomicBool,
}

/// What a cached answer weighs besides its records: key, header, the
/// cache's own bookkeeping.
const ANSWER_OVERHEAD_BYTES: u64 = 256;

impl CachedAnswer {
    /// Approximate bytes this answer holds: its records' owner names and
    /// data, plus per-record and per-answer overhead.
    fn weight(&self, key: &CacheKey) -> u64 {
        let records = self.answers.iter().chain(&self.authorities);
        let bytes: usize = records
            .map(|record| {
                let data =
                    hickory_proto::serialize::binary::BinEncodable::to_bytes(&record.data).map_or(64, |b| b.len());
                std::mem::size_of::<Record>() + record.name.len() + data
            })
            .sum();
        u64::try_from(bytes + key.name.len()).unwrap_or(u64::MAX) + ANSWER_OVERHEAD_BYTES
    }

    /// Seconds left before expiry (0 when expired).
    pub(crate) fn remaining(&self, now: Instant) -> u32 {
        let age = u32::try_from(now.saturating_duration_since(self.inserted).as_secs()).unwrap_or(u32::MAX);
        self.ttl.saturating_sub(age)
    }

    /// Whether the answer is still within its TTL.
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.inserted) < Duration::from_secs(u64::from(self.ttl))
    }

    /// Records with TTLs capped at the answer's `remaining` seconds, or set
    /// to exactly `remaining` when `exact` (answers served stale carry the
    /// RFC 8767 stale TTL whatever their original TTL).
    pub(crate) fn records_aged(records: &[Record], remaining: u32, exact: bool) -> Vec<Record> {
        records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.ttl = if exact { remaining } else { r.ttl.min(remaining) };
                r
            })
            .collect()
    }

    /// Whether this hit should start a prefetch: the answer has less than
    /// a tenth of its TTL left (Unbound's rule: being asked again so late
    /// is what makes it popular) and no prefetch is running. The packet
    /// caches in front pass such late questions on to here (see
    /// `PacketCache::new`).
    pub(crate) fn should_prefetch(&self, now: Instant) -> bool {
        // Milliseconds, so a 10-second answer enters its last tenth at 9 s,
        // not when whole seconds round it down to zero.
        let ttl = Duration::from_secs(u64::from(self.ttl));
        let remaining = ttl.saturating_sub(now.saturating_duration_since(self.inserted));
        self.ttl >= 10 && remaining.as_millis() * 10 < ttl.as_millis() && !self.prefetching.swap(true, Ordering::AcqRel)
    }
}

/// The cache.
#[derive(Clone, Debug)]
pub(crate) struct AnswerCache {
    entries: Cache<CacheKey, Arc<CachedAnswer>>,
    config: Arc<CacheConfig>,
}

impl AnswerCache {
    pub(crate) fn new(config: CacheConfig) -> Self {
        let keep_for = |answer: &Arc<CachedAnswer>, stale_window: u32| {
            Duration::from_secs(u64::from(answer.ttl) + u64::from(stale_window))
        };
        let stale_window = if config.serve_stale { config.stale_window } else { 0 };
        // Bounded by bytes (each answer weighed by its records' size), and
        // so by entries too: no answer weighs less than its key and header.
        let entries = Cache::builder()
            .max_capacity(
                config
                    .max_bytes
                    .min(config.max_entries.saturating_mul(ANSWER_OVERHEAD_BYTES)),
            )
            .weigher(|key: &CacheKey, answer: &Arc<CachedAnswer>| u32::try_from(answer.weight(key)).unwrap_or(u32::MAX))
            .expire_after(Expiry { stale_window, keep_for })
            .build();
        Self {
            entries,
            config: Arc::new(config),
        }
    }

    pub(crate) fn get(&self, key: &CacheKey) -> Option<Arc<CachedAnswer>> {
        self.entries.get(key)
    }

    pub(crate) fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Caches an answer. SERVFAIL and other failures are not cached (the
    /// stale copy, if any, stays), so a broken upstream never replaces a
    /// good answer.
    pub(crate) fn insert(
        &self,
        key: CacheKey,
        rcode: ResponseCode,
        answers: Vec<Record>,
        authorities: Vec<Record>,
        authentic_data: bool,
    ) {
        let ttl = match rcode {
            ResponseCode::NoError if !answers.is_empty() => {
                let min = answers.iter().map(|r| r.ttl).min().unwrap_or(0);
                min.clamp(self.config.min_ttl, self.config.max_ttl.max(self.config.min_ttl))
            }
            ResponseCode::NoError | ResponseCode::NXDomain => {
                // RFC 2308 §5: the negative TTL is the minimum of the SOA
                // record's TTL and its MINIMUM field.
                let soa_ttl = authorities
                    .iter()
                    .find_map(|r| match &r.data {
                        hickory_proto::rr::RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                        _ => None,
                    })
                    .unwrap_or(0);
                soa_ttl.min(self.config.negative_max_ttl)
            }
            _ => return,
        };
        if ttl == 0 {
            return;
        }
        let answer = CachedAnswer {
            rcode,
            answers,
            authorities,
            authentic_data,
            inserted: Instant::now(),
            ttl,
            prefetching: AtomicBool::new(false),
        };
        self.entries.insert(key, Arc::new(answer));
    }
}

/// Keeps each entry for its TTL plus the stale window.
struct Expiry<F> {
    stale_window: u32,
    keep_for: F,
}

impl<F> moka::Expiry<CacheKey, Arc<CachedAnswer>> for Expiry<F>
where
    F: Fn(&Arc<CachedAnswer>, u32) -> Duration + Send + Sync,
{
    fn expire_after_create(&self, _key: &CacheKey, value: &Arc<CachedAnswer>, _now: Instant) -> Option<Duration> {
        Some((self.keep_for)(value, self.stale_window))
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedAnswer>,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some((self.keep_for)(value, self.stale_window))
    }
}

/// The handler's caches: answers (the hickory engine's only), failures,
/// and the stream transports' encoded answers.
#[derive(Debug)]
pub(crate) struct Caches {
    pub(crate) answers: Option<AnswerCache>,
    pub(crate) failures: Option<FailureCache>,
    pub(crate) streams: StreamCache,
}

/// Resolution failures remembered for `cache.failure_ttl` (RFC 9520), keyed
/// like answers. Holds the failure's kind and text, never bogus data.
#[derive(Clone, Debug)]
pub(crate) struct FailureCache {
    entries: Cache<CacheKey, Arc<UpstreamFailure>>,
}

impl FailureCache {
    /// `None` when `cache.failure_ttl` is 0.
    pub(crate) fn new(config: &CacheConfig) -> Option<Self> {
        (config.failure_ttl > 0).then(|| Self {
            entries: Cache::builder()
                .max_capacity(FAILURES_KEPT)
                .time_to_live(Duration::from_secs(u64::from(config.failure_ttl.min(300))))
                .build(),
        })
    }

    pub(crate) fn get(&self, key: &CacheKey) -> Option<Arc<UpstreamFailure>> {
        self.entries.get(key)
    }

    /// Remembers `failure` unless it is a library error (not the name's
    /// fault); bogus data is dropped from the copy kept.
    pub(crate) fn insert(&self, key: CacheKey, failure: &UpstreamFailure) {
        if !matches!(failure, UpstreamFailure::Failed(_)) {
            self.entries.insert(key, Arc::new(failure.clone_reason()));
        }
    }
}

/// Failures remembered at most (names under attack can be many; each entry
/// is a name and a short text).
const FAILURES_KEPT: u64 = 100_000;
