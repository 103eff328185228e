//! Retention enforcement (`POST …/retention/enforce-policies`): the policies of
//! `coordinator.toml` sent to every UP agent that backs up into a repository (its
//! `[database]` repository, its document locations), all at once, and their reports
//! gathered. The rules run on the agents, next to the repositories
//! (`repo/src/enforce.rs`). [`schedule`] runs it by itself at the times of
//! `[retention] schedule` (a cron expression, UTC; daily at 01:00 by default), once for
//! each due time, catching up once after the coordinator was down.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drmesh_protocol::api::BackupStatus;
use drmesh_protocol::message::CommandKind;
use drmesh_protocol::retention::{AgentRetention, RetentionEnforcement, RetentionOutcome};
use tracing::{info, warn};

use crate::rules::schedule;
use crate::state::Coordinator;
use crate::store::{Namespace, Store, StoreExt};
use crate::{ops::jobs, transport};

/// How long one agent may take (an enforcement reads every manifest of its repositories).
const TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Enforces the configured policies as of `now` on every agent that backs up; `None`
/// when no such agent is UP.
pub async fn enforce(
    coord: &Coordinator,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Option<RetentionEnforcement> {
    // One agent per repository: both agents of a failover pair sharing one would
    // otherwise enforce (and collect garbage in) it at once.
    let agents = jobs::repository_agents(coord);
    if agents.is_empty() {
        return None;
    }
    let policies = coord.config.retention.clone();
    let plans = match crate::plans::list(coord.store.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "read the plans: their retention policies are not applied");
            Vec::new()
        }
    };
    let asked = agents.iter().map(|agent| {
        // A plan's own policies for the agents of its database.
        let plan = plan_of(&plans, agent);
        let given = match plan {
            Some((_, r)) => r.apply(&policies),
            None => policies.clone(),
        };
        let plan_id = plan.map(|(id, _)| id.to_string());
        let kind = CommandKind::EnforceRetention {
            dry_run,
            now: Some(now),
            policies: given,
        };
        let agent = &agent.id;
        async move {
            let answer = transport::send_command(coord, agent, kind, TIMEOUT).await;
            let (repositories, error) = match answer {
                Ok(r) if r.ok => {
                    let message = r.message.clone();
                    match r.outcome_as::<RetentionOutcome>() {
                        Ok(o) => (o.repositories, None),
                        _ => (Vec::new(), Some(format!("unreadable answer: {message}"))),
                    }
                }
                Ok(r) => (Vec::new(), Some(r.message)),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            AgentRetention {
                agent_id: agent.to_string(),
                plan_id,
                repositories,
                error,
            }
        }
    });
    let agents = futures::future::join_all(asked).await;
    if !dry_run {
        for id in agents
            .iter()
            .flat_map(|a| a.repositories.iter())
            .filter_map(|r| r.report.as_ref())
            .flat_map(|r| r.deleted.iter())
        {
            mark_expired(coord, id);
        }
    }
    let reports = || {
        agents
            .iter()
            .flat_map(|a| a.repositories.iter())
            .filter_map(|r| r.report.as_ref())
    };
    let deleted = reports().map(|r| r.deleted.len()).sum();
    let awaiting_archive = reports().map(|r| r.awaiting_archive.len()).sum();
    let archived = reports().map(|r| r.archived.len()).sum();
    let archive_deleted = reports().map(|r| r.archive_deleted.len()).sum();
    let wal_deleted = reports().map(|r| r.wal_deleted.len()).sum();
    let bytes_freed = reports().map(|r| r.bytes_freed).sum();
    info!(
        dry_run,
        deleted,
        awaiting_archive,
        archived,
        archive_deleted,
        wal_deleted,
        bytes_freed,
        "retention policies enforced"
    );
    Some(RetentionEnforcement {
        dry_run,
        now,
        policies,
        agents,
        deleted,
        awaiting_archive,
        archived,
        archive_deleted,
        wal_deleted,
        bytes_freed,
    })
}

/// The first plan (by id) with its own policies that covers `agent`: one next to the
/// primary, in a plan's active region or in one of its failover regions.
fn plan_of<'a>(
    plans: &'a [drmesh_protocol::api::DrPlan],
    agent: &jobs::Candidate,
) -> Option<(&'a str, &'a drmesh_protocol::retention::PlanRetention)> {
    plans.iter().find_map(|p| {
        let r = p.retention.as_ref()?;
        let covers = agent.primary
            || p.active_region.as_ref() == Some(&agent.region)
            || p.failover_regions.contains(&agent.region);
        covers.then_some((p.id.as_str(), r))
    })
}

/// The coordinator's record of a backup the policies removed says so (`EXPIRED`); a
/// backup it has no record of (taken outside the coordinator) is left alone.
fn mark_expired(coord: &Coordinator, id: &str) {
    let store = coord.store.as_ref();
    match store.get_json::<serde_json::Value>(Namespace::Backups, id) {
        Ok(Some(mut rec)) => {
            rec["status"] = serde_json::json!(BackupStatus::Expired);
            if let Err(e) = store.put_json(Namespace::Backups, id, &rec) {
                warn!(backup_id = id, error = %e, "record the expired backup");
            }
        }
        Ok(None) => {}
        Err(e) => warn!(backup_id = id, error = %e, "read the expired backup's record"),
    }
}

/// How often the scheduler looks whether an enforcement is due.
const TICK: Duration = Duration::from_secs(20);

/// When the scheduler last enforced the policies (RFC 3339), in the `meta` namespace.
const LAST_RUN_KEY: &str = "retention.lastScheduledRun";

fn last_run(store: &dyn Store) -> Option<DateTime<Utc>> {
    let raw = store.get(Namespace::Meta, LAST_RUN_KEY).ok()??;
    DateTime::parse_from_rfc3339(std::str::from_utf8(&raw).ok()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The scheduler: enforces the policies whenever [`schedule::retention_due`]; a time with no agent UP is
/// tried again at the next tick.
pub async fn schedule(coord: Arc<Coordinator>) {
    let cron = match schedule::parse_schedule(&coord.config.retention.schedule) {
        Ok(Some(cron)) => cron,
        // Checked at start-up: `off`.
        _ => return,
    };
    let since = Utc::now();
    loop {
        tokio::time::sleep(TICK).await;
        if !coord.in_office() {
            continue;
        }
        let now = Utc::now();
        if !schedule::retention_due(&cron, last_run(coord.store.as_ref()), since, now) {
            continue;
        }
        match enforce(&coord, false, now).await {
            Some(done) => {
                info!(
                    deleted = done.deleted,
                    bytes_freed = done.bytes_freed,
                    "scheduled retention enforcement done"
                );
                if let Err(e) =
                    coord
                        .store
                        .put(Namespace::Meta, LAST_RUN_KEY, now.to_rfc3339().as_bytes())
                {
                    warn!(error = %e, "record the scheduled retention run");
                }
            }
            None => info!("scheduled retention enforcement waits for an agent to be UP"),
        }
    }
}
