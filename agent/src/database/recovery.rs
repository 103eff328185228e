//! A point-in-time recovery into one of this host's configured environments: the
//! restore itself is the repository's ([`Repository::restore_for_recovery`]); here the
//! server is started there and watched until it accepts writes.

use std::path::Path;

use chrono::{DateTime, Utc};
use tracing::info;

use drmesh_protocol::api::PitrOutcome;
use drmesh_repo::{shell_quote, RecoveryRequest, Repository};

use super::DatabaseError;

fn quoted_path(p: &Path) -> Result<String, DatabaseError> {
    let s = p
        .to_str()
        .ok_or_else(|| DatabaseError::Invalid(format!("{} is not valid UTF-8", p.display())))?;
    Ok(shell_quote(s)?)
}

/// `restore_command` through this agent: `drmesh-agent --config CONFIG wal-fetch %f %p`.
pub fn agent_restore_command(agent: &Path, config: &Path) -> Result<String, DatabaseError> {
    Ok(format!(
        "{} --config {} wal-fetch %f %p",
        quoted_path(agent)?,
        quoted_path(config)?
    ))
}

/// A point-in-time recovery into a configured environment: its directory replaced by a
/// restore of the base backup, PostgreSQL started there, and the wait until recovery
/// has reached the target and the server accepts writes.
pub async fn recover_into(
    repo: &Repository,
    db: &crate::config::DatabaseConfig,
    conninfo: Option<&str>,
    environment: &str,
    backup: Option<String>,
    time: DateTime<Utc>,
    restore_command: String,
) -> Result<PitrOutcome, DatabaseError> {
    use crate::postgres::local::LocalCluster;
    let env = db.environments.get(environment).ok_or_else(|| {
        DatabaseError::Invalid(format!(
            "no environment {environment:?} in this agent's [database.environments]"
        ))
    })?;
    let bin = crate::postgres::pg_bin_of(db).map_err(|e| DatabaseError::Postgres(e.to_string()))?;
    // The environment's previous server and directory go.
    let dir = env.data_dir.clone();
    if dir.join("PG_VERSION").exists() {
        if let Ok(old) = LocalCluster::open(&bin, environment, &dir, env.port) {
            if old.is_running() {
                info!(environment, "stopping the environment's previous server");
                old.stop_immediate()
                    .map_err(|e| DatabaseError::Postgres(e.to_string()))?;
            }
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| DatabaseError::Io(format!("remove {}: {e}", dir.display())))?;
    }
    let restore_started = std::time::Instant::now();
    let restored = repo
        .restore_for_recovery(&RecoveryRequest {
            backup,
            target: dir.clone(),
            time: Some(time),
            immediate: false,
            lsn: None,
            port: Some(env.port),
            restore_command,
            progress: Default::default(),
            check_data: false,
            durable: true,
        })
        .await?;
    let restore_seconds = restore_started.elapsed().as_secs_f64();
    let recovery_started = std::time::Instant::now();
    let cluster = LocalCluster::open(&bin, environment, &dir, env.port)
        .map_err(|e| DatabaseError::Postgres(e.to_string()))?;
    // Its own addresses, not the backed-up server's (which this host may not have).
    cluster
        .append_config(
            "postgresql.auto.conf",
            &format!("listen_addresses = '{}'\n", env.listen_addresses),
        )
        .map_err(|e| DatabaseError::Postgres(e.to_string()))?;
    // `pg_ctl start` gives up waiting after a minute; a long recovery goes on, and the
    // loop below is what waits for it.
    if let Err(e) = cluster.start() {
        info!(error = %e, "the recovered server is not accepting connections yet");
    }
    let conninfo = recovered_conninfo(conninfo, &env.host(), env.port);
    let deadline = recovery_started + db.recovery_timeout;
    let client = loop {
        if let Ok((client, connection)) =
            tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            let row = client.query_one("select pg_is_in_recovery()", &[]).await;
            if let Ok(row) = row {
                if !row.try_get::<_, bool>(0).unwrap_or(true) {
                    break client;
                }
            }
        }
        if !cluster.is_running() {
            let tail = log_tail(&cluster.log_path());
            // PostgreSQL knows a target time has passed only from a commit after it.
            let why = if tail.contains("recovery ended before configured recovery target") {
                format!(
                    "the archived WAL holds no transaction committed after {} yet, and \
                     PostgreSQL needs one to know that instant has passed: choose an earlier \
                     time, or wait until a later commit is archived. ",
                    time.to_rfc3339()
                )
            } else {
                String::new()
            };
            return Err(DatabaseError::Postgres(format!(
                "the recovered server stopped: {why}{tail}"
            )));
        }
        if std::time::Instant::now() >= deadline {
            return Err(DatabaseError::Postgres(format!(
                "recovery did not finish within {:?}: {}",
                db.recovery_timeout,
                log_tail(&cluster.log_path())
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let row = client
        .query_one(
            "select to_char(pg_last_xact_replay_timestamp() at time zone 'UTC', \
                    'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                    (select timeline_id from pg_control_checkpoint())",
            &[],
        )
        .await?;
    let recovered_to = row
        .try_get::<_, Option<String>>(0)?
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc));
    let timeline: Option<i32> = row.try_get(1)?;
    Ok(PitrOutcome {
        backup_id: restored.backup,
        data_directory: dir.display().to_string(),
        port: env.port,
        recovered_to,
        timeline: timeline.map(|t| t as u32),
        restore_seconds,
        recovery_seconds: recovery_started.elapsed().as_secs_f64(),
    })
}

/// The production conninfo's user and database, at the recovered server's port on
/// the loopback.
fn recovered_conninfo(conninfo: Option<&str>, host: &str, port: u16) -> String {
    let (user, dbname) = super::user_and_database(conninfo, None);
    format!("host={host} port={port} user={user} dbname={dbname} connect_timeout=2")
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_restore_command_quotes_its_paths() {
        let command = agent_restore_command(
            Path::new("/usr/bin/drmesh-agent"),
            Path::new("/etc/drmesh/agent.toml"),
        )
        .expect("command");
        assert_eq!(
            command,
            "'/usr/bin/drmesh-agent' --config '/etc/drmesh/agent.toml' wal-fetch %f %p"
        );
        assert!(agent_restore_command(Path::new("/a'b"), Path::new("/c")).is_err());
    }
}
