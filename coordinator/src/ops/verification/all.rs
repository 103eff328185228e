//! `POST /verification/verify-all`: every database backup not verified since its last
//! change, verified `verify_concurrency` at a time through the same code as a single
//! verification ([`super::prepare`], [`super::run`]).
//!
//! A backup's last change is when it completed: a completed base backup is never
//! written again, and its only later status changes (VERIFIED, back to COMPLETED) come
//! from verifications themselves. So a backup needs verifying unless it is VERIFIED and
//! its newest verification passed and started after it completed; a failed newest
//! verification is tried again.
//!
//! A run is stored in the `verifications` namespace under `verifyall_…` (beside the
//! `verify_…` records) with the ids of the verifications it queued; its state and
//! totals are read from those records, so a coordinator restart (which fails the running
//! and waiting verifications) leaves a run that reads COMPLETED with them FAILED.
//!
//! Architecture Invariant: at most one verify-all run is in progress, so at most
//! `verify_concurrency` of its verifications run at a time (verifications started one by
//! one are not counted).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use drmesh_protocol::api::{
    BackupStatus, DatabaseBackup, DatabaseVerification, VerifyAllAccepted, VerifyAllItem,
    VerifyAllRun, VerifyAllSkip, VerifyAllStatus, VerifyAllTotals,
};
use drmesh_protocol::ids::runbook_id;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{info, Instrument};

use super::QUEUED;
use super::{pick_agent, prepare, records, run_traced, save, NO_AGENT};
use crate::error::Error;
use crate::ops::database::{self, CAPABILITY};
use crate::ops::jobs;
use crate::state::Coordinator;
use crate::store::{Namespace, Store, StoreError, StoreExt};

/// Key prefix of runs in the `verifications` namespace (not matched by `verify_`).
const RUN_PREFIX: &str = "verifyall";

/// A run as stored: what it queued and skipped; everything else is read from the
/// verifications.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredRun {
    run_id: String,
    requested_by: String,
    started_at: DateTime<Utc>,
    concurrency: usize,
    /// (backup id, verification id), in the order they run.
    queued: Vec<(String, String)>,
    skipped: Vec<VerifyAllSkip>,
}

/// Whether a backup is verified by a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Selection {
    Verify,
    Skip(String),
}

/// When the backup last changed: when it completed (when it started, for one that never
/// did).
pub fn last_change(backup: &DatabaseBackup) -> DateTime<Utc> {
    backup.completed_at.unwrap_or(backup.timestamp)
}

/// The selection rule: `newest` is the backup's newest verification, running or ended.
pub(crate) fn select(backup: &DatabaseBackup, newest: Option<&DatabaseVerification>) -> Selection {
    match backup.status {
        BackupStatus::InProgress => return Selection::Skip("the backup is still running".into()),
        BackupStatus::Failed => {
            return Selection::Skip("the backup FAILED; there is nothing to verify".into())
        }
        BackupStatus::Expired => {
            return Selection::Skip("removed by the retention policies".into())
        }
        BackupStatus::Completed | BackupStatus::Verified => {}
    }
    if backup.backup_type == "logical" {
        return Selection::Skip("a logical dump; only base backups are verified".into());
    }
    match newest {
        Some(v) if v.status == BackupStatus::InProgress => {
            Selection::Skip(format!("verification {} is in progress", v.verification_id))
        }
        Some(v)
            if v.status == BackupStatus::Completed
                && backup.status == BackupStatus::Verified
                && v.started_at >= last_change(backup) =>
        {
            Selection::Skip(format!(
                "already verified by {} at {}",
                v.verification_id,
                v.completed_at.unwrap_or(v.started_at).to_rfc3339()
            ))
        }
        _ => Selection::Verify,
    }
}

fn runs(store: &dyn Store) -> Result<Vec<StoredRun>, StoreError> {
    store.scan_json(Namespace::Verifications, &format!("{RUN_PREFIX}_"))
}

/// The run `run_id` with its verifications' current state.
pub fn get(store: &dyn Store, run_id: &str) -> Result<Option<VerifyAllRun>, StoreError> {
    if !run_id.starts_with(&format!("{RUN_PREFIX}_")) {
        return Ok(None);
    }
    let run: Option<StoredRun> = store.get_json(Namespace::Verifications, run_id)?;
    run.map(|r| view(store, &r)).transpose()
}

/// The newest run.
pub fn newest(store: &dyn Store) -> Result<Option<VerifyAllRun>, StoreError> {
    runs(store)?.last().map(|r| view(store, r)).transpose()
}

fn view(store: &dyn Store, run: &StoredRun) -> Result<VerifyAllRun, StoreError> {
    let mut results = Vec::with_capacity(run.queued.len());
    let mut ended: Option<DateTime<Utc>> = None;
    for (backup_id, verification_id) in &run.queued {
        let rec: Option<DatabaseVerification> =
            store.get_json(Namespace::Verifications, verification_id)?;
        let item = match rec {
            Some(v) => {
                if let Some(at) = v.completed_at {
                    ended = ended.max(Some(at));
                }
                VerifyAllItem {
                    backup_id: backup_id.clone(),
                    verification_id: verification_id.clone(),
                    status: v.status,
                    waiting: v.status == BackupStatus::InProgress && v.progress_message == QUEUED,
                    checksum_verification: v.report.checksum_verification,
                    file_accessibility: v.report.file_accessibility,
                    restorability_test: v.report.restorability_test,
                    duration_ms: v.duration_ms,
                    error: v.error,
                }
            }
            None => VerifyAllItem {
                backup_id: backup_id.clone(),
                verification_id: verification_id.clone(),
                status: BackupStatus::Failed,
                waiting: false,
                checksum_verification: None,
                file_accessibility: None,
                restorability_test: None,
                duration_ms: None,
                error: Some("the verification record is missing".into()),
            },
        };
        results.push(item);
    }
    let totals = totals(&results, run.skipped.len());
    let status = if totals.running > 0 {
        VerifyAllStatus::InProgress
    } else {
        VerifyAllStatus::Completed
    };
    Ok(VerifyAllRun {
        run_id: run.run_id.clone(),
        status,
        requested_by: run.requested_by.clone(),
        started_at: run.started_at,
        completed_at: (status == VerifyAllStatus::Completed)
            .then(|| ended.unwrap_or(run.started_at)),
        concurrency: run.concurrency,
        totals,
        results,
        skipped: run.skipped.clone(),
    })
}

fn totals(results: &[VerifyAllItem], skipped: usize) -> VerifyAllTotals {
    let count = |s: BackupStatus| results.iter().filter(|r| r.status == s).count();
    VerifyAllTotals {
        queued: results.len(),
        passed: count(BackupStatus::Completed),
        failed: count(BackupStatus::Failed),
        running: count(BackupStatus::InProgress),
        waiting: results.iter().filter(|r| r.waiting).count(),
        skipped,
    }
}

/// `POST /verification/verify-all`: selects, records the run and its verifications
/// (IN_PROGRESS, queued), and runs them `verify_concurrency` at a time.
pub fn start(coord: &Arc<Coordinator>, requested_by: String) -> Result<VerifyAllAccepted, Error> {
    let store = coord.store.as_ref();
    if let Some(run) = newest(store)?.filter(|r| r.status == VerifyAllStatus::InProgress) {
        return Err(Error::Conflict(format!(
            "verify-all run {} is still in progress ({} of {} verifications running)",
            run.run_id, run.totals.running, run.totals.queued
        )));
    }
    let mut newest_of: HashMap<String, DatabaseVerification> = HashMap::new();
    for v in records(store)? {
        newest_of.insert(v.backup_id.clone(), v);
    }
    let mut wanted = Vec::new();
    let mut skipped = Vec::new();
    for b in database::list(store, None)? {
        match select(&b, newest_of.get(&b.backup_id)) {
            Selection::Verify => wanted.push(b.backup_id),
            Selection::Skip(reason) => skipped.push(VerifyAllSkip {
                backup_id: b.backup_id,
                reason,
            }),
        }
    }
    if !wanted.is_empty() && jobs::capable_agents(coord, CAPABILITY).is_empty() {
        return Err(Error::Unavailable(NO_AGENT.into()));
    }
    let mut queued = Vec::new();
    for backup_id in wanted {
        match prepare(coord, &backup_id, requested_by.clone()) {
            Ok(rec) => queued.push(rec),
            Err(Error::Store(e)) => return Err(e.into()),
            // Raced with a verification started by hand, or the agent went away.
            Err(e) => skipped.push(VerifyAllSkip {
                backup_id,
                reason: e.to_string(),
            }),
        }
    }
    let run = StoredRun {
        run_id: runbook_id(RUN_PREFIX),
        requested_by,
        started_at: Utc::now(),
        concurrency: coord.config.verify_concurrency,
        queued: queued
            .iter()
            .map(|v| (v.backup_id.clone(), v.verification_id.clone()))
            .collect(),
        skipped,
    };
    store.put_json(Namespace::Verifications, &run.run_id, &run)?;
    info!(
        run_id = %run.run_id,
        queued = run.queued.len(),
        skipped = run.skipped.len(),
        "verify-all started"
    );
    let accepted = VerifyAllAccepted {
        status: if queued.is_empty() {
            VerifyAllStatus::Completed
        } else {
            VerifyAllStatus::InProgress
        },
        run_id: run.run_id.clone(),
        queued: run.queued.iter().map(|(b, _)| b.clone()).collect(),
        skipped: run.skipped.clone(),
        concurrency: run.concurrency,
    };
    if !queued.is_empty() {
        let span = tracing::info_span!("verify_all", run_id = %run.run_id);
        tokio::spawn(drive(coord.clone(), queued, run.concurrency).instrument(span));
    }
    Ok(accepted)
}

/// Runs the queued verifications, `concurrency` at a time, each on a database agent
/// picked again when its turn comes (the one recorded may have gone away meanwhile).
async fn drive(coord: Arc<Coordinator>, queued: Vec<DatabaseVerification>, concurrency: usize) {
    futures::stream::iter(queued)
        .for_each_concurrent(concurrency.max(1), |mut rec| {
            let coord = coord.clone();
            async move {
                let made_by = database::get(coord.store.as_ref(), &rec.backup_id)
                    .ok()
                    .flatten()
                    .map(|b| b.agent_id)
                    .unwrap_or_else(|| rec.agent_id.clone());
                if let Some((agent, region)) = pick_agent(&coord, &made_by) {
                    rec.agent_id = agent;
                    rec.region = region;
                    let _ = save(coord.store.as_ref(), &rec);
                }
                run_traced(coord, rec).await
            }
        })
        .await;
    info!("verify-all ended");
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use drmesh_protocol::api::DatabaseVerificationReport;
    use drmesh_protocol::{AgentId, RegionId};

    fn backup(status: BackupStatus, completed_at: DateTime<Utc>) -> DatabaseBackup {
        DatabaseBackup {
            backup_id: "full_1_aaaaaa".into(),
            backup_type: "full".into(),
            status,
            progress: 100.0,
            progress_message: "completed".into(),
            agent_id: AgentId::new("db-1").expect("id"),
            region: RegionId::new("us-west-2").expect("region"),
            tags: Default::default(),
            requested_by: "admin".into(),
            timestamp: completed_at - Duration::minutes(5),
            completed_at: Some(completed_at),
            duration_ms: Some(300_000),
            bytes_read: None,
            bytes_stored: None,
            start_lsn: None,
            stop_lsn: None,
            timeline: None,
            outcome: None,
            error: None,
        }
    }

    fn verification(status: BackupStatus, started_at: DateTime<Utc>) -> DatabaseVerification {
        DatabaseVerification {
            verification_id: "verify_2_bbbbbb".into(),
            backup_id: "full_1_aaaaaa".into(),
            status,
            progress: 100.0,
            progress_message: "verified".into(),
            agent_id: AgentId::new("db-1").expect("id"),
            region: RegionId::new("us-west-2").expect("region"),
            requested_by: "admin".into(),
            started_at,
            completed_at: Some(started_at + Duration::minutes(1)),
            duration_ms: Some(60_000),
            report: DatabaseVerificationReport::default(),
            error: None,
        }
    }

    fn skipped_because(s: Selection, words: &str) {
        match s {
            Selection::Skip(reason) => assert!(reason.contains(words), "{reason}"),
            Selection::Verify => panic!("verified, expected a skip because {words}"),
        }
    }

    #[test]
    fn a_backup_never_verified_or_last_failed_is_verified() {
        let t = Utc::now();
        let done = backup(BackupStatus::Completed, t);
        assert_eq!(select(&done, None), Selection::Verify);
        let failed = verification(BackupStatus::Failed, t + Duration::hours(1));
        assert_eq!(select(&done, Some(&failed)), Selection::Verify);
    }

    #[test]
    fn a_backup_verified_since_it_completed_is_skipped() {
        let t = Utc::now();
        let verified = backup(BackupStatus::Verified, t);
        let passed = verification(BackupStatus::Completed, t + Duration::minutes(1));
        skipped_because(
            select(&verified, Some(&passed)),
            "already verified by verify_2",
        );
        // A pass from before the backup's last change does not count.
        let stale = verification(BackupStatus::Completed, t - Duration::minutes(1));
        assert_eq!(select(&verified, Some(&stale)), Selection::Verify);
        // Nor does a pass the backup's status does not reflect.
        let completed = backup(BackupStatus::Completed, t);
        assert_eq!(select(&completed, Some(&passed)), Selection::Verify);
    }

    #[test]
    fn running_failed_and_logical_backups_and_running_verifications_are_skipped() {
        let t = Utc::now();
        skipped_because(
            select(&backup(BackupStatus::InProgress, t), None),
            "still running",
        );
        skipped_because(select(&backup(BackupStatus::Failed, t), None), "FAILED");
        let mut dump = backup(BackupStatus::Completed, t);
        dump.backup_type = "logical".into();
        skipped_because(select(&dump, None), "logical");
        let running = verification(BackupStatus::InProgress, t + Duration::minutes(1));
        skipped_because(
            select(&backup(BackupStatus::Verified, t), Some(&running)),
            "in progress",
        );
    }

    #[test]
    fn totals_count_each_verdict_and_the_waiting() {
        let item = |status, waiting| VerifyAllItem {
            backup_id: "b".into(),
            verification_id: "v".into(),
            status,
            waiting,
            checksum_verification: None,
            file_accessibility: None,
            restorability_test: None,
            duration_ms: None,
            error: None,
        };
        let t = totals(
            &[
                item(BackupStatus::Completed, false),
                item(BackupStatus::Completed, false),
                item(BackupStatus::Failed, false),
                item(BackupStatus::InProgress, false),
                item(BackupStatus::InProgress, true),
            ],
            3,
        );
        assert_eq!(
            t,
            VerifyAllTotals {
                queued: 5,
                passed: 2,
                failed: 1,
                running: 2,
                waiting: 1,
                skipped: 3,
            }
        );
    }
}
