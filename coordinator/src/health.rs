//! Health checks of each DR plan's primary, the DOWN rule, automatic failover, and the
//! lease reckoning a failover waits on before promoting past a silent old primary.
//!
//! A primary region is DOWN only when all three hold:
//! 1. its agent's heartbeats are missing for longer than the lease, or its agent keeps
//!    heartbeating but reports its PostgreSQL unreachable;
//! 2. the coordinator cannot reach that PostgreSQL itself (TCP + `SELECT 1`, bounded);
//! 3. a majority of the other agents cannot reach it either (their own probes, over
//!    the mesh network, reported in their heartbeats).
//!
//! Heartbeat loss shorter than the lease never satisfies (1), so flapping links never
//! start a failover; a coordinator cut off from the primary alone fails (3); a
//! coordinator that is down evaluates nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use drmesh_protocol::api::{FailoverRequest, PlanHealth, PrimaryHealth, Severity};
use drmesh_protocol::{AgentId, PgRole, RegionId};
use tracing::{info, warn};

use crate::registry::AgentEntry;
use crate::state::Coordinator;
use crate::store::StoreExt;
use crate::{alerts, failover, plans};

/// Alert kind raised when an automatic failover should start but cannot.
pub const AUTOMATIC_FAILOVER_BLOCKED: &str = "AUTOMATIC_FAILOVER_BLOCKED";

/// How recent a heartbeat must be for its reports to count, in heartbeat intervals.
const FRESH_INTERVALS: u32 = 3;

/// The age up to which an agent's heartbeat is fresh enough to act on.
pub fn fresh_age(coord: &Coordinator) -> Duration {
    coord.config.heartbeat_interval * FRESH_INTERVALS
}

/// An agent's status is fresh: connected, and its last heartbeat within [`fresh_age`].
pub fn fresh_status(coord: &Coordinator, a: &drmesh_protocol::api::AgentStatus) -> bool {
    a.connected
        && a.last_heartbeat_age_ms
            .is_some_and(|age| u128::from(age) <= fresh_age(coord).as_millis())
}

/// The agent that holds (or last held) a plan's primary: in the plan's active region
/// if it has one, the one that most recently reported a writable server; after a
/// restart, before any report, the active region's agent with a PostgreSQL address
/// that is not reporting a standby.
pub fn primary_agent(coord: &Coordinator, active: Option<&RegionId>) -> Option<AgentEntry> {
    let registry = coord.registry.lock();
    let in_region = |a: &&AgentEntry| active.is_none_or(|r| &a.region == r);
    registry
        .agents()
        .filter(in_region)
        .filter(|a| a.last_primary_at.is_some())
        .max_by_key(|a| a.last_primary_at)
        .or_else(|| {
            active?;
            registry.agents().filter(in_region).find(|a| {
                a.addresses.postgres.is_some()
                    && a.heartbeat
                        .as_ref()
                        .and_then(|h| h.postgres.as_ref())
                        .is_none_or(|p| p.role != PgRole::Standby)
            })
        })
        .cloned()
}

/// Records where a plan's primary runs, the first time it is seen, so a restarted
/// coordinator knows which region to watch.
fn remember_active_region(coord: &Coordinator, plan: &str, region: &RegionId) {
    let store = coord.store.as_ref();
    match plans::get(store, plan) {
        Ok(Some(mut p)) if p.active_region.is_none() => {
            p.active_region = Some(region.clone());
            if let Err(e) = store.put_json(crate::store::Namespace::Plans, &p.id, &p) {
                warn!(plan, error = %e, "record the plan's active region");
            } else {
                info!(plan, region = %region, "the plan's primary runs here");
            }
        }
        Ok(_) => {}
        Err(e) => warn!(plan, error = %e, "read the plan"),
    }
}

fn fresh(coord: &Coordinator, a: &AgentEntry, now: Instant) -> bool {
    a.connected
        && a.last_heartbeat_instant
            .is_some_and(|t| now.saturating_duration_since(t) <= fresh_age(coord))
}

/// `SELECT 1` on the PostgreSQL at `addr` with the configured credentials, bounded.
pub async fn probe_database(
    coord: &Coordinator,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    with_database(coord, addr, timeout, |client| async move {
        client.simple_query("select 1").await.map(|_| ())
    })
    .await
}

/// Failover step 5's check of the server at `addr`: out of recovery, and a write (to a
/// temporary table, which a server in recovery refuses) commits.
pub async fn check_writable(
    coord: &Coordinator,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    let in_recovery = with_database(coord, addr, timeout, |client| async move {
        let row = client.query_one("select pg_is_in_recovery()", &[]).await?;
        let in_recovery: bool = row.try_get(0)?;
        if !in_recovery {
            client
                .batch_execute(
                    "begin; create temporary table drmesh_failover_check (at timestamptz); \
                     insert into drmesh_failover_check values (now()); commit",
                )
                .await?;
        }
        Ok(in_recovery)
    })
    .await?;
    if in_recovery {
        return Err(format!("{addr} is still in recovery"));
    }
    Ok(())
}

/// Connects to the PostgreSQL at `addr` with `health_probe_conninfo`'s credentials and
/// runs `f`, all within `timeout`.
async fn with_database<T, F, Fut>(
    coord: &Coordinator,
    addr: std::net::SocketAddr,
    timeout: Duration,
    f: F,
) -> Result<T, String>
where
    F: FnOnce(tokio_postgres::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut cfg: tokio_postgres::Config = coord
        .config
        .health_probe_conninfo
        .parse()
        .map_err(|e| format!("health_probe_conninfo: {e}"))?;
    cfg.host(addr.ip().to_string())
        .port(addr.port())
        .connect_timeout(timeout)
        .application_name("drmesh-health-check");
    let attempt = async {
        let (client, connection) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(connection);
        let r = f(client).await.map_err(|e| e.to_string());
        conn.abort();
        r
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// One evaluation of the DOWN rule for `primary`.
pub async fn check(coord: &Coordinator, primary: &AgentEntry) -> (PrimaryHealth, Vec<String>) {
    let now = Instant::now();
    let lease = coord.config.lease;
    let mut checks = Vec::new();
    let heard = primary.last_heartbeat_instant.unwrap_or(coord.started);
    let silent_for = now.saturating_duration_since(heard);
    let role = primary
        .heartbeat
        .as_ref()
        .and_then(|h| h.postgres.as_ref())
        .map(|p| p.role);
    let agent_says_down = if silent_for > lease {
        checks.push(format!(
            "heartbeats: none for {} ms (lease {} ms)",
            silent_for.as_millis(),
            lease.as_millis()
        ));
        true
    } else if fresh(coord, primary, now) && role == Some(PgRole::Unreachable) {
        checks.push("heartbeats: the agent reports its PostgreSQL unreachable".into());
        true
    } else {
        checks.push(format!(
            "heartbeats: last {} ms ago, PostgreSQL {}",
            silent_for.as_millis(),
            role.map_or_else(|| "unknown".into(), |r| r.to_string())
        ));
        false
    };

    // The coordinator's own probe, only when the agent's side already looks bad (it
    // costs a connection).
    let coordinator_says_down = if !agent_says_down {
        None
    } else {
        Some(match primary.addresses.postgres {
            None => {
                checks.push(
                    "coordinator probe: no address advertised (postgres.advertise); not probed"
                        .into(),
                );
                true
            }
            Some(addr) => {
                let timeout = (coord.config.heartbeat_interval * 2)
                    .clamp(Duration::from_millis(300), Duration::from_secs(2));
                match probe_database(coord, addr, timeout).await {
                    Ok(()) => {
                        checks.push(format!("coordinator probe: {addr} answers SELECT 1"));
                        false
                    }
                    Err(e) => {
                        checks.push(format!("coordinator probe: {addr} fails: {e}"));
                        true
                    }
                }
            }
        })
    };

    // What the other agents see.
    let (cannot, others, unheard) = {
        let registry = coord.registry.lock();
        let others: Vec<&AgentEntry> = registry
            .agents()
            .filter(|a| a.id != primary.id && a.addresses.mesh.is_some())
            .collect();
        let mut cannot = 0;
        let mut unheard = 0;
        for o in &others {
            let report = o
                .heartbeat
                .as_ref()
                .and_then(|h| h.mesh.as_ref())
                .and_then(|m| m.peers.iter().find(|p| p.agent_id == primary.id));
            if !fresh(coord, o, now) {
                unheard += 1;
            } else if report.is_none_or(|r| r.postgres_ok == Some(false)) {
                cannot += 1;
            }
        }
        (cannot, others.len(), unheard)
    };
    let majority_says_down = cannot * 2 > others || others == 0;
    checks.push(format!(
        "mesh: {cannot} of {others} other agents cannot reach it ({unheard} not heard from)"
    ));

    let verdict = match (agent_says_down, coordinator_says_down) {
        (true, Some(true)) if majority_says_down => PrimaryHealth::Down,
        (false, _) if role == Some(PgRole::Primary) && cannot == 0 => PrimaryHealth::Up,
        _ => PrimaryHealth::Suspect,
    };
    (verdict, checks)
}

/// Runs the health checks of every plan: each plan's primary at least every
/// `healthCheckInterval`, and every half heartbeat interval while it looks unwell, so a
/// failure is confirmed fast. Starts automatic failovers.
pub async fn watch(coord: Arc<Coordinator>) {
    let tick = (coord.config.heartbeat_interval / 2).max(Duration::from_millis(50));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_check: HashMap<String, Instant> = HashMap::new();
    let mut last_automatic: HashMap<String, Instant> = HashMap::new();
    loop {
        ticker.tick().await;
        let all = match plans::list(coord.store.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "health checks: cannot read the plans");
                continue;
            }
        };
        let now = Instant::now();
        for plan in all {
            let Some(primary) = primary_agent(&coord, plan.active_region.as_ref()) else {
                record(
                    &coord,
                    &plan.id,
                    None,
                    PrimaryHealth::Unknown,
                    vec![
                        "no agent has reported a writable PostgreSQL in the plan's active region"
                            .into(),
                    ],
                );
                continue;
            };
            if plan.active_region.is_none() && primary.last_primary_at.is_some() {
                remember_active_region(&coord, &plan.id, &primary.region);
            }
            let interval = Duration::from_millis(plan.health_check_interval.max(1000));
            let previous = coord.health.lock().get(&plan.id).map(|h| h.verdict);
            let unwell = previous.is_some_and(|v| v != PrimaryHealth::Up)
                || quick_suspicion(&coord, &primary, now);
            let due = last_check
                .get(&plan.id)
                .is_none_or(|t| now.saturating_duration_since(*t) >= interval);
            if !unwell && !due {
                continue;
            }
            last_check.insert(plan.id.clone(), now);
            let (verdict, checks) = check(&coord, &primary).await;
            if verdict != previous.unwrap_or(PrimaryHealth::Unknown) {
                info!(plan = %plan.id, primary = %primary.id, ?verdict, checks = ?checks, "health check");
            }
            record(&coord, &plan.id, Some(&primary), verdict, checks.clone());
            if verdict != PrimaryHealth::Down || !plan.automatic_failover {
                continue;
            }
            let backoff = interval.max(Duration::from_secs(30));
            if last_automatic
                .get(&plan.id)
                .is_some_and(|t| now.saturating_duration_since(*t) < backoff)
            {
                continue;
            }
            last_automatic.insert(plan.id.clone(), now);
            start_automatic(&coord, &plan, &primary, &checks);
        }
    }
}

/// Whether the primary looks unwell from what the registry already holds (no probe).
fn quick_suspicion(coord: &Coordinator, primary: &AgentEntry, now: Instant) -> bool {
    let role = primary
        .heartbeat
        .as_ref()
        .and_then(|h| h.postgres.as_ref())
        .map(|p| p.role);
    !fresh(coord, primary, now) || role != Some(PgRole::Primary)
}

fn record(
    coord: &Coordinator,
    plan: &str,
    primary: Option<&AgentEntry>,
    verdict: PrimaryHealth,
    checks: Vec<String>,
) {
    coord.health.lock().insert(
        plan.to_string(),
        PlanHealth {
            plan_id: plan.to_string(),
            primary_region: primary.map(|p| p.region.clone()),
            primary_agent: primary.map(|p| p.id.clone()),
            verdict,
            checks,
            checked_at: Utc::now(),
        },
    );
}

fn start_automatic(
    coord: &Arc<Coordinator>,
    plan: &drmesh_protocol::api::DrPlan,
    primary: &AgentEntry,
    checks: &[String],
) {
    let now = Instant::now();
    // The first of the plan's regions, other than the failed one, with a standby whose
    // agent is up.
    let target = {
        let registry = coord.registry.lock();
        plan.failover_regions
            .iter()
            .filter(|r| **r != primary.region)
            .find(|r| {
                registry.agents().any(|a| {
                    &a.region == *r
                        && fresh(coord, a, now)
                        && a.heartbeat
                            .as_ref()
                            .and_then(|h| h.postgres.as_ref())
                            .is_some_and(|p| p.role == PgRole::Standby)
                })
            })
            .cloned()
    };
    let why = format!(
        "the primary in {} ({}) is DOWN: {}",
        primary.region,
        primary.id,
        checks.join("; ")
    );
    let Some(target) = target else {
        warn!(plan = %plan.id, "automatic failover blocked: no standby is up in any failover region");
        let _ = alerts::raise(
            coord.store.as_ref(),
            Severity::Critical,
            AUTOMATIC_FAILOVER_BLOCKED,
            &plan.id,
            Some(primary.region.clone()),
            format!(
                "Plan {}: {why}, but no failover region ({}) has a standby that is up",
                plan.id,
                plans::region_list(&plan.failover_regions)
            ),
        );
        return;
    };
    let request = FailoverRequest {
        plan_id: plan.id.clone(),
        target_region: target.clone(),
        allow_data_loss: false,
    };
    match failover::start(coord, request, format!("drmesh (automatic): {why}")) {
        Ok(accepted) => warn!(
            plan = %plan.id,
            failover_id = %accepted.failover_id,
            target = %target,
            "automatic failover started: {why}"
        ),
        Err(e) => warn!(plan = %plan.id, error = %e, "automatic failover not started"),
    }
}

/// Whether `old`'s lease has surely run out, so that its agent has fenced its
/// PostgreSQL by itself (see ARCHITECTURE.md, "Failover safety argument"). `Ok` says
/// why; `Err` says what may still be renewing it.
///
/// The agent renews its lease by the coordinator's heartbeat acknowledgements or by a
/// majority of the mesh answering its pings, each dated by its own send time. So the
/// latest renewal it can hold is no later than
/// - the arrival of its newest heartbeat here (or this process's start), and
/// - for each peer, the last contact that peer reports with it (arrival of the report
///   minus the reported age; without one, the peer's start).
///
/// It needs `k = floor((n + 1) / 2)` of its `n` peers. The lease has run out once its
/// own renewal is older than lease + margin and fewer than `k` peers lack a fresh
/// report proving their contact with it is older than that too.
pub fn lease_expired(coord: &Coordinator, old: &AgentId) -> Result<String, String> {
    let now = Instant::now();
    let wait = coord.config.lease + coord.config.fence_margin;
    let registry = coord.registry.lock();
    let Some(entry) = registry.get(old) else {
        return Ok(format!("{old} is not a known agent"));
    };
    let heard = entry.last_heartbeat_instant.unwrap_or(coord.started);
    let since = now.saturating_duration_since(heard);
    if since < wait {
        return Err(format!(
            "{old} was heard from {} ms ago; its lease ({} ms) plus margin ({} ms) has not run out",
            since.as_millis(),
            coord.config.lease.as_millis(),
            coord.config.fence_margin.as_millis()
        ));
    }
    let mut unproven = Vec::new();
    let mut peers = 0usize;
    for p in registry.agents() {
        if &p.id == old || p.addresses.mesh.is_none() {
            continue;
        }
        peers += 1;
        let Some(arrived) = p.last_heartbeat_instant.filter(|_| fresh(coord, p, now)) else {
            unproven.push(format!("{} (not heard from)", p.id));
            continue;
        };
        let Some(mesh) = p.heartbeat.as_ref().and_then(|h| h.mesh.as_ref()) else {
            unproven.push(format!("{} (reports no mesh)", p.id));
            continue;
        };
        let age = mesh
            .peers
            .iter()
            .find(|r| &r.agent_id == old)
            .and_then(|r| r.contact_age_ms)
            .unwrap_or(mesh.uptime_ms);
        let contact = arrived.checked_sub(Duration::from_millis(age));
        match contact {
            Some(c) if now.saturating_duration_since(c) < wait => unproven.push(format!(
                "{} (in contact {} ms ago)",
                p.id,
                now.saturating_duration_since(c).as_millis()
            )),
            _ => {}
        }
    }
    // The size of the old agent's view, as it last reported (kept across restarts). Its
    // view may be older than ours; the smaller count makes its majority easier, so use
    // the smaller.
    let Some(view) = entry.mesh_peers else {
        return Err(format!(
            "{old} never reported its mesh view, so whether it fences itself is unknown; \
             fence it by hand (stop its PostgreSQL, leave standby.signal) or bring its agent back"
        ));
    };
    if view == 0 {
        return Err(format!(
            "{old} had no peers in its mesh view, so it does not fence itself when cut off; \
             fence it by hand (stop its PostgreSQL, leave standby.signal) or bring its agent back"
        ));
    }
    let needed = (view as usize).min(peers).div_ceil(2);
    if needed > 0 && unproven.len() >= needed {
        return Err(format!(
            "{old} may still hold its lease through the mesh: {} of its peers cannot be shown out of contact: {}",
            unproven.len(),
            unproven.join(", ")
        ));
    }
    Ok(format!(
        "{old} not heard from for {} ms, and no majority of the mesh in contact with it for longer than its lease ({} ms) plus margin ({} ms): it has fenced itself",
        since.as_millis(),
        coord.config.lease.as_millis(),
        coord.config.fence_margin.as_millis()
    ))
}
