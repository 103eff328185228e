//! DR tests (the runbook's "Automated DR Testing"): a record per test in the `drtests`
//! namespace, the command that makes the agent of the plan's first failover region run
//! the five steps (environment, restore, smoke tests, data consistency, cleanup) in a
//! throw-away directory, the record updated from the agent's progress and report, the
//! measured RTO compared with the plan's, and the scheduler that runs a test every
//! `testInterval` of each plan.
//!
//! The region rule: the plan's failover regions in its order; the first with an agent
//! that is connected, UP and announced the `database` capability (it has a `[database]`
//! section, so it can open the repository and run PostgreSQL) runs the test. Within a
//! region an agent next to no primary is preferred, then the lowest id. The plan's
//! active region is no exception: the test never touches the production cluster anyway
//! (own directory, own port and Unix socket, no TCP listener, `archive_mode = off`, no
//! `primary_conninfo`, no slot), but the point is to prove the failover side can restore.
//!
//! Architecture Invariant: at most one DR test runs per plan, and none while a failover
//! runs; a test is COMPLETED only when all five steps are DONE; a failed test, and one
//! whose measured RTO exceeds the plan's, raise a HIGH alert naming the plan; a test
//! left running by a coordinator stop is FAILED at the next start.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drmesh_protocol::api::{
    BackupStatus, DrPlan, DrTest, DrTestAccepted, DrTestReport, DrTestStatus, DrTestStep, Severity,
    StepStatus,
};
use drmesh_protocol::ids::runbook_id;
use drmesh_protocol::{AgentId, CommandKind, RegionId};
use tracing::{error, info, warn, Instrument};

use crate::alerts;
use crate::error::Error;
use crate::ops::database::{self, CAPABILITY};
use crate::ops::jobs::{self, Finished, Job};
use crate::plans;
use crate::rules::schedule;
use crate::state::Coordinator;
use crate::store::{Namespace, Store, StoreError, StoreExt};

const PREFIX: &str = "drtest_";

/// Alert kind: a DR test's measured RTO is above its plan's RTO (HIGH).
pub const DR_TEST_RTO_EXCEEDED: &str = "DR_TEST_RTO_EXCEEDED";
/// Alert kind: a DR test failed (HIGH).
pub const DR_TEST_FAILED: &str = "DR_TEST_FAILED";

/// How often the scheduler looks for plans due a test.
const SCHEDULER_TICK: Duration = Duration::from_secs(10);
/// At most this many scheduled tests run at once, across plans.
const MAX_SCHEDULED_RUNNING: usize = 2;

impl Job for DrTest {
    const NAMESPACE: Namespace = Namespace::DrTests;
    fn key(&self) -> &str {
        &self.test_id
    }
    fn agent(&self) -> &AgentId {
        &self.agent_id
    }
    fn status(&self) -> BackupStatus {
        match self.status {
            DrTestStatus::InProgress => BackupStatus::InProgress,
            DrTestStatus::Completed => BackupStatus::Completed,
            DrTestStatus::Failed => BackupStatus::Failed,
        }
    }
    fn set_progress(&mut self, percent: f32, message: String) {
        self.progress = percent.clamp(0.0, 100.0);
        apply_progress_line(&mut self.steps, &message);
        self.progress_message = message;
    }
    fn ended(&mut self, duration_ms: u64) {
        self.duration_ms = Some(duration_ms);
        self.completed_at = Some(Utc::now());
    }
}

/// Folds an agent progress line (`[n/5] name: started|done|failed — …`) into the live
/// steps; the agent's report replaces them at the end.
fn apply_progress_line(steps: &mut [DrTestStep], line: &str) {
    let Some(rest) = line.strip_prefix('[') else {
        return;
    };
    let Some(n) = rest.split('/').next().and_then(|n| n.parse::<usize>().ok()) else {
        return;
    };
    let Some(i) = n.checked_sub(1).filter(|i| *i < steps.len()) else {
        return;
    };
    let now = Utc::now();
    // Progress writes are throttled: earlier steps may have ended unseen.
    for s in steps.iter_mut().take(i) {
        if matches!(s.status, StepStatus::Pending | StepStatus::Running) {
            s.status = StepStatus::Done;
            s.ended_at.get_or_insert(now);
        }
    }
    let s = &mut steps[i];
    if line.contains(": started") {
        s.status = StepStatus::Running;
        s.started_at.get_or_insert(now);
    } else if line.contains(": done") {
        s.status = StepStatus::Done;
        s.ended_at = Some(now);
    } else if line.contains(": failed") {
        s.status = StepStatus::Failed;
        s.ended_at = Some(now);
    }
    if let Some((_, m)) = line.split_once(" — ") {
        s.message = m.to_string();
    }
}

fn save(store: &dyn Store, rec: &DrTest) -> Result<(), StoreError> {
    store.put_json(Namespace::DrTests, &rec.test_id, rec)
}

/// Every DR test, oldest first.
fn all(store: &dyn Store) -> Result<Vec<DrTest>, StoreError> {
    store.scan_json(Namespace::DrTests, PREFIX)
}

/// The newest DR test of any plan, running or finished (for the DR status).
pub fn latest(store: &dyn Store) -> Result<Option<DrTest>, StoreError> {
    Ok(all(store)?.into_iter().max_by_key(|t| t.started_at))
}

/// The newest DR test of `plan_id`.
pub fn latest_for(store: &dyn Store, plan_id: &str) -> Result<Option<DrTest>, StoreError> {
    Ok(all(store)?
        .into_iter()
        .filter(|t| t.plan_id == plan_id)
        .max_by_key(|t| t.started_at))
}

/// The newest DR test of each plan that has one, by plan id.
pub fn latest_per_plan(store: &dyn Store) -> Result<Vec<DrTest>, StoreError> {
    let mut newest: std::collections::BTreeMap<String, DrTest> = Default::default();
    for t in all(store)? {
        match newest.get(&t.plan_id) {
            Some(n) if n.started_at > t.started_at => {}
            _ => {
                newest.insert(t.plan_id.clone(), t);
            }
        }
    }
    Ok(newest.into_values().collect())
}

/// The newest COMPLETED or VERIFIED base backup (full or incr).
fn latest_backup(store: &dyn Store) -> Result<Option<String>, StoreError> {
    Ok(database::list(store, None)?
        .into_iter()
        .find(|b| {
            matches!(b.status, BackupStatus::Completed | BackupStatus::Verified)
                && b.backup_type != "logical"
        })
        .map(|b| b.backup_id))
}

/// A candidate agent for the region rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub id: AgentId,
    pub region: RegionId,
    pub primary: bool,
}

/// The region rule (see the module doc): the first of the plan's failover regions with a
/// capable agent; there, one next to no primary, then the lowest id. `candidates` are the
/// connected, UP agents with the `database` capability. Returns the agent, its region
/// and why.
pub fn pick_target(
    failover_regions: &[RegionId],
    candidates: &[Candidate],
) -> Option<(AgentId, RegionId, String)> {
    for (i, region) in failover_regions.iter().enumerate() {
        let mut here: Vec<&Candidate> = candidates.iter().filter(|c| c.region == *region).collect();
        here.sort_by(|a, b| (a.primary, a.id.as_str()).cmp(&(b.primary, b.id.as_str())));
        if let Some(c) = here.first() {
            let why = if i == 0 {
                format!(
                    "{region} is the plan's first failover region; {} is UP there with [database]",
                    c.id
                )
            } else {
                format!(
                    "no agent UP with [database] in {}; {region} is the next failover region with one ({})",
                    crate::plans::region_list(&failover_regions[..i]),
                    c.id
                )
            };
            return Some((c.id.clone(), region.clone(), why));
        }
    }
    None
}

/// `POST …/disaster-recovery/test/:planId`: records the test and starts it.
pub fn start(
    coord: &Arc<Coordinator>,
    plan_id: &str,
    requested_by: String,
    trigger: &str,
) -> Result<DrTestAccepted, Error> {
    let store = coord.store.as_ref();
    let plan =
        plans::get(store, plan_id)?.ok_or_else(|| Error::NotFound(format!("no plan {plan_id}")))?;
    let backup_id = latest_backup(store)?.ok_or_else(|| {
        Error::Unavailable(
            "no COMPLETED or VERIFIED database base backup to restore: take one first".into(),
        )
    })?;
    let candidates: Vec<Candidate> = jobs::capable_agents(coord, CAPABILITY)
        .into_iter()
        .map(|c| Candidate {
            id: c.id,
            region: c.region,
            primary: c.primary,
        })
        .collect();
    let (agent_id, region, reason) = pick_target(&plan.failover_regions, &candidates)
        .ok_or_else(|| {
            Error::Unavailable(format!(
                "no agent with a [database] configuration is connected and UP in plan {plan_id}'s failover regions ({})",
                crate::plans::region_list(&plan.failover_regions)
            ))
        })?;
    let rec = DrTest {
        test_id: runbook_id("drtest"),
        plan_id: plan.id.clone(),
        status: DrTestStatus::InProgress,
        target_region: region,
        agent_id,
        target_reason: reason,
        backup_id,
        trigger: trigger.to_string(),
        requested_by,
        progress: 0.0,
        progress_message: "queued".into(),
        started_at: Utc::now(),
        completed_at: None,
        duration_ms: None,
        steps: DrTestStep::pending(),
        measured_rto_ms: None,
        measured_rto_seconds: None,
        plan_rto_seconds: plan.rto_seconds,
        rto_met: None,
        smoke_checks: Vec::new(),
        details: Vec::new(),
        error: None,
    };
    // Checked and recorded in one transaction (the checks above only pick the target).
    crate::ops::admission::admit(
        store,
        &crate::rules::admission::Operation::DrTest {
            plan: plan.id.clone(),
        },
        rec.started_at,
        |tx| tx.put_json(Namespace::DrTests, &rec.test_id, &rec),
    )?;
    let accepted = DrTestAccepted {
        status: rec.status,
        test_id: rec.test_id.clone(),
        plan_id: rec.plan_id.clone(),
        target_region: rec.target_region.clone(),
        agent_id: rec.agent_id.clone(),
        target_reason: rec.target_reason.clone(),
        backup_id: rec.backup_id.clone(),
        started_at: rec.started_at,
        plan_rto_seconds: rec.plan_rto_seconds,
    };
    let span = tracing::info_span!(
        "dr_test",
        plan_id = %rec.plan_id,
        test_id = %rec.test_id,
        agent_id = %rec.agent_id
    );
    tokio::spawn(run(coord.clone(), rec).instrument(span));
    Ok(accepted)
}

/// Folds how the agent's command ended into the record: COMPLETED only with five DONE
/// steps. Returns whether it passed.
fn conclude(rec: &mut DrTest, finished: Finished<DrTestReport>) -> bool {
    let passed = match finished {
        Finished::Done(report) => {
            let passed = report.passed();
            rec.steps = report.steps;
            rec.measured_rto_ms = report.measured_rto_ms;
            rec.smoke_checks = report.smoke_checks;
            rec.details = report.details;
            rec.error = None;
            passed
        }
        Finished::Failed(why) => {
            rec.error = Some(why);
            false
        }
        Finished::TimedOut => {
            rec.error = Some("no result within the recovery timeout".into());
            false
        }
    };
    if !passed {
        for s in &mut rec.steps {
            if matches!(s.status, StepStatus::Pending | StepStatus::Running) {
                s.status = StepStatus::Failed;
                s.message = rec.error.clone().unwrap_or_else(|| "did not end".into());
            }
        }
    }
    rec.measured_rto_seconds = rec.measured_rto_ms.map(|ms| ms as f64 / 1000.0);
    rec.rto_met = rec
        .measured_rto_ms
        .map(|ms| !schedule::rto_exceeded(ms, rec.plan_rto_seconds));
    rec.status = if passed {
        DrTestStatus::Completed
    } else {
        DrTestStatus::Failed
    };
    rec.progress = 100.0;
    rec.progress_message = if passed { "passed" } else { "failed" }.into();
    passed
}

/// The failed alert's message: the plan, the failed steps and the first objects named.
fn failure_message(rec: &DrTest) -> String {
    let mut what: Vec<String> = rec
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Failed)
        .map(|s| format!("step {} ({}) failed: {}", s.number, s.name, s.message))
        .collect();
    for d in rec.details.iter().filter(|d| d.check != "note").take(5) {
        what.push(format!("{}: {}", d.object, d.reason));
    }
    if let Some(e) = &rec.error {
        what.push(e.clone());
    }
    format!(
        "DR test {} of plan {} FAILED on {} in {}: {}",
        rec.test_id,
        rec.plan_id,
        rec.agent_id,
        rec.target_region,
        what.join("; ")
    )
}

async fn run(coord: Arc<Coordinator>, mut rec: DrTest) {
    info!(backup_id = %rec.backup_id, region = %rec.target_region, "DR test started");
    let kind = CommandKind::DrTest {
        test_id: rec.test_id.clone(),
        backup_id: rec.backup_id.clone(),
    };
    let result =
        jobs::run_with_progress(&coord, &mut rec, kind, coord.config.recovery_timeout).await;
    let passed = conclude(&mut rec, jobs::finished::<DrTestReport>(result, "DR test"));
    if let Err(e) = save(coord.store.as_ref(), &rec) {
        error!(error = %e, "save DR test");
    }
    alert(&coord, &rec, passed);
}

/// The HIGH alerts: a failed test, and a measured RTO above the plan's. A passing test
/// within the RTO resolves both.
fn alert(coord: &Coordinator, rec: &DrTest, passed: bool) {
    let store = coord.store.as_ref();
    if passed {
        info!(measured_rto_ms = ?rec.measured_rto_ms, "DR test passed");
        let _ = alerts::resolve_cleared(store, DR_TEST_FAILED, &rec.plan_id);
    } else {
        warn!(error = ?rec.error, "DR test failed");
        alerts::raise_logged(
            coord.store.as_ref(),
            Severity::High,
            DR_TEST_FAILED,
            &rec.plan_id,
            Some(rec.target_region.clone()),
            failure_message(rec),
        );
    }
    match (rec.measured_rto_ms, rec.rto_met) {
        (Some(ms), Some(false)) => alerts::raise_logged(
            coord.store.as_ref(),
            Severity::High,
            DR_TEST_RTO_EXCEEDED,
            &rec.plan_id,
            Some(rec.target_region.clone()),
            format!(
                "DR test {} of plan {}: measured RTO {:.1} s exceeds the plan's RTO of {} s",
                rec.test_id,
                rec.plan_id,
                ms as f64 / 1000.0,
                rec.plan_rto_seconds
            ),
        ),
        (Some(_), Some(true)) => {
            let _ = alerts::resolve_cleared(store, DR_TEST_RTO_EXCEEDED, &rec.plan_id);
        }
        _ => {}
    }
}

/// Marks DR tests that were running when the coordinator stopped as FAILED.
pub fn fail_interrupted(store: &dyn Store) -> Result<usize, StoreError> {
    let mut n = 0;
    for mut rec in all(store)?
        .into_iter()
        .filter(|t| t.status == DrTestStatus::InProgress)
    {
        rec.status = DrTestStatus::Failed;
        rec.error = Some("interrupted: the coordinator restarted while the DR test ran".into());
        rec.completed_at = Some(Utc::now());
        for s in &mut rec.steps {
            if matches!(s.status, StepStatus::Pending | StepStatus::Running) {
                s.status = StepStatus::Failed;
                s.message = "interrupted".into();
            }
        }
        save(store, &rec)?;
        n += 1;
    }
    Ok(n)
}

/// A scheduled test that could not start (no backup, no agent) is recorded FAILED, so
/// the plan's schedule moves on and the HIGH alert says why.
fn record_unstartable(coord: &Coordinator, plan: &DrPlan, why: String) {
    let region = plan
        .failover_regions
        .first()
        .cloned()
        .or_else(|| plan.active_region.clone());
    let Some(region) = region else { return };
    let mut rec = DrTest {
        test_id: runbook_id("drtest"),
        plan_id: plan.id.clone(),
        status: DrTestStatus::Failed,
        target_region: region,
        agent_id: AgentId::new("none").unwrap_or_else(|_| unreachable!("a valid id")),
        target_reason: String::new(),
        backup_id: String::new(),
        trigger: "scheduled".into(),
        requested_by: "scheduler".into(),
        progress: 100.0,
        progress_message: "could not start".into(),
        started_at: Utc::now(),
        completed_at: Some(Utc::now()),
        duration_ms: Some(0),
        steps: DrTestStep::pending(),
        measured_rto_ms: None,
        measured_rto_seconds: None,
        plan_rto_seconds: plan.rto_seconds,
        rto_met: None,
        smoke_checks: Vec::new(),
        details: Vec::new(),
        error: None,
    };
    conclude(&mut rec, Finished::Failed(why));
    if let Err(e) = save(coord.store.as_ref(), &rec) {
        error!(error = %e, "save DR test");
    }
    alert(coord, &rec, false);
}

/// The scheduler: every tick, starts a test of each plan that [`schedule::drtest_due`], at most
/// [`MAX_SCHEDULED_RUNNING`] running at once.
pub async fn schedule(coord: Arc<Coordinator>) {
    loop {
        tokio::time::sleep(SCHEDULER_TICK).await;
        if !coord.in_office() {
            continue;
        }
        if let Err(e) = schedule_once(&coord, Utc::now()) {
            warn!(error = %e, "DR test scheduler");
        }
    }
}

fn schedule_once(coord: &Arc<Coordinator>, now: DateTime<Utc>) -> Result<(), StoreError> {
    let store = coord.store.as_ref();
    let tests = all(store)?;
    let mut running = tests
        .iter()
        .filter(|t| t.status == DrTestStatus::InProgress)
        .count();
    for plan in plans::list(store)? {
        if running >= MAX_SCHEDULED_RUNNING {
            break;
        }
        let last = tests
            .iter()
            .filter(|t| t.plan_id == plan.id)
            .max_by_key(|t| t.started_at)
            .map(|t| (t.started_at, t.status));
        if !schedule::drtest_due(now, plan.test_interval, plan.created_at, last) {
            continue;
        }
        match start(coord, &plan.id, "scheduler".into(), "scheduled") {
            Ok(a) => {
                info!(plan_id = %plan.id, test_id = %a.test_id, "scheduled DR test started");
                running += 1;
            }
            // A failover running: try again at the next tick.
            Err(Error::Conflict(why)) => {
                info!(plan_id = %plan.id, %why, "scheduled DR test waits")
            }
            Err(Error::Store(e)) => return Err(e),
            Err(e) => {
                warn!(plan_id = %plan.id, error = %e, "scheduled DR test could not start");
                record_unstartable(coord, &plan, e.to_string());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use drmesh_protocol::api::{SmokeCheckResult, VerificationFinding};

    fn region(r: &str) -> RegionId {
        RegionId::new(r).expect("region")
    }

    fn cand(id: &str, r: &str, primary: bool) -> Candidate {
        Candidate {
            id: AgentId::new(id).expect("id"),
            region: region(r),
            primary,
        }
    }

    #[test]
    fn the_first_failover_region_with_a_capable_agent_runs_the_test() {
        let regions = [region("us-east-1"), region("eu-west-1")];
        let (agent, r, why) = pick_target(
            &regions,
            &[
                cand("db-west", "us-west-2", true),
                cand("db-eu", "eu-west-1", false),
                cand("db-east-b", "us-east-1", false),
                cand("db-east-a", "us-east-1", true),
            ],
        )
        .expect("target");
        assert_eq!((agent.as_str(), r.as_str()), ("db-east-b", "us-east-1"));
        assert!(why.contains("first failover region"), "{why}");
        // us-east-1 has none up: the next region, and why.
        let (agent, r, why) = pick_target(
            &regions,
            &[
                cand("db-west", "us-west-2", true),
                cand("db-eu", "eu-west-1", false),
            ],
        )
        .expect("target");
        assert_eq!((agent.as_str(), r.as_str()), ("db-eu", "eu-west-1"));
        assert!(why.contains("us-east-1"), "{why}");
        // Only outside the plan's regions: none.
        assert!(pick_target(&regions, &[cand("db-west", "us-west-2", true)]).is_none());
    }

    fn pending() -> DrTest {
        DrTest {
            test_id: "drtest_1_aaaaaa".into(),
            plan_id: "production_dr_plan".into(),
            status: DrTestStatus::InProgress,
            target_region: region("us-east-1"),
            agent_id: AgentId::new("db-east").expect("id"),
            target_reason: String::new(),
            backup_id: "full_1_bbbbbb".into(),
            trigger: "manual".into(),
            requested_by: "admin".into(),
            progress: 0.0,
            progress_message: String::new(),
            started_at: Utc::now(),
            completed_at: None,
            duration_ms: None,
            steps: DrTestStep::pending(),
            measured_rto_ms: None,
            measured_rto_seconds: None,
            plan_rto_seconds: 1,
            rto_met: None,
            smoke_checks: Vec::new(),
            details: Vec::new(),
            error: None,
        }
    }

    fn report(done: usize, rto_ms: Option<u64>) -> DrTestReport {
        let mut steps = DrTestStep::pending();
        for (i, s) in steps.iter_mut().enumerate() {
            s.status = if i < done {
                StepStatus::Done
            } else {
                StepStatus::Failed
            };
        }
        DrTestReport {
            steps,
            measured_rto_ms: rto_ms,
            smoke_checks: vec![SmokeCheckResult {
                name: "sql: select 1".into(),
                passed: true,
                detail: String::new(),
            }],
            details: vec![VerificationFinding {
                check: "restorability".into(),
                object: "table public.orders".into(),
                reason: "1 rows recorded, 0 restored".into(),
            }],
        }
    }

    #[test]
    fn five_done_steps_complete_a_test_and_the_rto_is_compared() {
        let mut rec = pending();
        assert!(conclude(&mut rec, Finished::Done(report(5, Some(2500)))));
        assert_eq!(rec.status, DrTestStatus::Completed);
        assert_eq!(rec.measured_rto_seconds, Some(2.5));
        assert_eq!(rec.rto_met, Some(false), "2.5 s against a plan RTO of 1 s");
        let mut rec = pending();
        rec.plan_rto_seconds = 3;
        conclude(&mut rec, Finished::Done(report(5, Some(2500))));
        assert_eq!(rec.rto_met, Some(true));

        let mut rec = pending();
        assert!(!conclude(&mut rec, Finished::Done(report(3, Some(900)))));
        assert_eq!(rec.status, DrTestStatus::Failed);
        let m = failure_message(&rec);
        assert!(m.contains("production_dr_plan"), "{m}");
        assert!(m.contains("step 4"), "{m}");
        assert!(m.contains("public.orders"), "{m}");

        let mut rec = pending();
        assert!(!conclude(&mut rec, Finished::TimedOut));
        assert!(rec.steps.iter().all(|s| s.status == StepStatus::Failed));
        assert_eq!(rec.rto_met, None);
    }

    #[test]
    fn progress_lines_move_the_live_steps() {
        let mut steps = DrTestStep::pending();
        apply_progress_line(
            &mut steps,
            "[1/5] Create isolated test environment: started",
        );
        assert_eq!(steps[0].status, StepStatus::Running);
        // The end of step 1 and the start of 2 were throttled away.
        apply_progress_line(
            &mut steps,
            "[2/5] Restore latest production backup: done — restored",
        );
        assert_eq!(steps[0].status, StepStatus::Done);
        assert_eq!(steps[1].status, StepStatus::Done);
        assert_eq!(steps[1].message, "restored");
        apply_progress_line(
            &mut steps,
            "[3/5] Run application smoke tests: failed — 1 of 1",
        );
        assert_eq!(steps[2].status, StepStatus::Failed);
        apply_progress_line(&mut steps, "restoring");
        apply_progress_line(&mut steps, "[9/5] nonsense: started");
        assert_eq!(steps[3].status, StepStatus::Pending);
    }
}
