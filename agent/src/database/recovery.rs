//! Restoring a base backup into a data directory, set up to recover from the WAL archive
//! (to the end of the archive, or to a point in time).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tracing::info;

use super::basebackup::KIND;
use super::DatabaseError;
use crate::repo::restore::RestoreRequest;
use crate::repo::snapshot::Snapshot;
use crate::repo::Repository;

/// What to restore, and where.
#[derive(Clone, Debug)]
pub struct Restore {
    /// A base backup id; by default the newest one that can reach `time`.
    pub backup: Option<String>,
    /// A new or empty directory.
    pub target: PathBuf,
    /// Recover up to this instant; by default to the end of the archive.
    pub time: Option<DateTime<Utc>>,
    /// The port the restored server listens on (default: as backed up).
    pub port: Option<u16>,
    /// The agent configuration `restore_command` passes to `wal-fetch`.
    pub agent_config: PathBuf,
}

/// What was restored.
#[derive(Clone, Debug)]
pub struct Restored {
    pub backup: String,
    pub target: PathBuf,
    pub files: u64,
    pub bytes: u64,
}

/// The base backup to restore for `time`: the newest whose end is at or before it (its
/// consistent point), or the newest of all without a time.
pub async fn choose(
    repo: &Repository,
    backup: Option<&str>,
    time: Option<DateTime<Utc>>,
) -> Result<Snapshot, DatabaseError> {
    let snap = match backup {
        Some(id) => repo.snapshot(id).await?,
        None => {
            let mut best: Option<Snapshot> = None;
            for s in repo.snapshots().await? {
                if s.kind != KIND || time.is_some_and(|t| s.finished_at > t) {
                    continue;
                }
                if best
                    .as_ref()
                    .is_some_and(|b| b.finished_at >= s.finished_at)
                {
                    continue;
                }
                let full = repo.snapshot(&s.id).await?;
                let reaches = match (&full.postgres, time) {
                    (Some(pg), Some(t)) => pg.stopped_at <= t,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if reaches {
                    best = Some(full);
                }
            }
            best.ok_or_else(|| {
                DatabaseError::Invalid(match time {
                    Some(t) => format!("no base backup ends before {}", t.to_rfc3339()),
                    None => "the repository holds no base backup".into(),
                })
            })?
        }
    };
    let Some(pg) = &snap.postgres else {
        return Err(DatabaseError::Invalid(format!(
            "{} is not a PostgreSQL base backup",
            snap.id
        )));
    };
    if let Some(t) = time {
        if t < pg.stopped_at {
            return Err(DatabaseError::Invalid(format!(
                "{} is before the end of backup {} ({}): choose an earlier backup",
                t.to_rfc3339(),
                snap.id,
                pg.stopped_at.to_rfc3339()
            )));
        }
    }
    Ok(snap)
}

fn quoted_path(p: &Path) -> Result<String, DatabaseError> {
    let s = p
        .to_str()
        .ok_or_else(|| DatabaseError::Invalid(format!("{} is not valid UTF-8", p.display())))?;
    if s.contains('\'') || s.contains('\n') {
        return Err(DatabaseError::Invalid(format!(
            "{s:?}: a path with a quote or newline cannot go into restore_command"
        )));
    }
    Ok(format!("'{s}'"))
}

/// The settings appended to `postgresql.auto.conf`: fetch WAL from the archive, stop at
/// the target time and promote, and do not archive into the production archive.
pub fn recovery_settings(
    agent: &Path,
    config: &Path,
    time: Option<DateTime<Utc>>,
    port: Option<u16>,
    backup: &str,
) -> Result<String, DatabaseError> {
    // Inside a single-quoted PostgreSQL string: the shell quotes are doubled.
    let command = format!(
        "{} --config {} wal-fetch %f %p",
        quoted_path(agent)?,
        quoted_path(config)?
    )
    .replace('\'', "''");
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
    if let Some(p) = port {
        text += &format!("port = {p}\n");
    }
    Ok(text)
}

/// Restores a base backup into `req.target` and sets it up to recover; the server is
/// not started.
pub async fn restore(repo: &Repository, req: &Restore) -> Result<Restored, DatabaseError> {
    let snap = choose(repo, req.backup.as_deref(), req.time).await?;
    if req.target.exists()
        && std::fs::read_dir(&req.target)
            .map_err(|e| DatabaseError::Io(format!("{}: {e}", req.target.display())))?
            .next()
            .is_some()
    {
        return Err(DatabaseError::Invalid(format!(
            "{} is not empty: restore into a new or empty directory",
            req.target.display()
        )));
    }
    let agent = std::env::current_exe()
        .map_err(|e| DatabaseError::Io(format!("where is this program: {e}")))?;
    let settings = recovery_settings(&agent, &req.agent_config, req.time, req.port, &snap.id)?;
    info!(backup = %snap.id, target = %req.target.display(), "restoring base backup");
    let report = repo
        .restore(RestoreRequest::new(snap.id.clone(), req.target.clone()))
        .await?;
    if !report.failed.is_empty() {
        return Err(DatabaseError::Invalid(format!(
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
        .map_err(|e| DatabaseError::Io(format!("restore task: {e}")))??;
    Ok(Restored {
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
) -> Result<(), DatabaseError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &str, e: std::io::Error| DatabaseError::Io(format!("{what}: {e}"));
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("chmod target", e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_quote_paths_for_shell_and_postgres() {
        let t = DateTime::parse_from_rfc3339("2026-11-25T10:00:00.5Z")
            .expect("time")
            .with_timezone(&Utc);
        let s = recovery_settings(
            Path::new("/usr/bin/drmesh-agent"),
            Path::new("/etc/drmesh/agent.toml"),
            Some(t),
            Some(5433),
            "full_1",
        )
        .expect("settings");
        assert!(s.contains(
            "restore_command = '''/usr/bin/drmesh-agent'' --config ''/etc/drmesh/agent.toml'' wal-fetch %f %p'"
        ), "{s}");
        assert!(
            s.contains("recovery_target_time = '2026-11-25 10:00:00.500000+00'"),
            "{s}"
        );
        assert!(s.contains("port = 5433"), "{s}");
        assert!(s.contains("archive_mode = 'off'"), "{s}");
        assert!(recovery_settings(Path::new("/a'b"), Path::new("/c"), None, None, "x").is_err());
    }
}
