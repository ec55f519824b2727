//! List sync from the command line (`lists update`, `lists status`) and
//! the main loop's side of the sync task's rebuild requests.

use anyhow::{Context as _, bail};
use serde_json::json;
use shieldns_sync::local::Kept;
use shieldns_sync::task::{RebuildRequest, result_line, url_lists};
use shieldns_sync::{ListConfig, ListSource, ListState, Progress, Syncer};
use tracing::{error, info};

use crate::config::{Config, ConfigSource};
use crate::policy::Policy;

/// Downloads smaller than this get no progress bar.
const PROGRESS_THRESHOLD: u64 = 1024 * 1024;

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
    request.answer(ok);
}
