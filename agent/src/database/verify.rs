//! Verifying a database backup (the runbook's "Verify Database Backup Integrity"):
//!
//! 1. checksum — the repository's verify with data reads: every chunk decrypted,
//!    decompressed and re-hashed, every file against its SHA-256; every WAL segment the
//!    backup needs read back against its digest;
//! 2. accessibility — every pack the snapshot needs and every WAL segment from its start
//!    to its stop (and to its row counts' point) exists;
//! 3. restorability — the backup restored into a throw-away directory
//!    (`<agent data_dir>/verify/<verificationId>`), recovered to its consistent point
//!    (or exactly to its row counts' LSN) by a PostgreSQL on a free port that listens
//!    only on a Unix socket inside that directory, then smoke-checked (configured
//!    queries, row counts, `amcheck` on B-tree indexes), stopped and removed.
//!
//! Architecture Invariant: the throw-away directory and its server never outlive the
//! verification: a guard stops the server (`pg_ctl stop -m immediate`) and removes the
//! directory on every return; the child process does the same when its agent dies; the
//! agent removes what is left (after a `kill -9` of both) at its next start. The
//! production cluster is never touched: the copy archives nothing, has no replication
//! slots, streams from nowhere, and listens on no TCP address.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drmesh_protocol::api::{
    Accessibility, ChecksumVerdict, DatabaseVerificationReport, Restorability, SmokeCheckResult,
    VerificationFinding,
};
use drmesh_protocol::Lsn;
use tracing::{info, warn};

use super::recovery::{self, Restore};
use super::wal::needed_segments;
use super::DatabaseError;
use crate::config::DatabaseConfig;
use crate::repo::snapshot::{PgBackupInfo, RowCounts};
use crate::repo::{RepoError, Repository};

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

/// Every WAL segment the backup needs: from its start to its stop, and on to the end
/// of its row counts' segment switch when it recorded counts.
pub fn needed_wal(pg: &PgBackupInfo) -> Vec<String> {
    let start: Lsn = pg.start_lsn.parse().unwrap_or(Lsn(0));
    let stop: Lsn = pg.stop_lsn.parse().unwrap_or(start);
    let end = pg
        .row_counts
        .as_ref()
        .and_then(|c| c.wal_end.parse::<Lsn>().ok())
        .filter(|e| e.0 > stop.0)
        .unwrap_or(stop);
    needed_segments(pg.timeline, start, end, pg.wal_segment_size)
}

/// Child side: verifies `backup` using `dir` (an empty throw-away directory) and
/// removes `dir` before it returns.
pub async fn run(
    repo: &Repository,
    db: &DatabaseConfig,
    conninfo: Option<&str>,
    backup: &str,
    dir: &Path,
    restore_command: String,
    progress: Report<'_>,
) -> Result<DatabaseVerificationReport, DatabaseError> {
    let _scratch = Scratch {
        dir: dir.to_path_buf(),
    };
    let mut f = Findings::default();
    let snap = repo.snapshot(backup).await?;
    let Some(pg) = snap.postgres.clone() else {
        return Err(DatabaseError::Invalid(format!(
            "{backup} is not a PostgreSQL base backup"
        )));
    };

    // 1 and 2: chunks, packs, WAL.
    progress(5.0, "re-hashing every chunk".into());
    let started = Instant::now();
    let v = repo.verify(backup, true).await?;
    let mut checksum_ok = v.manifest.passed
        && v.data.as_ref().is_none_or(|c| c.passed)
        && v.file_checksums.as_ref().is_none_or(|c| c.passed);
    let mut accessible = v.objects.passed;
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
    progress(30.0, "reading back the WAL".into());
    for name in needed_wal(&pg) {
        match repo.get_wal(pg.timeline, &name).await {
            Ok(_) => {}
            Err(RepoError::NotFound(_)) => {
                accessible = false;
                f.add(
                    "accessibility",
                    format!("WAL segment {name}"),
                    "missing from the archive",
                );
            }
            Err(RepoError::Damaged(why) | RepoError::Corrupt(why)) => {
                checksum_ok = false;
                f.add("checksum", format!("WAL segment {name}"), why);
            }
            Err(e) => return Err(e.into()),
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
    f.report.timings.checksum_ms = started.elapsed().as_millis() as u64;

    // 3: the restorability test.
    let restorable = restorability(
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
    f.report.restorability_test = Some(if restorable {
        Restorability::Restorable
    } else {
        Restorability::NotRestorable
    });
    progress(99.0, "removing the throw-away directory".into());
    Ok(f.report)
}

/// The user and database of the production conninfo (default `postgres`), or `dbname`.
pub fn user_and_database(conninfo: Option<&str>, counts: Option<&RowCounts>) -> (String, String) {
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

/// What the throw-away server must not do, appended after the restored settings:
/// listen on TCP, stream from or hold back anything, archive, or wait for standbys.
pub fn isolation_settings(dir: &Path) -> String {
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
         cluster_name = 'drmesh-verify'\n",
        dir = dir.display().to_string().replace('\'', "''")
    )
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
) -> bool {
    let pgdata = dir.join(PGDATA);
    let counts = pg.row_counts.as_ref();
    let port = match crate::postgres::local::free_port() {
        Ok(p) => p,
        Err(e) => {
            f.add("restorability", "port", e.to_string());
            return false;
        }
    };
    progress(40.0, "restoring into the throw-away directory".into());
    let started = Instant::now();
    let restored = recovery::restore(
        repo,
        &Restore {
            backup: Some(backup.to_string()),
            target: pgdata.clone(),
            time: None,
            immediate: counts.is_none(),
            lsn: counts.map(|c| c.lsn.clone()),
            port: Some(port),
            restore_command,
            progress: Default::default(),
        },
    )
    .await;
    f.report.timings.restore_ms = started.elapsed().as_millis() as u64;
    if let Err(e) = restored {
        f.add("restorability", "restore", e.to_string());
        return false;
    }
    let prepared =
        std::fs::write(dir.join("pg_hba.conf"), "local all all trust\n").and_then(|()| {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(pgdata.join("postgresql.auto.conf"))?
                .write_all(isolation_settings(dir).as_bytes())
        });
    if let Err(e) = prepared {
        f.add("restorability", "settings", e.to_string());
        return false;
    }

    progress(70.0, "recovering".into());
    let started = Instant::now();
    let (user, database) = user_and_database(conninfo, counts);
    let client = match start_and_wait(db, dir, &pgdata, port, &user, &database).await {
        Ok(c) => c,
        Err(why) => {
            f.report.timings.recovery_ms = started.elapsed().as_millis() as u64;
            f.add("restorability", "recovery", why);
            return false;
        }
    };
    f.report.timings.recovery_ms = started.elapsed().as_millis() as u64;

    progress(85.0, "smoke checks".into());
    let started = Instant::now();
    let mut ok = true;
    for check in &db.smoke_checks {
        let answer = first_value(&client, &check.sql).await;
        let (passed, detail) = match answer {
            Ok(got) if got == check.expect => (true, format!("returned {got:?}")),
            Ok(got) => (
                false,
                format!("returned {got:?}, expected {:?}", check.expect),
            ),
            Err(e) => (false, e),
        };
        if !passed {
            ok = false;
            f.add(
                "restorability",
                format!("smoke check: {}", check.sql),
                detail.clone(),
            );
        }
        f.report.smoke_checks.push(SmokeCheckResult {
            name: format!("sql: {}", check.sql),
            passed,
            detail,
        });
    }
    match counts {
        Some(counts) => ok &= compare_counts(&client, counts, f).await,
        None => f.add(
            "note",
            "row counts",
            "the backup recorded none (count_rows off, a standby, or counting failed)",
        ),
    }
    ok &= amcheck(&client, f).await;
    f.report.timings.checks_ms = started.elapsed().as_millis() as u64;
    drop(client);
    // Stopped here so the time is not the guard's; the guard removes the directory.
    stop(db, &pgdata);
    ok
}

/// Starts the restored server and waits until it left recovery; a client to it.
pub async fn start_and_wait(
    db: &DatabaseConfig,
    dir: &Path,
    pgdata: &Path,
    port: u16,
    user: &str,
    database: &str,
) -> Result<tokio_postgres::Client, String> {
    let bin = db.pg_bin().map_err(|e| e.to_string())?;
    let log = dir.join("postgres.log");
    let wait = db.recovery_timeout.as_secs().max(10).to_string();
    let out = tokio::process::Command::new(bin.dir().join("pg_ctl"))
        .arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", &wait, "start"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("run pg_ctl start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the restored server did not start: {} {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            log_tail(&log)
        ));
    }
    let conninfo = format!(
        "host={} port={port} user={user} dbname={database} connect_timeout=5",
        dir.display()
    );
    let deadline = Instant::now() + db.recovery_timeout;
    loop {
        if let Ok((client, connection)) =
            tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            if let Ok(row) = client.query_one("select pg_is_in_recovery()", &[]).await {
                if !row.try_get::<_, bool>(0).unwrap_or(true) {
                    return Ok(client);
                }
            }
        }
        if !pgdata.join("postmaster.pid").exists() {
            return Err(format!("the restored server stopped: {}", log_tail(&log)));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "recovery did not end within {:?}: {}",
                db.recovery_timeout,
                log_tail(&log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `pg_ctl stop -m immediate`; the guard's signals are the fallback.
pub fn stop(db: &DatabaseConfig, pgdata: &Path) {
    if let Ok(bin) = db.pg_bin() {
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

/// Every recorded table's count against the restored one, exactly.
pub async fn compare_counts(
    client: &tokio_postgres::Client,
    counts: &RowCounts,
    f: &mut Findings,
) -> bool {
    let listed = client
        .query(
            "select n.nspname || '.' || c.relname, format('%I.%I', n.nspname, c.relname) \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where c.relkind = 'r' and c.relpersistence = 'p'",
            &[],
        )
        .await;
    let quoted: BTreeMap<String, String> = match listed {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
            .collect(),
        Err(e) => {
            f.add(
                "restorability",
                "row counts",
                DatabaseError::from(e).to_string(),
            );
            return false;
        }
    };
    let mut mismatched = 0usize;
    for (table, want) in &counts.tables {
        let got = match quoted.get(table) {
            None => Err("the table is missing".to_string()),
            Some(q) => client
                .query_one(&format!("select count(*) from {q}"), &[])
                .await
                .map_err(|e| DatabaseError::from(e).to_string())
                .and_then(|r| r.try_get::<_, i64>(0).map_err(|e| e.to_string())),
        };
        match got {
            Ok(n) if n == *want => {}
            Ok(n) => {
                mismatched += 1;
                f.add(
                    "restorability",
                    format!("table {table}"),
                    format!(
                        "the backup recorded {want} rows at {}; the restore has {n}",
                        counts.lsn
                    ),
                );
            }
            Err(why) => {
                mismatched += 1;
                f.add("restorability", format!("table {table}"), why);
            }
        }
    }
    for (table, why) in &counts.skipped {
        f.add(
            "note",
            format!("table {table}"),
            format!("not counted at backup: {why}"),
        );
    }
    let passed = mismatched == 0;
    f.report.smoke_checks.push(SmokeCheckResult {
        name: "row counts".into(),
        passed,
        detail: if passed {
            format!(
                "{} tables match their counts at {}",
                counts.tables.len(),
                counts.lsn
            )
        } else {
            format!("{mismatched} of {} tables differ", counts.tables.len())
        },
    });
    passed
}

/// `bt_index_check` on every valid B-tree index, when `amcheck` can be created; its
/// absence is a note, not a failure.
pub async fn amcheck(client: &tokio_postgres::Client, f: &mut Findings) -> bool {
    if let Err(e) = client
        .batch_execute("create extension if not exists amcheck")
        .await
    {
        let why = format!("amcheck not available: {}", DatabaseError::from(e));
        f.add("note", "amcheck", why.clone());
        f.report.smoke_checks.push(SmokeCheckResult {
            name: "amcheck".into(),
            passed: true,
            detail: why,
        });
        return true;
    }
    let indexes = client
        .query(
            "select c.oid::int8, format('%I.%I', n.nspname, c.relname) \
             from pg_index i join pg_class c on c.oid = i.indexrelid \
             join pg_am am on am.oid = c.relam join pg_namespace n on n.oid = c.relnamespace \
             where am.amname = 'btree' and i.indisvalid and i.indisready \
               and c.relpersistence = 'p' order by 1",
            &[],
        )
        .await;
    let indexes = match indexes {
        Ok(rows) => rows,
        Err(e) => {
            f.add(
                "restorability",
                "amcheck",
                DatabaseError::from(e).to_string(),
            );
            return false;
        }
    };
    let mut bad = 0usize;
    for row in &indexes {
        let (Ok(oid), Ok(name)) = (row.try_get::<_, i64>(0), row.try_get::<_, String>(1)) else {
            continue;
        };
        if let Err(e) = client
            .batch_execute(&format!("select bt_index_check({oid}::oid::regclass)"))
            .await
        {
            bad += 1;
            f.add(
                "restorability",
                format!("index {name}"),
                format!("amcheck: {}", DatabaseError::from(e)),
            );
        }
    }
    f.report.smoke_checks.push(SmokeCheckResult {
        name: "amcheck".into(),
        passed: bad == 0,
        detail: format!(
            "bt_index_check on {} B-tree indexes, {bad} failed",
            indexes.len()
        ),
    });
    bad == 0
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
    fn the_wal_a_backup_needs_reaches_its_row_counts() {
        let mut pg = PgBackupInfo {
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/2000100".into(),
            timeline: 1,
            start_wal: String::new(),
            stop_wal: String::new(),
            wal_segment_size: 16 << 20,
            system_identifier: "1".into(),
            server_version: 150000,
            stopped_at: chrono::Utc::now(),
            tablespace_map: None,
            row_counts: None,
        };
        assert_eq!(needed_wal(&pg), vec!["000000010000000000000002"]);
        pg.row_counts = Some(RowCounts {
            lsn: "0/3000000".into(),
            wal_end: "0/3000090".into(),
            database: "postgres".into(),
            tables: BTreeMap::new(),
            skipped: BTreeMap::new(),
        });
        assert_eq!(
            needed_wal(&pg),
            vec!["000000010000000000000002", "000000010000000000000003"]
        );
    }

    #[test]
    fn the_copy_listens_on_no_tcp_address_and_archives_nothing() {
        let s = isolation_settings(Path::new("/var/lib/drmesh/verify/v1"));
        assert!(s.contains("listen_addresses = ''"), "{s}");
        assert!(
            s.contains("unix_socket_directories = '/var/lib/drmesh/verify/v1'"),
            "{s}"
        );
        assert!(s.contains("archive_mode = 'off'"), "{s}");
        assert!(s.contains("primary_conninfo = ''"), "{s}");
    }
}
