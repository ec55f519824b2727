//! The daemon's record of what it did: list metrics and compliance store
//! rows from values the daemon passes along.
//!
//! Every policy change (start, SIGHUP, a sync rebuild) ends in
//! [`Recorder::published`] with the build's list loads, so the version in
//! force of each list, its age and its check history come from the build
//! that enforces it; every sync check arrives once in a pass report
//! ([`Recorder::sync_checked`]), and every refused list file once from the
//! build that refused it ([`Recorder::lists_refused`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::UNIX_EPOCH;

use serde_json::json;
use sha2::{Digest as _, Sha256};
use shieldns_index::Snapshot;
use shieldns_metrics::{ListStatus, Metrics};
use shieldns_sync::cache::ListState;
use shieldns_sync::{ListConfig, ListLoad, ListSource, PassReport, Refused};

use crate::ComplianceError;
use crate::store::{self, Event, StorageConfig, StoreHandle};

/// The live list metrics and the compliance store's writer.
#[derive(Debug)]
pub struct Recorder {
    metrics: Arc<Metrics>,
    store: Mutex<Option<StoreHandle>>,
    lists: Mutex<Lists>,
}

/// What the list metrics show, and the version of each list in force.
#[derive(Debug, Default)]
struct Lists {
    /// Per list of the policy in force, in configuration order.
    statuses: Vec<ListStatus>,
    /// The sha256 of each list's version in force, to record a new one
    /// once.
    in_force: HashMap<String, String>,
}

impl Recorder {
    /// Starts the compliance store (when `storage.dir` is set; relative
    /// against `base_dir`), which records the run's start.
    pub fn start(storage: &StorageConfig, base_dir: &Path, metrics: Arc<Metrics>) -> Result<Self, ComplianceError> {
        let store = match storage.database(base_dir) {
            Some(path) => Some(store::start(&path, storage.flush_interval, metrics.clone())?),
            None => None,
        };
        Ok(Self {
            metrics,
            store: Mutex::new(store),
            lists: Mutex::new(Lists::default()),
        })
    }

    /// The metrics the resolver counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Before `snapshot`, built from `lists` (the configuration) with
    /// `loads` (the build's report per list), is published: resolves its metric handles, records
    /// the policy and each list version that comes into force, and sets the
    /// list metrics from the copies the build read.
    pub fn published(&self, snapshot: &Snapshot, loads: &[ListLoad], lists: &[ListConfig]) {
        self.metrics.install(snapshot);
        let now = store::now();
        self.send(Event::Policy {
            at: now,
            profiles: policy_profiles(snapshot),
            lists: policy_lists(snapshot),
        });
        let mut tracked = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        let mut in_force = HashMap::with_capacity(loads.len());
        tracked.statuses = loads
            .iter()
            .zip(lists)
            .map(|(load, list)| {
                let mut status = ListStatus {
                    name: list.name.clone(),
                    mandatory: list.mandatory,
                    refresh: list.remote().map(|remote| remote.refresh),
                    ..ListStatus::default()
                };
                if let Some(state) = &load.state {
                    status_from_state(&mut status, state);
                }
                if let Some((version, sha256)) = version_of(list, load.state.as_ref()) {
                    if tracked.in_force.get(&list.name) != Some(&sha256) {
                        self.send(Event::ListVersion {
                            at: now,
                            list: list.name.clone(),
                            mandatory: list.mandatory,
                            version,
                            sha256: sha256.clone(),
                            entries: load.rules,
                            version_time: status.version_time.map(|t| t as i64),
                        });
                    }
                    in_force.insert(list.name.clone(), sha256);
                }
                status
            })
            .collect();
        tracked.in_force = in_force;
        self.metrics.set_lists(tracked.statuses.clone());
    }

    /// After a sync pass (the daemon's own, never `lists update`'s): every
    /// list checked counts once, as a success or a failure, in the metrics
    /// and the compliance store alike, so `lists status`, the counter and
    /// the report tell the same story.
    pub fn sync_checked(&self, report: &PassReport) {
        let at = store::now();
        let mut tracked = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        for outcome in &report.outcomes {
            let reason = match &outcome.outcome {
                shieldns_sync::Outcome::Failed { reason, .. } => Some(reason.as_str()),
                _ => None,
            };
            self.sync_event(at, &outcome.list, outcome.mandatory, reason);
            // The check's own fields; the version in force changes only
            // when a build publishes it.
            if let Some(status) = tracked.statuses.iter_mut().find(|s| s.name == outcome.list) {
                status.consecutive_failures = outcome.state.consecutive_failures;
                status.last_success = outcome.state.last_success.as_deref().and_then(parse_time);
            }
        }
        self.metrics.set_lists(tracked.statuses.clone());
    }

    /// `path` list files a build refused: each counts as a failed check.
    pub fn lists_refused(&self, refused: &[Refused]) {
        let at = store::now();
        for refused in refused {
            self.sync_event(at, &refused.list, refused.mandatory, Some(&refused.error.to_string()));
        }
    }

    /// After a SIGHUP reload: `Err` says why it failed.
    pub fn reloaded(&self, result: Result<(), String>) {
        self.metrics.reload(result.is_ok());
        self.send(Event::Reload {
            at: store::now(),
            ok: result.is_ok(),
            detail: result.err().unwrap_or_default(),
        });
    }

    /// Final flush and stop record (blocking).
    pub fn stop(&self) {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(store) = store {
            store.stop();
        }
    }

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
}

impl shieldns_sync::task::PassObserver for Recorder {
    fn checked(&self, report: &PassReport) {
        self.sync_checked(report);
    }
}

/// A list's check history and version time, from its sync state.
fn status_from_state(status: &mut ListStatus, state: &ListState) {
    status.consecutive_failures = state.consecutive_failures;
    status.last_success = state.last_success.as_deref().and_then(parse_time);
    status.version_time = state.current.as_ref().and_then(|c| parse_time(&c.fetched_at));
}

/// The version in force (as status shows it) and its sha256: from the
/// kept copy's state, or for a built-in list the binary's version and the
/// bytes' digest. `None` for a file read directly.
fn version_of(list: &ListConfig, state: Option<&ListState>) -> Option<(String, String)> {
    match (&list.source, state) {
        (ListSource::Builtin(name), _) => {
            let bytes = shieldns_sync::builtin_list(name)?;
            Some((env!("CARGO_PKG_VERSION").to_owned(), hex::encode(Sha256::digest(bytes))))
        }
        (_, Some(state)) => {
            let current = state.current.as_ref()?;
            let version = state.version().unwrap_or_else(|| current.serial.to_string());
            Some((version, current.sha256.clone()))
        }
        (_, None) => None,
    }
}

/// The profiles of the policy, as the store keeps them (JSON).
fn policy_profiles(snapshot: &Snapshot) -> String {
    let profiles: Vec<_> = snapshot
        .profiles()
        .iter()
        .map(|p| json!({"name": p.name, "clients": p.clients.iter().map(ToString::to_string).collect::<Vec<_>>(), "block": p.categories}))
        .collect();
    serde_json::Value::from(profiles).to_string()
}

/// The lists of the policy, as the store keeps them (JSON).
fn policy_lists(snapshot: &Snapshot) -> String {
    let lists: Vec<_> = snapshot
        .lists()
        .iter()
        .map(|l| json!({"name": l.policy.name, "category": l.policy.category, "mandatory": l.policy.mandatory, "entries": l.counts.rules}))
        .collect();
    serde_json::Value::from(lists).to_string()
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
fn classify(reason: &str) -> &'static str {
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
