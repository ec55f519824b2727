//! A UDP thread's answer counts, added to the shared metrics in bulk.
//!
//! Key design decision: a busy thread counts its answers in a private
//! tally and flushes it at most every millisecond (and at each receive
//! timeout), so the shared counters see one atomic add per series per
//! flush instead of several per answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shieldns_index::Snapshot;
use shieldns_metrics::{AnswerTally, Metrics};

use crate::fastpath::Answered;

/// How often a busy UDP thread adds its answers to the shared metrics. A
/// batch after a quiet spell is flushed at once, and an idle thread flushes
/// at its receive timeout, so a scrape lags the answers by at most this
/// under load and by [`crate::udp::STOP_CHECK`] after a burst.
const TALLY_FLUSH: Duration = Duration::from_millis(1);

/// A UDP thread's unflushed answers and the snapshot they were decided
/// under (held until the flush, so its profile and list positions still
/// name the right series after a reload).
pub(crate) struct Tally {
    answers: AnswerTally,
    snapshot: Option<Arc<Snapshot>>,
    flushed_at: Instant,
}

impl Tally {
    pub(crate) fn new(metrics: &Metrics) -> Self {
        Self {
            answers: metrics.answer_tally(),
            snapshot: None,
            flushed_at: Instant::now(),
        }
    }

    /// Counts the answers a batch sent (`counts`, and the first
    /// `counts.len()` of `answers`: decided under `snapshot`, received at
    /// `received_at`), flushing first when they belong to a newer
    /// snapshot than the tally's and after them when [`TALLY_FLUSH`] has
    /// passed since the last flush.
    pub(crate) fn count_batch(
        &mut self,
        metrics: &Metrics,
        snapshot: &Arc<Snapshot>,
        counts: &[Answered],
        answers: &[(Vec<u8>, SocketAddr)],
        received_at: Instant,
    ) {
        if counts.is_empty() {
            return;
        }
        let elapsed = received_at.elapsed();
        // The tally names profiles and lists by their positions in one
        // snapshot: answers decided under a newer one start a new tally.
        if self
            .snapshot
            .as_ref()
            .is_some_and(|held| held.generation() != snapshot.generation())
        {
            self.flush(metrics, received_at);
        }
        for (count, (bytes, _)) in counts.iter().zip(answers) {
            let rcode = u16::from(bytes.get(3).map_or(0, |b| b & 0x0f));
            self.answers.add(count.profile, count.block, rcode);
        }
        self.answers.took(elapsed, counts.len());
        if self.snapshot.is_none() {
            self.snapshot = Some(Arc::clone(snapshot));
        }
        if received_at.saturating_duration_since(self.flushed_at) >= TALLY_FLUSH {
            self.flush(metrics, received_at);
        }
    }

    pub(crate) fn flush(&mut self, metrics: &Metrics, now: Instant) {
        if let Some(snapshot) = self.snapshot.take() {
            metrics.flush_answers(&snapshot, &mut self.answers);
        }
        self.flushed_at = now;
    }
}
