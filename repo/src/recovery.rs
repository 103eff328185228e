//! Restoring a base backup into a data directory set up to recover from the WAL archive
//! (to the end of the archive, to a point in time, to an LSN or to the backup's stop
//! point), and what a recovery to an instant would use ([`Repository::pitr_info`]).
//! Starting the recovered server is the caller's: this crate runs no process.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tracing::info;

use drmesh_pg::TABLESPACES_DIR;
use drmesh_protocol::api::PitrInfo;

use super::{RepoError, Repository, RestoreRequest, Snapshot, KIND_POSTGRES as KIND};

/// What to restore, and where.
#[derive(Clone, Debug)]
pub struct RecoveryRequest {
    /// A base backup id; by default the newest one that can reach `time`.
    pub backup: Option<String>,
    /// A new or empty directory.
    pub target: PathBuf,
    /// Recover up to this instant; by default to the end of the archive.
    pub time: Option<DateTime<Utc>>,
    /// Stop as soon as the backup is consistent (its stop point), instead of replaying
    /// the whole archive.
    pub immediate: bool,
    /// Stop just before the WAL record at this LSN (`recovery_target_lsn`, exclusive):
    /// the point a base backup's row counts were taken at.
    pub lsn: Option<String>,
    /// The port the restored server listens on (default: as backed up).
    pub port: Option<u16>,
    /// The shell command PostgreSQL runs to fetch WAL (with `%f` and `%p`): the agent's
    /// or the CLI's `wal-fetch`, its arguments quoted with [`shell_quote`].
    pub restore_command: String,
    /// Counters for a progress display.
    pub progress: std::sync::Arc<super::Progress>,
    /// Re-hash every chunk and check every file's SHA-256 while restoring (a
    /// verification's restorability test).
    pub check_data: bool,
    /// Sync the restored files (default); off only for a throw-away copy whose server
    /// runs with `fsync = off`.
    pub durable: bool,
}

/// What was restored.
#[derive(Clone, Debug)]
pub struct RestoredBackup {
    pub backup: String,
    pub target: PathBuf,
    pub files: u64,
    pub bytes: u64,
}

/// The base backup to restore for `time`: the newest whose end is at or before it (its
/// consistent point), or the newest of all without a time.
impl Repository {
    /// Restores a base backup into `req.target` and sets it up to recover
    /// (`postgresql.auto.conf`, `recovery.signal`, tablespace links); the server is not
    /// started.
    pub async fn restore_for_recovery(
        &self,
        req: &RecoveryRequest,
    ) -> Result<RestoredBackup, RepoError> {
        restore(self, req).await
    }

    /// `GET /recovery/point-in-time/:t`: which base backup and WAL a recovery to `t`
    /// would use, whether the chain is whole, and the recoverable window.
    pub async fn pitr_info(&self, t: DateTime<Utc>) -> Result<PitrInfo, RepoError> {
        info(self, t).await
    }
}

async fn choose(
    repo: &Repository,
    backup: Option<&str>,
    time: Option<DateTime<Utc>>,
) -> Result<Snapshot, RepoError> {
    let snap = match backup {
        Some(id) => repo.snapshot(id).await?,
        None => {
            // Summaries come sorted by when they finished: the newest that reaches the
            // target is the last that does. A backup reaches it once it was consistent
            // (its end), which is the earliest instant `info` offers; it finished (its
            // WAL archived, its manifest written) a little later.
            let summaries = repo.snapshots().await?;
            let ends = summaries
                .iter()
                .filter(|s| s.kind == KIND)
                .filter_map(|s| Some((s, s.postgres.as_ref()?.stopped_at)));
            let best = ends
                .clone()
                .rfind(|(_, end)| time.is_none_or(|t| *end <= t))
                .map(|(s, _)| s);
            let best = best.ok_or_else(|| {
                RepoError::Invalid(match (time, ends.map(|(_, end)| end).min()) {
                    (Some(t), Some(earliest)) => format!(
                        "no base backup ends before {}; the earliest recoverable time is {}",
                        t.to_rfc3339(),
                        earliest.to_rfc3339()
                    ),
                    _ => "the repository holds no base backup".into(),
                })
            })?;
            repo.snapshot(&best.id).await?
        }
    };
    let Some(pg) = &snap.postgres else {
        return Err(RepoError::Invalid(format!(
            "{} is not a PostgreSQL base backup",
            snap.id
        )));
    };
    if let Some(t) = time {
        if t < pg.stopped_at {
            return Err(RepoError::Invalid(format!(
                "{} is before the end of backup {} ({}): choose an earlier backup",
                t.to_rfc3339(),
                snap.id,
                pg.stopped_at.to_rfc3339()
            )));
        }
    }
    Ok(snap)
}

/// `s` in single quotes for the shell; refused when it holds a quote or a newline,
/// which could not survive both the shell and PostgreSQL's own quoting.
pub fn shell_quote(s: &str) -> Result<String, RepoError> {
    if s.contains('\'') || s.contains('\n') {
        return Err(RepoError::Invalid(format!(
            "{s:?}: a value with a quote or newline cannot go into restore_command"
        )));
    }
    Ok(format!("'{s}'"))
}

/// The settings appended to `postgresql.auto.conf`: fetch WAL from the archive, stop at
/// the target time and promote, and do not archive into the production archive.
fn recovery_settings(
    restore_command: &str,
    time: Option<DateTime<Utc>>,
    immediate: bool,
    lsn: Option<&str>,
    port: Option<u16>,
    backup: &str,
) -> String {
    // Inside a single-quoted PostgreSQL string, quotes are doubled.
    let command = restore_command.replace('\'', "''");
    let mut text = format!(
        "\n# Added by drmesh when restoring base backup {backup}.\n\
         restore_command = '{command}'\n\
         recovery_target_action = 'promote'\n\
         archive_mode = 'off'\n"
    );
    if let Some(t) = time {
        text += &format!(
            "recovery_target_time = '{}'\n",
            t.format("%Y-%m-%d %H:%M:%S%.6f+00")
        );
    }
    if immediate {
        text += "recovery_target = 'immediate'\n";
    }
    if let Some(lsn) = lsn {
        // The LSN is where the next record starts: replay everything before it, and
        // not the record at it (which may commit what the counting snapshot did not see).
        text += &format!(
            "recovery_target_lsn = '{}'\nrecovery_target_inclusive = off\n",
            lsn.replace('\'', "")
        );
    }
    if let Some(p) = port {
        text += &format!("port = {p}\n");
    }
    text
}

/// Restores a base backup into `req.target` and sets it up to recover; the server is
/// not started.
async fn restore(repo: &Repository, req: &RecoveryRequest) -> Result<RestoredBackup, RepoError> {
    let snap = choose(repo, req.backup.as_deref(), req.time).await?;
    if req.target.exists()
        && std::fs::read_dir(&req.target)
            .map_err(|e| RepoError::Io(format!("{}: {e}", req.target.display())))?
            .next()
            .is_some()
    {
        return Err(RepoError::Invalid(format!(
            "{} is not empty: restore into a new or empty directory",
            req.target.display()
        )));
    }
    if [req.immediate, req.time.is_some(), req.lsn.is_some()]
        .iter()
        .filter(|x| **x)
        .count()
        > 1
    {
        return Err(RepoError::Invalid(
            "recover to one target: a time, an LSN or the backup's stop point".into(),
        ));
    }
    let settings = recovery_settings(
        &req.restore_command,
        req.time,
        req.immediate,
        req.lsn.as_deref(),
        req.port,
        &snap.id,
    );
    info!(backup = %snap.id, target = %req.target.display(), "restoring base backup");
    let report = repo
        .restore({
            let mut r = RestoreRequest::new(snap.id.clone(), req.target.clone());
            r.progress = req.progress.clone();
            r.check_data = req.check_data;
            r.sync = req.durable;
            r
        })
        .await?;
    if !report.failed.is_empty() {
        return Err(RepoError::Invalid(format!(
            "{} files could not be restored (first: {}: {})",
            report.failed.len(),
            report.failed[0].path,
            report.failed[0].reason
        )));
    }
    let target = req.target.clone();
    let owner = snap.entries.first().map(|e| (e.uid, e.gid));
    tokio::task::spawn_blocking(move || finish_directory(&target, owner, &settings))
        .await
        .map_err(|e| RepoError::Io(format!("restore task: {e}")))??;
    Ok(RestoredBackup {
        backup: snap.id,
        target: req.target.clone(),
        files: report.files,
        bytes: report.bytes,
    })
}

/// PostgreSQL wants its data directory private and owned by its user; then the recovery
/// settings and `recovery.signal`, all synced.
fn finish_directory(
    target: &Path,
    owner: Option<(u32, u32)>,
    settings: &str,
) -> Result<(), RepoError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &str, e: std::io::Error| RepoError::Io(format!("{what}: {e}"));
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("chmod target", e))?;
    relink_tablespaces(target, owner)?;
    let auto = target.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&auto)
        .map_err(|e| io("open postgresql.auto.conf", e))?;
    f.write_all(settings.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io("write postgresql.auto.conf", e))?;
    let signal = target.join("recovery.signal");
    std::fs::File::create(&signal)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("create recovery.signal", e))?;
    if nix::unistd::geteuid().is_root() {
        if let Some((uid, gid)) = owner {
            for p in [target, auto.as_path(), signal.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .map_err(|e| io(&format!("chown {}", p.display()), e))?;
            }
        }
    }
    std::fs::File::open(target)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync target", e))
}

/// A backup holds each tablespace in place of its `pg_tblspc/<oid>` link; PostgreSQL
/// wants links there, so the contents move to `drmesh_tablespaces/<oid>` and the link
/// points at them — a restore never touches the paths production's tablespaces use.
fn relink_tablespaces(target: &Path, owner: Option<(u32, u32)>) -> Result<(), RepoError> {
    let io = |what: String, e: std::io::Error| RepoError::Io(format!("{what}: {e}"));
    let links = target.join("pg_tblspc");
    let Ok(entries) = std::fs::read_dir(&links) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !is_dir {
            continue;
        }
        let home = target.join(TABLESPACES_DIR);
        std::fs::create_dir_all(&home).map_err(|e| io(format!("create {}", home.display()), e))?;
        let moved = home.join(entry.file_name());
        std::fs::rename(entry.path(), &moved)
            .map_err(|e| io(format!("move {}", entry.path().display()), e))?;
        std::os::unix::fs::symlink(&moved, entry.path())
            .map_err(|e| io(format!("link {}", entry.path().display()), e))?;
        if nix::unistd::geteuid().is_root() {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&home, Some(uid), Some(gid))
                    .and_then(|()| std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid)))
                    .map_err(|e| io(format!("chown {}", home.display()), e))?;
            }
        }
    }
    Ok(())
}

/// Restore and recovery speeds assumed before anything was measured: 200 MB/s of base
/// backup and 16 MiB of WAL per 0.2 s.
const RESTORE_BYTES_PER_SEC: f64 = 200e6;
const WAL_SEGMENTS_PER_SEC: f64 = 5.0;

/// `GET /recovery/point-in-time/:t`: which base backup and WAL a recovery to `t` would
/// use, whether the chain is whole, and the recoverable window.
async fn info(repo: &Repository, t: DateTime<Utc>) -> Result<PitrInfo, RepoError> {
    let mut backups: Vec<_> = repo
        .snapshots()
        .await?
        .into_iter()
        .filter(|s| s.kind == KIND && s.postgres.is_some())
        .collect();
    backups.sort_by_key(|b| b.postgres.as_ref().map(|p| p.stopped_at));
    let wal = repo.wal_files_archived().await?;
    let histories = histories(repo, &wal).await?;
    let earliest = backups
        .first()
        .and_then(|b| b.postgres.as_ref())
        .map(|p| p.stopped_at);
    // The latest instant: the archive time of the last segment of the unbroken chain
    // that starts at the newest backup's first segment.
    let latest = backups.last().and_then(|b| {
        let pg = b.postgres.as_ref()?;
        chain(
            &wal,
            &histories,
            pg.timeline,
            &pg.start_wal,
            pg.wal_segment_size,
        )
        .last()
        .map(|(_, _, at)| *at)
    });
    let mut out = PitrInfo {
        target_timestamp: t,
        recoverable: false,
        reason: None,
        backup_id: None,
        backup_completed_at: None,
        wal_start: None,
        wal_end: None,
        wal_segments: 0,
        earliest_recoverable_time: earliest,
        latest_recoverable_time: latest,
        estimated_duration_seconds: 0,
        estimated_duration: String::new(),
    };
    let Some(backup) = backups
        .iter()
        .rev()
        .find(|b| b.postgres.as_ref().is_some_and(|p| p.stopped_at <= t))
    else {
        out.reason = Some(match earliest {
            Some(e) => format!(
                "no base backup ends before it; the earliest recoverable time is {}",
                e.to_rfc3339()
            ),
            None => "the repository holds no base backup".into(),
        });
        return Ok(out);
    };
    let Some(pg) = backup.postgres.as_ref() else {
        return Ok(out);
    };
    out.backup_id = Some(backup.id.clone());
    out.backup_completed_at = Some(pg.stopped_at);
    out.wal_start = Some(pg.start_wal.clone());
    let segments = chain(
        &wal,
        &histories,
        pg.timeline,
        &pg.start_wal,
        pg.wal_segment_size,
    );
    // Replay needs the segments up to the first one archived after the target.
    let needed: Vec<_> = match segments.iter().position(|(_, _, at)| *at >= t) {
        Some(i) => segments[..=i].to_vec(),
        None => segments.clone(),
    };
    out.wal_end = needed.last().map(|(_, name, _)| name.clone());
    out.wal_segments = needed.len() as u64;
    let covered = segments.iter().any(|(_, _, at)| *at >= t);
    let reaches_stop = needed
        .last()
        .is_some_and(|(_, name, _)| name.as_str() >= pg.stop_wal.as_str());
    if !covered || !reaches_stop {
        let next = segments.last().map(|(segno, name, _)| {
            let tl = drmesh_pg::WalName::parse(name).map_or(pg.timeline, |n| n.timeline);
            drmesh_pg::segment_name(tl, segno + 1, pg.wal_segment_size)
        });
        out.reason = Some(match (latest, next) {
            (Some(l), Some(n)) => format!(
                "the archive's WAL after backup {} ends at {} (archived {}); {n} is missing",
                backup.id,
                segments.last().map(|s| s.1.as_str()).unwrap_or("?"),
                l.to_rfc3339()
            ),
            _ => format!("no WAL of backup {} is archived", backup.id),
        });
        return Ok(out);
    }
    out.recoverable = true;
    let secs = backup.stats.bytes as f64 / RESTORE_BYTES_PER_SEC
        + out.wal_segments as f64 / WAL_SEGMENTS_PER_SEC
        + 5.0;
    out.estimated_duration_seconds = secs.ceil() as u64;
    out.estimated_duration = humantime::format_duration(std::time::Duration::from_secs(
        out.estimated_duration_seconds,
    ))
    .to_string();
    Ok(out)
}

/// Each archived timeline's ancestry, from its history file: (parent timeline, LSN
/// where the parent branched off), oldest first.
type Histories = std::collections::BTreeMap<u32, Vec<(u32, u64)>>;

/// Reads every archived history file (`0000000N.history`: one line per ancestor,
/// `parent<TAB>switch LSN<TAB>reason`); an unreadable one is left out (the chain then
/// stops at that switch, as it would without the file).
async fn histories(
    repo: &Repository,
    wal: &[(u32, String, DateTime<Utc>)],
) -> Result<Histories, RepoError> {
    let mut out = Histories::new();
    for (tl, name, _) in wal.iter().filter(|(_, n, _)| n.ends_with(".history")) {
        let Ok(text) = repo.get_wal(*tl, name).await else {
            continue;
        };
        out.insert(
            *tl,
            drmesh_pg::parse_history(&String::from_utf8_lossy(&text)),
        );
    }
    Ok(out)
}

/// The archived segments a recovery from a base backup on `timeline` starting at
/// `start` replays, while they follow each other: (segment number, name, archived at).
/// Like PostgreSQL's `recovery_target_timeline = 'latest'`, it follows the newest
/// timeline descending from `timeline`: the parent's segments up to the one holding the
/// switch, then the child's from it on.
fn chain(
    wal: &[(u32, String, DateTime<Utc>)],
    histories: &Histories,
    timeline: u32,
    start: &str,
    segment_size: u64,
) -> Vec<(u64, String, DateTime<Utc>)> {
    use drmesh_pg::{WalKind, WalName};
    // The newest timeline with `timeline` in its ancestry, and the switches leading there.
    let (target, switches) = histories
        .iter()
        .rev()
        .find_map(|(tl, ancestry)| {
            let i = ancestry.iter().position(|(p, _)| *p == timeline)?;
            Some((*tl, ancestry[i..].to_vec()))
        })
        .unwrap_or((timeline, Vec::new()));
    // (timeline, first segment, first segment of the next timeline) per step.
    let mut steps: Vec<(u32, Option<u64>, Option<u64>)> = Vec::new();
    let mut from = None;
    for (parent, lsn) in &switches {
        let until = lsn / segment_size;
        steps.push((*parent, from, Some(until)));
        from = Some(until);
    }
    steps.push((target, from, None));
    let start_segno = WalName::parse(start)
        .ok()
        .map(|n| n.segment_number(segment_size));
    let mut out: Vec<(u64, String, DateTime<Utc>)> = Vec::new();
    for (tl, from, until) in steps {
        let mut segs: Vec<(u64, String, DateTime<Utc>)> = wal
            .iter()
            .filter(|(t, _, _)| *t == tl)
            .filter_map(|(_, name, at)| {
                let n = WalName::parse(name).ok()?;
                (n.kind == WalKind::Segment)
                    .then(|| (n.segment_number(segment_size), name.clone(), *at))
            })
            .filter(|(segno, _, _)| {
                from.or(start_segno).is_none_or(|f| *segno >= f) && until.is_none_or(|u| *segno < u)
            })
            .collect();
        segs.sort();
        for s in segs {
            if out.last().is_some_and(|(n, _, _)| s.0 != n + 1) {
                return out;
            }
            out.push(s);
        }
        // A step that ends before its switch segment breaks the chain.
        if let Some(u) = until {
            if out.last().is_none_or(|(n, _, _)| n + 1 < u) {
                return out;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    const SEG: u64 = 16 << 20;

    fn wal(files: &[(u32, u64)]) -> Vec<(u32, String, DateTime<Utc>)> {
        files
            .iter()
            .map(|(tl, n)| {
                let at = Utc.timestamp_opt(1_000 + *n as i64 * 10 + *tl as i64, 0);
                (
                    *tl,
                    drmesh_pg::segment_name(*tl, *n, SEG),
                    at.single().unwrap_or_default(),
                )
            })
            .collect()
    }

    fn names(c: &[(u64, String, DateTime<Utc>)]) -> Vec<(u32, u64)> {
        c.iter()
            .map(|(n, name, _)| (u32::from_str_radix(&name[..8], 16).unwrap_or(0), *n))
            .collect()
    }

    #[test]
    fn the_chain_follows_the_newest_timeline_across_its_switch() {
        // Timeline 1 up to segment 4 (the old primary went on after the split); timeline 2
        // branched off inside segment 3, and has 3..=5.
        let mut files = wal(&[(1, 1), (1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (2, 5)]);
        files.push((1, "000000010000000000000003.partial".into(), Utc::now()));
        let history = drmesh_pg::parse_history("1\t0/3000060\tno recovery target specified\n");
        assert_eq!(history, [(1, 0x3000060)]);
        let start = drmesh_pg::segment_name(1, 1, SEG);
        let with = Histories::from([(2, history)]);
        let c = chain(&files, &with, 1, &start, SEG);
        assert_eq!(names(&c), [(1, 1), (1, 2), (2, 3), (2, 4), (2, 5)]);
        // Without the history file, only the backup's own timeline.
        let c = chain(&files, &Histories::new(), 1, &start, SEG);
        assert_eq!(names(&c), [(1, 1), (1, 2), (1, 3), (1, 4)]);
        // A gap before the switch stops the chain there.
        let gap = wal(&[(1, 1), (2, 3), (2, 4)]);
        assert_eq!(names(&chain(&gap, &with, 1, &start, SEG)), [(1, 1)]);
        // Two switches: 1 -> 2 in segment 3, 2 -> 3 in segment 5; a backup on 2 follows 3.
        let three = wal(&[(2, 3), (2, 4), (3, 5), (3, 6)]);
        let h = Histories::from([
            (2, vec![(1, 0x3000060)]),
            (
                3,
                drmesh_pg::parse_history("1\t0/3000060\tx\n2\t0/5000000\ty\n"),
            ),
        ]);
        let start2 = drmesh_pg::segment_name(2, 3, SEG);
        assert_eq!(
            names(&chain(&three, &h, 2, &start2, SEG)),
            [(2, 3), (2, 4), (3, 5), (3, 6)]
        );
    }

    use super::*;

    /// A base backup's manifest (no files: `choose` reads only its summary) that ended at
    /// `end` and finished `finish_after` later.
    async fn base_backup(repo: &Repository, id: &str, end: DateTime<Utc>, finish_after: i64) {
        let finished = end + chrono::Duration::seconds(finish_after);
        crate::roundtrip_tests::empty_manifest(repo, id, KIND, end, finished, Some(1)).await;
    }

    #[tokio::test]
    async fn a_target_at_the_oldest_backups_end_chooses_it_and_one_before_names_that_end() {
        let (_dir, repo) = crate::roundtrip_tests::temp_repo().await;
        let t0 = DateTime::parse_from_rfc3339("2026-11-25T10:00:00.123456789Z")
            .expect("time")
            .with_timezone(&Utc);
        base_backup(&repo, "full_1", t0, 3).await;
        base_backup(&repo, "full_2", t0 + chrono::Duration::hours(1), 3).await;
        // At the oldest end, before that backup finished: it is the one (as `info` says).
        let at_end = choose(&repo, None, Some(t0)).await.expect("choose");
        assert_eq!(at_end.id, "full_1");
        let later = t0 + chrono::Duration::hours(1) + chrono::Duration::seconds(1);
        assert_eq!(
            choose(&repo, None, Some(later)).await.expect("choose").id,
            "full_2"
        );
        let before = t0 - chrono::Duration::nanoseconds(1);
        let err = choose(&repo, None, Some(before))
            .await
            .expect_err("refused");
        assert!(
            err.to_string().ends_with(&format!(
                "the earliest recoverable time is {}",
                t0.to_rfc3339()
            )),
            "{err}"
        );
    }

    #[test]
    fn settings_quote_paths_for_shell_and_postgres() {
        let t = DateTime::parse_from_rfc3339("2026-11-25T10:00:00.5Z")
            .expect("time")
            .with_timezone(&Utc);
        let command = format!(
            "{} --config {} wal-fetch %f %p",
            shell_quote("/usr/bin/drmesh-agent").expect("quote"),
            shell_quote("/etc/drmesh/agent.toml").expect("quote")
        );
        let s = recovery_settings(&command, Some(t), false, None, Some(5433), "full_1");
        assert!(s.contains(
            "restore_command = '''/usr/bin/drmesh-agent'' --config ''/etc/drmesh/agent.toml'' wal-fetch %f %p'"
        ), "{s}");
        assert!(
            s.contains("recovery_target_time = '2026-11-25 10:00:00.500000+00'"),
            "{s}"
        );
        assert!(s.contains("port = 5433"), "{s}");
        assert!(s.contains("archive_mode = 'off'"), "{s}");
        assert!(shell_quote("/a'b").is_err());
        assert!(shell_quote("/a\nb").is_err());
    }
}
