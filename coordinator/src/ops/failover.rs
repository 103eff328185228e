//! Failover: the runbook's seven steps as a durable state machine.
//!
//! A failover is a record in the `failovers` namespace. Each step is written RUNNING
//! before it acts and DONE (or FAILED, SKIPPED) after, so a coordinator killed at any
//! point finds the record IN_PROGRESS when it starts again and runs the step it was in
//! once more; every step is idempotent (promoting a server that already accepts writes,
//! fencing a fenced one, raising the epoch to the value already stored all change
//! nothing).
//!
//! Never two writable primaries: the new epoch is stored before anything is fenced or
//! promoted, and the target is promoted only after the old primary's agent confirmed
//! its server is stopped and marked `standby.signal`, or its lease shows it fenced
//! itself (its agent can fence and held a lease), or an operator confirmed it stopped
//! by hand (`confirm_fenced`); see ARCHITECTURE.md, "Failover safety argument". Until
//! then the failover waits in step 2.
//!
//! Operators act on a run through the store, never on the driver: a confirmation or an
//! abort is written to the record, and the driver reads it in the transaction it writes
//! with ([`save`]). Every store operation of the driver is retried ([`STORE_RETRY`]);
//! past that the run ends FAILED, recorded whatever it takes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use drmesh_protocol::api::{
    AgentState, ArchivingOutcome, DrPlan, FailoverAbort, FailoverAborted, FailoverAccepted,
    FailoverKind, FailoverRequest, FailoverRun, FailoverStatus, FailoverStep, FenceConfirmation,
    FenceConfirmed, PromoteOutcome, Severity, StepStatus,
};
use drmesh_protocol::ids::runbook_id;
use drmesh_protocol::{AgentId, CommandKind, Epoch, PgRole, RegionId};
use tracing::{error, info, warn, Instrument};

use crate::alerts;
use crate::error::Error;
use crate::notify::{Event, Notifier};
use crate::ops::admission;
use crate::plans;
use crate::rules;
use crate::rules::admission::Operation;
use crate::rules::failover::{OperatorWord, Readiness, Rpo};
use crate::state::{Coordinator, EPOCH_KEY};
use crate::store::{Namespace, Store, StoreError, StoreExt};
use crate::transport;

pub mod switchover;

/// The runbook's steps, in order.
pub const STEPS: [&str; 7] = [
    "Notify stakeholders via all channels",
    "Prepare target infrastructure",
    "Promote read replica to primary",
    "Update DNS records (TTL: 60 seconds)",
    "Validate application connectivity",
    "Monitor health checks",
    "Confirm failover success",
];

/// How long the promoted server must be seen as the primary by its agent's heartbeats
/// (step 6), in heartbeat intervals.
const MONITOR_INTERVALS: u32 = 3;

/// The index of step 2, "Prepare target infrastructure" (fencing), in [`STEPS`].
const PREPARE_STEP: usize = 1;

/// The index of step 3, "Promote read replica to primary", in [`STEPS`].
const PROMOTE_STEP: usize = 2;

/// Alert kind raised when a failover fails, at any step.
pub const FAILOVER_FAILED: &str = "FAILOVER_FAILED";

/// Alert kind raised while step 2 waits for an operator to stop a server by hand and
/// confirm it (`confirm-fenced`); resolved when step 2 ends, however it ends.
pub const FAILOVER_NEEDS_OPERATOR: &str = "FAILOVER_NEEDS_OPERATOR";

/// Resolves the run's FAILOVER_NEEDS_OPERATOR alert, if any.
fn operator_no_longer_needed(store: &dyn Store, id: &str) {
    if let Err(e) = alerts::resolve_cleared(store, FAILOVER_NEEDS_OPERATOR, id) {
        warn!(error = %e, "resolve the failover's FAILOVER_NEEDS_OPERATOR alert");
    }
}

/// Whether the run's promotion (step 3) is done.
fn promoted(run: &FailoverRun) -> bool {
    run.steps
        .get(PROMOTE_STEP)
        .is_some_and(|s| s.status == StepStatus::Done)
}

/// The plan's active region moves to `region` from `from`, which becomes its home region
/// if it had none (a plan deleted meanwhile is left alone).
fn record_active_region(
    store: &dyn Store,
    plan: &str,
    region: &RegionId,
    from: Option<&RegionId>,
) -> Result<(), StoreError> {
    let moved = plans::update(store, plan, |p| {
        if p.home_region.is_none() {
            p.home_region = from.cloned().or_else(|| p.active_region.clone());
        }
        if p.active_region.as_ref() != Some(region) {
            p.active_region = Some(region.clone());
            p.updated_at = Utc::now();
        }
        Ok(())
    });
    match moved {
        Ok(_) | Err(Error::NotFound(_)) => Ok(()),
        Err(Error::Store(e)) => Err(e),
        Err(e) => Err(StoreError::Backend(e.to_string())),
    }
}

/// Alert kind raised when a standby could not be re-pointed at a new primary.
pub const STANDBY_NOT_REPOINTED: &str = "STANDBY_NOT_REPOINTED";

pub fn get(store: &dyn Store, id: &str) -> Result<Option<FailoverRun>, StoreError> {
    store.get_json(Namespace::Failovers, id)
}

/// The plan's newest failover that promoted a server (step 3 done), for the automatic
/// failover's cool-down.
pub fn last_promotion(
    store: &dyn Store,
    plan_id: &str,
) -> Result<Option<rules::failover::LastPromotion>, StoreError> {
    Ok(store
        .scan_json::<FailoverRun>(Namespace::Failovers, "")?
        .into_iter()
        .filter(|f| f.plan_id == plan_id)
        .filter(promoted)
        .max_by_key(|f| f.failover_start_time)
        .map(|f| rules::failover::LastPromotion {
            failover_id: f.failover_id,
            started_at: f.failover_start_time,
        }))
}

/// The newest failover, for the DR status.
pub fn latest(store: &dyn Store) -> Result<Option<FailoverRun>, StoreError> {
    Ok(store
        .scan_json::<FailoverRun>(Namespace::Failovers, "")?
        .into_iter()
        .max_by(|a, b| a.failover_start_time.cmp(&b.failover_start_time)))
}

fn running(store: &dyn Store) -> Result<Vec<FailoverRun>, StoreError> {
    let mut all: Vec<FailoverRun> = store.scan_json(Namespace::Failovers, "")?;
    all.retain(|f| f.status.is_running());
    Ok(all)
}

/// `POST …/disaster-recovery/failover`: checks the request, stores the failover and
/// starts it in the background.
pub fn start(
    coord: &Arc<Coordinator>,
    req: FailoverRequest,
    requested_by: String,
) -> Result<FailoverAccepted, Error> {
    let plan = plan_for(coord.store.as_ref(), &req.plan_id, &req.target_region)?;
    let run = new_run(
        &plan,
        req.target_region,
        req.allow_data_loss,
        requested_by,
        FailoverKind::Failover,
    );
    admit_and_spawn(coord, run)
}

/// The plan a failover or switchover to `target` is asked for: 404 if there is none,
/// 400 if `target` is none of its regions ([`rules::failover::targets`]).
fn plan_for(store: &dyn Store, plan_id: &str, target: &RegionId) -> Result<DrPlan, Error> {
    let plan =
        plans::get(store, plan_id)?.ok_or_else(|| Error::NotFound(format!("no plan {plan_id}")))?;
    let targets = rules::failover::targets(&plan);
    if !targets.contains(target) {
        return Err(Error::BadRequest(format!(
            "targetRegion {} is not one of plan {}'s failoverRegions ({}){}",
            target,
            plan.id,
            plans::region_list(&plan.failover_regions),
            match &plan.home_region {
                Some(home) => format!(" nor its home region {home}"),
                None => String::new(),
            }
        )));
    }
    Ok(plan)
}

/// A new run of `plan` to `target_region`, every step pending.
fn new_run(
    plan: &DrPlan,
    target_region: RegionId,
    allow_data_loss: bool,
    requested_by: String,
    kind: FailoverKind,
) -> FailoverRun {
    let now = Utc::now();
    // The plan's RTO is what the operator expects; a failover here takes seconds.
    let estimate = Duration::from_secs(plan.rto_seconds.clamp(60, 30 * 60));
    FailoverRun {
        failover_id: runbook_id(match kind {
            FailoverKind::Failover => "fo",
            FailoverKind::Switchover => "so",
        }),
        plan_id: plan.id.clone(),
        status: FailoverStatus::Initiated,
        target_region,
        target_agent: None,
        from_region: None,
        from_agent: None,
        epoch: None,
        allow_data_loss,
        requested_by,
        failover_start_time: now,
        estimated_completion_time: now
            + chrono::Duration::from_std(estimate).unwrap_or(chrono::Duration::minutes(30)),
        completed_at: None,
        timeline: None,
        current_step: None,
        steps: STEPS
            .iter()
            .enumerate()
            .map(|(i, name)| FailoverStep {
                number: i as u8 + 1,
                name: (*name).to_string(),
                status: StepStatus::Pending,
                started_at: None,
                ended_at: None,
                message: String::new(),
            })
            .collect(),
        error: None,
        kind,
        switchover: None,
        awaiting_confirmation: Vec::new(),
        fenced_by_operator: Vec::new(),
        aborted: None,
    }
}

/// Admits `run` and records it — checked and recorded in one transaction, so of two
/// requests one is admitted and the other is told which failover runs — then drives it
/// in the background.
fn admit_and_spawn(coord: &Arc<Coordinator>, run: FailoverRun) -> Result<FailoverAccepted, Error> {
    admission::admit(
        coord.store.as_ref(),
        &Operation::Failover {
            plan: run.plan_id.clone(),
        },
        run.failover_start_time,
        |tx| tx.put_json(Namespace::Failovers, &run.failover_id, &run),
    )?;
    info!(failover_id = %run.failover_id, plan = %run.plan_id, target = %run.target_region, kind = ?run.kind, "failover initiated");
    let accepted = accepted(&run);
    spawn(coord.clone(), run.failover_id);
    Ok(accepted)
}

/// `POST …/disaster-recovery/failover/:id/retry`: a FAILED failover runs again from
/// the step that failed — admitted like a new failover, in the transaction that flips
/// it back. What was done stays done (a promotion is not repeated) and the run keeps its
/// epoch.
pub fn retry(
    coord: &Arc<Coordinator>,
    id: &str,
    requested_by: &str,
) -> Result<FailoverAccepted, Error> {
    let now = Utc::now();
    let run = coord.store.atomically(|tx| {
        let mut run: FailoverRun = tx
            .get_json(Namespace::Failovers, id)?
            .ok_or_else(|| Error::NotFound(format!("no failover {id}")))?;
        if run.status != FailoverStatus::Failed {
            return Err(Error::Conflict(format!(
                "failover {id} is {}: only a FAILED failover is retried",
                run.status
            )));
        }
        admission::check(
            tx,
            &Operation::Failover {
                plan: run.plan_id.clone(),
            },
            now,
        )?;
        for s in run
            .steps
            .iter_mut()
            .filter(|s| s.status == StepStatus::Failed)
        {
            s.status = StepStatus::Pending;
            s.started_at = None;
            s.ended_at = None;
            s.message = format!("retried by {requested_by}; before: {}", s.message);
        }
        run.status = FailoverStatus::Initiated;
        run.error = None;
        run.completed_at = None;
        tx.put_json(Namespace::Failovers, id, &run)?;
        Ok(run)
    })?;
    warn!(failover_id = %id, by = requested_by, "failover retried");
    spawn(coord.clone(), id.to_string());
    Ok(accepted(&run))
}

/// The 202 body for a run that was just admitted.
fn accepted(run: &FailoverRun) -> FailoverAccepted {
    FailoverAccepted {
        kind: run.kind,
        status: "INITIATED".into(),
        failover_id: run.failover_id.clone(),
        failover_start_time: run.failover_start_time,
        estimated_completion_time: run.estimated_completion_time,
    }
}

/// `POST …/disaster-recovery/failover/:id/confirm-fenced`: an operator says the server
/// next to `agent` (without one: every server step 2 waits on, its
/// `awaitingConfirmation`) is stopped by hand. Recorded in the run, for step 2.
pub fn confirm_fenced(
    coord: &Arc<Coordinator>,
    id: &str,
    agent: Option<AgentId>,
    by: &str,
) -> Result<FenceConfirmed, Error> {
    if let Some(a) = &agent {
        if coord.registry.lock().get(a).is_none() {
            let waits_on =
                get(coord.store.as_ref(), id)?.is_some_and(|r| r.awaiting_confirmation.contains(a));
            if !waits_on {
                return Err(Error::BadRequest(format!("{a} is not a known agent")));
            }
        }
    }
    let now = Utc::now();
    let confirmed = coord.store.atomically(|tx| {
        let mut run: FailoverRun = tx
            .get_json(Namespace::Failovers, id)?
            .ok_or_else(|| Error::NotFound(format!("no failover {id}")))?;
        if !run.status.is_running() {
            return Err(Error::Conflict(format!(
                "failover {id} is {}: only a running failover waits for a server to be fenced",
                run.status
            )));
        }
        if run
            .steps
            .get(PREPARE_STEP)
            .is_some_and(|s| matches!(s.status, StepStatus::Done | StepStatus::Skipped))
        {
            return Err(Error::Conflict(format!(
                "failover {id} is past step 2 (fencing): there is nothing to confirm"
            )));
        }
        let agents = match &agent {
            Some(a) => vec![a.clone()],
            None if run.awaiting_confirmation.is_empty() => {
                return Err(Error::Conflict(format!(
                    "failover {id} waits for no server to be confirmed fenced; name one with \
                     {{\"agentId\": \"…\"}}"
                )))
            }
            None => run.awaiting_confirmation.clone(),
        };
        for a in &agents {
            if !run.fenced_by_operator.iter().any(|c| &c.agent_id == a) {
                run.fenced_by_operator.push(FenceConfirmation {
                    agent_id: a.clone(),
                    by: by.to_string(),
                    at: now,
                });
            }
        }
        tx.put_json(Namespace::Failovers, id, &run)?;
        Ok(agents)
    })?;
    let names = confirmed
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    warn!(failover_id = %id, by, agents = %names, "servers confirmed fenced by an operator");
    Ok(FenceConfirmed {
        failover_id: id.to_string(),
        message: format!(
            "recorded: {names} stopped by hand, as {by} confirmed; step 2 goes on without their \
             agents' fencing"
        ),
        confirmed,
    })
}

/// What the store held when the driver wrote its copy of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Saved {
    /// Written; the run goes on.
    Saved,
    /// An operator aborted the run: the driver stops here.
    Aborted,
}

/// [`save`] with the driver's retries ([`STORE_RETRY`]).
async fn persist(
    store: &dyn Store,
    run: &mut FailoverRun,
    write: Write,
    what: &str,
) -> Result<Saved, StoreError> {
    retried(what, STORE_RETRY, || save(store, run, write)).await
}

/// The plan follows a promotion (see [`record_active_region`]), with the driver's
/// retries.
async fn follow_promotion(
    store: &dyn Store,
    plan: &str,
    region: &RegionId,
    from: Option<&RegionId>,
) -> Result<(), StoreError> {
    retried("move the plan's active region", STORE_RETRY, || {
        record_active_region(store, plan, region, from)
    })
    .await
}

/// How the driver writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Write {
    /// Moving on (starting a step, completing the run): nothing is written once the run
    /// is aborted.
    Advance,
    /// Recording what happened (a step's outcome, a message): always written, since it
    /// is the truth — into an aborted run too, keeping it ABORTED.
    Record,
}

/// Writes the driver's copy of the run, keeping what operators recorded in the stored
/// one meanwhile (fence confirmations, an abort), in one transaction: the abort is
/// checked in the same transaction the driver advances with, so no step starts after
/// it.
fn save(store: &dyn Store, run: &mut FailoverRun, write: Write) -> Result<Saved, StoreError> {
    store.atomically(|tx| {
        let stored = tx.get_json::<FailoverRun>(Namespace::Failovers, &run.failover_id)?;
        let mut saved = Saved::Saved;
        if let Some(stored) = stored {
            run.fenced_by_operator = stored.fenced_by_operator;
            if stored.status == FailoverStatus::Aborted {
                if write == Write::Advance {
                    return Ok(Saved::Aborted);
                }
                run.status = FailoverStatus::Aborted;
                run.completed_at = stored.completed_at;
                run.aborted = stored.aborted;
                run.awaiting_confirmation.clear();
                // A promotion the driver finished after the abort is said, not hidden.
                if promoted(run) {
                    let by = run
                        .aborted
                        .as_ref()
                        .filter(|a| !a.promoted)
                        .map(|a| a.by.clone());
                    if let Some(by) = by {
                        let message = abort_message(run, &by);
                        if let Some(a) = run.aborted.as_mut() {
                            a.promoted = true;
                            a.message = message;
                        }
                    }
                }
                saved = Saved::Aborted;
            }
        }
        tx.put_json(Namespace::Failovers, &run.failover_id, &*run)?;
        Ok(saved)
    })
}

/// What an abort leaves, in words.
fn abort_message(run: &FailoverRun, by: &str) -> String {
    let id = &run.failover_id;
    if promoted(run) {
        format!(
            "failover {id} aborted by {by} after step 3 promoted {} in {}: that server STAYS \
             THE PRIMARY (a promotion is never undone) and the plan watches it; the steps not \
             run (DNS, validation, re-pointing standbys) are left to do by hand",
            run.target_agent
                .as_ref()
                .map_or_else(|| "the target".to_string(), ToString::to_string),
            run.target_region
        )
    } else {
        format!(
            "failover {id} aborted by {by} before any promotion: the primary is where it was \
             (a server fenced in step 2 stays fenced until `drmesh rejoin` or an operator \
             starts it); the plan is free for another failover"
        )
    }
}

/// `POST …/disaster-recovery/failover/:id/abort`: a running or FAILED failover stops;
/// its driver at the next step boundary (the step it is in ends and is recorded). A
/// promotion already done is not undone. A COMPLETED (or already aborted) run is a
/// conflict.
pub fn abort(coord: &Arc<Coordinator>, id: &str, by: &str) -> Result<FailoverAborted, Error> {
    let now = Utc::now();
    let run = coord.store.atomically(|tx| {
        let mut run: FailoverRun = tx
            .get_json(Namespace::Failovers, id)?
            .ok_or_else(|| Error::NotFound(format!("no failover {id}")))?;
        if matches!(
            run.status,
            FailoverStatus::Completed | FailoverStatus::Aborted
        ) {
            return Err(Error::Conflict(format!(
                "failover {id} is {}: only a running or FAILED failover is aborted",
                run.status
            )));
        }
        run.status = FailoverStatus::Aborted;
        run.completed_at = Some(now);
        run.awaiting_confirmation.clear();
        run.aborted = Some(FailoverAbort {
            by: by.to_string(),
            at: now,
            promoted: promoted(&run),
            message: abort_message(&run, by),
        });
        tx.put_json(Namespace::Failovers, id, &run)?;
        Ok(run)
    })?;
    let abort = run.aborted.clone().unwrap_or(FailoverAbort {
        by: by.to_string(),
        at: now,
        promoted: false,
        message: String::new(),
    });
    warn!(failover_id = %id, by, promoted = abort.promoted, "failover aborted");
    operator_no_longer_needed(coord.store.as_ref(), id);
    if let Err(e) = alerts::resolve_cleared(coord.store.as_ref(), FAILOVER_FAILED, id) {
        warn!(error = %e, "resolve the failover's FAILOVER_FAILED alert");
    }
    Ok(FailoverAborted {
        failover_id: id.to_string(),
        status: FailoverStatus::Aborted,
        promoted: abort.promoted,
        message: abort.message,
    })
}

/// Resumes every failover a previous coordinator left running.
pub fn resume_all(coord: &Arc<Coordinator>) -> Result<usize, StoreError> {
    let runs = running(coord.store.as_ref())?;
    for r in &runs {
        warn!(failover_id = %r.failover_id, step = ?r.current_step, "resuming an interrupted failover");
        spawn(coord.clone(), r.failover_id.clone());
    }
    Ok(runs.len())
}

fn spawn(coord: Arc<Coordinator>, id: String) {
    let span = tracing::info_span!("failover", failover_id = %id);
    tokio::spawn(async move { drive(&coord, &id).await }.instrument(span));
}

/// What one step did.
enum Outcome {
    Done(String),
    Skipped(String),
    Failed(String),
    /// An operator aborted the run while the step waited.
    Aborted,
}

/// Drives a run to its end. Every store operation is retried ([`STORE_RETRY`]); when one
/// still fails, the run ends FAILED with the error — recorded at any cost, since a run
/// left IN_PROGRESS with no driver would hold the plan (and every later failover).
async fn drive(coord: &Arc<Coordinator>, id: &str) {
    let store = coord.store.as_ref();
    // Without the run nothing can be recorded: read until the store answers.
    let loaded = until_stored("read the failover", RECORD_FAILED_MAX_PAUSE, || {
        let Some(run) = get(store, id)? else {
            return Ok(None);
        };
        let plan = plans::get(store, &run.plan_id)?;
        Ok(Some((run, plan)))
    })
    .await;
    let (mut run, plan) = match loaded {
        Ok(Some(loaded)) => loaded,
        Ok(None) => {
            warn!("no such failover to drive");
            return;
        }
        Err(e) => {
            error!(error = %e, "cannot read the failover; it is not driven");
            return;
        }
    };
    let Some(plan) = plan else {
        run.status = FailoverStatus::Failed;
        run.error = Some(format!("plan {} was deleted", run.plan_id));
        run.completed_at = Some(Utc::now());
        let _ = until_stored(
            "record the failover FAILED",
            RECORD_FAILED_MAX_PAUSE,
            || save(store, &mut run, Write::Record),
        )
        .await;
        return;
    };
    if let Err(e) = steps(coord, &plan, &mut run).await {
        store_failed(coord, &plan, &mut run, e).await;
    }
}

/// The steps from where the run stands; `Err` when the store failed past its retries.
async fn steps(
    coord: &Arc<Coordinator>,
    plan: &DrPlan,
    run: &mut FailoverRun,
) -> Result<(), StoreError> {
    let store = coord.store.as_ref();
    let id = run.failover_id.clone();
    run.status = FailoverStatus::InProgress;
    if persist(store, run, Write::Advance, "start the failover").await? == Saved::Aborted {
        info!("failover aborted before it started");
        return Ok(());
    }
    for i in 0..run.steps.len() {
        if matches!(run.steps[i].status, StepStatus::Done | StepStatus::Skipped) {
            continue;
        }
        run.current_step = Some(run.steps[i].number);
        run.steps[i].status = StepStatus::Running;
        run.steps[i].started_at.get_or_insert_with(Utc::now);
        if persist(store, run, Write::Advance, "start a step").await? == Saved::Aborted {
            info!(step = i + 1, "failover aborted: step not started");
            return Ok(());
        }
        info!(step = run.steps[i].number, name = %run.steps[i].name, "failover step");
        let outcome = match i {
            0 => notify_start(coord, plan, run),
            1 => {
                let outcome = match run.kind {
                    FailoverKind::Failover => prepare(coord, plan, run).await,
                    FailoverKind::Switchover => switchover::prepare(coord, run).await,
                };
                operator_no_longer_needed(store, &id);
                outcome?
            }
            2 => promote(coord, run).await,
            3 => update_dns(coord, run).await,
            4 => validate(coord, run).await,
            5 => match (monitor(coord, run).await, run.kind) {
                (Outcome::Done(m), FailoverKind::Switchover) => {
                    switchover::rejoin_old_primary(coord, run, m).await
                }
                (outcome, _) => outcome,
            },
            _ => confirm(coord, plan, run).await?,
        };
        let step = &mut run.steps[i];
        step.ended_at = Some(Utc::now());
        match outcome {
            Outcome::Done(m) => {
                step.status = StepStatus::Done;
                step.message = m;
                if i == PROMOTE_STEP {
                    // From the promotion on, the new primary is the truth: the plan (and
                    // its health checks) follow it even if a later step fails or the run
                    // was aborted meanwhile.
                    follow_promotion(
                        store,
                        &plan.id,
                        &run.target_region,
                        run.from_region.as_ref(),
                    )
                    .await?;
                }
            }
            Outcome::Skipped(m) => {
                step.status = StepStatus::Skipped;
                step.message = m;
            }
            Outcome::Aborted => {
                step.status = StepStatus::Skipped;
                step.message = format!("not finished: the failover was aborted; {}", step.message);
            }
            Outcome::Failed(m) => {
                step.status = StepStatus::Failed;
                step.message = m.clone();
                warn!(step = step.number, error = %m, "failover failed");
                run.status = FailoverStatus::Failed;
                run.error = Some(format!("step {} ({}): {m}", step.number, step.name));
                run.completed_at = Some(Utc::now());
                if persist(store, run, Write::Record, "record the failed step").await?
                    == Saved::Aborted
                {
                    info!("failover aborted during a step that then failed");
                    return Ok(());
                }
                failed(coord, plan, run);
                return Ok(());
            }
        }
        if persist(store, run, Write::Record, "record the step").await? == Saved::Aborted {
            info!(step = i + 1, "failover aborted: stopped after the step");
            return Ok(());
        }
    }
    run.status = FailoverStatus::Completed;
    run.completed_at = Some(Utc::now());
    if persist(store, run, Write::Advance, "complete the failover").await? == Saved::Aborted {
        info!("failover aborted after its last step");
        return Ok(());
    }
    // A retried run that completes clears the alert its failure raised.
    if let Err(e) = alerts::resolve_cleared(store, FAILOVER_FAILED, &id) {
        warn!(error = %e, "resolve the failover's FAILOVER_FAILED alert");
    }
    info!("failover completed");
    Ok(())
}

/// How the driver retries a store operation: `attempts` tries in all, pausing `first`
/// after the first and doubling the pause up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub attempts: u32,
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The pause after try `n` (1-based).
    pub fn pause(&self, n: u32) -> Duration {
        let doubled = 2u32
            .checked_pow(n.saturating_sub(1))
            .and_then(|f| self.first.checked_mul(f))
            .unwrap_or(self.max);
        doubled.min(self.max)
    }

    /// How long all the pauses take together.
    pub fn total(&self) -> Duration {
        (1..self.attempts).map(|n| self.pause(n)).sum()
    }
}

/// Each store operation inside a failover: 6 tries, 1, 2, 4, 8 and 16 s apart (31 s):
/// a store that fails for longer ends the run FAILED.
pub const STORE_RETRY: Backoff = Backoff {
    attempts: 6,
    first: Duration::from_secs(1),
    max: Duration::from_secs(16),
};

/// Recording a run FAILED is tried until it works; its pause stops growing here.
const RECORD_FAILED_MAX_PAUSE: Duration = Duration::from_secs(30);

/// `op`, tried as `backoff` says while it fails with an error that may pass.
async fn retried<T>(
    what: &str,
    backoff: Backoff,
    mut op: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut n = 1;
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) if e.is_permanent() || n >= backoff.attempts => {
                error!(error = %e, tries = n, what, "failover store operation failed; giving up");
                return Err(e);
            }
            Err(e) => {
                let pause = backoff.pause(n);
                warn!(error = %e, tries = n, retry_in_ms = pause.as_millis() as u64, what, "failover store operation failed; retrying");
                tokio::time::sleep(pause).await;
                n += 1;
            }
        }
    }
}

/// `op`, tried until it works (or fails for good), the pause doubling up to `max`.
async fn until_stored<T>(
    what: &str,
    max: Duration,
    op: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let forever = Backoff {
        attempts: u32::MAX,
        first: Duration::from_secs(1).min(max),
        max,
    };
    retried(what, forever, op).await
}

/// The store failed past its retries: the run ends FAILED with the error, recorded
/// whatever it takes (until the store works again), then the alert is raised.
async fn store_failed(
    coord: &Arc<Coordinator>,
    plan: &DrPlan,
    run: &mut FailoverRun,
    e: StoreError,
) {
    let store = coord.store.as_ref();
    let now = Utc::now();
    let why = format!(
        "the coordinator's state store failed {} times over {} s: {e}",
        STORE_RETRY.attempts,
        STORE_RETRY.total().as_secs()
    );
    error!(error = %e, "{why}; the failover ends FAILED");
    if run.status != FailoverStatus::Failed {
        let at = run
            .current_step
            .and_then(|n| run.steps.iter_mut().find(|s| s.number == n));
        let label = match at {
            Some(step) => {
                if step.status == StepStatus::Running {
                    step.status = StepStatus::Failed;
                    step.ended_at = Some(now);
                    step.message = why.clone();
                }
                format!("step {} ({})", step.number, step.name)
            }
            None => "before the first step".to_string(),
        };
        run.status = FailoverStatus::Failed;
        run.error = Some(format!("{label}: {why}"));
        run.completed_at = Some(now);
    }
    match until_stored(
        "record the failover FAILED",
        RECORD_FAILED_MAX_PAUSE,
        || save(store, run, Write::Record),
    )
    .await
    {
        Ok(Saved::Aborted) => return,
        Ok(Saved::Saved) => {}
        Err(e) => {
            error!(error = %e, "cannot record the failover FAILED");
            return;
        }
    }
    if promoted(run) {
        let followed = follow_promotion(
            store,
            &plan.id,
            &run.target_region,
            run.from_region.as_ref(),
        )
        .await;
        if let Err(e) = followed {
            error!(error = %e, "the plan's active region is not the promoted server's");
        }
    }
    failed(coord, plan, run);
}

/// A run that ended FAILED: the CRITICAL alert (saying whether it promoted) and the
/// plan's channels.
fn failed(coord: &Arc<Coordinator>, plan: &DrPlan, run: &FailoverRun) {
    let id = &run.failover_id;
    let error = run.error.clone().unwrap_or_default();
    let message = if promoted(run) {
        format!(
            "Failover {id} of plan {} FAILED after promoting the server in {}, which \
             is the primary now (the plan watches it): {error}. Finish what the \
             failed step left undone by hand.",
            plan.id, run.target_region
        )
    } else {
        format!(
            "Failover {id} of plan {} to {} FAILED before any promotion; the \
             primary is where it was: {error}",
            plan.id, run.target_region
        )
    };
    alerts::raise_logged(
        coord.store.as_ref(),
        Severity::Critical,
        FAILOVER_FAILED,
        id,
        Some(run.target_region.clone()),
        message,
    );
    let event = Event {
        plan_id: Some(plan.id.clone()),
        ..Event::new(
            "failover.failed",
            Severity::Critical,
            format!("Failover of {} to {} FAILED", plan.id, run.target_region),
            error,
        )
    };
    Notifier::spawn(coord, &plan.notification_channels, event);
}

fn notify_start(coord: &Arc<Coordinator>, plan: &DrPlan, run: &FailoverRun) -> Outcome {
    if plan.notification_channels.is_empty() {
        return Outcome::Skipped("the plan names no notification channel".into());
    }
    let event = Event {
        plan_id: Some(plan.id.clone()),
        ..Event::new(
            "failover.initiated",
            Severity::Critical,
            format!("Failover of {} to {} initiated", plan.id, run.target_region),
            format!(
                "Failover {} asked for by {}: the database moves to {}.",
                run.failover_id, run.requested_by, run.target_region
            ),
        )
    };
    Notifier::spawn(coord, &plan.notification_channels, event);
    Outcome::Done(format!(
        "telling {} (in the background)",
        plan.notification_channels.join(", ")
    ))
}

/// Step 2: the target's agent is up next to a standby whose lag is within the RPO; the
/// epoch rises (stored first); every other server that is, or may be, writable is fenced
/// — by its agent when that agent is heard from, otherwise by waiting until its lease
/// has surely run out (its agent then fenced it by itself).
async fn prepare(
    coord: &Arc<Coordinator>,
    plan: &DrPlan,
    run: &mut FailoverRun,
) -> Result<Outcome, StoreError> {
    let timing = coord.timing();
    let interval = coord.config.heartbeat_interval;
    let lease = timing.fence_wait();
    let deadline = tokio::time::Instant::now()
        + (interval * (4 * coord.config.down_after)).max(lease * 2)
        + Duration::from_secs(10);
    // Reports count only when fresh: a restarted coordinator knows no roles yet, and an
    // agent not heard from lately may sit next to a writable primary.
    let mut told: Option<Vec<String>> = None;
    let (statuses, target, waited_out) = loop {
        // What operators confirmed meanwhile (`confirm-fenced`), or an abort.
        let stored = retried("read the failover", STORE_RETRY, || {
            get(coord.store.as_ref(), &run.failover_id)
        })
        .await?;
        if let Some(stored) = stored {
            if stored.status == FailoverStatus::Aborted {
                run.awaiting_confirmation.clear();
                return Ok(Outcome::Aborted);
            }
            run.fenced_by_operator = stored.fenced_by_operator;
        }
        let confirmed: Vec<AgentId> = run
            .fenced_by_operator
            .iter()
            .map(|c| c.agent_id.clone())
            .collect();
        let word = OperatorWord {
            confirmed: &confirmed,
            allow_data_loss: run.allow_data_loss,
        };
        let statuses = coord.agent_statuses();
        let readiness = {
            let now = std::time::Instant::now();
            let registry = coord.registry.lock();
            rules::failover::readiness(
                &statuses,
                &run.target_region,
                |old| rules::lease::old_primary(&registry, old, now, &timing),
                &word,
                &timing,
            )
        };
        let (no_target, pending, awaiting) = match readiness {
            Readiness::Ready { target, waited_out } => break (statuses, target, waited_out),
            Readiness::Waiting {
                no_target,
                pending,
                awaiting_operator,
            } => (no_target, pending, awaiting_operator),
        };
        // Waiting on an operator: the step's message says exactly what to do. Written
        // when what it waits on changes (its reasons without their millisecond counts),
        // not every round.
        let shape: Vec<String> = pending
            .iter()
            .map(|p| p.chars().filter(|c| !c.is_ascii_digit()).collect())
            .collect();
        if told.as_ref() != Some(&shape) && (!awaiting.is_empty() || told.is_some()) {
            run.awaiting_confirmation = awaiting.clone();
            let message = if awaiting.is_empty() {
                operator_no_longer_needed(coord.store.as_ref(), &run.failover_id);
                format!("waiting: {}", pending.join("; "))
            } else {
                let m = operator_wanted(&run.failover_id, &awaiting, &pending);
                warn!(waiting_on = ?awaiting, "{m}");
                // Whoever watches alerts (an automatic failover at night) is told.
                alerts::raise_logged(
                    coord.store.as_ref(),
                    Severity::Critical,
                    FAILOVER_NEEDS_OPERATOR,
                    &run.failover_id,
                    Some(run.target_region.clone()),
                    format!("Failover {} of plan {}: {m}", run.failover_id, plan.id),
                );
                m
            };
            if let Some(step) = run.steps.get_mut(PREPARE_STEP) {
                step.message = message;
            }
            if retried("record what step 2 waits for", STORE_RETRY, || {
                save(coord.store.as_ref(), run, Write::Record)
            })
            .await?
                == Saved::Aborted
            {
                run.awaiting_confirmation.clear();
                return Ok(Outcome::Aborted);
            }
            told = Some(shape);
        }
        // Only what waiting can clear times out; a server only an operator can clear
        // keeps the failover waiting for them (or for an abort).
        if tokio::time::Instant::now() > deadline && (awaiting.is_empty() || no_target) {
            let mut why = Vec::new();
            if no_target {
                why.push(format!(
                    "no agent with PostgreSQL is up in {}",
                    run.target_region
                ));
            }
            if !pending.is_empty() {
                why.push(format!(
                    "not promoting while another server may still be writable: {}",
                    pending.join("; ")
                ));
            }
            run.awaiting_confirmation.clear();
            return Ok(Outcome::Failed(why.join("; ")));
        }
        tokio::time::sleep((interval / 2).min(Duration::from_millis(100))).await;
    };
    run.awaiting_confirmation.clear();
    let target = &*target;
    // Step 2 always runs before anything is promoted, even when resumed.
    if target.role != Some(PgRole::Standby) {
        return Ok(Outcome::Failed(format!(
            "the server next to {} is {}, not a standby",
            target.agent_id,
            target
                .role
                .map_or_else(|| "unknown".to_string(), |r| r.to_string())
        )));
    }
    match rules::failover::rpo(target, plan.rpo_seconds, run.allow_data_loss) {
        Rpo::Within => {}
        Rpo::Unmeasurable { behind_bytes } => {
            return Ok(Outcome::Failed(format!(
                "the replica in {} is {behind_bytes} bytes behind and its lag in time cannot be measured \
                 (it has replayed no transaction since it started), so it cannot be shown within \
                 the plan's RPO of {}; send \"allowDataLoss\": true to fail over anyway",
                run.target_region, plan.rpo
            )))
        }
        Rpo::Exceeded { lag_seconds } => {
            return Ok(Outcome::Failed(format!(
                "the replica in {} is {lag_seconds:.0} s behind, more than the plan's RPO of {} ({} s); \
                 send \"allowDataLoss\": true to fail over anyway",
                run.target_region, plan.rpo, plan.rpo_seconds
            )))
        }
    }
    run.target_agent = Some(target.agent_id.clone());
    let fencing =
        rules::failover::fencing(&statuses, &target.agent_id, &run.target_region, &timing);
    if let Some(old) = fencing.from {
        run.from_agent = Some(old.agent_id.clone());
        run.from_region = Some(old.region.clone());
    }
    // The epoch: one above the highest ever stored, chosen and stored with the record
    // in one transaction before it is used — so epochs rise strictly, each belongs to
    // one failover, and a resumed failover keeps its own.
    let Some(epoch) = choose_epoch(coord, run).await? else {
        return Ok(Outcome::Aborted);
    };
    let mut fenced = Vec::new();
    for a in &fencing.by_agent {
        if let Err(why) = fence(coord, run, &a.agent_id).await {
            return Ok(Outcome::Failed(format!(
                "the server next to {} ({}) is not fenced: {why}; promoting now could leave \
                 two writable primaries",
                a.agent_id, a.region
            )));
        }
        fenced.push(a.agent_id.to_string());
    }
    let mut done = Vec::new();
    if !fenced.is_empty() {
        done.push(format!("fenced by their agents: {}", fenced.join(", ")));
    }
    done.extend(waited_out);
    if done.is_empty() {
        done.push("no other server to fence".into());
    }
    Ok(Outcome::Done(format!(
        "{} ready (lag {}); {}; epoch {epoch}",
        target.agent_id,
        lag_text(target.replication_lag_seconds),
        done.join("; ")
    )))
}

/// The run's epoch: one above the highest ever stored, chosen and stored with the
/// record in one transaction before it is used — so epochs rise strictly, each belongs
/// to one failover, and a resumed failover keeps its own. The coordinator's own epoch
/// is raised to it. `None`: the run was aborted meanwhile (checked in the same
/// transaction), and no epoch was taken.
async fn choose_epoch(
    coord: &Arc<Coordinator>,
    run: &mut FailoverRun,
) -> Result<Option<Epoch>, StoreError> {
    let epoch = match run.epoch {
        Some(e) => e,
        None => {
            // `None`: aborted meanwhile (checked in the same transaction); no epoch taken.
            let chosen = retried("choose the epoch", STORE_RETRY, || {
                coord.store.atomically(|tx| {
                    let mut rec = run.clone();
                    if let Some(stored) =
                        tx.get_json::<FailoverRun>(Namespace::Failovers, &rec.failover_id)?
                    {
                        if stored.status == FailoverStatus::Aborted {
                            return Ok(None);
                        }
                        rec.fenced_by_operator = stored.fenced_by_operator;
                    }
                    let highest = tx
                        .get_json::<u64>(Namespace::Meta, EPOCH_KEY)?
                        .unwrap_or(0)
                        .max(coord.epoch().0);
                    let e = Epoch(highest + 1);
                    rec.epoch = Some(e);
                    tx.put_json(Namespace::Meta, EPOCH_KEY, &e.0)?;
                    tx.put_json(Namespace::Failovers, &rec.failover_id, &rec)?;
                    Ok::<_, StoreError>(Some(e))
                })
            })
            .await?;
            let Some(e) = chosen else {
                return Ok(None);
            };
            run.epoch = Some(e);
            e
        }
    };
    retried("raise the epoch", STORE_RETRY, || coord.raise_epoch(epoch)).await?;
    Ok(Some(epoch))
}

/// Step 2's message while it waits for an operator: what holds it, and exactly what to
/// do about it.
fn operator_wanted(id: &str, awaiting: &[AgentId], pending: &[String]) -> String {
    let names = awaiting
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "waiting for an operator: {}. Stop PostgreSQL on {names} by hand (pg_ctl stop, and \
         leave standby.signal in its data directory), then run `drmesh \
         failover-confirm-fenced {id}` or POST \
         /v1/backup-recovery/disaster-recovery/failover/{id}/confirm-fenced; or give up with \
         `drmesh failover-abort {id}`. (A failover started with \"allowDataLoss\": true \
         passes a server silent past its lease, losing what it still takes.)",
        pending.join("; ")
    )
}

fn lag_text(lag: Option<f64>) -> String {
    lag.map_or_else(|| "unknown".into(), |l| format!("{l:.1} s"))
}

/// Sends a command on behalf of `run` (its id and epoch go with it), first waiting
/// (bounded) for the agent to be connected: a coordinator that resumes a failover right
/// after a restart is ahead of the agents' reconnects.
async fn send(
    coord: &Arc<Coordinator>,
    run: &FailoverRun,
    agent: &AgentId,
    kind: CommandKind,
    timeout: Duration,
) -> Result<drmesh_protocol::CommandResult, transport::TransportError> {
    let deadline = tokio::time::Instant::now()
        + coord.config.heartbeat_interval * (4 * coord.config.down_after)
        + Duration::from_secs(10);
    // Step 2 stores the epoch before any command goes out.
    let epoch = run.epoch.unwrap_or_else(|| coord.epoch());
    loop {
        let sent = transport::send_for_failover(
            coord,
            agent,
            kind.clone(),
            timeout,
            &run.failover_id,
            epoch,
        );
        match sent.await {
            Err(transport::TransportError::NotConnected(_))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

async fn fence(coord: &Arc<Coordinator>, run: &FailoverRun, agent: &AgentId) -> Result<(), String> {
    match send(
        coord,
        run,
        agent,
        CommandKind::Fence,
        Duration::from_secs(90),
    )
    .await
    {
        Ok(r) if r.ok => Ok(()),
        Ok(r) => Err(r.message),
        Err(e) => Err(e.to_string()),
    }
}

async fn promote(coord: &Arc<Coordinator>, run: &mut FailoverRun) -> Outcome {
    let Some(agent) = run.target_agent.clone() else {
        return Outcome::Failed("no target agent was chosen".into());
    };
    match send(
        coord,
        run,
        &agent,
        CommandKind::Promote,
        Duration::from_secs(120),
    )
    .await
    {
        Ok(r) if r.ok => {
            let outcome: Option<PromoteOutcome> = r.outcome_as().ok();
            run.timeline = outcome.as_ref().map(|o| o.timeline);
            match outcome {
                Some(o) => Outcome::Done(format!(
                    "{} promoted in {} ms: timeline {}, LSN {}{}",
                    agent,
                    o.duration_ms,
                    o.timeline,
                    o.lsn,
                    if o.was_standby {
                        ""
                    } else {
                        " (it already accepted writes)"
                    }
                )),
                None => Outcome::Done(format!("{agent} promoted")),
            }
        }
        Ok(r) => Outcome::Failed(format!("{agent}: {}", r.message)),
        Err(e) => Outcome::Failed(format!("{agent}: {e}")),
    }
}

/// Where clients reach an agent's PostgreSQL, as it advertised.
fn postgres_address(coord: &Coordinator, agent: &AgentId) -> Option<std::net::SocketAddr> {
    coord.registry.lock().get(agent)?.addresses.postgres
}

/// Step 4: the database's DNS name moves from the old primary's address to the new
/// one's — on the condition that it still holds the old one, so a coordinator acting on
/// stale knowledge cannot overwrite a newer answer — and every authoritative server is
/// asked until each answers the new address.
async fn update_dns(coord: &Arc<Coordinator>, run: &FailoverRun) -> Outcome {
    let Some(dns) = coord.dns.get().cloned() else {
        return Outcome::Skipped(
            "no DNS provider is configured ([dns]); clients reach the new primary by its address"
                .into(),
        );
    };
    let Some(target) = run.target_agent.as_ref() else {
        return Outcome::Failed("no target agent was chosen".into());
    };
    let Some(new) = postgres_address(coord, target) else {
        return Outcome::Failed(format!(
            "{target} advertises no PostgreSQL address (postgres.advertise in its config); \
             {} was not changed",
            dns.record()
        ));
    };
    // The answer being replaced: the old primary's address, or else what the name
    // answers now (first authoritative server, or the provider's API).
    let old = match run
        .from_agent
        .as_ref()
        .and_then(|a| postgres_address(coord, a))
    {
        Some(a) => Some(a.ip()),
        None => current_answers(dns.as_ref())
            .await
            .into_iter()
            .next()
            .and_then(|(_, a)| a.ok())
            .and_then(|a| (a.len() == 1).then(|| a[0])),
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        match dns.update(old, new.ip()).await {
            Ok(()) => break,
            Err(e) if !e.is_permanent() && attempt < 3 => {
                warn!(error = %e, attempt, "DNS update failed; retrying");
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
            }
            Err(e) => return Outcome::Failed(format!("{}: {e}", dns.describe())),
        }
    }
    match crate::dns::confirm(dns.as_ref(), new.ip(), Duration::from_secs(15)).await {
        Ok(answers) => Outcome::Done(format!(
            "{} now {} (TTL {} s, {}); confirmed: {}",
            dns.record(),
            new.ip(),
            dns.ttl(),
            dns.describe(),
            answers.join(", ")
        )),
        Err(e) => Outcome::Failed(format!("updated, but not confirmed: {e}")),
    }
}

/// What the name answers now: at each authoritative server, or, for a provider with
/// none listed (Route 53 without `authoritative`), through its API.
async fn current_answers(
    dns: &dyn crate::dns::DnsProvider,
) -> Vec<(String, Result<Vec<std::net::IpAddr>, crate::dns::DnsError>)> {
    let servers = dns.authoritative();
    if servers.is_empty() {
        return match dns.api_answer().await {
            Some(answer) => vec![(dns.describe(), answer)],
            None => Vec::new(),
        };
    }
    let mut out = Vec::new();
    for server in servers {
        let answer = crate::dns::query(server, dns.record(), Duration::from_secs(2)).await;
        out.push((server.to_string(), answer));
    }
    out
}

/// Step 5: the name resolves to the new primary at every authoritative server, and the
/// server at that answer is out of recovery and takes a write — connected to as the
/// application would. Without a DNS name, the new primary's advertised address is
/// checked; without that, its agent checks it.
async fn validate(coord: &Arc<Coordinator>, run: &FailoverRun) -> Outcome {
    let Some(agent) = run.target_agent.clone() else {
        return Outcome::Failed("no target agent".into());
    };
    let timeout = Duration::from_secs(10);
    let advertised = postgres_address(coord, &agent);
    if let Some(addr) = advertised {
        let mut targets = Vec::new();
        if let Some(dns) = coord.dns.get() {
            for (source, answer) in current_answers(dns.as_ref()).await {
                match answer {
                    Ok(ips) if ips.len() == 1 => {
                        targets.push((format!("{} at {source}", dns.record()), ips[0]))
                    }
                    Ok(ips) => {
                        return Outcome::Failed(format!(
                            "{source} answers {:?} for {}, not one address",
                            ips,
                            dns.record()
                        ))
                    }
                    Err(e) => return Outcome::Failed(e.to_string()),
                }
            }
            if targets.is_empty() {
                return Outcome::Failed(format!(
                    "{} gives no way to resolve {}",
                    dns.describe(),
                    dns.record()
                ));
            }
        } else {
            targets.push((format!("{agent}'s advertised address"), addr.ip()));
        }
        let mut checked = Vec::new();
        for (via, ip) in targets {
            let at = std::net::SocketAddr::new(ip, addr.port());
            if let Err(e) = crate::ops::probe::check_writable(coord, at, timeout).await {
                return Outcome::Failed(format!("{via} → {at}: {e}"));
            }
            checked.push(format!("{via} → {at}"));
        }
        return Outcome::Done(format!(
            "out of recovery and took a write: {}",
            checked.join(", ")
        ));
    }
    match send(
        coord,
        run,
        &agent,
        CommandKind::Promote,
        Duration::from_secs(60),
    )
    .await
    {
        Ok(r) if r.ok => Outcome::Done(format!(
            "the server next to {agent} is out of recovery and took a write (checked by its agent)"
        )),
        Ok(r) => Outcome::Failed(format!("{agent}: {}", r.message)),
        Err(e) => Outcome::Failed(format!("{agent}: {e}")),
    }
}

/// Step 6: the remaining standbys are re-pointed at the new primary, and the target's
/// heartbeats report a healthy primary for a few intervals in a row.
async fn monitor(coord: &Arc<Coordinator>, run: &FailoverRun) -> Outcome {
    let Some(agent) = run.target_agent.clone() else {
        return Outcome::Failed("no target agent".into());
    };
    let repointed = repoint_standbys(coord, run, &agent).await;
    let interval = coord.config.heartbeat_interval;
    let deadline = tokio::time::Instant::now() + interval * 20 + Duration::from_secs(10);
    let mut good = 0;
    while good < MONITOR_INTERVALS {
        if tokio::time::Instant::now() > deadline {
            return Outcome::Failed(format!(
                "{agent}'s heartbeats did not report a healthy primary for {MONITOR_INTERVALS} intervals"
            ));
        }
        tokio::time::sleep(interval).await;
        let healthy = coord.agent_statuses().iter().any(|a| {
            a.agent_id == agent && a.state == AgentState::Up && a.role == Some(PgRole::Primary)
        });
        good = if healthy { good + 1 } else { 0 };
    }
    Outcome::Done(format!(
        "{repointed}; {agent} reported a healthy primary for {MONITOR_INTERVALS} heartbeat intervals"
    ))
}

/// Points every other standby that is heard from at the new primary (its mesh address),
/// all at once. One that cannot be re-pointed does not fail the failover — the new
/// primary serves — but raises a HIGH alert naming it.
async fn repoint_standbys(coord: &Arc<Coordinator>, run: &FailoverRun, target: &AgentId) -> String {
    let address = {
        let registry = coord.registry.lock();
        registry.get(target).and_then(|e| e.replication_address())
    };
    let Some(address) = address else {
        return format!("standbys not re-pointed: {target} advertises no PostgreSQL address");
    };
    let standbys: Vec<AgentId> = coord
        .agent_statuses()
        .into_iter()
        .filter(|a| &a.agent_id != target && a.role == Some(PgRole::Standby))
        .filter(|a| rules::health::fresh_status(a, &coord.timing()))
        .map(|a| a.agent_id)
        .collect();
    if standbys.is_empty() {
        return "no other standby to re-point".into();
    }
    let results = futures::future::join_all(standbys.iter().map(|s| async move {
        let kind = CommandKind::Repoint {
            primary_host: address.ip().to_string(),
            primary_port: address.port(),
        };
        let r = match send(coord, run, s, kind, Duration::from_secs(90)).await {
            Ok(r) if r.ok => Ok(()),
            Ok(r) => Err(r.message),
            Err(e) => Err(e.to_string()),
        };
        (s.clone(), r)
    }))
    .await;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (s, r) in results {
        match r {
            Ok(()) => done.push(s.to_string()),
            Err(why) => {
                warn!(agent_id = %s, error = %why, "standby not re-pointed");
                let _ = crate::alerts::raise(
                    coord.store.as_ref(),
                    Severity::High,
                    STANDBY_NOT_REPOINTED,
                    s.as_str(),
                    None,
                    format!(
                        "Failover {}: the standby next to {s} still follows the old primary: {why}",
                        run.failover_id
                    ),
                );
                failed.push(format!("{s} ({why})"));
            }
        }
    }
    let mut parts = Vec::new();
    if !done.is_empty() {
        parts.push(format!("re-pointed at {address}: {}", done.join(", ")));
    }
    if !failed.is_empty() {
        parts.push(format!("NOT re-pointed: {}", failed.join(", ")));
    }
    parts.join("; ")
}

/// Step 7: the plan's active region moves; the channels are told.
async fn confirm(
    coord: &Arc<Coordinator>,
    plan: &DrPlan,
    run: &FailoverRun,
) -> Result<Outcome, StoreError> {
    // Step 3 moved it already; repeated (a no-op then) for a run whose step 3 was
    // recorded by a coordinator that did not.
    follow_promotion(
        coord.store.as_ref(),
        &plan.id,
        &run.target_region,
        run.from_region.as_ref(),
    )
    .await?;
    let event = Event {
        plan_id: Some(plan.id.clone()),
        ..Event::new(
            "failover.completed",
            Severity::High,
            format!("Failover of {} to {} completed", plan.id, run.target_region),
            format!(
                "The primary now runs in {} (timeline {}), epoch {}.",
                run.target_region,
                run.timeline.map_or_else(|| "?".into(), |t| t.to_string()),
                run.epoch.map_or_else(|| "?".into(), |e| e.to_string())
            ),
        )
    };
    Notifier::spawn(coord, &plan.notification_channels, event);
    let archiving = confirm_archiving(coord, plan, run).await;
    Ok(Outcome::Done(format!(
        "plan {} now runs in {}; {archiving}",
        plan.id, run.target_region
    )))
}

/// Alert kind raised when a failover's new primary did not show its WAL reaching the
/// repository (source: the plan): backups and point-in-time recovery there would fail.
pub const ARCHIVING_NOT_CONFIRMED: &str = "ARCHIVING_NOT_CONFIRMED";

/// How long step 7 waits for the new primary's agent to confirm its archiving.
const ARCHIVING_TIMEOUT: Duration = Duration::from_secs(120);

/// Step 7's check that the new primary archives: its agent switches WAL segment and
/// waits until the finished one is in the repository (its `archive_timeout` at most).
/// The failover is done either way; a failure raises a HIGH `ARCHIVING_NOT_CONFIRMED`
/// alert, which a later confirmation for the plan resolves. A clause for the message.
async fn confirm_archiving(coord: &Arc<Coordinator>, plan: &DrPlan, run: &FailoverRun) -> String {
    let Some(agent) = run.target_agent.clone() else {
        return "archiving not checked: no target agent was recorded".into();
    };
    let has_database = coord
        .agent_statuses()
        .iter()
        .any(|a| a.agent_id == agent && a.can_fence);
    if !has_database {
        return format!("archiving not checked: {agent} has no [database] section");
    }
    let store = coord.store.as_ref();
    let failed = |why: String| {
        alerts::raise_logged(
            store,
            Severity::High,
            ARCHIVING_NOT_CONFIRMED,
            &plan.id,
            Some(run.target_region.clone()),
            format!(
                "The new primary of plan {} ({agent}, {}) did not show its WAL reaching the \
                 repository: {why}. Backups and point-in-time recovery need it: check its \
                 archive_command and pg_stat_archiver.",
                plan.id, run.target_region
            ),
        );
        format!("archiving NOT confirmed: {why}")
    };
    match send(
        coord,
        run,
        &agent,
        CommandKind::ConfirmArchiving,
        ARCHIVING_TIMEOUT,
    )
    .await
    {
        Ok(r) if r.ok => match r.outcome_as::<ArchivingOutcome>() {
            Ok(o) => {
                if let Err(e) = alerts::resolve_cleared(store, ARCHIVING_NOT_CONFIRMED, &plan.id) {
                    warn!(error = %e, "resolve ARCHIVING_NOT_CONFIRMED");
                }
                format!(
                    "archiving confirmed: {} in the repository {} ms after the switch",
                    o.segment, o.waited_ms
                )
            }
            Err(e) => failed(format!("{agent}'s answer could not be read: {e}")),
        },
        Ok(r) => failed(r.message),
        Err(e) => failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::store::{RedbStore, Txn};

    /// A store whose first `failing` writes fail as a full disk does.
    struct FlakyStore {
        inner: RedbStore,
        failing: AtomicU32,
        writes: AtomicU32,
    }

    impl FlakyStore {
        fn new(dir: &tempfile::TempDir, failing: u32) -> FlakyStore {
            FlakyStore {
                inner: RedbStore::open(&dir.path().join("s.redb")).expect("open"),
                failing: AtomicU32::new(failing),
                writes: AtomicU32::new(0),
            }
        }

        fn fail(&self) -> Result<(), StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            let left = self.failing.load(Ordering::SeqCst);
            if left > 0 {
                self.failing.store(left - 1, Ordering::SeqCst);
                let enospc = std::io::Error::from_raw_os_error(28);
                return Err(StoreError::Redb(Box::new(redb::Error::Io(enospc))));
            }
            Ok(())
        }
    }

    impl Store for FlakyStore {
        fn get(&self, ns: Namespace, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(ns, key)
        }
        fn put(&self, ns: Namespace, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.fail()?;
            self.inner.put(ns, key, value)
        }
        fn delete(&self, ns: Namespace, key: &str) -> Result<bool, StoreError> {
            self.fail()?;
            self.inner.delete(ns, key)
        }
        fn scan(&self, ns: Namespace, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
            self.inner.scan(ns, prefix)
        }
        fn transaction(
            &self,
            body: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
        ) -> Result<(), StoreError> {
            self.fail()?;
            self.inner.transaction(body)
        }
    }

    const QUICK: Backoff = Backoff {
        attempts: 6,
        first: Duration::from_millis(1),
        max: Duration::from_millis(4),
    };

    fn run(id: &str) -> FailoverRun {
        let now = Utc::now();
        FailoverRun {
            failover_id: id.into(),
            plan_id: "p".into(),
            status: FailoverStatus::InProgress,
            target_region: RegionId::new("us").expect("region"),
            target_agent: Some(AgentId::new("new").expect("id")),
            from_region: None,
            from_agent: None,
            epoch: None,
            allow_data_loss: false,
            requested_by: "test".into(),
            failover_start_time: now,
            estimated_completion_time: now,
            completed_at: None,
            timeline: None,
            current_step: Some(3),
            steps: STEPS
                .iter()
                .enumerate()
                .map(|(i, name)| FailoverStep {
                    number: i as u8 + 1,
                    name: (*name).to_string(),
                    status: if i < 2 {
                        StepStatus::Done
                    } else {
                        StepStatus::Pending
                    },
                    started_at: None,
                    ended_at: None,
                    message: String::new(),
                })
                .collect(),
            error: None,
            kind: FailoverKind::Failover,
            switchover: None,
            awaiting_confirmation: Vec::new(),
            fenced_by_operator: Vec::new(),
            aborted: None,
        }
    }

    #[test]
    fn the_store_retry_bound_is_six_tries_over_about_thirty_seconds() {
        assert_eq!(STORE_RETRY.attempts, 6);
        let pauses: Vec<u64> = (1..6).map(|n| STORE_RETRY.pause(n).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16]);
        assert_eq!(STORE_RETRY.total(), Duration::from_secs(31));
        // Never overflows, never exceeds its cap.
        assert_eq!(STORE_RETRY.pause(u32::MAX), STORE_RETRY.max);
    }

    #[tokio::test]
    async fn a_store_that_fails_fewer_times_than_the_bound_is_retried_until_the_write_lands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FlakyStore::new(&dir, 5);
        let mut r = run("fo_1");
        let saved = retried("record", QUICK, || save(&store, &mut r, Write::Record)).await;
        assert_eq!(saved.expect("stored on the sixth try"), Saved::Saved);
        assert_eq!(store.writes.load(Ordering::SeqCst), 6);
        assert_eq!(get(&store, "fo_1").expect("read"), Some(r));
    }

    #[tokio::test]
    async fn a_store_that_keeps_failing_gives_up_after_the_bound_and_failed_is_recorded_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FlakyStore::new(&dir, 10);
        let mut r = run("fo_1");
        let err = retried("record", QUICK, || save(&store, &mut r, Write::Record))
            .await
            .expect_err("six failures in a row");
        assert!(err.needs_reopen() && !err.is_permanent(), "{err}");
        assert_eq!(store.writes.load(Ordering::SeqCst), 6);
        assert_eq!(get(&store, "fo_1").expect("read"), None);
        // Recording FAILED does not give up: the four failures left pass.
        r.status = FailoverStatus::Failed;
        r.error = Some("state store failed".into());
        let saved = until_stored("record FAILED", Duration::from_millis(2), || {
            save(&store, &mut r, Write::Record)
        })
        .await;
        assert_eq!(saved.expect("recorded"), Saved::Saved);
        assert_eq!(store.writes.load(Ordering::SeqCst), 11);
        let stored = get(&store, "fo_1").expect("read").expect("the run");
        assert_eq!(stored.status, FailoverStatus::Failed);
    }

    #[tokio::test]
    async fn a_permanent_store_error_is_not_retried() {
        let mut tries = 0;
        let err = retried("encode", QUICK, || {
            tries += 1;
            Err::<(), _>(StoreError::Encode("bad".into()))
        })
        .await
        .expect_err("permanent");
        assert!(matches!(err, StoreError::Encode(_)));
        assert_eq!(tries, 1);
    }

    #[test]
    fn an_aborted_run_starts_no_step_but_records_the_one_in_flight() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("s.redb")).expect("open");
        let mut driver = run("fo_1");
        driver.steps[PROMOTE_STEP].status = StepStatus::Running;
        assert_eq!(
            save(&store, &mut driver, Write::Advance).expect("save"),
            Saved::Saved
        );
        // An operator aborts while step 3 runs, before it promoted; and confirms a fence.
        let mut stored = get(&store, "fo_1").expect("read").expect("run");
        stored.status = FailoverStatus::Aborted;
        stored.aborted = Some(FailoverAbort {
            by: "ops".into(),
            at: Utc::now(),
            promoted: false,
            message: abort_message(&stored, "ops"),
        });
        stored.fenced_by_operator.push(FenceConfirmation {
            agent_id: AgentId::new("old").expect("id"),
            by: "ops".into(),
            at: Utc::now(),
        });
        store
            .put_json(Namespace::Failovers, "fo_1", &stored)
            .expect("abort");
        // The promotion ends after the abort: recorded, the run stays ABORTED, and its
        // note now says the promoted server stays the primary.
        driver.steps[PROMOTE_STEP].status = StepStatus::Done;
        assert_eq!(
            save(&store, &mut driver, Write::Record).expect("save"),
            Saved::Aborted
        );
        let after = get(&store, "fo_1").expect("read").expect("run");
        assert_eq!(after.status, FailoverStatus::Aborted);
        assert_eq!(after.steps[PROMOTE_STEP].status, StepStatus::Done);
        assert_eq!(after.fenced_by_operator.len(), 1);
        let note = after.aborted.expect("abort note");
        assert!(note.promoted && note.message.contains("STAYS THE PRIMARY"));
        // The next step is not started: nothing is written.
        driver.steps[3].status = StepStatus::Running;
        assert_eq!(
            save(&store, &mut driver, Write::Advance).expect("save"),
            Saved::Aborted
        );
        let after = get(&store, "fo_1").expect("read").expect("run");
        assert_eq!(after.steps[3].status, StepStatus::Pending);
    }
}
