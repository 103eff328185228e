//! A planned switchover: the runbook's seven failover steps, with no data loss.
//!
//! Step 2 differs from a failover's: the old primary is heard from and stops cleanly
//! (`Demote`: `standby.signal`, then `pg_ctl stop -m fast`, whose shutdown sends every
//! connected standby the WAL up to the shutdown checkpoint), and the target replays past
//! that checkpoint (`CatchUp`) before step 3 promotes it. Whatever the old primary
//! acknowledged is at or before its shutdown checkpoint, so the promoted target holds
//! it. Step 6 also makes the old primary a standby of the new one (`Rejoin`: with a
//! clean stop and the target past its last record, `pg_rewind` has nothing to do).
//!
//! The old primary is stopped before anything else changes, and under the run's epoch,
//! like a fence: at no moment are two servers writable. A step 2 that fails leaves the
//! old primary stopped (fenced): retry the run once the target streams.

use std::sync::Arc;
use std::time::Duration;

use drmesh_protocol::api::{
    CatchUpOutcome, DemoteOutcome, FailoverAccepted, FailoverKind, FailoverRun, SwitchoverLsns,
    SwitchoverRequest,
};
use drmesh_protocol::CommandKind;
use tracing::info;

use super::{admit_and_spawn, choose_epoch, new_run, plan_for, send, Outcome};
use crate::error::Error;
use crate::ops::rejoin;
use crate::rules;
use crate::state::Coordinator;
use crate::store::{Namespace, StoreError, StoreExt};

/// How long the target may take to replay past the old primary's last record: writes
/// are stopped meanwhile.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// `POST …/disaster-recovery/switchover`: checks that there is a live primary to stop and
/// a live standby close behind it in `targetRegion` (409 saying why not), then admits
/// and records the run like a failover (one at a time per plan) and drives it.
pub fn start(
    coord: &Arc<Coordinator>,
    req: SwitchoverRequest,
    requested_by: String,
) -> Result<FailoverAccepted, Error> {
    let plan = plan_for(coord.store.as_ref(), &req.plan_id, &req.target_region)?;
    let statuses = coord.agent_statuses();
    rules::switchover::parties(&statuses, &req.target_region, None, &coord.timing())
        .map_err(Error::Conflict)?;
    let run = new_run(
        &plan,
        req.target_region,
        false,
        requested_by,
        FailoverKind::Switchover,
    );
    admit_and_spawn(coord, run)
}

/// Step 2 of a switchover: the parties, the epoch, the old primary stopped cleanly at
/// its final LSN, and the target replayed past it.
pub(super) async fn prepare(
    coord: &Arc<Coordinator>,
    run: &mut FailoverRun,
) -> Result<Outcome, StoreError> {
    let statuses = coord.agent_statuses();
    let (old, target) = match rules::switchover::parties(
        &statuses,
        &run.target_region,
        run.from_agent.as_ref(),
        &coord.timing(),
    ) {
        Ok(p) => (p.primary.clone(), p.target.clone()),
        Err(why) => return Ok(Outcome::Failed(why)),
    };
    run.target_agent = Some(target.agent_id.clone());
    run.from_agent = Some(old.agent_id.clone());
    run.from_region = Some(old.region.clone());
    let Some(epoch) = choose_epoch(coord, run).await? else {
        return Ok(Outcome::Aborted);
    };

    let demoted: DemoteOutcome = match ask(
        coord,
        run,
        &old.agent_id,
        CommandKind::Demote,
        Duration::from_secs(120),
    )
    .await
    {
        Ok(o) => o,
        Err(why) => {
            return Ok(Outcome::Failed(format!(
                "{} could not stop its server cleanly: {why}",
                old.agent_id
            )))
        }
    };
    info!(final_lsn = %demoted.final_lsn, timeline = demoted.timeline, "the old primary stopped cleanly");
    // Stored before the target is asked: a resumed run reports what the stop said.
    run.switchover = Some(SwitchoverLsns {
        final_lsn: demoted.final_lsn.clone(),
        final_timeline: demoted.timeline,
        target_replayed_lsn: None,
    });
    coord
        .store
        .as_ref()
        .put_json(Namespace::Failovers, &run.failover_id, &*run)?;

    let kind = CommandKind::CatchUp {
        lsn: demoted.final_lsn.clone(),
        timeout_ms: CATCH_UP_TIMEOUT.as_millis() as u64,
    };
    let caught_up: CatchUpOutcome = match ask(
        coord,
        run,
        &target.agent_id,
        kind,
        CATCH_UP_TIMEOUT + Duration::from_secs(30),
    )
    .await
    {
        Ok(o) => o,
        Err(why) => {
            return Ok(Outcome::Failed(stopped_but(
                &old.agent_id,
                &demoted,
                &format!("{} did not catch up: {why}", target.agent_id),
            )))
        }
    };
    if let Some(lsns) = run.switchover.as_mut() {
        lsns.target_replayed_lsn = Some(caught_up.replayed_lsn.clone());
    }
    Ok(Outcome::Done(format!(
        "{} stopped cleanly at {} (timeline {}); {} replayed past it ({}) in {} ms; epoch {epoch}",
        old.agent_id,
        demoted.final_lsn,
        demoted.timeline,
        target.agent_id,
        caught_up.replayed_lsn,
        caught_up.waited_ms,
    )))
}

/// Sends `kind` for `run` and takes out its typed outcome; the agent's error otherwise.
async fn ask<T>(
    coord: &Arc<Coordinator>,
    run: &FailoverRun,
    agent: &drmesh_protocol::AgentId,
    kind: CommandKind,
    timeout: Duration,
) -> Result<T, String>
where
    T: TryFrom<
        drmesh_protocol::outcome::CommandOutcome,
        Error = drmesh_protocol::outcome::WrongOutcome,
    >,
{
    match send(coord, run, agent, kind, timeout).await {
        Ok(r) if r.ok => r
            .outcome_as()
            .map_err(|e| format!("its answer could not be read: {e}")),
        Ok(r) => Err(r.message),
        Err(e) => Err(e.to_string()),
    }
}

/// A step-2 failure after the old primary stopped: what to do next.
fn stopped_but(old: &drmesh_protocol::AgentId, demoted: &DemoteOutcome, why: &str) -> String {
    format!(
        "{why}. {old} is stopped (fenced, standby.signal left) at {}, so nothing is writable: \
         retry this switchover once the target streams, or fail over to another region",
        demoted.final_lsn
    )
}

/// Step 6 of a switchover, after its health checks: the old primary rejoins the new one
/// as a standby.
pub(super) async fn rejoin_old_primary(
    coord: &Arc<Coordinator>,
    run: &FailoverRun,
    monitored: String,
) -> Outcome {
    let (Some(old), Some(target)) = (&run.from_agent, &run.target_agent) else {
        return Outcome::Failed("no old primary or target was recorded at step 2".into());
    };
    let address = {
        let registry = coord.registry.lock();
        registry.get(target).and_then(|e| e.replication_address())
    };
    let Some(address) = address else {
        return Outcome::Failed(format!(
            "{target} did not say where its PostgreSQL is reached (postgres.advertise), so \
             {old} cannot follow it: `drmesh rejoin` once it does"
        ));
    };
    match rejoin::rejoin_agent(coord, old, address).await {
        Ok(o) => Outcome::Done(format!(
            "{monitored}; {old} rejoined as a standby of {address} (timeline {}, pg_rewind: {})",
            o.timeline.map_or_else(|| "?".into(), |t| t.to_string()),
            o.rewind_message
        )),
        Err(e) => Outcome::Failed(format!(
            "{monitored}; but {old} did not rejoin as a standby: {e} (the new primary serves; \
             `drmesh rejoin {}` once the cause is fixed)",
            run.from_region
                .as_ref()
                .map_or_else(|| "REGION".into(), |r| r.to_string())
        )),
    }
}
