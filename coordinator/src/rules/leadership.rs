//! When a follower may depose a silent leader, and how long a leader may act on its
//! last renewal: the two halves of the coordinators' leadership argument
//! (ARCHITECTURE.md, point 9).
//!
//! The leader renews by rewriting the leader key (a transaction conditioned on its
//! term) every `ttl / 3`, besides keeping its etcd lease alive. Each rewrite gives the
//! key a new modification revision. A follower remembers the revision it last saw and
//! when it first saw it ([`Sighting`]); once that revision has stood for `ttl` on the
//! follower's own clock it may delete the key — conditioned on the revision being
//! still the same — and campaign. It does not wait for etcd to end the leader's lease:
//! etcd renews every lease when it elects a new leader of its own, so a leader lost
//! with etcd's leader would otherwise outlive its death by an etcd election plus `ttl`.
//!
//! The leader acts only until `sent + ttl * 2/3`, `sent` being the send time of its
//! newest renewal etcd confirmed ([`proof_until`]). That renewal committed after it was
//! sent, and a follower saw its revision after it committed, so a follower deposes no
//! sooner than `sent + ttl`: at least `ttl / 3` after the old leader stopped acting. A
//! renewal still in flight when the key is deleted fails its condition (the key's
//! creation revision, the term, is gone), so it extends nothing.

use std::time::{Duration, Instant};

/// The leader key's modification revision as a follower last read it, and when it
/// first read that revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub revision: i64,
    pub since: Instant,
}

impl Sighting {
    /// The sighting after reading `revision` at `now`: the same one while the revision
    /// stands, a new one when it moved.
    pub fn observe(previous: Option<Sighting>, revision: i64, now: Instant) -> Sighting {
        match previous {
            Some(s) if s.revision == revision => s,
            _ => Sighting {
                revision,
                since: now,
            },
        }
    }

    /// Whether the leader that wrote `revision` has surely stopped acting by `now`: the
    /// revision has stood for a whole `ttl` (see the module's argument).
    pub fn may_depose(&self, now: Instant, ttl: Duration) -> bool {
        now.saturating_duration_since(self.since) >= ttl
    }
}

/// Until when a leader whose newest confirmed renewal was sent at `sent` may act.
pub fn proof_until(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl * 2 / 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TTL: Duration = Duration::from_secs(3);

    #[test]
    fn a_revision_that_stands_for_the_ttl_may_be_deposed_and_one_that_moves_may_not() {
        let t0 = Instant::now();
        let s = Sighting::observe(None, 7, t0);
        let later = Sighting::observe(Some(s), 7, t0 + Duration::from_secs(2));
        assert_eq!(
            later.since, t0,
            "the same revision keeps its first sighting"
        );
        assert!(!later.may_depose(t0 + Duration::from_millis(2_999), TTL));
        assert!(later.may_depose(t0 + TTL, TTL));

        let moved = Sighting::observe(Some(later), 9, t0 + Duration::from_secs(2));
        assert_eq!(moved.since, t0 + Duration::from_secs(2));
        assert!(!moved.may_depose(t0 + TTL, TTL));
    }

    #[test]
    fn a_clock_read_before_the_sighting_deposes_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let s = Sighting::observe(None, 1, t0);
        assert!(!s.may_depose(t0 - Duration::from_secs(5), TTL));
    }

    proptest! {
        /// Whatever the delays between a renewal's send, its commit and a follower's
        /// reads, and however many renewals the follower missed, a follower deposes at
        /// least a third of the ttl after the leader stopped acting.
        #[test]
        fn a_follower_deposes_a_third_of_the_ttl_after_the_leader_stops(
            renewals in proptest::collection::vec((0u64..2_000, 0u64..2_000), 1..8),
            ttl_ms in 1_000u64..30_000,
            polls in proptest::collection::vec(0u64..60_000, 1..40),
        ) {
            let ttl = Duration::from_millis(ttl_ms);
            let t0 = Instant::now();
            // Renewal i (revision i + 1): sent `gap` after the previous one, committed
            // `commit` after its send.
            let mut sent = t0;
            let mut timeline = Vec::new(); // (revision, sent, committed)
            for (i, (gap, commit)) in renewals.iter().enumerate() {
                sent += Duration::from_millis(*gap);
                timeline.push((i as i64 + 1, sent, sent + Duration::from_millis(*commit)));
            }
            // The follower reads at sorted instants and sees the newest revision
            // committed by then (reads are linearizable).
            let mut at: Vec<Instant> = polls.iter().map(|p| t0 + Duration::from_millis(*p)).collect();
            at.sort();
            let mut sighting: Option<Sighting> = None;
            for now in at {
                let Some((rev, rev_sent, _)) = timeline.iter().rev().find(|(_, _, c)| *c <= now) else {
                    continue;
                };
                let s = Sighting::observe(sighting, *rev, now);
                sighting = Some(s);
                if s.may_depose(now, ttl) {
                    // The delete, conditioned on `rev`, commits now: renewals after it
                    // fail their condition, so `rev`'s is the leader's last confirmed
                    // one.
                    let stops = proof_until(*rev_sent, ttl);
                    prop_assert!(now >= stops + ttl / 3,
                        "deposed at {:?}, the leader acted until {:?}", now - t0, stops - t0);
                    break;
                }
            }
        }
    }
}
