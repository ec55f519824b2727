//! The compliance store: an SQLite database (`storage.dir/compliance.db`,
//! WAL) holding what the half-yearly and yearly reports need: hourly
//! rollups of queries and blocks per profile, category and list; list
//! version history; sync results; reloads; the policy in force; and the
//! service's runs (start, last heartbeat, stop) to compute availability.
//!
//! Writes never touch the hot path: queries are not sent here at all. A
//! writer thread reads the cumulative counters every `flush_interval` and
//! adds the difference to the current hour's rows; other events (reloads,
//! versions) arrive through a bounded queue, dropped and counted when full.
//! A crash loses at most one interval, and the last heartbeat bounds the
//! downtime the report charges.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use rusqlite::{Connection, params};
use serde::Deserialize;
use shieldns_metrics::{Metrics, RollupReading};
use tracing::{error, warn};

use crate::ComplianceError;

/// The database file name inside `storage.dir`.
const DB_FILE: &str = "compliance.db";

/// Events queued beyond this are dropped (and counted): the writer keeps up
/// with far more than reloads and sync results ever produce.
const QUEUE: usize = 4096;

/// `[storage]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory of the compliance database; none disables the store (and
    /// `shieldns report`). Relative paths are against the config file.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// How often the counters are folded into the hourly rollups (and the
    /// run's heartbeat written).
    #[serde(default = "default_flush", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// The provider or school named on every compliance report.
    #[serde(default)]
    pub operator: Option<String>,
}

fn default_flush() -> Duration {
    Duration::from_secs(60)
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: None,
            flush_interval: default_flush(),
            operator: None,
        }
    }
}

impl StorageConfig {
    /// The database path, if the store is on.
    pub fn database(&self, base_dir: &Path) -> Option<PathBuf> {
        self.dir.as_ref().map(|dir| base_dir.join(dir).join(DB_FILE))
    }
}

/// Something worth keeping, other than counters.
#[derive(Debug)]
pub(crate) enum Event {
    /// A list version came into force (or was first seen).
    ListVersion {
        at: i64,
        list: String,
        mandatory: bool,
        version: String,
        sha256: String,
        entries: u64,
        version_time: Option<i64>,
    },
    /// A sync check result (`ok` false: `reason` is the class).
    Sync {
        at: i64,
        list: String,
        mandatory: bool,
        ok: bool,
        reason: String,
    },
    /// A SIGHUP reload.
    Reload { at: i64, ok: bool, detail: String },
    /// The policy that came into force: profiles and lists as JSON.
    Policy { at: i64, profiles: String, lists: String },
    /// Final flush, record the stop, end the thread.
    Stop,
}

/// The daemon's handle on the writer thread.
#[derive(Debug)]
pub(crate) struct StoreHandle {
    sender: SyncSender<Event>,
    metrics: Arc<Metrics>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StoreHandle {
    /// Queues an event without waiting.
    pub(crate) fn send(&self, event: Event) {
        match self.sender.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.metrics.store_dropped(),
        }
    }

    /// Final flush and stop record; waits for the writer (blocking: call
    /// from a blocking context at shutdown).
    pub(crate) fn stop(mut self) {
        // The queue may be full; this one must arrive, so wait for room.
        if self.sender.send(Event::Stop).is_ok()
            && let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("compliance store writer panicked at shutdown");
        }
    }
}

/// Opens (creating if needed) the database and its schema.
pub(crate) fn open(path: &Path) -> Result<Connection, ComplianceError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|cause| ComplianceError::Dir {
            dir: dir.to_path_buf(),
            cause,
        })?;
    }
    let connection = Connection::open(path).map_err(|cause| ComplianceError::Store {
        what: format!("cannot open {}", path.display()),
        cause,
    })?;
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS rollup_queries (
                 hour INTEGER NOT NULL, profile TEXT NOT NULL, rcode TEXT NOT NULL, queries INTEGER NOT NULL,
                 PRIMARY KEY (hour, profile, rcode));
             CREATE TABLE IF NOT EXISTS rollup_blocks (
                 hour INTEGER NOT NULL, profile TEXT NOT NULL, list TEXT NOT NULL, category TEXT NOT NULL,
                 blocks INTEGER NOT NULL, PRIMARY KEY (hour, profile, list, category));
             CREATE TABLE IF NOT EXISTS list_versions (
                 at INTEGER NOT NULL, list TEXT NOT NULL, mandatory INTEGER NOT NULL, version TEXT NOT NULL,
                 sha256 TEXT NOT NULL, entries INTEGER NOT NULL, version_time INTEGER);
             CREATE TABLE IF NOT EXISTS sync_events (
                 at INTEGER NOT NULL, list TEXT NOT NULL, mandatory INTEGER NOT NULL, ok INTEGER NOT NULL,
                 reason TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS reloads (at INTEGER NOT NULL, ok INTEGER NOT NULL, detail TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS policies (at INTEGER NOT NULL, profiles TEXT NOT NULL, lists TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS runs (
                 started INTEGER PRIMARY KEY, last_seen INTEGER NOT NULL, stopped INTEGER);",
        )
        .map_err(|cause| ComplianceError::Store {
            what: format!("cannot create the schema in {}", path.display()),
            cause,
        })?;
    // Stores written before every check was recorded once kept one sync
    // event per second and list (`UNIQUE (at, list, ok)`), which merged
    // checks of the same second: drop the constraint, keep the rows.
    let sync_schema: String = connection
        .query_row("SELECT sql FROM sqlite_master WHERE name = 'sync_events'", [], |r| {
            r.get(0)
        })
        .map_err(|cause| ComplianceError::Store {
            what: format!("cannot read the schema in {}", path.display()),
            cause,
        })?;
    if sync_schema.contains("UNIQUE") {
        connection
            .execute_batch(
                "BEGIN;
                 CREATE TABLE sync_events_new (
                     at INTEGER NOT NULL, list TEXT NOT NULL, mandatory INTEGER NOT NULL, ok INTEGER NOT NULL,
                     reason TEXT NOT NULL);
                 INSERT INTO sync_events_new SELECT at, list, mandatory, ok, reason FROM sync_events;
                 DROP TABLE sync_events;
                 ALTER TABLE sync_events_new RENAME TO sync_events;
                 COMMIT;",
            )
            .map_err(|cause| ComplianceError::Store {
                what: format!("cannot migrate sync_events in {}", path.display()),
                cause,
            })?;
    }
    Ok(connection)
}

/// Opens the store and starts its writer thread; records the run's start.
pub(crate) fn start(
    path: &Path,
    flush_interval: Duration,
    metrics: Arc<Metrics>,
) -> Result<StoreHandle, ComplianceError> {
    let connection = open(path)?;
    let started = now();
    connection
        .execute(
            "INSERT OR REPLACE INTO runs (started, last_seen, stopped) VALUES (?1, ?1, NULL)",
            params![started],
        )
        .map_err(|cause| ComplianceError::Store {
            what: "cannot record the start in the compliance store".into(),
            cause,
        })?;
    let (sender, receiver) = sync_channel(QUEUE);
    let writer = Writer {
        connection,
        metrics: metrics.clone(),
        last: RollupReading::default(),
        started,
    };
    let thread = std::thread::Builder::new()
        .name("compliance-store".into())
        .spawn(move || writer.run(&receiver, flush_interval))
        .map_err(ComplianceError::Thread)?;
    Ok(StoreHandle {
        sender,
        metrics,
        thread: Some(thread),
    })
}

struct Writer {
    connection: Connection,
    metrics: Arc<Metrics>,
    /// The counters at the last flush (all zero at process start).
    last: RollupReading,
    started: i64,
}

impl Writer {
    fn run(mut self, receiver: &Receiver<Event>, flush_interval: Duration) {
        loop {
            let event = match receiver.recv_timeout(flush_interval) {
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => None,
                // The daemon dropped the handle without `stop` (a panic):
                // keep what we have, with no stop time (counted as a crash).
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            };
            let result = match event {
                None => {
                    self.flush();
                    Ok(())
                }
                Some(Event::Stop) => {
                    self.flush();
                    if let Err(error) = self.connection.execute(
                        "UPDATE runs SET stopped = ?1, last_seen = ?1 WHERE started = ?2",
                        params![now(), self.started],
                    ) {
                        error!(%error, "compliance store: cannot record the stop");
                    }
                    return;
                }
                Some(event) => self.record(event),
            };
            if let Err(error) = result {
                warn!(%error, "compliance store: write failed");
            }
        }
    }

    fn record(&self, event: Event) -> rusqlite::Result<()> {
        match event {
            Event::ListVersion {
                at,
                list,
                mandatory,
                version,
                sha256,
                entries,
                version_time,
            } => self
                .connection
                .execute(
                    "INSERT INTO list_versions (at, list, mandatory, version, sha256, entries, version_time)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![at, list, mandatory, version, sha256, entries, version_time],
                )
                .map(drop),
            Event::Sync {
                at,
                list,
                mandatory,
                ok,
                reason,
            } => self
                .connection
                .execute(
                    "INSERT INTO sync_events (at, list, mandatory, ok, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![at, list, mandatory, ok, reason],
                )
                .map(drop),
            Event::Reload { at, ok, detail } => self
                .connection
                .execute(
                    "INSERT INTO reloads (at, ok, detail) VALUES (?1, ?2, ?3)",
                    params![at, ok, detail],
                )
                .map(drop),
            Event::Policy { at, profiles, lists } => self
                .connection
                .execute(
                    "INSERT INTO policies (at, profiles, lists) VALUES (?1, ?2, ?3)",
                    params![at, profiles, lists],
                )
                .map(drop),
            Event::Stop => Ok(()),
        }
    }

    /// Adds the counters' growth since the last flush to this hour's rows
    /// and writes the heartbeat, in one transaction.
    fn flush(&mut self) {
        let reading = self.metrics.rollup_reading();
        let at = now();
        let hour = at - at.rem_euclid(3600);
        let result = (|| -> rusqlite::Result<()> {
            let transaction = self.connection.transaction()?;
            {
                let mut queries = transaction.prepare_cached(
                    "INSERT INTO rollup_queries (hour, profile, rcode, queries) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (hour, profile, rcode) DO UPDATE SET queries = queries + excluded.queries",
                )?;
                for ((profile, rcode), value) in &reading.queries {
                    let delta = value.saturating_sub(
                        self.last
                            .queries
                            .get(&(profile.clone(), rcode.clone()))
                            .copied()
                            .unwrap_or(0),
                    );
                    if delta > 0 {
                        queries.execute(params![hour, profile, rcode, delta])?;
                    }
                }
                let mut blocks = transaction.prepare_cached(
                    "INSERT INTO rollup_blocks (hour, profile, list, category, blocks) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (hour, profile, list, category) DO UPDATE SET blocks = blocks + excluded.blocks",
                )?;
                for (key, value) in &reading.blocks {
                    let delta = value.saturating_sub(self.last.blocks.get(key).copied().unwrap_or(0));
                    if delta > 0 {
                        blocks.execute(params![hour, key.0, key.1, key.2, delta])?;
                    }
                }
                transaction.execute(
                    "UPDATE runs SET last_seen = ?1 WHERE started = ?2",
                    params![at, self.started],
                )?;
            }
            transaction.commit()
        })();
        match result {
            Ok(()) => self.last = reading,
            // The reading is not kept, so the next flush retries the delta.
            Err(error) => warn!(%error, "compliance store: rollup flush failed"),
        }
    }
}

/// Now, Unix seconds.
pub(crate) fn now() -> i64 {
    shieldns_index::Timestamp::now().as_second()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_store_keeps_its_sync_events_and_records_every_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE sync_events (
                 at INTEGER NOT NULL, list TEXT NOT NULL, mandatory INTEGER NOT NULL, ok INTEGER NOT NULL,
                 reason TEXT NOT NULL, UNIQUE (at, list, ok));
             INSERT INTO sync_events VALUES (10, 'national', 1, 0, 'HTTP 404');",
        )
        .unwrap();
        drop(old);
        let db = open(&path).unwrap();
        let insert =
            "INSERT INTO sync_events (at, list, mandatory, ok, reason) VALUES (10, 'national', 1, 0, 'timed out')";
        db.execute(insert, []).unwrap();
        let rows: i64 = db
            .query_row("SELECT COUNT(*) FROM sync_events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2, "two checks in the same second are two failures");
        drop(db);
        // Opening again migrates nothing more.
        assert!(open(&path).is_ok());
    }
}
