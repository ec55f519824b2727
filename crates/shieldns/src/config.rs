//! The configuration file: TOML → serde (`deny_unknown_fields` everywhere) →
//! a typed [`Config`]. Errors name the file, the key and the line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use shieldns_index::ProfileConfig;
use shieldns_resolver::{CacheConfig, ServerConfig, UpstreamConfig};
use shieldns_sync::{ListConfig, SyncConfig};

/// The configuration compiled into the binary, used without `--config`:
/// loopback only, recursive, with the starter lists.
pub(crate) const EMBEDDED_DEFAULT: &str = include_str!("../../../config/default.toml");

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    pub(crate) server: ServerConfig,
    #[serde(default)]
    pub(crate) upstream: UpstreamConfig,
    #[serde(default)]
    pub(crate) cache: CacheConfig,
    #[serde(default, rename = "list")]
    pub(crate) lists: Vec<ListConfig>,
    #[serde(default, rename = "profile")]
    pub(crate) profiles: Vec<ProfileConfig>,
    #[serde(default)]
    pub(crate) metrics: MetricsConfig,
    #[serde(default)]
    pub(crate) sync: SyncConfig,
    #[serde(default)]
    pub(crate) storage: shieldns_compliance::StorageConfig,
    #[serde(default)]
    pub(crate) query_log: shieldns_querylog::QueryLogConfig,
}

/// `[metrics]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsConfig {
    /// Address of the Prometheus `/metrics` endpoint; none disables it.
    #[serde(default)]
    pub(crate) listen: Option<SocketAddr>,
    /// Networks allowed to scrape; any other source's connection is closed
    /// unanswered. Loopback only by default.
    #[serde(default = "loopback")]
    pub(crate) allow: Vec<ipnet::IpNet>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            allow: loopback(),
        }
    }
}

fn loopback() -> Vec<ipnet::IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|net| net.parse().ok())
        .collect()
}

/// Where the configuration came from.
#[derive(Clone, Debug)]
pub(crate) enum ConfigSource {
    /// The embedded default.
    Embedded,
    /// A file.
    File(PathBuf),
}

impl ConfigSource {
    pub(crate) fn from_arg(path: Option<PathBuf>) -> Self {
        path.map_or(Self::Embedded, Self::File)
    }

    /// The directory relative list paths are resolved against.
    pub(crate) fn base_dir(&self) -> PathBuf {
        match self {
            Self::Embedded => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            Self::File(path) => path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Embedded => String::from("embedded default configuration"),
            Self::File(path) => path.display().to_string(),
        }
    }

    /// Reads and parses the configuration.
    pub(crate) fn load(&self) -> anyhow::Result<Config> {
        let text = match self {
            Self::Embedded => EMBEDDED_DEFAULT.to_owned(),
            Self::File(path) => {
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
            }
        };
        let mut config = parse(&text).with_context(|| format!("invalid configuration in {}", self.describe()))?;
        // `url` lists are read from `sync.cache_dir`, a key of another table.
        config.sync.attach(&mut config.lists, &self.base_dir());
        // Listener certificates are relative to the configuration too;
        // `join` keeps an absolute path.
        for listener in &mut config.server.listeners {
            listener.certificate = self.base_dir().join(&listener.certificate);
            listener.key = self.base_dir().join(&listener.key);
        }
        Ok(config)
    }
}

/// Parses configuration text. toml's errors carry the line, column and key.
pub(crate) fn parse(text: &str) -> anyhow::Result<Config> {
    let config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_access_list_is_refused_with_its_line() {
        let error = parse("[server]\nlisten = [\"127.0.0.1:5353\"]\nallow = []\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("line 3"), "{error}");
        assert!(error.contains("would refuse every client"), "{error}");
    }

    #[test]
    fn embedded_default_parses() {
        let config = parse(EMBEDDED_DEFAULT).unwrap();
        assert_eq!(config.server.listen.len(), 2);
        assert!(config.lists.iter().any(|l| l.mandatory));
    }

    #[test]
    fn examples_parse() {
        for file in ["isp.toml", "school.toml", "default.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config").join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            parse(&text).unwrap_or_else(|e| panic!("{file}: {e:#}"));
        }
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let error = parse("[server]\nlisten = []\nlisen = 1\n").unwrap_err().to_string();
        assert!(error.contains("lisen"), "{error}");
        assert!(error.contains("line 3"), "{error}");
        let error = parse("[[profile]]\nname = \"x\"\nclients = []\nblock_responce = \"nxdomain\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("block_responce"), "{error}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let error = parse("[upstream]\nmode = \"sideways\"\n").unwrap_err().to_string();
        assert!(error.contains("sideways") && error.contains("mode"), "{error}");
    }
}
