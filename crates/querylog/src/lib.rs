//! shieldns-querylog: the query log (off by default).
//!
//! The resolver hands one [`QueryEvent`] per answered query to a bounded
//! queue ([`QueryLog::submit`]) and returns at once; a writer thread drains
//! it and writes JSON lines (one file per UTC day, older files removed
//! after `retention`) or dnstap over a Frame Streams socket (unix or TCP),
//! so existing collectors can read it. When the queue is full the event is
//! dropped and counted, so a slow disk or collector can never slow
//! answering.
//!
//! Key design decision: client addresses are anonymized by the writer,
//! before anything is written, never on the hot path: truncated to /24
//! (IPv4) and /48 (IPv6) by default, or replaced by a keyed hash whose key
//! is random per start (so hashes cannot be joined across restarts or with
//! another operator's logs).

mod dnstap;
mod writer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use serde::Deserialize;
use tracing::info;

pub use writer::anonymize;

/// Why the query log could not start.
#[derive(Debug, thiserror::Error)]
pub enum QueryLogError {
    /// A `[query_log]` key has a value the log cannot use.
    #[error("query_log.{key}: {reason}")]
    Config {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// The JSON directory cannot be created.
    #[error("query_log.dir: cannot create {}: {cause}", dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The writer thread cannot be started.
    #[error("cannot start the query-log writer: {0}")]
    Thread(std::io::Error),
}

/// `[query_log]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueryLogConfig {
    /// Off by default: a resolver for children logs nothing unless asked.
    #[serde(default)]
    pub enabled: bool,
    /// `json` (files in `dir`) or `dnstap` (to `dnstap`).
    #[serde(default)]
    pub format: LogFormat,
    /// Log blocked answers only.
    #[serde(default)]
    pub blocked_only: bool,
    /// `truncate` (/24, /48), `hash` (keyed, key random per start) or `off`.
    #[serde(default)]
    pub anonymize: Anonymize,
    /// Directory of the JSON files (relative: against the config file).
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// JSON files older than this are deleted.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// dnstap destination: `unix:/path/to.sock` or `tcp:127.0.0.1:6000`.
    #[serde(default)]
    pub dnstap: Option<String>,
    /// Events waiting for the writer; beyond this they are dropped and
    /// counted (`shieldns_querylog_events_total{result="dropped"}`).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_dir() -> PathBuf {
    PathBuf::from("query-log")
}

fn default_retention() -> Duration {
    Duration::from_secs(30 * 86_400)
}

fn default_queue() -> usize {
    65_536
}

impl Default for QueryLogConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            format: LogFormat::default(),
            blocked_only: false,
            anonymize: Anonymize::default(),
            dir: default_dir(),
            retention: default_retention(),
            dnstap: None,
            queue: default_queue(),
        }
    }
}

/// `query_log.format`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON lines.
    #[default]
    Json,
    /// dnstap over Frame Streams.
    Dnstap,
}

/// `query_log.anonymize`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Anonymize {
    /// IPv4 to /24, IPv6 to /48.
    #[default]
    Truncate,
    /// A keyed SHA-256 of the address (an IPv6-shaped value for dnstap).
    Hash,
    /// The real address (only where the law requires it).
    Off,
}

/// Why a query was answered the way it was, as far as the log needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoggedBlock {
    /// A list block: the list, its category and the EDE code.
    List {
        /// The list name.
        list: Arc<str>,
        /// The list's category, if any.
        category: Option<Arc<str>>,
        /// The RFC 8914 EDE code sent.
        ede: u16,
    },
    /// A policy block (bypass defence, blocked query type, rebinding).
    Policy(&'static str),
}

/// One answered query. The client address is the real one: anonymization
/// is the writer's job, off the hot path.
#[derive(Clone, Debug)]
pub struct QueryEvent {
    /// When the query arrived.
    pub time: SystemTime,
    /// When the response was sent.
    pub response_time: SystemTime,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The address the query arrived on, when known.
    pub server: Option<SocketAddr>,
    /// The transport: `udp`, `tcp`, `dot`, `doh` or `doq`.
    pub protocol: &'static str,
    /// The client ID an encrypted listener saw (DoH path, DoT server name).
    pub client_id: Option<Arc<str>>,
    /// The query name in presentation form, lower case, no trailing dot.
    pub name: String,
    /// The query type code.
    pub qtype: u16,
    /// The query's message id.
    pub id: u16,
    /// The response code sent.
    pub rcode: u16,
    /// The client's profile.
    pub profile: Arc<str>,
    /// Set when the answer was a block.
    pub blocked: Option<LoggedBlock>,
}

/// The counters of `shieldns_querylog_events_total` (registered by the
/// metrics crate), by result.
#[derive(Clone, Debug)]
pub struct Counters {
    /// Events queued for the writer.
    pub queued: IntCounter,
    /// Events dropped because the queue was full.
    pub dropped: IntCounter,
    /// Events the writer wrote.
    pub written: IntCounter,
}

/// The producer side: what the resolver holds to submit events.
#[derive(Clone, Debug)]
pub struct QueryLog {
    sender: SyncSender<QueryEvent>,
    blocked_only: bool,
    counters: Counters,
}

impl QueryLog {
    /// Whether a query with this outcome is logged, so the resolver builds
    /// an event only when one is wanted.
    pub fn wants(&self, blocked: bool) -> bool {
        blocked || !self.blocked_only
    }

    /// Queues an event without waiting; a full queue drops it (counted).
    pub fn submit(&self, event: QueryEvent) {
        match self.sender.try_send(event) {
            Ok(()) => self.counters.queued.inc(),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.counters.dropped.inc(),
        }
    }

    /// Whether `log` (the resolver's, if the log is on) wants a query with
    /// this outcome.
    pub fn logs(log: Option<&Self>, blocked: bool) -> bool {
        log.is_some_and(|log| log.wants(blocked))
    }
}

/// Starts the writer if the log is on (relative paths against
/// `base_dir`), and returns the handle the resolver submits to.
pub fn start(config: &QueryLogConfig, base_dir: &Path, counters: Counters) -> Result<Option<QueryLog>, QueryLogError> {
    if !config.enabled {
        return Ok(None);
    }
    let sink = match config.format {
        LogFormat::Json => {
            let dir = base_dir.join(&config.dir);
            std::fs::create_dir_all(&dir).map_err(|cause| QueryLogError::Dir {
                dir: dir.clone(),
                cause,
            })?;
            writer::Sink::json(dir, config.retention)
        }
        LogFormat::Dnstap => {
            let Some(target) = config.dnstap.clone() else {
                return Err(QueryLogError::Config {
                    key: "dnstap",
                    reason: "query_log.format = \"dnstap\" needs query_log.dnstap (unix:/path or tcp:host:port)".into(),
                });
            };
            if !(target.starts_with("unix:") || target.starts_with("tcp:")) {
                return Err(QueryLogError::Config {
                    key: "dnstap",
                    reason: format!("{target:?}: expected unix:/path or tcp:host:port"),
                });
            }
            writer::Sink::dnstap(target)
        }
    };
    let (sender, receiver) = sync_channel(config.queue.max(1));
    let writer = writer::Writer::new(sink, config.anonymize, counters.written.clone());
    std::thread::Builder::new()
        .name("query-log".into())
        .spawn(move || writer.run(&receiver))
        .map_err(QueryLogError::Thread)?;
    info!(format = ?config.format, anonymize = ?config.anonymize, "query log on");
    Ok(Some(QueryLog {
        sender,
        blocked_only: config.blocked_only,
        counters,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn counters() -> Counters {
        let counter = |name| IntCounter::new(name, "test").unwrap();
        Counters {
            queued: counter("queued"),
            dropped: counter("dropped"),
            written: counter("written"),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let counters = counters();
        let (sender, receiver) = sync_channel(2);
        let log = QueryLog {
            sender,
            blocked_only: true,
            counters: counters.clone(),
        };
        assert!(log.wants(true) && !log.wants(false));
        assert!(!QueryLog::logs(None, true));
        let event = QueryEvent {
            time: SystemTime::now(),
            response_time: SystemTime::now(),
            client: "127.0.0.1:5000".parse().unwrap(),
            server: None,
            protocol: "udp",
            client_id: None,
            name: "a.test".into(),
            qtype: 1,
            id: 7,
            rcode: 3,
            profile: Arc::from("default"),
            blocked: None,
        };
        for _ in 0..5 {
            log.submit(event.clone());
        }
        assert_eq!(receiver.try_iter().count(), 2);
        assert_eq!((counters.queued.get(), counters.dropped.get()), (2, 3));
    }
}
