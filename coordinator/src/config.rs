//! `coordinator.toml`: the file as written (`CoordinatorConfigFile`, every key optional
//! with a documented default) and the checked configuration the program runs with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drmesh_protocol::tls::TlsFiles;
use drmesh_protocol::RegionId;
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
    /// Regions DR plans may name, besides those of the agents that have connected.
    /// Default: none (only the agents' regions).
    pub regions: Option<Vec<RegionId>>,
    /// Notification channels by name (`[notify.slack]`, `[notify.email]`, …), which DR
    /// plans name in `notificationChannels`. Default: none.
    pub notify: Option<BTreeMap<String, NotifyChannel>>,
}

/// A notification channel. `type` says which.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum NotifyChannel {
    /// A Slack-compatible incoming webhook (`{"text": …}` posted as JSON).
    Slack { url: String },
    /// A generic webhook: the event as JSON, signed with HMAC-SHA256 of the body under
    /// the secret read from `secret_file` (header `X-Drmesh-Signature: sha256=<hex>`).
    Webhook {
        url: String,
        secret_file: Option<PathBuf>,
    },
    /// Email over SMTP.
    Email {
        smtp_host: String,
        /// Default 25.
        smtp_port: Option<u16>,
        /// `none` (default for port 25 on loopback only), `starttls` or `tls`.
        security: Option<String>,
        from: String,
        to: Vec<String>,
        username: Option<String>,
        password_file: Option<PathBuf>,
    },
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
    pub regions: Vec<RegionId>,
    pub notify: BTreeMap<String, NotifyChannel>,
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
        let regions = self.regions.unwrap_or_default();
        for r in &regions {
            RegionId::new(r.as_str()).map_err(|e| ConfigError::Invalid(format!("regions: {e}")))?;
        }
        let mut notify = self.notify.unwrap_or_default();
        for (name, channel) in notify.iter_mut() {
            check_channel(name, channel)?;
            match channel {
                NotifyChannel::Webhook {
                    secret_file: Some(f),
                    ..
                } => *f = abs(f.clone()),
                NotifyChannel::Email {
                    password_file: Some(f),
                    ..
                } => *f = abs(f.clone()),
                _ => {}
            }
        }
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
            regions,
            notify,
        })
    }
}

fn check_channel(name: &str, channel: &NotifyChannel) -> Result<(), ConfigError> {
    let bad = |why: String| Err(ConfigError::Invalid(format!("[notify.{name}]: {why}")));
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return bad("channel names are letters, digits, '_' and '-'".into());
    }
    let url_ok = |url: &str| url.starts_with("http://") || url.starts_with("https://");
    match channel {
        NotifyChannel::Slack { url } | NotifyChannel::Webhook { url, .. } if !url_ok(url) => {
            bad(format!("url {url:?} must start with http:// or https://"))
        }
        NotifyChannel::Email {
            smtp_host,
            security,
            from,
            to,
            ..
        } => {
            if smtp_host.trim().is_empty() {
                return bad("smtp_host is required".into());
            }
            if !matches!(
                security.as_deref(),
                None | Some("none" | "starttls" | "tls")
            ) {
                return bad(format!(
                    "security {security:?} must be none, starttls or tls"
                ));
            }
            if !from.contains('@') {
                return bad(format!("from {from:?} is not an address"));
            }
            if to.is_empty() || to.iter().any(|a| !a.contains('@')) {
                return bad("to needs at least one address, each with an @".into());
            }
            Ok(())
        }
        _ => Ok(()),
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
    fn regions_and_notification_channels_are_read_and_checked() {
        let text = format!(
            "regions = [\"us-east-1\"]\n[notify.slack]\ntype = \"slack\"\nurl = \"http://127.0.0.1:9/x\"\n[notify.mail]\ntype = \"email\"\nsmtp_host = \"127.0.0.1\"\nfrom = \"a@b.test\"\nto = [\"c@d.test\"]\npassword_file = \"pw\"\n{TLS}"
        );
        let cfg = CoordinatorConfigFile::parse(&text, Path::new("x.toml"))
            .expect("parse")
            .validate(Path::new("/etc/drmesh"))
            .expect("valid");
        assert_eq!(cfg.regions.len(), 1);
        assert_eq!(cfg.notify.len(), 2);
        let Some(NotifyChannel::Email { password_file, .. }) = cfg.notify.get("mail") else {
            panic!("email channel");
        };
        assert_eq!(password_file.as_deref(), Some(Path::new("/etc/drmesh/pw")));

        for (bad, names) in [
            ("[notify.s]\ntype = \"slack\"\nurl = \"ftp://x\"\n", "url"),
            ("[notify.s]\ntype = \"pager\"\n", "pager"),
            (
                "[notify.m]\ntype = \"email\"\nsmtp_host = \"h\"\nfrom = \"a@b\"\nto = []\n",
                "to",
            ),
            ("regions = [\"us east\"]\n", "regions"),
        ] {
            let text = if bad.starts_with("regions") {
                format!("{bad}{TLS}")
            } else {
                format!("{TLS}{bad}")
            };
            let err = CoordinatorConfigFile::parse(&text, Path::new("x.toml"))
                .map_err(|e| e.to_string())
                .and_then(|f| f.validate(Path::new("/")).map_err(|e| e.to_string()))
                .expect_err(bad);
            assert!(err.contains(names), "{bad}: {err}");
        }
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
