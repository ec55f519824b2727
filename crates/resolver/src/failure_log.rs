//! Upstream failures in the log: one WARN line per kind per minute at most,
//! with the count since the last line and the latest example, so that an
//! outage of the forwarders or of an authority is seen at once without one
//! line per failed query.
//!
//! Key design decision: lock-free, through `discard`'s `LogGate`: a counter
//! and the time of the last line per kind, one thread wins each line.

use std::time::Instant;

use tracing::warn;

use crate::discard::LogGate;

/// What went wrong upstream, by the EDE it is answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// No authority or forwarder answered usably (EDE 22).
    Unreachable,
    /// DNSSEC validation failed (EDE 6, 9, 10).
    Bogus,
    /// Anything else (EDE 0, with the engine's reason).
    Failed,
    /// Failed, and a stale answer was served instead (EDE 3).
    ServedStale,
}

impl FailureKind {
    const ALL: [Self; 4] = [Self::Unreachable, Self::Bogus, Self::Failed, Self::ServedStale];

    fn describe(self) -> &'static str {
        match self {
            Self::Unreachable => "queries answered SERVFAIL: no reachable authority or forwarder (EDE 22)",
            Self::Bogus => "queries answered SERVFAIL: DNSSEC validation failed",
            Self::Failed => "queries answered SERVFAIL: the upstream engine failed (EDE 0)",
            Self::ServedStale => "queries answered from stale cache: the upstream failed (EDE 3)",
        }
    }
}

/// The handler's failure log.
#[derive(Debug)]
pub(crate) struct FailureLog {
    started: Instant,
    kinds: [LogGate; FailureKind::ALL.len()],
}

impl FailureLog {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            kinds: Default::default(),
        }
    }

    /// Counts one failure, and logs the kind's count with this example when
    /// its interval has passed (the first one at once). Returns whether it
    /// logged.
    pub(crate) fn note(&self, kind: FailureKind, qname: &dyn std::fmt::Display, reason: &str) -> bool {
        let Some(index) = FailureKind::ALL.iter().position(|k| *k == kind) else {
            return false;
        };
        let Some(slot) = self.kinds.get(index) else {
            return false;
        };
        let Some((count, since)) = slot.note(self.started) else {
            return false;
        };
        warn!(
            count,
            latest = %qname,
            "upstream: {count} {} {since}; latest: {reason} (logged at most once a minute)",
            kind.describe()
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_of_each_kind_is_logged_and_the_rest_counted() {
        let log = FailureLog::new();
        assert!(log.note(FailureKind::Unreachable, &"a.example.", "no answer from any forwarder"));
        for _ in 0..9 {
            assert!(!log.note(FailureKind::Unreachable, &"b.example.", "no answer from any forwarder"));
        }
        assert!(log.note(FailureKind::Bogus, &"c.example.", "signature expired"));
        assert_eq!(log.kinds[0].unlogged(), 9);
    }
}
