//! The coordinator's decisions, as pure functions of a snapshot and `now`.
//!
//! Nothing in here reads a clock, sleeps, touches the store or the network: no tokio,
//! quinn or actix. Each rule takes what it judges (registry entries, agent statuses,
//! plan fields) and the time as arguments and returns a typed verdict; the drivers in
//! [`crate::ops::health`], [`crate::ops::failover`], [`crate::ops::drtest`] and [`crate::ops::retention`]
//! persist what they must and act on it. That split is what lets the safety rules be
//! unit- and property-tested without processes.
//!
//! - [`registry`]: agents, connections, heartbeats; an agent's state from its heartbeat
//!   age.
//! - [`health`]: freshness, the plan's primary, and the DOWN rule's three witnesses.
//! - [`leadership`]: when a follower coordinator may depose a silent leader, and how
//!   long a leader acts on its last renewal.
//! - [`limits`]: which calls are expensive, and the per-token bucket that limits them.
//! - [`lease`]: the coordinator's half of the lease argument — whether a silent old
//!   primary has surely fenced itself.
//! - [`failover`]: choosing the failover target, which servers must be fenced, the RPO
//!   check.
//! - [`schedule`]: when DR tests and retention runs are due.
//! - [`admission`]: which failover, DR test or rejoin may start beside the running ones.
//! - [`switchover`]: whether a planned switchover may go ahead, and between whom.
//! - [`rejoin`]: when a plan's fenced old primary rejoins by itself (`autoRejoin`).

pub mod admission;
pub mod failover;
pub mod health;
pub mod leadership;
pub mod lease;
pub mod limits;
pub mod registry;
pub mod rejoin;
pub mod schedule;
pub mod switchover;
pub mod testing;

use std::time::{Duration, Instant};

/// How recent a heartbeat must be for its reports to count, in heartbeat intervals.
pub const FRESH_INTERVALS: u32 = 3;

/// The timing every rule judges by, from `coordinator.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat_interval: Duration,
    /// The lease a primary's agent holds (see `drmesh_protocol::lease`).
    pub lease: Duration,
    /// What the coordinator waits beyond the lease.
    pub fence_margin: Duration,
    /// When this coordinator process started: the last contact assumed for an agent not
    /// heard from since.
    pub started: Instant,
}

impl Timing {
    /// The age up to which an agent's heartbeat is fresh enough to act on.
    pub fn fresh_age(&self) -> Duration {
        self.heartbeat_interval * FRESH_INTERVALS
    }

    /// What the coordinator waits past a silent agent's newest possible renewal.
    pub fn fence_wait(&self) -> Duration {
        drmesh_protocol::lease::fence_wait(self.lease, self.fence_margin)
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Small builders the rules' tests share.

    use drmesh_protocol::mesh::MeshReport;
    use drmesh_protocol::{Heartbeat, PgRole, PgStatus};

    /// A heartbeat numbered `seq`, sent at `sent_at_ms`, reporting `role` (none: no
    /// PostgreSQL) and `mesh`.
    pub fn heartbeat(
        seq: u64,
        sent_at_ms: u64,
        role: Option<PgRole>,
        mesh: Option<MeshReport>,
    ) -> Heartbeat {
        Heartbeat {
            seq,
            sent_at_ms,
            postgres: role.map(|role| PgStatus {
                role,
                timeline: Some(1),
                lsn: None,
                receive_lsn: None,
                lag_seconds: None,
                server_version: None,
                error: None,
            }),
            disk_free_bytes: None,
            last_backup_ids: vec![],
            mesh,
            storage: Vec::new(),
        }
    }
}
