//! When etcd does not answer (its quorum is lost, or no member is reachable): the
//! coordinator is cut off ([`Leadership::Cut`]), decides nothing and cannot store an
//! alert. It tells every notification channel itself, once the cut has lasted
//! [`tell_after`], and again when the store answers; the episode is then kept as a
//! resolved `STORE_UNREACHABLE` alert, so the alert history holds it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use drmesh_protocol::api::Severity;
use tracing::{error, warn};

use crate::leader::Leadership;
use crate::notify::{Event, Notifier};
use crate::state::Coordinator;

pub const STORE_UNREACHABLE: &str = "STORE_UNREACHABLE";

/// How long a cut lasts before it is told: one lease, so that a member's restart or a
/// short blip (which the election rides out) pages nobody.
pub fn tell_after(leader_ttl: Duration) -> Duration {
    leader_ttl.max(Duration::from_secs(2))
}

/// A cut that has been told: since when (the campaign's clock and the wall clock) and
/// why. Only the leader writes, so a follower's cut is kept by the channels and logs.
struct Told {
    since: Instant,
    at: DateTime<Utc>,
    error: String,
}

/// Follows this coordinator's standing for as long as the process runs (etcd only).
pub async fn watch(coord: Arc<Coordinator>, leader_ttl: Duration) {
    let mut changes = coord.leadership_changes();
    let mut told: Option<Told> = None;
    loop {
        let standing = changes.borrow_and_update().clone();
        match (&standing, &told) {
            (Leadership::Cut { since, .. }, None) => {
                let wait = tell_after(leader_ttl).saturating_sub(since.elapsed());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {
                        // Still the same cut: tell it.
                        if let Leadership::Cut { since: now_since, error } = coord.leadership() {
                            if now_since == *since {
                                let at = Utc::now() - chrono::Duration::from_std(since.elapsed()).unwrap_or_default();
                                tell(&coord, unreachable_event(&coord.name(), &error, at)).await;
                                told = Some(Told { since: *since, at, error });
                            }
                        }
                        continue;
                    }
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
            (Leadership::Cut { .. }, Some(_)) => {}
            (_, Some(cut)) => {
                let lasted = cut.since.elapsed();
                tell(&coord, restored_event(&coord.name(), lasted)).await;
                tokio::spawn(keep_history(
                    coord.clone(),
                    cut.at,
                    cut.error.clone(),
                    lasted,
                ));
                told = None;
            }
            (_, None) => {}
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

fn unreachable_event(name: &str, error: &str, at: DateTime<Utc>) -> Event {
    Event::new(
        "store.unreachable",
        Severity::Critical,
        format!("coordinator {name} is cut off from etcd"),
        format!(
            "Coordinator {name} has not reached etcd since {at}: {error}. No coordinator that \
             is cut off decides anything: no health verdict, no automatic failover, no \
             schedule. Agents keep their primary's lease through the mesh majority. Restore \
             the etcd quorum (`etcdctl endpoint health`); decisions resume by themselves."
        ),
    )
}

fn restored_event(name: &str, lasted: Duration) -> Event {
    Event::new(
        "store.restored",
        Severity::Low,
        format!("coordinator {name} reaches etcd again"),
        format!(
            "Coordinator {name} reaches etcd again after {:.0} s cut off; decisions resume.",
            lasted.as_secs_f64()
        ),
    )
}

/// Tells every configured channel, each with the usual retries.
async fn tell(coord: &Arc<Coordinator>, event: Event) {
    warn!(kind = %event.kind, title = %event.title, "telling every channel");
    for name in coord.config.notify.keys() {
        if let Err(e) = Notifier::send(coord, name, &event).await {
            error!(channel = %name, error = %e, "could not tell the channel");
        }
    }
}

/// Stores the cut as a resolved CRITICAL alert (who was cut off, from when, how long)
/// once this coordinator is in office: only the leader writes. A freshly restored
/// cluster may cut it off again for a moment, or refuse a write while an election
/// settles: it keeps trying until [`HISTORY_WAIT`], then leaves its cut to the logs and
/// the channels.
async fn keep_history(coord: Arc<Coordinator>, at: DateTime<Utc>, error: String, lasted: Duration) {
    let deadline = Instant::now() + HISTORY_WAIT;
    let source = format!("coordinator:{}", coord.name());
    let message = format!(
        "coordinator {} was cut off from etcd from {at} for {:.0} s: {error}",
        coord.name(),
        lasted.as_secs_f64(),
    );
    loop {
        if coord.in_office() {
            let store = coord.store.as_ref();
            let kept = crate::alerts::raise(
                store,
                Severity::Critical,
                STORE_UNREACHABLE,
                &source,
                None,
                message.clone(),
            )
            .and_then(|_| crate::alerts::resolve_cleared(store, STORE_UNREACHABLE, &source));
            match kept {
                Ok(_) => return,
                Err(e) => warn!(error = %e, "keep the cut in the alert history (trying again)"),
            }
        }
        if Instant::now() >= deadline {
            tracing::debug!("not in office: the cut is kept by the logs and the channels only");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long a coordinator that reaches etcd again waits to take office before it gives
/// up keeping its cut in the alert history.
const HISTORY_WAIT: Duration = Duration::from_secs(30);
