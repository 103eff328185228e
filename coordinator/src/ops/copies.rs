//! Copies of backups to the agents' secondary locations: every `[copies] interval` each
//! UP agent that backs up is asked for a round (`CommandKind::Copy`: copy what each
//! location lacks, verify it there). Each location's last report is kept in the store
//! (`meta` namespace, `replication/<agent>/<repository>/<name>`) with since when it has
//! been unreachable; past `[copies] alert_after` a HIGH `LOCATION_UNREACHABLE`
//! alert is raised, resolved by itself by the first round that reaches it again (which
//! also catches it up). The statuses feed the documents statistics, the database
//! backups' details, the dashboard and the Storage Full check of object-store quotas.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drmesh_protocol::api::Severity;
use drmesh_protocol::copies::{CopiesOutcome, LocationStatus};
use drmesh_protocol::message::CommandKind;
use tracing::{error, info, warn};

use crate::alerts;
use crate::state::Coordinator;
use crate::store::{Namespace, Store, StoreExt};
use crate::{ops::jobs, transport};

/// Alert kind of a location unreachable for longer than `alert_after`.
pub const LOCATION_UNREACHABLE: &str = "LOCATION_UNREACHABLE";

/// Key prefix of the statuses in the `meta` namespace.
const PREFIX: &str = "replication/";

/// How long one round of one agent may take (it may copy a backup made while the
/// location was down).
const ROUND_TIMEOUT: Duration = Duration::from_secs(6 * 60 * 60);

/// Every location's last known status, sorted by agent, repository and name.
pub fn statuses(store: &dyn Store) -> Vec<LocationStatus> {
    match store.scan_json::<LocationStatus>(Namespace::Meta, PREFIX) {
        Ok(list) => list,
        Err(e) => {
            error!(error = %e, "read the replication statuses");
            Vec::new()
        }
    }
}

/// The statuses of one repository kind (`database`, `documents`).
pub fn statuses_of(store: &dyn Store, repository: &str) -> Vec<LocationStatus> {
    statuses(store)
        .into_iter()
        .filter(|s| s.report.repository == repository)
        .collect()
}

/// The alert's text.
pub fn message(s: &LocationStatus, now: DateTime<Utc>) -> String {
    let minutes = s
        .unreachable_since
        .map(|t| (now - t).num_minutes().max(0))
        .unwrap_or(0);
    format!(
        "Location {} ({}) of the {} backups of agent {} has been unreachable for {minutes} min: {}. \
         Backups still reach the other locations; it catches up by itself when it answers again",
        s.report.name,
        s.report.url,
        s.report.repository,
        s.agent_id,
        s.report.last_error.as_deref().unwrap_or("no answer")
    )
}

/// Records one agent's round and raises or resolves its locations' alerts.
pub fn record(
    store: &dyn Store,
    agent: &str,
    region: Option<drmesh_protocol::RegionId>,
    outcome: CopiesOutcome,
    alert_after: Duration,
) {
    let known: BTreeMap<String, LocationStatus> = statuses(store)
        .into_iter()
        .map(|s| (s.source(), s))
        .collect();
    for report in outcome.locations {
        let now = report.checked_at;
        let status = LocationStatus::next(
            agent,
            known.get(&format!("{agent}/{}/{}", report.repository, report.name)),
            report,
        );
        let source = status.source();
        if let Err(e) = store.put_json(Namespace::Meta, &format!("{PREFIX}{source}"), &status) {
            error!(%source, error = %e, "record the replication status");
        }
        let overdue = status
            .unreachable_since
            .is_some_and(|t| (now - t).to_std().is_ok_and(|d| d >= alert_after));
        let done = if overdue {
            alerts::raise(
                store,
                Severity::High,
                LOCATION_UNREACHABLE,
                &source,
                region.clone(),
                message(&status, now),
            )
            .map(|(alert, new)| {
                if new {
                    warn!(alert_id = %alert.id, %source, "HIGH alert raised: location unreachable")
                }
            })
        } else if status.unreachable_since.is_none() {
            alerts::resolve_cleared(store, LOCATION_UNREACHABLE, &source).map(|resolved| {
                for a in resolved {
                    info!(alert_id = %a.id, %source, "alert resolved: the location answers again")
                }
            })
        } else {
            Ok(())
        };
        if let Err(e) = done {
            error!(%source, error = %e, "location alert");
        }
    }
}

/// One round on every agent that backs up, all at once.
pub async fn round(coord: &Coordinator) {
    // One agent per repository (see `jobs::repository_agents`).
    let agents: Vec<_> = jobs::repository_agents(coord)
        .into_iter()
        .map(|c| (c.id, c.region))
        .collect();
    let asked = agents.into_iter().map(|(agent, region)| async move {
        let answer = transport::send_command(coord, &agent, CommandKind::Copy, ROUND_TIMEOUT).await;
        (agent, region, answer)
    });
    for (agent, region, answer) in futures::future::join_all(asked).await {
        match answer {
            Ok(r) if r.ok => {
                let message = r.message.clone();
                match r.outcome_as::<CopiesOutcome>() {
                    Ok(outcome) => record(
                        coord.store.as_ref(),
                        agent.as_str(),
                        Some(region),
                        outcome,
                        coord.config.copies.alert_after,
                    ),
                    _ => warn!(agent_id = %agent, "unreadable replication answer: {message}"),
                }
            }
            Ok(r) => warn!(agent_id = %agent, message = %r.message, "replication round failed"),
            Err(e) => warn!(agent_id = %agent, error = %e, "replication round not run"),
        }
    }
}

/// Runs a round every `[replication] interval` until the process ends.
pub async fn schedule(coord: Arc<Coordinator>) {
    let Some(interval) = coord.config.copies.interval else {
        return;
    };
    loop {
        tokio::time::sleep(interval).await;
        if !coord.in_office() {
            continue;
        }
        round(&coord).await;
    }
}
