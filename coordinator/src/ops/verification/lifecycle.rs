//! `GET /verification/lifecycle-stats`: backups by status, the verification pass rate
//! over 7 and 30 days, restore times, each plan's last DR test against its RTO, and the
//! newest verified backup's age against each plan's RPO.
//!
//! The arithmetic is in pure functions of the records and `now`, tested below.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use drmesh_protocol::api::{
    BackupStatus, DatabaseBackup, DatabaseVerification, DrPlan, DrTest, LifecycleStats, PassRate,
    PlanDrTestSummary, PlanRpoStatus, Restorability, RestoreTimeStats,
};

use super::all::last_change;
use super::records;
use crate::store::{Store, StoreError};
use crate::{ops::database, ops::documents, ops::drtest, plans};

/// The window restore times are taken from.
const RESTORE_TIME_DAYS: u32 = 30;

pub fn stats(store: &dyn Store, now: DateTime<Utc>) -> Result<LifecycleStats, StoreError> {
    let backups = database::list(store, None)?;
    let verifications = records(store)?;
    let plans = plans::list(store)?;
    Ok(LifecycleStats {
        generated_at: now,
        backups_by_status: by_status(backups.iter().map(|b| b.status)),
        document_backups_by_status: by_status(
            documents::list(store, None)?.iter().map(|b| b.status),
        ),
        verification_pass_rate_7d: pass_rate(&verifications, now, 7),
        verification_pass_rate_30d: pass_rate(&verifications, now, 30),
        restore_time: restore_time(&verifications, now, RESTORE_TIME_DAYS),
        last_dr_tests: last_dr_tests(store, &plans)?,
        rpo: rpo_status(&plans, &backups, now),
    })
}

/// Each plan's last DR test, its measured RTO against the plan's RTO.
fn last_dr_tests(
    store: &dyn Store,
    plans: &[DrPlan],
) -> Result<Vec<PlanDrTestSummary>, StoreError> {
    Ok(drtest::latest_per_plan(store)?
        .into_iter()
        .map(|t| dr_test_summary(t, plans))
        .collect())
}

fn dr_test_summary(t: DrTest, plans: &[DrPlan]) -> PlanDrTestSummary {
    let rto_seconds = plans
        .iter()
        .find(|p| p.id == t.plan_id)
        .map_or(t.plan_rto_seconds, |p| p.rto_seconds);
    let measured = t
        .measured_rto_ms
        .map(|ms| ms as f64 / 1000.0)
        .or(t.measured_rto_seconds);
    PlanDrTestSummary {
        plan_id: t.plan_id,
        test_id: t.test_id,
        status: t.status,
        started_at: t.started_at,
        completed_at: t.completed_at,
        rto_seconds,
        measured_rto_seconds: measured,
        within_rto: measured.map(|s| s <= rto_seconds as f64),
        steps: t.steps,
    }
}

/// Counts by status, every status present.
fn by_status(statuses: impl Iterator<Item = BackupStatus>) -> BTreeMap<String, u64> {
    let name = |s: BackupStatus| {
        serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{s:?}"))
    };
    let mut out: BTreeMap<String, u64> = [
        BackupStatus::InProgress,
        BackupStatus::Completed,
        BackupStatus::Failed,
        BackupStatus::Verified,
        BackupStatus::Expired,
    ]
    .into_iter()
    .map(|s| (name(s), 0))
    .collect();
    for s in statuses {
        *out.entry(name(s)).or_default() += 1;
    }
    out
}

/// When a verification ended, if it did.
fn ended(v: &DatabaseVerification) -> Option<DateTime<Utc>> {
    (v.status != BackupStatus::InProgress).then(|| v.completed_at.unwrap_or(v.started_at))
}

/// Passed among the verifications that ended within the last `days` days.
fn pass_rate(verifications: &[DatabaseVerification], now: DateTime<Utc>, days: u32) -> PassRate {
    let since = now - Duration::days(i64::from(days));
    let recent = verifications
        .iter()
        .filter(|v| ended(v).is_some_and(|at| at >= since && at <= now));
    let (mut passed, mut finished) = (0u64, 0u64);
    for v in recent {
        finished += 1;
        if v.status == BackupStatus::Completed {
            passed += 1;
        }
    }
    PassRate {
        days,
        passed,
        finished,
        rate: (finished > 0).then(|| passed as f64 / finished as f64),
    }
}

/// Restore + recovery time of the restorability tests that restored, ended within the
/// last `days` days.
fn restore_time(
    verifications: &[DatabaseVerification],
    now: DateTime<Utc>,
    days: u32,
) -> RestoreTimeStats {
    let since = now - Duration::days(i64::from(days));
    let samples: Vec<u64> = verifications
        .iter()
        .filter(|v| ended(v).is_some_and(|at| at >= since && at <= now))
        .filter(|v| v.report.restorability_test == Some(Restorability::Restorable))
        .map(|v| v.report.timings.restore_ms + v.report.timings.recovery_ms)
        .collect();
    let n = samples.len() as u64;
    RestoreTimeStats {
        days,
        samples: n,
        mean_ms: (n > 0).then(|| samples.iter().sum::<u64>().div_ceil(n)),
        max_ms: samples.iter().copied().max(),
    }
}

/// The newest VERIFIED backup's age (since it completed) against each plan's RPO.
fn rpo_status(
    plans: &[DrPlan],
    backups: &[DatabaseBackup],
    now: DateTime<Utc>,
) -> Vec<PlanRpoStatus> {
    let newest = backups
        .iter()
        .filter(|b| b.status == BackupStatus::Verified)
        .max_by_key(|b| last_change(b));
    let age = newest.map(|b| (now - last_change(b)).num_seconds().max(0) as u64);
    plans
        .iter()
        .map(|p| PlanRpoStatus {
            plan_id: p.id.clone(),
            rpo_seconds: p.rpo_seconds,
            newest_verified_backup_id: newest.map(|b| b.backup_id.clone()),
            newest_verified_backup_age_seconds: age,
            within_rpo: age.is_some_and(|a| a <= p.rpo_seconds),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use drmesh_protocol::api::{DatabaseVerificationReport, VerificationTimings};
    use drmesh_protocol::{AgentId, RegionId};

    fn verification(
        status: BackupStatus,
        ended_days_ago: i64,
        restore_ms: u64,
        recovery_ms: u64,
        now: DateTime<Utc>,
    ) -> DatabaseVerification {
        let end = now - Duration::days(ended_days_ago);
        DatabaseVerification {
            verification_id: "verify_1_aaaaaa".into(),
            backup_id: "full_1_bbbbbb".into(),
            status,
            progress: 100.0,
            progress_message: "done".into(),
            agent_id: AgentId::new("db-1").expect("id"),
            region: RegionId::new("us-west-2").expect("region"),
            requested_by: "admin".into(),
            started_at: end - Duration::minutes(1),
            completed_at: (status != BackupStatus::InProgress).then_some(end),
            duration_ms: Some(60_000),
            report: DatabaseVerificationReport {
                restorability_test: (restore_ms > 0).then_some(Restorability::Restorable),
                timings: VerificationTimings {
                    checksum_ms: 5,
                    restore_ms,
                    recovery_ms,
                    checks_ms: 7,
                },
                ..Default::default()
            },
            error: None,
        }
    }

    #[test]
    fn pass_rates_count_only_verifications_ended_in_the_window() {
        let now = Utc::now();
        use BackupStatus::*;
        let vs = [
            verification(Completed, 1, 10, 1, now),
            verification(Completed, 2, 10, 1, now),
            verification(Failed, 3, 0, 0, now),
            verification(Completed, 10, 10, 1, now),
            verification(Failed, 20, 0, 0, now),
            verification(Failed, 40, 0, 0, now),
            verification(InProgress, 0, 0, 0, now),
        ];
        let week = pass_rate(&vs, now, 7);
        assert_eq!((week.days, week.passed, week.finished), (7, 2, 3));
        assert!((week.rate.expect("rate") - 2.0 / 3.0).abs() < 1e-9);
        let month = pass_rate(&vs, now, 30);
        assert_eq!((month.passed, month.finished), (3, 5));
        assert_eq!(month.rate, Some(0.6));
        let none = pass_rate(&vs[5..], now, 30);
        assert_eq!((none.finished, none.rate), (0, None));
    }

    #[test]
    fn restore_time_is_restore_plus_recovery_of_the_tests_that_restored() {
        let now = Utc::now();
        use BackupStatus::*;
        let vs = [
            verification(Completed, 1, 1000, 500, now),
            // Restored but a later check failed: its restore time still counts.
            verification(Failed, 2, 2000, 1000, now),
            verification(Completed, 3, 400, 100, now),
            // Not restorable: no restore time.
            verification(Failed, 3, 0, 0, now),
            // Out of the window.
            verification(Completed, 45, 9000, 9000, now),
        ];
        let t = restore_time(&vs, now, 30);
        assert_eq!(t.samples, 3);
        assert_eq!(t.mean_ms, Some((1500 + 3000 + 500) / 3 + 1));
        assert_eq!(t.max_ms, Some(3000));
        let empty = restore_time(&vs[4..], now, 30);
        assert_eq!(
            (empty.samples, empty.mean_ms, empty.max_ms),
            (0, None, None)
        );
    }

    #[test]
    fn counts_by_status_name_every_status() {
        use BackupStatus::*;
        let c = by_status([Verified, Verified, Failed].into_iter());
        assert_eq!(c["VERIFIED"], 2);
        assert_eq!(c["FAILED"], 1);
        assert_eq!(c["COMPLETED"], 0);
        assert_eq!(c["IN_PROGRESS"], 0);
    }

    #[test]
    fn the_newest_verified_backup_is_held_against_each_rpo() {
        let now = Utc::now();
        let plan = |id: &str, rpo_seconds: u64| DrPlan {
            id: id.into(),
            name: id.into(),
            rpo: format!("{rpo_seconds}s"),
            rto: "4h".into(),
            rpo_seconds,
            rto_seconds: 4 * 3600,
            failover_regions: Vec::new(),
            health_check_interval: 30_000,
            automatic_failover: false,
            auto_rejoin: false,
            notification_channels: Vec::new(),
            test_interval: 86_400_000,
            retention: None,
            active_region: None,
            home_region: None,
            status: "ACTIVE".into(),
            maintenance: None,
            created_at: now,
            updated_at: now,
        };
        let backup = |id: &str, status, minutes_ago: i64| DatabaseBackup {
            backup_id: id.into(),
            backup_type: "full".into(),
            status,
            progress: 100.0,
            progress_message: "completed".into(),
            agent_id: AgentId::new("db-1").expect("id"),
            region: RegionId::new("us-west-2").expect("region"),
            tags: Default::default(),
            requested_by: "admin".into(),
            timestamp: now - Duration::minutes(minutes_ago + 1),
            completed_at: Some(now - Duration::minutes(minutes_ago)),
            duration_ms: Some(60_000),
            bytes_read: None,
            bytes_stored: None,
            start_lsn: None,
            stop_lsn: None,
            timeline: None,
            outcome: None,
            error: None,
        };
        let backups = [
            backup("full_3", BackupStatus::Completed, 5),
            backup("full_2", BackupStatus::Verified, 30),
            backup("full_1", BackupStatus::Verified, 90),
        ];
        let plans = [plan("tight", 15 * 60), plan("loose", 3600)];
        let r = rpo_status(&plans, &backups, now);
        assert_eq!(r[0].newest_verified_backup_id.as_deref(), Some("full_2"));
        assert_eq!(r[0].newest_verified_backup_age_seconds, Some(30 * 60));
        assert!(!r[0].within_rpo);
        assert!(r[1].within_rpo);
        let none = rpo_status(&plans, &backups[..1], now);
        assert_eq!(none[0].newest_verified_backup_age_seconds, None);
        assert!(!none[0].within_rpo);
    }
}
