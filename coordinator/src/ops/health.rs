//! The health checker: each DR plan's primary checked every `healthCheckInterval` (and
//! every tick while it looks unwell), the coordinator's own probe of its PostgreSQL, and
//! automatic failover. What the checks mean is decided in [`crate::rules::health`] (the
//! DOWN rule) and [`crate::rules::failover`] (the target); this module gathers the
//! witnesses, records the verdicts and acts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use drmesh_protocol::api::{
    AutomaticFailover, DrPlan, FailoverRequest, PlanHealth, PrimaryHealth, Severity,
};
use drmesh_protocol::RegionId;
use tracing::{info, warn};

use crate::rules::health::Probe;
use crate::rules::registry::AgentEntry;
use crate::state::Coordinator;
use crate::{alerts, ops::failover, plans, rules};

/// Alert kind raised when an automatic failover should start but cannot.
pub const AUTOMATIC_FAILOVER_BLOCKED: &str = "AUTOMATIC_FAILOVER_BLOCKED";

/// Alert kind raised when a primary is DOWN and automatic failover is held: the plan is
/// in maintenance mode, or in its cool-down after a failover.
pub const AUTOMATIC_FAILOVER_HELD: &str = "AUTOMATIC_FAILOVER_HELD";

/// Whether a DOWN primary of `plan` would be failed over by itself now
/// ([`rules::failover::automatic_failover`] on the plan's last promotion).
pub fn automatic_failover(
    coord: &Coordinator,
    plan: &DrPlan,
) -> Result<AutomaticFailover, crate::store::StoreError> {
    let last = failover::last_promotion(coord.store.as_ref(), &plan.id)?;
    Ok(rules::failover::automatic_failover(
        plan,
        last.as_ref(),
        coord.config.automatic_failover_cooldown,
        Utc::now(),
    ))
}

/// The agent that holds (or last held) a plan's primary
/// ([`crate::rules::health::primary_agent`]).
pub fn primary_agent(coord: &Coordinator, active: Option<&RegionId>) -> Option<AgentEntry> {
    let registry = coord.registry.lock();
    rules::health::primary_agent(registry.agents(), active).cloned()
}

/// Records where a plan's primary runs, the first time it is seen, so a restarted
/// coordinator knows which region to watch.
fn remember_active_region(coord: &Coordinator, plan: &str, region: &RegionId) {
    let mut recorded = false;
    let result = plans::update(coord.store.as_ref(), plan, |p| {
        // Only the first time: a failover moves it from then on. Where it is first seen
        // is its home, the region a failback goes to.
        if p.active_region.is_none() {
            p.active_region = Some(region.clone());
            p.home_region.get_or_insert_with(|| region.clone());
            recorded = true;
        }
        Ok(())
    });
    match result {
        Ok(_) if recorded => info!(plan, region = %region, "the plan's primary runs here"),
        Ok(_) => {}
        Err(e) => warn!(plan, error = %e, "record the plan's active region"),
    }
}

/// One evaluation of the DOWN rule for `primary`: the witnesses gathered (the probe
/// only when the agent's side already looks bad: it costs a connection), then judged.
pub async fn check(coord: &Coordinator, primary: &AgentEntry) -> (PrimaryHealth, Vec<String>) {
    let timing = coord.timing();
    let now = Instant::now();
    let agent = rules::health::agent_witness(primary, now, &timing);
    let probe = if !rules::health::needs_probe(&agent) {
        Probe::NotAsked
    } else {
        match primary.addresses.postgres {
            None => Probe::NoAddress,
            Some(addr) => {
                let timeout = (coord.config.heartbeat_interval * 2)
                    .clamp(Duration::from_millis(300), Duration::from_secs(2));
                match crate::ops::probe::select_one(coord, addr, timeout).await {
                    Ok(()) => Probe::Answers(addr),
                    Err(e) => Probe::Fails(addr, e),
                }
            }
        }
    };
    let mesh = {
        let registry = coord.registry.lock();
        rules::health::mesh_witness(registry.agents(), &primary.id, now, &timing)
    };
    let v = rules::health::verdict(&agent, &probe, &mesh);
    (v.health, v.checks)
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
        if !coord.in_office() {
            continue;
        }
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
                || rules::health::quick_suspicion(&primary, now, &coord.timing());
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
            match automatic_failover(&coord, &plan) {
                Ok(AutomaticFailover::Armed) => start_automatic(&coord, &plan, &primary, &checks),
                Ok(AutomaticFailover::Off) => {}
                Ok(held) => hold(&coord, &plan, &primary, &checks, &held),
                Err(e) => {
                    warn!(plan = %plan.id, error = %e, "automatic failover: read the plan's failovers")
                }
            }
        }
    }
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
            automatic_failover: None,
        },
    );
}

/// A DOWN primary that is not failed over because automatic failover is held: said
/// loudly, with what the operator can do.
fn hold(
    coord: &Coordinator,
    plan: &DrPlan,
    primary: &AgentEntry,
    checks: &[String],
    held: &AutomaticFailover,
) {
    let why = match held {
        AutomaticFailover::Paused { since, by } => format!(
            "the plan is in maintenance mode since {} (paused by {by}): resume it \
             (`drmesh plans resume {}`) or fail over by hand",
            since.to_rfc3339(),
            plan.id
        ),
        AutomaticFailover::CoolingDown {
            until,
            after_failover,
        } => format!(
            "failover {after_failover} promoted a server lately; no automatic failover \
             before {} (automatic_failover_cooldown); a manual failover is accepted",
            until.to_rfc3339()
        ),
        AutomaticFailover::Armed | AutomaticFailover::Off => return,
    };
    warn!(plan = %plan.id, "automatic failover held: {why}");
    let _ = alerts::raise(
        coord.store.as_ref(),
        Severity::Critical,
        AUTOMATIC_FAILOVER_HELD,
        &plan.id,
        Some(primary.region.clone()),
        format!(
            "Plan {}: the primary in {} ({}) is DOWN ({}), and automatic failover is held: {why}",
            plan.id,
            primary.region,
            primary.id,
            checks.join("; ")
        ),
    );
}

fn start_automatic(
    coord: &Arc<Coordinator>,
    plan: &drmesh_protocol::api::DrPlan,
    primary: &AgentEntry,
    checks: &[String],
) {
    let target = {
        let registry = coord.registry.lock();
        rules::failover::automatic_target(
            &rules::failover::targets(plan),
            &primary.region,
            registry.agents(),
            Instant::now(),
            &coord.timing(),
        )
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
