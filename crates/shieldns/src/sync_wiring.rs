//! List sync in the binary: `lists update`, `lists status`, and the
//! daemon's background sync task.
//!
//! The sync task downloads and verifies lists into the cache; it never
//! builds or publishes a snapshot. When a pass brings a new version it asks
//! the main loop to rebuild, and the main loop does so on the same path as
//! SIGHUP (a complete build off the hot path, then one swap). All builds
//! and swaps therefore happen in one place, one at a time, from the latest
//! configuration read.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use serde_json::json;
use shieldns_compliance::Recorder;
use shieldns_sync::local::Kept;
use shieldns_sync::{ListConfig, ListSource, ListState, Outcome, PassReport, Progress, Syncer};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::config::{Config, ConfigSource};
use crate::policy::Policy;

/// Downloads smaller than this get no progress bar.
const PROGRESS_THRESHOLD: u64 = 1024 * 1024;

fn url_lists(lists: &[ListConfig]) -> Vec<&ListConfig> {
    lists.iter().filter(|l| l.remote().is_some()).collect()
}

/// `shieldns lists update [--force NAME]`: one sync pass now.
pub(crate) fn lists_update(source: &ConfigSource, force: &[String]) -> anyhow::Result<()> {
    let config = source.load()?;
    let cache_dir = config.sync.resolved_cache_dir(&source.base_dir());
    for name in force {
        match config.lists.iter().find(|l| &l.name == name) {
            Some(list) if list.remote().is_some() => {}
            Some(list) => match (&list.source, list.resolved_path(&source.base_dir())) {
                // A `path` list the shrink guard refused: accept the file
                // as it is now; the daemon enforces it at its next SIGHUP.
                (ListSource::File(_), Some(path)) => {
                    match shieldns_sync::local::keep(list, &path, &cache_dir, true)
                        .with_context(|| format!("--force {name}: the file is still refused"))?
                    {
                        Kept::Unchanged => outln!("{name}: unchanged: {} is the version in force", path.display()),
                        Kept::Accepted { entries, previous } => outln!(
                            "{name}: accepted: {entries} entries{} from {}; send SIGHUP to enforce it",
                            previous.map(|p| format!(" (was {p})")).unwrap_or_default(),
                            path.display()
                        ),
                    }
                }
                _ => bail!("--force {name}: list `{name}` is built in; it changes only with the binary"),
            },
            None => bail!("--force {name}: no list `{name}` in {}", source.describe()),
        }
    }
    let force: Vec<String> = force
        .iter()
        .filter(|name| config.lists.iter().any(|l| &&l.name == name && l.remote().is_some()))
        .cloned()
        .collect();
    let force = force.as_slice();
    let lists = url_lists(&config.lists);
    if lists.is_empty() {
        outln!("no list in {} has a `url`: nothing to update", source.describe());
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let mut syncer = Syncer::new(&config.sync, &source.base_dir())?;
    for error in syncer.load(&config.lists) {
        eprintln!("warning: {error}");
    }
    let progress = BarProgress::default();
    let report = runtime.block_on(syncer.update(&lists, force, &progress));
    for outcome in &report.outcomes {
        let state = syncer.state(&outcome.list);
        outln!("{}", result_line(&outcome.list, &outcome.outcome, state));
    }
    let failed = report.mandatory_failures();
    if !failed.is_empty() {
        bail!("mandatory list(s) failed to update: {}", failed.join(", "));
    }
    Ok(())
}

/// One line per list for `lists update` and the daemon log.
fn result_line(list: &str, outcome: &Outcome, state: Option<&ListState>) -> String {
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

/// indicatif bars for downloads over [`PROGRESS_THRESHOLD`]; hidden when
/// stderr is not a terminal (indicatif's default).
#[derive(Default)]
struct BarProgress {
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
    total: std::sync::Mutex<Option<u64>>,
}

impl BarProgress {
    fn with_bar(&self, f: impl FnOnce(&mut Option<indicatif::ProgressBar>)) {
        // A poisoned lock only means an earlier progress update panicked;
        // the bar is cosmetic, so carry on with whatever it holds.
        let mut bar = self.bar.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut bar);
    }
}

impl Progress for BarProgress {
    fn started(&self, _list: &str, total: Option<u64>) {
        *self.total.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = total;
    }

    fn advanced(&self, list: &str, received: u64) {
        let total = *self.total.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.with_bar(|bar| {
            if bar.is_none() && (received >= PROGRESS_THRESHOLD || total.is_some_and(|t| t >= PROGRESS_THRESHOLD)) {
                let new = match total {
                    Some(total) => indicatif::ProgressBar::new(total),
                    None => indicatif::ProgressBar::new_spinner(),
                };
                let template = if total.is_some() {
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
                } else {
                    "{prefix} {spinner} {bytes} {bytes_per_sec}"
                };
                if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                    new.set_style(style.progress_chars("=> "));
                }
                new.set_prefix(list.to_owned());
                *bar = Some(new);
            }
            if let Some(bar) = bar {
                bar.set_position(received);
            }
        });
    }

    fn finished(&self, _list: &str) {
        self.with_bar(|bar| {
            if let Some(bar) = bar.take() {
                bar.finish_and_clear();
            }
        });
    }
}

/// `shieldns lists status [--json]`: every list's source and, for `url`
/// and `path` lists, the kept version and the last check, success and
/// failure.
pub(crate) fn lists_status(source: &ConfigSource, as_json: bool) -> anyhow::Result<()> {
    let config = source.load()?;
    let cache_dir = config.sync.resolved_cache_dir(&source.base_dir());
    let mut rows = Vec::new();
    for list in &config.lists {
        // `url` and `path` lists both have a kept version and a state.
        let state = match &list.source {
            ListSource::Builtin(_) => None,
            _ => shieldns_sync::cache::load_state(&cache_dir, &list.name)?,
        };
        rows.push((list, state));
    }
    if as_json {
        let value: Vec<_> = rows
            .iter()
            .map(|(list, state)| {
                let current = state.as_ref().and_then(|s| s.current.as_ref());
                json!({
                    "list": list.name,
                    "kind": kind(list),
                    "source": list.describe_source(),
                    "mandatory": list.mandatory,
                    "version": state.as_ref().and_then(ListState::version),
                    "serial": current.map(|c| c.serial),
                    "etag": current.and_then(|c| c.etag.clone()),
                    "sha256": current.map(|c| c.sha256.clone()),
                    "entries": current.map(|c| c.entries),
                    "bytes": current.map(|c| c.bytes),
                    "fetched_at": current.map(|c| c.fetched_at.clone()),
                    "last_check": state.as_ref().and_then(|s| s.last_check.clone()),
                    "last_success": state.as_ref().and_then(|s| s.last_success.clone()),
                    "last_failure": state.as_ref().and_then(|s| s.last_failure.as_ref()).map(|f| json!({"at": f.at, "reason": f.reason})),
                    "consecutive_failures": state.as_ref().map(|s| s.consecutive_failures),
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(value));
        return Ok(());
    }
    outln!("cache: {}", cache_dir.display());
    for (list, state) in &rows {
        outln!(
            "{}  ({}{}) {}",
            list.name,
            kind(list),
            if list.mandatory { ", mandatory" } else { "" },
            list.describe_source()
        );
        if matches!(list.source, ListSource::Builtin(_)) {
            continue;
        }
        let Some(state) = state else {
            outln!(
                "    {}",
                if list.remote().is_some() {
                    "never synced"
                } else {
                    "never loaded by the daemon"
                }
            );
            continue;
        };
        match &state.current {
            Some(current) => outln!(
                "    version: {}; entries: {}; fetched: {}",
                state.version().unwrap_or_default(),
                current.entries,
                current.fetched_at
            ),
            None => outln!("    no verified copy"),
        }
        outln!(
            "    last check: {}; last success: {}",
            state.last_check.as_deref().unwrap_or("never"),
            state.last_success.as_deref().unwrap_or("never")
        );
        if let Some(failure) = &state.last_failure {
            outln!("    last failure: {}: {}", failure.at, failure.reason);
        }
        if state.consecutive_failures > 0 {
            outln!(
                "    failed checks since the last success: {} (each counted once in shieldns_sync_failures_total and the report)",
                state.consecutive_failures
            );
        }
    }
    Ok(())
}

fn kind(list: &ListConfig) -> &'static str {
    match &list.source {
        ListSource::File(_) => "file",
        ListSource::Builtin(_) => "builtin",
        ListSource::Remote(remote) if remote.transfer.is_some() => "axfr",
        ListSource::Remote(_) => "url",
    }
}

/// Before the first build: reads the cache's state and downloads every `url`
/// list that has no verified copy yet, so a first start can serve. Lists
/// with a copy are not fetched here: they are enforced from the cache at
/// once and refreshed in the background.
pub(crate) async fn prepare(
    config: &Config,
    source: &ConfigSource,
) -> anyhow::Result<(Option<Syncer>, Option<PassReport>)> {
    if url_lists(&config.lists).is_empty() {
        return Ok((None, None));
    }
    let mut syncer = Syncer::new(&config.sync, &source.base_dir())?;
    for error in syncer.load(&config.lists) {
        warn!("{error}");
    }
    let missing: Vec<&ListConfig> = url_lists(&config.lists)
        .into_iter()
        .filter(|l| !syncer.has_copy(&l.name))
        .collect();
    if !missing.is_empty() {
        info!(
            lists = missing.len(),
            "downloading lists that have no verified copy yet"
        );
        let report = syncer.update(&missing, &[], &shieldns_sync::NoProgress).await;
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
        sync: shieldns_sync::SyncConfig,
        base_dir: PathBuf,
    },
}

/// A request from the sync task to rebuild; the main loop answers whether
/// the new policy is in force.
#[derive(Debug)]
pub(crate) struct RebuildRequest(oneshot::Sender<bool>);

/// The main loop's handle on the sync task.
#[derive(Debug)]
pub(crate) struct SyncHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl SyncHandle {
    /// After SIGHUP: the task adopts `config` and runs a pass at once.
    pub(crate) fn reconfigure(&self, config: &Config, source: &ConfigSource) {
        let command = Command::Reconfigure {
            lists: config.lists.clone(),
            sync: config.sync.clone(),
            base_dir: source.base_dir(),
        };
        if self.commands.send(command).is_err() {
            error!("the sync task has stopped; lists are no longer refreshed");
        }
    }
}

/// Starts the background sync task. It owns the syncer; the returned
/// receiver yields its rebuild requests.
pub(crate) fn spawn(
    syncer: Option<Syncer>,
    config: &Config,
    source: &ConfigSource,
    recorder: Arc<Recorder>,
) -> (SyncHandle, mpsc::Receiver<RebuildRequest>) {
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (rebuild_tx, rebuild_rx) = mpsc::channel(1);
    let task = SyncTask {
        syncer,
        lists: config.lists.clone(),
        base_dir: source.base_dir(),
        commands: command_rx,
        rebuild: rebuild_tx,
        recorder,
    };
    tokio::spawn(task.run());
    (SyncHandle { commands }, rebuild_rx)
}

struct SyncTask {
    /// Where each pass's checks are recorded.
    recorder: Arc<Recorder>,
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

    fn reconfigure(&mut self, lists: Vec<ListConfig>, sync: &shieldns_sync::SyncConfig, base_dir: PathBuf) {
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
        let pass = std::panic::AssertUnwindSafe(syncer.update(&due, &[], &shieldns_sync::NoProgress));
        let Ok(report) = futures_util::FutureExt::catch_unwind(pass).await else {
            error!("sync pass panicked; the lists in force stay in force, next pass in 60 s");
            for error in syncer.load(&self.lists) {
                warn!("{error}");
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        };
        log_report(&report, syncer);
        self.recorder.sync_checked(&report);
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

/// The main loop's side of a rebuild request: the same build as SIGHUP,
/// from the latest configuration, then one swap.
pub(crate) async fn rebuild(request: RebuildRequest, source: &ConfigSource, config: &Config, policy: &Policy) {
    let (config, task_source) = (config.clone(), source.clone());
    let lists = config.lists.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        crate::commands::build(&config, &task_source, crate::commands::Builder::Daemon)
    })
    .await;
    let ok = match outcome {
        Ok(Ok(built)) => {
            policy.publish(built, &lists);
            info!("sync: new lists verified, new policy in force");
            true
        }
        Ok(Err(error)) => {
            error!("sync: rebuild failed, previous policy stays in force: {error:#}");
            false
        }
        Err(error) => {
            error!("sync: rebuild failed, previous policy stays in force: {error}");
            false
        }
    };
    // The sync task may have stopped waiting (shutdown); nothing to tell.
    let _ = request.0.send(ok);
}
