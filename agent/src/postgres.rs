//! The PostgreSQL next to the agent: status probe (role, LSN, lag, timeline), and local
//! clusters for the quickstart and tests ([`local`]).

pub use drmesh_pg::local;

use std::time::Duration;

use drmesh_protocol::{Lsn, PgRole, PgStatus};
use tokio_postgres::{Client, NoTls};
use tracing::{debug, warn};

use crate::config::PostgresConfig;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect: {0}")]
    Connect(tokio_postgres::Error),
    #[error("query: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("probe timed out after {0:?}")]
    Timeout(Duration),
    #[error("server returned a bad LSN: {0}")]
    BadLsn(String),
}

/// Probes the local cluster, keeping one connection open between probes.
pub struct Prober {
    config: PostgresConfig,
    client: Option<Client>,
}

fn lsn(text: Option<String>) -> Result<Option<Lsn>, ProbeError> {
    text.map(|t| t.parse::<Lsn>().map_err(|_| ProbeError::BadLsn(t)))
        .transpose()
}

impl Prober {
    pub fn new(config: PostgresConfig) -> Self {
        Self {
            config,
            client: None,
        }
    }

    /// Always returns a status: a failed probe is `Unreachable` with the reason.
    pub async fn probe(&mut self) -> PgStatus {
        let timeout = self.config.probe_timeout;
        match tokio::time::timeout(timeout, self.try_probe()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                self.client = None;
                debug!(error = %e, "postgres probe failed");
                unreachable_status(e.to_string())
            }
            Err(_) => {
                self.client = None;
                unreachable_status(ProbeError::Timeout(timeout).to_string())
            }
        }
    }

    async fn client(&mut self) -> Result<&Client, ProbeError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) = tokio_postgres::connect(&self.config.conninfo, NoTls)
                .await
                .map_err(ProbeError::Connect)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    warn!(error = %e, "postgres connection closed");
                }
            });
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| ProbeError::BadLsn("no client".into()))
    }

    async fn try_probe(&mut self) -> Result<PgStatus, ProbeError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "select pg_is_in_recovery(), current_setting('server_version_num')::int",
                &[],
            )
            .await?;
        let in_recovery: bool = row.try_get(0)?;
        let server_version: i32 = row.try_get(1)?;
        if in_recovery {
            let row = client
                .query_one(
                    "select pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text, \
                     coalesce((select received_tli::int from pg_stat_wal_receiver), \
                              (select timeline_id::int from pg_control_checkpoint())), \
                     case when pg_last_wal_receive_lsn() is not distinct from pg_last_wal_replay_lsn() then 0::float8 \
                          else extract(epoch from now() - pg_last_xact_replay_timestamp())::float8 end",
                    &[],
                )
                .await?;
            Ok(PgStatus {
                role: PgRole::Standby,
                lsn: lsn(row.try_get(0)?)?,
                receive_lsn: lsn(row.try_get(1)?)?,
                timeline: row.try_get::<_, Option<i32>>(2)?.map(|t| t as u32),
                lag_seconds: row.try_get::<_, Option<f64>>(3)?.map(|s| s.max(0.0)),
                server_version: Some(server_version as u32),
                error: None,
            })
        } else {
            let row = client
                .query_one(
                    "select pg_current_wal_lsn()::text, \
                     ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
                    &[],
                )
                .await?;
            Ok(PgStatus {
                role: PgRole::Primary,
                lsn: lsn(row.try_get(0)?)?,
                receive_lsn: None,
                timeline: row.try_get::<_, Option<i32>>(1)?.map(|t| t as u32),
                lag_seconds: Some(0.0),
                server_version: Some(server_version as u32),
                error: None,
            })
        }
    }
}

fn unreachable_status(error: String) -> PgStatus {
    PgStatus {
        role: PgRole::Unreachable,
        timeline: None,
        lsn: None,
        receive_lsn: None,
        lag_seconds: None,
        server_version: None,
        error: Some(error),
    }
}

/// The PostgreSQL programs a `[database]` section names: `pg_bin_dir`, or the newest
/// installed.
pub fn pg_bin_of(db: &crate::config::DatabaseConfig) -> Result<local::PgBin, local::LocalPgError> {
    match &db.pg_bin_dir {
        Some(dir) => local::PgBin::at(dir),
        None => local::PgBin::find(),
    }
}
