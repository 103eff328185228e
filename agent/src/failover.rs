//! The agent's part in a failover: promoting its standby, and fencing its primary.
//!
//! Both are idempotent, so a coordinator that resumes a failover after a crash can send
//! them again: promoting a server that already accepts writes reports it, fencing a
//! server that is already stopped and marked leaves it so.

use std::path::Path;
use std::time::{Duration, Instant};

use drmesh_protocol::api::PromoteOutcome;
use tokio_postgres::NoTls;
use tracing::{info, warn};

use crate::config::{DatabaseConfig, PostgresConfig};

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("{0}")]
    Io(String),
    #[error("still in recovery {0:?} after pg_promote")]
    NotPromoted(Duration),
}

/// How long a promotion may take before it is reported failed.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// Promotes the local server if it is a standby, waits until it accepts writes (a
/// temporary table is created and written, which a read-only server refuses), and
/// reports its timeline and LSN.
pub async fn promote(pg: &PostgresConfig) -> Result<PromoteOutcome, FailoverError> {
    let started = Instant::now();
    let pg_err = |e: tokio_postgres::Error| FailoverError::Postgres(e.to_string());
    let (client, connection) = tokio_postgres::connect(&pg.conninfo, NoTls)
        .await
        .map_err(pg_err)?;
    let conn = tokio::spawn(connection);
    let in_recovery: bool = client
        .query_one("select pg_is_in_recovery()", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    let was_standby = in_recovery;
    if in_recovery {
        info!("promoting the local standby");
        client
            .query_one(
                "select pg_promote(true, $1)",
                &[&(PROMOTE_TIMEOUT.as_secs() as i32)],
            )
            .await
            .map_err(pg_err)?;
        loop {
            let still: bool = client
                .query_one("select pg_is_in_recovery()", &[])
                .await
                .map_err(pg_err)?
                .get(0);
            if !still {
                break;
            }
            if started.elapsed() > PROMOTE_TIMEOUT {
                return Err(FailoverError::NotPromoted(started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A write, which only a writable primary takes; a temporary table leaves nothing
    // behind.
    client
        .batch_execute(
            "begin; create temporary table drmesh_write_check (at timestamptz) on commit drop; \
             insert into drmesh_write_check values (now()); commit;",
        )
        .await
        .map_err(pg_err)?;
    let row = client
        .query_one(
            "select pg_current_wal_lsn()::text, \
             ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
            &[],
        )
        .await
        .map_err(pg_err)?;
    drop(client);
    conn.abort();
    Ok(PromoteOutcome {
        was_standby,
        timeline: row.get::<_, i32>(1) as u32,
        lsn: row.get(0),
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Fences the local server: stops it (`pg_ctl stop -m fast`, as the data directory's
/// owner) and leaves `standby.signal` in its data directory, so that a restart — by an
/// operator, a boot script or a supervisor — brings it back read-only, never as a
/// writable primary. `drmesh rejoin` later makes it a standby of the new primary.
pub async fn fence(db: &DatabaseConfig) -> Result<(), FailoverError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || fence_blocking(&db, "fast"))
        .await
        .map_err(|e| FailoverError::Io(format!("fence task: {e}")))?
}

/// As [`fence`], with `pg_ctl stop -m immediate`: for an agent whose lease ran out, which
/// must have its server stopped before the coordinator's wait (lease plus margin) ends.
pub async fn fence_now(db: &DatabaseConfig) -> Result<(), FailoverError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || fence_blocking(&db, "immediate"))
        .await
        .map_err(|e| FailoverError::Io(format!("fence task: {e}")))?
}

fn fence_blocking(db: &DatabaseConfig, mode: &str) -> Result<(), FailoverError> {
    use std::os::unix::fs::MetadataExt;
    let data = &db.data_dir;
    let meta = std::fs::metadata(data)
        .map_err(|e| FailoverError::Io(format!("{}: {e}", data.display())))?;
    // The marker first: should the stop fail half-way, a restart still comes up
    // read-only.
    let signal = data.join("standby.signal");
    std::fs::write(&signal, b"")
        .map_err(|e| FailoverError::Io(format!("write {}: {e}", signal.display())))?;
    if nix::unistd::geteuid().is_root() {
        let _ = nix::unistd::chown(
            &signal,
            Some(nix::unistd::Uid::from_raw(meta.uid())),
            Some(nix::unistd::Gid::from_raw(meta.gid())),
        );
    }
    if let Ok(d) = std::fs::File::open(data) {
        let _ = d.sync_all();
    }
    if !postmaster_running(data) {
        info!(data_dir = %data.display(), "fenced: PostgreSQL was not running");
        return Ok(());
    }
    let bin = db
        .pg_bin()
        .map_err(|e| FailoverError::Io(format!("find pg_ctl: {e}")))?;
    let mut cmd = std::process::Command::new(bin.dir().join("pg_ctl"));
    cmd.arg("-D")
        .arg(data)
        .args(["-m", mode, "-w", "-t", "60", "stop"])
        .current_dir("/");
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::process::CommandExt;
        cmd.uid(meta.uid()).gid(meta.gid());
    }
    let out = cmd
        .output()
        .map_err(|e| FailoverError::Io(format!("run pg_ctl: {e}")))?;
    if !out.status.success() && postmaster_running(data) {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        warn!(error = %why, "pg_ctl stop failed");
        return Err(FailoverError::Io(format!("pg_ctl stop: {why}")));
    }
    info!(data_dir = %data.display(), "fenced: PostgreSQL stopped, standby.signal left");
    Ok(())
}

/// Whether the data directory is fenced (used by tests and `drmesh rejoin`).
pub fn is_fenced(data_dir: &Path) -> bool {
    data_dir.join("standby.signal").exists() && !postmaster_running(data_dir)
}

/// Whether a postmaster runs on the data directory: its `postmaster.pid` names a live
/// process. A crashed server leaves the file behind with a dead pid.
pub fn postmaster_running(data_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        // Unreadable: assume it runs.
        return true;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        Err(_) => true,
    }
}
