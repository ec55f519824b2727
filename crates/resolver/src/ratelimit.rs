//! Per-client-prefix token buckets for UDP: `[server.rate_limit]` for the
//! clients the access list allows (off unless configured), and a fixed,
//! always-on budget for the REFUSED answers sources it refuses get, so
//! shieldns can never be a reflector.
//!
//! Key design decision: one table shared by every UDP thread, split into
//! shards by a hash of the prefix, each behind its own mutex: with
//! `SO_REUSEPORT` one client's datagrams reach several threads, so
//! per-thread buckets would multiply its budget by the thread count. The
//! table is bounded: a full shard first forgets prefixes whose bucket has
//! refilled (they have been quiet), and a prefix that still finds no room
//! is let through rather than tracked (spoofed floods from random sources
//! are not what a per-source limit is for; their reflection target, the one
//! spoofed address, has a bucket).
//!
//! TCP is not limited here: it cannot be spoofed, and its connection caps
//! bound what one client can hold.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use ipnet::IpNet;

use crate::config::RateLimitConfig;

/// What the limiter says about one query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    Pass,
    /// Over the budget: no answer.
    Drop,
    /// Over the budget, but this drop is answered with an empty TC=1 answer
    /// so that a real client retries over TCP (the "slip").
    Slip,
}

const SHARDS: usize = 64;
/// Prefixes tracked per shard at most.
const PER_SHARD: usize = 16_384;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    /// Milliseconds since the limiter started, at the last refill.
    refilled: u64,
    drops: u32,
}

/// Token buckets keyed by client prefix.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_ms: f64,
    burst: f64,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    slip: u32,
    exempt: Vec<IpNet>,
    started: Instant,
    hasher: foldhash::fast::FixedState,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<IpNet, Bucket>,
    /// When quiet prefixes were last forgotten (milliseconds since start):
    /// at most once a second, so a flood of new sources costs no more.
    swept: u64,
}

impl RateLimiter {
    pub(crate) fn new(config: &RateLimitConfig) -> Self {
        let rate = f64::from(config.queries_per_second.max(1));
        Self {
            per_ms: rate / 1000.0,
            burst: f64::from(
                config
                    .burst
                    .unwrap_or(config.queries_per_second.saturating_mul(2))
                    .max(1),
            ),
            ipv4_prefix: config.ipv4_prefix.min(32),
            ipv6_prefix: config.ipv6_prefix.min(128),
            slip: config.slip,
            exempt: config.exempt.clone(),
            started: Instant::now(),
            hasher: foldhash::fast::FixedState::with_seed(0x524c_494d),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    /// The budget for REFUSED answers to sources the access list refuses:
    /// 10 a second per /24 or /56, no slip.
    pub(crate) fn for_refusals() -> Self {
        Self::new(&RateLimitConfig {
            queries_per_second: 10,
            burst: Some(20),
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            slip: 0,
            exempt: Vec::new(),
        })
    }

    /// Takes one token from `client`'s prefix at `now`.
    pub(crate) fn check(&self, client: IpAddr, now: Instant) -> Limit {
        if self.exempt.iter().any(|net| net.contains(&client)) {
            return Limit::Pass;
        }
        let key = self.prefix(client);
        let index = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        let Some(shard) = self.shards.get(index) else {
            return Limit::Pass;
        };
        let at = u64::try_from(now.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX);
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if shard.buckets.len() >= PER_SHARD && !shard.buckets.contains_key(&key) {
            if at.saturating_sub(shard.swept) >= 1000 {
                let (per_ms, burst) = (self.per_ms, self.burst);
                shard
                    .buckets
                    .retain(|_, bucket| refill(bucket, at, per_ms, burst) < burst);
                shard.swept = at;
            }
            if shard.buckets.len() >= PER_SHARD {
                return Limit::Pass;
            }
        }
        let bucket = shard.buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            refilled: at,
            drops: 0,
        });
        bucket.tokens = refill(bucket, at, self.per_ms, self.burst);
        bucket.refilled = at;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Limit::Pass;
        }
        bucket.drops = bucket.drops.wrapping_add(1);
        if self.slip > 0 && bucket.drops % self.slip == 0 {
            Limit::Slip
        } else {
            Limit::Drop
        }
    }

    /// The network `client` is grouped into. The prefix lengths are clamped
    /// to the family's width in `new`, so the network always exists.
    fn prefix(&self, client: IpAddr) -> IpNet {
        client_prefix(client, self.ipv4_prefix, self.ipv6_prefix)
    }
}

/// The network of `client` under these prefix lengths (one within its
/// family's width; a longer one leaves the address alone): how the rate
/// limits and the listeners' per-prefix caps group clients.
pub(crate) fn client_prefix(client: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> IpNet {
    let length = if client.is_ipv4() { ipv4_prefix } else { ipv6_prefix };
    IpNet::new(client, length).map_or(IpNet::from(client), |net| net.trunc())
}

/// The bucket's tokens at `at`, refilled since its last refill.
fn refill(bucket: &Bucket, at: u64, per_ms: f64, burst: f64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // milliseconds: exact far beyond any uptime
    let elapsed = at.saturating_sub(bucket.refilled) as f64;
    (bucket.tokens + elapsed * per_ms).min(burst)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limiter(qps: u32, burst: u32, slip: u32) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            queries_per_second: qps,
            burst: Some(burst),
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            slip,
            exempt: vec!["192.0.2.128/25".parse().unwrap()],
        })
    }

    #[test]
    fn a_prefix_gets_its_burst_then_its_rate_with_every_nth_drop_slipped() {
        let limiter = limiter(10, 5, 2);
        let start = Instant::now();
        let client = IpAddr::from([198, 51, 100, 7]);
        let neighbour = IpAddr::from([198, 51, 100, 200]);
        let verdicts: Vec<Limit> = (0..9).map(|_| limiter.check(client, start)).collect();
        assert_eq!(&verdicts[..5], &[Limit::Pass; 5]);
        assert_eq!(
            &verdicts[5..],
            &[Limit::Drop, Limit::Slip, Limit::Drop, Limit::Slip],
            "the same /24 shares the bucket, every second drop slips"
        );
        assert_eq!(limiter.check(neighbour, start), Limit::Drop, "same /24");
        assert_eq!(limiter.check(IpAddr::from([198, 51, 101, 7]), start), Limit::Pass);
        // 10 a second: one token back after 100 ms.
        assert_eq!(limiter.check(client, start + Duration::from_millis(100)), Limit::Pass);
        assert_ne!(limiter.check(client, start + Duration::from_millis(100)), Limit::Pass);
        // Exempt networks are never limited.
        let exempt = IpAddr::from([192, 0, 2, 200]);
        assert!((0..100).all(|_| limiter.check(exempt, start) == Limit::Pass));
    }

    #[test]
    fn ipv6_clients_share_their_56() {
        let limiter = limiter(1, 1, 0);
        let now = Instant::now();
        let a: IpAddr = "2001:db8:0:100::1".parse().unwrap();
        let b: IpAddr = "2001:db8:0:1ff::2".parse().unwrap();
        let other: IpAddr = "2001:db8:0:200::1".parse().unwrap();
        assert_eq!(limiter.check(a, now), Limit::Pass);
        assert_eq!(limiter.check(b, now), Limit::Drop, "same /56");
        assert_eq!(limiter.check(other, now), Limit::Pass);
    }
}
