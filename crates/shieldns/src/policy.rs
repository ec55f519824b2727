//! The policy in force: the one `ArcSwap` the resolver loads from, and the
//! one way to change it ([`Policy::publish`]), which records each change.
//!
//! Architecture Invariant: every policy change (start, SIGHUP, a sync
//! rebuild) goes through `publish`, which installs the new snapshot's
//! metric handles before the swap, so no query sees a snapshot without its
//! metrics table.

use std::sync::Arc;

use arc_swap::ArcSwap;
use shieldns_compliance::Recorder;
use shieldns_index::Snapshot;
use shieldns_sync::{Built, ListConfig};
use tracing::{error, info, warn};

/// How long `publish` waits to be the last holder of a replaced snapshot.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The snapshot in force and the recorder of its changes.
#[derive(Debug)]
pub(crate) struct Policy {
    snapshot: Arc<ArcSwap<Snapshot>>,
    recorder: Arc<Recorder>,
}

impl Policy {
    /// The first policy, built from `lists`.
    pub(crate) fn new(built: Built, lists: &[ListConfig], recorder: Arc<Recorder>) -> Self {
        let snapshot = record(built, lists, &recorder);
        Self {
            snapshot: Arc::new(ArcSwap::new(snapshot)),
            recorder,
        }
    }

    /// What the resolver loads from.
    pub(crate) fn snapshot(&self) -> &Arc<ArcSwap<Snapshot>> {
        &self.snapshot
    }

    pub(crate) fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    /// Publishes a snapshot built from `lists`: one swap.
    pub(crate) fn publish(&self, built: Built, lists: &[ListConfig]) {
        let new = record(built, lists, &self.recorder);
        let old = self.snapshot.swap(new);
        // Free the old index here, not on a query worker that happens to
        // drop the last reference: the UDP threads' snapshot caches let go
        // of it at their next datagram or receive timeout (100 ms), so
        // waiting until this reference is the only one frees it here as
        // soon as possible. Queries still in flight may hold it longer;
        // after the wait, whoever is last frees it.
        tokio::task::spawn_blocking(move || {
            let waited = std::time::Instant::now();
            while Arc::strong_count(&old) > 1 && waited.elapsed() < RELEASE_WAIT {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            drop(old);
        });
    }
}

/// Logs a build and records it (refused files, metric handles, versions in
/// force); returns the snapshot, ready to swap in.
fn record(built: Built, lists: &[ListConfig], recorder: &Recorder) -> Arc<Snapshot> {
    log_build(&built);
    recorder.lists_refused(&built.refused);
    let Built {
        snapshot, lists: loads, ..
    } = built;
    recorder.published(&snapshot, &loads, lists);
    Arc::new(snapshot)
}

fn log_build(built: &shieldns_sync::Built) {
    for list in &built.lists {
        info!(list = %list.name, source = %list.source, rules = list.rules, rejected = list.rejected, "list loaded");
        for example in list.rejected_examples.iter().take(3) {
            warn!(list = %list.name, line = example.line, reason = %example.reason, text = %example.text.trim(), "rejected line");
        }
    }
    for refused in &built.refused {
        error!(
            "list file refused, its last accepted version stays in force: {}",
            refused.error
        );
    }
    for warning in built.snapshot.warnings() {
        warn!("{warning}");
    }
    info!(
        rules = built.snapshot.rule_count(),
        index_bytes = built.snapshot.index_bytes(),
        elapsed_ms = u64::try_from(built.elapsed.as_millis()).unwrap_or(u64::MAX),
        "policy built"
    );
}
