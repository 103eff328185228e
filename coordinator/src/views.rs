//! The operators' views, built from everything the coordinator knows: the DR status
//! (regions, roles, health checks, the newest failover, DR test and recovery) and the
//! monitoring dashboard. Read-only; kept out of [`crate::state`] so that the state the
//! other modules share does not import them all back.

use std::collections::BTreeMap;

use chrono::Utc;
use drmesh_protocol::api::{
    AgentCounts, AgentState, AgentStatus, CoordinatorMember, CoordinatorsStatus, Dashboard,
    DrStatus, Health, RegionStatus, Standing, SystemHealth,
};
use drmesh_protocol::{PgRole, RegionId};

use crate::leader::Leadership;
use crate::state::Coordinator;
use crate::store::settings::StoreConfig;
use crate::store::StoreError;
use crate::{alerts, ops::copies, ops::documents, ops::drtest, ops::failover, ops::recovery};

/// Each plan's newest health check, with whether a DOWN verdict would start a failover
/// now (maintenance mode, cool-down).
fn health_checks(coord: &Coordinator) -> Vec<drmesh_protocol::api::PlanHealth> {
    let checks: Vec<_> = coord.health.lock().values().cloned().collect();
    checks
        .into_iter()
        .map(|mut h| {
            h.automatic_failover = crate::plans::get(coord.store.as_ref(), &h.plan_id)
                .ok()
                .flatten()
                .and_then(|plan| crate::ops::health::automatic_failover(coord, &plan).ok());
            h
        })
        .collect()
}

/// `GET /v1/backup-recovery/disaster-recovery/status`
pub fn dr_status(coord: &Coordinator) -> DrStatus {
    let agents = coord.agent_statuses();
    let mut regions: BTreeMap<RegionId, Vec<AgentStatus>> = BTreeMap::new();
    for a in agents {
        regions.entry(a.region.clone()).or_default().push(a);
    }
    let mut primaries = Vec::new();
    let regions: Vec<RegionStatus> = regions
        .into_iter()
        .map(|(name, agents)| {
            let up = agents.iter().filter(|a| a.state == AgentState::Up).count();
            let status = if up == agents.len() {
                Health::Healthy
            } else if up == 0 {
                Health::Critical
            } else {
                Health::Degraded
            };
            let live_roles: Vec<PgRole> = agents
                .iter()
                .filter(|a| a.state != AgentState::Down)
                .filter_map(|a| a.role)
                .collect();
            let role = if live_roles.contains(&PgRole::Primary) {
                primaries.push(name.clone());
                Some(PgRole::Primary)
            } else if live_roles.contains(&PgRole::Standby) {
                Some(PgRole::Standby)
            } else {
                agents.iter().find_map(|a| a.role)
            };
            RegionStatus {
                name,
                status,
                role,
                agents,
            }
        })
        .collect();
    let any_down = regions.iter().any(|r| r.status != Health::Healthy);
    let has_database = regions.iter().any(|r| r.role.is_some());
    // Two writable primaries, or a database mesh with none, is an emergency.
    let status = if primaries.len() > 1 || (has_database && primaries.is_empty()) {
        Health::Critical
    } else if any_down {
        Health::Degraded
    } else {
        Health::Healthy
    };
    DrStatus {
        status,
        primary_region: if primaries.len() == 1 {
            primaries.pop()
        } else {
            None
        },
        epoch: coord.epoch(),
        regions,
        generated_at: Utc::now(),
        health_checks: health_checks(coord),
        failover: failover::latest(coord.store.as_ref()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "read the latest failover");
            None
        }),
        dr_test: drtest::latest(coord.store.as_ref()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "read the latest DR test");
            None
        }),
        point_in_time_recovery: recovery::latest(coord.store.as_ref()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "read the latest recovery");
            None
        }),
        coordinators: Some(coordinators(coord)),
    }
}

/// The coordinators as this one sees them.
pub fn coordinators(coord: &Coordinator) -> CoordinatorsStatus {
    let name = matches!(coord.config.store, StoreConfig::Etcd(_)).then(|| coord.name());
    let l = coord.leadership();
    let (standing, leader, error) = match &l {
        Leadership::Sole => (Standing::Sole, name.clone(), None),
        Leadership::Leader { .. } => (Standing::Leader, name.clone(), None),
        Leadership::Follower { leader, .. } => (
            Standing::Follower,
            leader.as_ref().map(|a| a.name.clone()),
            None,
        ),
        Leadership::Cut { error, .. } => (Standing::Cut, None, Some(error.clone())),
    };
    CoordinatorsStatus {
        answered_by: name,
        standing,
        members: l
            .members()
            .iter()
            .map(|m| CoordinatorMember {
                name: m.name.clone(),
                api: m.api.clone(),
                quic: m.quic.clone(),
                leader: leader.as_deref() == Some(m.name.as_str()),
            })
            .collect(),
        leader,
        term: l.term(),
        error,
    }
}

/// `GET /v1/backup-recovery/monitoring/dashboard`
pub fn dashboard(coord: &Coordinator) -> Result<Dashboard, StoreError> {
    let status = dr_status(coord);
    let mut agents = AgentCounts::default();
    for a in status.regions.iter().flat_map(|r| &r.agents) {
        match a.state {
            AgentState::Up => agents.up += 1,
            AgentState::Suspect => agents.suspect += 1,
            AgentState::Down => agents.down += 1,
        }
        agents.total += 1;
    }
    let alerts = alerts::counts(coord.store.as_ref())?;
    let health = if alerts.critical > 0 || status.status == Health::Critical {
        Health::Critical
    } else if alerts.high > 0 || status.status == Health::Degraded {
        Health::Degraded
    } else {
        Health::Healthy
    };
    Ok(Dashboard {
        alerts,
        recent_backups: documents::recent(coord.store.as_ref())?,
        system_health: SystemHealth {
            status: health,
            agents,
            regions: status.regions.len() as u64,
        },
        replication: copies::statuses(coord.store.as_ref()),
        generated_at: Utc::now(),
    })
}
