//! The daemon's background sync task: checks each `url` list when it is
//! due (or at once after SIGHUP) and asks for a rebuild when a pass brings
//! a new version.
//!
//! Key design decision: the task downloads and verifies lists into the
//! cache; it never builds or publishes a snapshot. The main loop answers
//! its [`RebuildRequest`] on the same path as SIGHUP (a complete build off
//! the hot path, then one swap), so all builds and swaps happen in one
//! place, one at a time, from the latest configuration read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::{ListConfig, ListState, NoProgress, Outcome, PassReport, SyncConfig, SyncError, Syncer};

/// Told of every pass the task runs (the daemon's compliance recorder).
pub trait PassObserver: Send + Sync + std::fmt::Debug {
    /// Each list checked in `report` counts once.
    fn checked(&self, report: &PassReport);
}

/// The lists with a `url`, which sync checks.
pub fn url_lists(lists: &[ListConfig]) -> Vec<&ListConfig> {
    lists.iter().filter(|l| l.remote().is_some()).collect()
}

/// Before the first build: reads the cache's state and downloads every `url`
/// list that has no verified copy yet, so a first start can serve. Lists
/// with a copy are not fetched here: they are enforced from the cache at
/// once and refreshed in the background.
pub async fn prepare(
    lists: &[ListConfig],
    sync: &SyncConfig,
    base_dir: &Path,
) -> Result<(Option<Syncer>, Option<PassReport>), SyncError> {
    if url_lists(lists).is_empty() {
        return Ok((None, None));
    }
    let mut syncer = Syncer::new(sync, base_dir)?;
    for error in syncer.load(lists) {
        warn!("{error}");
    }
    let missing: Vec<&ListConfig> = url_lists(lists)
        .into_iter()
        .filter(|l| !syncer.has_copy(&l.name))
        .collect();
    if !missing.is_empty() {
        info!(
            lists = missing.len(),
            "downloading lists that have no verified copy yet"
        );
        let report = syncer.update(&missing, &[], &NoProgress).await;
        log_report(&report, &syncer);
        return Ok((Some(syncer), Some(report)));
    }
    Ok((Some(syncer), None))
}

fn log_report(report: &PassReport, syncer: &Syncer) {
    for outcome in &report.outcomes {
        let line = result_line(&outcome.list, &outcome.outcome, syncer.state(&outcome.list));
        if matches!(outcome.outcome, Outcome::Failed { .. }) {
            warn!("sync: {line}");
        } else {
            info!("sync: {line}");
        }
    }
}

/// Messages from the main loop to the sync task.
#[derive(Debug)]
enum Command {
    /// SIGHUP: adopt the newly read configuration and run a pass now.
    Reconfigure {
        lists: Vec<ListConfig>,
        sync: SyncConfig,
        base_dir: PathBuf,
    },
}

/// A request from the sync task to rebuild; the main loop answers whether
/// the new policy is in force.
#[derive(Debug)]
pub struct RebuildRequest(oneshot::Sender<bool>);

impl RebuildRequest {
    /// Tells the task whether the new policy is in force.
    pub fn answer(self, in_force: bool) {
        // The task may have stopped waiting (shutdown); nothing to tell.
        let _ = self.0.send(in_force);
    }
}

/// The main loop's handle on the sync task.
#[derive(Debug)]
pub struct SyncHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl SyncHandle {
    /// After SIGHUP: the task adopts the new lists and `[sync]` settings
    /// and runs a pass at once.
    pub fn reconfigure(&self, lists: &[ListConfig], sync: &SyncConfig, base_dir: PathBuf) {
        let command = Command::Reconfigure {
            lists: lists.to_vec(),
            sync: sync.clone(),
            base_dir,
        };
        if self.commands.send(command).is_err() {
            error!("the sync task has stopped; lists are no longer refreshed");
        }
    }
}

/// Starts the background sync task for `lists` (relative paths against
/// `base_dir`). It owns the syncer and tells `observer` every pass; the
/// returned receiver yields its rebuild requests.
pub fn spawn(
    syncer: Option<Syncer>,
    lists: &[ListConfig],
    base_dir: PathBuf,
    observer: Arc<dyn PassObserver>,
) -> (SyncHandle, mpsc::Receiver<RebuildRequest>) {
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (rebuild_tx, rebuild_rx) = mpsc::channel(1);
    let task = SyncTask {
        syncer,
        lists: lists.to_vec(),
        base_dir,
        commands: command_rx,
        rebuild: rebuild_tx,
        observer,
    };
    tokio::spawn(task.run());
    (SyncHandle { commands }, rebuild_rx)
}

struct SyncTask {
    /// Told of every pass.
    observer: Arc<dyn PassObserver>,
    syncer: Option<Syncer>,
    lists: Vec<ListConfig>,
    base_dir: PathBuf,
    commands: mpsc::UnboundedReceiver<Command>,
    rebuild: mpsc::Sender<RebuildRequest>,
}

impl SyncTask {
    async fn run(mut self) {
        loop {
            let wait = self.until_next_due();
            let command = tokio::select! {
                () = sleep_or_forever(wait) => None,
                command = self.commands.recv() => match command {
                    Some(command) => Some(command),
                    None => return,
                },
            };
            let due: Vec<ListConfig> = match command {
                Some(Command::Reconfigure { lists, sync, base_dir }) => {
                    self.reconfigure(lists, &sync, base_dir);
                    url_lists(&self.lists).into_iter().cloned().collect()
                }
                None => {
                    let now = SystemTime::now();
                    let Some(syncer) = &self.syncer else { continue };
                    url_lists(&self.lists)
                        .into_iter()
                        .filter(|l| syncer.next_check(&l.name) <= now)
                        .cloned()
                        .collect()
                }
            };
            self.pass(&due).await;
        }
    }

    /// Time until the earliest scheduled check; `None` with no `url` list.
    fn until_next_due(&self) -> Option<Duration> {
        let syncer = self.syncer.as_ref()?;
        let next = url_lists(&self.lists)
            .iter()
            .map(|l| syncer.next_check(&l.name))
            .min()?;
        Some(next.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
    }

    fn reconfigure(&mut self, lists: Vec<ListConfig>, sync: &SyncConfig, base_dir: PathBuf) {
        let same_settings = self
            .syncer
            .as_ref()
            .is_some_and(|s| s.config() == sync && self.base_dir == base_dir);
        if !same_settings && !url_lists(&lists).is_empty() {
            match Syncer::new(sync, &base_dir) {
                Ok(syncer) => self.syncer = Some(syncer),
                Err(error) => error!("[sync] settings not applied, keeping the previous ones: {error}"),
            }
        }
        if let Some(syncer) = &mut self.syncer {
            for error in syncer.load(&lists) {
                warn!("{error}");
            }
        }
        self.lists = lists;
        self.base_dir = base_dir;
    }

    async fn pass(&mut self, due: &[ListConfig]) {
        let Some(syncer) = &mut self.syncer else { return };
        if due.is_empty() {
            return;
        }
        let due: Vec<&ListConfig> = due.iter().collect();
        // A panic in a pass (a bug, in this code or a dependency) must not
        // end list sync for good: log it, re-read the states from the
        // cache, and pause before the next pass.
        let pass = std::panic::AssertUnwindSafe(syncer.update(&due, &[], &NoProgress));
        let Ok(report) = futures_util::FutureExt::catch_unwind(pass).await else {
            error!("sync pass panicked; the lists in force stay in force, next pass in 60 s");
            for error in syncer.load(&self.lists) {
                warn!("{error}");
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        };
        log_report(&report, syncer);
        self.observer.checked(&report);
        let failed = report
            .outcomes
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Failed { .. }))
            .count();
        let policy = if report.changed() {
            let (reply, answer) = oneshot::channel();
            if self.rebuild.send(RebuildRequest(reply)).await.is_err() {
                return;
            }
            match answer.await {
                Ok(true) => "new policy in force",
                _ => "rebuild failed, previous policy stays in force",
            }
        } else {
            "policy unchanged"
        };
        info!(lists = report.outcomes.len(), failed, "sync pass complete: {policy}");
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// One line per list for `lists update` and the daemon log.
pub fn result_line(list: &str, outcome: &Outcome, state: Option<&ListState>) -> String {
    let current = state.and_then(|s| s.current.as_ref());
    match outcome {
        Outcome::Updated {
            entries,
            previous,
            bytes,
            serial,
        } => format!(
            "{list}: updated: {entries} entries{}, {bytes} bytes, serial {serial}",
            previous.map(|p| format!(" (was {p})")).unwrap_or_default()
        ),
        Outcome::Unchanged => format!(
            "{list}: unchanged{}",
            current
                .map(|c| format!(" ({} entries, serial {})", c.entries, c.serial))
                .unwrap_or_default()
        ),
        Outcome::Failed { reason, kept_previous } => format!(
            "{list}: FAILED: {reason}; {}",
            if *kept_previous {
                "the previous verified copy stays in force"
            } else {
                "no verified copy exists"
            }
        ),
    }
}
