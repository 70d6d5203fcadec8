//! The registry's one configuration, merged from the file, then `BERTH_*` environment
//! variables, then flags (each overriding the one before), and validated once at start.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything the registry can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on. Loopback by default: exposing a registry is a decision.
    pub listen: SocketAddr,
    /// Data directory: blobs under `blobs/`, staged uploads under `uploads/`, and the SQLite
    /// database `berth.db` unless `database` says otherwise.
    pub data: PathBuf,
    /// Metadata database URL; defaults to `sqlite://<data>/berth.db`.
    pub database: Option<String>,
    /// Largest manifest accepted, in bytes. The spec asks registries to take at least 4 MiB.
    pub max_manifest_bytes: usize,
    /// Page size of tag and catalog listings when the client gives no `n`, and the largest `n`
    /// honoured: bounds the work one request can ask for.
    pub page_size: u32,
    /// Seconds in-flight requests get to finish after SIGTERM before the process exits.
    pub shutdown_grace_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data: PathBuf::from("./berth-data"),
            database: None,
            max_manifest_bytes: 4 * 1024 * 1024,
            page_size: 1000,
            shutdown_grace_secs: 30,
        }
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// The database URL in force.
    pub fn database_url(&self) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data.join("berth.db").display()))
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.page_size > 0, "page_size must be at least 1");
        anyhow::ensure!(
            self.max_manifest_bytes >= 4 * 1024 * 1024,
            "max_manifest_bytes must be at least 4 MiB (4194304): the distribution spec requires registries to accept manifests that large"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_and_unknown_keys() {
        let c: Config =
            toml::from_str("listen = \"127.0.0.1:6000\"\npage_size = 50").expect("parse");
        assert_eq!(c.listen.port(), 6000);
        assert_eq!(c.page_size, 50);
        assert_eq!(c.max_manifest_bytes, 4 << 20);
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
        assert!(c.database_url().ends_with("berth.db"));
    }

    #[test]
    fn example_config_is_valid_and_matches_defaults() {
        let c: Config = toml::from_str(include_str!("../../deploy/config.example.toml"))
            .expect("example parses");
        c.validate().expect("example validates");
        let d = Config::default();
        assert_eq!(
            (c.listen, c.data, c.page_size),
            (d.listen, d.data, d.page_size)
        );
        assert_eq!(
            (c.max_manifest_bytes, c.shutdown_grace_secs),
            (d.max_manifest_bytes, d.shutdown_grace_secs)
        );
    }
}
