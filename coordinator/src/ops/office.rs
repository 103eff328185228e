//! Taking and leaving office: what a coordinator does when it becomes the leader (or
//! starts alone) and when it stops leading.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::leader::Leadership;
use crate::state::Coordinator;
use crate::store::StoreError;

/// Takes office: reads what the previous leader left ([`Coordinator::begin_term`]),
/// fails the backups, recoveries, verifications and DR tests it was running (their
/// agents report to it, not to this coordinator), declares this coordinator in office,
/// and resumes every failover stored as running — each from its stored step, with its
/// own epoch.
pub fn take(coord: &Arc<Coordinator>) -> Result<(), StoreError> {
    coord.begin_term()?;
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
                    match take(&coord) {
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
