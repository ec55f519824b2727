//! `shieldns run`: start, reload on SIGHUP, drain and stop on SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context as _;
use shieldns_compliance::Recorder;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::commands::{Builder, build};
use crate::config::{Config, ConfigSource};
use crate::policy::Policy;

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
    let (syncer, first_pass) = shieldns_sync::task::prepare(&config.lists, &config.sync, &source.base_dir()).await?;
    let built = {
        let (config, source) = (config.clone(), source.clone());
        tokio::task::spawn_blocking(move || build(&config, &source, Builder::Daemon))
            .await
            .context("policy build panicked")??
    };
    // Metrics and the compliance store; the first snapshot's metric handles
    // are resolved before anything can load it.
    let metrics = Arc::new(shieldns_metrics::Metrics::new()?);
    let recorder = Arc::new(Recorder::start(&config.storage, &source.base_dir(), metrics.clone())?);
    let policy = Policy::new(built, &config.lists, recorder.clone());
    // The checks of the first pass, which ran before the recorder existed.
    if let Some(report) = &first_pass {
        recorder.sync_checked(report);
    }
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
        policy.snapshot().clone(),
        metrics.clone(),
        query_log,
        policy_clock()?,
    )
    .await?;
    if let Some(address) = config.metrics.listen {
        crate::exporter::spawn(address, config.metrics.allow.clone(), metrics.clone()).await?;
    }
    info!(config = %source.describe(), "shieldns ready");
    let (sync, mut rebuilds) = shieldns_sync::task::spawn(syncer, &config.lists, source.base_dir(), recorder.clone());
    // The latest configuration read: sync rebuilds use its lists.
    let mut policy_config = config.clone();

    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                // New TLS handshakes get the files' certificates; open
                // connections keep theirs.
                if let Err(error) = resolver.reload_certificates() {
                    error!("certificate reload failed, the previous certificate stays in use: {error}");
                }
                if let Some(new) = reload(&source, &config, &policy).await {
                    // SIGHUP also runs a sync pass (see README, `[sync]`).
                    sync.reconfigure(&new.lists, &new.sync, source.base_dir());
                    policy_config = new;
                }
            }
            Some(request) = rebuilds.recv() => {
                crate::sync_wiring::rebuild(request, &source, &policy_config, &policy).await;
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
    if tokio::task::spawn_blocking(move || recorder.stop()).await.is_err() {
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
async fn reload(source: &ConfigSource, running: &Config, policy: &Policy) -> Option<Config> {
    info!(config = %source.describe(), "SIGHUP: reloading configuration and lists");
    let task_source = source.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let config = task_source.load()?;
        let built = build(&config, &task_source, Builder::Daemon);
        anyhow::Ok((config, built))
    })
    .await;
    let recorder = policy.recorder();
    let (config, failure) = match outcome {
        // SIGHUP is the operator's change, applied whole or not at all: a
        // refused list file fails it (at start and on sync rebuilds the
        // refused list's kept version is enforced instead).
        Ok(Ok((config, Ok(built)))) if !built.refused.is_empty() => {
            recorder.lists_refused(&built.refused);
            let why = built
                .refused
                .iter()
                .map(|refused| refused.error.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            (Some(config), Some(why))
        }
        Ok(Ok((config, Ok(built)))) => {
            if config.server != running.server || config.upstream != running.upstream || config.cache != running.cache {
                warn!("[server], [upstream] and [cache] changes take effect only after a restart");
            }
            policy.publish(built, &config.lists);
            (Some(config), None)
        }
        Ok(Ok((config, Err(error)))) => (Some(config), Some(format!("{error:#}"))),
        Ok(Err(error)) => (None, Some(format!("{error:#}"))),
        Err(error) => (None, Some(error.to_string())),
    };
    match failure {
        None => info!("reload complete: new policy in force"),
        Some(why) => {
            error!("reload failed, previous policy stays in force: {why}");
            recorder.reloaded(Err(why));
            return config;
        }
    }
    recorder.reloaded(Ok(()));
    config
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
