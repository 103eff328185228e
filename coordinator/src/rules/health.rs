//! The DOWN rule: when a plan's primary is down, as a pure function of what three
//! witnesses say.
//!
//! A primary region is DOWN only when all three hold:
//! 1. its agent's heartbeats are missing for longer than the lease, or its agent keeps
//!    heartbeating but reports its PostgreSQL unreachable ([`agent_witness`]);
//! 2. the coordinator cannot reach that PostgreSQL itself (TCP + `SELECT 1`, bounded;
//!    the driver probes, [`Probe`] is what it found);
//! 3. a majority of the other agents cannot reach it either (their own probes, over
//!    the mesh network, reported in their heartbeats: [`mesh_witness`]).
//!
//! Heartbeat loss shorter than the lease never satisfies (1), so flapping links never
//! start a failover; a coordinator cut off from the primary alone fails (3); a
//! coordinator that is down evaluates nothing.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use drmesh_protocol::api::{AgentStatus, PrimaryHealth};
use drmesh_protocol::{AgentId, PgRole, RegionId};

use super::registry::AgentEntry;
use super::Timing;

/// An agent is fresh: connected, and its last heartbeat within [`Timing::fresh_age`].
pub fn fresh(a: &AgentEntry, now: Instant, timing: &Timing) -> bool {
    a.connected
        && a.last_heartbeat_instant
            .is_some_and(|t| now.saturating_duration_since(t) <= timing.fresh_age())
}

/// As [`fresh`], for an agent's status (a snapshot whose ages were taken at its `now`).
pub fn fresh_status(a: &AgentStatus, timing: &Timing) -> bool {
    a.connected
        && a.last_heartbeat_age_ms
            .is_some_and(|age| u128::from(age) <= timing.fresh_age().as_millis())
}

/// The role the agent last reported for its PostgreSQL.
pub fn reported_role(a: &AgentEntry) -> Option<PgRole> {
    a.heartbeat
        .as_ref()
        .and_then(|h| h.postgres.as_ref())
        .map(|p| p.role)
}

/// The agent that holds (or last held) a plan's primary: in the plan's active region
/// if it has one, the one that most recently reported a writable server; after a
/// restart, before any report, the active region's agent with a PostgreSQL address
/// that is not reporting a standby.
pub fn primary_agent<'a>(
    agents: impl Iterator<Item = &'a AgentEntry> + Clone,
    active: Option<&RegionId>,
) -> Option<&'a AgentEntry> {
    let in_region = |a: &&AgentEntry| active.is_none_or(|r| &a.region == r);
    agents
        .clone()
        .filter(in_region)
        .filter(|a| a.last_primary_at.is_some())
        .max_by_key(|a| a.last_primary_at)
        .or_else(|| {
            active?;
            agents.filter(in_region).find(|a| {
                a.addresses.postgres.is_some() && reported_role(a) != Some(PgRole::Standby)
            })
        })
}

/// Whether the primary looks unwell from what the registry already holds (no probe):
/// then it is checked every tick rather than every `healthCheckInterval`.
pub fn quick_suspicion(primary: &AgentEntry, now: Instant, timing: &Timing) -> bool {
    !fresh(primary, now, timing) || reported_role(primary) != Some(PgRole::Primary)
}

/// Witness 1: what the primary's own agent says.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentWitness {
    /// No heartbeat for longer than the lease.
    Silent { for_: Duration, lease: Duration },
    /// Heartbeats arrive and report the server unreachable.
    ReportsUnreachable,
    /// Heard from within the lease, reporting this role.
    Heard { ago: Duration, role: Option<PgRole> },
}

impl AgentWitness {
    pub fn says_down(&self) -> bool {
        !matches!(self, AgentWitness::Heard { .. })
    }
}

impl fmt::Display for AgentWitness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentWitness::Silent { for_, lease } => write!(
                f,
                "heartbeats: none for {} ms (lease {} ms)",
                for_.as_millis(),
                lease.as_millis()
            ),
            AgentWitness::ReportsUnreachable => {
                f.write_str("heartbeats: the agent reports its PostgreSQL unreachable")
            }
            AgentWitness::Heard { ago, role } => write!(
                f,
                "heartbeats: last {} ms ago, PostgreSQL {}",
                ago.as_millis(),
                role.map_or_else(|| "unknown".into(), |r| r.to_string())
            ),
        }
    }
}

/// Witness 1 for `primary` at `now`. An agent not heard from since this coordinator
/// started counts as silent since the start.
pub fn agent_witness(primary: &AgentEntry, now: Instant, timing: &Timing) -> AgentWitness {
    let heard = primary.last_heartbeat_instant.unwrap_or(timing.started);
    let silent_for = now.saturating_duration_since(heard);
    let role = reported_role(primary);
    if silent_for > timing.lease {
        AgentWitness::Silent {
            for_: silent_for,
            lease: timing.lease,
        }
    } else if fresh(primary, now, timing) && role == Some(PgRole::Unreachable) {
        AgentWitness::ReportsUnreachable
    } else {
        AgentWitness::Heard {
            ago: silent_for,
            role,
        }
    }
}

/// Witness 2: the coordinator's own probe of the primary's PostgreSQL. It costs a
/// connection, so the driver asks it only when witness 1 says down ([`needs_probe`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    NotAsked,
    /// The agent advertised no PostgreSQL address: nothing to probe, taken as down.
    NoAddress,
    Answers(SocketAddr),
    Fails(SocketAddr, String),
}

impl Probe {
    fn says_down(&self) -> Option<bool> {
        match self {
            Probe::NotAsked => None,
            Probe::NoAddress | Probe::Fails(..) => Some(true),
            Probe::Answers(_) => Some(false),
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::NotAsked => f.write_str("coordinator probe: not needed"),
            Probe::NoAddress => f.write_str(
                "coordinator probe: no address advertised (postgres.advertise); not probed",
            ),
            Probe::Answers(addr) => write!(f, "coordinator probe: {addr} answers SELECT 1"),
            Probe::Fails(addr, e) => write!(f, "coordinator probe: {addr} fails: {e}"),
        }
    }
}

/// Whether witness 2 must be asked.
pub fn needs_probe(agent: &AgentWitness) -> bool {
    agent.says_down()
}

/// Witness 3: the other agents' probes of the primary's PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshWitness {
    /// Fresh agents that report they cannot reach it (or report nothing about it).
    pub cannot: usize,
    /// Agents with a mesh address, other than the primary's.
    pub others: usize,
    /// Of those, not heard from lately.
    pub unheard: usize,
}

impl MeshWitness {
    /// More than half of the others cannot reach it; with no others, the mesh has no say.
    pub fn majority_says_down(&self) -> bool {
        self.cannot * 2 > self.others || self.others == 0
    }
}

impl fmt::Display for MeshWitness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mesh: {} of {} other agents cannot reach it ({} not heard from)",
            self.cannot, self.others, self.unheard
        )
    }
}

/// Witness 3 for `primary` at `now`.
pub fn mesh_witness<'a>(
    agents: impl Iterator<Item = &'a AgentEntry>,
    primary: &AgentId,
    now: Instant,
    timing: &Timing,
) -> MeshWitness {
    let mut w = MeshWitness {
        cannot: 0,
        others: 0,
        unheard: 0,
    };
    for o in agents.filter(|a| &a.id != primary && a.addresses.mesh.is_some()) {
        w.others += 1;
        let report = o
            .heartbeat
            .as_ref()
            .and_then(|h| h.mesh.as_ref())
            .and_then(|m| m.peers.iter().find(|p| &p.agent_id == primary));
        if !fresh(o, now, timing) {
            w.unheard += 1;
        } else if report.is_none_or(|r| r.postgres_ok == Some(false)) {
            w.cannot += 1;
        }
    }
    w
}

/// The verdict of one check, with what each witness said, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub health: PrimaryHealth,
    pub checks: Vec<String>,
}

/// The DOWN rule: DOWN when all three witnesses say so; UP when the agent reports a
/// primary and no other agent reports it unreachable; SUSPECT otherwise.
pub fn verdict(agent: &AgentWitness, probe: &Probe, mesh: &MeshWitness) -> Verdict {
    let role = match agent {
        AgentWitness::Heard { role, .. } => *role,
        _ => None,
    };
    let health = match (agent.says_down(), probe.says_down()) {
        (true, Some(true)) if mesh.majority_says_down() => PrimaryHealth::Down,
        (false, _) if role == Some(PgRole::Primary) && mesh.cannot == 0 => PrimaryHealth::Up,
        _ => PrimaryHealth::Suspect,
    };
    let mut checks = vec![agent.to_string()];
    if *probe != Probe::NotAsked {
        checks.push(probe.to_string());
    }
    checks.push(mesh.to_string());
    Verdict { health, checks }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 5432))
    }

    fn mesh(cannot: usize, others: usize) -> MeshWitness {
        MeshWitness {
            cannot,
            others,
            unheard: 0,
        }
    }

    fn silent() -> AgentWitness {
        AgentWitness::Silent {
            for_: Duration::from_secs(6),
            lease: Duration::from_secs(5),
        }
    }

    #[test]
    fn down_needs_all_three_witnesses() {
        let fails = Probe::Fails(addr(), "refused".into());
        assert_eq!(
            verdict(&silent(), &fails, &mesh(2, 2)).health,
            PrimaryHealth::Down
        );
        // The coordinator still reaches it: a partition between it and the agent only.
        assert_eq!(
            verdict(&silent(), &Probe::Answers(addr()), &mesh(2, 2)).health,
            PrimaryHealth::Suspect
        );
        // The mesh still reaches it: the coordinator is the one cut off.
        assert_eq!(
            verdict(&silent(), &fails, &mesh(1, 2)).health,
            PrimaryHealth::Suspect
        );
        // A mesh of one: the mesh has no say.
        assert_eq!(
            verdict(&silent(), &fails, &mesh(0, 0)).health,
            PrimaryHealth::Down
        );
        // Nothing advertised to probe counts as failing.
        assert_eq!(
            verdict(
                &AgentWitness::ReportsUnreachable,
                &Probe::NoAddress,
                &mesh(3, 4)
            )
            .health,
            PrimaryHealth::Down
        );
    }

    #[test]
    fn a_primary_heard_from_is_up_and_its_checks_read_as_before() {
        let heard = AgentWitness::Heard {
            ago: Duration::from_millis(120),
            role: Some(PgRole::Primary),
        };
        let v = verdict(&heard, &Probe::NotAsked, &mesh(0, 2));
        assert_eq!(v.health, PrimaryHealth::Up);
        assert_eq!(
            v.checks,
            [
                "heartbeats: last 120 ms ago, PostgreSQL primary",
                "mesh: 0 of 2 other agents cannot reach it (0 not heard from)"
            ]
        );
        // One agent cannot reach it: not UP any more, not DOWN either.
        assert_eq!(
            verdict(&heard, &Probe::NotAsked, &mesh(1, 2)).health,
            PrimaryHealth::Suspect
        );
        let v = verdict(
            &silent(),
            &Probe::Fails(addr(), "timeout".into()),
            &mesh(2, 2),
        );
        assert_eq!(
            v.checks,
            [
                "heartbeats: none for 6000 ms (lease 5000 ms)",
                "coordinator probe: 127.0.0.1:5432 fails: timeout",
                "mesh: 2 of 2 other agents cannot reach it (0 not heard from)"
            ]
        );
    }

    fn any_agent() -> impl Strategy<Value = AgentWitness> {
        prop_oneof![
            (0u64..20_000).prop_map(|ms| AgentWitness::Silent {
                for_: Duration::from_millis(ms),
                lease: Duration::from_secs(5)
            }),
            Just(AgentWitness::ReportsUnreachable),
            (0u64..5000, 0usize..5).prop_map(|(ms, r)| AgentWitness::Heard {
                ago: Duration::from_millis(ms),
                role: [
                    None,
                    Some(PgRole::Primary),
                    Some(PgRole::Standby),
                    Some(PgRole::Unreachable),
                    Some(PgRole::Primary)
                ][r]
            }),
        ]
    }

    fn any_probe() -> impl Strategy<Value = Probe> {
        prop_oneof![
            Just(Probe::NotAsked),
            Just(Probe::NoAddress),
            Just(Probe::Answers(addr())),
            Just(Probe::Fails(addr(), "x".into())),
        ]
    }

    proptest! {
        /// DOWN only when every witness says so; never DOWN and UP confused.
        #[test]
        fn down_only_with_every_witness(
            agent in any_agent(),
            probe in any_probe(),
            others in 0usize..7,
            cannot_frac in 0usize..8,
        ) {
            let m = mesh(cannot_frac.min(others), others);
            let v = verdict(&agent, &probe, &m);
            if v.health == PrimaryHealth::Down {
                prop_assert!(agent.says_down());
                prop_assert!(matches!(probe, Probe::NoAddress | Probe::Fails(..)));
                prop_assert!(m.others == 0 || m.cannot * 2 > m.others);
            }
            if v.health == PrimaryHealth::Up {
                prop_assert!(!agent.says_down());
                prop_assert_eq!(m.cannot, 0);
            }
            prop_assert!(v.checks.len() >= 2);
        }

        /// Silence shorter than the lease never says down, however long it gets below it.
        #[test]
        fn silence_within_the_lease_is_not_down(ms in 0u64..=5000, lease_s in 1u64..10) {
            let now = Instant::now() + Duration::from_secs(60);
            let timing = Timing {
                heartbeat_interval: Duration::from_millis(250),
                lease: Duration::from_secs(lease_s),
                fence_margin: Duration::from_secs(1),
                started: now - Duration::from_secs(60),
            };
            let entry = entry_heard(now - Duration::from_millis(ms.min(lease_s * 1000)));
            prop_assert!(!agent_witness(&entry, now, &timing).says_down());
        }
    }

    fn entry_heard(at: Instant) -> AgentEntry {
        let mut r = super::super::registry::Registry::new(super::super::registry::Liveness {
            interval: Duration::from_millis(250),
            suspect_after: 2,
            down_after: 4,
        });
        let id = AgentId::new("a1").expect("id");
        let region = RegionId::new("eu-west-1").expect("region");
        let (conn, _) = r.connect(&id, &region, "0", &[], at);
        let hb = crate::rules::fixtures::heartbeat(1, 0, None, None);
        r.heartbeat(&id, conn, hb, at, chrono::Utc::now());
        r.get(&id).cloned().expect("entry")
    }
}
