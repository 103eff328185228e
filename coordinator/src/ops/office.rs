//! Taking and leaving office: what a coordinator does when it becomes the leader (or
//! starts alone) and when it stops leading.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::leader::Leadership;
use crate::state::Coordinator;
use crate::store::StoreError;

/// Takes office: reads what the previous leader left ([`Coordinator::begin_term`]),
/// fails the backups, recoveries, verifications and DR tests it was running (their
/// agents report to it, not to this coordinator), declares this coordinator in office,
/// and resumes every failover stored as running — each from its stored step, with its
/// own epoch.
pub fn take(coord: &Arc<Coordinator>, acts_from: Instant) -> Result<(), StoreError> {
    coord.begin_term(acts_from)?;
    let store = coord.store.as_ref();
    let interrupted = crate::ops::documents::fail_interrupted(store)?
        + crate::ops::database::fail_interrupted(store)?
        + crate::ops::recovery::fail_interrupted(store)?
        + crate::ops::verification::fail_interrupted(store)?
        + crate::ops::drtest::fail_interrupted(store)?;
    if interrupted > 0 {
        warn!(
            count = interrupted,
            "jobs the previous term left running are marked FAILED"
        );
    }
    coord.open_term();
    let resumed = crate::ops::failover::resume_all(coord)?;
    if resumed > 0 {
        warn!(
            count = resumed,
            "failovers the previous term left running resume"
        );
    }
    Ok(())
}

/// Follows this coordinator's standing for as long as the process runs: takes office
/// when it is elected, leaves it when it is not any more.
pub async fn follow(coord: Arc<Coordinator>) {
    let mut changes = coord.leadership_changes();
    loop {
        let standing = changes.borrow_and_update().clone();
        match (coord.in_office(), standing.leads()) {
            (false, true) => {
                // Retried while this coordinator still leads: a store error must not
                // leave an elected leader idle.
                let mut pause = Duration::from_millis(200);
                while coord.leadership().leads() && !coord.in_office() {
                    match take(&coord, term_start(&standing, leader_ttl(&coord))) {
                        Ok(()) => info!(term = ?standing.term(), "in office"),
                        Err(e) => {
                            error!(error = %e, "taking office failed; trying again");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
            (true, false) => {
                warn!(standing = ?describe(&standing), "leaving office");
                coord.end_term();
            }
            _ => {}
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// When the previous term's acknowledgements surely ended, for a coordinator taking
/// office in `standing`: an elected leader's predecessor acknowledged nothing after its
/// proof ran out ([`crate::leader::Proof`]: a confirmed renewal's send time + 2/3 of the
/// lease), and the leader key outlives that renewal by the whole lease, so every
/// acknowledgement of an earlier term precedes this election by at least a third of the
/// lease. A coordinator alone starts its clock now.
pub fn term_start(standing: &Leadership, leader_ttl: Option<Duration>) -> Instant {
    match (standing, leader_ttl) {
        (Leadership::Leader { since, .. }, Some(ttl)) => {
            since.checked_sub(ttl / 3).unwrap_or(*since)
        }
        _ => Instant::now(),
    }
}

fn leader_ttl(coord: &Coordinator) -> Option<Duration> {
    match &coord.config.store {
        crate::store::settings::StoreConfig::Etcd(s) => Some(s.leader_ttl),
        crate::store::settings::StoreConfig::Redb { .. } => None,
    }
}

fn describe(l: &Leadership) -> String {
    match l {
        Leadership::Sole => "sole".into(),
        Leadership::Leader { term, .. } => format!("leader, term {term}"),
        Leadership::Follower { leader, term, .. } => format!(
            "follower of {} (term {})",
            leader.as_ref().map_or("nobody yet", |l| l.name.as_str()),
            term.map_or("-".into(), |t| t.to_string())
        ),
        Leadership::Cut { error, .. } => format!("cut off from etcd: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_elected_leader_counts_from_a_third_of_the_lease_before_its_election() {
        let since = Instant::now();
        let leader = Leadership::Leader {
            term: 7,
            since,
            members: Vec::new(),
        };
        let ttl = Duration::from_secs(3);
        assert_eq!(
            term_start(&leader, Some(ttl)),
            since - Duration::from_secs(1)
        );
        // Alone, or without a lease: now.
        let before = Instant::now();
        assert!(term_start(&Leadership::Sole, None) >= before);
        assert!(term_start(&leader, None) >= before);
    }
}
