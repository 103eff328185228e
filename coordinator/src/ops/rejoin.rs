//! Rejoin: after a failover, the fenced old primary of a region becomes a standby of the
//! current primary (`POST …/disaster-recovery/rejoin`, `drmesh rejoin REGION`). The
//! coordinator picks the servers and the source; the agent next to each fenced server
//! archives its leftover WAL, runs `pg_rewind`, and starts it streaming (see the agent's
//! `failover::rejoin`). Synchronous: the answer carries every agent's outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use drmesh_protocol::api::{
    AgentStatus, FailoverRun, RejoinAnswer, RejoinOutcome, RejoinedAgent, Severity,
};
use drmesh_protocol::{AgentId, CommandKind, PgRole, RegionId};
use tracing::{info, warn, Instrument};

use crate::alerts;
use crate::error::Error;
use crate::rules;
use crate::state::Coordinator;
use crate::store::{Namespace, StoreExt};
use crate::transport::{self, TransportError};

/// How long one agent may take: archiving, `pg_rewind`, start, streaming.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(600);

/// What a rejoin of `region` acts on, chosen from the agents' statuses: the fenced
/// servers there, and the one primary they follow.
#[derive(Debug, PartialEq)]
pub struct Targets {
    pub fenced: Vec<AgentId>,
    pub primary: AgentId,
}

fn describe(agents: &[&AgentStatus]) -> String {
    agents
        .iter()
        .map(|a| {
            let role = match (a.fenced, a.role) {
                (true, _) => "fenced".to_string(),
                (false, Some(r)) => r.to_string(),
                (false, None) => "no PostgreSQL".to_string(),
            };
            format!("{} ({role})", a.agent_id)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Picks the targets of a rejoin of `region` (pure: the statuses and known regions in).
pub fn targets(
    agents: &[AgentStatus],
    known_regions: &[RegionId],
    region: &RegionId,
) -> Result<Targets, Error> {
    let here: Vec<&AgentStatus> = agents.iter().filter(|a| &a.region == region).collect();
    if here.is_empty() && !known_regions.contains(region) {
        return Err(Error::NotFound(format!("no region {region}")));
    }
    let fenced: Vec<AgentId> = here
        .iter()
        .filter(|a| a.fenced)
        .map(|a| a.agent_id.clone())
        .collect();
    if fenced.is_empty() {
        return Err(Error::BadRequest(if here.is_empty() {
            format!("no fenced server in {region}: no agent there")
        } else {
            format!(
                "no fenced server in {region}: {}; only a fenced old primary is rejoined",
                describe(&here)
            )
        }));
    }
    let primaries: Vec<&AgentStatus> = agents
        .iter()
        .filter(|a| a.role == Some(PgRole::Primary) && a.connected && !a.fenced)
        .collect();
    match primaries.as_slice() {
        [one] => Ok(Targets {
            fenced,
            primary: one.agent_id.clone(),
        }),
        [] => Err(Error::Conflict(
            "no connected agent reports a primary to rejoin".into(),
        )),
        many => Err(Error::Conflict(format!(
            "{} agents report a primary ({}): resolve that first",
            many.len(),
            describe(many)
        ))),
    }
}

/// `POST …/disaster-recovery/rejoin`: makes every fenced server of `region` a streaming
/// standby of the current primary.
pub async fn rejoin(coord: &Coordinator, region: &RegionId) -> Result<RejoinAnswer, Error> {
    let t = targets(&coord.agent_statuses(), &coord.config.regions, region)?;
    // No failover may start while the rejoin runs, nor another rejoin: one claim in
    // the store, taken in the transaction that checks, held until this returns.
    let _claim = crate::ops::admission::claim_rejoin(
        coord.store.as_ref(),
        region,
        chrono::Utc::now(),
        REJOIN_TIMEOUT * t.fenced.len() as u32 + Duration::from_secs(60),
    )?;
    let address = {
        let registry = coord.registry.lock();
        registry
            .get(&t.primary)
            .and_then(|e| e.replication_address())
    }
    .ok_or_else(|| {
        Error::Conflict(format!(
            "the primary's agent {} did not say where its PostgreSQL is reached \
             (postgres.advertise)",
            t.primary
        ))
    })?;
    let mut rejoined = Vec::new();
    for agent in &t.fenced {
        let span = tracing::info_span!("rejoin", agent_id = %agent, %region, primary = %address);
        let outcome = rejoin_agent(coord, agent, address).instrument(span).await?;
        rejoined.push(RejoinedAgent {
            agent_id: agent.clone(),
            outcome,
        });
    }
    Ok(RejoinAnswer {
        region: region.clone(),
        primary_agent_id: t.primary,
        primary_address: address.to_string(),
        rejoined,
    })
}

/// Alert kind raised when a plan's automatic rejoin failed (source: the region).
pub const AUTO_REJOIN_FAILED: &str = "AUTO_REJOIN_FAILED";

/// How long after a failed automatic rejoin of a region the next is tried.
const AUTO_REJOIN_BACKOFF: Duration = Duration::from_secs(60);

/// Rejoins the fenced old primaries of plans with `autoRejoin` once their regions are
/// back ([`rules::rejoin::auto_rejoin`]), through [`rejoin`] (admitted like an
/// operator's). A failure raises a HIGH `AUTO_REJOIN_FAILED` and is tried again
/// [`AUTO_REJOIN_BACKOFF`] later; a success resolves it.
pub async fn watch_auto(coord: Arc<Coordinator>) {
    let tick = (coord.config.heartbeat_interval * 2).max(Duration::from_millis(500));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed_at: HashMap<RegionId, tokio::time::Instant> = HashMap::new();
    loop {
        ticker.tick().await;
        if !coord.in_office() {
            continue;
        }
        let store = coord.store.as_ref();
        let plans: Vec<_> = match crate::plans::list(store) {
            Ok(p) => p.into_iter().filter(|p| p.auto_rejoin).collect(),
            Err(e) => {
                warn!(error = %e, "automatic rejoin: cannot read the plans");
                continue;
            }
        };
        // The failovers (a namespace that only grows) are read only when a plan asks.
        if plans.is_empty() {
            continue;
        }
        let runs = match store.scan_json::<FailoverRun>(Namespace::Failovers, "") {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "automatic rejoin: cannot read the failovers");
                continue;
            }
        };
        let statuses = coord.agent_statuses();
        for plan in &plans {
            let running = runs
                .iter()
                .any(|r| r.plan_id == plan.id && r.status.is_running());
            let Some(region) =
                rules::rejoin::auto_rejoin(plan, &statuses, running, &coord.timing())
            else {
                continue;
            };
            if failed_at
                .get(&region)
                .is_some_and(|t| t.elapsed() < AUTO_REJOIN_BACKOFF)
            {
                continue;
            }
            let span = tracing::info_span!("auto_rejoin", plan = %plan.id, %region);
            async {
                info!("the fenced old primary's region is back: rejoining it (autoRejoin)");
                match rejoin(&coord, &region).await {
                    Ok(answer) => {
                        failed_at.remove(&region);
                        info!(primary = %answer.primary_agent_id, "rejoined by itself");
                        if let Err(e) =
                            alerts::resolve_cleared(store, AUTO_REJOIN_FAILED, region.as_str())
                        {
                            warn!(error = %e, "resolve AUTO_REJOIN_FAILED");
                        }
                    }
                    // Another failover or rejoin runs: the next tick sees.
                    Err(Error::Conflict(why)) => info!(%why, "automatic rejoin waits"),
                    Err(e) => {
                        failed_at.insert(region.clone(), tokio::time::Instant::now());
                        warn!(error = %e, "automatic rejoin failed");
                        alerts::raise_logged(
                            store,
                            Severity::High,
                            AUTO_REJOIN_FAILED,
                            region.as_str(),
                            Some(region.clone()),
                            format!(
                                "Plan {}'s fenced old primary in {region} did not rejoin the \
                                 primary by itself: {e}. Tried again in {} s; `drmesh rejoin \
                                 {region}` by hand.",
                                plan.id,
                                AUTO_REJOIN_BACKOFF.as_secs()
                            ),
                        );
                    }
                }
            }
            .instrument(span)
            .await;
        }
    }
}

/// Asks `agent` to make its fenced server a standby of the primary at `primary`, and
/// waits until its heartbeats report the standby. No admission: the caller holds the
/// plan (a rejoin claim, or the switchover that stopped that server).
pub async fn rejoin_agent(
    coord: &Coordinator,
    agent: &AgentId,
    primary: std::net::SocketAddr,
) -> Result<RejoinOutcome, Error> {
    let outcome = ask(coord, agent, primary).await?;
    reported_standby(coord, agent).await;
    Ok(outcome)
}

/// Waits (bounded) until `agent`'s heartbeats report its server a standby whose lag can
/// be judged — it has replayed a transaction (its lag in time is known) or is not behind
/// at all — so that once a rejoin has answered, a failover back to it, asked for right
/// after, finds it ready and passes the RPO check.
async fn reported_standby(coord: &Coordinator, agent: &AgentId) {
    let interval = coord.config.heartbeat_interval;
    let deadline = tokio::time::Instant::now() + (interval * 6).max(Duration::from_secs(30));
    loop {
        let ready = coord.agent_statuses().iter().any(|a| {
            &a.agent_id == agent
                && a.role == Some(PgRole::Standby)
                && (a.replication_lag_seconds.is_some() || a.replication_lag_bytes == Some(0))
        });
        if ready {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            warn!("the rejoined server is not reported a caught-up standby yet");
            return;
        }
        tokio::time::sleep(interval / 4).await;
    }
}

async fn ask(
    coord: &Coordinator,
    agent: &AgentId,
    primary: std::net::SocketAddr,
) -> Result<RejoinOutcome, Error> {
    info!("asking the agent to rejoin its server as a standby");
    let kind = CommandKind::Rejoin {
        primary_host: primary.ip().to_string(),
        primary_port: primary.port(),
    };
    match transport::send_command(coord, agent, kind, REJOIN_TIMEOUT).await {
        Ok(r) if r.ok => {
            let outcome: RejoinOutcome = r.outcome_as().map_err(|e| {
                Error::AgentFailed(format!("{agent}'s answer could not be read: {e}"))
            })?;
            info!(
                archived = outcome.archived_segments.len(),
                rewound = outcome.rewound,
                timeline = ?outcome.timeline,
                duration_ms = outcome.duration_ms,
                "rejoined as a standby"
            );
            Ok(outcome)
        }
        Ok(r) => {
            warn!(error = %r.message, "rejoin failed");
            Err(Error::AgentFailed(format!("{agent}: {}", r.message)))
        }
        Err(e @ TransportError::NotConnected(_)) => {
            Err(Error::Unavailable(format!("ask {agent}: {e}")))
        }
        Err(e) => {
            warn!(error = %e, "rejoin command");
            Err(Error::AgentFailed(format!("ask {agent}: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drmesh_protocol::api::AgentState;

    fn agent(id: &str, region: &str, role: Option<PgRole>, fenced: bool) -> AgentStatus {
        AgentStatus {
            agent_id: AgentId::new(id).expect("id"),
            region: RegionId::new(region).expect("region"),
            state: AgentState::Up,
            role,
            version: "test".into(),
            connected: true,
            last_heartbeat_age_ms: Some(10),
            last_heartbeat_at: None,
            timeline: None,
            lsn: None,
            replication_lag_bytes: None,
            replication_lag_seconds: None,
            disk_free_bytes: None,
            last_backup_ids: Vec::new(),
            postgres_error: None,
            fenced,
            postgres_address: None,
            mesh_peers: None,
            can_fence: true,
        }
    }

    fn region(r: &str) -> RegionId {
        RegionId::new(r).expect("region")
    }

    #[test]
    fn the_fenced_servers_of_the_region_follow_the_one_primary() {
        let known = [
            region("us-west-2"),
            region("us-east-1"),
            region("eu-west-1"),
        ];
        let after = [
            agent("db-west", "us-west-2", Some(PgRole::Unreachable), true),
            agent("db-east", "us-east-1", Some(PgRole::Primary), false),
        ];
        let t = targets(&after, &known, &region("us-west-2")).expect("targets");
        assert_eq!(t.fenced, [AgentId::new("db-west").expect("id")]);
        assert_eq!(t.primary.as_str(), "db-east");

        // The primary's region has nothing fenced: refused, naming the agents.
        let err = targets(&after, &known, &region("us-east-1")).expect_err("not fenced");
        assert!(
            matches!(&err, Error::BadRequest(m) if m.contains("db-east (primary)")),
            "{err}"
        );
        // A configured region without agents; an unknown one.
        assert!(matches!(
            targets(&after, &known, &region("eu-west-1")),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            targets(&after, &known, &region("ap-south-1")),
            Err(Error::NotFound(_))
        ));

        // No primary, or two: nothing to follow.
        let none = [agent("db-west", "us-west-2", None, true)];
        assert!(matches!(
            targets(&none, &known, &region("us-west-2")),
            Err(Error::Conflict(_))
        ));
        let two = [
            agent("db-west", "us-west-2", None, true),
            agent("db-east", "us-east-1", Some(PgRole::Primary), false),
            agent("db-eu", "eu-west-1", Some(PgRole::Primary), false),
        ];
        assert!(matches!(
            targets(&two, &known, &region("us-west-2")),
            Err(Error::Conflict(m)) if m.contains("2 agents")
        ));
    }
}
