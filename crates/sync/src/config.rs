//! `[[list]]` and `[sync]`: what a list is read from, and how downloads
//! behave. Validation happens while deserializing, so an error carries the
//! TOML line of the table at fault and names the list and key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shieldns_index::{ListAction, ListFormat, ListPolicy};

use crate::builtin::BUILTIN_PREFIX;

/// Default `refresh`: how often a downloaded list is re-checked.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);
/// Default `max_bytes`: a downloaded list larger than this (after gzip
/// decoding) is refused. 256 MiB holds a 10M-name national list.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Default `max_shrink`, in percent of the previous version's entries.
pub const DEFAULT_MAX_SHRINK: u8 = 50;
/// Default `sync.cache_dir`.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/shieldns/lists";

/// One `[[list]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawListConfig")]
pub struct ListConfig {
    /// Unique name, shown in EDE text, metrics and `explain`.
    pub name: String,
    /// Category profiles block by name; none means every profile.
    pub category: Option<String>,
    /// File format.
    pub format: ListFormat,
    /// Where the list's bytes come from.
    pub source: ListSource,
    /// `block` (default) or `allow`.
    pub action: ListAction,
    /// Enforced for every client, over every allowlist.
    pub mandatory: bool,
    /// Whether the list may hold no rules (a local list kept for later);
    /// never for a mandatory list.
    pub allow_empty: bool,
    /// Whether one-label rules (`zip`, `xxx`) may block whole TLDs.
    pub allow_tld_rules: bool,
    /// `max_bytes`: the size cap of the list (a file, or a download as it
    /// streams in).
    pub max_bytes: u64,
    /// `max_shrink`: the largest loss of entries, in percent of the version
    /// in force, accepted without `--force`.
    pub max_shrink: u8,
}

/// Where a list is read from: exactly one of `path`, `url` and `source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListSource {
    /// A local file, relative to the configuration file's directory.
    File(PathBuf),
    /// A starter list compiled into the binary (`path = "builtin:NAME"`).
    Builtin(String),
    /// A list downloaded by the sync task (`url`, or `source` for a zone
    /// transfer) and used from its cache.
    Remote(Box<RemoteList>),
}

/// The download settings of a `url` (or `source`) list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteList {
    /// `url`: `https://` (or `http://`, for lab use); for a zone transfer,
    /// the `source` (`axfr://host:port/zone`).
    pub url: reqwest::Url,
    /// Set for `source = "axfr://…"`: the zone transfer to run instead of a
    /// GET.
    pub transfer: Option<Transfer>,
    /// `refresh`: the interval between checks.
    pub refresh: Duration,
    /// `sha256`: the pinned digest of the (decoded) list, if any.
    pub sha256: Option<[u8; 32]>,
    /// `minisign`: the publisher's public key (base64), if any.
    pub minisign: Option<String>,
    /// `signature_url`: where the detached signature is; `url` +
    /// `.minisig` unless set. Only meaningful with `minisign`.
    pub signature_url: reqwest::Url,
    /// The verified copies' directory (`sync.cache_dir`, resolved). Set by
    /// [`SyncConfig::attach`] after the whole configuration is read, since
    /// it comes from another table.
    pub cache_dir: Option<PathBuf>,
}

/// An RPZ feed taken by zone transfer (AXFR, then IXFR on SOA serial
/// change), as Unbound and PowerDNS take RPZ feeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The primary server's host (an address or a name).
    pub host: String,
    /// Its port (default 53).
    pub port: u16,
    /// The zone, fully qualified (`rpz.example.`).
    pub zone: String,
    /// `tsig`: the key transfers are signed with.
    pub tsig: Option<TsigKey>,
}

/// A TSIG key, `tsig = "ALGORITHM:NAME:BASE64-SECRET"` (the `dig -y` form).
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    /// `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
    pub algorithm: String,
    /// The key's name, as the server knows it.
    pub name: String,
    /// The shared secret.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    // The secret stays out of logs and error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("algorithm", &self.algorithm)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ListConfig {
    /// The index crate's view of this list.
    pub fn policy(&self) -> ListPolicy {
        ListPolicy {
            name: self.name.clone(),
            category: self.category.clone(),
            format: self.format,
            action: self.action,
            mandatory: self.mandatory,
            allow_empty: self.allow_empty,
            allow_tld_rules: self.allow_tld_rules,
        }
    }

    /// The local file this list is read from, resolved against `base_dir`
    /// (`None` for built-in lists; the current cached copy for url lists,
    /// when one exists).
    pub fn resolved_path(&self, base_dir: &Path) -> Option<PathBuf> {
        match &self.source {
            ListSource::File(path) if path.is_absolute() => Some(path.clone()),
            ListSource::File(path) => Some(base_dir.join(path)),
            ListSource::Builtin(_) => None,
            ListSource::Remote(remote) => {
                let dir = remote.cache_dir.as_deref()?;
                crate::cache::current_file(dir, &self.name)
            }
        }
    }

    /// The download settings, for `url` lists.
    pub fn remote(&self) -> Option<&RemoteList> {
        match &self.source {
            ListSource::Remote(remote) => Some(remote),
            ListSource::File(_) | ListSource::Builtin(_) => None,
        }
    }

    /// Where the list comes from, for status lines.
    pub fn describe_source(&self) -> String {
        match &self.source {
            ListSource::File(path) => path.display().to_string(),
            ListSource::Builtin(name) => format!("{BUILTIN_PREFIX}{name}"),
            ListSource::Remote(remote) => remote.url.to_string(),
        }
    }
}

/// `[[list]]` as written; [`ListConfig`] is built from it after the checks
/// serde cannot express (exactly one source, keys that need `url`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListConfig {
    name: String,
    #[serde(default)]
    category: Option<String>,
    format: ListFormat,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    tsig: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    refresh: Option<Duration>,
    #[serde(default)]
    max_bytes: Option<u64>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    minisign: Option<String>,
    #[serde(default)]
    signature_url: Option<String>,
    #[serde(default)]
    max_shrink: Option<u8>,
    #[serde(default)]
    action: ListAction,
    #[serde(default)]
    mandatory: bool,
    #[serde(default)]
    allow_empty: bool,
    #[serde(default)]
    allow_tld_rules: bool,
}

impl TryFrom<RawListConfig> for ListConfig {
    type Error = String;

    fn try_from(raw: RawListConfig) -> Result<Self, String> {
        let name = raw.name.clone();
        let fail = |reason: String| format!("list `{name}`: {reason}");
        let given: Vec<&str> = [
            ("path", raw.path.is_some()),
            ("url", raw.url.is_some()),
            ("source", raw.source.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(key, _)| *key)
        .collect();
        if given.len() > 1 {
            return Err(fail(format!(
                "give exactly one of `path`, `url` and `source`, not `{}`",
                given.join("` and `")
            )));
        }
        if raw.tsig.is_some() && raw.source.is_none() {
            return Err(fail(
                "`tsig` applies only to lists with a `source` (zone transfer)".into(),
            ));
        }
        let source = match (&raw.path, &raw.url, &raw.source) {
            (None, None, None) => {
                return Err(fail(
                    "needs `path` (a file or builtin:NAME), `url` (https://) or `source` (axfr://)".into(),
                ));
            }
            (None, None, Some(source)) => {
                check_cache_name(&raw.name).map_err(fail)?;
                ListSource::Remote(Box::new(transfer(&raw, source).map_err(fail)?))
            }
            (Some(path), _, _) => {
                let remote_only = [
                    ("refresh", raw.refresh.is_some()),
                    ("sha256", raw.sha256.is_some()),
                    ("minisign", raw.minisign.is_some()),
                    ("signature_url", raw.signature_url.is_some()),
                ];
                if let Some((key, _)) = remote_only.iter().find(|(_, set)| *set) {
                    return Err(fail(format!("`{key}` applies only to lists with a `url`")));
                }
                match path.to_str().and_then(|p| p.strip_prefix(BUILTIN_PREFIX)) {
                    Some(builtin) => ListSource::Builtin(builtin.to_owned()),
                    None => {
                        check_cache_name(&raw.name).map_err(fail)?;
                        ListSource::File(path.clone())
                    }
                }
            }
            (None, Some(url), _) => {
                check_cache_name(&raw.name).map_err(fail)?;
                ListSource::Remote(Box::new(remote(&raw, url).map_err(fail)?))
            }
        };
        if raw.mandatory && raw.allow_empty {
            return Err(fail(
                "`allow_empty` cannot be set on a mandatory list (it is never enforced empty)".into(),
            ));
        }
        let max_shrink = raw.max_shrink.unwrap_or(DEFAULT_MAX_SHRINK);
        if max_shrink > 100 {
            return Err(fail(format!("`max_shrink` is a percentage (0-100), not {max_shrink}")));
        }
        let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if max_bytes == 0 {
            return Err(fail("`max_bytes` must be above 0".into()));
        }
        Ok(Self {
            name: raw.name,
            category: raw.category,
            format: raw.format,
            source,
            action: raw.action,
            mandatory: raw.mandatory,
            allow_empty: raw.allow_empty,
            allow_tld_rules: raw.allow_tld_rules,
            max_bytes,
            max_shrink,
        })
    }
}

/// A `url` or `path` list's name names its files in `sync.cache_dir`
/// (`NAME.json`, `NAME-<hash>.list`), so it must be a plain file name on
/// every system: never a path out of the cache.
fn check_cache_name(name: &str) -> Result<(), String> {
    let safe = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if safe {
        return Ok(());
    }
    Err("a list with a `path` or `url` needs a name of letters, digits, `-`, `_` and `.` (it names its files in sync.cache_dir)".into())
}

/// Checks and converts the download keys of a `url` list.
fn remote(raw: &RawListConfig, url: &str) -> Result<RemoteList, String> {
    let url = parse_url("url", url)?;
    let signature_url = match &raw.signature_url {
        Some(_) if raw.minisign.is_none() => return Err("`signature_url` needs `minisign` (the public key)".into()),
        Some(text) => parse_url("signature_url", text)?,
        None => {
            let text = format!("{url}.minisig");
            parse_url("url", &text)?
        }
    };
    if let Some(key) = &raw.minisign {
        minisign_verify::PublicKey::from_base64(key.trim())
            .map_err(|e| format!("`minisign` is not a minisign public key (the base64 line of the .pub file): {e}"))?;
    }
    let sha256 = match &raw.sha256 {
        None => None,
        Some(text) => {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut digest)
                .map_err(|_| format!("`sha256` must be 64 hexadecimal digits, not `{text}`"))?;
            Some(digest)
        }
    };
    let refresh = raw.refresh.unwrap_or(DEFAULT_REFRESH);
    if refresh < Duration::from_secs(1) {
        return Err("`refresh` must be at least 1s".into());
    }
    Ok(RemoteList {
        url,
        transfer: None,
        refresh,
        sha256,
        minisign: raw.minisign.as_ref().map(|k| k.trim().to_owned()),
        signature_url,
        cache_dir: None,
    })
}

/// Checks and converts a zone-transfer list: `source = "axfr://host[:port]/zone"`.
fn transfer(raw: &RawListConfig, source: &str) -> Result<RemoteList, String> {
    if raw.format != ListFormat::Rpz {
        return Err(format!(
            "a zone transfer carries an RPZ zone: set `format = \"rpz\"`, not `{}`",
            raw.format
        ));
    }
    for (key, set) in [
        ("sha256", raw.sha256.is_some()),
        ("minisign", raw.minisign.is_some()),
        ("signature_url", raw.signature_url.is_some()),
    ] {
        if set {
            return Err(format!(
                "`{key}` applies to `url` lists; a zone transfer is authenticated with `tsig`"
            ));
        }
    }
    let url = reqwest::Url::parse(source).map_err(|e| format!("`source` `{source}` is not a URL: {e}"))?;
    let zone = url.path().trim_matches('/');
    let host = url.host_str().unwrap_or_default();
    if url.scheme() != "axfr" || host.is_empty() || zone.is_empty() || zone.contains('/') {
        return Err(format!("`source` `{source}` must be axfr://HOST[:PORT]/ZONE"));
    }
    let tsig = raw.tsig.as_deref().map(tsig_key).transpose()?;
    // The HTTP-only settings get their defaults so one type serves both.
    let mut remote = remote(raw, &format!("https://{host}/"))?;
    remote.transfer = Some(Transfer {
        host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
        port: url.port().unwrap_or(53),
        zone: format!("{}.", zone.trim_end_matches('.').to_ascii_lowercase()),
        tsig,
    });
    remote.url = url;
    Ok(remote)
}

fn tsig_key(text: &str) -> Result<TsigKey, String> {
    let mut parts = text.splitn(3, ':');
    let (Some(algorithm), Some(name), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("`tsig` must be ALGORITHM:NAME:BASE64-SECRET (e.g. hmac-sha256:xfr-key:c2VjcmV0)".into());
    };
    let algorithm = algorithm.to_ascii_lowercase();
    if !matches!(algorithm.as_str(), "hmac-sha256" | "hmac-sha384" | "hmac-sha512") {
        return Err(format!(
            "`tsig` algorithm `{algorithm}` is not supported (hmac-sha256, hmac-sha384, hmac-sha512)"
        ));
    }
    let secret = data_encoding::BASE64
        .decode(secret.trim().as_bytes())
        .map_err(|_| "`tsig` secret is not base64".to_owned())?;
    if name.is_empty() || secret.is_empty() {
        return Err("`tsig` needs a key name and a secret".into());
    }
    Ok(TsigKey {
        algorithm,
        name: name.to_owned(),
        secret,
    })
}

fn parse_url(key: &str, text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("`{key}` `{text}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(format!(
            "`{key}` `{text}` must be an https:// (or http://) URL with a host"
        ));
    }
    Ok(url)
}

/// `[sync]`: how `url` lists are downloaded and where verified copies live.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Verified copies and their metadata; relative to the configuration
    /// file's directory. Only created when a `url` list exists.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Extra trusted CA certificates (PEM), on top of the system and
    /// webpki roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Time allowed to establish a connection (TCP and TLS).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for one whole download, body included: a slow-drip
    /// server is cut off here.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Further attempts after a failed one (network errors, timeouts, HTTP
    /// 5xx, 408 and 429); other failures are not retried.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Wait before the first retry; it doubles for each further retry.
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Random delay added to each list's `refresh`, in percent of it, so
    /// resolvers do not all ask the publisher at the same instant.
    #[serde(default = "default_jitter")]
    pub jitter: u8,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            cache_dir: default_cache_dir(),
            ca_file: None,
            connect_timeout: default_connect_timeout(),
            timeout: default_timeout(),
            retries: default_retries(),
            retry_backoff: default_retry_backoff(),
            jitter: default_jitter(),
        }
    }
}

impl SyncConfig {
    /// The cache directory, resolved against the configuration file's
    /// directory.
    pub fn resolved_cache_dir(&self, base_dir: &Path) -> PathBuf {
        if self.cache_dir.is_absolute() {
            self.cache_dir.clone()
        } else {
            base_dir.join(&self.cache_dir)
        }
    }

    /// The CA file, resolved against the configuration file's directory.
    pub fn resolved_ca_file(&self, base_dir: &Path) -> Option<PathBuf> {
        self.ca_file
            .as_ref()
            .map(|f| if f.is_absolute() { f.clone() } else { base_dir.join(f) })
    }

    /// Tells every `url` list where its verified copies live, so reading a
    /// list (builds, `explain`) finds the cache.
    pub fn attach(&self, lists: &mut [ListConfig], base_dir: &Path) {
        let dir = self.resolved_cache_dir(base_dir);
        for list in lists {
            if let ListSource::Remote(remote) = &mut list.source {
                remote.cache_dir = Some(dir.clone());
            }
        }
    }
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from(DEFAULT_CACHE_DIR)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_retries() -> u32 {
    3
}
fn default_retry_backoff() -> Duration {
    Duration::from_secs(2)
}
fn default_jitter() -> u8 {
    10
}
