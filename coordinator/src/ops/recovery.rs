//! Point-in-time recovery: what an instant's recovery would use (asked of an agent that
//! reads the database repository), and recoveries into a named environment (run by the
//! agent that announced it), recorded under `pitr_…` ids and shown in the DR status.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use drmesh_protocol::api::{BackupStatus, PitrInfo, PitrOutcome, PitrRequest, PitrRun, Severity};
use drmesh_protocol::ids::runbook_id;
use drmesh_protocol::{AgentId, CommandKind};
use tracing::{error, info, warn, Instrument};

use crate::alerts;
use crate::error::Error;
use crate::ops::jobs::{self, Finished};
use crate::state::Coordinator;
use crate::store::{Namespace, Store, StoreError, StoreExt};
use crate::transport;
use drmesh_protocol::capability::DATABASE as CAPABILITY;
use drmesh_protocol::instant::parse_instant;

/// Alert kind of a failed recovery.
pub const RECOVERY_FAILED: &str = "RECOVERY_FAILED";

const PREFIX: &str = "pitr_";

/// An UP, connected agent with `capability`; a primary's agent first, then by id.
fn pick_agent(coord: &Coordinator, capability: &str) -> Option<AgentId> {
    let candidates = jobs::capable_agents(coord, capability);
    let primary = candidates.iter().position(|c| c.primary).unwrap_or(0);
    candidates.into_iter().nth(primary).map(|c| c.id)
}

/// `GET /recovery/point-in-time/:timestamp`.
pub async fn info(coord: &Coordinator, timestamp: &str) -> Result<PitrInfo, Error> {
    let t = parse_instant(timestamp).map_err(|e| Error::BadRequest(e.to_string()))?;
    let agent = pick_agent(coord, CAPABILITY).ok_or_else(|| {
        Error::Unavailable("no agent with a [database] configuration is connected and UP".into())
    })?;
    let kind = CommandKind::PitrInfo {
        target_time: t.to_rfc3339(),
    };
    match transport::send_command(coord, &agent, kind, Duration::from_secs(60)).await {
        Ok(r) if r.ok => r
            .outcome_as()
            .map_err(|e| Error::Unavailable(format!("the agent's answer could not be read: {e}"))),
        Ok(r) => Err(Error::Unavailable(r.message)),
        Err(e) => Err(Error::Unavailable(format!("ask {agent}: {e}"))),
    }
}

fn save(store: &dyn Store, run: &PitrRun) -> Result<(), StoreError> {
    store.put_json(Namespace::Backups, &run.recovery_id, run)
}

/// The newest recovery, running or finished.
pub fn latest(store: &dyn Store) -> Result<Option<PitrRun>, StoreError> {
    let mut all: Vec<PitrRun> = store.scan_json(Namespace::Backups, PREFIX)?;
    Ok(all.pop())
}

/// `POST /disaster-recovery/point-in-time-recovery`: records the recovery and starts it
/// on the agent that owns the target environment.
pub fn start(
    coord: &Arc<Coordinator>,
    req: PitrRequest,
    requested_by: String,
) -> Result<PitrRun, Error> {
    let t = parse_instant(&req.target_timestamp).map_err(|e| Error::BadRequest(e.to_string()))?;
    if t > Utc::now() {
        return Err(Error::BadRequest(format!(
            "targetTimestamp {} is in the future",
            t.to_rfc3339()
        )));
    }
    let env = req.target_environment.trim();
    if env.is_empty()
        || !env
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::BadRequest(format!(
            "targetEnvironment {env:?}: letters, digits, '-' and '_' only"
        )));
    }
    if let Some(b) = &req.backup_id {
        if !(b.starts_with("full_") || b.starts_with("incr_")) {
            return Err(Error::BadRequest(format!(
                "backupId {b:?} is not a database backup id (full_… or incr_…)"
            )));
        }
    }
    let store = coord.store.as_ref();
    if let Some(running) = latest(store)?.filter(|r| r.status == BackupStatus::InProgress) {
        return Err(Error::Conflict(format!(
            "point-in-time recovery {} is still in progress",
            running.recovery_id
        )));
    }
    let agent = pick_agent(coord, &format!("environment:{env}")).ok_or_else(|| {
        Error::Unavailable(format!(
            "no connected, UP agent has an environment named {env:?} ([database.environments.{env}])"
        ))
    })?;
    let run = PitrRun {
        recovery_id: runbook_id("pitr"),
        status: BackupStatus::InProgress,
        target_timestamp: t,
        backup_id: req.backup_id.clone(),
        target_environment: env.to_string(),
        agent_id: agent,
        progress: 0.0,
        progress_message: "queued".into(),
        requested_by,
        started_at: Utc::now(),
        finished_at: None,
        duration_ms: None,
        outcome: None,
        error: None,
    };
    save(store, &run)?;
    let span =
        tracing::info_span!("pitr", recovery_id = %run.recovery_id, agent_id = %run.agent_id);
    tokio::spawn(run_recovery(coord.clone(), run.clone()).instrument(span));
    Ok(run)
}

async fn run_recovery(coord: Arc<Coordinator>, mut run: PitrRun) {
    info!(environment = %run.target_environment, "point-in-time recovery started");
    let id = run.recovery_id.clone();
    let kind = CommandKind::PointInTimeRecovery {
        recovery_id: id.clone(),
        target_time: run.target_timestamp.to_rfc3339(),
        backup_id: run.backup_id.clone(),
        environment: run.target_environment.clone(),
    };
    let result =
        jobs::run_with_progress(&coord, &mut run, kind, coord.config.recovery_timeout).await;
    match jobs::finished::<PitrOutcome>(result, "recovery") {
        Finished::Done(outcome) => {
            run.status = BackupStatus::Completed;
            run.progress = 100.0;
            run.progress_message = "completed: the server accepts connections".into();
            run.backup_id = Some(outcome.backup_id.clone());
            run.outcome = Some(outcome);
        }
        Finished::Failed(why) => {
            run.status = BackupStatus::Failed;
            run.error = Some(why);
        }
        Finished::TimedOut => {
            run.status = BackupStatus::Failed;
            run.error = Some(format!(
                "no result within the recovery timeout ({})",
                humantime::format_duration(coord.config.recovery_timeout)
            ));
        }
    }
    if run.status == BackupStatus::Failed {
        let why = run.error.clone().unwrap_or_default();
        warn!(error = %why, "point-in-time recovery failed");
        alerts::raise_logged(
            coord.store.as_ref(),
            Severity::High,
            RECOVERY_FAILED,
            &format!("pitr:{}", run.target_environment),
            None,
            format!(
                "Point-in-time recovery {id} into {} failed: {why}",
                run.target_environment
            ),
        );
    } else {
        info!("point-in-time recovery completed");
    }
    if let Err(e) = save(coord.store.as_ref(), &run) {
        error!(error = %e, "save recovery result");
    }
}

/// Marks recoveries that were running when the coordinator stopped as FAILED.
pub fn fail_interrupted(store: &dyn Store) -> Result<usize, StoreError> {
    let mut n = 0;
    let all: Vec<PitrRun> = store.scan_json(Namespace::Backups, PREFIX)?;
    for mut run in all
        .into_iter()
        .filter(|r| r.status == BackupStatus::InProgress)
    {
        run.status = BackupStatus::Failed;
        run.error = Some("interrupted: the coordinator restarted while the recovery ran".into());
        run.finished_at = Some(Utc::now());
        save(store, &run)?;
        n += 1;
    }
    Ok(n)
}
