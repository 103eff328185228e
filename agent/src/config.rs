//! `agent.toml`: the file as written (every key documented with its default) and the
//! checked configuration.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use drmesh_protocol::tls::TlsFiles;
use drmesh_protocol::{AgentId, RegionId};
use serde::Deserialize;

pub use drmesh_protocol::config::{ConfigError, LogFormat};

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
    /// `ip:port` where clients (and the coordinator's health check) reach this server;
    /// what the database's DNS name points at after a failover. Default: the conninfo's
    /// `host`/`hostaddr` and `port` when the host is an IP address.
    pub advertise: Option<SocketAddr>,
}

/// One place document backups go (`[[documents.locations]]`).
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocationFile {
    /// Short name shown in statuses, e.g. `local`, `azure`, `s3`. Required.
    pub name: Option<String>,
    /// Repository URL: a path (relative to this file), `s3://bucket/prefix`,
    /// `az://container/prefix`, `gs://bucket/prefix`. `{yyyy}` and `{mm}` are replaced
    /// by the backup's year and month, so `s3://b/document-backups/{yyyy}/{mm}` gives
    /// the runbook's layout (one repository per month). Required.
    pub url: Option<String>,
    /// Object-store options: `endpoint`, `region`, `allow_http`, `access_key_id`,
    /// `secret_access_key` (S3); `account_name`, `access_key`, `endpoint` (Azure).
    /// Anything not given comes from the environment (`AWS_*`, `AZURE_*`).
    pub options: std::collections::BTreeMap<String, String>,
    /// The space this location may use, e.g. `"500 GiB"`, for object stores, which have
    /// no free space to watch: past `storage_full_percent` of it the coordinator raises
    /// Storage Full. Default: none (local paths report their filesystem's free space).
    pub quota: Option<String>,
}

impl std::fmt::Debug for LocationFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self.options.keys().collect();
        write!(
            f,
            "LocationFile({:?}, {:?}, options: {keys:?})",
            self.name, self.url
        )
    }
}

/// `[documents]`: the uploads directory and where its backups go.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DocumentsFile {
    /// The uploads directory to back up. Required when `[documents]` is present.
    pub source: Option<PathBuf>,
    /// Key file (at least 16 bytes) for encryption at rest in every location. Default:
    /// none. Once a repository is encrypted, a missing key fails every backup.
    pub key_file: Option<PathBuf>,
    /// Keep the newest backup also as `docs_<id>.tar.gz` + `docs_latest.tar.gz` with
    /// `docs_<id>/MANIFEST.json`, for a restore with `tar` alone. Default `true`.
    pub keep_latest_archive: Option<bool>,
    /// Where those archives go. Default `<data_dir>/backups/documents/snapshots`.
    pub archive_dir: Option<PathBuf>,
    /// Default target of restores (`<restore_dir>/<backupId>`). Default
    /// `<data_dir>/restores`.
    pub restore_dir: Option<PathBuf>,
    /// At least one; the first is the primary (the backup is written there, then copied
    /// to the others).
    pub locations: Vec<LocationFile>,
    /// This agent's retention policy for its document locations (`full`, `incremental`,
    /// `weekly`, `monthly`, `yearly`), replacing the coordinator's `[retention.documents]`
    /// when the policies are enforced. Default: none (the coordinator's).
    pub retention: Option<drmesh_protocol::retention::RetentionPolicy>,
}

/// A checked document location.
#[derive(Clone, Debug, PartialEq)]
pub struct DocumentLocation {
    pub name: String,
    /// May hold `{yyyy}` / `{mm}`.
    pub url: String,
    pub options: std::collections::BTreeMap<String, String>,
    /// Bytes this location may use (`quota`).
    pub quota: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DocumentsConfig {
    pub source: PathBuf,
    pub key_file: Option<PathBuf>,
    pub keep_latest_archive: bool,
    pub archive_dir: PathBuf,
    pub restore_dir: PathBuf,
    pub locations: Vec<DocumentLocation>,
    pub retention: Option<drmesh_protocol::retention::RetentionPolicy>,
}

impl DocumentsFile {
    fn validate(self, base: &Path, data_dir: &Path) -> Result<DocumentsConfig, ConfigError> {
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let source = abs(required(self.source, "documents.source")?);
        if self.locations.is_empty() {
            return Err(ConfigError::Invalid(
                "[documents] needs at least one [[documents.locations]]".into(),
            ));
        }
        let locations = validate_locations(self.locations, "documents.locations", base)?;
        Ok(DocumentsConfig {
            source,
            key_file: self.key_file.map(abs),
            keep_latest_archive: self.keep_latest_archive.unwrap_or(true),
            archive_dir: self
                .archive_dir
                .map(abs)
                .unwrap_or_else(|| data_dir.join("backups/documents/snapshots")),
            restore_dir: self
                .restore_dir
                .map(abs)
                .unwrap_or_else(|| data_dir.join("restores")),
            locations,
            retention: checked_retention(self.retention, "documents.retention")?,
        })
    }
}

/// A repository's own retention policy, checked like the coordinator's.
fn checked_retention(
    policy: Option<drmesh_protocol::retention::RetentionPolicy>,
    key: &str,
) -> Result<Option<drmesh_protocol::retention::RetentionPolicy>, ConfigError> {
    if let Some(p) = &policy {
        p.validate()
            .map_err(|e| ConfigError::Invalid(format!("{key}: {e}")))?;
    }
    Ok(policy)
}

/// Checks a list of locations (`[[documents.locations]]`, `[[database.replicas]]`):
/// names unique and plain, URLs present (a path is relative to the file), quotas readable.
fn validate_locations(
    list: Vec<LocationFile>,
    key: &str,
    base: &Path,
) -> Result<Vec<DocumentLocation>, ConfigError> {
    let mut locations: Vec<DocumentLocation> = Vec::new();
    for (i, l) in list.into_iter().enumerate() {
        let name = required(l.name, &format!("{key}[{i}].name"))?;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::Invalid(format!(
                "{key}[{i}].name {name:?}: letters, digits, '-' and '_' only"
            )));
        }
        if locations.iter().any(|x| x.name == name) {
            return Err(ConfigError::Invalid(format!(
                "{key}: {name:?} appears twice"
            )));
        }
        let url = required(l.url, &format!("{key}[{i}].url"))?;
        let url = if url.contains("://") || Path::new(&url).is_absolute() {
            url
        } else {
            base.join(&url).to_string_lossy().into_owned()
        };
        let quota = match l.quota.as_deref() {
            None => None,
            Some(text) => match text.parse::<bytesize::ByteSize>() {
                Ok(q) if q.as_u64() > 0 => Some(q.as_u64()),
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "{key}[{i}].quota {text:?}: a size such as \"500 GiB\" or \"2 TB\""
                    )))
                }
            },
        };
        locations.push(DocumentLocation {
            name,
            url,
            options: l.options,
            quota,
        });
    }
    Ok(locations)
}

/// `[database]`: the PostgreSQL data directory this agent backs up and archives WAL of,
/// and the repository that holds them.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseFile {
    /// The cluster's data directory (PGDATA). Required.
    pub data_dir: Option<PathBuf>,
    /// Repository URL: a path, `s3://…`, `az://…` or `gs://…`. Default:
    /// `<data_dir of the agent>/backups/database`.
    pub repository: Option<String>,
    /// Object-store options for `repository` (endpoint, region, credentials, …).
    pub options: std::collections::BTreeMap<String, String>,
    /// Key file: when set, the repository is encrypted and unusable without it.
    pub key_file: Option<PathBuf>,
    /// How long a backup waits for its WAL to reach the archive before it fails
    /// naming the missing segment. Default 60s.
    #[serde(with = "humantime_serde")]
    pub archive_timeout: Option<Duration>,
    /// Allow base backups of a standby (files read on the standby; the primary named in
    /// its `primary_conninfo` is asked to switch WAL segment so the backup's last
    /// segment gets archived). Default false: a standby is refused.
    pub backup_standby: Option<bool>,
    /// Directory of PostgreSQL's programs (`pg_ctl`) for point-in-time recoveries.
    /// Default: `$DRMESH_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
    pub pg_bin_dir: Option<PathBuf>,
    /// How long a point-in-time recovery may replay WAL before it is given up. Default 1h.
    #[serde(with = "humantime_serde")]
    pub recovery_timeout: Option<Duration>,
    /// `[database.environments.<name>]`: where a point-in-time recovery into `<name>`
    /// (e.g. `staging`, `forensics`) goes. Its directory is replaced by each recovery.
    pub environments: std::collections::BTreeMap<String, EnvironmentFile>,
    /// Record every user table's row count (in the connected database) at each base
    /// backup's stop point, for the restorability test to compare. Default true.
    pub count_rows: Option<bool>,
    /// How long counting one table may take before it is skipped (with a note).
    /// Default 10s.
    #[serde(with = "humantime_serde")]
    pub count_rows_timeout: Option<Duration>,
    /// `[[database.smoke_checks]]`: queries the restorability test runs on the restored
    /// server, each with the text its first row's first column must equal.
    pub smoke_checks: Vec<SmokeCheckFile>,
    /// This agent's retention policy for its database repository, replacing the
    /// coordinator's `[retention.database]` when the policies are enforced. Default:
    /// none (the coordinator's).
    pub retention: Option<drmesh_protocol::retention::RetentionPolicy>,
    /// `[[database.replicas]]`: more locations (same keys as `[[documents.locations]]`,
    /// no date template) every base backup and WAL segment is copied to, verified there,
    /// and caught up by themselves after an outage. Default: none.
    pub replicas: Vec<LocationFile>,
}

/// `[[database.smoke_checks]]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmokeCheckFile {
    /// One SQL statement. Required.
    pub sql: Option<String>,
    /// Its first row's first column, as text (`""` for no row or NULL). Required.
    pub expect: Option<String>,
}

/// A query the restorability test runs, and the answer it must give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmokeCheck {
    pub sql: String,
    pub expect: String,
}

/// `[database.environments.<name>]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnvironmentFile {
    /// The data directory a recovery creates (and replaces). Required.
    pub data_dir: Option<PathBuf>,
    /// The port the recovered server listens on. Required.
    pub port: Option<u16>,
    /// The addresses it listens on (PostgreSQL's `listen_addresses`), whatever the
    /// backed-up server's configuration said: that server's addresses may not exist on
    /// this host. Default `127.0.0.1`. The agent reaches it at the first one
    /// (`127.0.0.1` for `*`, `0.0.0.0` or `localhost`).
    pub listen_addresses: Option<String>,
}

/// A target environment for point-in-time recoveries.
#[derive(Clone, Debug, PartialEq)]
pub struct Environment {
    pub data_dir: PathBuf,
    pub port: u16,
    pub listen_addresses: String,
}

impl Environment {
    /// Where the agent reaches the recovered server: the first listen address, or
    /// loopback for a wildcard or `localhost`.
    pub fn host(&self) -> String {
        match self.listen_addresses.split(',').map(str::trim).next() {
            Some("*" | "0.0.0.0" | "localhost" | "") | None => "127.0.0.1".into(),
            Some("::") => "::1".into(),
            Some(first) => first.to_string(),
        }
    }
}

impl std::fmt::Debug for DatabaseFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self.options.keys().collect();
        write!(
            f,
            "DatabaseFile({:?}, {:?}, options: {keys:?})",
            self.data_dir, self.repository
        )
    }
}

#[derive(Clone, PartialEq)]
pub struct DatabaseConfig {
    pub data_dir: PathBuf,
    pub repository: String,
    pub options: std::collections::BTreeMap<String, String>,
    pub key_file: Option<PathBuf>,
    pub archive_timeout: Duration,
    pub backup_standby: bool,
    pub pg_bin_dir: Option<PathBuf>,
    pub recovery_timeout: Duration,
    pub environments: std::collections::BTreeMap<String, Environment>,
    pub count_rows: bool,
    pub count_rows_timeout: Duration,
    pub smoke_checks: Vec<SmokeCheck>,
    pub replicas: Vec<DocumentLocation>,
    pub retention: Option<drmesh_protocol::retention::RetentionPolicy>,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self.options.keys().collect();
        write!(
            f,
            "DatabaseConfig({:?}, {:?}, key_file: {:?}, options: {keys:?})",
            self.data_dir, self.repository, self.key_file
        )
    }
}

impl DatabaseFile {
    fn validate(self, base: &Path, data_dir: &Path) -> Result<DatabaseConfig, ConfigError> {
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let pgdata = abs(required(self.data_dir, "database.data_dir")?);
        let repository = match self.repository {
            Some(url) if url.contains("://") => url,
            Some(path) => abs(PathBuf::from(path)).to_string_lossy().into_owned(),
            None => data_dir
                .join("backups/database")
                .to_string_lossy()
                .into_owned(),
        };
        let archive_timeout = self.archive_timeout.unwrap_or(Duration::from_secs(60));
        if archive_timeout < Duration::from_secs(1) || archive_timeout > Duration::from_secs(3600) {
            return Err(ConfigError::Invalid(
                "database.archive_timeout must be between 1s and 1h".into(),
            ));
        }
        let mut environments = std::collections::BTreeMap::new();
        for (name, env) in self.environments {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError::Invalid(format!(
                    "database.environments.{name:?}: letters, digits, '-' and '_' only"
                )));
            }
            let data_dir = abs(required(
                env.data_dir,
                &format!("database.environments.{name}.data_dir"),
            )?);
            if data_dir == pgdata {
                return Err(ConfigError::Invalid(format!(
                    "database.environments.{name}.data_dir is the production data directory; \
                     a recovery replaces its environment's directory"
                )));
            }
            let port = required(env.port, &format!("database.environments.{name}.port"))?;
            let listen_addresses = env
                .listen_addresses
                .unwrap_or_else(|| "127.0.0.1".into())
                .trim()
                .to_string();
            if listen_addresses.is_empty()
                || !listen_addresses
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".:,*- _".contains(c))
            {
                return Err(ConfigError::Invalid(format!(
                    "database.environments.{name}.listen_addresses {listen_addresses:?} is not \
                     a list of host names or addresses"
                )));
            }
            environments.insert(
                name,
                Environment {
                    data_dir,
                    port,
                    listen_addresses,
                },
            );
        }
        let recovery_timeout = self.recovery_timeout.unwrap_or(Duration::from_secs(3600));
        let count_rows_timeout = self.count_rows_timeout.unwrap_or(Duration::from_secs(10));
        if count_rows_timeout < Duration::from_millis(10)
            || count_rows_timeout > Duration::from_secs(3600)
        {
            return Err(ConfigError::Invalid(
                "database.count_rows_timeout must be between 10ms and 1h".into(),
            ));
        }
        let mut smoke_checks = Vec::new();
        for (i, c) in self.smoke_checks.into_iter().enumerate() {
            let key = format!("database.smoke_checks[{i}]");
            let sql = required(c.sql, &format!("{key}.sql"))?;
            if sql.trim().is_empty() {
                return Err(ConfigError::Invalid(format!("{key}.sql is empty")));
            }
            let expect = required(c.expect, &format!("{key}.expect"))?;
            smoke_checks.push(SmokeCheck { sql, expect });
        }
        let replicas = validate_locations(self.replicas, "database.replicas", base)?;
        if let Some(r) = replicas.iter().find(|r| r.url.contains('{')) {
            return Err(ConfigError::Invalid(format!(
                "database.replicas {:?}: a database replica's url has no date template",
                r.name
            )));
        }
        Ok(DatabaseConfig {
            data_dir: pgdata,
            repository,
            options: self.options,
            key_file: self.key_file.map(abs),
            archive_timeout,
            backup_standby: self.backup_standby.unwrap_or(false),
            pg_bin_dir: self.pg_bin_dir.map(abs),
            recovery_timeout,
            environments,
            count_rows: self.count_rows.unwrap_or(true),
            count_rows_timeout,
            smoke_checks,
            replicas,
            retention: checked_retention(self.retention, "database.retention")?,
        })
    }
}

/// `[archive]`: the cold archive that enforcing the retention policies moves the
/// monthly and yearly picks of the database repository to (one self-contained
/// `.tar.zst` per snapshot, see `repo::archive`). Without it they stay in the repository.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveFile {
    /// Archive URL: a path (relative to this file), `s3://bucket/prefix`,
    /// `az://container/prefix`, `gs://bucket/prefix`. Required.
    pub url: Option<String>,
    /// Object-store options, as for `[[documents.locations]]` (`endpoint`, `region`,
    /// `access_key_id`, …).
    pub options: std::collections::BTreeMap<String, String>,
    /// Storage class of the archived objects, e.g. `DEEP_ARCHIVE`, `GLACIER_IR`,
    /// `STANDARD_IA` (S3), `Cool`/`Archive` (Azure), `ARCHIVE` (GCS). Default: the
    /// bucket's default class. Ignored by a local path.
    pub storage_class: Option<String>,
    /// Key file the archived objects are encrypted with. Default: `database.key_file`,
    /// the repository's key; objects are plain `.tar.zst` only when neither is set.
    pub key_file: Option<PathBuf>,
}

impl std::fmt::Debug for ArchiveFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self.options.keys().collect();
        write!(f, "ArchiveFile({:?}, options: {keys:?})", self.url)
    }
}

/// The checked `[archive]`.
#[derive(Clone, PartialEq)]
pub struct ArchiveConfig {
    pub url: String,
    pub options: std::collections::BTreeMap<String, String>,
    pub storage_class: Option<String>,
    pub key_file: Option<PathBuf>,
}

impl std::fmt::Debug for ArchiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self.options.keys().collect();
        write!(
            f,
            "ArchiveConfig({:?}, storage_class: {:?}, key_file: {:?}, options: {keys:?})",
            self.url, self.storage_class, self.key_file
        )
    }
}

impl ArchiveFile {
    fn validate(
        self,
        base: &Path,
        database: Option<&DatabaseConfig>,
    ) -> Result<ArchiveConfig, ConfigError> {
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let url = required(self.url, "archive.url")?;
        if url.trim().is_empty() {
            return Err(ConfigError::Invalid("archive.url is empty".into()));
        }
        let url = if url.contains("://") {
            url
        } else {
            abs(PathBuf::from(&url)).to_string_lossy().into_owned()
        };
        if let Some(class) = &self.storage_class {
            if class.is_empty() || !class.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ConfigError::Invalid(format!(
                    "archive.storage_class {class:?}: letters, digits and '_' only"
                )));
            }
        }
        Ok(ArchiveConfig {
            url,
            options: self.options,
            storage_class: self.storage_class,
            key_file: self
                .key_file
                .map(abs)
                .or_else(|| database.and_then(|d| d.key_file.clone())),
        })
    }
}

impl ArchiveConfig {
    /// How `repo::archive::ColdArchive::open` reaches it.
    pub fn archive_options(&self) -> drmesh_repo::ArchiveOptions {
        let mut location = drmesh_repo::Location::new(self.url.clone());
        location.options = self.options.clone();
        drmesh_repo::ArchiveOptions {
            location,
            key: match &self.key_file {
                Some(f) => drmesh_repo::KeySource::KeyFile(f.clone()),
                None => drmesh_repo::KeySource::None,
            },
            storage_class: self.storage_class.clone(),
        }
    }
}

/// The TOML file. Unknown keys are refused.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfigFile {
    /// This agent's id. Must equal the common name of its certificate. Required.
    pub id: Option<String>,
    /// Region this agent runs in. Must equal its certificate's region. Required.
    pub region: Option<String>,
    /// Coordinator QUIC address `host:port`. Required, unless `coordinators` is set.
    pub coordinator: Option<String>,
    /// Every coordinator's QUIC address `host:port`, when several share an etcd store:
    /// the agent connects to one, is sent on to the leader by a follower, and tries the
    /// next when one does not answer. Default: `[coordinator]`.
    pub coordinators: Option<Vec<String>>,
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
    /// Document backups, if this host holds the uploads directory.
    pub documents: Option<DocumentsFile>,
    /// `[database]`: base backups and the WAL archive (see [`DatabaseFile`]).
    pub database: Option<DatabaseFile>,
    /// `[archive]`: the cold archive (see [`ArchiveFile`]).
    pub archive: Option<ArchiveFile>,
    /// UDP `ip:port` where the agent answers its peers' probes (the mesh). Default
    /// `127.0.0.1:0` (a free port, loopback only: set it on multi-host meshes).
    pub mesh_listen: Option<SocketAddr>,
    /// The IP peers reach this agent (and its PostgreSQL) at on the mesh network.
    /// Default: the IP of `mesh_listen`, which must then not be `0.0.0.0`/`::`.
    pub mesh_advertise: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PostgresConfig {
    pub conninfo: String,
    pub probe_timeout: Duration,
    /// Where clients reach the server, if known.
    pub advertise: Option<SocketAddr>,
}

/// The checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    pub id: AgentId,
    pub region: RegionId,
    pub coordinator: String,
    /// `coordinator` first, then the rest of `coordinators`.
    pub coordinators: Vec<String>,
    pub coordinator_name: String,
    pub heartbeat_interval: Duration,
    pub reconnect_max_backoff: Duration,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub tls: TlsFiles,
    pub postgres: Option<PostgresConfig>,
    pub documents: Option<DocumentsConfig>,
    pub database: Option<DatabaseConfig>,
    pub archive: Option<ArchiveConfig>,
    pub mesh_listen: SocketAddr,
    /// The IP peers reach this agent at.
    pub mesh_ip: IpAddr,
    /// The file this was loaded from (the agent runs its one-shot commands with it).
    pub path: Option<PathBuf>,
}

fn required<T>(value: Option<T>, key: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| ConfigError::Invalid(format!("`{key}` is required")))
}

impl AgentConfigFile {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        drmesh_protocol::config::parse_toml(text, path)
    }

    pub fn validate(self, base: &Path) -> Result<AgentConfig, ConfigError> {
        let id = AgentId::new(required(self.id, "id")?)
            .map_err(|e| ConfigError::Invalid(format!("id: {e}")))?;
        let region = RegionId::new(required(self.region, "region")?)
            .map_err(|e| ConfigError::Invalid(format!("region: {e}")))?;
        let mut coordinators: Vec<String> = self.coordinator.clone().into_iter().collect();
        for c in self.coordinators.clone().unwrap_or_default() {
            if !coordinators.contains(&c) {
                coordinators.push(c);
            }
        }
        for c in &coordinators {
            if !c
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            {
                return Err(ConfigError::Invalid(format!(
                    "coordinator {c:?} must be host:port"
                )));
            }
        }
        let coordinator = match coordinators.first() {
            Some(c) => c.clone(),
            None => required(self.coordinator, "coordinator")?,
        };
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
            Some(pg) => {
                let conninfo = required(pg.conninfo, "postgres.conninfo")?;
                let advertise = match pg.advertise {
                    Some(a) => Some(a),
                    None => conninfo_addr(&conninfo)?,
                };
                Some(PostgresConfig {
                    conninfo,
                    probe_timeout: pg.probe_timeout.unwrap_or(Duration::from_secs(2)),
                    advertise,
                })
            }
        };
        let mesh_listen = self
            .mesh_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let mesh_ip = match self.mesh_advertise {
            Some(ip) if ip.is_unspecified() => {
                return Err(ConfigError::Invalid(format!(
                    "mesh_advertise {ip} is not an address peers can reach"
                )))
            }
            Some(ip) => ip,
            None if mesh_listen.ip().is_unspecified() => {
                return Err(ConfigError::Invalid(format!(
                    "mesh_listen is {mesh_listen}: set mesh_advertise to the IP peers reach this agent at"
                )))
            }
            None => mesh_listen.ip(),
        };
        let data_dir = abs(self.data_dir.unwrap_or_else(|| PathBuf::from(".")));
        let documents = self
            .documents
            .map(|d| d.validate(base, &data_dir))
            .transpose()?;
        let database = self
            .database
            .map(|d| d.validate(base, &data_dir))
            .transpose()?;
        let archive = self
            .archive
            .map(|a| a.validate(base, database.as_ref()))
            .transpose()?;
        Ok(AgentConfig {
            id,
            region,
            coordinator_name: self.coordinator_name.unwrap_or(host),
            coordinator,
            coordinators,
            heartbeat_interval,
            reconnect_max_backoff,
            data_dir,
            log_format: self.log_format.unwrap_or_default(),
            tls: TlsFiles {
                ca_cert: abs(tls.ca_cert),
                cert: abs(tls.cert),
                key: abs(tls.key),
            },
            postgres,
            documents,
            database,
            archive,
            mesh_listen,
            mesh_ip,
            path: None,
        })
    }
}

/// The server address a conninfo names, when its host is an IP address (a socket
/// directory or a host name gives none).
fn conninfo_addr(conninfo: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let config: tokio_postgres::Config = conninfo
        .parse()
        .map_err(|e| ConfigError::Invalid(format!("postgres.conninfo: {e}")))?;
    let port = config.get_ports().first().copied().unwrap_or(5432);
    if let Some(ip) = config.get_hostaddrs().first() {
        return Ok(Some(SocketAddr::new(*ip, port)));
    }
    Ok(config.get_hosts().first().and_then(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => name
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, port)),
        #[allow(unreachable_patterns)]
        _ => None,
    }))
}

impl AgentConfig {
    /// The files holding secrets this configuration names: the TLS key and the
    /// repositories' key files (checked for their modes at start).
    pub fn secret_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.tls.key.clone()];
        files.extend(self.documents.as_ref().and_then(|d| d.key_file.clone()));
        files.extend(self.database.as_ref().and_then(|d| d.key_file.clone()));
        files.extend(self.archive.as_ref().and_then(|a| a.key_file.clone()));
        files.sort();
        files.dedup();
        files
    }

    /// Where peers reach this agent's PostgreSQL on the mesh network: the mesh IP and
    /// the server's port.
    pub fn postgres_mesh_addr(&self) -> Option<SocketAddr> {
        let port = self.postgres.as_ref()?.advertise?.port();
        Some(SocketAddr::new(self.mesh_ip, port))
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = drmesh_protocol::config::read(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = AgentConfigFile::parse(&text, path)?.validate(base)?;
        config.path = Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
        Ok(config)
    }

    /// Resolves `coordinator` to a socket address.
    pub fn coordinator_addr(&self) -> std::io::Result<SocketAddr> {
        resolve(&self.coordinator)
    }
}

/// The first address `host:port` resolves to.
pub fn resolve(host_port: &str) -> std::io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    host_port.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host_port} resolves to no address"),
        )
    })
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
                probe_timeout: Duration::from_secs(1),
                advertise: None,
            })
        );
        let err = AgentConfigFile::parse(&format!("{BASE}[postgres]\n"), Path::new("a.toml"))
            .expect("parse")
            .validate(Path::new("/"))
            .expect_err("conninfo required");
        assert!(err.to_string().contains("postgres.conninfo"), "{err}");
    }

    #[test]
    fn mesh_and_advertised_addresses() {
        let parse = |text: &str| {
            AgentConfigFile::parse(text, Path::new("a.toml"))
                .expect("parse")
                .validate(Path::new("/"))
        };
        let cfg = parse(&format!(
            "{BASE}[postgres]\nconninfo = \"host=10.0.0.5 port=5433 user=postgres\"\n"
        ))
        .expect("valid");
        assert_eq!(cfg.mesh_listen, "127.0.0.1:0".parse().expect("addr"));
        assert_eq!(
            cfg.postgres.as_ref().and_then(|p| p.advertise),
            Some("10.0.0.5:5433".parse().expect("addr"))
        );
        assert_eq!(
            cfg.postgres_mesh_addr(),
            Some("127.0.0.1:5433".parse().expect("addr"))
        );
        // A socket directory gives no address; `advertise` does.
        let cfg = parse(&format!(
            "mesh_listen = \"0.0.0.0:7444\"\nmesh_advertise = \"10.1.0.7\"\n{BASE}[postgres]\nconninfo = \"host=/run/postgresql\"\n"
        ))
        .expect("valid");
        assert_eq!(cfg.postgres.as_ref().and_then(|p| p.advertise), None);
        assert_eq!(cfg.mesh_ip, "10.1.0.7".parse::<IpAddr>().expect("ip"));
        let cfg = parse(&format!(
            "{BASE}[postgres]\nconninfo = \"host=/run/postgresql\"\nadvertise = \"10.1.0.7:5432\"\n"
        ))
        .expect("valid");
        assert_eq!(
            cfg.postgres.as_ref().and_then(|p| p.advertise),
            Some("10.1.0.7:5432".parse().expect("addr"))
        );
        // A wildcard listener needs the address peers use.
        let err =
            parse(&format!("mesh_listen = \"0.0.0.0:7444\"\n{BASE}")).expect_err("no advertise");
        assert!(err.to_string().contains("mesh_advertise"), "{err}");
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
    fn documents_section() {
        let text = format!(
            "data_dir = \"/var/lib/drmesh\"\n{BASE}[documents]\nsource = \"/srv/uploads\"\n[[documents.locations]]\nname = \"local\"\nurl = \"backups/repo\"\n[[documents.locations]]\nname = \"s3\"\nurl = \"s3://b/document-backups/{{yyyy}}/{{mm}}\"\noptions = {{ region = \"us-east-1\", secret_access_key = \"hush\" }}\n"
        );
        let cfg = AgentConfigFile::parse(&text, Path::new("a.toml"))
            .expect("parse")
            .validate(Path::new("/etc/drmesh"))
            .expect("valid");
        let docs = cfg.documents.expect("documents");
        assert_eq!(docs.source, PathBuf::from("/srv/uploads"));
        assert!(docs.keep_latest_archive);
        assert_eq!(
            docs.archive_dir,
            PathBuf::from("/var/lib/drmesh/backups/documents/snapshots")
        );
        assert_eq!(docs.locations[0].url, "/etc/drmesh/backups/repo");
        assert_eq!(docs.locations[1].options["region"], "us-east-1");
        assert!(!format!(
            "{:?}",
            AgentConfigFile::parse(&text, Path::new("a.toml")).expect("parse")
        )
        .contains("hush"));
        for bad in [
            "[documents]\nsource = \"/x\"\n",
            "[documents]\n[[documents.locations]]\nname = \"a\"\nurl = \"/r\"\n",
            "[documents]\nsource = \"/x\"\n[[documents.locations]]\nname = \"a b\"\nurl = \"/r\"\n",
            "[documents]\nsource = \"/x\"\n[[documents.locations]]\nname = \"a\"\nurl = \"/r\"\n[[documents.locations]]\nname = \"a\"\nurl = \"/q\"\n",
        ] {
            let text = format!("{BASE}{bad}");
            assert!(
                AgentConfigFile::parse(&text, Path::new("a.toml"))
                    .expect("parse")
                    .validate(Path::new("/"))
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn replicas_quotas_and_a_repository_s_own_retention() {
        let text = format!(
            "{BASE}[database]\ndata_dir = \"/pg/main\"\n\
             [database.retention]\nfull = \"60d\"\nweekly = 4\n\
             [[database.replicas]]\nname = \"s3\"\nurl = \"s3://b/db\"\nquota = \"2 TiB\"\n\
             [[database.replicas]]\nname = \"nfs\"\nurl = \"replica\"\n"
        );
        let cfg = AgentConfigFile::parse(&text, Path::new("a.toml"))
            .expect("parse")
            .validate(Path::new("/etc/drmesh"))
            .expect("valid");
        let db = cfg.database.expect("database");
        let own = db.retention.expect("own policy");
        assert_eq!(own.full, Duration::from_secs(60 * 86400));
        assert_eq!((own.weekly, own.monthly), (4, 12), "the rest the runbook's");
        assert_eq!(db.replicas[0].quota, Some(2 << 40));
        assert_eq!(db.replicas[1].url, "/etc/drmesh/replica");
        for bad in [
            "[[database.replicas]]\nname = \"a\"\nurl = \"/r\"\nquota = \"lots\"\n",
            "[[database.replicas]]\nname = \"a\"\nurl = \"/r/{yyyy}\"\n",
            "[[database.replicas]]\nname = \"a\"\nurl = \"/r\"\n[[database.replicas]]\nname = \"a\"\nurl = \"/q\"\n",
            "[database.retention]\nfull = \"1d\"\nincremental = \"2d\"\n",
            "[database.retention]\nfull = \"1d\"\nhourly = 3\n",
        ] {
            let text = format!("{BASE}[database]\ndata_dir = \"/pg/main\"\n{bad}");
            let refused = AgentConfigFile::parse(&text, Path::new("a.toml"))
                .and_then(|f| f.validate(Path::new("/")))
                .is_err();
            assert!(refused, "{bad}");
        }
    }

    #[test]
    fn database_section() {
        let text = format!(
            "data_dir = \"/var/lib/drmesh\"\n{BASE}[database]\ndata_dir = \"/pg/main\"\n[database.environments.staging]\ndata_dir = \"/pg/staging\"\nport = 5440\n"
        );
        let cfg = AgentConfigFile::parse(&text, Path::new("a.toml"))
            .expect("parse")
            .validate(Path::new("/etc/drmesh"))
            .expect("valid");
        let db = cfg.database.expect("database");
        assert_eq!(db.repository, "/var/lib/drmesh/backups/database");
        assert_eq!(db.archive_timeout, Duration::from_secs(60));
        assert_eq!(db.environments["staging"].port, 5440);
        assert!(db.count_rows);
        assert_eq!(db.count_rows_timeout, Duration::from_secs(10));
        assert!(db.smoke_checks.is_empty());
        for bad in [
            "[database]\ndata_dir = \"/pg\"\n[[database.smoke_checks]]\nsql = \"select 1\"\n",
            "[database]\ndata_dir = \"/pg\"\n[[database.smoke_checks]]\nexpect = \"1\"\n",
            "[database]\ndata_dir = \"/pg\"\n[[database.smoke_checks]]\nsql = \" \"\nexpect = \"1\"\n",
            "[database]\ndata_dir = \"/pg\"\n[[database.smoke_checks]]\nsql = \"select 1\"\nexpect = \"1\"\nname = \"x\"\n",
            "[database]\ndata_dir = \"/pg\"\ncount_rows_timeout = \"0s\"\n",
            "[database]\n",
            "[database]\ndata_dir = \"/pg\"\narchive_timeout = \"0s\"\n",
            "[database]\ndata_dir = \"/pg\"\n[database.environments.staging]\ndata_dir = \"/s\"\n",
            "[database]\ndata_dir = \"/pg\"\n[database.environments.\"a b\"]\ndata_dir = \"/s\"\nport = 1\n",
            "[database]\ndata_dir = \"/pg\"\n[database.environments.prod]\ndata_dir = \"/pg\"\nport = 1\n",
        ] {
            let text = format!("{BASE}{bad}");
            assert!(
                AgentConfigFile::parse(&text, Path::new("a.toml"))
                    .and_then(|f| f.validate(Path::new("/")))
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn smoke_checks_and_row_counts() {
        let text = format!(
            "{BASE}[database]\ndata_dir = \"/pg\"\ncount_rows = false\ncount_rows_timeout = \"2s\"\n\
             [[database.smoke_checks]]\nsql = \"select count(*) from users\"\nexpect = \"42\"\n\
             [[database.smoke_checks]]\nsql = \"select 1 where false\"\nexpect = \"\"\n"
        );
        let db = AgentConfigFile::parse(&text, Path::new("a.toml"))
            .expect("parse")
            .validate(Path::new("/"))
            .expect("valid")
            .database
            .expect("database");
        assert!(!db.count_rows);
        assert_eq!(db.count_rows_timeout, Duration::from_secs(2));
        assert_eq!(
            db.smoke_checks,
            vec![
                SmokeCheck {
                    sql: "select count(*) from users".into(),
                    expect: "42".into()
                },
                SmokeCheck {
                    sql: "select 1 where false".into(),
                    expect: String::new()
                }
            ]
        );
    }

    #[test]
    fn archive_section() {
        let parse = |text: &str| {
            AgentConfigFile::parse(&format!("{BASE}{text}"), Path::new("a.toml"))
                .expect("parse")
                .validate(Path::new("/etc/drmesh"))
        };
        let cfg = parse(
            "[database]\ndata_dir = \"/pg\"\nkey_file = \"repo.key\"\n\
             [archive]\nurl = \"s3://cold/drmesh\"\nstorage_class = \"DEEP_ARCHIVE\"\n\
             options = { region = \"eu-west-1\", secret_access_key = \"hush\" }\n",
        )
        .expect("valid");
        let a = cfg.archive.expect("archive");
        assert_eq!(a.url, "s3://cold/drmesh");
        assert_eq!(a.storage_class.as_deref(), Some("DEEP_ARCHIVE"));
        assert_eq!(a.options["region"], "eu-west-1");
        // The repository's key by default; the secret never reaches Debug.
        assert_eq!(a.key_file, Some(PathBuf::from("/etc/drmesh/repo.key")));
        assert!(!format!("{a:?}").contains("hush"));

        let cfg = parse("[archive]\nurl = \"cold\"\nkey_file = \"/k\"\n").expect("valid");
        let a = cfg.archive.expect("archive");
        assert_eq!(a.url, "/etc/drmesh/cold");
        assert_eq!(a.key_file, Some(PathBuf::from("/k")));
        assert_eq!(a.storage_class, None);
        assert_eq!(parse("").expect("valid").archive, None);

        for (bad, says) in [
            ("[archive]\n", "archive.url"),
            ("[archive]\nurl = \" \"\n", "archive.url"),
            (
                "[archive]\nurl = \"/c\"\nstorage_class = \"a b\"\n",
                "storage_class",
            ),
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
        assert!(AgentConfigFile::parse(
            &format!("{BASE}[archive]\nurl = \"/c\"\nbucket = \"x\"\n"),
            Path::new("a.toml")
        )
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
        let docs = cfg.documents.expect("documents");
        assert_eq!(docs.locations.len(), 3);
        assert_eq!(
            docs.locations[2].url,
            "s3://propchain-backups/document-backups/{yyyy}/{mm}"
        );
    }
}
