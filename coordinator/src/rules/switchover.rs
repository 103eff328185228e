//! Whether a planned switchover may go ahead: a live primary to stop cleanly, and a live
//! standby close enough behind it to take over without holding writes back for long.

use drmesh_protocol::api::AgentStatus;
use drmesh_protocol::{AgentId, PgRole, RegionId};

use super::failover::target_up;
use super::health::fresh_status;
use super::Timing;

/// How far behind (in WAL bytes) the target may be when a switchover starts: writes
/// stop while it catches up, so it must already be close.
pub const MAX_LAG_BYTES: u64 = 64 << 20;

/// The two servers of a switchover.
#[derive(Clone, Debug, PartialEq)]
pub struct Parties<'a> {
    /// The primary to stop cleanly.
    pub primary: &'a AgentStatus,
    /// The standby to promote once it has replayed the primary's last WAL.
    pub target: &'a AgentStatus,
}

/// The switchover's parties among `statuses`, or why it cannot go ahead (one sentence
/// an operator can act on). `old`: the old primary a resumed or retried switchover
/// already chose (stopped by now, so no longer reporting a primary).
pub fn parties<'a>(
    statuses: &'a [AgentStatus],
    target_region: &RegionId,
    old: Option<&AgentId>,
    timing: &Timing,
) -> Result<Parties<'a>, String> {
    let target = statuses
        .iter()
        .find(|a| target_up(a, target_region, timing) && a.role == Some(PgRole::Standby))
        .ok_or_else(|| {
            format!(
                "no agent in {target_region} is up and heard from next to a standby: a \
                 switchover needs one to take over"
            )
        })?;
    let primary = match old {
        Some(old) => statuses
            .iter()
            .find(|a| &a.agent_id == old && fresh_status(a, timing))
            .ok_or_else(|| {
                format!(
                    "{old}, the primary this switchover stops, is not heard from: start its \
                     agent again, or fail over instead"
                )
            })?,
        None => {
            let primaries: Vec<&AgentStatus> = statuses
                .iter()
                .filter(|a| a.role == Some(PgRole::Primary) && fresh_status(a, timing))
                .collect();
            match primaries.as_slice() {
                [one] => *one,
                [] => {
                    return Err(
                        "no primary is heard from: a switchover stops a live primary \
                                cleanly; fail over instead"
                            .into(),
                    )
                }
                many => {
                    return Err(format!(
                        "{} servers report a primary ({}): resolve that first",
                        many.len(),
                        many.iter()
                            .map(|a| a.agent_id.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            }
        }
    };
    if &primary.region == target_region {
        return Err(format!(
            "the primary already runs in {target_region} ({})",
            primary.agent_id
        ));
    }
    if let Some(lag) = target.replication_lag_bytes.filter(|l| *l > MAX_LAG_BYTES) {
        return Err(format!(
            "the standby in {target_region} is {lag} bytes behind (more than {MAX_LAG_BYTES}): \
             writes would stop while it catches up; try again once it has"
        ));
    }
    Ok(Parties { primary, target })
}

#[cfg(test)]
mod tests {
    use drmesh_protocol::api::AgentState;
    use proptest::prelude::*;

    use super::*;
    use crate::rules::testing::{agent_status, region, timing};

    fn status(id: &str, region: &str, role: Option<PgRole>, age_ms: Option<u64>) -> AgentStatus {
        let mut s = agent_status(id, region, role, age_ms);
        s.state = AgentState::Up;
        s
    }

    #[test]
    fn a_live_primary_and_a_live_standby_switch_over() {
        let s = vec![
            status("pg-west", "us-west-2", Some(PgRole::Primary), Some(100)),
            status("pg-east", "us-east-1", Some(PgRole::Standby), Some(100)),
        ];
        let p = parties(&s, &region("us-east-1"), None, &timing()).expect("parties");
        assert_eq!(p.primary.agent_id.as_str(), "pg-west");
        assert_eq!(p.target.agent_id.as_str(), "pg-east");
    }

    #[test]
    fn no_switchover_without_a_live_primary_or_standby_or_with_a_far_behind_one() {
        let t = timing();
        let east = region("us-east-1");
        // The primary is silent: that is a failover's case.
        let s = vec![
            status("pg-west", "us-west-2", Some(PgRole::Primary), Some(60_000)),
            status("pg-east", "us-east-1", Some(PgRole::Standby), Some(100)),
        ];
        assert!(parties(&s, &east, None, &t)
            .expect_err("refused")
            .contains("fail over instead"));
        // No standby in the target region.
        let s = vec![
            status("pg-west", "us-west-2", Some(PgRole::Primary), Some(100)),
            status("pg-east", "us-east-1", Some(PgRole::Unreachable), Some(100)),
        ];
        assert!(parties(&s, &east, None, &t).is_err());
        // Far behind.
        let mut s = vec![
            status("pg-west", "us-west-2", Some(PgRole::Primary), Some(100)),
            status("pg-east", "us-east-1", Some(PgRole::Standby), Some(100)),
        ];
        s[1].replication_lag_bytes = Some(MAX_LAG_BYTES + 1);
        assert!(parties(&s, &east, None, &t)
            .expect_err("refused")
            .contains("behind"));
        // A resumed switchover finds its stopped old primary by id.
        let s = vec![
            status("pg-west", "us-west-2", None, Some(100)),
            status("pg-east", "us-east-1", Some(PgRole::Standby), Some(100)),
        ];
        let old = AgentId::new("pg-west").expect("id");
        assert_eq!(
            parties(&s, &east, Some(&old), &t)
                .expect("parties")
                .primary
                .agent_id,
            old
        );
    }

    fn any_role() -> impl Strategy<Value = Option<PgRole>> {
        prop_oneof![
            Just(None),
            Just(Some(PgRole::Primary)),
            Just(Some(PgRole::Standby)),
            Just(Some(PgRole::Unreachable)),
        ]
    }

    proptest! {
        /// Whatever the statuses: the parties are two different servers in different
        /// regions, both heard from lately; the target is a standby in the target region,
        /// and a primary chosen afresh is the only fresh one reporting a primary.
        #[test]
        fn the_parties_are_live_distinct_and_the_primary_is_the_only_one(
            agents in proptest::collection::vec(
                (0usize..3, any_role(), proptest::option::of(0u64..5_000), 0u64..(2 * MAX_LAG_BYTES)),
                1..6,
            ),
        ) {
            let regions = ["us-west-2", "us-east-1", "eu-west-1"];
            let statuses: Vec<AgentStatus> = agents
                .iter()
                .enumerate()
                .map(|(i, (r, role, age, lag))| {
                    let mut s = status(&format!("pg-{i}"), regions[*r], *role, *age);
                    s.replication_lag_bytes = Some(*lag);
                    s
                })
                .collect();
            let t = timing();
            let target_region = region("us-east-1");
            if let Ok(p) = parties(&statuses, &target_region, None, &t) {
                prop_assert_ne!(&p.primary.agent_id, &p.target.agent_id);
                prop_assert_ne!(&p.primary.region, &p.target.region);
                prop_assert!(fresh_status(p.primary, &t) && fresh_status(p.target, &t));
                prop_assert_eq!(p.target.role, Some(PgRole::Standby));
                prop_assert_eq!(&p.target.region, &target_region);
                prop_assert!(p.target.replication_lag_bytes.unwrap_or(0) <= MAX_LAG_BYTES);
                let fresh_primaries = statuses
                    .iter()
                    .filter(|a| a.role == Some(PgRole::Primary) && fresh_status(a, &t))
                    .count();
                prop_assert_eq!(fresh_primaries, 1);
                prop_assert_eq!(p.primary.role, Some(PgRole::Primary));
            }
        }
    }
}
