//! Fixtures the rules' tests share: the timing of a 500 ms heartbeat and a 5 s lease,
//! and an agent's status as the registry reports it.

#![cfg(test)]

use std::time::Duration;

use drmesh_protocol::api::{AgentState, AgentStatus};
use drmesh_protocol::{AgentId, PgRole, RegionId};

use super::Timing;

/// A 500 ms heartbeat, a 5 s lease, a 1 s margin, started now.
pub fn timing() -> Timing {
    Timing {
        heartbeat_interval: Duration::from_millis(500),
        lease: Duration::from_secs(5),
        fence_margin: Duration::from_secs(1),
        started: std::time::Instant::now(),
    }
}

pub fn region(r: &str) -> RegionId {
    RegionId::new(r).expect("region")
}

/// Agent `id` in `region` next to a server in `role`, last heard from `age_ms` ago
/// (`None`: not connected), UP when heard from within a second, able to fence, not
/// fenced, nothing behind.
pub fn agent_status(
    id: &str,
    region: &str,
    role: Option<PgRole>,
    age_ms: Option<u64>,
) -> AgentStatus {
    AgentStatus {
        agent_id: AgentId::new(id).expect("id"),
        region: RegionId::new(region).expect("region"),
        state: if age_ms.is_some_and(|a| a < 1000) {
            AgentState::Up
        } else {
            AgentState::Down
        },
        role,
        version: "test".into(),
        connected: age_ms.is_some(),
        last_heartbeat_age_ms: age_ms,
        last_heartbeat_at: None,
        timeline: Some(1),
        lsn: None,
        replication_lag_bytes: Some(0),
        replication_lag_seconds: Some(0.0),
        disk_free_bytes: None,
        last_backup_ids: Vec::new(),
        postgres_error: None,
        fenced: false,
        postgres_address: None,
        mesh_peers: None,
        can_fence: true,
    }
}
