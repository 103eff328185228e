//! When a plan's fenced old primary rejoins by itself (`autoRejoin`).

use drmesh_protocol::api::{AgentState, AgentStatus, DrPlan};
use drmesh_protocol::{PgRole, RegionId};

use super::health::fresh_status;
use super::Timing;

/// The region whose fenced server should rejoin `plan`'s primary now, if any: the plan
/// asks for it (`autoRejoin`) and is not in maintenance, no failover of it runs, its one
/// live primary is in its active region, and an agent of another of its regions is up,
/// heard from and reports its server fenced (the region is back). The first such region
/// in the plan's order.
pub fn auto_rejoin(
    plan: &DrPlan,
    statuses: &[AgentStatus],
    failover_running: bool,
    timing: &Timing,
) -> Option<RegionId> {
    if !plan.auto_rejoin || plan.maintenance.is_some() || failover_running {
        return None;
    }
    let active = plan.active_region.as_ref()?;
    let live = |a: &&AgentStatus| a.state == AgentState::Up && fresh_status(a, timing);
    let primaries: Vec<&AgentStatus> = statuses
        .iter()
        .filter(live)
        .filter(|a| a.role == Some(PgRole::Primary) && !a.fenced)
        .collect();
    match primaries.as_slice() {
        [one] if &one.region == active => {}
        _ => return None,
    }
    super::failover::targets(plan)
        .into_iter()
        .filter(|r| r != active)
        .find(|r| {
            statuses
                .iter()
                .filter(live)
                .any(|a| &a.region == r && a.fenced)
        })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use drmesh_protocol::api::PLAN_ACTIVE;
    use proptest::prelude::*;

    use super::*;
    use crate::rules::testing::{agent_status, region, timing};

    fn plan(auto_rejoin: bool) -> DrPlan {
        DrPlan {
            id: "p".into(),
            name: "p".into(),
            rpo: "1h".into(),
            rto: "4h".into(),
            rpo_seconds: 3600,
            rto_seconds: 14400,
            failover_regions: vec![region("us-east-1"), region("eu-west-1")],
            health_check_interval: 1000,
            automatic_failover: true,
            auto_rejoin,
            notification_channels: vec![],
            test_interval: 3_600_000,
            retention: None,
            active_region: Some(region("us-east-1")),
            home_region: Some(region("us-west-2")),
            status: PLAN_ACTIVE.into(),
            maintenance: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn status(r: &str, role: Option<PgRole>, fenced: bool, age_ms: Option<u64>) -> AgentStatus {
        AgentStatus {
            fenced,
            ..agent_status(&format!("pg-{r}"), r, role, age_ms)
        }
    }

    #[test]
    fn a_fenced_old_primary_that_is_back_rejoins_when_the_plan_asks() {
        let t = timing();
        let back = vec![
            status("us-east-1", Some(PgRole::Primary), false, Some(100)),
            status("us-west-2", None, true, Some(100)),
        ];
        assert_eq!(
            auto_rejoin(&plan(true), &back, false, &t),
            Some(region("us-west-2"))
        );
        // Not asked for, paused, or during a failover.
        assert_eq!(auto_rejoin(&plan(false), &back, false, &t), None);
        assert_eq!(auto_rejoin(&plan(true), &back, true, &t), None);
        let mut paused = plan(true);
        paused.maintenance = Some(drmesh_protocol::api::Maintenance {
            since: Utc::now(),
            by: "op".into(),
            reason: None,
        });
        assert_eq!(auto_rejoin(&paused, &back, false, &t), None);
        // Its region still cut off (its agent not heard from): not yet.
        let cut = vec![
            status("us-east-1", Some(PgRole::Primary), false, Some(100)),
            status("us-west-2", None, true, Some(60_000)),
        ];
        assert_eq!(auto_rejoin(&plan(true), &cut, false, &t), None);
        // No live primary in the active region to follow.
        let no_primary = vec![
            status("us-east-1", Some(PgRole::Unreachable), false, Some(100)),
            status("us-west-2", None, true, Some(100)),
        ];
        assert_eq!(auto_rejoin(&plan(true), &no_primary, false, &t), None);
    }

    proptest! {
        /// A region chosen is never the active one, has a live fenced server, and the
        /// one live primary is in the active region.
        #[test]
        fn only_a_live_fenced_server_outside_the_active_region_rejoins_one_live_primary(
            agents in proptest::collection::vec(
                (0usize..3, proptest::option::of(prop_oneof![Just(PgRole::Primary), Just(PgRole::Standby)]),
                 any::<bool>(), proptest::option::of(0u64..3_000)),
                0..6,
            ),
            running in any::<bool>(),
        ) {
            let regions = ["us-west-2", "us-east-1", "eu-west-1"];
            let statuses: Vec<AgentStatus> = agents
                .iter()
                .map(|(r, role, fenced, age)| status(regions[*r], *role, *fenced, *age))
                .collect();
            let t = timing();
            let p = plan(true);
            if let Some(r) = auto_rejoin(&p, &statuses, running, &t) {
                prop_assert!(!running);
                prop_assert_ne!(Some(&r), p.active_region.as_ref());
                let live = |a: &&AgentStatus| a.state == AgentState::Up && fresh_status(a, &t);
                prop_assert!(statuses.iter().filter(live).any(|a| a.region == r && a.fenced));
                let primaries: Vec<_> = statuses
                    .iter()
                    .filter(live)
                    .filter(|a| a.role == Some(PgRole::Primary) && !a.fenced)
                    .collect();
                prop_assert_eq!(primaries.len(), 1);
                prop_assert_eq!(Some(&primaries[0].region), p.active_region.as_ref());
            }
        }
    }
}
