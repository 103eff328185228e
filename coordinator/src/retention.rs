//! Retention enforcement (`POST …/retention/enforce-policies`): the policies of
//! `coordinator.toml` sent to every UP agent that backs up into a repository (its
//! `[database]` repository, its document locations), all at once, and their reports
//! gathered. The rules run on the agents, next to the repositories
//! (`agent/src/repo/enforce.rs`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use drmesh_protocol::api::BackupStatus;
use drmesh_protocol::message::CommandKind;
use drmesh_protocol::retention::{AgentRetention, RetentionEnforcement, RetentionOutcome};
use tracing::{info, warn};

use crate::state::Coordinator;
use crate::store::{Namespace, StoreExt};
use crate::{database, documents, jobs, transport};

/// How long one agent may take (an enforcement reads every manifest of its repositories).
const TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Enforces the configured policies as of `now` on every agent that backs up; `None`
/// when no such agent is UP.
pub async fn enforce(
    coord: &Coordinator,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Option<RetentionEnforcement> {
    let mut agents: Vec<_> = jobs::capable_agents(coord, database::CAPABILITY)
        .into_iter()
        .chain(jobs::capable_agents(coord, documents::CAPABILITY))
        .map(|c| c.id)
        .collect();
    agents.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    agents.dedup();
    if agents.is_empty() {
        return None;
    }
    let policies = coord.config.retention.clone();
    let asked = agents.iter().map(|agent| {
        let kind = CommandKind::EnforceRetention {
            dry_run,
            now: Some(now),
            policies: policies.clone(),
        };
        async move {
            let answer = transport::send_command(coord, agent, kind, TIMEOUT).await;
            let (repositories, error) = match answer {
                Ok(r) if r.ok => match r
                    .detail_json
                    .as_deref()
                    .map(serde_json::from_str::<RetentionOutcome>)
                {
                    Some(Ok(o)) => (o.repositories, None),
                    _ => (
                        Vec::new(),
                        Some(format!("unreadable answer: {}", r.message)),
                    ),
                },
                Ok(r) => (Vec::new(), Some(r.message)),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            AgentRetention {
                agent_id: agent.to_string(),
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
    let wal_deleted = reports().map(|r| r.wal_deleted.len()).sum();
    let bytes_freed = reports().map(|r| r.bytes_freed).sum();
    info!(
        dry_run,
        deleted, awaiting_archive, wal_deleted, bytes_freed, "retention policies enforced"
    );
    Some(RetentionEnforcement {
        dry_run,
        now,
        policies,
        agents,
        deleted,
        awaiting_archive,
        wal_deleted,
        bytes_freed,
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
