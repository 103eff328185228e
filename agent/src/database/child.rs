//! The agent takes a base backup the coordinator asked for in a child process: its own
//! binary's `backup` command, run as the data directory's owner (the user
//! `archive_command` runs as, so both write the repository with the same rights), which
//! reports progress as JSON lines and stops if the agent dies.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use drmesh_protocol::api::DatabaseBackupOutcome;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tracing::warn;

use super::DatabaseError;
use crate::config::DatabaseConfig;
use crate::documents::ProgressFn;

/// One line of the child's standard output.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChildLine {
    Progress { percent: f32, message: String },
    Outcome(Box<DatabaseBackupOutcome>),
}

/// Runs `drmesh-agent --config CONFIG backup TYPE --id ID --report-json` and returns its
/// outcome; its progress goes to `progress`.
pub async fn backup(
    config: &Path,
    db: &DatabaseConfig,
    backup_id: &str,
    backup_type: &str,
    tags: &BTreeMap<String, String>,
    progress: ProgressFn,
) -> Result<DatabaseBackupOutcome, DatabaseError> {
    if !matches!(backup_type, "full" | "incr") {
        return Err(DatabaseError::Invalid(format!(
            "backup type {backup_type:?}: full or incr"
        )));
    }
    crate::repo::backup::valid_snapshot_id(backup_id)?;
    let exe = std::env::current_exe()
        .map_err(|e| DatabaseError::Io(format!("where is this program: {e}")))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--config")
        .arg(config)
        .args(["backup", backup_type, "--id", backup_id, "--report-json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir("/")
        .kill_on_drop(true);
    for (k, v) in tags {
        cmd.arg("--tag").arg(format!("{k}={v}"));
    }
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&db.data_dir)
            .map_err(|e| DatabaseError::Io(format!("{}: {e}", db.data_dir.display())))?;
        cmd.uid(meta.uid()).gid(meta.gid());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| DatabaseError::Io(format!("start the backup process: {e}")))?;
    let stderr = child.stderr.take();
    let errors = tokio::spawn(async move {
        let mut tail: Vec<String> = Vec::new();
        if let Some(err) = stderr {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
        }
        tail
    });
    let mut outcome = None;
    if let Some(out) = child.stdout.take() {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<ChildLine>(&line) {
                Ok(ChildLine::Progress { percent, message }) => progress(percent, message),
                Ok(ChildLine::Outcome(o)) => outcome = Some(*o),
                Err(_) => warn!(line, "unexpected output from the backup process"),
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| DatabaseError::Io(format!("wait for the backup process: {e}")))?;
    let tail = errors.await.unwrap_or_default();
    match (status.success(), outcome) {
        (true, Some(o)) => Ok(o),
        _ => {
            // The last error line is the reason; the lines before it are log context.
            let reason = tail
                .iter()
                .rev()
                .find(|l| l.starts_with("drmesh-agent:"))
                .map(|l| l.trim_start_matches("drmesh-agent:").trim().to_string())
                .unwrap_or_else(|| {
                    format!(
                        "the backup process ended with {status}: {}",
                        tail.join(" / ")
                    )
                });
            Err(DatabaseError::Invalid(reason))
        }
    }
}
