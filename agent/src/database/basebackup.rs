//! Physical base backups with PostgreSQL's low-level API: `pg_backup_start` and
//! `pg_backup_stop` on one session, the data directory's files read directly (what
//! PostgreSQL documents as safe to leave out, left out), `backup_label` and
//! `tablespace_map` stored from `pg_backup_stop`, and the snapshot written only once
//! every WAL segment from the start to the stop LSN is in the archive.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use drmesh_protocol::api::DatabaseBackupOutcome;
use drmesh_protocol::Lsn;
use tokio_postgres::{Client, NoTls};
use tracing::{info, warn, Instrument};

use super::DatabaseError;
use crate::config::DatabaseConfig;
use drmesh_pg::{needed_segments, relation_main_fork, segment_name, segment_of, tablespace_link};
use drmesh_repo::{
    BackupRequest, EntryKind, PageDelta, PgBackupInfo, Progress, Repository, RowCounts, Snapshot,
    Tags,
};

/// The snapshot kind of a PostgreSQL base backup.
pub use super::KIND;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupType {
    Full,
    /// Shares every unchanged file (and chunk) with the newest base backup.
    Incremental,
}

impl BackupType {
    pub fn id_prefix(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Incremental => "incr",
        }
    }
}

/// One base backup to take.
pub struct BaseBackup {
    pub id: String,
    pub backup_type: BackupType,
    pub tags: Tags,
    pub progress: Arc<Progress>,
    pub cancel: Arc<AtomicBool>,
}

/// Paths in a data directory that a base backup leaves out (PostgreSQL's "Backing Up the
/// Data Directory" list and what `pg_basebackup` skips): the contents of `pg_wal` (the
/// archive has the WAL) and of the directories rebuilt at startup, the postmaster's
/// files, an old `backup_label`/`tablespace_map`, relation cache files and temporary
/// files. The directories themselves are kept, so a restore has them.
pub fn excluded(rel: &str) -> bool {
    const CONTENTS: [&str; 8] = [
        "pg_wal",
        "pg_replslot",
        "pg_dynshmem",
        "pg_notify",
        "pg_serial",
        "pg_snapshots",
        "pg_stat_tmp",
        "pg_subtrans",
    ];
    const FILES: [&str; 8] = [
        "postmaster.pid",
        "postmaster.opts",
        "backup_label",
        "backup_label.old",
        "tablespace_map",
        "backup_manifest",
        "postgresql.auto.conf.tmp",
        "current_logfiles.tmp",
    ];
    let mut parts = rel.split('/');
    let first = parts.next().unwrap_or_default();
    let below = parts.next().is_some();
    if below && CONTENTS.contains(&first) && rel != "pg_wal/archive_status" {
        return true;
    }
    // A restored cluster's tablespaces live in `drmesh_tablespaces/`, reached (and
    // backed up) through their `pg_tblspc` links.
    if first == drmesh_pg::TABLESPACES_DIR {
        return true;
    }
    if !below && (FILES.contains(&first) || first == "recovery.signal" || first == "standby.signal")
    {
        return true;
    }
    rel.rsplit('/')
        .next()
        .is_some_and(|name| name == "pg_internal.init" || name.starts_with("pgsql_tmp"))
}

async fn connect(conninfo: &str) -> Result<Client, DatabaseError> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(
        async move {
            if let Err(e) = connection.await {
                warn!(error = %e, "backup session closed");
            }
        }
        .in_current_span(),
    );
    Ok(client)
}

/// What the server says before the backup starts.
struct Server {
    /// A standby (allowed with `backup_standby`).
    standby: bool,
    version: u32,
    segment_size: u64,
    system_identifier: String,
    block_size: u32,
}

async fn server(
    client: &Client,
    data_dir: &Path,
    allow_standby: bool,
) -> Result<Server, DatabaseError> {
    let row = client
        .query_one(
            "select current_setting('server_version_num')::int, \
                    (select setting::bigint from pg_settings where name = 'wal_segment_size'), \
                    current_setting('data_directory'), \
                    current_setting('archive_mode'), \
                    pg_is_in_recovery(), \
                    (select system_identifier::text from pg_control_system()), \
                    current_setting('block_size')::int",
            &[],
        )
        .await?;
    let block_size: i32 = row.try_get(6)?;
    let version: i32 = row.try_get(0)?;
    let segment_size: i64 = row.try_get(1)?;
    let server_dir: String = row.try_get(2)?;
    let archive_mode: String = row.try_get(3)?;
    let in_recovery: bool = row.try_get(4)?;
    let system_identifier: String = row.try_get(5)?;
    let same_dir = match (
        std::fs::canonicalize(&server_dir),
        std::fs::canonicalize(data_dir),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => Path::new(&server_dir) == data_dir,
    };
    if !same_dir {
        return Err(DatabaseError::Invalid(format!(
            "the server at the configured conninfo runs on {server_dir}, but database.data_dir is {}",
            data_dir.display()
        )));
    }
    // A standby's WAL is archived by its primary.
    if archive_mode == "off" && !in_recovery {
        return Err(DatabaseError::Invalid(
            "archive_mode is off: set archive_mode = on and archive_command = \
             'drmesh-agent --config <agent.toml> wal-push %p', or no backup can be restored"
                .into(),
        ));
    }
    if in_recovery && !allow_standby {
        return Err(DatabaseError::Invalid(
            "the server is a standby: back up the primary, or set [database] \
             backup_standby = true"
                .into(),
        ));
    }
    if version < 100_000 {
        return Err(DatabaseError::Invalid(format!(
            "PostgreSQL {version} is not supported (10 or later)"
        )));
    }
    Ok(Server {
        standby: in_recovery,
        version: version as u32,
        segment_size: segment_size as u64,
        system_identifier,
        block_size: block_size as u32,
    })
}

/// What the coordinator records of a finished base backup.
pub fn outcome(snap: &Snapshot, repository: &str) -> DatabaseBackupOutcome {
    let pg = snap.postgres.clone();
    DatabaseBackupOutcome {
        backup_id: snap.id.clone(),
        backup_type: if snap.kind == super::logical::KIND {
            "logical".to_string()
        } else {
            snap.id.split('_').next().unwrap_or("full").to_string()
        },
        parent: snap.parent.clone(),
        files: snap.stats.files,
        bytes: snap.stats.bytes,
        bytes_read: snap.stats.bytes_read,
        bytes_new: snap.stats.bytes_new,
        bytes_stored: snap.stats.bytes_stored,
        start_lsn: pg.as_ref().map(|p| p.start_lsn.clone()).unwrap_or_default(),
        stop_lsn: pg.as_ref().map(|p| p.stop_lsn.clone()).unwrap_or_default(),
        timeline: pg.as_ref().map(|p| p.timeline).unwrap_or_default(),
        start_wal: pg.as_ref().map(|p| p.start_wal.clone()).unwrap_or_default(),
        stop_wal: pg.as_ref().map(|p| p.stop_wal.clone()).unwrap_or_default(),
        stopped_at: pg.map(|p| p.stopped_at).unwrap_or(snap.finished_at),
        repository: repository.to_string(),
    }
}

/// The newest base backup in the repository (by when it stopped, then its stop LSN).
pub async fn latest(repo: &Repository) -> Result<Option<Snapshot>, DatabaseError> {
    // Summaries come sorted by when they finished: the newest base backup is the last.
    let newest = repo
        .snapshots()
        .await?
        .into_iter()
        .rfind(|s| s.kind == KIND);
    match newest {
        Some(s) => Ok(Some(repo.snapshot(&s.id).await?)),
        None => Ok(None),
    }
}

/// Takes one base backup; returns the snapshot once it and its WAL are durably stored.
pub async fn run(
    repo: &Repository,
    cfg: &DatabaseConfig,
    conninfo: &str,
    req: BaseBackup,
) -> Result<Snapshot, DatabaseError> {
    let span = tracing::info_span!("base_backup", backup_id = %req.id);
    run_inner(repo, cfg, conninfo, req).instrument(span).await
}

async fn run_inner(
    repo: &Repository,
    cfg: &DatabaseConfig,
    conninfo: &str,
    req: BaseBackup,
) -> Result<Snapshot, DatabaseError> {
    let client = connect(conninfo).await?;
    let server = server(&client, &cfg.data_dir, cfg.backup_standby).await?;
    let parent = match req.backup_type {
        BackupType::Full => None,
        BackupType::Incremental => {
            let parent = latest(repo).await?;
            if parent.is_none() {
                warn!("no base backup to build on: this incremental backup copies everything");
            }
            parent
        }
    };
    // The session must outlive the copy: no timeouts on it.
    client
        .batch_execute("set statement_timeout = 0; set lock_timeout = 0")
        .await?;
    if server.version >= 140_000 {
        client.batch_execute("set idle_session_timeout = 0").await?;
    }
    let label = format!("drmesh {}", req.id);
    let start_sql = if server.version >= 150_000 {
        "select pg_backup_start($1, true)::text"
    } else {
        "select pg_start_backup($1, true, false)::text"
    };
    let start: String = client.query_one(start_sql, &[&label]).await?.try_get(0)?;
    let start_lsn: Lsn = start
        .parse()
        .map_err(|_| DatabaseError::Postgres(format!("bad start LSN {start:?}")))?;
    let timeline: i32 = client
        .query_one("select timeline_id from pg_control_checkpoint()", &[])
        .await?
        .try_get(0)?;
    let timeline = timeline as u32;
    info!(start_lsn = %start_lsn, timeline, "backup started");

    let mut request = BackupRequest::new(req.id.clone(), KIND, cfg.data_dir.clone());
    // Relation files in fixed blocks; page by page against a parent of the same cluster
    // and timeline (a parent on another timeline could have page LSNs from another
    // history).
    let floor = parent
        .as_ref()
        .and_then(|p| p.postgres.as_ref())
        .filter(|p| p.timeline == timeline && p.system_identifier == server.system_identifier)
        .and_then(|p| p.start_lsn.parse::<Lsn>().ok());
    request.pages = Some(PageDelta {
        eligible: relation_main_fork,
        page_size: server.block_size,
        lsn_floor: floor.map(|f| f.0),
    });
    request.parent = parent;
    request.tags = req.tags.clone();
    request.progress = req.progress.clone();
    request.cancel = req.cancel.clone();
    request.exclude = Some(excluded);
    request.follow = Some(tablespace_link);
    let copied = repo.begin_backup(request).await;
    let stop_sql = if server.version >= 150_000 {
        "select lsn::text, labelfile, spcmapfile from pg_backup_stop(false)"
    } else {
        "select lsn::text, labelfile, spcmapfile from pg_stop_backup(false, false)"
    };
    // Stop the backup mode even when the copy failed, so the server is not left in it.
    let stopped = client.query_one(stop_sql, &[]).await;
    let mut pending = copied?;
    let row = match stopped {
        Ok(row) => row,
        Err(e) => {
            pending.abandon().await;
            return Err(e.into());
        }
    };
    let stop: String = row.try_get(0)?;
    let label_file: String = row.try_get(1)?;
    let map_file: Option<String> = row.try_get(2)?;
    let stop_lsn: Lsn = stop
        .parse()
        .map_err(|_| DatabaseError::Postgres(format!("bad stop LSN {stop:?}")))?;
    let stopped_at = Utc::now();
    info!(stop_lsn = %stop_lsn, "backup stopped");

    let root_like = pending
        .snapshot_mut()
        .entries
        .iter()
        .find(|e| e.kind == EntryKind::File)
        .cloned();
    let Some(like) = root_like else {
        pending.abandon().await;
        return Err(DatabaseError::Invalid(format!(
            "{} holds no files: is it a data directory?",
            cfg.data_dir.display()
        )));
    };
    pending
        .add_file("backup_label", label_file.as_bytes(), 0o600, &like)
        .await?;
    // Tablespaces are stored in place of their links (see `tablespace_link`), so a
    // restore has them inside its own data directory, never at production's paths:
    // `tablespace_map`, which would make recovery link back to those paths, is kept
    // in the snapshot's metadata only.
    let tablespaces = map_file.filter(|m| !m.is_empty());
    if server.standby {
        // The primary archives; ask it to close the segment this backup ends in.
        if let Err(e) = switch_primary_wal(&client).await {
            warn!(error = %e, "could not ask the primary to switch WAL; waiting for it to archive");
        }
    }
    let size = server.segment_size;
    let row_counts = if cfg.count_rows && !server.standby {
        match count_rows(&client, cfg.count_rows_timeout).await {
            Ok(counts) => Some(counts),
            Err(e) => {
                warn!(error = %e, "could not record row counts; the restorability test will not compare them");
                None
            }
        }
    } else {
        None
    };
    let stop_segments = needed_segments(timeline, start_lsn, stop_lsn, size);
    // With row counts, the WAL up to their segment switch is needed too.
    let wal_end = row_counts
        .as_ref()
        .and_then(|c| c.wal_end.parse::<Lsn>().ok())
        .filter(|end| end.0 > stop_lsn.0)
        .unwrap_or(stop_lsn);
    let needed = needed_segments(timeline, start_lsn, wal_end, size);
    if let Err(e) = wait_for_wal(repo, &req.id, timeline, &needed, cfg.archive_timeout).await {
        pending.abandon().await;
        return Err(e);
    }
    pending.snapshot_mut().postgres = Some(PgBackupInfo {
        start_lsn: start_lsn.to_string(),
        stop_lsn: stop_lsn.to_string(),
        timeline,
        start_wal: segment_name(timeline, segment_of(start_lsn, size), size),
        stop_wal: stop_segments.last().cloned().unwrap_or_default(),
        wal_segment_size: size,
        system_identifier: server.system_identifier,
        server_version: server.version,
        stopped_at,
        tablespace_map: tablespaces,
        row_counts,
    });
    Ok(pending.commit().await?)
}

/// Counts every user table's rows (plain, permanent tables of the connected database;
/// unlogged ones are empty after a restore) in one REPEATABLE READ transaction whose
/// first statement reads `pg_current_wal_insert_lsn()`: that statement takes the
/// snapshot, so the counts are the state a recovery that replays every WAL record
/// before that position, and none from it on, must show. Then a transaction id is
/// taken (a commit record after the position) and the WAL segment switched, so the WAL
/// recovery must read to stop there reaches the archive with the backup's own.
///
/// The small race: the snapshot is taken as the first statement starts and the position
/// is read a few microseconds later, while it runs. A transaction whose commit record
/// was inserted in between precedes the position — recovery replays it — but was not
/// yet visible to the snapshot, so its rows would show as a mismatch. Only a write
/// committing in that same microsecond window on a busy database can hit it.
///
/// A table whose count takes longer than `timeout` is skipped (named in `skipped`);
/// every count is a full scan.
async fn count_rows(client: &Client, timeout: Duration) -> Result<RowCounts, DatabaseError> {
    client
        .batch_execute("begin isolation level repeatable read read only")
        .await?;
    let counted = count_in_transaction(client, timeout).await;
    let ended = client
        .batch_execute(if counted.is_ok() {
            "commit"
        } else {
            "rollback"
        })
        .await;
    let (lsn, database, tables, skipped) = counted?;
    ended?;
    client.batch_execute("select txid_current()").await?;
    let wal_end: String = client
        .query_one("select pg_switch_wal()::text", &[])
        .await?
        .try_get(0)?;
    info!(
        lsn,
        tables = tables.len(),
        skipped = skipped.len(),
        "row counts recorded"
    );
    Ok(RowCounts {
        lsn,
        wal_end,
        database,
        tables,
        skipped,
    })
}

type Counted = (
    String,
    String,
    BTreeMap<String, i64>,
    BTreeMap<String, String>,
);

async fn count_in_transaction(
    client: &Client,
    timeout: Duration,
) -> Result<Counted, DatabaseError> {
    // The first statement: it takes the transaction's snapshot.
    let lsn: String = client
        .query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await?
        .try_get(0)?;
    let database: String = client
        .query_one("select current_database()", &[])
        .await?
        .try_get(0)?;
    let list = client
        .query(
            "select format('%I.%I', n.nspname, c.relname), n.nspname || '.' || c.relname \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where c.relkind = 'r' and c.relpersistence = 'p' \
               and n.nspname not in ('pg_catalog', 'information_schema') \
               and n.nspname !~ '^pg_(toast|temp_)' \
             order by 2",
            &[],
        )
        .await?;
    client
        .batch_execute(&format!(
            "set local statement_timeout = {}",
            timeout.as_millis()
        ))
        .await?;
    let mut tables = BTreeMap::new();
    let mut skipped = BTreeMap::new();
    for row in list {
        let quoted: String = row.try_get(0)?;
        let name: String = row.try_get(1)?;
        client.batch_execute("savepoint drmesh_count").await?;
        match client
            .query_one(&format!("select count(*) from {quoted}"), &[])
            .await
        {
            Ok(r) => {
                tables.insert(name, r.try_get::<_, i64>(0)?);
                client
                    .batch_execute("release savepoint drmesh_count")
                    .await?;
            }
            Err(e) => {
                let why = DatabaseError::from(e).to_string();
                warn!(table = %name, error = %why, "row count skipped");
                skipped.insert(name, why);
                client
                    .batch_execute("rollback to savepoint drmesh_count")
                    .await?;
            }
        }
    }
    Ok((lsn, database, tables, skipped))
}

/// On a standby: connects to the primary its `primary_conninfo` names (host, port, user,
/// password; database `postgres`) and switches WAL segment there.
async fn switch_primary_wal(standby: &Client) -> Result<(), DatabaseError> {
    let conninfo: String = standby
        .query_one("select current_setting('primary_conninfo')", &[])
        .await?
        .try_get(0)?;
    let mut kept = Vec::new();
    for (key, value) in libpq_pairs(&conninfo) {
        if matches!(
            key.as_str(),
            "host" | "hostaddr" | "port" | "user" | "password"
        ) {
            kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
    }
    if kept.is_empty() {
        return Err(DatabaseError::Invalid(
            "the standby has no primary_conninfo".into(),
        ));
    }
    kept.push("dbname=postgres".into());
    let primary = connect(&kept.join(" ")).await?;
    primary.batch_execute("select pg_switch_wal()").await?;
    Ok(())
}

/// `key=value` pairs of a libpq connection string (values may be single-quoted, with
/// backslash escapes).
fn libpq_pairs(conninfo: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if key.is_empty() {
            return out;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return out;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())).collect();
        }
        out.push((key, value));
    }
}

/// Waits (up to `timeout`) until every segment in `needed` is archived, like
/// pgBackRest's archive check; names the first one still missing otherwise.
async fn wait_for_wal(
    repo: &Repository,
    backup: &str,
    timeline: u32,
    needed: &[String],
    timeout: Duration,
) -> Result<(), DatabaseError> {
    let started = Instant::now();
    for name in needed {
        loop {
            if repo.has_wal(timeline, name).await? {
                break;
            }
            if started.elapsed() >= timeout {
                return Err(DatabaseError::WalMissing {
                    backup: backup.to_string(),
                    missing: name.clone(),
                    waited: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::excluded;

    #[test]
    fn libpq_connection_strings() {
        let pairs = super::libpq_pairs(
            "user=postgres passfile='/var/lib/postgresql/.pgpass' host=127.0.0.1 port=5432 application_name='a b\\'c'",
        );
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("user"), Some("postgres"));
        assert_eq!(get("host"), Some("127.0.0.1"));
        assert_eq!(get("port"), Some("5432"));
        assert_eq!(get("application_name"), Some("a b'c"));
        assert_eq!(get("passfile"), Some("/var/lib/postgresql/.pgpass"));
    }

    #[test]
    fn what_a_base_backup_leaves_out() {
        for out in [
            "pg_wal/000000010000000000000001",
            "pg_wal/archive_status/000000010000000000000001.done",
            "pg_replslot/slot1",
            "pg_replslot/slot1/state",
            "pg_stat_tmp/global.stat",
            "pg_subtrans/0000",
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "tablespace_map",
            "recovery.signal",
            "standby.signal",
            "global/pg_internal.init",
            "base/16384/pg_internal.init",
            "base/pgsql_tmp",
            "base/pgsql_tmp/pgsql_tmp123.0",
            "drmesh_tablespaces",
            "drmesh_tablespaces/16384/PG_15_202209061/5/16385",
        ] {
            assert!(excluded(out), "{out} should be left out");
        }
        for kept in [
            "pg_wal",
            "pg_wal/archive_status",
            "pg_replslot",
            "pg_subtrans",
            "base/16384/16385",
            "global/pg_control",
            "postgresql.conf",
            "postgresql.auto.conf",
            "pg_xact/0000",
            "pg_multixact/offsets/0000",
            "base/1/backup_label",
        ] {
            assert!(!excluded(kept), "{kept} should be kept");
        }
    }
}
