//! `shieldns run`: start, reload on SIGHUP, drain and stop on SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::commands::{Builder, build};
use crate::config::{Config, ConfigSource};

pub(crate) fn run(source: ConfigSource) -> anyhow::Result<()> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(serve(source))
}

fn init_logging() {
    // hickory logs two info lines per query; keep it at warn (its own
    // measured cost is ~20 % of throughput at info). hickory-proto warns
    // once per message with a truncated EDNS option, which any client can
    // send at will: our own discard log counts malformed traffic instead.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,hickory_server=warn,hickory_resolver=warn,hickory_proto=error,hickory_net=warn",
        )
    });
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(source: ConfigSource) -> anyhow::Result<()> {
    let config = source.load()?;
    // `url` lists with no verified copy yet are downloaded before the first
    // build; the others are enforced from the cache at once.
    let (syncer, first_pass) = crate::sync_wiring::prepare(&config, &source).await?;
    let built = {
        let (config, source) = (config.clone(), source.clone());
        tokio::task::spawn_blocking(move || build(&config, &source, Builder::Daemon))
            .await
            .context("policy build panicked")??
    };
    log_build(&built);
    // Metrics, the compliance store and the list status poller; the first
    // snapshot's metric handles are resolved before anything can load it.
    let telemetry = crate::telemetry::init(&config, &source)?;
    // What happened before telemetry existed is counted now.
    if let Some(report) = &first_pass {
        crate::telemetry::sync_outcomes(report);
    }
    crate::telemetry::lists_refused(&built.refused);
    let metrics = telemetry.metrics.clone();
    let first = Arc::new(built.snapshot);
    crate::telemetry::before_publish(&first);
    // The one ArcSwap: the resolver loads from it, reloads store into it.
    let snapshot = Arc::new(ArcSwap::new(first));
    let [queued, dropped, written] = metrics.query_log_counters();
    let counters = shieldns_querylog::Counters {
        queued,
        dropped,
        written,
    };
    let query_log = shieldns_querylog::start(&config.query_log, &source.base_dir(), counters)?;
    let mut resolver = shieldns_resolver::start(
        &config.server,
        &config.upstream,
        &config.cache,
        snapshot.clone(),
        metrics.clone(),
        query_log,
        policy_clock()?,
    )
    .await?;
    if let Some(address) = config.metrics.listen {
        crate::exporter::spawn(address, config.metrics.allow.clone(), metrics.clone()).await?;
    }
    telemetry.spawn_poller();
    info!(config = %source.describe(), "shieldns ready");
    let (sync, mut rebuilds) = crate::sync_wiring::spawn(syncer, &config, &source);
    // The latest configuration read: sync rebuilds use its lists.
    let mut policy_config = config.clone();

    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                if let Some(new) = reload(&source, &config, &snapshot).await {
                    // SIGHUP also runs a sync pass (see README, `[sync]`).
                    sync.reconfigure(&new, &source);
                    policy_config = new;
                }
            }
            Some(request) = rebuilds.recv() => {
                crate::sync_wiring::rebuild(request, &source, &policy_config, &snapshot).await;
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            result = resolver.wait() => {
                result?;
                anyhow::bail!("the DNS listeners stopped unexpectedly");
            }
        }
    }
    info!("stopping: finishing in-flight queries");
    resolver.shutdown().await?;
    // Final rollup flush and the stop time (availability in reports).
    if tokio::task::spawn_blocking(move || telemetry.stop()).await.is_err() {
        error!("the compliance store did not record the stop");
    }
    info!("stopped");
    Ok(())
}

/// Re-reads the configuration and every list (`url` lists from their
/// verified cached copies), builds a new snapshot off the hot path and swaps
/// it in with one store. Any failure keeps the running snapshot and logs
/// why. Returns the configuration if it could be read, even when the build
/// failed, so sync can fetch lists it names that are not cached yet.
async fn reload(
    source: &ConfigSource,
    running: &Config,
    snapshot: &Arc<ArcSwap<shieldns_index::Snapshot>>,
) -> Option<Config> {
    info!(config = %source.describe(), "SIGHUP: reloading configuration and lists");
    let task_source = source.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let config = task_source.load()?;
        let built = build(&config, &task_source, Builder::Daemon);
        anyhow::Ok((config, built))
    })
    .await;
    match outcome {
        // SIGHUP is the operator's change, applied whole or not at all: a
        // refused list file fails it (at start and on sync rebuilds the
        // refused list's kept version is enforced instead).
        Ok(Ok((config, Ok(built)))) if !built.refused.is_empty() => {
            crate::telemetry::lists_refused(&built.refused);
            let why = built
                .refused
                .iter()
                .map(|refused| refused.error.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            crate::telemetry::reloaded(Err(why.clone()), source);
            error!("reload failed, previous policy stays in force: {why}");
            Some(config)
        }
        Ok(Ok((config, Ok(built)))) => {
            if config.server != running.server || config.upstream != running.upstream || config.cache != running.cache {
                warn!("[server], [upstream] and [cache] changes take effect only after a restart");
            }
            publish(built, snapshot);
            crate::telemetry::reloaded(Ok(&config), source);
            info!("reload complete: new policy in force");
            Some(config)
        }
        Ok(Ok((config, Err(error)))) => {
            crate::telemetry::reloaded(Err(format!("{error:#}")), source);
            error!("reload failed, previous policy stays in force: {error:#}");
            Some(config)
        }
        Ok(Err(error)) => {
            crate::telemetry::reloaded(Err(format!("{error:#}")), source);
            error!("reload failed, previous policy stays in force: {error:#}");
            None
        }
        Err(error) => {
            crate::telemetry::reloaded(Err(error.to_string()), source);
            error!("reload failed, previous policy stays in force: {error}");
            None
        }
    }
}

/// How long `publish` waits to be the last holder of a replaced snapshot.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Publishes a built snapshot: one swap. Every policy change (SIGHUP, list
/// sync) ends here.
pub(crate) fn publish(built: shieldns_sync::Built, snapshot: &Arc<ArcSwap<shieldns_index::Snapshot>>) {
    log_build(&built);
    crate::telemetry::lists_refused(&built.refused);
    let new = Arc::new(built.snapshot);
    // Metric handles first, so no query sees a snapshot without its table.
    crate::telemetry::before_publish(&new);
    let old = snapshot.swap(new);
    // Free the old index here, not on a query worker that happens to drop
    // the last reference: the UDP threads' snapshot caches let go of it at
    // their next datagram or receive timeout (100 ms), so waiting until
    // this reference is the only one frees it here as soon as possible.
    // Queries still in flight may hold it longer; after the wait, whoever
    // is last frees it.
    tokio::task::spawn_blocking(move || {
        let waited = std::time::Instant::now();
        while Arc::strong_count(&old) > 1 && waited.elapsed() < RELEASE_WAIT {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(old);
    });
}

/// The policy clock (schedules). `SHIELDNS_CLOCK=<RFC 3339 time>` starts it
/// at that time instead of now; the end-to-end tests use it to stand the
/// daemon just before a schedule edge instead of waiting for one.
fn policy_clock() -> anyhow::Result<shieldns_resolver::Clock> {
    match std::env::var("SHIELDNS_CLOCK") {
        Ok(text) => {
            let start: shieldns_index::Timestamp = text
                .parse()
                .with_context(|| format!("SHIELDNS_CLOCK={text}: not an RFC 3339 time"))?;
            warn!(%start, "policy clock set by SHIELDNS_CLOCK");
            Ok(shieldns_resolver::Clock::starting_at(start))
        }
        Err(_) => Ok(shieldns_resolver::Clock::default()),
    }
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
