//! `coordinator.toml`: the file as written (`CoordinatorConfigFile`, every key optional
//! with a documented default) and the checked configuration the program runs with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drmesh_protocol::tls::TlsFiles;
use drmesh_protocol::RegionId;
use serde::Deserialize;

use crate::dns::{DnsConfig, DnsSection};

pub use drmesh_protocol::config::{ConfigError, LogFormat};

/// The TOML file. Unknown keys are refused so a typo is not silently ignored.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfigFile {
    /// REST API address. Default `127.0.0.1:3000`. Plain HTTP only on a loopback
    /// address: any other needs `http_tls = true` (or `insecure_http = true`).
    pub http_listen: Option<SocketAddr>,
    /// Serve the REST API over HTTPS with the `[tls]` certificate and key (`drmesh ca
    /// issue coordinator --host …`: name every host operators and the other
    /// coordinators use). Default `false`.
    pub http_tls: Option<bool>,
    /// Allow plain HTTP on an address other than loopback (bearer tokens then cross
    /// the network in the clear). Default `false`: such a configuration is refused.
    pub insecure_http: Option<bool>,
    /// QUIC address agents connect to. Default `0.0.0.0:7443`.
    pub quic_listen: Option<SocketAddr>,
    /// State store file (redb). Default `drmesh-state.redb` next to the config file.
    /// The same as `[store] path`.
    pub store_path: Option<PathBuf>,
    /// Where the state lives (`[store]`: `backend = "redb"` or `"etcd"`, …). Default: a
    /// redb file at `store_path`.
    pub store: Option<crate::store::settings::StoreSection>,
    /// The REST API's URL as other coordinators and the CLI reach it (with an etcd
    /// store, followers forward writes there). Default `http://` (`https://` with
    /// `http_tls`) + `http_listen` (its host name when `http_listen` is a wildcard
    /// address).
    pub http_advertise: Option<String>,
    /// `host:port` where agents reach this coordinator's QUIC endpoint (followers send
    /// agents to the leader's). Default `quic_listen` (its host name when a wildcard).
    pub quic_advertise: Option<String>,
    /// Interval at which agents heartbeat. Default `500ms`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// Missed heartbeat intervals before an agent is SUSPECT. Default 2.
    pub suspect_after: Option<u32>,
    /// Missed heartbeat intervals before an agent is DOWN (and a CRITICAL alert raised).
    /// Default 4.
    pub down_after: Option<u32>,
    /// How long a primary's agent keeps its PostgreSQL writable once it has lost both
    /// the coordinator and a majority of the mesh; also how long heartbeats must be
    /// missing before a primary region can be DOWN. At least 4 heartbeat intervals.
    /// Default `5s` (or 4 heartbeat intervals, when longer).
    #[serde(with = "humantime_serde")]
    pub lease: Option<Duration>,
    /// What a failover waits beyond a silent old primary's lease before promoting (the
    /// time its agent takes to stop PostgreSQL, plus clock drift). Default `1s`.
    #[serde(with = "humantime_serde")]
    pub fence_margin: Option<Duration>,
    /// How long after a plan's failover promoted a server no automatic failover of that
    /// plan starts (manual ones still do): a flapping region or a failover that went
    /// wrong after its promotion does not chain into another. Default `10m`; `0s` turns
    /// it off.
    #[serde(with = "humantime_serde")]
    pub automatic_failover_cooldown: Option<Duration>,
    /// Credentials of the health check's `SELECT 1` on each region's PostgreSQL (the
    /// address comes from the agent's `postgres.advertise`), as a libpq conninfo
    /// without host or port. Default `user=postgres dbname=postgres`.
    pub health_probe_conninfo: Option<String>,
    /// `text` (default) or `json`.
    pub log_format: Option<LogFormat>,
    /// HTTP worker threads. Default 2.
    pub http_workers: Option<usize>,
    /// Threads of the runtime that drives the QUIC endpoint: every agent connection, its
    /// heartbeats and their acknowledgements. Its own runtime, so that nothing else the
    /// coordinator runs can delay a heartbeat. Default 2.
    pub quic_threads: Option<usize>,
    /// A backup still running after this long is failed with a CRITICAL "Backup
    /// Timeout" alert. Default `30m` (the runbook's).
    #[serde(with = "humantime_serde")]
    pub backup_timeout: Option<Duration>,
    /// A point-in-time recovery still running after this long is failed. Default `2h`.
    #[serde(with = "humantime_serde")]
    pub recovery_timeout: Option<Duration>,
    /// How many verifications a `verify-all` run runs at a time (each a restorability
    /// test: a restore and a PostgreSQL start on an agent). Default 1.
    pub verify_concurrency: Option<usize>,
    /// TLS files of the QUIC endpoint. Required.
    pub tls: Option<TlsFiles>,
    /// Regions DR plans may name, besides those of the agents that have connected.
    /// Default: none (only the agents' regions).
    pub regions: Option<Vec<RegionId>>,
    /// Notification channels by name (`[notify.slack]`, `[notify.email]`, …), which DR
    /// plans name in `notificationChannels`. Default: none.
    pub notify: Option<BTreeMap<String, NotifyChannel>>,
    /// The DNS record failover points at the new primary (`[dns]`). Default: none (the
    /// DNS step is skipped).
    pub dns: Option<DnsSection>,
    /// How full (percent) a local repository's filesystem may get before the CRITICAL
    /// `STORAGE_FULL` alert. Default 90.
    pub storage_full_percent: Option<u8>,
    /// Retention policies (`[retention.database]`, `[retention.documents]`: `full`,
    /// `incremental`, `weekly`, `monthly`, `yearly`) and `[retention] schedule` (cron,
    /// UTC, or `off`). Default: the runbook's (30d, 7d, 12, 12, 7; daily at 01:00 UTC).
    pub retention: Option<drmesh_protocol::retention::RetentionPolicies>,
    /// Copies of backups to the agents' other locations (`[copies]`; the old name
    /// `[replication]` is still read).
    #[serde(alias = "replication")]
    pub copies: Option<CopiesSection>,
    /// How long the audit log is kept (`[audit]`: `retention`, `max_records`).
    pub audit: Option<AuditSection>,
    /// Per-token limits (`[limits]`).
    pub limits: Option<LimitsSection>,
}

/// `[limits]`: how many expensive calls a token may make.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Calls a minute one token may make of each expensive kind (backups,
    /// verifications, restores, failovers and their kin), with a burst of as many; over
    /// it, 429 with `Retry-After`. Default 60.
    pub expensive_per_minute: Option<u32>,
}

/// `[audit]`: the audit log's bounds; the oldest records past either are deleted, every
/// minute, by the coordinator in office.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSection {
    /// How long a record is kept. Default `365d`.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// The most records kept. Default 1000000.
    pub max_records: Option<usize>,
}

/// `[copies]`: how often agents catch their secondary locations up (document
/// locations after the first, `[[database.replicas]]`), and when an unreachable one
/// raises an alert.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CopiesSection {
    /// Time between two copy rounds of an agent. Default `60s`; `0s` turns
    /// the rounds off (backups still copy to every location as they finish).
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// How long a location may stay unreachable before the `LOCATION_UNREACHABLE`
    /// alert. Default `15m`.
    #[serde(with = "humantime_serde")]
    pub alert_after: Option<Duration>,
}

/// `[copies]`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct CopiesConfig {
    /// `None`: off.
    pub interval: Option<Duration>,
    pub alert_after: Duration,
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
    /// HTTPS with `tls.cert` and `tls.key`.
    pub http_tls: bool,
    pub quic_listen: SocketAddr,
    pub store: crate::store::settings::StoreConfig,
    pub http_advertise: Option<String>,
    pub quic_advertise: Option<String>,
    pub heartbeat_interval: Duration,
    pub suspect_after: u32,
    pub down_after: u32,
    pub lease: Duration,
    pub fence_margin: Duration,
    pub automatic_failover_cooldown: Duration,
    pub health_probe_conninfo: String,
    pub log_format: LogFormat,
    pub http_workers: usize,
    pub quic_threads: usize,
    pub backup_timeout: Duration,
    pub recovery_timeout: Duration,
    pub verify_concurrency: usize,
    pub tls: TlsFiles,
    pub regions: Vec<RegionId>,
    pub notify: BTreeMap<String, NotifyChannel>,
    pub dns: Option<DnsConfig>,
    pub retention: drmesh_protocol::retention::RetentionPolicies,
    pub storage_full_percent: u8,
    pub copies: CopiesConfig,
    pub audit: crate::audit::Keeping,
    /// `[limits] expensive_per_minute`.
    pub expensive_per_minute: u32,
}

pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:3000";
pub const DEFAULT_QUIC_LISTEN: &str = "0.0.0.0:7443";
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_SUSPECT_AFTER: u32 = 2;
pub const DEFAULT_DOWN_AFTER: u32 = 4;
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
pub const DEFAULT_FENCE_MARGIN: Duration = Duration::from_secs(1);
pub const DEFAULT_AUTOMATIC_FAILOVER_COOLDOWN: Duration = Duration::from_secs(600);
pub const DEFAULT_BACKUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

fn default_addr(s: &str) -> SocketAddr {
    // The defaults are literals above; a typo there is a bug caught by the unit tests.
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl CoordinatorConfigFile {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        drmesh_protocol::config::parse_toml(text, path)
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
        let lease = self
            .lease
            .unwrap_or_else(|| DEFAULT_LEASE.max(heartbeat_interval * 4));
        if lease < heartbeat_interval * 4 || lease > Duration::from_secs(600) {
            return Err(ConfigError::Invalid(format!(
                "lease {} must be at least 4 heartbeat intervals ({}) and at most 10m",
                humantime::format_duration(lease),
                humantime::format_duration(heartbeat_interval * 4)
            )));
        }
        let fence_margin = self.fence_margin.unwrap_or(DEFAULT_FENCE_MARGIN);
        if fence_margin < Duration::from_millis(200) || fence_margin > Duration::from_secs(60) {
            return Err(ConfigError::Invalid(format!(
                "fence_margin {} must be between 200ms and 60s",
                humantime::format_duration(fence_margin)
            )));
        }
        let health_probe_conninfo = self
            .health_probe_conninfo
            .unwrap_or_else(|| "user=postgres dbname=postgres".into());
        match health_probe_conninfo.parse::<tokio_postgres::Config>() {
            Err(e) => {
                return Err(ConfigError::Invalid(format!(
                    "health_probe_conninfo: {e}"
                )))
            }
            Ok(c) if !c.get_hosts().is_empty() || !c.get_ports().is_empty() => {
                return Err(ConfigError::Invalid(
                    "health_probe_conninfo must not name a host or port: each region's address comes from its agent".into(),
                ))
            }
            Ok(_) => {}
        }
        let http_workers = self.http_workers.unwrap_or(2);
        if http_workers == 0 || http_workers > 64 {
            return Err(ConfigError::Invalid(format!(
                "http_workers {http_workers} must be between 1 and 64"
            )));
        }
        let quic_threads = self.quic_threads.unwrap_or(2);
        if quic_threads == 0 || quic_threads > 64 {
            return Err(ConfigError::Invalid(format!(
                "quic_threads {quic_threads} must be between 1 and 64"
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
        let verify_concurrency = self.verify_concurrency.unwrap_or(1);
        if verify_concurrency == 0 || verify_concurrency > 64 {
            return Err(ConfigError::Invalid(format!(
                "verify_concurrency {verify_concurrency} must be between 1 and 64"
            )));
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
        let dns = self.dns.map(|d| d.validate(base)).transpose()?;
        let storage_full_percent = self.storage_full_percent.unwrap_or(90);
        if !(1..=100).contains(&storage_full_percent) {
            return Err(ConfigError::Invalid(format!(
                "storage_full_percent {storage_full_percent} must be between 1 and 100"
            )));
        }
        let retention = self.retention.unwrap_or_default();
        retention
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        crate::rules::schedule::parse_schedule(&retention.schedule)
            .map_err(ConfigError::Invalid)?;
        let copies = self.copies.unwrap_or_default();
        let interval = copies.interval.unwrap_or(Duration::from_secs(60));
        if !interval.is_zero() && interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "copies.interval must be 0s (off) or at least 1s".into(),
            ));
        }
        let copies = CopiesConfig {
            interval: (!interval.is_zero()).then_some(interval),
            alert_after: copies.alert_after.unwrap_or(Duration::from_secs(15 * 60)),
        };
        let audit = self.audit.unwrap_or_default();
        let audit = crate::audit::Keeping {
            retention: audit.retention.unwrap_or(Duration::from_secs(365 * 86_400)),
            max_records: audit.max_records.unwrap_or(1_000_000),
        };
        if audit.retention < Duration::from_secs(60)
            || !(1..=100_000_000).contains(&audit.max_records)
        {
            return Err(ConfigError::Invalid(
                "[audit] retention must be at least 1m and max_records between 1 and 100000000"
                    .into(),
            ));
        }
        let expensive_per_minute = self
            .limits
            .unwrap_or_default()
            .expensive_per_minute
            .unwrap_or(60);
        if !(1..=100_000).contains(&expensive_per_minute) {
            return Err(ConfigError::Invalid(format!(
                "[limits] expensive_per_minute {expensive_per_minute} must be between 1 and 100000"
            )));
        }
        let http_listen = self
            .http_listen
            .unwrap_or_else(|| default_addr(DEFAULT_HTTP_LISTEN));
        let http_tls = self.http_tls.unwrap_or(false);
        if !http_tls && !http_listen.ip().is_loopback() && !self.insecure_http.unwrap_or(false) {
            return Err(ConfigError::Invalid(format!(
                "http_listen {http_listen} is not a loopback address, and the REST API would \
                 carry bearer tokens there in plain HTTP: set http_tls = true (the [tls] \
                 certificate, from `drmesh ca issue coordinator --host …`), or \
                 insecure_http = true to accept plain HTTP"
            )));
        }
        Ok(CoordinatorConfig {
            http_listen,
            http_tls,
            quic_listen: self
                .quic_listen
                .unwrap_or_else(|| default_addr(DEFAULT_QUIC_LISTEN)),
            store: self
                .store
                .unwrap_or_default()
                .validate(self.store_path, base)?,
            http_advertise: self.http_advertise,
            quic_advertise: self.quic_advertise,
            heartbeat_interval,
            suspect_after,
            down_after,
            lease,
            fence_margin,
            automatic_failover_cooldown: self
                .automatic_failover_cooldown
                .unwrap_or(DEFAULT_AUTOMATIC_FAILOVER_COOLDOWN),
            health_probe_conninfo,
            log_format: self.log_format.unwrap_or_default(),
            http_workers,
            quic_threads,
            backup_timeout,
            recovery_timeout,
            verify_concurrency,
            tls: TlsFiles {
                ca_cert: abs(tls.ca_cert),
                cert: abs(tls.cert),
                key: abs(tls.key),
            },
            regions,
            notify,
            dns,
            retention,
            storage_full_percent,
            copies,
            audit,
            expensive_per_minute,
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
    /// The files holding secrets this configuration names: the state store, the TLS key,
    /// the notification channels' secret and password files (checked for their modes at
    /// start).
    pub fn secret_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.tls.key.clone()];
        if let crate::store::settings::StoreConfig::Redb { path } = &self.store {
            files.push(path.clone());
        }
        for channel in self.notify.values() {
            match channel {
                NotifyChannel::Webhook {
                    secret_file: Some(f),
                    ..
                }
                | NotifyChannel::Email {
                    password_file: Some(f),
                    ..
                } => files.push(f.clone()),
                _ => {}
            }
        }
        files
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = drmesh_protocol::config::read(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        CoordinatorConfigFile::parse(&text, path)?.validate(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{DnsProviderConfig, TsigAlgorithmName};

    const TLS: &str = "[tls]\nca_cert = \"ca.pem\"\ncert = \"/etc/c.pem\"\nkey = \"c.key\"\n";

    #[test]
    fn copies_are_configured_under_their_name_or_the_old_one() {
        let parse = |text: &str| {
            CoordinatorConfigFile::parse(text, Path::new("c.toml"))
                .expect("parse")
                .validate(Path::new("/"))
        };
        for section in ["copies", "replication"] {
            let cfg = parse(&format!(
                "[{section}]\ninterval = \"5s\"\nalert_after = \"1m\"\n{TLS}"
            ))
            .expect("valid");
            assert_eq!(
                cfg.copies.interval,
                Some(Duration::from_secs(5)),
                "{section}"
            );
            assert_eq!(cfg.copies.alert_after, Duration::from_secs(60), "{section}");
        }
        let err = parse(&format!("[copies]\ninterval = \"10ms\"\n{TLS}")).expect_err("too short");
        assert!(err.to_string().contains("copies.interval"), "{err}");
    }

    #[test]
    fn lease_and_margin() {
        let parse = |text: &str| {
            CoordinatorConfigFile::parse(text, Path::new("c.toml"))
                .expect("parse")
                .validate(Path::new("/"))
        };
        let cfg = parse(TLS).expect("valid");
        assert_eq!(cfg.lease, Duration::from_secs(5));
        assert_eq!(cfg.fence_margin, Duration::from_secs(1));
        assert_eq!(cfg.health_probe_conninfo, "user=postgres dbname=postgres");
        // A slow heartbeat stretches the default lease to 4 intervals.
        let cfg = parse(&format!("heartbeat_interval = \"2s\"\n{TLS}")).expect("valid");
        assert_eq!(cfg.lease, Duration::from_secs(8));
        let err = parse(&format!("lease = \"1s\"\n{TLS}")).expect_err("too short");
        assert!(err.to_string().contains("4 heartbeat intervals"), "{err}");
        let err = parse(&format!("fence_margin = \"10ms\"\n{TLS}")).expect_err("too short");
        assert!(err.to_string().contains("fence_margin"), "{err}");
        let err = parse(&format!(
            "health_probe_conninfo = \"host=db user=x\"\n{TLS}"
        ))
        .expect_err("host");
        assert!(err.to_string().contains("must not name a host"), "{err}");
    }

    #[test]
    fn plain_http_is_refused_off_loopback_unless_asked_for() {
        let parse = |text: &str| {
            CoordinatorConfigFile::parse(&format!("{text}\n{TLS}"), Path::new("c.toml"))
                .expect("parse")
                .validate(Path::new("/"))
        };
        for addr in ["0.0.0.0:3000", "10.0.0.5:3000", "[::]:3000"] {
            let err = parse(&format!("http_listen = \"{addr}\"")).expect_err(addr);
            assert!(err.to_string().contains("http_tls = true"), "{err}");
            let cfg = parse(&format!("http_listen = \"{addr}\"\nhttp_tls = true")).expect(addr);
            assert!(cfg.http_tls);
            parse(&format!("http_listen = \"{addr}\"\ninsecure_http = true")).expect(addr);
        }
        for addr in ["127.0.0.1:3000", "127.0.0.2:0", "[::1]:3000"] {
            let cfg = parse(&format!("http_listen = \"{addr}\"")).expect(addr);
            assert!(!cfg.http_tls);
        }
    }

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
            cfg.store,
            crate::store::settings::StoreConfig::Redb {
                path: PathBuf::from("/etc/drmesh/drmesh-state.redb")
            }
        );
        assert_eq!(cfg.tls.ca_cert, PathBuf::from("/etc/drmesh/ca.pem"));
        assert_eq!(cfg.tls.cert, PathBuf::from("/etc/c.pem"));
        assert_eq!(cfg.verify_concurrency, 1);
    }

    #[test]
    fn verify_concurrency_is_read_and_bounded() {
        let parse = |v: &str| {
            CoordinatorConfigFile::parse(
                &format!("verify_concurrency = {v}\n{TLS}"),
                Path::new("x.toml"),
            )
            .expect("parse")
            .validate(Path::new("/"))
        };
        assert_eq!(parse("3").expect("valid").verify_concurrency, 3);
        let err = parse("0").expect_err("zero");
        assert!(err.to_string().contains("verify_concurrency"), "{err}");
    }

    #[test]
    fn retention_defaults_to_the_runbooks_and_bad_policies_are_refused() {
        let parse = |text: &str| {
            CoordinatorConfigFile::parse(&format!("{text}\n{TLS}"), Path::new("x.toml"))
                .map_err(|e| e.to_string())?
                .validate(Path::new("/"))
                .map_err(|e| e.to_string())
        };
        let cfg = parse("").expect("valid");
        assert_eq!(cfg.retention.database.full, Duration::from_secs(30 * 86400));
        assert_eq!(cfg.retention.documents.yearly, 7);
        let cfg = parse("[retention.documents]\nfull = \"90d\"\nweekly = 4").expect("valid");
        assert_eq!(
            cfg.retention.documents.full,
            Duration::from_secs(90 * 86400)
        );
        assert_eq!(cfg.retention.documents.weekly, 4);
        assert_eq!(cfg.retention.documents.monthly, 12, "the rest defaults");
        let err = parse("[retention.database]\nincremental = \"60d\"").expect_err("longer");
        assert!(err.contains("retention.incremental"), "{err}");
        let err = parse("[retention.database]\nful = \"1d\"").expect_err("typo");
        assert!(err.contains("ful"), "{err}");
        assert_eq!(cfg.retention.schedule, "0 1 * * *");
        let err = parse("[retention]\nschedule = \"0 1 * *\"").expect_err("four fields");
        assert!(err.contains("retention.schedule"), "{err}");
        assert!(parse("[retention]\nschedule = \"off\"").is_ok());
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

    fn dns(section: &str, base: &Path) -> Result<CoordinatorConfig, String> {
        let text = format!("{TLS}[dns]\n{section}");
        CoordinatorConfigFile::parse(&text, Path::new("x.toml"))
            .map_err(|e| e.to_string())
            .and_then(|f| f.validate(base).map_err(|e| e.to_string()))
    }

    #[test]
    fn dns_embedded_defaults() {
        let cfg = dns("record = \"DB.drmesh.test\"\n", Path::new("/")).expect("valid");
        let d = cfg.dns.expect("dns");
        assert_eq!(d.record, "db.drmesh.test.");
        assert_eq!(d.ttl, 60);
        assert_eq!(
            d.provider,
            DnsProviderConfig::Embedded {
                listen: "127.0.0.1:5300".parse().expect("addr"),
                zone: "drmesh.test.".into(),
                initial: None,
            }
        );
        let none = CoordinatorConfigFile::parse(TLS, Path::new("x.toml"))
            .expect("parse")
            .validate(Path::new("/"))
            .expect("valid");
        assert_eq!(none.dns, None);
    }

    #[test]
    fn dns_rfc2136_reads_the_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("k.key"),
            "key \"drmesh-key\" {\n\talgorithm hmac-sha512;\n\tsecret \"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ==\";\n};\n",
        )
        .expect("write key");
        let section = "provider = \"rfc2136\"\nrecord = \"db.drmesh.test.\"\nttl = 30\nzone = \"drmesh.test\"\nserver = \"127.0.0.1:5353\"\ntsig_key_name = \"drmesh-key\"\ntsig_secret_file = \"k.key\"\n";
        let d = dns(section, dir.path()).expect("valid").dns.expect("dns");
        assert_eq!(d.ttl, 30);
        assert_eq!(
            d.provider,
            DnsProviderConfig::Rfc2136 {
                server: "127.0.0.1:5353".parse().expect("addr"),
                zone: "drmesh.test.".into(),
                tsig_key_name: "drmesh-key.".into(),
                tsig_algorithm: TsigAlgorithmName::HmacSha512,
                tsig_secret_file: dir.path().join("k.key"),
                authoritative: vec!["127.0.0.1:5353".parse().expect("addr")],
            }
        );
        let with_list = format!("{section}authoritative = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n");
        let d = dns(&with_list, dir.path())
            .expect("valid")
            .dns
            .expect("dns");
        let DnsProviderConfig::Rfc2136 { authoritative, .. } = d.provider else {
            panic!("rfc2136");
        };
        assert_eq!(authoritative.len(), 2);
    }

    #[test]
    fn dns_mistakes_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("bad.key"), "not-base64!\n").expect("write");
        let rfc = "provider = \"rfc2136\"\nrecord = \"db.drmesh.test\"\nzone = \"drmesh.test\"\nserver = \"127.0.0.1:53\"\ntsig_key_name = \"k\"\n";
        for (section, names) in [
            ("ttl = 60\n", "record is required"),
            (
                "record = \"db.drmesh.test\"\nzone = \"other.test\"\n",
                "not inside zone",
            ),
            ("record = \"db.drmesh.test\"\nttl = 0\n", "ttl"),
            ("record = \"db..test\"\n", "record"),
            (
                "record = \"db.drmesh.test\"\nserver = \"127.0.0.1:53\"\n",
                "server does not apply to provider embedded",
            ),
            (
                "record = \"db.drmesh.test\"\nprovider = \"route53\"\n",
                "hosted_zone_id is required for route53",
            ),
            (
                "record = \"db.drmesh.test\"\nprovider = \"cloudflare\"\n",
                "cloudflare",
            ),
            (
                "record = \"db.drmesh.test\"\nhosted_zone_id = \"Z1\"\n",
                "hosted_zone_id does not apply to provider embedded",
            ),
            ("record = \"db.drmesh.test\"\nrecrod = 1\n", "recrod"),
            (
                &format!("{rfc}tsig_secret_file = \"missing.key\"\n"),
                "missing.key",
            ),
            (&format!("{rfc}tsig_secret_file = \"bad.key\"\n"), "base64"),
            (rfc, "tsig_secret_file is required"),
            (
                &format!("{rfc}tsig_secret_file = \"bad.key\"\nlisten = \"127.0.0.1:53\"\n"),
                "listen does not apply",
            ),
            (
                "provider = \"rfc2136\"\nrecord = \"db.drmesh.test\"\n",
                "server",
            ),
        ] {
            let err = dns(section, dir.path()).expect_err(section);
            assert!(err.contains(names), "{section}: {err}");
        }
    }

    #[test]
    fn dns_route53_defaults_credentials_and_mistakes() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("aws.secret"), "wJalrXUtnFEMI/K7MDENG\n").expect("write");
        let base = "provider = \"route53\"\nrecord = \"DB.drmesh.example.com\"\n";
        let d = dns(
            &format!("{base}hosted_zone_id = \"/hostedzone/Z0123456789ABC\"\n"),
            dir.path(),
        )
        .expect("valid")
        .dns
        .expect("dns");
        assert_eq!(d.record, "db.drmesh.example.com.");
        assert_eq!(d.ttl, 60);
        assert_eq!(
            d.provider,
            DnsProviderConfig::Route53 {
                hosted_zone_id: "Z0123456789ABC".into(),
                endpoint: "https://route53.amazonaws.com".into(),
                region: "us-east-1".into(),
                access_key_id: None,
                secret_access_key_file: None,
                authoritative: vec![],
            }
        );
        let full = format!(
            "{base}ttl = 30\nhosted_zone_id = \"Z1\"\nendpoint = \"http://127.0.0.1:5000/\"\nregion = \"eu-west-1\"\naccess_key_id = \"AKIDEXAMPLE\"\nsecret_access_key_file = \"aws.secret\"\nauthoritative = [\"205.251.192.1:53\", \"205.251.194.2:53\"]\n"
        );
        let d = dns(&full, dir.path()).expect("valid").dns.expect("dns");
        assert_eq!(d.ttl, 30);
        assert_eq!(
            d.provider,
            DnsProviderConfig::Route53 {
                hosted_zone_id: "Z1".into(),
                endpoint: "http://127.0.0.1:5000".into(),
                region: "eu-west-1".into(),
                access_key_id: Some("AKIDEXAMPLE".into()),
                secret_access_key_file: Some(dir.path().join("aws.secret")),
                authoritative: vec![
                    "205.251.192.1:53".parse().expect("addr"),
                    "205.251.194.2:53".parse().expect("addr"),
                ],
            }
        );
        // The secret is neither in the checked configuration nor in its Debug.
        assert!(!format!("{d:?}").contains("wJalrXUtnFEMI"));

        let zone = "hosted_zone_id = \"Z1\"\n";
        for (section, names) in [
            (
                format!("{base}hosted_zone_id = \"Z 1\"\n"),
                "not a hosted zone id",
            ),
            (
                format!("{base}{zone}endpoint = \"route53.amazonaws.com\"\n"),
                "endpoint",
            ),
            (
                format!("{base}{zone}endpoint = \"https://h/x\"\n"),
                "no path",
            ),
            (format!("{base}{zone}region = \"US East\"\n"), "region"),
            (
                format!("{base}{zone}access_key_id = \"AKID\"\n"),
                "needs secret_access_key_file",
            ),
            (
                format!("{base}{zone}secret_access_key_file = \"aws.secret\"\n"),
                "needs access_key_id",
            ),
            (
                format!(
                    "{base}{zone}access_key_id = \"AKID\"\nsecret_access_key_file = \"missing\"\n"
                ),
                "missing",
            ),
            (
                format!("{base}{zone}authoritative = []\n"),
                "at least one server",
            ),
            (
                format!("{base}{zone}zone = \"drmesh.example.com\"\n"),
                "zone does not apply to provider route53",
            ),
            (
                format!("{base}{zone}server = \"127.0.0.1:53\"\n"),
                "server does not apply to provider route53",
            ),
            (
                format!("{base}{zone}listen = \"127.0.0.1:53\"\n"),
                "listen does not apply",
            ),
        ] {
            let err = dns(&section, dir.path()).expect_err(&section);
            assert!(err.contains(names), "{section}: {err}");
        }
        // Route 53 keys are refused for the other providers.
        let err = dns(
            "record = \"db.drmesh.test\"\nendpoint = \"http://127.0.0.1:1\"\n",
            dir.path(),
        )
        .expect_err("embedded");
        assert!(
            err.contains("endpoint does not apply to provider embedded"),
            "{err}"
        );
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
