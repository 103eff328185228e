//! Whether the local primary's WAL reaches the repository: what a failover confirms on
//! its new primary before it reports success, so backups and point-in-time recovery are
//! known to work there.

use std::time::{Duration, Instant};

use drmesh_protocol::api::ArchivingOutcome;
use tracing::info;

use super::{open_existing, DatabaseError};
use crate::config::{DatabaseConfig, PostgresConfig};

/// Switches the local primary to a new WAL segment and waits (at most
/// `archive_timeout`) until the one it finished is in the repository.
pub async fn confirm(
    db: &DatabaseConfig,
    pg: &PostgresConfig,
) -> Result<ArchivingOutcome, DatabaseError> {
    let started = Instant::now();
    let (client, connection) = tokio_postgres::connect(&pg.conninfo, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let result = wait_archived(&client, db, started).await;
    driver.abort();
    result
}

async fn wait_archived(
    client: &tokio_postgres::Client,
    db: &DatabaseConfig,
    started: Instant,
) -> Result<ArchivingOutcome, DatabaseError> {
    let row = client
        .query_one(
            "select pg_is_in_recovery(), current_setting('archive_mode')",
            &[],
        )
        .await?;
    if row.get::<_, bool>(0) {
        return Err(DatabaseError::Invalid(
            "the server is a standby: only a primary archives".into(),
        ));
    }
    let mode: String = row.get(1);
    if mode == "off" {
        return Err(DatabaseError::Invalid(
            "archive_mode is off: nothing is archived, so no backup taken here can be restored"
                .into(),
        ));
    }
    // Read only: the repository is the archiver's to create (with the server owner's
    // rights), never this agent's.
    let repo = open_existing(db).await.map_err(|e| {
        DatabaseError::Invalid(format!(
            "the repository {} cannot be opened ({e}): nothing has been archived there",
            db.repository
        ))
    })?;
    let segment: String = client
        .query_one("select pg_walfile_name(pg_switch_wal())", &[])
        .await?
        .get(0);
    let timeline = segment_timeline(&segment)?;
    let timeout = db.archive_timeout;
    loop {
        // PostgreSQL retries a failed archive_command; its first failure on this
        // segment is answer enough.
        let failed: Option<String> = client
            .query_opt(
                "select last_failed_wal from pg_stat_archiver where last_failed_wal = $1 \
                 and last_failed_time > now() - $2::text::interval",
                &[
                    &segment,
                    &format!("{} ms", started.elapsed().as_millis() + 1000),
                ],
            )
            .await?
            .map(|r| r.get(0));
        if failed.is_some() {
            return Err(DatabaseError::Invalid(format!(
                "archive_command failed for WAL segment {segment} (pg_stat_archiver): check \
                 the server's log"
            )));
        }
        if repo.has_wal(timeline, &segment).await? {
            let waited = started.elapsed();
            info!(%segment, waited_ms = waited.as_millis() as u64, "archiving confirmed");
            return Ok(ArchivingOutcome {
                segment,
                timeline,
                waited_ms: waited.as_millis() as u64,
            });
        }
        if started.elapsed() >= timeout {
            return Err(DatabaseError::Invalid(format!(
                "WAL segment {segment} is not in the repository {} after {:?} (archive_timeout): \
                 check the server's archive_command and pg_stat_archiver",
                db.repository, timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The timeline of a WAL segment's name (its first eight hex digits).
fn segment_timeline(segment: &str) -> Result<u32, DatabaseError> {
    segment
        .get(..8)
        .filter(|_| segment.len() == 24)
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .ok_or_else(|| DatabaseError::Invalid(format!("{segment:?} is not a WAL segment name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_names_its_timeline() {
        assert_eq!(
            segment_timeline("0000000A0000000000000003").expect("timeline"),
            10
        );
        assert!(segment_timeline("00000001").is_err());
        assert!(segment_timeline("zz00000A0000000000000003").is_err());
    }
}
