//! PostgreSQL backups on the database host: physical base backups taken with the
//! low-level backup API ([`basebackup`]), and point-in-time recovery into a configured
//! environment ([`recovery`]). The WAL archive that `archive_command` and
//! `restore_command` use, and restores set up to recover, are the repository's
//! (`Repository::push_wal_file`, `fetch_wal_file`, `restore_for_recovery`).
//! Everything goes into the same repository format as documents.

pub mod archiving;
pub mod basebackup;
pub mod child;
pub mod drtest;
pub mod logical;
pub mod recovery;
pub mod verify;

use crate::config::DatabaseConfig;
use drmesh_repo::{KeySource, Location, RepoError, RepoOptions, Repository};

/// The snapshot kind of a PostgreSQL base backup.
pub const KIND: &str = drmesh_repo::KIND_POSTGRES;

/// The user and database of the production conninfo (default `postgres`), or `dbname`.
pub fn user_and_database(
    conninfo: Option<&str>,
    counts: Option<&drmesh_repo::RowCounts>,
) -> (String, String) {
    let parsed = conninfo.and_then(|c| c.parse::<tokio_postgres::Config>().ok());
    let user = parsed
        .as_ref()
        .and_then(|c| c.get_user())
        .unwrap_or("postgres")
        .to_string();
    let database = counts.map(|c| c.database.clone()).unwrap_or_else(|| {
        parsed
            .as_ref()
            .and_then(|c| c.get_dbname())
            .unwrap_or("postgres")
            .to_string()
    });
    (user, database)
}

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// A WAL file name or segment that is not what PostgreSQL archives.
    #[error(transparent)]
    Wal(#[from] drmesh_pg::WalError),
    #[error("the agent configuration has no {0}")]
    NotConfigured(&'static str),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("WAL segment {missing} of backup {backup} is not in the archive after {waited:?}: the backup is not usable")]
    WalMissing {
        backup: String,
        missing: String,
        waited: std::time::Duration,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("local file: {0}")]
    Io(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl From<tokio_postgres::Error> for DatabaseError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The database's own message (and detail) says more than the driver's summary.
        match e.as_db_error() {
            Some(db) => DatabaseError::Postgres(format!(
                "{}{}",
                db.message(),
                db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
            )),
            None => DatabaseError::Postgres(e.to_string()),
        }
    }
}

/// Opens the database repository, which must exist (for readers, which must not create
/// it with their own rights).
pub async fn open_existing(cfg: &DatabaseConfig) -> Result<Repository, DatabaseError> {
    Ok(Repository::open(&repo_options(cfg)).await?)
}

fn repo_options(cfg: &DatabaseConfig) -> RepoOptions {
    let mut location = Location::new(cfg.repository.clone());
    location.options = cfg.options.clone();
    RepoOptions {
        location,
        key: match &cfg.key_file {
            Some(f) => KeySource::KeyFile(f.clone()),
            None => KeySource::None,
        },
    }
}

/// Opens the database repository, creating it (encrypted when a key file is configured)
/// the first time.
pub async fn open_repository(cfg: &DatabaseConfig) -> Result<Repository, DatabaseError> {
    let options = repo_options(cfg);
    match Repository::open(&options).await {
        Err(RepoError::NotFound(_)) => match Repository::init(&options).await {
            Ok(repo) => Ok(repo),
            // Another process created it first.
            Err(RepoError::AlreadyExists(_)) => Ok(Repository::open(&options).await?),
            Err(e) => Err(e.into()),
        },
        other => Ok(other?),
    }
}
