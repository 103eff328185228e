//! Which operation may start while others run: the rule the drivers apply inside the
//! store transaction that records the new operation, so two requests can never both be
//! admitted (see `crate::ops::admission`).
//!
//! - A failover waits for no drill: a DR test restores into a throw-away directory and
//!   never touches production, so a region that dies during one is failed over at once.
//! - Everything else excludes what moves the primary: one failover at a time mesh-wide
//!   (every failover fences and promotes the same servers, whatever its plan), no
//!   failover while a rejoin points a fenced server at the primary, no rejoin or DR test
//!   while a failover runs, one DR test per plan, one rejoin at a time.
//! - A rejoin runs inside its HTTP request and holds its claim until a deadline: a claim
//!   left by a coordinator that crashed mid-rejoin stops counting once that has passed.

use chrono::{DateTime, Utc};
use drmesh_protocol::RegionId;

/// An operation asking to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Failover { plan: String },
    DrTest { plan: String },
    Rejoin { region: RegionId },
}

/// One operation the store says is running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Running {
    Failover {
        id: String,
        plan: String,
    },
    DrTest {
        id: String,
        plan: String,
    },
    Rejoin {
        id: String,
        region: RegionId,
        until: DateTime<Utc>,
    },
}

/// Why an operation is not admitted: the running one it waits for, named.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Conflict(pub String);

/// Admits `op` unless one of `running` excludes it (the first such, named).
pub fn admit(running: &[Running], op: &Operation, now: DateTime<Utc>) -> Result<(), Conflict> {
    for r in running {
        let why = match (op, r) {
            (Operation::Failover { .. }, Running::Failover { id, plan }) => {
                format!("failover {id} (plan {plan}) is still running")
            }
            (Operation::Failover { .. }, Running::Rejoin { id, region, until }) if now < *until => {
                format!("rejoin {id} of {region} is running; fail over once it has ended")
            }
            (Operation::Failover { .. }, _) => continue,
            (Operation::DrTest { .. }, Running::Failover { id, plan }) => {
                format!("failover {id} of plan {plan} is running; a DR test waits until it ends")
            }
            (Operation::DrTest { plan }, Running::DrTest { id, plan: p }) if p == plan => {
                format!("DR test {id} of plan {plan} is still in progress")
            }
            (Operation::DrTest { .. }, _) => continue,
            (Operation::Rejoin { .. }, Running::Failover { id, .. }) => {
                format!("failover {id} is running; rejoin once it has ended")
            }
            (Operation::Rejoin { .. }, Running::Rejoin { id, region, until }) if now < *until => {
                format!("rejoin {id} of {region} is already running")
            }
            (Operation::Rejoin { .. }, _) => continue,
        };
        return Err(Conflict(why));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn region(name: &str) -> RegionId {
        RegionId::new(name).expect("region")
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    fn failover(id: &str, plan: &str) -> Running {
        Running::Failover {
            id: id.into(),
            plan: plan.into(),
        }
    }

    fn drtest(id: &str, plan: &str) -> Running {
        Running::DrTest {
            id: id.into(),
            plan: plan.into(),
        }
    }

    fn rejoin(id: &str, until: i64) -> Running {
        Running::Rejoin {
            id: id.into(),
            region: region("eu-west-1"),
            until: t(until),
        }
    }

    fn op_failover(plan: &str) -> Operation {
        Operation::Failover { plan: plan.into() }
    }

    #[test]
    fn one_failover_at_a_time_whatever_its_plan_and_it_is_named() {
        let err = admit(&[failover("fo_1", "a")], &op_failover("b"), t(0)).expect_err("refused");
        assert_eq!(err.0, "failover fo_1 (plan a) is still running");
        assert_eq!(admit(&[], &op_failover("a"), t(0)), Ok(()));
    }

    #[test]
    fn a_drill_never_delays_a_failover_but_waits_for_one() {
        assert_eq!(
            admit(&[drtest("drtest_1", "a")], &op_failover("a"), t(0)),
            Ok(())
        );
        let err = admit(
            &[failover("fo_1", "a")],
            &Operation::DrTest { plan: "b".into() },
            t(0),
        )
        .expect_err("refused");
        assert!(err.0.contains("fo_1"), "{err}");
        // One DR test per plan; another plan's does not count.
        let dt = |plan: &str| Operation::DrTest { plan: plan.into() };
        assert!(admit(&[drtest("drtest_1", "a")], &dt("a"), t(0)).is_err());
        assert_eq!(admit(&[drtest("drtest_1", "a")], &dt("b"), t(0)), Ok(()));
    }

    #[test]
    fn a_rejoin_excludes_failovers_and_rejoins_until_its_deadline() {
        let rj = Operation::Rejoin {
            region: region("us-east-1"),
        };
        let err = admit(&[rejoin("rejoin_1", 10)], &op_failover("a"), t(0)).expect_err("refused");
        assert!(err.0.contains("rejoin_1"), "{err}");
        assert!(admit(&[rejoin("rejoin_1", 10)], &rj, t(9)).is_err());
        // A claim left by a crashed coordinator stops counting at its deadline.
        assert_eq!(
            admit(&[rejoin("rejoin_1", 10)], &op_failover("a"), t(10)),
            Ok(())
        );
        assert_eq!(admit(&[rejoin("rejoin_1", 10)], &rj, t(10)), Ok(()));
        assert!(admit(&[failover("fo_1", "a")], &rj, t(0)).is_err());
    }

    fn any_running() -> impl Strategy<Value = Running> {
        prop_oneof![
            (0..3u8, 0..2u8).prop_map(|(i, p)| failover(&format!("fo_{i}"), &format!("p{p}"))),
            (0..3u8, 0..2u8).prop_map(|(i, p)| drtest(&format!("drtest_{i}"), &format!("p{p}"))),
            (0..3u8, -5..5i64).prop_map(|(i, u)| rejoin(&format!("rejoin_{i}"), u)),
        ]
    }

    fn any_op() -> impl Strategy<Value = Operation> {
        prop_oneof![
            (0..2u8).prop_map(|p| Operation::Failover {
                plan: format!("p{p}")
            }),
            (0..2u8).prop_map(|p| Operation::DrTest {
                plan: format!("p{p}")
            }),
            Just(Operation::Rejoin {
                region: region("eu-west-1")
            }),
        ]
    }

    /// What an admitted operation adds to the running set.
    fn started(op: &Operation, n: usize) -> Running {
        match op {
            Operation::Failover { plan } => failover(&format!("new_{n}"), plan),
            Operation::DrTest { plan } => drtest(&format!("new_{n}"), plan),
            Operation::Rejoin { .. } => rejoin(&format!("new_{n}"), 100),
        }
    }

    proptest! {
        /// Admitting requests one after another (as the store transaction serializes
        /// them) never leaves two failovers, a failover beside a live rejoin, or two
        /// DR tests of a plan running; and the verdict does not depend on the order of
        /// the running list.
        #[test]
        fn serialized_admissions_keep_the_exclusions(
            initial in proptest::collection::vec(any_running(), 0..3),
            requests in proptest::collection::vec(any_op(), 1..12),
        ) {
            let now = t(0);
            let live = |r: &Running| !matches!(r, Running::Rejoin { until, .. } if *until <= now);
            // Only a consistent starting point: what admit itself could have built.
            let mut running: Vec<Running> = Vec::new();
            for r in initial.into_iter().filter(|r| live(r)) {
                let op = match &r {
                    Running::Failover { plan, .. } => Operation::Failover { plan: plan.clone() },
                    Running::DrTest { plan, .. } => Operation::DrTest { plan: plan.clone() },
                    Running::Rejoin { region, .. } => Operation::Rejoin { region: region.clone() },
                };
                if admit(&running, &op, now).is_ok() {
                    running.push(r);
                }
            }
            for (n, op) in requests.iter().enumerate() {
                let verdict = admit(&running, op, now);
                let mut reversed = running.clone();
                reversed.reverse();
                prop_assert_eq!(verdict.is_ok(), admit(&reversed, op, now).is_ok());
                if verdict.is_ok() {
                    running.push(started(op, n));
                }
                let failovers = running.iter().filter(|r| matches!(r, Running::Failover { .. })).count();
                let rejoins = running.iter().filter(|r| matches!(r, Running::Rejoin { .. }) && live(r)).count();
                prop_assert!(failovers <= 1);
                prop_assert!(rejoins <= 1);
                prop_assert!(failovers + rejoins <= 1);
                for plan in ["p0", "p1"] {
                    let tests = running
                        .iter()
                        .filter(|r| matches!(r, Running::DrTest { plan: p, .. } if p == plan))
                        .count();
                    prop_assert!(tests <= 1);
                }
            }
        }
    }
}
