//! The agent's part in a failover: promoting its standby, and fencing its primary; and
//! afterwards rejoining the fenced old primary as a standby of the new one.
//!
//! Promote and fence are idempotent, so a coordinator that resumes a failover after a
//! crash can send them again: promoting a server that already accepts writes reports it,
//! fencing a server that is already stopped and marked leaves it so. Rejoin refuses a
//! server that is not fenced, so a repeated rejoin changes nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use drmesh_protocol::api::{CatchUpOutcome, DemoteOutcome, PromoteOutcome, RejoinOutcome};
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
    /// The request is not safe to carry out; nothing was changed.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Rejoin(String),
}

/// A program of the cluster's PostgreSQL installation (`pg_ctl`, `pg_rewind`, …).
fn pg_program(db: &DatabaseConfig, name: &str) -> Result<std::process::Command, FailoverError> {
    let bin = crate::postgres::pg_bin_of(db)
        .map_err(|e| FailoverError::Io(format!("find {name}: {e}")))?;
    Ok(std::process::Command::new(bin.dir().join(name)))
}

/// A PostgreSQL error with the server's own message (tokio-postgres's `Display` says
/// only "db error").
fn pg_error(e: tokio_postgres::Error) -> FailoverError {
    FailoverError::Postgres(match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    })
}

/// A connection to the local server; the task driving it stops when the guard drops.
struct LocalConnection {
    client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Drop for LocalConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl LocalConnection {
    async fn open(pg: &PostgresConfig) -> Result<Self, FailoverError> {
        let (client, connection) = tokio_postgres::connect(&pg.conninfo, NoTls)
            .await
            .map_err(pg_error)?;
        Ok(LocalConnection {
            client,
            driver: tokio::spawn(connection),
        })
    }

    async fn in_recovery(&self) -> Result<bool, FailoverError> {
        Ok(self
            .client
            .query_one("select pg_is_in_recovery()", &[])
            .await
            .map_err(pg_error)?
            .get(0))
    }
}

/// How long a promotion may take before it is reported failed.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// Promotes the local server if it is a standby, waits until it accepts writes (a
/// temporary table is created and written, which a read-only server refuses), and
/// reports its timeline and LSN.
pub async fn promote(pg: &PostgresConfig) -> Result<PromoteOutcome, FailoverError> {
    let started = Instant::now();
    let pg_err = pg_error;
    let local = LocalConnection::open(pg).await?;
    let client = &local.client;
    let in_recovery = local.in_recovery().await?;
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
    drop(local);
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
    let mut cmd = pg_program(db, "pg_ctl")?;
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

/// How long a rejoined standby may take to stream from its new primary.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(60);

/// The configuration files `pg_rewind` copies from the source: the server keeps its own
/// (its port, listen addresses and `ALTER SYSTEM` settings are not the source's).
const OWN_CONFIG: [&str; 4] = [
    "postgresql.conf",
    "postgresql.auto.conf",
    "pg_hba.conf",
    "pg_ident.conf",
];

/// Turns the fenced local server (an old primary) into a streaming standby of the
/// primary at `host:port`:
///
/// 1. refuses unless the server is fenced (stopped, `standby.signal`): a running
///    server, writable or not, is never rewound; refuses a source that is this server;
/// 2. archives the WAL its archiver left `.ready` (in a child process as the data
///    directory's owner, as `archive_command` runs), so nothing the old primary wrote
///    is lost to point-in-time recovery; stops if one segment cannot be archived;
/// 3. `pg_rewind` from the new primary as the owner (a server that went down uncleanly
///    is crash-recovered by `pg_rewind` itself first); "no rewind required" is fine;
/// 4. keeps the server's own configuration files (which `pg_rewind` replaces with the
///    source's), sets `primary_conninfo` and `recovery_target_timeline = 'latest'` in
///    `postgresql.auto.conf` (stale `primary_conninfo`, `restore_command` and
///    `recovery_target_timeline` lines removed), keeps `standby.signal`;
/// 5. `pg_ctl start` as the owner and waits (bounded) until `pg_stat_wal_receiver`
///    shows `streaming`.
///
/// drmesh deletes nothing: not the data directory, not a file in it. Its only changes
/// are the `postgresql.auto.conf` lines above, the archived segments' `.ready` → `.done`
/// renames, and — for a server that went down uncleanly — `standby.signal` moved aside
/// while `pg_rewind` recovers it in single-user mode (which refuses standby mode), then
/// back. `pg_rewind` itself replaces what changed after the timelines diverged, and the
/// server's configuration files are put back as they were before it.
pub async fn rejoin(
    db: &DatabaseConfig,
    config_path: &Path,
    pg: &PostgresConfig,
    host: &str,
    port: u16,
) -> Result<RejoinOutcome, FailoverError> {
    let started = Instant::now();
    let data = db.data_dir.clone();
    if !data.join("PG_VERSION").exists() {
        return Err(FailoverError::Refused(format!(
            "{} is not a PostgreSQL data directory",
            data.display()
        )));
    }
    if !is_fenced(&data) {
        return Err(FailoverError::Refused(format!(
            "the server on {} is not fenced ({}): only a fenced old primary is rejoined, a \
             running server is never rewound",
            data.display(),
            if postmaster_running(&data) {
                "it runs"
            } else {
                "no standby.signal"
            }
        )));
    }
    let local = LocalServer::of(pg);
    if local.is(host, port) {
        return Err(FailoverError::Refused(format!(
            "{host}:{port} is this agent's own server, not a new primary"
        )));
    }
    info!(data_dir = %data.display(), primary = %format!("{host}:{port}"), "rejoin: archiving leftover WAL");
    let archived: Vec<String> = crate::database::child::run(
        config_path,
        &data,
        &["archive-ready".to_string()],
        std::sync::Arc::new(|_, _| {}),
    )
    .await
    .map_err(|e| FailoverError::Rejoin(format!("archive leftover WAL: {e}")))?;
    info!(
        archived = archived.len(),
        "rejoin: leftover WAL archived; pg_rewind"
    );

    let source = format!(
        "host={host} port={port} user={} dbname={}",
        local.user, local.dbname
    );
    let primary_conninfo = format!("host={host} port={port} user={}", local.user);
    // pg_rewind reads the source's timeline from its control file, which a server
    // promoted moments ago (a switchover rejoins right after) updates only at its first
    // checkpoint: without one, it would rewind against the old timeline. Patroni does
    // the same before its pg_rewind.
    checkpoint_source(&source).await?;
    let db2 = db.clone();
    let (rewound, rewind_message, log_file) = tokio::task::spawn_blocking(move || {
        let rewind = rewind_blocking(&db2, &source)?;
        let log = configure_and_start_blocking(&db2, &primary_conninfo)?;
        Ok::<_, FailoverError>((rewind.0, rewind.1, log))
    })
    .await
    .map_err(|e| FailoverError::Io(format!("rejoin task: {e}")))??;
    info!(rewound, message = %rewind_message, "rejoin: started as a standby; waiting for streaming");

    let timeline = wait_streaming(pg, None, STREAMING_TIMEOUT)
        .await
        .map_err(|e| {
            FailoverError::Rejoin(format!(
                "the server runs as a standby (read-only) but {e}; see {}",
                log_file.display()
            ))
        })?;
    let outcome = RejoinOutcome {
        archived_segments: archived,
        rewound,
        rewind_message,
        timeline,
        primary: format!("{host}:{port}"),
        streaming: true,
        log_file: log_file.display().to_string(),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    info!(?outcome, "rejoined as a standby");
    Ok(outcome)
}

/// What the agent's own conninfo says about its server.
struct LocalServer {
    hosts: Vec<String>,
    port: u16,
    user: String,
    dbname: String,
    advertise: Option<std::net::SocketAddr>,
}

impl LocalServer {
    fn of(pg: &PostgresConfig) -> Self {
        let parsed: Option<tokio_postgres::Config> = pg.conninfo.parse().ok();
        let mut hosts = Vec::new();
        let (mut port, mut user, mut dbname) = (5432, "postgres".to_string(), None);
        if let Some(c) = &parsed {
            for h in c.get_hosts() {
                #[allow(unreachable_patterns)]
                match h {
                    tokio_postgres::config::Host::Tcp(name) => hosts.push(name.clone()),
                    _ => hosts.push("localhost".into()),
                }
            }
            hosts.extend(c.get_hostaddrs().iter().map(ToString::to_string));
            port = c.get_ports().first().copied().unwrap_or(5432);
            if let Some(u) = c.get_user() {
                user = u.to_string();
            }
            dbname = c.get_dbname().map(str::to_string);
        }
        let dbname = dbname.unwrap_or_else(|| user.clone());
        Self {
            hosts,
            port,
            user,
            dbname,
            advertise: pg.advertise,
        }
    }

    /// Whether `host:port` names this server (as far as the configuration tells).
    fn is(&self, host: &str, port: u16) -> bool {
        let loopback = |h: &str| {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        };
        if let (Some(a), Ok(ip)) = (self.advertise, host.parse::<std::net::IpAddr>()) {
            if a == std::net::SocketAddr::new(ip, port) {
                return true;
            }
        }
        port == self.port
            && self
                .hosts
                .iter()
                .any(|h| h == host || (loopback(h) && loopback(host)))
    }
}

/// The data directory owner's ids, when we are root and must act as that user.
fn owner_ids(data: &Path) -> Result<Option<(u32, u32)>, FailoverError> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let meta = std::fs::metadata(data)
        .map_err(|e| FailoverError::Io(format!("{}: {e}", data.display())))?;
    Ok(Some((meta.uid(), meta.gid())))
}

fn as_owner(cmd: &mut std::process::Command, owner: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    cmd.current_dir("/");
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
}

fn chown_to(path: &Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        let _ = nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        );
    }
}

/// The last non-empty line of a program's output, without its `name: ` prefix.
fn last_line(text: &str, program: &str) -> String {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(|l| {
            l.strip_prefix(&format!("{program}: "))
                .unwrap_or(l)
                .to_string()
        })
        .unwrap_or_default()
}

/// `pg_controldata`'s output, as `(field, value)` pairs.
fn control_data(
    db: &DatabaseConfig,
    owner: Option<(u32, u32)>,
) -> Result<Vec<(String, String)>, FailoverError> {
    let mut cmd = pg_program(db, "pg_controldata")?;
    cmd.arg("-D").arg(&db.data_dir);
    as_owner(&mut cmd, owner);
    let out = cmd
        .output()
        .map_err(|e| FailoverError::Io(format!("run pg_controldata: {e}")))?;
    if !out.status.success() {
        return Err(FailoverError::Io(format!(
            "pg_controldata: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_control_data(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_control_data(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `pg_controldata`'s "Database cluster state".
fn cluster_state(db: &DatabaseConfig, owner: Option<(u32, u32)>) -> Result<String, FailoverError> {
    let fields = control_data(db, owner)?;
    Ok(field(&fields, "Database cluster state")
        .unwrap_or_default()
        .to_string())
}

/// What a cleanly stopped primary's control file says of its last WAL: its shutdown
/// checkpoint's location and timeline. Refused unless it says "shut down" — a server
/// that crashed, or a standby ("shut down in recovery"), did not write a final WAL
/// record for a standby to catch up to.
fn final_wal(fields: &[(String, String)]) -> Result<(String, u32), FailoverError> {
    let state = field(fields, "Database cluster state").unwrap_or_default();
    if state != "shut down" {
        return Err(FailoverError::Refused(format!(
            "the server is {state:?}, not a primary shut down cleanly: there is no final \
             WAL for the target to catch up to (fail over instead)"
        )));
    }
    let lsn = field(fields, "Latest checkpoint location")
        .filter(|l| {
            l.split_once('/').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.chars().chain(b.chars()).all(|c| c.is_ascii_hexdigit())
            })
        })
        .ok_or_else(|| FailoverError::Io("pg_controldata names no checkpoint location".into()))?;
    let timeline = field(fields, "Latest checkpoint's TimeLineID")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| FailoverError::Io("pg_controldata names no timeline".into()))?;
    Ok((lsn.to_string(), timeline))
}

/// A `CHECKPOINT` on the new primary at `conninfo` (see [`rejoin`]).
async fn checkpoint_source(conninfo: &str) -> Result<(), FailoverError> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(|e| FailoverError::Rejoin(format!("connect to the new primary: {e}")))?;
    let driver = tokio::spawn(connection);
    let done = client
        .batch_execute("checkpoint")
        .await
        .map_err(|e| FailoverError::Rejoin(format!("checkpoint on the new primary: {e}")));
    drop(client);
    driver.abort();
    done
}

/// Stops the local primary for a switchover: `standby.signal` first (as [`fence`]), then
/// a clean shutdown (`-m fast`), in which PostgreSQL sends every connected standby its
/// WAL up to the shutdown checkpoint before it exits. Reports that checkpoint, the last
/// WAL the server wrote. A server already stopped cleanly (a resumed switchover) reports
/// the same.
pub async fn demote(db: &DatabaseConfig) -> Result<DemoteOutcome, FailoverError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let was_running = postmaster_running(&db.data_dir);
        if !was_running && !db.data_dir.join("standby.signal").exists() {
            // Not ours to stop: whoever stopped it may have had a reason, and it was
            // not necessarily clean.
            info!("demote: the server was not running");
        }
        fence_blocking(&db, "fast")?;
        let fields = control_data(&db, owner_ids(&db.data_dir)?)?;
        let (final_lsn, timeline) = final_wal(&fields)?;
        info!(%final_lsn, timeline, "demoted: stopped cleanly, standby.signal left");
        Ok(DemoteOutcome {
            final_lsn,
            timeline,
            was_running,
        })
    })
    .await
    .map_err(|e| FailoverError::Io(format!("demote task: {e}")))?
}

/// Waits until the local standby has replayed WAL past `lsn` (the old primary's
/// shutdown checkpoint: past its start, the whole record is replayed, and nothing
/// follows it), for at most `timeout`.
pub async fn catch_up(
    pg: &PostgresConfig,
    lsn: &str,
    timeout: Duration,
) -> Result<CatchUpOutcome, FailoverError> {
    let started = Instant::now();
    let local = LocalConnection::open(pg).await?;
    if !local.in_recovery().await? {
        return Err(FailoverError::Refused(
            "the server is not a standby: it has nothing to catch up".into(),
        ));
    }
    loop {
        let row = local
            .client
            .query_one(
                "select coalesce(pg_last_wal_replay_lsn() > $1::text::pg_lsn, false), \
                 coalesce(pg_last_wal_replay_lsn()::text, '0/0')",
                &[&lsn],
            )
            .await
            .map_err(pg_error)?;
        let (past, replayed): (bool, String) = (row.get(0), row.get(1));
        if past {
            info!(%lsn, %replayed, "caught up");
            return Ok(CatchUpOutcome {
                replayed_lsn: replayed,
                waited_ms: started.elapsed().as_millis() as u64,
            });
        }
        if started.elapsed() > timeout {
            return Err(FailoverError::Refused(format!(
                "replayed only up to {replayed} in {:.1} s, not past {lsn}",
                started.elapsed().as_secs_f64()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `pg_rewind` from `source` as the owner; (whether it rewound, its last line).
/// The server's own configuration files are put back afterwards, and `standby.signal`
/// is there whatever happens.
fn rewind_blocking(db: &DatabaseConfig, source: &str) -> Result<(bool, String), FailoverError> {
    let data = &db.data_dir;
    let owner = owner_ids(data)?;
    let signal = data.join("standby.signal");
    let saved: Vec<(&str, Vec<u8>)> = OWN_CONFIG
        .iter()
        .filter_map(|f| Some((*f, std::fs::read(data.join(f)).ok()?)))
        .collect();
    // A server that went down uncleanly (fenced with `-m immediate`, or crashed) is
    // crash-recovered by pg_rewind in single-user mode, which refuses to run with
    // `standby.signal`: the marker is moved aside only for that, and back right after.
    let state = cluster_state(db, owner)?;
    let clean = state.starts_with("shut down");
    let aside = data.join("standby.signal.rejoin");
    if !clean {
        info!(
            state,
            "rejoin: the server went down uncleanly; pg_rewind recovers it first"
        );
        std::fs::rename(&signal, &aside)
            .map_err(|e| FailoverError::Io(format!("rename {}: {e}", signal.display())))?;
    }
    let mut cmd = pg_program(db, "pg_rewind")?;
    cmd.arg("--target-pgdata")
        .arg(data)
        .arg("--source-server")
        .arg(source);
    as_owner(&mut cmd, owner);
    let out = cmd.output();
    if !clean {
        if let Err(e) = std::fs::rename(&aside, &signal) {
            warn!(error = %e, "put standby.signal back");
            let _ = std::fs::write(&signal, b"");
        }
    }
    let out = out.map_err(|e| FailoverError::Io(format!("run pg_rewind: {e}")))?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Whatever pg_rewind did, the server keeps its own configuration.
    for (file, bytes) in &saved {
        let path = data.join(file);
        if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            std::fs::write(&path, bytes)
                .map_err(|e| FailoverError::Io(format!("write {}: {e}", path.display())))?;
            chown_to(&path, owner);
        }
    }
    if !signal.exists() {
        std::fs::write(&signal, b"")
            .map_err(|e| FailoverError::Io(format!("write {}: {e}", signal.display())))?;
        chown_to(&signal, owner);
    }
    let message = last_line(&text, "pg_rewind");
    if !out.status.success() {
        warn!(output = %text.trim(), "pg_rewind failed");
        return Err(FailoverError::Rejoin(format!("pg_rewind: {message}")));
    }
    let rewound = !text.contains("no rewind required");
    Ok((rewound, message))
}

/// `postgresql.auto.conf` for a standby of `primary_conninfo`: the lines that name an
/// earlier primary or recovery source removed, every other line kept, the new settings
/// appended as `ALTER SYSTEM` writes them.
pub fn standby_auto_conf(existing: &str, primary_conninfo: &str) -> String {
    const REPLACED: [&str; 3] = [
        "primary_conninfo",
        "restore_command",
        "recovery_target_timeline",
    ];
    let mut out = String::new();
    for line in existing.lines() {
        let key = line
            .trim_start()
            .split(|c: char| c == '=' || c.is_whitespace())
            .next()
            .unwrap_or_default();
        if REPLACED.iter().any(|r| r.eq_ignore_ascii_case(key)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!(
        "primary_conninfo = '{}'\nrecovery_target_timeline = 'latest'\n",
        primary_conninfo.replace('\\', "\\\\").replace('\'', "''")
    ));
    out
}

/// Points the server at its new primary and starts it (`pg_ctl start -w`, as the
/// owner, in its own process group so it outlives the agent); returns its log file.
fn configure_and_start_blocking(
    db: &DatabaseConfig,
    primary_conninfo: &str,
) -> Result<std::path::PathBuf, FailoverError> {
    let data = &db.data_dir;
    let owner = owner_ids(data)?;
    let auto = data.join("postgresql.auto.conf");
    let existing = match std::fs::read_to_string(&auto) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n"
                .to_string()
        }
        Err(e) => return Err(FailoverError::Io(format!("read {}: {e}", auto.display()))),
    };
    let tmp = data.join("postgresql.auto.conf.rejoin");
    std::fs::write(&tmp, standby_auto_conf(&existing, primary_conninfo))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .map_err(|e| FailoverError::Io(format!("write {}: {e}", tmp.display())))?;
    chown_to(&tmp, owner);
    std::fs::rename(&tmp, &auto)
        .map_err(|e| FailoverError::Io(format!("rename {}: {e}", auto.display())))?;
    if let Ok(d) = std::fs::File::open(data) {
        let _ = d.sync_all();
    }

    let name = data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "postgres".into());
    let log = data
        .parent()
        .unwrap_or(Path::new("/tmp"))
        .join(format!("{name}-rejoin.log"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| FailoverError::Io(format!("create {}: {e}", log.display())))?;
    chown_to(&log, owner);
    let mut cmd = pg_program(db, "pg_ctl")?;
    cmd.arg("-D")
        .arg(data)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "60", "start"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    as_owner(&mut cmd, owner);
    let out = cmd
        .output()
        .map_err(|e| FailoverError::Io(format!("run pg_ctl: {e}")))?;
    if !out.status.success() {
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = log_text.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(FailoverError::Rejoin(format!(
            "pg_ctl start: {}; server log: {}",
            last_line(&String::from_utf8_lossy(&out.stderr), "pg_ctl"),
            tail.join(" / ")
        )));
    }
    Ok(log)
}

/// Points the local standby at the primary at `host:port`: `primary_conninfo` set with
/// `ALTER SYSTEM` (the user kept from the agent's conninfo) and reloaded — PostgreSQL
/// restarts its WAL receiver, and with `recovery_target_timeline = 'latest'` follows
/// the new primary's timeline — then waits until it streams. A server that is not in
/// recovery is refused. Returns the timeline it receives.
pub async fn repoint(pg: &PostgresConfig, host: &str, port: u16) -> Result<u32, FailoverError> {
    let local = LocalServer::of(pg);
    if local.is(host, port) {
        return Err(FailoverError::Rejoin(format!(
            "{host}:{port} is this server itself"
        )));
    }
    let pg_err = pg_error;
    let connection = LocalConnection::open(pg).await?;
    let client = &connection.client;
    if !connection.in_recovery().await? {
        return Err(FailoverError::Rejoin(
            "the local server is not a standby; only standbys are re-pointed".into(),
        ));
    }
    let conninfo = format!("host={host} port={port} user={}", local.user);
    let quoted = conninfo.replace('\'', "''");
    // One statement per query: ALTER SYSTEM refuses to run in a (multi-statement)
    // transaction block.
    for sql in [
        format!("alter system set primary_conninfo = '{quoted}'"),
        "alter system set recovery_target_timeline = 'latest'".to_string(),
    ] {
        client.batch_execute(&sql).await.map_err(pg_err)?;
    }
    client
        .query_one("select pg_reload_conf()", &[])
        .await
        .map_err(pg_err)?;
    drop(connection);
    info!(primary = %format!("{host}:{port}"), "re-pointed at the new primary");
    let timeline = wait_streaming(pg, Some(host), STREAMING_TIMEOUT)
        .await
        .map_err(|e| FailoverError::Rejoin(format!("re-pointed at {host}:{port}, but it {e}")))?;
    Ok(timeline.unwrap_or(0))
}

/// Waits until the local server's WAL receiver streams (from `from`, when given); its
/// received timeline.
async fn wait_streaming(
    pg: &PostgresConfig,
    from: Option<&str>,
    timeout: Duration,
) -> Result<Option<u32>, String> {
    let started = Instant::now();
    loop {
        let last = match receiver(pg).await {
            Ok(Some((status, sender, tli)))
                if status == "streaming" && from.is_none_or(|h| h == sender) =>
            {
                return Ok(tli)
            }
            Ok(Some((status, sender, _))) => format!("the WAL receiver is {status} from {sender}"),
            Ok(None) => "no WAL receiver runs".into(),
            Err(e) => e,
        };
        if started.elapsed() > timeout {
            return Err(format!("is not streaming after {timeout:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The WAL receiver's status, sender host and received timeline.
async fn receiver(pg: &PostgresConfig) -> Result<Option<(String, String, Option<u32>)>, String> {
    let local = LocalConnection::open(pg).await.map_err(|e| e.to_string())?;
    let row = local
        .client
        .query_opt(
            "select status, coalesce(sender_host, ''), received_tli from pg_stat_wal_receiver",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.map(|r| {
        (
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, Option<i32>>(2).map(|t| t as u32),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROL: &str = "pg_control version number:            1300\n\
                           Database cluster state:               shut down\n\
                           Latest checkpoint location:           0/5000028\n\
                           Latest checkpoint's REDO location:    0/5000028\n\
                           Latest checkpoint's TimeLineID:       2\n";

    #[test]
    fn a_clean_shutdown_names_its_final_wal() {
        let fields = parse_control_data(CONTROL);
        assert_eq!(
            final_wal(&fields).expect("final wal"),
            ("0/5000028".to_string(), 2)
        );
    }

    #[test]
    fn a_crashed_server_or_a_standby_has_no_final_wal_to_catch_up_to() {
        for state in [
            "in production",
            "shut down in recovery",
            "in crash recovery",
        ] {
            let text = CONTROL.replace("shut down", state);
            let err = final_wal(&parse_control_data(&text)).expect_err("no final wal");
            assert!(matches!(err, FailoverError::Refused(_)), "{state}: {err}");
        }
        let text = CONTROL.replace(
            "0/5000028\nLatest checkpoint's REDO",
            "zz\nLatest checkpoint's REDO",
        );
        assert!(final_wal(&parse_control_data(&text)).is_err());
    }

    #[test]
    fn the_auto_conf_names_the_new_primary_and_keeps_everything_else() {
        let old = "# Do not edit this file manually!\n\
                   # It will be overwritten by the ALTER SYSTEM command.\n\
                   port = '5433'\n\
                   primary_conninfo = 'host=10.0.0.9 port=5432 user=postgres'\n\
                   restore_command='cp /x/%f %p'\n\
                   recovery_target_timeline = '2'\n\
                   archive_command = 'false'\n\
                   primary_conninfo_extra = 'kept'\n";
        let new = standby_auto_conf(old, "host=10.0.0.2 port=5432 user=o'neil");
        assert_eq!(
            new,
            "# Do not edit this file manually!\n\
             # It will be overwritten by the ALTER SYSTEM command.\n\
             port = '5433'\n\
             archive_command = 'false'\n\
             primary_conninfo_extra = 'kept'\n\
             primary_conninfo = 'host=10.0.0.2 port=5432 user=o''neil'\n\
             recovery_target_timeline = 'latest'\n"
        );
        // Run again: still one of each.
        let again = standby_auto_conf(&new, "host=10.0.0.2 port=5432 user=o'neil");
        assert_eq!(again, new);
    }

    #[test]
    fn a_source_that_is_the_local_server_is_recognised() {
        let pg = PostgresConfig {
            conninfo: "host=127.0.0.1 port=5433 user=postgres dbname=postgres".into(),
            probe_timeout: Duration::from_secs(1),
            advertise: Some("10.1.0.5:5433".parse().expect("addr")),
        };
        let local = LocalServer::of(&pg);
        assert!(local.is("127.0.0.1", 5433));
        assert!(local.is("localhost", 5433));
        assert!(local.is("10.1.0.5", 5433));
        assert!(!local.is("127.0.0.1", 5434));
        assert!(!local.is("10.1.0.6", 5433));
        assert_eq!(local.user, "postgres");
        assert_eq!(local.dbname, "postgres");
    }
}
