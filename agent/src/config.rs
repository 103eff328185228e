//! `agent.toml`: the file as written (every key documented with its default) and the
//! checked configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drmesh_protocol::tls::TlsFiles;
use drmesh_protocol::{AgentId, RegionId};
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresFile {
    /// libpq connection string of the local cluster, e.g.
    /// `host=/var/run/postgresql port=5432 user=postgres dbname=postgres`. Required when
    /// the `[postgres]` table is present.
    pub conninfo: Option<String>,
    /// How long one status probe may take. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Option<Duration>,
}

/// The TOML file. Unknown keys are refused.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfigFile {
    /// This agent's id. Must equal the common name of its certificate. Required.
    pub id: Option<String>,
    /// Region this agent runs in. Must equal its certificate's region. Required.
    pub region: Option<String>,
    /// Coordinator QUIC address `host:port`. Required.
    pub coordinator: Option<String>,
    /// Name the coordinator's certificate must carry. Default: the host part of
    /// `coordinator`.
    pub coordinator_name: Option<String>,
    /// Heartbeat period. Default `500ms`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// Upper bound of the reconnect backoff (it starts at 100ms and doubles). Default `5s`.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Option<Duration>,
    /// Directory whose filesystem's free space is reported. Default `.`.
    pub data_dir: Option<PathBuf>,
    /// `text` (default) or `json`.
    pub log_format: Option<LogFormat>,
    /// Client certificate, key and CA. Required.
    pub tls: Option<TlsFiles>,
    /// The local PostgreSQL, if this host runs one.
    pub postgres: Option<PostgresFile>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PostgresConfig {
    pub conninfo: String,
    pub probe_timeout: Duration,
}

/// The checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    pub id: AgentId,
    pub region: RegionId,
    pub coordinator: String,
    pub coordinator_name: String,
    pub heartbeat_interval: Duration,
    pub reconnect_max_backoff: Duration,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub tls: TlsFiles,
    pub postgres: Option<PostgresConfig>,
}

fn required<T>(value: Option<T>, key: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| ConfigError::Invalid(format!("`{key}` is required")))
}

impl AgentConfigFile {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn validate(self, base: &Path) -> Result<AgentConfig, ConfigError> {
        let id = AgentId::new(required(self.id, "id")?)
            .map_err(|e| ConfigError::Invalid(format!("id: {e}")))?;
        let region = RegionId::new(required(self.region, "region")?)
            .map_err(|e| ConfigError::Invalid(format!("region: {e}")))?;
        let coordinator = required(self.coordinator, "coordinator")?;
        let host = coordinator
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                ConfigError::Invalid(format!("coordinator {coordinator:?} must be host:port"))
            })?;
        let heartbeat_interval = self
            .heartbeat_interval
            .unwrap_or(Duration::from_millis(500));
        if heartbeat_interval < Duration::from_millis(50)
            || heartbeat_interval > Duration::from_secs(60)
        {
            return Err(ConfigError::Invalid(
                "heartbeat_interval must be between 50ms and 60s".into(),
            ));
        }
        let reconnect_max_backoff = self.reconnect_max_backoff.unwrap_or(Duration::from_secs(5));
        if reconnect_max_backoff < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "reconnect_max_backoff must be at least 100ms".into(),
            ));
        }
        let tls = required(self.tls, "[tls]")?;
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let postgres = match self.postgres {
            None => None,
            Some(pg) => Some(PostgresConfig {
                conninfo: required(pg.conninfo, "postgres.conninfo")?,
                probe_timeout: pg.probe_timeout.unwrap_or(Duration::from_secs(2)),
            }),
        };
        Ok(AgentConfig {
            id,
            region,
            coordinator_name: self.coordinator_name.unwrap_or(host),
            coordinator,
            heartbeat_interval,
            reconnect_max_backoff,
            data_dir: abs(self.data_dir.unwrap_or_else(|| PathBuf::from("."))),
            log_format: self.log_format.unwrap_or_default(),
            tls: TlsFiles {
                ca_cert: abs(tls.ca_cert),
                cert: abs(tls.cert),
                key: abs(tls.key),
            },
            postgres,
        })
    }
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        AgentConfigFile::parse(&text, path)?.validate(base)
    }

    /// Resolves `coordinator` to a socket address.
    pub fn coordinator_addr(&self) -> std::io::Result<SocketAddr> {
        use std::net::ToSocketAddrs;
        self.coordinator.to_socket_addrs()?.next().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.coordinator),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "id = \"db-1\"\nregion = \"us-west-2\"\ncoordinator = \"coord.example:7443\"\n[tls]\nca_cert = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n";

    #[test]
    fn defaults() {
        let cfg = AgentConfigFile::parse(BASE, Path::new("a.toml"))
            .expect("parse")
            .validate(Path::new("/etc/drmesh"))
            .expect("valid");
        assert_eq!(cfg.coordinator_name, "coord.example");
        assert_eq!(cfg.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(cfg.reconnect_max_backoff, Duration::from_secs(5));
        assert_eq!(cfg.tls.cert, PathBuf::from("/etc/drmesh/a.pem"));
        assert_eq!(cfg.postgres, None);
    }

    #[test]
    fn postgres_section() {
        let text = format!("{BASE}[postgres]\nconninfo = \"port=5432\"\nprobe_timeout = \"1s\"\n");
        let cfg = AgentConfigFile::parse(&text, Path::new("a.toml"))
            .expect("parse")
            .validate(Path::new("/"))
            .expect("valid");
        assert_eq!(
            cfg.postgres,
            Some(PostgresConfig {
                conninfo: "port=5432".into(),
                probe_timeout: Duration::from_secs(1)
            })
        );
        let err = AgentConfigFile::parse(&format!("{BASE}[postgres]\n"), Path::new("a.toml"))
            .expect("parse")
            .validate(Path::new("/"))
            .expect_err("conninfo required");
        assert!(err.to_string().contains("postgres.conninfo"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        let err = AgentConfigFile::parse("id = 3", Path::new("a.toml")).expect_err("type");
        assert!(err.to_string().contains("a.toml"), "{err}");
        let text = BASE.replace("db-1", "db 1");
        let err = AgentConfigFile::parse(&text, Path::new("a.toml"))
            .expect("parse")
            .validate(Path::new("/"))
            .expect_err("bad id");
        assert!(err.to_string().contains("id"), "{err}");
        let text = BASE.replace("coord.example:7443", "nohostport");
        assert!(AgentConfigFile::parse(&text, Path::new("a.toml"))
            .expect("parse")
            .validate(Path::new("/"))
            .is_err());
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../deploy/agent.example.toml");
        let cfg = AgentConfigFile::parse(text, Path::new("example.toml"))
            .expect("parse")
            .validate(Path::new("/"))
            .expect("valid");
        assert_eq!(cfg.coordinator_name, "coordinator.internal");
        assert!(cfg.postgres.is_some());
    }
}
