//! Keeps the audit log within `[audit]` (`retention`, `max_records`): every minute, while
//! in office, the oldest records past either are deleted ([`crate::audit::prune`]).

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::state::Coordinator;

const EVERY: Duration = Duration::from_secs(60);

pub async fn keep(coord: Arc<Coordinator>) {
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !coord.in_office() {
            continue;
        }
        let (store, keeping) = (coord.store.clone(), coord.config.audit);
        let pruned = tokio::task::spawn_blocking(move || {
            crate::audit::prune(store.as_ref(), chrono::Utc::now(), keeping)
        })
        .await;
        match pruned {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(
                deleted = n,
                "audit log: the oldest records past [audit] deleted"
            ),
            Ok(Err(e)) => warn!(error = %e, "audit log: pruning failed; tried again in a minute"),
            Err(e) => warn!(error = %e, "audit log: the pruning task failed"),
        }
    }
}
