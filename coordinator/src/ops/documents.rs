//! Document backups as the coordinator sees them: a record per backup in the store, the
//! command that makes an agent do the work, and the record updated from its progress
//! reports and its result. Verification and restore hang off the same record.
//!
//! Architecture Invariant: a backup record is COMPLETED only when the agent's result
//! says the primary location holds the snapshot (its manifest written last, durably);
//! anything else — an error, a timeout, a lost connection, a coordinator restart mid-way
//! — ends FAILED with the reason, and raises the runbook's CRITICAL alert.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use drmesh_protocol::api::{
    BackupAccepted, BackupStatus, DocumentBackup, DocumentBackupOutcome, DocumentRestoreOutcome,
    DocumentRestoreRequest, DocumentStatistics, DocumentVerification, DocumentsReport,
    LocationStatistics, Severity, Verdict,
};
use drmesh_protocol::ids::runbook_id;
use drmesh_protocol::{AgentId, CommandKind};
use tracing::{error, info, warn, Instrument};

use crate::alerts::{self, BACKUP_FAILED, REPLICATION_FAILED, VERIFICATION_FAILED};
use crate::error::Error;
use crate::ops::jobs::{self, Finished};
use crate::state::Coordinator;
use crate::store::{Namespace, Store, StoreError, StoreExt};
use crate::transport;

/// Why nothing can start: no agent that could do it.
pub const NO_AGENT: &str = "no agent with a [documents] configuration is connected and UP";

/// Capability an agent announces when it has a `[documents]` configuration.
pub const CAPABILITY: &str = drmesh_protocol::capability::DOCUMENTS;

/// Key prefix of document backups in the `backups` namespace (ids sort by time).
const PREFIX: &str = "docs_";

pub fn get(store: &dyn Store, id: &str) -> Result<Option<DocumentBackup>, StoreError> {
    if !id.starts_with(PREFIX) {
        return Ok(None);
    }
    store.get_json(Namespace::Backups, id)
}

fn must_get(store: &dyn Store, id: &str) -> Result<DocumentBackup, Error> {
    get(store, id)?.ok_or_else(|| Error::NotFound(format!("no document backup {id}")))
}

/// A backup that finished well: COMPLETED, or VERIFIED since.
fn is_done(status: BackupStatus) -> bool {
    matches!(status, BackupStatus::Completed | BackupStatus::Verified)
}

/// The record of a finished backup, for an operation (`doing`) that needs one.
fn completed(store: &dyn Store, id: &str, doing: &str) -> Result<DocumentBackup, Error> {
    let rec = must_get(store, id)?;
    if !is_done(rec.status) {
        return Err(Error::Conflict(format!(
            "backup {id} is {:?}; only a completed backup can be {doing}",
            rec.status
        )));
    }
    Ok(rec)
}

fn save(store: &dyn Store, rec: &DocumentBackup) -> Result<(), StoreError> {
    store.put_json(Namespace::Backups, &rec.backup_id, rec)
}

/// Newest first, optionally only those with `status`.
pub fn list(
    store: &dyn Store,
    status: Option<BackupStatus>,
) -> Result<Vec<DocumentBackup>, StoreError> {
    let mut all: Vec<DocumentBackup> = store.scan_json(Namespace::Backups, PREFIX)?;
    all.reverse();
    all.retain(|b| status.is_none_or(|s| b.status == s));
    Ok(all)
}

/// An UP, connected agent that announced the documents capability (lowest id first).
fn pick_agent(
    coord: &Coordinator,
    preferred: Option<&AgentId>,
) -> Option<(AgentId, drmesh_protocol::RegionId)> {
    let candidates = jobs::capable_agents(coord, CAPABILITY);
    let at = preferred
        .and_then(|p| candidates.iter().position(|c| c.id == *p))
        .unwrap_or(0);
    candidates.into_iter().nth(at).map(|c| (c.id, c.region))
}

/// A guess from the last completed backup's duration (one minute before any).
fn estimate(store: &dyn Store) -> Result<Duration, StoreError> {
    let last = list(store, None)?.into_iter().find(|b| is_done(b.status));
    Ok(last
        .and_then(|b| b.duration_ms)
        .map(|ms| Duration::from_millis(ms.max(1000)))
        .unwrap_or(Duration::from_secs(60)))
}

/// `POST /documents/backup`: records the backup and starts it on an agent.
pub fn start_backup(
    coord: &Arc<Coordinator>,
    tags: std::collections::BTreeMap<String, String>,
    requested_by: String,
) -> Result<BackupAccepted, Error> {
    let store = coord.store.as_ref();
    if let Some(running) = list(store, Some(BackupStatus::InProgress))?.first() {
        return Err(Error::Conflict(format!(
            "document backup {} is still in progress",
            running.backup_id
        )));
    }
    let (agent, region) =
        pick_agent(coord, None).ok_or_else(|| Error::Unavailable(NO_AGENT.into()))?;
    let estimated = estimate(store)?;
    let rec = DocumentBackup {
        backup_id: runbook_id("docs"),
        status: BackupStatus::InProgress,
        progress: 0.0,
        progress_message: "queued".into(),
        agent_id: agent.clone(),
        region,
        tags,
        requested_by,
        timestamp: Utc::now(),
        completed_at: None,
        duration_ms: None,
        outcome: None,
        error: None,
        verification: None,
        last_restore: None,
    };
    save(store, &rec)?;
    let accepted = BackupAccepted {
        backup_id: rec.backup_id.clone(),
        status: rec.status,
        timestamp: rec.timestamp,
        estimated_duration_seconds: estimated.as_secs(),
        estimated_duration: humantime::format_duration(Duration::from_secs(estimated.as_secs()))
            .to_string(),
        agent_id: agent,
    };
    let span = tracing::info_span!("documents_backup", backup_id = %rec.backup_id, agent_id = %rec.agent_id);
    tokio::spawn(run_backup(coord.clone(), rec).instrument(span));
    Ok(accepted)
}

async fn run_backup(coord: Arc<Coordinator>, mut rec: DocumentBackup) {
    info!("document backup started");
    let id = rec.backup_id.clone();
    let kind = CommandKind::DocumentsBackup {
        backup_id: id.clone(),
        tags: rec.tags.clone(),
    };
    let result = jobs::run_with_progress(&coord, &mut rec, kind, coord.config.backup_timeout).await;
    let failure = match jobs::finished::<DocumentBackupOutcome>(result, "backup") {
        Finished::Done(outcome) => {
            rec.status = BackupStatus::Completed;
            rec.progress = 100.0;
            rec.progress_message = "completed".into();
            let failed: Vec<String> = outcome
                .locations
                .iter()
                .filter(|l| l.status == BackupStatus::Failed)
                .map(|l| format!("{}: {}", l.name, l.error.as_deref().unwrap_or("failed")))
                .collect();
            if failed.is_empty() {
                let _ = alerts::resolve_cleared(coord.store.as_ref(), BACKUP_FAILED, "documents");
            } else {
                alerts::raise_logged(
                    coord.store.as_ref(),
                    Severity::High,
                    REPLICATION_FAILED,
                    "documents",
                    Some(rec.region.clone()),
                    format!(
                        "Document backup {id} did not reach every location: {}",
                        failed.join("; ")
                    ),
                );
            }
            info!(
                files = outcome.files,
                bytes = outcome.bytes,
                "document backup completed"
            );
            rec.outcome = Some(outcome);
            None
        }
        Finished::Failed(why) => Some(Some(why)),
        Finished::TimedOut => Some(None),
    };
    if let Some(reason) = failure {
        rec.status = BackupStatus::Failed;
        rec.error = Some(jobs::backup_failed(
            &coord,
            "documents",
            "document backup",
            &id,
            &rec.agent_id,
            &rec.region,
            reason,
        ));
    }
    if let Err(e) = save(coord.store.as_ref(), &rec) {
        error!(error = %e, "save backup result");
    }
}

/// Marks backups that were running when the coordinator stopped as FAILED: their
/// result can no longer arrive. Called once at start.
pub fn fail_interrupted(store: &dyn Store) -> Result<usize, StoreError> {
    let mut n = 0;
    for mut rec in list(store, Some(BackupStatus::InProgress))? {
        rec.status = BackupStatus::Failed;
        rec.error = Some("interrupted: the coordinator restarted while the backup ran".into());
        rec.completed_at = Some(Utc::now());
        save(store, &rec)?;
        n += 1;
    }
    Ok(n)
}

/// Runs a command on `agent` and reads its result's detail as `T`; a refusal, a failure
/// or an unreadable detail becomes the message to record.
async fn run_for<T>(
    coord: &Coordinator,
    agent: &AgentId,
    kind: CommandKind,
    what: &str,
) -> Result<T, String>
where
    T: TryFrom<
        drmesh_protocol::outcome::CommandOutcome,
        Error = drmesh_protocol::outcome::WrongOutcome,
    >,
{
    match transport::send_command(coord, agent, kind, coord.config.backup_timeout).await {
        Ok(r) if r.ok => r
            .outcome_as::<T>()
            .map_err(|e| format!("the agent's {what} could not be read: {e}")),
        Ok(r) => Err(r.message),
        Err(e) => Err(e.to_string()),
    }
}

/// `GET /v1/documents` (and `/v1/documents/{documentId}` with `document`): the documents
/// on the documents agent's disk against the newest backup that finished well, by size and
/// modification time, and by content with `checksums`.
pub async fn check(
    coord: &Coordinator,
    document: Option<String>,
    checksums: bool,
) -> Result<DocumentsReport, Error> {
    let newest = list(coord.store.as_ref(), None)?
        .into_iter()
        .find(|b| is_done(b.status))
        .ok_or_else(|| {
            Error::NotFound(
                "no document backup has completed yet: take one first (POST /v1/backup-recovery/documents/backup)"
                    .into(),
            )
        })?;
    let (agent, _) = pick_agent(coord, Some(&newest.agent_id))
        .ok_or_else(|| Error::Unavailable(NO_AGENT.into()))?;
    let kind = CommandKind::DocumentsCheck {
        backup_id: newest.backup_id.clone(),
        document,
        checksums,
    };
    run_for(coord, &agent, kind, "document check")
        .await
        .map_err(|why| Error::AgentFailed(format!("{agent} could not check the documents: {why}")))
}

/// `POST /documents/backups/:id/verify`: starts a full verification on an agent.
pub fn start_verify(coord: &Arc<Coordinator>, id: &str) -> Result<DocumentVerification, Error> {
    let store = coord.store.as_ref();
    let mut rec = completed(store, id, "verified")?;
    if rec
        .verification
        .as_ref()
        .is_some_and(|v| v.status == Verdict::InProgress)
    {
        return Err(Error::Conflict(format!("backup {id} is being verified")));
    }
    let (agent, _) = pick_agent(coord, Some(&rec.agent_id))
        .ok_or_else(|| Error::Unavailable(NO_AGENT.into()))?;
    let pending = DocumentVerification {
        backup_id: id.to_string(),
        status: Verdict::InProgress,
        archive_integrity: Verdict::InProgress,
        manifest_validity: Verdict::InProgress,
        file_checksums: Verdict::InProgress,
        data_accessible: Verdict::InProgress,
        locations: Vec::new(),
        damaged_files: Vec::new(),
        started_at: Utc::now(),
        finished_at: None,
        duration_ms: None,
        error: None,
    };
    rec.verification = Some(pending.clone());
    save(store, &rec)?;
    let answer = pending.clone();
    let coord = coord.clone();
    let id = id.to_string();
    let span = tracing::info_span!("documents_verify", backup_id = %id, agent_id = %agent);
    tokio::spawn(
        async move {
            let kind = CommandKind::DocumentsVerify {
                backup_id: id.clone(),
            };
            let verification: Result<DocumentVerification, String> =
                run_for(&coord, &agent, kind, "verification report").await;
            let Ok(Some(mut rec)) = get(coord.store.as_ref(), &id) else {
                return;
            };
            let v = match verification {
                Ok(v) => v,
                Err(why) => {
                    let mut v = pending;
                    v.status = Verdict::Failed;
                    v.finished_at = Some(Utc::now());
                    v.error = Some(why);
                    v
                }
            };
            if v.status == Verdict::Passed {
                info!("document backup verified");
                rec.status = BackupStatus::Verified;
                let _ = alerts::resolve_cleared(coord.store.as_ref(), VERIFICATION_FAILED, &id);
            } else {
                let mut what: Vec<String> = v
                    .damaged_files
                    .iter()
                    .take(5)
                    .map(|d| format!("{}:{} ({})", d.location, d.path, d.reason))
                    .collect();
                if let Some(e) = &v.error {
                    what.push(e.clone());
                }
                alerts::raise_logged(
                    coord.store.as_ref(),
                    Severity::Critical,
                    VERIFICATION_FAILED,
                    &id,
                    Some(rec.region.clone()),
                    format!(
                        "Verification of document backup {id} FAILED: {}",
                        what.join("; ")
                    ),
                );
                if rec.status == BackupStatus::Verified {
                    rec.status = BackupStatus::Completed;
                }
            }
            rec.verification = Some(v);
            if let Err(e) = save(coord.store.as_ref(), &rec) {
                error!(error = %e, "save verification");
            }
        }
        .instrument(span),
    );
    Ok(answer)
}

/// `POST /documents/backups/:id/restore`: starts a restore on the agent that made the
/// backup (or another documents agent when it is gone).
pub fn start_restore(
    coord: &Arc<Coordinator>,
    id: &str,
    req: DocumentRestoreRequest,
) -> Result<DocumentRestoreOutcome, Error> {
    let store = coord.store.as_ref();
    let mut rec = completed(store, id, "restored")?;
    if rec
        .last_restore
        .as_ref()
        .is_some_and(|r| r.status == BackupStatus::InProgress)
    {
        return Err(Error::Conflict(format!("backup {id} is being restored")));
    }
    let (agent, _) = pick_agent(coord, Some(&rec.agent_id))
        .ok_or_else(|| Error::Unavailable(NO_AGENT.into()))?;
    let pending = DocumentRestoreOutcome {
        backup_id: id.to_string(),
        status: BackupStatus::InProgress,
        location: req.location.clone(),
        target_directory: req.target_directory.clone().unwrap_or_default(),
        files: 0,
        bytes: 0,
        started_at: Utc::now(),
        finished_at: None,
        error: None,
    };
    rec.last_restore = Some(pending.clone());
    save(store, &rec)?;
    let coord = coord.clone();
    let id = id.to_string();
    let span = tracing::info_span!("documents_restore", backup_id = %id, agent_id = %agent);
    let answer = pending.clone();
    tokio::spawn(
        async move {
            let kind = CommandKind::DocumentsRestore {
                backup_id: id.clone(),
                paths: req.paths,
                target: req.target_directory,
            };
            let outcome: Result<DocumentRestoreOutcome, String> =
                run_for(&coord, &agent, kind, "restore report").await;
            let outcome = outcome.unwrap_or_else(|why| {
                warn!(error = %why, "document restore failed");
                let mut o = pending;
                o.status = BackupStatus::Failed;
                o.finished_at = Some(Utc::now());
                o.error = Some(why);
                o
            });
            if let Ok(Some(mut rec)) = get(coord.store.as_ref(), &id) {
                rec.last_restore = Some(outcome);
                if let Err(e) = save(coord.store.as_ref(), &rec) {
                    error!(error = %e, "save restore result");
                }
            }
        }
        .instrument(span),
    );
    Ok(answer)
}

/// `GET /documents/statistics`
pub fn statistics(store: &dyn Store) -> Result<DocumentStatistics, StoreError> {
    let all = list(store, None)?;
    let count = |s: BackupStatus| all.iter().filter(|b| b.status == s).count() as u64;
    let done: Vec<&DocumentBackup> = all.iter().filter(|b| is_done(b.status)).collect();
    let logical: u64 = done
        .iter()
        .filter_map(|b| b.outcome.as_ref())
        .map(|o| o.bytes)
        .sum();
    let stored: u64 = done
        .iter()
        .filter_map(|b| b.outcome.as_ref())
        .map(|o| o.bytes_stored)
        .sum();
    let newest = done.first();
    let mut locations: Vec<LocationStatistics> = Vec::new();
    // Newest first: the first time a location is seen is its latest state.
    for b in all.iter().filter(|b| b.outcome.is_some()) {
        for l in b.outcome.iter().flat_map(|o| &o.locations) {
            match locations.iter_mut().find(|x| x.name == l.name) {
                None => locations.push(LocationStatistics {
                    name: l.name.clone(),
                    last_status: l.status,
                    last_backup_id: b.backup_id.clone(),
                    last_success_at: (l.status == BackupStatus::Completed).then_some(b.timestamp),
                    bytes_stored: l.bytes_stored,
                    replication: None,
                }),
                Some(x) => {
                    x.bytes_stored += l.bytes_stored;
                    if x.last_success_at.is_none() && l.status == BackupStatus::Completed {
                        x.last_success_at = Some(b.timestamp);
                    }
                }
            }
        }
    }
    // Secondary locations: their replication state, lag and last error (the newest
    // report of any agent), and the locations known only from replication.
    for status in crate::ops::copies::statuses_of(store, "documents") {
        let name = status.report.name.clone();
        let newer = |x: &LocationStatistics| {
            x.replication
                .as_ref()
                .is_none_or(|r| r.report.checked_at < status.report.checked_at)
        };
        match locations.iter_mut().find(|x| x.name == name) {
            Some(x) if newer(x) => {
                if status.report.state == drmesh_protocol::copies::CopyState::InSync
                    && x.last_status == BackupStatus::Failed
                {
                    // Caught up since: the newest backup is there now.
                    x.last_status = BackupStatus::Completed;
                    x.last_success_at = status.last_in_sync_at;
                }
                x.replication = Some(status);
            }
            Some(_) => {}
            None => locations.push(LocationStatistics {
                name,
                last_status: if status.report.state == drmesh_protocol::copies::CopyState::InSync {
                    BackupStatus::Completed
                } else {
                    BackupStatus::Failed
                },
                last_backup_id: String::new(),
                last_success_at: status.last_in_sync_at,
                bytes_stored: 0,
                replication: Some(status),
            }),
        }
    }
    Ok(DocumentStatistics {
        total_backups: all.len() as u64,
        completed: count(BackupStatus::Completed),
        verified: count(BackupStatus::Verified),
        failed: count(BackupStatus::Failed),
        in_progress: count(BackupStatus::InProgress),
        files: newest
            .and_then(|b| b.outcome.as_ref())
            .map_or(0, |o| o.files),
        bytes: newest
            .and_then(|b| b.outcome.as_ref())
            .map_or(0, |o| o.bytes),
        bytes_stored: stored,
        dedup_ratio: if stored == 0 {
            0.0
        } else {
            (logical as f64 / stored as f64 * 100.0).round() / 100.0
        },
        newest_backup: newest.map(|b| b.backup_id.clone()),
        newest_backup_at: newest.map(|b| b.timestamp),
        locations,
    })
}

/// The dashboard's `recentBackups`: the ten newest, short form.
pub fn recent(store: &dyn Store) -> Result<Vec<serde_json::Value>, StoreError> {
    Ok(list(store, None)?
        .into_iter()
        .take(10)
        .map(|b| {
            serde_json::json!({
                "backupId": b.backup_id,
                "type": "documents",
                "status": b.status,
                "timestamp": b.timestamp,
                "progress": b.progress,
                "sizeBytes": b.outcome.as_ref().map(|o| o.bytes),
                "error": b.error,
            })
        })
        .collect())
}
