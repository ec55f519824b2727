//! Traffic given no answer (or only FORMERR): counted in
//! `shieldns_resolver_discarded_total`, and logged at most once per kind per
//! interval with the count since the last line, so that hostile input can
//! neither go unseen nor flood the log.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shieldns_metrics::{Discard, Metrics};
use tracing::warn;

/// One log line per kind per this interval at most.
const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// One kind of event logged at most once per [`LOG_INTERVAL`] with the
/// count since the last line; lock-free, one thread wins each interval's
/// line. Shared with the upstream failure log.
#[derive(Debug, Default)]
pub(crate) struct LogGate {
    /// Events since the last line.
    unlogged: AtomicU64,
    /// When the last line was written, in milliseconds since the owner's
    /// start plus one (0: never).
    logged_at: AtomicU64,
}

impl LogGate {
    /// Counts one event; when this call should write the line, returns the
    /// count to report and "since start" or "in the last minute".
    pub(crate) fn note(&self, started: Instant) -> Option<(u64, &'static str)> {
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.logged_at.load(Ordering::Relaxed);
        let interval = u64::try_from(LOG_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < interval {
            return None;
        }
        self.logged_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        let count = self.unlogged.swap(0, Ordering::Relaxed);
        Some((count, if last == 0 { "since start" } else { "in the last minute" }))
    }

    #[cfg(test)]
    pub(crate) fn unlogged(&self) -> u64 {
        self.unlogged.load(Ordering::Relaxed)
    }
}

/// Counts and logs discards; shared by every transport.
#[derive(Debug)]
pub(crate) struct Discards {
    metrics: Arc<Metrics>,
    started: Instant,
    kinds: [LogGate; Discard::ALL.len()],
}

impl Discards {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            started: Instant::now(),
            kinds: Default::default(),
        }
    }

    /// Counts one discard of `reason` from `source`, and logs the kind's
    /// count when its interval has passed (the first one at once).
    pub(crate) fn note(&self, reason: Discard, source: IpAddr) {
        self.metrics.discarded(reason);
        let Some(kind) = Discard::ALL
            .iter()
            .position(|k| *k == reason)
            .and_then(|i| self.kinds.get(i))
        else {
            return;
        };
        let Some((count, since)) = kind.note(self.started) else {
            return;
        };
        let what = describe(reason);
        warn!(reason = reason.label(), count, latest_source = %source, "{what}: {count} {since} (logged at most once a minute)");
    }
}

fn describe(reason: Discard) -> &'static str {
    match reason {
        Discard::Response => "responses received and not answered",
        Discard::Malformed => "malformed queries",
        Discard::NotAllowed => "unparsable datagrams from sources the access list refuses, dropped",
        Discard::RateLimited => "queries over the rate limit, dropped",
        Discard::TcpNotAllowed => "TCP connections from sources the access list refuses, closed",
        Discard::TcpConnectionLimit => "TCP connections over server.tcp_max_connections, closed",
        Discard::TcpClientLimit => "TCP connections over server.tcp_max_connections_per_client, closed",
        Discard::TlsHandshake => "encrypted connections whose TLS handshake failed or timed out, closed",
        Discard::BadHttpRequest => "DoH requests that were not DNS queries, answered with an HTTP error",
        Discard::UntrustedProxy => "PROXY protocol headers from sources not in server.trusted_proxies, dropped",
        Discard::ListenerConnectionLimit => "encrypted connections over their listener's max_connections, closed",
        Discard::PrefixConnectionLimit => {
            "encrypted connections over their listener's max_connections_per_prefix, closed"
        }
        Discard::HandshakeLimit => "encrypted connections over their listener's max_handshakes, closed",
        Discard::PrefixHandshakeLimit => {
            "encrypted connections over their listener's max_handshakes_per_prefix, closed"
        }
        _ => "discarded queries",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_discard_and_logs_the_first_of_each_kind() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let discards = Discards::new(metrics.clone());
        let source = IpAddr::from([192, 0, 2, 1]);
        for _ in 0..5 {
            discards.note(Discard::Malformed, source);
        }
        discards.note(Discard::Response, source);
        let text = metrics.render().unwrap();
        assert!(
            text.contains("shieldns_resolver_discarded_total{reason=\"malformed\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("shieldns_resolver_discarded_total{reason=\"response\"} 1"),
            "{text}"
        );
        // The first malformed one was logged (its count taken); the next
        // four wait for the interval.
        assert_eq!(discards.kinds[1].unlogged(), 4);
        assert_eq!(discards.kinds[0].unlogged(), 0);
    }
}
