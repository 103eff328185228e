//! Verifying a database backup (the runbook's "Verify Database Backup Integrity"):
//!
//! 1. checksum — every chunk decrypted, decompressed and re-hashed against its id and
//!    every file checked against its SHA-256, by the restore of step 3 as it writes
//!    (one read of the backup); when that restore does not complete, a separate
//!    read-back names every damaged file and pack. Every WAL segment the backup needs is
//!    read back against its digest;
//! 2. accessibility — every pack the snapshot needs and every WAL segment from its start
//!    to its stop (and to its row counts' point) exists;
//! 3. restorability — the backup restored into a throw-away directory
//!    (`<agent data_dir>/verify/<verificationId>`), recovered to its consistent point
//!    (or exactly to its row counts' LSN) by a PostgreSQL on a free port that listens
//!    only on a Unix socket inside that directory and never fsyncs (nothing in it must
//!    survive a crash), then smoke-checked (configured queries; row counts and `amcheck`
//!    on B-tree indexes over several connections), stopped and removed once the verdict
//!    is out.
//!
//! Architecture Invariant: the throw-away directory and its server never outlive the
//! verification: a guard held by the caller stops the server (SIGQUIT, an immediate
//! shutdown) and removes the directory on every return; the child process does the
//! same when its agent dies; the agent removes what is left (after a `kill -9` of
//! both) at its next start. The
//! production cluster is never touched: the copy archives nothing, has no replication
//! slots, streams from nowhere, and listens on no TCP address.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drmesh_protocol::api::{
    Accessibility, ChecksumVerdict, DatabaseVerificationReport, Restorability, SmokeCheckResult,
    VerificationFinding,
};
use tracing::{info, warn};

use super::DatabaseError;
use crate::config::DatabaseConfig;
use drmesh_repo::RecoveryRequest;
use drmesh_repo::{PgBackupInfo, RepoError, Repository, RowCounts};

/// The directory under the agent's `data_dir` that holds the throw-away directories.
pub const VERIFY_DIR: &str = "verify";

/// The restored data directory inside a throw-away directory.
pub const PGDATA: &str = "pgdata";

/// Progress callback: percent and message.
pub type Report<'a> = &'a (dyn Fn(f32, String) + Send + Sync);

/// A verification id as a directory name: letters, digits, `_` and `-` only.
pub fn valid_id(id: &str) -> Result<(), DatabaseError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(DatabaseError::Invalid(format!(
            "verification id {id:?}: 1-64 letters, digits, '_' or '-'"
        )));
    }
    Ok(())
}

/// Daemon side: creates `<data_dir>/verify/<id>` (mode 0700) owned by the owner of
/// `owner_of` (the cluster's data directory), who runs the verification.
pub fn prepare_dir(data_dir: &Path, id: &str, owner_of: &Path) -> Result<PathBuf, DatabaseError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    valid_id(id)?;
    let io = |what: String, e: std::io::Error| DatabaseError::Io(format!("{what}: {e}"));
    let parent = data_dir.join(VERIFY_DIR);
    std::fs::create_dir_all(&parent).map_err(|e| io(format!("create {}", parent.display()), e))?;
    let dir = parent.join(id);
    std::fs::create_dir(&dir).map_err(|e| io(format!("create {}", dir.display()), e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io(format!("chmod {}", dir.display()), e))?;
    if nix::unistd::geteuid().is_root() {
        let meta =
            std::fs::metadata(owner_of).map_err(|e| io(owner_of.display().to_string(), e))?;
        for p in [&parent, &dir] {
            std::os::unix::fs::chown(p, Some(meta.uid()), Some(meta.gid()))
                .map_err(|e| io(format!("chown {}", p.display()), e))?;
        }
        // The owner must reach the directory through every ancestor.
        let abs = std::fs::canonicalize(&parent)
            .map_err(|e| io(format!("resolve {}", parent.display()), e))?;
        for ancestor in abs.ancestors().skip(1) {
            let m =
                std::fs::metadata(ancestor).map_err(|e| io(ancestor.display().to_string(), e))?;
            if m.uid() != meta.uid() && m.mode() & 0o001 == 0 {
                let _ = std::fs::remove_dir(&dir);
                return Err(DatabaseError::Invalid(format!(
                    "{} cannot be reached by the cluster's owner ({} is not traversable by \
                     others): chmod o+x it, or point the agent's data_dir elsewhere",
                    dir.display(),
                    ancestor.display()
                )));
            }
        }
    }
    Ok(dir)
}

/// Whether `pid` is a running PostgreSQL server process (not a reused pid).
fn is_postgres(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let c = String::from_utf8_lossy(&c);
            c.contains("postgres") || c.contains("postmaster")
        })
        .unwrap_or(false)
}

/// Stops the server a throw-away directory's `postmaster.pid` names (SIGQUIT: immediate
/// shutdown; SIGKILL after 10 s) and removes the directory. Works as root and as the
/// owner; returns what it did, for the log.
pub fn remove_scratch(dir: &Path) -> Result<Option<i32>, DatabaseError> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid_file = dir.join(PGDATA).join("postmaster.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        .filter(|pid| *pid > 1 && is_postgres(*pid));
    if let Some(pid) = pid {
        let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_postgres(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_postgres(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(pid),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(pid),
        Err(e) => Err(DatabaseError::Io(format!("remove {}: {e}", dir.display()))),
    }
}

/// At agent start: the throw-away directories a killed verification left, each with
/// its server stopped, removed. Returns the directories removed.
pub fn clean_leftovers(data_dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(data_dir.join(VERIFY_DIR)) else {
        return removed;
    };
    for e in entries.flatten() {
        let dir = e.path();
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        match remove_scratch(&dir) {
            Ok(pid) => {
                warn!(
                    dir = %dir.display(),
                    server_pid = ?pid,
                    "removed a leftover verification directory (and stopped its server)"
                );
                removed.push(dir);
            }
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "could not remove a leftover verification directory")
            }
        }
    }
    removed
}

/// The throw-away directory: stopped and removed when dropped, whatever happened.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        match remove_scratch(&self.dir) {
            Ok(_) => info!(dir = %self.dir.display(), "throw-away directory removed"),
            Err(e) => warn!(error = %e, "remove the throw-away directory"),
        }
    }
}

/// What the report collects while the checks run.
#[derive(Default)]
pub struct Findings {
    pub report: DatabaseVerificationReport,
}

impl Findings {
    pub fn add(&mut self, check: &str, object: impl Into<String>, reason: impl Into<String>) {
        self.report.details.push(VerificationFinding {
            check: check.into(),
            object: object.into(),
            reason: reason.into(),
        });
    }
}

/// Child side: verifies `backup` using `dir` (an empty throw-away directory, which the
/// caller's [`Scratch`] guard removes once the verdict is out).
///
/// A healthy backup is read once: the restore re-hashes every chunk against its id and
/// checks every file's SHA-256 as it writes, so a restore that completes is the checksum
/// verdict. Only when it does not (or the objects are already known to be missing) is
/// the whole snapshot read back on its own, to name every damaged file and pack.
pub async fn run(
    repo: &Repository,
    db: &DatabaseConfig,
    conninfo: Option<&str>,
    backup: &str,
    dir: &Path,
    restore_command: String,
    progress: Report<'_>,
) -> Result<DatabaseVerificationReport, DatabaseError> {
    let mut f = Findings::default();
    let snap = repo.snapshot(backup).await?;
    let Some(pg) = snap.postgres.clone() else {
        return Err(DatabaseError::Invalid(format!(
            "{backup} is not a PostgreSQL base backup"
        )));
    };

    // 2: every object there (the manifest and the index only: no data read).
    progress(5.0, "checking that every object is there".into());
    let started = Instant::now();
    let objects = repo.verify(backup, false).await?;
    let wal = check_wal(repo, &pg).await?;
    f.report.timings.checksum_ms = started.elapsed().as_millis() as u64;

    // 3 (and 1 along with it): the restorability test.
    let test = restorability(
        repo,
        db,
        conninfo,
        &snap.id,
        &pg,
        dir,
        restore_command,
        progress,
        &mut f,
    )
    .await;
    f.report.restorability_test = Some(if test.restorable {
        Restorability::Restorable
    } else {
        Restorability::NotRestorable
    });

    // 1: the checksums — the restore's own checks, or a read-back that names the damage.
    let (mut checksum_ok, mut accessible) = (true, objects.objects.passed);
    // With an object missing, the restore cannot have read every chunk.
    if !(test.restored && objects.passed()) {
        progress(90.0, "re-hashing every chunk to name the damage".into());
        let started = Instant::now();
        let v = repo.verify(backup, true).await?;
        f.report.timings.checksum_ms += started.elapsed().as_millis() as u64;
        checksum_ok = v.manifest.passed
            && v.data.as_ref().is_none_or(|c| c.passed)
            && v.file_checksums.as_ref().is_none_or(|c| c.passed);
        accessible = v.objects.passed;
        if !v.manifest.passed {
            f.add(
                "checksum",
                format!("snapshots/{backup}"),
                v.manifest.detail.clone(),
            );
        }
        for d in &v.damaged {
            let missing = d.reason.contains("is missing")
                || d.reason.contains("truncated")
                || d.reason.contains("in no index");
            f.add(
                if missing { "accessibility" } else { "checksum" },
                d.path.clone(),
                d.reason.clone(),
            );
        }
        for m in &v.missing_objects {
            f.add("accessibility", m.clone(), "missing from the repository");
        }
    }
    for (name, problem) in wal {
        match problem {
            WalProblem::Missing => {
                accessible = false;
                f.add(
                    "accessibility",
                    format!("WAL segment {name}"),
                    "missing from the archive",
                );
            }
            WalProblem::Damaged(why) => {
                checksum_ok = false;
                f.add("checksum", format!("WAL segment {name}"), why);
            }
        }
    }
    f.report.checksum_verification = Some(if checksum_ok {
        ChecksumVerdict::Passed
    } else {
        ChecksumVerdict::Failed
    });
    f.report.file_accessibility = Some(if accessible {
        Accessibility::Accessible
    } else {
        Accessibility::Inaccessible
    });
    Ok(f.report)
}

/// What is wrong with a WAL segment the backup needs.
enum WalProblem {
    Missing,
    Damaged(String),
}

/// Every WAL segment the backup needs, read back against its digest; the bad ones.
async fn check_wal(
    repo: &Repository,
    pg: &PgBackupInfo,
) -> Result<Vec<(String, WalProblem)>, DatabaseError> {
    let mut bad = Vec::new();
    for name in pg.needed_wal() {
        match repo.get_wal(pg.timeline, &name).await {
            Ok(_) => {}
            Err(RepoError::NotFound(_)) => bad.push((name, WalProblem::Missing)),
            Err(RepoError::Damaged(why) | RepoError::Corrupt(why)) => {
                bad.push((name, WalProblem::Damaged(why)))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(bad)
}

/// What the throw-away server must not do, appended after the restored settings:
/// listen on TCP, stream from or hold back anything, archive, or wait for standbys. A
/// verification's copy (`durable` false) also skips every fsync: nothing in it needs to
/// survive a crash, and PostgreSQL then skips its start-up sync of the whole directory.
pub fn isolation_settings(dir: &Path, durable: bool) -> String {
    format!(
        "\n# Added by drmesh for a restorability test: isolated from production.\n\
         listen_addresses = ''\n\
         unix_socket_directories = '{dir}'\n\
         hba_file = '{dir}/pg_hba.conf'\n\
         primary_conninfo = ''\n\
         primary_slot_name = ''\n\
         synchronous_standby_names = ''\n\
         archive_mode = 'off'\n\
         logging_collector = off\n\
         cluster_name = 'drmesh-verify'\n{fsync}",
        dir = dir.display().to_string().replace('\'', "''"),
        fsync = if durable { "" } else { "fsync = off\n" }
    )
}

/// How a restorability test went.
struct Tested {
    restorable: bool,
    /// The restore completed, every chunk re-hashed and every file checked.
    restored: bool,
}

#[allow(clippy::too_many_arguments)]
async fn restorability(
    repo: &Repository,
    db: &DatabaseConfig,
    conninfo: Option<&str>,
    backup: &str,
    pg: &PgBackupInfo,
    dir: &Path,
    restore_command: String,
    progress: Report<'_>,
    f: &mut Findings,
) -> Tested {
    let mut tested = Tested {
        restorable: false,
        restored: false,
    };
    let pgdata = dir.join(PGDATA);
    let counts = pg.row_counts.as_ref();
    let port = match crate::postgres::local::free_port() {
        Ok(p) => p,
        Err(e) => {
            f.add("restorability", "port", e.to_string());
            return tested;
        }
    };
    progress(
        10.0,
        "restoring into the throw-away directory, re-hashing every chunk".into(),
    );
    let started = Instant::now();
    let restored = repo
        .restore_for_recovery(&RecoveryRequest {
            backup: Some(backup.to_string()),
            target: pgdata.clone(),
            time: None,
            immediate: counts.is_none(),
            lsn: counts.map(|c| c.lsn.clone()),
            port: Some(port),
            restore_command,
            progress: Default::default(),
            check_data: true,
            durable: false,
        })
        .await;
    f.report.timings.restore_ms = started.elapsed().as_millis() as u64;
    if let Err(e) = restored {
        f.add("restorability", "restore", e.to_string());
        return tested;
    }
    tested.restored = true;
    let prepared =
        std::fs::write(dir.join("pg_hba.conf"), "local all all trust\n").and_then(|()| {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(pgdata.join("postgresql.auto.conf"))?
                .write_all(isolation_settings(dir, false).as_bytes())
        });
    if let Err(e) = prepared {
        f.add("restorability", "settings", e.to_string());
        return tested;
    }

    progress(60.0, "recovering".into());
    let started = Instant::now();
    let (user, database) = super::user_and_database(conninfo, counts);
    let server = match start_and_wait(db, dir, &pgdata, port, &user, &database).await {
        Ok(c) => c,
        Err(why) => {
            f.report.timings.recovery_ms = started.elapsed().as_millis() as u64;
            f.add("restorability", "recovery", why);
            return tested;
        }
    };
    f.report.timings.recovery_ms = started.elapsed().as_millis() as u64;

    progress(75.0, "smoke checks".into());
    let started = Instant::now();
    let mut ok = smoke_checks(&server.client, &db.smoke_checks, "restorability", f)
        .await
        .is_empty();
    let (counted, indexes) = consistency(&server, counts, f).await;
    ok &= counted && indexes;
    f.report.timings.checks_ms = started.elapsed().as_millis() as u64;
    // The server is stopped and the directory removed by the caller's guard, once the
    // verdict is out.
    tested.restorable = ok;
    tested
}

/// A restored server that left recovery: a connection to it, and how to open more.
pub struct RestoredServer {
    pub client: tokio_postgres::Client,
    pub conninfo: String,
}

/// How often [`start_and_wait`] looks whether the server is out of recovery.
const POLL: Duration = Duration::from_millis(20);

/// Starts the restored server (`postgres -D`, in a process group of its own, its output
/// in `<dir>/postgres.log`) and waits until it left recovery.
pub async fn start_and_wait(
    db: &DatabaseConfig,
    dir: &Path,
    pgdata: &Path,
    port: u16,
    user: &str,
    database: &str,
) -> Result<RestoredServer, String> {
    let bin = crate::postgres::pg_bin_of(db).map_err(|e| e.to_string())?;
    let log = dir.join("postgres.log");
    let out = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("open {}: {e}", log.display()))?;
    let mut server = tokio::process::Command::new(bin.dir().join("postgres"))
        .arg("-D")
        .arg(pgdata)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("run postgres: {e}"))?;
    let conninfo = format!(
        "host={} port={port} user={user} dbname={database} connect_timeout=5",
        dir.display()
    );
    let deadline = Instant::now() + db.recovery_timeout;
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
                Ok((c, connection)) => {
                    tokio::spawn(connection);
                    Some(c)
                }
                Err(_) => None,
            };
        }
        if let Some(c) = &client {
            if let Ok(row) = c.query_one("select pg_is_in_recovery()", &[]).await {
                if !row.try_get::<_, bool>(0).unwrap_or(true) {
                    return Ok(RestoredServer {
                        client: client.take().ok_or("no client")?,
                        conninfo,
                    });
                }
            }
        }
        if let Ok(Some(status)) = server.try_wait() {
            return Err(format!(
                "the restored server stopped ({status}): {}",
                log_tail(&log)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "recovery did not end within {:?}: {}",
                db.recovery_timeout,
                log_tail(&log)
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `pg_ctl stop -m immediate`; the guard's signals are the fallback.
pub fn stop(db: &DatabaseConfig, pgdata: &Path) {
    if let Ok(bin) = crate::postgres::pg_bin_of(db) {
        let _ = std::process::Command::new(bin.dir().join("pg_ctl"))
            .arg("-D")
            .arg(pgdata)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" / ")
}

/// The first row's first column as text (`""` for no row or NULL).
pub async fn first_value(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| DatabaseError::from(e).to_string())?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
            _ => None,
        })
        .unwrap_or_default())
}

/// Runs each configured smoke check and records it (a failure also as a finding of
/// `check`); the queries of those that failed.
pub async fn smoke_checks(
    client: &tokio_postgres::Client,
    checks: &[crate::config::SmokeCheck],
    check: &str,
    f: &mut Findings,
) -> Vec<String> {
    let mut failed = Vec::new();
    for c in checks {
        let (passed, detail) = match first_value(client, &c.sql).await {
            Ok(got) if got == c.expect => (true, format!("returned {got:?}")),
            Ok(got) => (false, format!("returned {got:?}, expected {:?}", c.expect)),
            Err(e) => (false, e),
        };
        if !passed {
            f.add(check, format!("smoke check: {}", c.sql), detail.clone());
            failed.push(c.sql.clone());
        }
        f.report.smoke_checks.push(SmokeCheckResult {
            name: format!("sql: {}", c.sql),
            passed,
            detail,
        });
    }
    failed
}

/// Connections the consistency checks run over, side by side.
const CHECK_CONNECTIONS: usize = 3;

/// One consistency check.
enum Check {
    /// A table's exact row count against the backup's.
    Count { table: String, want: i64 },
    /// `bt_index_check` on one B-tree index.
    Index { oid: i64, name: String },
}

/// Takes the next check of `work` until none is left; returns each one it ran with its
/// outcome (a count, or 0 for an index).
async fn run_checks(
    client: &tokio_postgres::Client,
    work: &[(i64, String, Check)],
    next: &std::sync::atomic::AtomicUsize,
) -> Vec<(usize, Result<i64, String>)> {
    let mut ran = Vec::new();
    loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some((_, quoted, check)) = work.get(i) else {
            return ran;
        };
        let sql = match check {
            Check::Count { .. } => format!("select count(*) from {quoted}"),
            Check::Index { oid, .. } => {
                format!("select bt_index_check({oid}::oid::regclass), 0::int8")
            }
        };
        let got = client
            .query_one(&sql, &[])
            .await
            .map_err(|e| DatabaseError::from(e).to_string())
            .and_then(|r| r.try_get::<_, i64>(r.len() - 1).map_err(|e| e.to_string()));
        ran.push((i, got));
    }
}

/// The consistency checks: every recorded table's row count against the restored one,
/// exactly, and `bt_index_check` on every valid B-tree index when `amcheck` can be
/// created (its absence is a note, not a failure). They run over
/// [`CHECK_CONNECTIONS`] connections, the largest relations first. Returns whether the
/// counts and the indexes passed.
pub async fn consistency(
    server: &RestoredServer,
    counts: Option<&RowCounts>,
    f: &mut Findings,
) -> (bool, bool) {
    let client = &server.client;
    let amcheck = client
        .batch_execute("create extension if not exists amcheck")
        .await
        .map_err(|e| format!("amcheck not available: {}", DatabaseError::from(e)));
    // Every permanent table and (with amcheck) B-tree index, with its size.
    let listed = client
        .query(
            "select c.relkind::text, c.oid::int8, n.nspname || '.' || c.relname, \
                    format('%I.%I', n.nspname, c.relname), pg_relation_size(c.oid) \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             left join pg_index i on i.indexrelid = c.oid \
             left join pg_am am on am.oid = c.relam \
             where c.relpersistence = 'p' and (c.relkind = 'r' or (c.relkind = 'i' \
               and am.amname = 'btree' and i.indisvalid and i.indisready))",
            &[],
        )
        .await;
    let rows = match listed {
        Ok(rows) => rows,
        Err(e) => {
            let why = DatabaseError::from(e).to_string();
            f.add("restorability", "row counts", why.clone());
            f.add("restorability", "amcheck", why);
            return (false, false);
        }
    };
    let mut tables: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let mut work: Vec<(i64, String, Check)> = Vec::new();
    for r in &rows {
        let (Ok(kind), Ok(oid), Ok(name), Ok(quoted), Ok(size)) = (
            r.try_get::<_, String>(0),
            r.try_get::<_, i64>(1),
            r.try_get::<_, String>(2),
            r.try_get::<_, String>(3),
            r.try_get::<_, i64>(4),
        ) else {
            continue;
        };
        if kind == "r" {
            tables.insert(name, (quoted, size));
        } else if amcheck.is_ok() {
            work.push((size, quoted.clone(), Check::Index { oid, name: quoted }));
        }
    }
    let index_count = work.len();
    // Recorded tables missing from the restore fail without a query.
    let mut missing = Vec::new();
    for (table, want) in counts.map(|c| &c.tables).into_iter().flatten() {
        match tables.get(table) {
            Some((quoted, size)) => work.push((
                *size,
                quoted.clone(),
                Check::Count {
                    table: table.clone(),
                    want: *want,
                },
            )),
            None => missing.push(table.clone()),
        }
    }
    work.sort_by_key(|w| std::cmp::Reverse(w.0));

    // The checks, each connection taking the next largest.
    let mut clients = vec![client];
    let mut extra = Vec::new();
    for _ in 1..CHECK_CONNECTIONS.min(work.len()) {
        if let Ok((c, connection)) =
            tokio_postgres::connect(&server.conninfo, tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            extra.push(c);
        }
    }
    clients.extend(extra.iter());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut outcomes: Vec<Option<Result<i64, String>>> = work.iter().map(|_| None).collect();
    for (i, got) in
        futures::future::join_all(clients.into_iter().map(|c| run_checks(c, &work, &next)))
            .await
            .into_iter()
            .flatten()
    {
        outcomes[i] = Some(got);
    }

    // The findings, tables by name then indexes by name.
    let mut counted: Vec<(String, Result<(), String>)> = missing
        .into_iter()
        .map(|t| (t, Err("the table is missing".to_string())))
        .collect();
    let mut checked: Vec<(String, Result<(), String>)> = Vec::new();
    for ((_, _, check), outcome) in work.iter().zip(outcomes) {
        let outcome = outcome.unwrap_or_else(|| Err("not run".into()));
        match check {
            Check::Count { table, want } => counted.push((
                table.clone(),
                match outcome {
                    Ok(n) if n == *want => Ok(()),
                    Ok(n) => Err(format!(
                        "the backup recorded {want} rows at {}; the restore has {n}",
                        counts.map_or("?", |c| c.lsn.as_str())
                    )),
                    Err(why) => Err(why),
                },
            )),
            Check::Index { name, .. } => checked.push((
                name.clone(),
                outcome.map(|_| ()).map_err(|why| format!("amcheck: {why}")),
            )),
        }
    }
    counted.sort_by(|a, b| a.0.cmp(&b.0));
    checked.sort_by(|a, b| a.0.cmp(&b.0));

    let counts_ok = match counts {
        None => {
            f.add(
                "note",
                "row counts",
                "the backup recorded none (count_rows off, a standby, or counting failed)",
            );
            true
        }
        Some(counts) => {
            let mismatched = counted.iter().filter(|(_, r)| r.is_err()).count();
            for (table, r) in &counted {
                if let Err(why) = r {
                    f.add("restorability", format!("table {table}"), why.clone());
                }
            }
            for (table, why) in &counts.skipped {
                f.add(
                    "note",
                    format!("table {table}"),
                    format!("not counted at backup: {why}"),
                );
            }
            f.report.smoke_checks.push(SmokeCheckResult {
                name: "row counts".into(),
                passed: mismatched == 0,
                detail: if mismatched == 0 {
                    format!(
                        "{} tables match their counts at {}",
                        counts.tables.len(),
                        counts.lsn
                    )
                } else {
                    format!("{mismatched} of {} tables differ", counts.tables.len())
                },
            });
            mismatched == 0
        }
    };
    let indexes_ok = match amcheck {
        Err(why) => {
            f.add("note", "amcheck", why.clone());
            f.report.smoke_checks.push(SmokeCheckResult {
                name: "amcheck".into(),
                passed: true,
                detail: why,
            });
            true
        }
        Ok(()) => {
            let bad = checked.iter().filter(|(_, r)| r.is_err()).count();
            for (name, r) in &checked {
                if let Err(why) = r {
                    f.add("restorability", format!("index {name}"), why.clone());
                }
            }
            f.report.smoke_checks.push(SmokeCheckResult {
                name: "amcheck".into(),
                passed: bad == 0,
                detail: format!("bt_index_check on {index_count} B-tree indexes, {bad} failed"),
            });
            bad == 0
        }
    };
    (counts_ok, indexes_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_ids_are_plain_directory_names() {
        assert!(valid_id("verify_1705329600000_abc123").is_ok());
        for bad in ["", "../x", "a/b", ".", "a b", &"x".repeat(65)] {
            assert!(valid_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_copy_listens_on_no_tcp_address_and_archives_nothing() {
        let s = isolation_settings(Path::new("/var/lib/drmesh/verify/v1"), false);
        assert!(s.contains("fsync = off"), "{s}");
        assert!(!isolation_settings(Path::new("/v"), true).contains("fsync"));
        assert!(s.contains("listen_addresses = ''"), "{s}");
        assert!(
            s.contains("unix_socket_directories = '/var/lib/drmesh/verify/v1'"),
            "{s}"
        );
        assert!(s.contains("archive_mode = 'off'"), "{s}");
        assert!(s.contains("primary_conninfo = ''"), "{s}");
    }
}
