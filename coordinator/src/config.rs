//! `coordinator.toml`: the file as written (`CoordinatorConfigFile`, every key optional
//! with a documented default) and the checked configuration the program runs with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drmesh_protocol::tls::TlsFiles;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The TOML file. Unknown keys are refused so a typo is not silently ignored.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfigFile {
    /// REST API address. Default `127.0.0.1:3000`.
    pub http_listen: Option<SocketAddr>,
    /// QUIC address agents connect to. Default `0.0.0.0:7443`.
    pub quic_listen: Option<SocketAddr>,
    /// State store file (redb). Default `drmesh-state.redb` next to the config file.
    pub store_path: Option<PathBuf>,
    /// Interval at which agents heartbeat. Default `500ms`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// Missed heartbeat intervals before an agent is SUSPECT. Default 2.
    pub suspect_after: Option<u32>,
    /// Missed heartbeat intervals before an agent is DOWN (and a CRITICAL alert raised).
    /// Default 4.
    pub down_after: Option<u32>,
    /// `text` (default) or `json`.
    pub log_format: Option<LogFormat>,
    /// HTTP worker threads. Default 2.
    pub http_workers: Option<usize>,
    /// A backup still running after this long is failed with a CRITICAL "Backup
    /// Timeout" alert. Default `30m` (the runbook's).
    #[serde(with = "humantime_serde")]
    pub backup_timeout: Option<Duration>,
    /// A point-in-time recovery still running after this long is failed. Default `2h`.
    #[serde(with = "humantime_serde")]
    pub recovery_timeout: Option<Duration>,
    /// TLS files of the QUIC endpoint. Required.
    pub tls: Option<TlsFiles>,
}

/// The checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct CoordinatorConfig {
    pub http_listen: SocketAddr,
    pub quic_listen: SocketAddr,
    pub store_path: PathBuf,
    pub heartbeat_interval: Duration,
    pub suspect_after: u32,
    pub down_after: u32,
    pub log_format: LogFormat,
    pub http_workers: usize,
    pub backup_timeout: Duration,
    pub recovery_timeout: Duration,
    pub tls: TlsFiles,
}

pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:3000";
pub const DEFAULT_QUIC_LISTEN: &str = "0.0.0.0:7443";
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_SUSPECT_AFTER: u32 = 2;
pub const DEFAULT_DOWN_AFTER: u32 = 4;
pub const DEFAULT_BACKUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

fn default_addr(s: &str) -> SocketAddr {
    // The defaults are literals above; a typo there is a bug caught by the unit tests.
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl CoordinatorConfigFile {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Applies defaults and checks the values. Relative paths are taken from `base`
    /// (the directory of the config file).
    pub fn validate(self, base: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let heartbeat_interval = self
            .heartbeat_interval
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        if heartbeat_interval < Duration::from_millis(50)
            || heartbeat_interval > Duration::from_secs(60)
        {
            return Err(ConfigError::Invalid(format!(
                "heartbeat_interval {} must be between 50ms and 60s",
                humantime::format_duration(heartbeat_interval)
            )));
        }
        let suspect_after = self.suspect_after.unwrap_or(DEFAULT_SUSPECT_AFTER);
        let down_after = self.down_after.unwrap_or(DEFAULT_DOWN_AFTER);
        if suspect_after == 0 || down_after <= suspect_after {
            return Err(ConfigError::Invalid(format!(
                "need 0 < suspect_after ({suspect_after}) < down_after ({down_after})"
            )));
        }
        let http_workers = self.http_workers.unwrap_or(2);
        if http_workers == 0 || http_workers > 64 {
            return Err(ConfigError::Invalid(format!(
                "http_workers {http_workers} must be between 1 and 64"
            )));
        }
        let backup_timeout = self.backup_timeout.unwrap_or(DEFAULT_BACKUP_TIMEOUT);
        let recovery_timeout = self
            .recovery_timeout
            .unwrap_or(Duration::from_secs(2 * 3600));
        if recovery_timeout < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "recovery_timeout must be at least 1s".into(),
            ));
        }
        if backup_timeout < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "backup_timeout must be at least 1s".into(),
            ));
        }
        let tls = self.tls.ok_or_else(|| {
            ConfigError::Invalid(
                "[tls] with ca_cert, cert and key is required (make them with `drmesh ca init` and `drmesh ca issue coordinator`)".into(),
            )
        })?;
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        Ok(CoordinatorConfig {
            http_listen: self
                .http_listen
                .unwrap_or_else(|| default_addr(DEFAULT_HTTP_LISTEN)),
            quic_listen: self
                .quic_listen
                .unwrap_or_else(|| default_addr(DEFAULT_QUIC_LISTEN)),
            store_path: abs(self
                .store_path
                .unwrap_or_else(|| PathBuf::from("drmesh-state.redb"))),
            heartbeat_interval,
            suspect_after,
            down_after,
            log_format: self.log_format.unwrap_or_default(),
            http_workers,
            backup_timeout,
            recovery_timeout,
            tls: TlsFiles {
                ca_cert: abs(tls.ca_cert),
                cert: abs(tls.cert),
                key: abs(tls.key),
            },
        })
    }
}

impl CoordinatorConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        CoordinatorConfigFile::parse(&text, path)?.validate(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS: &str = "[tls]\nca_cert = \"ca.pem\"\ncert = \"/etc/c.pem\"\nkey = \"c.key\"\n";

    #[test]
    fn defaults_fill_an_almost_empty_file() {
        let cfg = CoordinatorConfigFile::parse(TLS, Path::new("x.toml"))
            .expect("parse")
            .validate(Path::new("/etc/drmesh"))
            .expect("valid");
        assert_eq!(cfg.http_listen, default_addr(DEFAULT_HTTP_LISTEN));
        assert_eq!(cfg.http_listen.port(), 3000);
        assert_eq!(cfg.quic_listen.port(), 7443);
        assert_eq!(cfg.heartbeat_interval, Duration::from_millis(500));
        assert_eq!((cfg.suspect_after, cfg.down_after), (2, 4));
        assert_eq!(
            cfg.store_path,
            PathBuf::from("/etc/drmesh/drmesh-state.redb")
        );
        assert_eq!(cfg.tls.ca_cert, PathBuf::from("/etc/drmesh/ca.pem"));
        assert_eq!(cfg.tls.cert, PathBuf::from("/etc/c.pem"));
    }

    #[test]
    fn values_are_read_and_checked() {
        let text = format!("heartbeat_interval = \"250ms\"\nsuspect_after = 3\ndown_after = 5\nlog_format = \"json\"\n{TLS}");
        let cfg = CoordinatorConfigFile::parse(&text, Path::new("x.toml"))
            .expect("parse")
            .validate(Path::new("/"))
            .expect("valid");
        assert_eq!(cfg.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(cfg.log_format, LogFormat::Json);

        let bad = format!("suspect_after = 4\ndown_after = 4\n{TLS}");
        let err = CoordinatorConfigFile::parse(&bad, Path::new("x.toml"))
            .expect("parse")
            .validate(Path::new("/"))
            .expect_err("invalid");
        assert!(err.to_string().contains("down_after"), "{err}");
    }

    #[test]
    fn typos_and_missing_tls_are_refused() {
        let err = CoordinatorConfigFile::parse("heartbeat_intervall = \"1s\"", Path::new("c.toml"))
            .expect_err("unknown key");
        assert!(err.to_string().contains("heartbeat_intervall"), "{err}");
        let err = CoordinatorConfigFile::parse("", Path::new("c.toml"))
            .expect("parse")
            .validate(Path::new("/"))
            .expect_err("no tls");
        assert!(err.to_string().contains("[tls]"), "{err}");
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../deploy/coordinator.example.toml");
        let cfg = CoordinatorConfigFile::parse(text, Path::new("example.toml"))
            .expect("parse")
            .validate(Path::new("/"))
            .expect("valid");
        assert_eq!(cfg.http_listen.port(), 3000);
    }
}
