//! The daemon's observability wiring: the metrics registry, the compliance
//! store's writer, the query-log writer, the sync task's outcomes (passed
//! in as values: each check counted once), and a poller that turns each
//! list's kept version into gauges and store rows.
//!
//! It is one process-wide value because every policy change, whichever path
//! it takes (SIGHUP or a sync rebuild), ends in `daemon::publish`, which
//! must install the new snapshot's metric handles before the swap without
//! every caller carrying a handle. Sync state is read from the files the
//! sync task writes (`sync.cache_dir/NAME.json`), so this module depends on
//! the sync crate's public status, not on its internals.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;
use sha2::{Digest as _, Sha256};
use shieldns_index::Snapshot;
use shieldns_metrics::{ListStatus, Metrics};
use shieldns_sync::{ListConfig, ListSource};
use tracing::warn;

use crate::config::{Config, ConfigSource};
use crate::store::{Event, StoreHandle};

/// How often list sync state is re-read.
const POLL: Duration = Duration::from_secs(10);

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// The process-wide observability state.
#[derive(Debug)]
pub(crate) struct Telemetry {
    pub(crate) metrics: Arc<Metrics>,
    store: Mutex<Option<StoreHandle>>,
    lists: Mutex<ListTracker>,
}

/// What the poller saw last, per list, to detect changes.
#[derive(Debug, Default)]
struct ListTracker {
    lists: Vec<ListConfig>,
    /// `sync.cache_dir`, where every `url` and `path` list's state is.
    cache_dir: PathBuf,
    /// Rules per list in the policy in force.
    entries: HashMap<String, u64>,
    seen: HashMap<String, Seen>,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Seen {
    version: Option<String>,
}

/// Sets up the metrics, the store and the poller. Once per process.
pub(crate) fn init(config: &Config, source: &ConfigSource) -> anyhow::Result<&'static Telemetry> {
    let metrics = Arc::new(Metrics::new()?);
    let store = match config.storage.database(&source.base_dir()) {
        Some(path) => Some(crate::store::start(
            &path,
            config.storage.flush_interval,
            metrics.clone(),
        )?),
        None => None,
    };
    let telemetry = Telemetry {
        metrics,
        store: Mutex::new(store),
        lists: Mutex::new(ListTracker {
            lists: config.lists.clone(),
            cache_dir: config.sync.resolved_cache_dir(&source.base_dir()),
            ..ListTracker::default()
        }),
    };
    TELEMETRY
        .set(telemetry)
        .map_err(|_| anyhow::anyhow!("telemetry initialised twice"))?;
    get().ok_or_else(|| anyhow::anyhow!("telemetry missing right after initialisation"))
}

/// The process-wide state, once [`init`] ran (never in CLI commands).
pub(crate) fn get() -> Option<&'static Telemetry> {
    TELEMETRY.get()
}

/// Before a snapshot is published: resolve its metric handles, remember its
/// entry counts, record the policy in force.
pub(crate) fn before_publish(snapshot: &Arc<Snapshot>) {
    let Some(telemetry) = get() else { return };
    telemetry.metrics.install(snapshot);
    let mut tracker = telemetry.lists.lock().unwrap_or_else(PoisonError::into_inner);
    tracker.entries = snapshot
        .lists()
        .iter()
        .map(|l| (l.policy.name.clone(), l.counts.rules))
        .collect();
    drop(tracker);
    let profiles: Vec<_> = snapshot
        .profiles()
        .iter()
        .map(|p| json!({"name": p.name, "clients": p.clients.iter().map(ToString::to_string).collect::<Vec<_>>(), "block": p.categories}))
        .collect();
    let lists: Vec<_> = snapshot
        .lists()
        .iter()
        .map(|l| json!({"name": l.policy.name, "category": l.policy.category, "mandatory": l.policy.mandatory, "entries": l.counts.rules}))
        .collect();
    telemetry.send(Event::Policy {
        at: crate::store::now(),
        profiles: serde_json::Value::from(profiles).to_string(),
        lists: serde_json::Value::from(lists).to_string(),
    });
}

/// After a sync pass (the daemon's own, never `lists update`'s): every
/// list checked counts once, as a success or a failure, in the metrics and
/// the compliance store alike, so `lists status`, the counter and the
/// report tell the same story.
pub(crate) fn sync_outcomes(report: &shieldns_sync::PassReport) {
    let Some(telemetry) = get() else { return };
    let at = crate::store::now();
    for outcome in &report.outcomes {
        let reason = match &outcome.outcome {
            shieldns_sync::Outcome::Failed { reason, .. } => Some(reason.as_str()),
            _ => None,
        };
        telemetry.sync_event(at, &outcome.list, outcome.mandatory, reason);
    }
}

/// `path` list files a build refused: each counts as a failed check.
pub(crate) fn lists_refused(refused: &[shieldns_sync::Refused]) {
    let Some(telemetry) = get() else { return };
    let at = crate::store::now();
    for refused in refused {
        telemetry.sync_event(at, &refused.list, refused.mandatory, Some(&refused.error.to_string()));
    }
}

/// After a SIGHUP reload: count it, record it, adopt the new list set.
pub(crate) fn reloaded(result: Result<&Config, String>, source: &ConfigSource) {
    let Some(telemetry) = get() else { return };
    telemetry.metrics.reload(result.is_ok());
    telemetry.send(Event::Reload {
        at: crate::store::now(),
        ok: result.is_ok(),
        detail: result.as_ref().err().cloned().unwrap_or_default(),
    });
    if let Ok(config) = result {
        let mut tracker = telemetry.lists.lock().unwrap_or_else(PoisonError::into_inner);
        tracker.lists = config.lists.clone();
        tracker.cache_dir = config.sync.resolved_cache_dir(&source.base_dir());
    }
}

impl Telemetry {
    /// One list check: `reason` is `None` for a success.
    fn sync_event(&self, at: i64, list: &str, mandatory: bool, reason: Option<&str>) {
        if let Some(reason) = reason {
            self.metrics.sync_failure(list, classify(reason));
        }
        self.send(Event::Sync {
            at,
            list: list.to_owned(),
            mandatory,
            ok: reason.is_none(),
            reason: reason.unwrap_or_default().to_owned(),
        });
    }

    fn send(&self, event: Event) {
        if let Some(store) = &*self.store.lock().unwrap_or_else(PoisonError::into_inner) {
            store.send(event);
        }
    }

    /// Final flush and stop record (blocking).
    pub(crate) fn stop(&self) {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(store) = store {
            store.stop();
        }
    }

    /// Starts the sync-state poller (first pass at once).
    pub(crate) fn spawn_poller(&'static self) {
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(POLL);
            // After a suspend or a clock jump, one poll, not a burst of the
            // missed ones.
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                match tokio::task::spawn_blocking(move || self.poll()).await {
                    Ok(()) => {}
                    // The runtime is shutting down: nothing to report.
                    Err(error) if error.is_cancelled() => return,
                    Err(_) => warn!("list status poll panicked; polling again in {} s", POLL.as_secs()),
                }
            }
        });
    }

    /// Reads every list's version and sync state (file I/O: blocking).
    fn poll(&self) {
        let (lists, cache_dir, entries, mut seen) = {
            let tracker = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
            (
                tracker.lists.clone(),
                tracker.cache_dir.clone(),
                tracker.entries.clone(),
                tracker.seen.clone(),
            )
        };
        let now = crate::store::now();
        let mut statuses = Vec::with_capacity(lists.len());
        for list in &lists {
            let previous = seen.remove(&list.name);
            let first_sight = previous.is_none();
            let previous = previous.unwrap_or_default();
            let mut current = Seen::default();
            let mut status = ListStatus {
                name: list.name.clone(),
                mandatory: list.mandatory,
                ..ListStatus::default()
            };
            let entries = entries.get(&list.name).copied().unwrap_or(0);
            let mut version = None;
            let kept_in = match &list.source {
                ListSource::Remote(remote) => {
                    status.refresh = Some(remote.refresh);
                    remote.cache_dir.as_deref()
                }
                // A `path` list's accepted versions are kept like downloads.
                ListSource::File(_) => Some(cache_dir.as_path()),
                ListSource::Builtin(_) => None,
            };
            match &list.source {
                ListSource::Remote(_) | ListSource::File(_) => {
                    let state =
                        kept_in.and_then(|dir| shieldns_sync::cache::load_state(dir, &list.name).ok().flatten());
                    if let Some(state) = state {
                        status.consecutive_failures = state.consecutive_failures;
                        status.last_success = state.last_success.as_deref().and_then(parse_time);
                        if let Some(cached) = &state.current {
                            status.version_time = parse_time(&cached.fetched_at);
                            version = Some((
                                state.version().unwrap_or_else(|| cached.serial.to_string()),
                                cached.sha256.clone(),
                            ));
                        }
                    }
                }
                ListSource::Builtin(name) => {
                    if first_sight {
                        // Built-in lists change only with the binary: the
                        // version is the binary's, the digest the bytes'.
                        let digest = shieldns_sync::builtin_list(name)
                            .map(|bytes| hex::encode(Sha256::digest(bytes)))
                            .unwrap_or_else(|| format!("{}{name}", shieldns_sync::BUILTIN_PREFIX));
                        version = Some((env!("CARGO_PKG_VERSION").to_owned(), digest));
                    } else {
                        current.version.clone_from(&previous.version);
                    }
                }
            }
            if let Some((version, sha256)) = version {
                current.version = Some(sha256.clone());
                if current.version != previous.version {
                    self.send(Event::ListVersion {
                        at: now,
                        list: list.name.clone(),
                        mandatory: list.mandatory,
                        version,
                        sha256,
                        entries,
                        version_time: status.version_time.map(|t| t as i64),
                    });
                }
            }
            seen.insert(list.name.clone(), current);
            statuses.push(status);
        }
        self.metrics.set_lists(statuses);
        self.lists.lock().unwrap_or_else(PoisonError::into_inner).seen = seen;
    }
}

/// RFC 3339 → Unix seconds.
fn parse_time(text: &str) -> Option<f64> {
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
}

/// A bounded reason class for a sync failure message (the label of
/// `shieldns_sync_failures_total`); the message itself is in the log and
/// `shieldns lists status`.
pub(crate) fn classify(reason: &str) -> &'static str {
    let reason = reason.to_ascii_lowercase();
    let classes: [(&str, &[&str]); 8] = [
        ("timeout", &["timed out"]),
        ("too_large", &["larger than max_bytes"]),
        ("sha256", &["sha256 mismatch"]),
        ("signature", &["minisign", "signature"]),
        ("shrink", &["would shrink"]),
        ("no_entries", &["no valid"]),
        ("http_status", &["http "]),
        ("transport", &["download from", "connect", "dns", "tls"]),
    ];
    classes
        .iter()
        .find(|(_, needles)| needles.iter().any(|n| reason.contains(n)))
        .map_or("other", |(class, _)| class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sync_failures_into_bounded_reasons() {
        assert_eq!(
            classify("list `a`: HTTP 503 Service Unavailable from https://x"),
            "http_status"
        );
        assert_eq!(
            classify("list `a`: download from https://x timed out (sync.timeout 30s)"),
            "timeout"
        );
        assert_eq!(classify("list `a`: sha256 mismatch: expected 1, got 2"), "sha256");
        assert_eq!(classify("list `a`: update refused: it would shrink the list"), "shrink");
        assert_eq!(
            classify("list `a`: download from https://x failed: connection refused"),
            "transport"
        );
        assert_eq!(classify("something new"), "other");
    }
}
