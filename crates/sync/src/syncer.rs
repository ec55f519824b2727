//! A sync pass: for each `url` list, a conditional GET, verification
//! (sha256 pin, minisign), a parse, the shrink guard, and the atomic write
//! of the new last-known-good copy. Any failure leaves the previous copy in
//! force and is recorded in the list's state with its reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::Rng as _;
use sha2::{Digest as _, Sha256};

use crate::cache::{self, CachedVersion, Failure, ListState};
use crate::fetch::{self, Fetched, Request, Validators};
use crate::{ListConfig, RemoteList, SyncConfig, SyncError};

/// A detached minisign signature is a few hundred bytes; this caps what a
/// hostile `signature_url` can make us hold.
const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;

/// The first wait after a failed check; it doubles per consecutive failure
/// and never exceeds the list's `refresh`.
const FAILURE_RETRY: Duration = Duration::from_secs(300);

/// Download progress, for `shieldns lists update`'s progress bar.
pub trait Progress: Send + Sync {
    /// A body starts; `total` is its declared length, if any.
    fn started(&self, _list: &str, _total: Option<u64>) {}
    /// `received` bytes of the body so far.
    fn advanced(&self, _list: &str, _received: u64) {}
    /// The body ended (complete or not).
    fn finished(&self, _list: &str) {}
}

/// No progress display (the daemon).
#[derive(Debug, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// What a check did to one list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new version was verified and is now the cached copy.
    Updated {
        /// Its entries.
        entries: u64,
        /// The previous version's entries, if there was one.
        previous: Option<u64>,
        /// Its bytes.
        bytes: u64,
        /// Its serial.
        serial: u64,
    },
    /// The publisher has nothing new (304, or the same bytes again).
    Unchanged,
    /// The check failed; the previous copy (if any) stays in force.
    Failed {
        /// Why.
        reason: String,
        /// Whether a previous verified copy exists and stays in force.
        kept_previous: bool,
    },
}

/// One list's result in a pass.
#[derive(Clone, Debug)]
pub struct ListOutcome {
    /// The list.
    pub list: String,
    /// Whether the list is mandatory.
    pub mandatory: bool,
    /// What happened.
    pub outcome: Outcome,
    /// The list's state after the check (as `NAME.json` now holds it).
    pub state: ListState,
}

/// The result of a sync pass.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    /// One entry per list checked, in configuration order.
    pub outcomes: Vec<ListOutcome>,
}

impl PassReport {
    /// Whether any list has a new version, so the snapshot must be rebuilt.
    pub fn changed(&self) -> bool {
        self.outcomes
            .iter()
            .any(|o| matches!(o.outcome, Outcome::Updated { .. }))
    }

    /// The mandatory lists whose check failed.
    pub fn mandatory_failures(&self) -> Vec<&str> {
        self.outcomes
            .iter()
            .filter(|o| o.mandatory && matches!(o.outcome, Outcome::Failed { .. }))
            .map(|o| o.list.as_str())
            .collect()
    }
}

/// The download side of list sync: one HTTP client, the cache directory,
/// and every `url` list's state (mirrored in `NAME.json`).
#[derive(Debug)]
pub struct Syncer {
    config: SyncConfig,
    cache_dir: PathBuf,
    client: reqwest::Client,
    states: BTreeMap<String, ListState>,
    next_check: BTreeMap<String, SystemTime>,
}

impl Syncer {
    /// A syncer for `config`, with paths resolved against `base_dir`.
    pub fn new(config: &SyncConfig, base_dir: &Path) -> Result<Self, SyncError> {
        Ok(Self {
            config: config.clone(),
            cache_dir: config.resolved_cache_dir(base_dir),
            client: fetch::client(config, base_dir)?,
            states: BTreeMap::new(),
            next_check: BTreeMap::new(),
        })
    }

    /// The `[sync]` settings in use.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Reads the cached state of every `url` list and schedules its next
    /// check from the last one, so a restart does not re-download at once.
    /// A state file that cannot be read is reported and treated as absent.
    pub fn load(&mut self, lists: &[ListConfig]) -> Vec<SyncError> {
        let mut errors = Vec::new();
        for list in lists {
            let Some(remote) = list.remote() else { continue };
            let state = match cache::load_state(&self.cache_dir, &list.name) {
                Ok(state) => state,
                Err(error) => {
                    errors.push(error);
                    None
                }
            };
            let state = state.unwrap_or_else(|| ListState {
                list: list.name.clone(),
                url: remote.url.to_string(),
                ..ListState::default()
            });
            let last_check = state
                .last_check
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339(t).ok());
            let next = match last_check {
                // A list without a copy, or whose URL changed, is due now.
                Some(at) if state.current.is_some() && state.url == remote.url.as_str() => {
                    self.schedule_after(at, remote, state.consecutive_failures)
                }
                _ => SystemTime::now(),
            };
            self.next_check.insert(list.name.clone(), next);
            self.states.insert(list.name.clone(), state);
        }
        errors
    }

    /// A list's state, if it is a `url` list.
    pub fn state(&self, list: &str) -> Option<&ListState> {
        self.states.get(list)
    }

    /// Whether a verified copy of `list` is cached.
    pub fn has_copy(&self, list: &str) -> bool {
        self.states.get(list).is_some_and(|s| s.current.is_some())
    }

    /// When `list` should next be checked (now, if never scheduled).
    pub fn next_check(&self, list: &str) -> SystemTime {
        self.next_check.get(list).copied().unwrap_or_else(SystemTime::now)
    }

    fn schedule_after(&self, at: SystemTime, remote: &RemoteList, failures: u32) -> SystemTime {
        let base = if failures == 0 {
            remote.refresh
        } else {
            FAILURE_RETRY
                .saturating_mul(1 << (failures - 1).min(16))
                .min(remote.refresh)
        };
        let jitter_max = base.mul_f64(f64::from(self.config.jitter) / 100.0);
        let jitter = if jitter_max.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..=jitter_max)
        };
        at + base + jitter
    }

    /// Checks each list in `lists` that has a `url`, one after the other.
    /// `force` names lists whose shrink guard is lifted for this pass.
    pub async fn update(&mut self, lists: &[&ListConfig], force: &[String], progress: &dyn Progress) -> PassReport {
        let mut report = PassReport::default();
        for list in lists {
            let Some(remote) = list.remote() else { continue };
            let forced = force.contains(&list.name);
            let (outcome, state) = self.check(list, remote, forced, progress).await;
            report.outcomes.push(ListOutcome {
                list: list.name.clone(),
                mandatory: list.mandatory,
                outcome,
                state,
            });
        }
        report
    }

    async fn check(
        &mut self,
        list: &ListConfig,
        remote: &RemoteList,
        forced: bool,
        progress: &dyn Progress,
    ) -> (Outcome, ListState) {
        let mut state = self.states.remove(&list.name).unwrap_or_else(|| ListState {
            list: list.name.clone(),
            ..ListState::default()
        });
        if state.url != remote.url.as_str() {
            // A new URL is a new publisher: its validators mean nothing.
            state.url = remote.url.to_string();
            if let Some(current) = &mut state.current {
                current.etag = None;
                current.last_modified = None;
            }
        }
        let started = SystemTime::now();
        state.last_check = Some(cache::now());
        let result = self.fetch_and_accept(list, remote, &state, forced, progress).await;
        let outcome = match result {
            Ok(Accepted::NotModified) => Outcome::Unchanged,
            Ok(Accepted::Same { etag, last_modified }) => {
                if let Some(current) = &mut state.current {
                    current.etag = etag;
                    current.last_modified = last_modified;
                }
                Outcome::Unchanged
            }
            Ok(Accepted::New(version)) => {
                let previous = state.current.as_ref().map(|c| c.entries);
                let outcome = Outcome::Updated {
                    entries: version.entries,
                    previous,
                    bytes: version.bytes,
                    serial: version.serial,
                };
                state.current = Some(version);
                outcome
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::warn!(list = %list.name, "list check failed, previous copy stays in force: {reason}");
                state.last_failure = Some(Failure {
                    at: cache::now(),
                    reason: reason.clone(),
                });
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                Outcome::Failed {
                    reason,
                    kept_previous: state.current.is_some(),
                }
            }
        };
        if !matches!(outcome, Outcome::Failed { .. }) {
            state.last_success = state.last_check.clone();
            state.consecutive_failures = 0;
        }
        // The state file commits a new version (see `cache`); only then are
        // older versions deleted.
        match cache::store_state(&self.cache_dir, &state) {
            Ok(()) => {
                if let Some(current) = &state.current {
                    cache::remove_stale(&self.cache_dir, &list.name, current);
                }
            }
            Err(error) => tracing::error!(list = %list.name, "cannot record the list's state: {error}"),
        }
        let next = self.schedule_after(started, remote, state.consecutive_failures);
        self.next_check.insert(list.name.clone(), next);
        self.states.insert(list.name.clone(), state.clone());
        (outcome, state)
    }

    async fn fetch_and_accept(
        &self,
        list: &ListConfig,
        remote: &RemoteList,
        state: &ListState,
        forced: bool,
        progress: &dyn Progress,
    ) -> Result<Accepted, SyncError> {
        // Only ask "has it changed?" when the copy it would keep exists.
        let current = state
            .current
            .as_ref()
            .filter(|c| self.cache_dir.join(&c.file).is_file());
        let validators = current.map(|c| Validators {
            etag: c.etag.clone(),
            last_modified: c.last_modified.clone(),
        });
        let request = Request {
            list: &list.name,
            url: &remote.url,
            max_bytes: list.max_bytes,
            validators: validators.as_ref(),
            progress,
        };
        let fetched = match &remote.transfer {
            Some(transfer) => {
                // The zone in force, for IXFR: its SOA serial and text.
                let zone = match current.and_then(|c| c.soa_serial.map(|serial| (serial, &c.file))) {
                    Some((serial, file)) => tokio::fs::read(self.cache_dir.join(file))
                        .await
                        .ok()
                        .map(|text| (serial, text)),
                    None => None,
                };
                crate::xfr::get(
                    &self.config,
                    &list.name,
                    remote.url.as_str(),
                    transfer,
                    list.max_bytes,
                    zone,
                )
                .await?
            }
            None => fetch::get(&self.client, &self.config, &request).await?,
        };
        let (body, etag, last_modified, soa_serial) = match fetched {
            Fetched::NotModified => return Ok(Accepted::NotModified),
            Fetched::Body {
                bytes,
                etag,
                last_modified,
                soa_serial,
            } => (bytes, etag, last_modified, soa_serial),
        };
        let signature = match &remote.minisign {
            Some(_) => {
                let request = Request {
                    list: &list.name,
                    url: &remote.signature_url,
                    max_bytes: MAX_SIGNATURE_BYTES,
                    validators: None,
                    progress: &NoProgress,
                };
                match fetch::get(&self.client, &self.config, &request).await? {
                    Fetched::Body { bytes, .. } => Some(bytes),
                    // Without validators a 304 is not expected; treat it as
                    // no signature at all.
                    Fetched::NotModified => None,
                }
            }
            None => None,
        };
        let job = AcceptJob {
            list: list.clone(),
            remote: remote.clone(),
            body,
            signature,
            etag,
            last_modified,
            soa_serial,
            previous: current.cloned(),
            forced,
            cache_dir: self.cache_dir.clone(),
        };
        // Hashing, signature checking and parsing are CPU work on up to
        // `max_bytes`: keep them off the async workers.
        tokio::task::spawn_blocking(move || job.run())
            .await
            .map_err(|e| SyncError::Verify {
                list: list.name.clone(),
                reason: format!("verification task failed: {e}"),
            })?
    }
}

/// What verification decided about a download.
#[derive(Debug)]
enum Accepted {
    NotModified,
    /// The same bytes as the current copy (a publisher without validators).
    Same {
        etag: Option<String>,
        last_modified: Option<String>,
    },
    New(CachedVersion),
}

struct AcceptJob {
    list: ListConfig,
    remote: RemoteList,
    body: Vec<u8>,
    signature: Option<Vec<u8>>,
    etag: Option<String>,
    last_modified: Option<String>,
    soa_serial: Option<u32>,
    previous: Option<CachedVersion>,
    forced: bool,
    cache_dir: PathBuf,
}

impl AcceptJob {
    fn run(self) -> Result<Accepted, SyncError> {
        let name = &self.list.name;
        let digest = verify(&self.list, &self.remote, &self.body, self.signature.as_deref())?;
        let digest_hex = hex::encode(digest);
        if self.previous.as_ref().is_some_and(|p| p.sha256 == digest_hex) {
            return Ok(Accepted::Same {
                etag: self.etag,
                last_modified: self.last_modified,
            });
        }
        let entries = count_entries(&self.list, &self.body)?;
        shrink_guard(&self.list, self.previous.as_ref(), entries, self.forced)?;
        let (file, signature_file) = cache::store_version(
            &self.cache_dir,
            name,
            &digest_hex,
            &self.body,
            self.signature.as_deref(),
        )?;
        Ok(Accepted::New(CachedVersion {
            file,
            signature_file,
            sha256: digest_hex,
            etag: self.etag,
            last_modified: self.last_modified,
            fetched_at: cache::now(),
            entries,
            bytes: u64::try_from(self.body.len()).unwrap_or(u64::MAX),
            serial: self.previous.as_ref().map_or(1, |p| p.serial + 1),
            soa_serial: self.soa_serial,
        }))
    }
}

/// Checks a list body against the list's sha256 pin and minisign key;
/// returns its sha256. Used for downloads and again for every read of the
/// cached copy, so a list with a key is never used unverified.
pub(crate) fn verify(
    list: &ListConfig,
    remote: &RemoteList,
    body: &[u8],
    signature: Option<&[u8]>,
) -> Result<[u8; 32], SyncError> {
    let signed = Signed::decode(list, remote, signature)?;
    let mut verifier = Verifier::new(list, remote, signed.as_ref())?;
    verifier.update(body);
    verifier.finish()
}

/// A list's minisign key and the signature of one copy, decoded; `None`
/// from [`Signed::decode`] when the list has no key.
pub(crate) struct Signed {
    key: minisign_verify::PublicKey,
    signature: minisign_verify::Signature,
}

impl Signed {
    pub(crate) fn decode(
        list: &ListConfig,
        remote: &RemoteList,
        signature: Option<&[u8]>,
    ) -> Result<Option<Self>, SyncError> {
        let Some(key) = &remote.minisign else {
            return Ok(None);
        };
        let key = minisign_verify::PublicKey::from_base64(key)
            .map_err(|e| signature_failure(list, remote, format!("bad public key: {e}")))?;
        let signature = signature.ok_or_else(|| signature_failure(list, remote, "no signature".into()))?;
        let text = std::str::from_utf8(signature)
            .map_err(|_| signature_failure(list, remote, "the signature file is not text".into()))?;
        let signature = minisign_verify::Signature::decode(text)
            .map_err(|e| signature_failure(list, remote, format!("unreadable signature: {e}")))?;
        Ok(Some(Self { key, signature }))
    }
}

fn signature_failure(list: &ListConfig, remote: &RemoteList, reason: String) -> SyncError {
    SyncError::Signature {
        list: list.name.clone(),
        url: remote.signature_url.to_string(),
        reason,
    }
}

/// Checks a list body fed piece by piece ([`Verifier::update`]), so a
/// build can parse a big cached copy as it reads it and still use nothing
/// unverified: a copy that fails [`Verifier::finish`] fails the build,
/// and the last good snapshot stays.
pub(crate) struct Verifier<'a> {
    list: &'a ListConfig,
    remote: &'a RemoteList,
    sha256: Sha256,
    signature: Option<minisign_verify::StreamVerifier<'a>>,
}

impl<'a> Verifier<'a> {
    pub(crate) fn new(
        list: &'a ListConfig,
        remote: &'a RemoteList,
        signed: Option<&'a Signed>,
    ) -> Result<Self, SyncError> {
        // Legacy (non-prehashed) signatures are refused: every minisign
        // release since 0.8 signs prehashed.
        let signature = signed
            .map(|signed| signed.key.verify_stream(&signed.signature))
            .transpose()
            .map_err(|e| signature_failure(list, remote, format!("does not verify: {e}")))?;
        Ok(Self {
            list,
            remote,
            sha256: Sha256::new(),
            signature,
        })
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(signature) = &mut self.signature {
            signature.update(bytes);
        }
    }

    /// The body's sha256, once it matches the pin and the signature.
    pub(crate) fn finish(self) -> Result<[u8; 32], SyncError> {
        let digest: [u8; 32] = self.sha256.finalize().into();
        if let Some(pin) = self.remote.sha256
            && pin != digest
        {
            return Err(SyncError::Sha256Mismatch {
                list: self.list.name.clone(),
                expected: hex::encode(pin),
                actual: hex::encode(digest),
            });
        }
        if let Some(mut signature) = self.signature {
            signature
                .finalize()
                .map_err(|e| signature_failure(self.list, self.remote, format!("does not verify: {e}")))?;
        }
        Ok(digest)
    }
}

/// Checks a new version the way a build will (the index's loading rules:
/// empty, nothing valid, mostly malformed, single-label names) and counts
/// its rules. Garbage, an HTML error page or an empty file is refused.
pub(crate) fn count_entries(list: &ListConfig, body: &[u8]) -> Result<u64, SyncError> {
    shieldns_index::check_list(list.policy(), body)
        .map(|info| info.counts.rules)
        .map_err(|error| refused_version(list, &error))
}

/// The error for a new version the loading rules refused.
pub(crate) fn refused_version(list: &ListConfig, error: &shieldns_index::IndexError) -> SyncError {
    // The index names the list too; say it once.
    let reason = error.to_string();
    let prefix = format!("list `{}`: ", list.name);
    SyncError::NoEntries {
        list: list.name.clone(),
        format: list.format.to_string(),
        reason: reason
            .strip_prefix(&prefix)
            .map_or_else(|| reason.clone(), str::to_owned),
    }
}

/// The shrink guard: a new version with more than `max_shrink` % fewer
/// entries than the version in force is refused unless forced (a truncated
/// download or a half-emptied file must not lift protection).
pub(crate) fn shrink_guard(
    list: &ListConfig,
    previous: Option<&CachedVersion>,
    entries: u64,
    forced: bool,
) -> Result<(), SyncError> {
    let Some(previous) = previous else { return Ok(()) };
    let lost = previous.entries.saturating_sub(entries);
    let refused = u128::from(lost) * 100 > u128::from(previous.entries) * u128::from(list.max_shrink);
    if refused && !forced {
        return Err(SyncError::Shrink {
            list: list.name.clone(),
            previous: previous.entries,
            new: entries,
            max_shrink: list.max_shrink,
        });
    }
    Ok(())
}
