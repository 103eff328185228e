//! The agent runs the database work the coordinator asks for (base backups,
//! point-in-time recoveries) in a child process: its own binary's one-shot command, run as
//! the data directory's owner (the user `archive_command` runs as, so both use the
//! repository with the same rights, and the user PostgreSQL must run as), which reports
//! progress and its outcome as JSON lines and stops if the agent dies.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use drmesh_protocol::api::DatabaseBackupOutcome;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tracing::warn;

use super::DatabaseError;
use crate::config::DatabaseConfig;
use crate::progress::ProgressFn;

/// One line of the child's standard output.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChildLine {
    Progress { percent: f32, message: String },
    Outcome(serde_json::Value),
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
    if !matches!(backup_type, "full" | "incr" | "logical") {
        return Err(DatabaseError::Invalid(format!(
            "backup type {backup_type:?}: full, incr or logical"
        )));
    }
    drmesh_repo::valid_snapshot_id(backup_id)?;
    let mut args: Vec<String> = ["backup", backup_type, "--id", backup_id]
        .map(String::from)
        .to_vec();
    for (k, v) in tags {
        args.push("--tag".into());
        args.push(format!("{k}={v}"));
    }
    run(config, &db.data_dir, &args, progress).await
}

/// Runs `drmesh-agent --config CONFIG ARGS --report-json` as the owner of `owner_of`
/// (when we are root) and returns the outcome it reports, read as `T`.
pub async fn run<T: serde::de::DeserializeOwned>(
    config: &Path,
    owner_of: &Path,
    args: &[String],
    progress: ProgressFn,
) -> Result<T, DatabaseError> {
    let exe = std::env::current_exe()
        .map_err(|e| DatabaseError::Io(format!("where is this program: {e}")))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .arg("--report-json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir("/")
        .kill_on_drop(true);
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(owner_of)
            .map_err(|e| DatabaseError::Io(format!("{}: {e}", owner_of.display())))?;
        cmd.uid(meta.uid()).gid(meta.gid());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| DatabaseError::Io(format!("start the {} process: {e}", args[0])))?;
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
                Ok(ChildLine::Outcome(o)) => outcome = Some(o),
                Err(_) => warn!(line, "unexpected output from the {} process", args[0]),
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| DatabaseError::Io(format!("wait for the {} process: {e}", args[0])))?;
    let tail = errors.await.unwrap_or_default();
    match (status.success(), outcome) {
        (true, Some(o)) => serde_json::from_value(o)
            .map_err(|e| DatabaseError::Invalid(format!("the {} process reported {e}", args[0]))),
        _ => {
            // The last error line is the reason; the lines before it are log context.
            let reason = tail
                .iter()
                .rev()
                .find(|l| l.starts_with("drmesh-agent:"))
                .map(|l| l.trim_start_matches("drmesh-agent:").trim().to_string())
                .unwrap_or_else(|| {
                    format!(
                        "the {} process ended with {status}: {}",
                        args[0],
                        tail.join(" / ")
                    )
                });
            Err(DatabaseError::Invalid(reason))
        }
    }
}

/// Prints one report line on stdout (for `--report-json`).
pub fn report(line: &ChildLine) {
    if let Ok(text) = serde_json::to_string(line) {
        println!("{text}");
    }
}
