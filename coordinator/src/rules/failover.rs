//! The failover's decisions: which region an automatic failover goes to, whether step 2
//! may go on (a target is up, every other possibly-writable server is fenced or has
//! surely fenced itself), whether the target is within the plan's RPO, and which
//! servers its agents must fence.
//!
//! Architecture Invariant: the target is promoted only when [`readiness`] is `Ready`;
//! that needs every server [`must_fence`] names to be either heard from with an agent
//! that can fence it (and then fenced by that agent before the promotion), or to have a
//! lease that [`super::lease`] shows ended (its agent can fence and held a lease), or to
//! be confirmed stopped by an operator. Fencing is a capability the agent reports, never
//! an assumption.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use drmesh_protocol::api::{AgentState, AgentStatus, AutomaticFailover, DrPlan};
use drmesh_protocol::{AgentId, PgRole, RegionId};

use super::health::{fresh, fresh_status, reported_role};
use super::lease::LeaseVerdict;
use super::registry::AgentEntry;
use super::Timing;

/// A plan's last failover that promoted a server: its id and when it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastPromotion {
    pub failover_id: String,
    pub started_at: DateTime<Utc>,
}

/// Whether a DOWN primary of `plan` is failed over by itself at `now`: not when the plan
/// says no, not in maintenance mode, and not within `cooldown` of the start of the plan's
/// last failover that promoted a server — so a region that flaps, or a failover that
/// went wrong after its promotion, does not chain into another failover. (A failover
/// that stopped before promoting changed nothing and does not count; a manual failover
/// is never held.)
pub fn automatic_failover(
    plan: &DrPlan,
    last: Option<&LastPromotion>,
    cooldown: Duration,
    now: DateTime<Utc>,
) -> AutomaticFailover {
    if !plan.automatic_failover {
        return AutomaticFailover::Off;
    }
    if let Some(m) = &plan.maintenance {
        return AutomaticFailover::Paused {
            since: m.since,
            by: m.by.clone(),
        };
    }
    let cooldown = chrono::Duration::from_std(cooldown).unwrap_or(chrono::Duration::MAX);
    match last {
        Some(l)
            if now
                < l.started_at
                    .checked_add_signed(cooldown)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC) =>
        {
            AutomaticFailover::CoolingDown {
                until: l
                    .started_at
                    .checked_add_signed(cooldown)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
                after_failover: l.failover_id.clone(),
            }
        }
        _ => AutomaticFailover::Armed,
    }
}

/// The regions a failover of `plan` may go to, in order of preference: its failover
/// regions, then its home region (where it ran before its first failover: a failback).
pub fn targets(plan: &DrPlan) -> Vec<RegionId> {
    let mut regions = plan.failover_regions.clone();
    if let Some(home) = &plan.home_region {
        if !regions.contains(home) {
            regions.push(home.clone());
        }
    }
    regions
}

/// The region an automatic failover goes to: the first of `failover_regions` (see
/// [`targets`]), other than the failed one, with a fresh agent reporting a standby.
pub fn automatic_target<'a>(
    failover_regions: &[RegionId],
    failed: &RegionId,
    agents: impl Iterator<Item = &'a AgentEntry> + Clone,
    now: Instant,
    timing: &Timing,
) -> Option<RegionId> {
    failover_regions
        .iter()
        .filter(|r| *r != failed)
        .find(|r| {
            agents.clone().any(|a| {
                &a.region == *r
                    && fresh(a, now, timing)
                    && reported_role(a) == Some(PgRole::Standby)
            })
        })
        .cloned()
}

/// An agent that can take the failover in `region`: fresh, UP, next to a PostgreSQL.
pub fn target_up(a: &AgentStatus, region: &RegionId, timing: &Timing) -> bool {
    &a.region == region && a.role.is_some() && a.state == AgentState::Up && fresh_status(a, timing)
}

/// Every server but the target's that is or may be writable: reported writable, not
/// answering (a crashed primary a supervisor could restart), or not heard from lately
/// (its state is unknown).
pub fn must_fence(a: &AgentStatus, target: Option<&AgentId>, timing: &Timing) -> bool {
    Some(&a.agent_id) != target
        && (!fresh_status(a, timing)
            || matches!(a.role, Some(PgRole::Primary | PgRole::Unreachable)))
}

/// What an operator said about a run's servers: which they stopped by hand and
/// confirmed (`confirm-fenced`), and whether they accepted data loss (`allowDataLoss`).
#[derive(Clone, Copy, Debug, Default)]
pub struct OperatorWord<'a> {
    pub confirmed: &'a [AgentId],
    pub allow_data_loss: bool,
}

/// Whether step 2 may go on.
#[derive(Clone, Debug, PartialEq)]
pub enum Readiness {
    /// A target is up, and every server to fence that its agent will not fence by
    /// command is accounted for: its lease ran out (its agent fenced it), or an operator
    /// confirmed it stopped, or accepted the loss (`waited_out` says which, one line
    /// each).
    Ready {
        target: Box<AgentStatus>,
        waited_out: Vec<String>,
    },
    /// Not yet: no target up (`no_target`), or servers that may still be writable
    /// (`pending`, one line each). Of those, `awaiting_operator` are the ones waiting
    /// cannot clear: only an operator's confirmation (or their agent coming back) can.
    Waiting {
        no_target: bool,
        pending: Vec<String>,
        awaiting_operator: Vec<AgentId>,
    },
}

/// Step 2's gate over the agents' statuses. `lease` judges a silent server's lease;
/// servers heard from whose agents can fence are fenced by command afterwards, so they
/// do not wait here.
///
/// Architecture Invariant: `Ready` only when every server [`must_fence`] names (but the
/// target) is heard from with an agent that can fence it, or silent with a lease that
/// [`LeaseVerdict::ended`] (its agent can fence, held a lease, and it ran out), or
/// confirmed stopped by an operator (and not reported writable), or silent past its
/// lease with the operator's `allowDataLoss`.
pub fn readiness(
    statuses: &[AgentStatus],
    target_region: &RegionId,
    lease: impl Fn(&AgentId) -> LeaseVerdict,
    operator: &OperatorWord<'_>,
    timing: &Timing,
) -> Readiness {
    let target = statuses
        .iter()
        .find(|a| target_up(a, target_region, timing));
    let mut waited_out = Vec::new();
    let mut pending = Vec::new();
    let mut awaiting_operator = Vec::new();
    for a in statuses
        .iter()
        .filter(|a| must_fence(a, target.map(|t| &t.agent_id), timing))
    {
        let id = &a.agent_id;
        let confirmed = operator.confirmed.contains(id);
        if fresh_status(a, timing) {
            if a.can_fence {
                continue; // fenced by command
            }
            if a.role == Some(PgRole::Primary) {
                // Its agent says it is writable: no confirmation stands against that.
                pending.push(format!(
                    "{id} reports its PostgreSQL writable and cannot fence it (its agent has \
                     no [database] section)"
                ));
                awaiting_operator.push(id.clone());
            } else if confirmed {
                waited_out.push(format!("{id}: stopped by hand, as an operator confirmed"));
            } else {
                pending.push(format!(
                    "{id} reports its PostgreSQL unreachable and cannot fence it (its agent \
                     has no [database] section), so it could come back writable"
                ));
                awaiting_operator.push(id.clone());
            }
            continue;
        }
        if confirmed {
            waited_out.push(format!(
                "{id} not heard from; stopped by hand, as an operator confirmed"
            ));
            continue;
        }
        let verdict = lease(id);
        let why = verdict.explain(id, timing);
        if verdict.ended() {
            waited_out.push(why);
        } else if verdict.needs_operator() && verdict.silent_past_wait() && operator.allow_data_loss
        {
            waited_out.push(format!(
                "{why}; passed because the operator allowed data loss (what it still takes is lost)"
            ));
        } else {
            if verdict.needs_operator() {
                awaiting_operator.push(id.clone());
            }
            pending.push(why);
        }
    }
    match target {
        Some(target) if pending.is_empty() => Readiness::Ready {
            target: Box::new(target.clone()),
            waited_out,
        },
        target => Readiness::Waiting {
            no_target: target.is_none(),
            pending,
            awaiting_operator,
        },
    }
}

/// The target against the plan's RPO.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rpo {
    /// Within it, or the operator accepted data loss.
    Within,
    /// Behind by `behind_bytes`, and by how long cannot be measured (no transaction
    /// replayed since the standby started): not taken as within.
    Unmeasurable { behind_bytes: u64 },
    /// Behind by more than the RPO.
    Exceeded { lag_seconds: f64 },
}

/// The RPO check of step 2.
pub fn rpo(target: &AgentStatus, rpo_seconds: u64, allow_data_loss: bool) -> Rpo {
    if allow_data_loss {
        return Rpo::Within;
    }
    if target.replication_lag_seconds.is_none() {
        if let Some(b) = target.replication_lag_bytes.filter(|b| *b > 0) {
            return Rpo::Unmeasurable { behind_bytes: b };
        }
    }
    match target.replication_lag_seconds {
        Some(lag) if lag > rpo_seconds as f64 => Rpo::Exceeded { lag_seconds: lag },
        _ => Rpo::Within,
    }
}

/// Who step 2 fences, and which server the failover moves away from.
#[derive(Clone, Debug, PartialEq)]
pub struct Fencing<'a> {
    /// Servers to fence whose agents are heard from and can fence: fenced by command.
    pub by_agent: Vec<&'a AgentStatus>,
    /// The server the failover moves away from: the one reporting a primary, else the
    /// first outside the target region with a PostgreSQL, else the first to fence.
    pub from: Option<&'a AgentStatus>,
}

pub fn fencing<'a>(
    statuses: &'a [AgentStatus],
    target: &AgentId,
    target_region: &RegionId,
    timing: &Timing,
) -> Fencing<'a> {
    let to_fence: Vec<&AgentStatus> = statuses
        .iter()
        .filter(|a| must_fence(a, Some(target), timing))
        .collect();
    let from = to_fence
        .iter()
        .find(|a| a.role == Some(PgRole::Primary))
        .or_else(|| {
            to_fence
                .iter()
                .find(|a| &a.region != target_region && a.role.is_some())
        })
        .or(to_fence.first())
        .copied();
    Fencing {
        by_agent: to_fence
            .into_iter()
            .filter(|a| fresh_status(a, timing) && a.can_fence)
            .collect(),
        from,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::rules::lease::Unproven;

    fn plan(automatic: bool, paused: bool) -> DrPlan {
        let at = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        DrPlan {
            id: "p".into(),
            name: "p".into(),
            rpo: "1h".into(),
            rto: "4h".into(),
            rpo_seconds: 3600,
            rto_seconds: 14400,
            failover_regions: vec![region("us-east-1")],
            health_check_interval: 30_000,
            automatic_failover: automatic,
            auto_rejoin: false,
            notification_channels: Vec::new(),
            test_interval: 604_800_000,
            retention: None,
            active_region: None,
            home_region: None,
            status: if paused { "MAINTENANCE" } else { "ACTIVE" }.into(),
            maintenance: paused.then(|| drmesh_protocol::api::Maintenance {
                since: at,
                by: "tok_1 (ops)".into(),
                reason: None,
            }),
            created_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn automatic_failover_is_off_paused_cooling_down_or_armed() {
        let t0 = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let ten = Duration::from_secs(600);
        let last = LastPromotion {
            failover_id: "fo_1".into(),
            started_at: t0,
        };
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        assert_eq!(
            automatic_failover(&plan(false, true), Some(&last), ten, at(1)),
            AutomaticFailover::Off
        );
        assert!(matches!(
            automatic_failover(&plan(true, true), None, ten, at(10_000)),
            AutomaticFailover::Paused { .. }
        ));
        assert_eq!(
            automatic_failover(&plan(true, false), Some(&last), ten, at(599)),
            AutomaticFailover::CoolingDown {
                until: at(600),
                after_failover: "fo_1".into()
            }
        );
        assert_eq!(
            automatic_failover(&plan(true, false), Some(&last), ten, at(600)),
            AutomaticFailover::Armed
        );
        assert_eq!(
            automatic_failover(&plan(true, false), None, ten, at(0)),
            AutomaticFailover::Armed
        );
        // No cool-down configured: armed right after.
        assert_eq!(
            automatic_failover(&plan(true, false), Some(&last), Duration::ZERO, at(0)),
            AutomaticFailover::Armed
        );
    }

    proptest! {
        /// Never armed inside the cool-down or in maintenance; always armed otherwise.
        #[test]
        fn armed_exactly_outside_the_cool_down_and_maintenance(
            automatic in any::<bool>(),
            paused in any::<bool>(),
            since_last in proptest::option::of(-100i64..2_000),
            cooldown in 0u64..1_500,
        ) {
            let t0 = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default();
            let last = since_last.map(|s| LastPromotion {
                failover_id: "fo".into(),
                started_at: t0 - chrono::Duration::seconds(s),
            });
            let v = automatic_failover(&plan(automatic, paused), last.as_ref(), Duration::from_secs(cooldown), t0);
            let cooling = since_last.is_some_and(|s| s < cooldown as i64);
            prop_assert_eq!(v == AutomaticFailover::Armed, automatic && !paused && !cooling);
        }
    }

    fn timing() -> Timing {
        Timing {
            heartbeat_interval: Duration::from_millis(500),
            lease: Duration::from_secs(5),
            fence_margin: Duration::from_secs(1),
            started: Instant::now(),
        }
    }

    fn region(r: &str) -> RegionId {
        RegionId::new(r).expect("region")
    }

    fn status(id: &str, r: &str, role: Option<PgRole>, age_ms: Option<u64>) -> AgentStatus {
        AgentStatus {
            agent_id: AgentId::new(id).expect("id"),
            region: region(r),
            state: if age_ms.is_some_and(|a| a < 1000) {
                AgentState::Up
            } else {
                AgentState::Down
            },
            role,
            version: "0".into(),
            connected: age_ms.is_some(),
            last_heartbeat_age_ms: age_ms,
            last_heartbeat_at: None,
            timeline: None,
            lsn: None,
            replication_lag_bytes: None,
            replication_lag_seconds: None,
            disk_free_bytes: None,
            last_backup_ids: vec![],
            postgres_error: None,
            fenced: false,
            postgres_address: None,
            mesh_peers: None,
            can_fence: true,
        }
    }

    fn ended(_: &AgentId) -> LeaseVerdict {
        LeaseVerdict::Ended {
            silent_for: Duration::from_secs(7),
        }
    }

    fn none() -> OperatorWord<'static> {
        OperatorWord::default()
    }

    fn held(_: &AgentId) -> LeaseVerdict {
        LeaseVerdict::HeardRecently {
            ago: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_live_old_primary_is_fenced_by_its_agent_and_does_not_wait() {
        let t = timing();
        let s = vec![
            status("old", "eu", Some(PgRole::Primary), Some(100)),
            status("new", "us", Some(PgRole::Standby), Some(100)),
            status("other", "ap", Some(PgRole::Standby), Some(100)),
        ];
        let ready = readiness(&s, &region("us"), held, &none(), &t);
        assert_eq!(
            ready,
            Readiness::Ready {
                target: Box::new(s[1].clone()),
                waited_out: vec![]
            }
        );
        let f = fencing(&s, &AgentId::new("new").expect("id"), &region("us"), &t);
        assert_eq!(f.by_agent.len(), 1);
        assert_eq!(f.from.map(|a| a.agent_id.as_str()), Some("old"));
    }

    #[test]
    fn a_silent_old_primary_waits_for_its_lease() {
        let t = timing();
        let s = vec![
            status("old", "eu", Some(PgRole::Primary), Some(9000)),
            status("new", "us", Some(PgRole::Standby), Some(100)),
        ];
        assert!(matches!(
            readiness(&s, &region("us"), held, &none(), &t),
            Readiness::Waiting { no_target: false, ref pending, ref awaiting_operator }
                if pending.len() == 1 && awaiting_operator.is_empty()
        ));
        assert!(matches!(
            readiness(&s, &region("us"), ended, &none(), &t),
            Readiness::Ready { ref waited_out, .. } if waited_out.len() == 1
        ));
        // No target up: waiting, whatever the leases.
        assert!(matches!(
            readiness(&s, &region("ap"), ended, &none(), &t),
            Readiness::Waiting {
                no_target: true,
                ..
            }
        ));
    }

    fn cannot_fence(_: &AgentId) -> LeaseVerdict {
        LeaseVerdict::CannotFence {
            silent_for: Duration::from_secs(7),
        }
    }

    #[test]
    fn a_silent_primary_that_cannot_fence_waits_for_an_operator() {
        let t = timing();
        let s = vec![
            status("old", "eu", Some(PgRole::Primary), Some(9000)),
            status("new", "us", Some(PgRole::Standby), Some(100)),
        ];
        let old = AgentId::new("old").expect("id");
        // Waiting does not clear it: only an operator.
        assert_eq!(
            readiness(&s, &region("us"), cannot_fence, &none(), &t),
            Readiness::Waiting {
                no_target: false,
                pending: vec![cannot_fence(&old).explain(&old, &t)],
                awaiting_operator: vec![old.clone()],
            }
        );
        // An unknown agent is not taken as fenced either.
        assert!(matches!(
            readiness(&s, &region("us"), |_| LeaseVerdict::UnknownAgent, &none(), &t),
            Readiness::Waiting { ref awaiting_operator, .. } if awaiting_operator == std::slice::from_ref(&old)
        ));
        // The operator stopped it by hand and said so.
        let confirmed = [old.clone()];
        let word = OperatorWord {
            confirmed: &confirmed,
            allow_data_loss: false,
        };
        assert!(matches!(
            readiness(&s, &region("us"), cannot_fence, &word, &t),
            Readiness::Ready { ref waited_out, .. } if waited_out[0].contains("operator confirmed")
        ));
        // Or accepted the loss: passed, once silent past its lease.
        let loss = OperatorWord {
            confirmed: &[],
            allow_data_loss: true,
        };
        assert!(matches!(
            readiness(&s, &region("us"), cannot_fence, &loss, &t),
            Readiness::Ready { ref waited_out, .. } if waited_out[0].contains("allowed data loss")
        ));
        // An unknown agent is not passed by allowDataLoss: nothing shows it silent.
        assert!(matches!(
            readiness(&s, &region("us"), |_| LeaseVerdict::UnknownAgent, &loss, &t),
            Readiness::Waiting { .. }
        ));
    }

    #[test]
    fn a_heard_primary_whose_agent_cannot_fence_is_not_commanded_and_waits_for_an_operator() {
        let t = timing();
        let mut old = status("old", "eu", Some(PgRole::Primary), Some(100));
        old.can_fence = false;
        let s = vec![old, status("new", "us", Some(PgRole::Standby), Some(100))];
        let id = AgentId::new("old").expect("id");
        let confirmed = [id.clone()];
        let word = OperatorWord {
            confirmed: &confirmed,
            allow_data_loss: true,
        };
        // Reported writable: neither a confirmation nor allowDataLoss passes it.
        for w in [none(), word] {
            assert!(matches!(
                readiness(&s, &region("us"), ended, &w, &t),
                Readiness::Waiting { ref awaiting_operator, .. } if awaiting_operator == std::slice::from_ref(&id)
            ));
        }
        // Stopped by hand (its agent now reports it unreachable) and confirmed: ready,
        // and no fence command goes to an agent that cannot carry it out.
        let mut s = s;
        s[0].role = Some(PgRole::Unreachable);
        assert!(matches!(
            readiness(&s, &region("us"), ended, &none(), &t),
            Readiness::Waiting { .. }
        ));
        assert!(matches!(
            readiness(&s, &region("us"), ended, &word, &t),
            Readiness::Ready { .. }
        ));
        let f = fencing(&s, &AgentId::new("new").expect("id"), &region("us"), &t);
        assert!(f.by_agent.is_empty());
        assert_eq!(f.from.map(|a| a.agent_id.as_str()), Some("old"));
    }

    #[test]
    fn the_rpo_check() {
        let mut target = status("new", "us", Some(PgRole::Standby), Some(100));
        assert_eq!(rpo(&target, 60, false), Rpo::Within);
        target.replication_lag_bytes = Some(4096);
        assert_eq!(
            rpo(&target, 60, false),
            Rpo::Unmeasurable { behind_bytes: 4096 }
        );
        assert_eq!(rpo(&target, 60, true), Rpo::Within);
        target.replication_lag_seconds = Some(61.0);
        assert_eq!(rpo(&target, 60, false), Rpo::Exceeded { lag_seconds: 61.0 });
        target.replication_lag_seconds = Some(60.0);
        assert_eq!(rpo(&target, 60, false), Rpo::Within);
    }

    fn any_status(i: usize) -> impl Strategy<Value = AgentStatus> {
        (
            0usize..3,
            0usize..4,
            proptest::option::of(0u64..5000),
            any::<bool>(),
        )
            .prop_map(move |(r, role, age, can_fence)| {
                let role = [
                    None,
                    Some(PgRole::Primary),
                    Some(PgRole::Standby),
                    Some(PgRole::Unreachable),
                ][role];
                let mut s = status(&format!("a{i}"), ["eu", "us", "ap"][r], role, age);
                s.can_fence = can_fence;
                s
            })
    }

    fn any_statuses() -> impl Strategy<Value = Vec<AgentStatus>> {
        (1usize..6).prop_flat_map(|n| (0..n).map(any_status).collect::<Vec<_>>())
    }

    /// The lease verdicts a silent agent can get, by index.
    fn verdict(i: usize) -> LeaseVerdict {
        let a = AgentId::new("p").expect("id");
        let silent_for = Duration::from_secs(7);
        match i % 7 {
            0 => LeaseVerdict::Ended { silent_for },
            1 => LeaseVerdict::HeardRecently {
                ago: Duration::from_secs(1),
            },
            2 => LeaseVerdict::CannotFence { silent_for },
            3 => LeaseVerdict::UnknownAgent,
            4 => LeaseVerdict::NoView,
            5 => LeaseVerdict::EmptyView,
            _ => LeaseVerdict::MeshMayRenew {
                unproven: vec![Unproven::NotHeard(a)],
            },
        }
    }

    proptest! {
        /// Never ready while a server that may be writable has neither been heard from
        /// with an agent that fences it by command, nor is silent with a lease shown
        /// ended (capability and lease), nor was confirmed stopped by the operator (and
        /// is not reported writable), nor is silent past its lease with the operator's
        /// allowDataLoss. The target is never fenced. Waiting on an operator only for
        /// what waiting cannot clear.
        #[test]
        fn ready_only_when_every_writable_server_is_accounted_for(
            statuses in any_statuses(),
            target_region in 0usize..3,
            verdicts in proptest::collection::vec(0usize..7, 6),
            confirmed_mask in proptest::collection::vec(any::<bool>(), 6),
            allow_data_loss in any::<bool>(),
        ) {
            let t = timing();
            let region = region(["eu", "us", "ap"][target_region]);
            let index = |id: &AgentId| id.as_str()[1..].parse::<usize>().unwrap_or(0);
            let lease = |id: &AgentId| verdict(verdicts[index(id)]);
            let confirmed: Vec<AgentId> = statuses
                .iter()
                .filter(|a| confirmed_mask[index(&a.agent_id)])
                .map(|a| a.agent_id.clone())
                .collect();
            let word = OperatorWord { confirmed: &confirmed, allow_data_loss };
            match readiness(&statuses, &region, lease, &word, &t) {
                Readiness::Ready { target: tgt, .. } => {
                    let target = tgt.agent_id.clone();
                    prop_assert!(statuses.contains(&*tgt));
                    prop_assert!(target_up(&tgt, &region, &t));
                    let f = fencing(&statuses, &target, &region, &t);
                    prop_assert!(f.by_agent.iter().all(|b| b.agent_id != target && b.can_fence));
                    for a in &statuses {
                        if a.agent_id == target {
                            continue;
                        }
                        let writable = matches!(a.role, Some(PgRole::Primary | PgRole::Unreachable));
                        let fresh = fresh_status(a, &t);
                        if !writable && fresh {
                            continue;
                        }
                        let v = lease(&a.agent_id);
                        let by_agent = f.by_agent.iter().any(|b| b.agent_id == a.agent_id);
                        let by_lease = !fresh && v.ended();
                        let by_operator = confirmed.contains(&a.agent_id)
                            && !(fresh && a.role == Some(PgRole::Primary));
                        let by_loss = !fresh && allow_data_loss && v.needs_operator() && v.silent_past_wait();
                        prop_assert!(
                            by_agent || by_lease || by_operator || by_loss,
                            "{} unaccounted for", a.agent_id
                        );
                        if fresh && a.can_fence {
                            prop_assert!(by_agent);
                        }
                    }
                }
                Readiness::Waiting { no_target, pending, awaiting_operator } => {
                    prop_assert!(no_target || !pending.is_empty());
                    prop_assert!(awaiting_operator.len() <= pending.len());
                    for id in &awaiting_operator {
                        prop_assert!(!confirmed.contains(id) || statuses.iter().any(|a| &a.agent_id == id && fresh_status(a, &t) && a.role == Some(PgRole::Primary)));
                        let a = statuses.iter().find(|a| &a.agent_id == id);
                        prop_assert!(a.is_some_and(|a| !a.can_fence || !fresh_status(a, &t)));
                    }
                }
            }
        }

        /// The RPO check is monotone: accepted at some lag, accepted at any smaller lag.
        #[test]
        fn rpo_is_monotone(lag in 0.0f64..1000.0, smaller in 0.0f64..1.0, rpo_s in 0u64..600) {
            let mut a = status("t", "us", Some(PgRole::Standby), Some(1));
            a.replication_lag_seconds = Some(lag);
            if rpo(&a, rpo_s, false) == Rpo::Within {
                a.replication_lag_seconds = Some(lag * smaller);
                prop_assert_eq!(rpo(&a, rpo_s, false), Rpo::Within);
            }
            prop_assert_eq!(rpo(&a, rpo_s, true), Rpo::Within);
        }
    }

    /// A registry with one agent per `(id, region, role, heard ms ago)`, at `now`.
    fn registry(
        agents: &[(&str, &str, PgRole, u64)],
        now: Instant,
    ) -> super::super::registry::Registry {
        use super::super::registry::{Liveness, Registry};
        let mut r = Registry::new(Liveness {
            interval: Duration::from_millis(500),
            suspect_after: 2,
            down_after: 4,
        });
        for (i, (id, reg, role, ago)) in agents.iter().enumerate() {
            let id = AgentId::new(*id).expect("id");
            let at = now - Duration::from_millis(*ago);
            let (conn, _) = r.connect(&id, &region(reg), "0", &[], at);
            let hb = crate::rules::fixtures::heartbeat(i as u64 + 1, 0, Some(*role), None);
            r.heartbeat(&id, conn, hb, at, chrono::Utc::now());
        }
        r
    }

    #[test]
    fn a_failover_may_go_to_the_failover_regions_then_back_home() {
        let mut p = plan(false, false);
        p.failover_regions = vec![region("us-east-1"), region("eu-west-1")];
        assert_eq!(targets(&p), p.failover_regions);
        p.home_region = Some(region("us-west-2"));
        assert_eq!(
            targets(&p),
            vec![
                region("us-east-1"),
                region("eu-west-1"),
                region("us-west-2")
            ]
        );
        // A home region also listed as a failover region is not repeated.
        p.home_region = Some(region("eu-west-1"));
        assert_eq!(targets(&p), p.failover_regions);
    }

    #[test]
    fn the_automatic_target_is_the_first_failover_region_with_a_fresh_standby() {
        let now = Instant::now() + Duration::from_secs(60);
        let t = timing();
        let plan = [region("eu"), region("us"), region("ap")];
        // us has a standby heard from just now; ap too: us comes first in the plan.
        let r = registry(
            &[
                ("old", "eu", PgRole::Primary, 9000),
                ("us1", "us", PgRole::Standby, 100),
                ("ap1", "ap", PgRole::Standby, 100),
            ],
            now,
        );
        assert_eq!(
            automatic_target(&plan, &region("eu"), r.agents(), now, &t),
            Some(region("us"))
        );
        // The us standby is silent past the freshness window: ap.
        let r = registry(
            &[
                ("us1", "us", PgRole::Standby, 2000),
                ("ap1", "ap", PgRole::Standby, 100),
            ],
            now,
        );
        assert_eq!(
            automatic_target(&plan, &region("eu"), r.agents(), now, &t),
            Some(region("ap"))
        );
        // Never the failed region, never a server that is not a standby.
        let r = registry(
            &[
                ("eu2", "eu", PgRole::Standby, 100),
                ("us1", "us", PgRole::Primary, 100),
            ],
            now,
        );
        assert_eq!(
            automatic_target(&plan, &region("eu"), r.agents(), now, &t),
            None
        );
    }

    proptest! {
        /// The target is a failover region other than the failed one, holds a fresh
        /// standby, and no region before it in the plan does.
        #[test]
        fn the_automatic_target_is_the_first_that_qualifies(
            agents in proptest::collection::vec((0usize..3, 0usize..3, 0u64..3000), 0..7),
            failed in 0usize..3,
        ) {
            let names = ["eu", "us", "ap"];
            let roles = [PgRole::Primary, PgRole::Standby, PgRole::Unreachable];
            let now = Instant::now() + Duration::from_secs(60);
            let t = timing();
            let ids: Vec<String> = (0..agents.len()).map(|i| format!("a{i}")).collect();
            let spec: Vec<(&str, &str, PgRole, u64)> = agents
                .iter()
                .zip(&ids)
                .map(|((r, role, ago), id)| (id.as_str(), names[*r], roles[*role], *ago))
                .collect();
            let r = registry(&spec, now);
            let plan: Vec<RegionId> = names.iter().map(|n| region(n)).collect();
            let qualifies = |reg: &RegionId| {
                reg != &region(names[failed])
                    && spec.iter().any(|(_, r2, role, ago)| {
                        &region(r2) == reg
                            && *role == PgRole::Standby
                            && u128::from(*ago) <= t.fresh_age().as_millis()
                    })
            };
            let got = automatic_target(&plan, &region(names[failed]), r.agents(), now, &t);
            prop_assert_eq!(got, plan.iter().find(|r| qualifies(r)).cloned());
        }
    }
}
