//! The lease arithmetic both ends of the failover safety argument rely on.
//!
//! A primary's agent keeps its PostgreSQL writable only while it holds a lease, renewed
//! by the coordinator acknowledging a heartbeat or by a majority of the mesh answering
//! its pings; each renewal is dated by the *send* time of the message it answers. The
//! agent computes when its lease ends with [`lease_end`]; the coordinator, which only
//! sees arrivals, bounds every renewal the agent can hold from above with
//! [`reported_contact`] and [`mesh_cannot_renew`], and waits [`fence_wait`] past that bound.
//!
//! Both sides count the same majority ([`peers_for_majority`]) and the same grace
//! ([`startup_grace`]). Keeping the two halves in one file is the point: the coordinator's
//! reckoning must never end before the agent's (see ARCHITECTURE.md, "Failover safety
//! argument", and the property test in `coordinator/src/rules/lease.rs`).
//!
//! Time is always an argument: the functions are generic over the clock (`Instant` in
//! the processes, plain numbers in the tests), so nothing here reads a clock.

use std::ops::{Add, Sub};
use std::time::Duration;

/// How many peers must have answered, besides the agent itself, for a majority of a mesh
/// whose view lists `peers` peers (`peers + 1` agents in all): `ceil(peers / 2)`.
///
/// A view with no peers needs none, and such an agent holds no lease at all (see
/// [`holds_lease`]).
pub fn peers_for_majority(peers: usize) -> usize {
    peers.div_ceil(2)
}

/// Whether an agent with `peers` peers in its view holds a lease (and so fences itself
/// when it runs out). A mesh of one holds none: nothing else could be promoted.
pub fn holds_lease(peers: usize) -> bool {
    peers > 0
}

/// How long a freshly started agent keeps an existing primary before it has heard from
/// anyone: half the lease, at most 2 s.
pub fn startup_grace(lease: Duration) -> Duration {
    (lease / 2).min(Duration::from_secs(2))
}

/// What the coordinator waits, past the newest renewal the old primary's agent can
/// hold, before it takes that agent as fenced: the lease plus a margin (the agent's
/// check period, `pg_ctl stop -m immediate`, clock-rate drift).
pub fn fence_wait(lease: Duration, margin: Duration) -> Duration {
    lease + margin
}

/// The agent's side: when its lease ends.
///
/// The newest renewal plus the lease, where renewals are
/// - `coordinator`: the send time of the newest heartbeat the coordinator acknowledged;
/// - `answered`: per peer, the send time of the newest ping it answered; the
///   [`peers_for_majority`]-th newest of them is the time by which a majority had
///   answered;
///
/// and a freshly started agent gets [`startup_grace`] from `started`.
pub fn lease_end<T>(
    started: T,
    lease: Duration,
    coordinator: Option<T>,
    mut answered: Vec<T>,
    peers: usize,
) -> T
where
    T: Copy + Ord + Add<Duration, Output = T>,
{
    let mut end = started + startup_grace(lease);
    if let Some(c) = coordinator {
        end = end.max(c + lease);
    }
    let needed = peers_for_majority(peers);
    if needed > 0 {
        answered.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(kth) = answered.get(needed - 1) {
            end = end.max(*kth + lease);
        }
    }
    end
}

/// The coordinator's side: the latest moment a peer can have been in contact with the
/// agent, from a report that `arrived` here saying the contact was `age` old when the
/// report was sent. The report was sent before it arrived, so `arrived - age` is never
/// earlier than the real contact. `None` when that would be before the clock's origin
/// (which the caller treats as "older than anything").
pub fn reported_contact<T>(arrived: T, age: Duration) -> Option<T>
where
    T: Copy + CheckedSub,
{
    arrived.checked_sub_duration(age)
}

/// The coordinator's side: whether a renewal bounded by `bound` is surely over at `now`,
/// having waited [`fence_wait`] past it.
pub fn waited_out<T>(bound: T, now: T, wait: Duration) -> bool
where
    T: Copy + Ord + Sub<T, Output = Duration>,
{
    now >= bound && now - bound >= wait
}

/// The coordinator's side: whether the `unproven` peers (those that cannot be shown out
/// of contact with the agent for longer than the wait) are too few for the agent to
/// hold a majority through the mesh. `view` is the size of the agent's view as
/// it last reported, `known` how many of its peers the coordinator knows; the smaller
/// one makes the agent's majority easier, so it is the one counted.
pub fn mesh_cannot_renew(view: usize, known: usize, unproven: usize) -> bool {
    let needed = peers_for_majority(view.min(known));
    needed == 0 || unproven < needed
}

/// Subtracting a duration without going before the clock's origin; implemented for
/// `std::time::Instant` and for the plain millisecond clocks of tests.
pub trait CheckedSub: Sized {
    fn checked_sub_duration(self, d: Duration) -> Option<Self>;
}

impl CheckedSub for std::time::Instant {
    fn checked_sub_duration(self, d: Duration) -> Option<Self> {
        self.checked_sub(d)
    }
}

/// A millisecond clock for deterministic tests and simulations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Add<Duration> for Millis {
    type Output = Millis;
    fn add(self, d: Duration) -> Millis {
        Millis(
            self.0
                .saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64),
        )
    }
}

impl Sub for Millis {
    type Output = Duration;
    fn sub(self, other: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(other.0))
    }
}

impl CheckedSub for Millis {
    fn checked_sub_duration(self, d: Duration) -> Option<Self> {
        let ms = u64::try_from(d.as_millis()).ok()?;
        self.0.checked_sub(ms).map(Millis)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LEASE: Duration = Duration::from_secs(5);

    fn s(n: u64) -> Millis {
        Millis(n * 1000)
    }

    #[test]
    fn the_coordinator_alone_renews_the_lease() {
        let t0 = Millis(0);
        assert_eq!(lease_end(t0, LEASE, Some(s(10)), vec![], 2), s(10) + LEASE);
        // No renewal at all: only the start-up grace.
        assert_eq!(
            lease_end(t0, LEASE, None, vec![], 2),
            t0 + startup_grace(LEASE)
        );
    }

    #[test]
    fn a_majority_of_the_mesh_renews_the_lease() {
        let t0 = Millis(0);
        // 3 agents: this one and one peer are a majority.
        assert_eq!(
            lease_end(t0, LEASE, Some(s(1)), vec![s(9)], 2),
            s(9) + LEASE
        );
        // 4 agents: two peers needed; the older of the two newest answers counts.
        assert_eq!(
            lease_end(t0, LEASE, Some(s(1)), vec![s(9), s(4), s(7)], 3),
            s(7) + LEASE
        );
        // 4 agents, one peer answering: no majority, the coordinator's renewal counts.
        assert_eq!(
            lease_end(t0, LEASE, Some(s(3)), vec![s(9)], 3),
            s(3) + LEASE
        );
        // 2 agents: the one peer is enough.
        assert_eq!(lease_end(t0, LEASE, None, vec![s(8)], 1), s(8) + LEASE);
    }

    #[test]
    fn majorities_and_grace() {
        assert_eq!(
            (0..6).map(peers_for_majority).collect::<Vec<_>>(),
            [0, 1, 1, 2, 2, 3]
        );
        assert!(!holds_lease(0));
        assert_eq!(startup_grace(LEASE), Duration::from_millis(2000));
        assert_eq!(
            startup_grace(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            fence_wait(LEASE, Duration::from_secs(1)),
            Duration::from_secs(6)
        );
    }

    #[test]
    fn reported_contact_never_goes_before_the_origin() {
        assert_eq!(
            reported_contact(Millis(5000), Duration::from_secs(2)),
            Some(Millis(3000))
        );
        assert_eq!(reported_contact(Millis(1000), Duration::from_secs(2)), None);
    }

    #[test]
    fn the_mesh_majority_counts_the_smaller_view() {
        // A view of 2 needs 1 peer: one unproven peer may still renew it.
        assert!(!mesh_cannot_renew(2, 4, 1));
        assert!(mesh_cannot_renew(2, 4, 0));
        // A view of 4 needs 2: one unproven peer cannot.
        assert!(mesh_cannot_renew(4, 4, 1));
        // No peers known: nothing can renew it through the mesh.
        assert!(mesh_cannot_renew(3, 0, 0));
    }

    proptest! {
        /// The lease never ends before the newest renewal plus the lease, whichever kind
        /// it is, and never before the start-up grace.
        #[test]
        fn the_lease_covers_every_counted_renewal(
            started in 0u64..10_000,
            coordinator in proptest::option::of(0u64..100_000),
            answered in proptest::collection::vec(0u64..100_000, 0..6),
            peers in 0usize..6,
        ) {
            let answered: Vec<Millis> = answered.into_iter().map(Millis).collect();
            let end = lease_end(Millis(started), LEASE, coordinator.map(Millis), answered.clone(), peers);
            prop_assert!(end >= Millis(started) + startup_grace(LEASE));
            if let Some(c) = coordinator {
                prop_assert!(end >= Millis(c) + LEASE);
            }
            let needed = peers_for_majority(peers);
            if needed > 0 {
                // Every renewal at which `needed` peers had answered is covered.
                let mut sorted = answered.clone();
                sorted.sort_unstable_by(|a, b| b.cmp(a));
                if let Some(kth) = sorted.get(needed - 1) {
                    prop_assert!(end >= *kth + LEASE);
                }
            }
            // And the end is one of those candidates: never later than the newest of them.
            let newest = answered.iter().copied().chain(coordinator.map(Millis)).max();
            let cap = newest.map_or(Millis(started) + startup_grace(LEASE), |n| {
                (n + LEASE).max(Millis(started) + startup_grace(LEASE))
            });
            prop_assert!(end <= cap);
        }

        /// Fewer answers than a majority never extend the lease past the coordinator's
        /// renewal.
        #[test]
        fn a_minority_of_the_mesh_does_not_renew(
            coordinator in 0u64..100_000,
            answered in proptest::collection::vec(0u64..200_000, 0..3),
            extra in 0usize..3,
        ) {
            let peers = 2 * answered.len() + 1 + extra;
            prop_assume!(answered.len() < peers_for_majority(peers));
            let end = lease_end(
                Millis(0),
                LEASE,
                Some(Millis(coordinator)),
                answered.into_iter().map(Millis).collect(),
                peers,
            );
            prop_assert_eq!(end, (Millis(coordinator) + LEASE).max(Millis(0) + startup_grace(LEASE)));
        }
    }
}
