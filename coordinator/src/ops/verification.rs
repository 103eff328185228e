//! Verifications of database backups (the runbook's "Verify Database Backup Integrity"):
//! a record per verification in the `verifications` namespace, the command that makes a
//! database agent re-hash the backup, read back every object it needs and run a real
//! restorability test, and the record updated from the agent's progress and report.
//!
//! Architecture Invariant: a database backup becomes VERIFIED only when a verification's
//! three verdicts (checksum, file accessibility, restorability) all pass; any other end —
//! a failed verdict, an error, a timeout, a lost agent, a coordinator restart — leaves
//! the verification FAILED, takes VERIFIED back from the backup, and raises a CRITICAL
//! `VERIFICATION_FAILED` alert naming the backup.
//!
//! [`all`] verifies every backup not verified since it completed, a bounded number at a
//! time; [`lifecycle`] sums backups, verifications, DR tests and RPOs up.

pub mod all;
pub mod lifecycle;

use std::sync::Arc;

use chrono::Utc;
use drmesh_protocol::api::{
    BackupStatus, DatabaseBackup, DatabaseVerification, DatabaseVerificationReport, Severity,
    VerificationAccepted,
};
use drmesh_protocol::ids::runbook_id;
use drmesh_protocol::{AgentId, CommandKind, RegionId};
use tracing::{error, info, Instrument};

use crate::alerts;
use crate::alerts::VERIFICATION_FAILED;
use crate::error::Error;
use crate::ops::database::{self, CAPABILITY};
use crate::ops::jobs::{self, Finished};
use crate::state::Coordinator;
use crate::store::{Namespace, Store, StoreError, StoreExt};

/// Why nothing can start: no agent that could do it.
pub const NO_AGENT: &str = "no agent with a [database] configuration is connected and UP";

const PREFIX: &str = "verify_";

/// The progress message of a verification recorded but not yet sent to its agent.
const QUEUED: &str = "queued";

fn save(store: &dyn Store, rec: &DatabaseVerification) -> Result<(), StoreError> {
    store.put_json(Namespace::Verifications, &rec.verification_id, rec)
}

/// Every verification, oldest first.
fn records(store: &dyn Store) -> Result<Vec<DatabaseVerification>, StoreError> {
    store.scan_json(Namespace::Verifications, PREFIX)
}

/// The newest verification of `backup_id`, running or finished.
pub fn latest(
    store: &dyn Store,
    backup_id: &str,
) -> Result<Option<DatabaseVerification>, StoreError> {
    Ok(records(store)?
        .into_iter()
        .rfind(|v| v.backup_id == backup_id))
}

/// The agent to verify on: the one that took the backup when it is UP with the database
/// capability, else a primary's, else the first by id.
fn pick_agent(coord: &Coordinator, made_by: &AgentId) -> Option<(AgentId, RegionId)> {
    let candidates = jobs::capable_agents(coord, CAPABILITY);
    let at = candidates
        .iter()
        .position(|c| c.id == *made_by)
        .or_else(|| candidates.iter().position(|c| c.primary))
        .unwrap_or(0);
    candidates.into_iter().nth(at).map(|c| (c.id, c.region))
}

/// `POST /verification/verify/:backupId`: records the verification and starts it.
pub fn start(
    coord: &Arc<Coordinator>,
    backup_id: &str,
    requested_by: String,
) -> Result<VerificationAccepted, Error> {
    let rec = prepare(coord, backup_id, requested_by)?;
    let accepted = VerificationAccepted {
        status: rec.status,
        backup_id: rec.backup_id.clone(),
        verification_id: rec.verification_id.clone(),
        agent_id: rec.agent_id.clone(),
    };
    tokio::spawn(run_traced(coord.clone(), rec));
    Ok(accepted)
}

/// Checks that `backup_id` can be verified now and records its verification, IN_PROGRESS
/// and queued; [`run`] then runs it.
fn prepare(
    coord: &Coordinator,
    backup_id: &str,
    requested_by: String,
) -> Result<DatabaseVerification, Error> {
    let store = coord.store.as_ref();
    let backup = database::get(store, backup_id)?
        .ok_or_else(|| Error::NotFound(format!("no database backup {backup_id}")))?;
    if !matches!(
        backup.status,
        BackupStatus::Completed | BackupStatus::Verified
    ) {
        return Err(Error::Conflict(format!(
            "backup {backup_id} is {:?}; only a completed backup can be verified",
            backup.status
        )));
    }
    if backup.backup_type == "logical" {
        return Err(Error::Conflict(format!(
            "backup {backup_id} is a logical dump; only base backups (full, incr) are verified"
        )));
    }
    if let Some(running) =
        latest(store, backup_id)?.filter(|v| v.status == BackupStatus::InProgress)
    {
        return Err(Error::Conflict(format!(
            "verification {} of backup {backup_id} is still in progress",
            running.verification_id
        )));
    }
    let (agent, region) =
        pick_agent(coord, &backup.agent_id).ok_or_else(|| Error::Unavailable(NO_AGENT.into()))?;
    let rec = DatabaseVerification {
        verification_id: runbook_id("verify"),
        backup_id: backup_id.to_string(),
        status: BackupStatus::InProgress,
        progress: 0.0,
        progress_message: QUEUED.into(),
        agent_id: agent,
        region,
        requested_by,
        started_at: Utc::now(),
        completed_at: None,
        duration_ms: None,
        report: DatabaseVerificationReport::default(),
        error: None,
    };
    save(store, &rec)?;
    Ok(rec)
}

/// [`run`] in a span naming the backup, the verification and the agent.
async fn run_traced(coord: Arc<Coordinator>, rec: DatabaseVerification) {
    let span = tracing::info_span!(
        "verify_database_backup",
        backup_id = %rec.backup_id,
        verification_id = %rec.verification_id,
        agent_id = %rec.agent_id
    );
    run(coord, rec).instrument(span).await
}

/// Folds how the agent's command ended into the record: COMPLETED only with three
/// passing verdicts. Returns whether it passed.
fn conclude(
    rec: &mut DatabaseVerification,
    finished: Finished<DatabaseVerificationReport>,
) -> bool {
    match finished {
        Finished::Done(report) => {
            rec.report = report;
            rec.error = None;
        }
        Finished::Failed(why) => rec.error = Some(why),
        Finished::TimedOut => {
            rec.error = Some("no result within the verification timeout".into());
        }
    }
    let passed = rec.error.is_none() && rec.report.passed();
    rec.status = if passed {
        BackupStatus::Completed
    } else {
        BackupStatus::Failed
    };
    rec.progress = 100.0;
    rec.progress_message = if passed { "verified" } else { "failed" }.into();
    passed
}

/// The alert's message: the backup, each failed verdict, and the first objects named.
fn failure_message(rec: &DatabaseVerification) -> String {
    let r = &rec.report;
    let mut what: Vec<String> = Vec::new();
    if let Some(v) = r.checksum_verification {
        what.push(format!("checksum {v:?}"));
    }
    if let Some(v) = r.file_accessibility {
        what.push(format!("files {v:?}"));
    }
    if let Some(v) = r.restorability_test {
        what.push(format!("restorability {v:?}"));
    }
    for d in r.details.iter().filter(|d| d.check != "note").take(5) {
        what.push(format!("{}: {}", d.object, d.reason));
    }
    if let Some(e) = &rec.error {
        what.push(e.clone());
    }
    format!(
        "Verification of database backup {} FAILED ({}): {}",
        rec.backup_id,
        rec.verification_id,
        what.join("; ")
    )
}

async fn run(coord: Arc<Coordinator>, mut rec: DatabaseVerification) {
    info!("database backup verification started");
    // A queued verification (verify-all) starts now, not when it was recorded.
    rec.started_at = Utc::now();
    rec.progress_message = "started".into();
    if let Err(e) = save(coord.store.as_ref(), &rec) {
        error!(error = %e, "save verification start");
    }
    let kind = CommandKind::VerifyDatabaseBackup {
        verification_id: rec.verification_id.clone(),
        backup_id: rec.backup_id.clone(),
    };
    let result =
        jobs::run_with_progress(&coord, &mut rec, kind, coord.config.recovery_timeout).await;
    let passed = conclude(
        &mut rec,
        jobs::finished::<DatabaseVerificationReport>(result, "verification"),
    );
    let store = coord.store.as_ref();
    if let Err(e) = save(store, &rec) {
        error!(error = %e, "save verification");
    }
    mark_backup(&coord, &rec, passed);
}

/// VERIFIED on a pass; a backup that fails a later verification is COMPLETED again,
/// and the alert is raised.
fn mark_backup(coord: &Coordinator, rec: &DatabaseVerification, passed: bool) {
    let store = coord.store.as_ref();
    let backup: Option<DatabaseBackup> = database::get(store, &rec.backup_id).ok().flatten();
    if passed {
        info!("database backup verified");
        let _ = alerts::resolve_cleared(store, VERIFICATION_FAILED, &rec.backup_id);
    } else {
        tracing::warn!(error = ?rec.error, "database backup verification failed");
        alerts::raise_logged(
            coord.store.as_ref(),
            Severity::Critical,
            VERIFICATION_FAILED,
            &rec.backup_id,
            Some(rec.region.clone()),
            failure_message(rec),
        );
    }
    if let Some(mut b) = backup {
        let next = match (passed, b.status) {
            (true, BackupStatus::Completed) => Some(BackupStatus::Verified),
            (false, BackupStatus::Verified) => Some(BackupStatus::Completed),
            _ => None,
        };
        if let Some(status) = next {
            b.status = status;
            if let Err(e) = database::save(store, &b) {
                error!(error = %e, "save backup status");
            }
        }
    }
}

/// Marks verifications that were running when the coordinator stopped as FAILED.
pub fn fail_interrupted(store: &dyn Store) -> Result<usize, StoreError> {
    let mut n = 0;
    for mut rec in records(store)?
        .into_iter()
        .filter(|v| v.status == BackupStatus::InProgress)
    {
        rec.status = BackupStatus::Failed;
        rec.error =
            Some("interrupted: the coordinator restarted while the verification ran".into());
        rec.completed_at = Some(Utc::now());
        save(store, &rec)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drmesh_protocol::api::{
        Accessibility, ChecksumVerdict, Restorability, VerificationFinding,
    };

    fn pending() -> DatabaseVerification {
        DatabaseVerification {
            verification_id: "verify_1_aaaaaa".into(),
            backup_id: "full_1_bbbbbb".into(),
            status: BackupStatus::InProgress,
            progress: 40.0,
            progress_message: "restoring".into(),
            agent_id: AgentId::new("db-1").expect("id"),
            region: RegionId::new("us-west-2").expect("region"),
            requested_by: "admin".into(),
            started_at: Utc::now(),
            completed_at: None,
            duration_ms: None,
            report: DatabaseVerificationReport::default(),
            error: None,
        }
    }

    fn report(
        c: ChecksumVerdict,
        a: Accessibility,
        r: Restorability,
    ) -> DatabaseVerificationReport {
        DatabaseVerificationReport {
            checksum_verification: Some(c),
            file_accessibility: Some(a),
            restorability_test: Some(r),
            ..Default::default()
        }
    }

    #[test]
    fn only_three_passing_verdicts_complete_a_verification() {
        use Accessibility::*;
        use ChecksumVerdict::*;
        use Restorability::*;
        let mut rec = pending();
        assert!(conclude(
            &mut rec,
            Finished::Done(report(Passed, Accessible, Restorable))
        ));
        assert_eq!(rec.status, BackupStatus::Completed);
        for (c, a, r) in [
            (Failed, Accessible, Restorable),
            (Passed, Inaccessible, Restorable),
            (Passed, Accessible, NotRestorable),
        ] {
            let mut rec = pending();
            assert!(!conclude(&mut rec, Finished::Done(report(c, a, r))));
            assert_eq!(rec.status, BackupStatus::Failed);
        }
        // A verdict missing (the agent could not run that check) is no pass.
        let mut rec = pending();
        let mut partial = report(Passed, Accessible, Restorable);
        partial.restorability_test = None;
        assert!(!conclude(&mut rec, Finished::Done(partial)));
        let mut rec = pending();
        assert!(!conclude(
            &mut rec,
            Finished::Failed("lost the agent".into())
        ));
        assert_eq!(rec.error.as_deref(), Some("lost the agent"));
        let mut rec = pending();
        assert!(!conclude(&mut rec, Finished::TimedOut));
        assert_eq!(rec.status, BackupStatus::Failed);
    }

    #[test]
    fn the_alert_names_the_backup_and_the_damaged_objects() {
        let mut rec = pending();
        let mut r = report(
            ChecksumVerdict::Failed,
            Accessibility::Accessible,
            Restorability::Restorable,
        );
        r.details.push(VerificationFinding {
            check: "checksum".into(),
            object: "base/5/16384".into(),
            reason: "chunk ab12 in pack cd34 does not authenticate".into(),
        });
        r.details.push(VerificationFinding {
            check: "note".into(),
            object: "amcheck".into(),
            reason: "not available".into(),
        });
        conclude(&mut rec, Finished::Done(r));
        let m = failure_message(&rec);
        assert!(m.contains("full_1_bbbbbb"), "{m}");
        assert!(m.contains("checksum Failed"), "{m}");
        assert!(m.contains("base/5/16384"), "{m}");
        assert!(!m.contains("amcheck"), "{m}");
    }
}
