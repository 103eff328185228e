//! Alerts: raised by the coordinator (an agent DOWN, later a backup failed), acknowledged
//! and resolved by operators, or resolved by the system when the condition clears.

use chrono::Utc;
use drmesh_protocol::api::{Alert, AlertCounts, AlertStatus, Severity};
use drmesh_protocol::ids::runbook_id;
use drmesh_protocol::RegionId;

use crate::error::Error;
use crate::store::{Namespace, Store, StoreError, StoreExt};

/// Alert kind raised when an agent stops heartbeating.
pub const AGENT_DOWN: &str = "AGENT_DOWN";
/// A backup (database or documents) failed.
pub const BACKUP_FAILED: &str = "BACKUP_FAILED";
/// A backup did not finish within its timeout.
pub const BACKUP_TIMEOUT: &str = "BACKUP_TIMEOUT";
/// Copying a backup to another location failed.
pub const REPLICATION_FAILED: &str = "REPLICATION_FAILED";
/// A verification found a backup damaged or unrestorable.
pub const VERIFICATION_FAILED: &str = "VERIFICATION_FAILED";

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct AlertFilter {
    pub severity: Option<Severity>,
    pub status: Option<AlertStatus>,
}

/// All alerts, newest first.
pub fn list(store: &dyn Store, filter: &AlertFilter) -> Result<Vec<Alert>, StoreError> {
    let mut alerts: Vec<Alert> = store.scan_json(Namespace::Alerts, "")?;
    alerts.retain(|a| {
        filter.severity.is_none_or(|s| a.severity == s)
            && filter.status.is_none_or(|s| a.status == s)
    });
    alerts.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    Ok(alerts)
}

fn open_for(store: &dyn Store, kind: &str, source: &str) -> Result<Vec<Alert>, StoreError> {
    let mut all: Vec<Alert> = store.scan_json(Namespace::Alerts, "")?;
    all.retain(|a| a.kind == kind && a.source == source && a.status != AlertStatus::Resolved);
    Ok(all)
}

/// Raises an alert and logs it once when it is new; a store error is logged, not
/// returned (for the drivers, which go on either way).
pub fn raise_logged(
    store: &dyn Store,
    severity: Severity,
    kind: &str,
    source: &str,
    region: Option<drmesh_protocol::RegionId>,
    message: String,
) {
    match raise(store, severity, kind, source, region, message) {
        Ok((alert, true)) => tracing::warn!(alert_id = %alert.id, kind, source, "alert raised"),
        Ok((_, false)) => {}
        Err(e) => tracing::error!(kind, source, error = %e, "raise alert"),
    }
}

/// Raises an alert unless one of the same kind about the same source is still open; then
/// that one is returned and nothing is written. Checked and written in one transaction,
/// so two raisers at once make one alert.
pub fn raise(
    store: &dyn Store,
    severity: Severity,
    kind: &str,
    source: &str,
    region: Option<RegionId>,
    message: String,
) -> Result<(Alert, bool), StoreError> {
    store.atomically(|tx| {
        let open = tx
            .scan_json::<Alert>(Namespace::Alerts, "")?
            .into_iter()
            .find(|a| a.kind == kind && a.source == source && a.status != AlertStatus::Resolved);
        if let Some(existing) = open {
            return Ok((existing, false));
        }
        let alert = new_alert(severity, kind, source, region.clone(), message.clone());
        tx.put_json(Namespace::Alerts, &alert.id, &alert)?;
        Ok((alert, true))
    })
}

/// The most alerts written in one store transaction (an etcd transaction takes at most
/// 128 operations by default).
const WRITES_PER_TRANSACTION: usize = 100;

/// [`raise`] for many sources of one kind at once: one scan of the alerts per
/// transaction of at most [`WRITES_PER_TRANSACTION`] writes, rather than one per source.
/// A source with an open alert of `kind` gets none. Returns the alerts raised.
pub fn raise_each(
    store: &dyn Store,
    severity: Severity,
    kind: &str,
    items: &[(String, Option<RegionId>, String)],
) -> Result<Vec<Alert>, StoreError> {
    let mut raised: Vec<Alert> = Vec::new();
    for chunk in items.chunks(WRITES_PER_TRANSACTION) {
        let mut batch = store.atomically(|tx| {
            let open: std::collections::HashSet<String> = tx
                .scan_json::<Alert>(Namespace::Alerts, "")?
                .into_iter()
                .filter(|a| a.kind == kind && a.status != AlertStatus::Resolved)
                .map(|a| a.source)
                .collect();
            let mut batch: Vec<Alert> = Vec::new();
            for (source, region, message) in chunk {
                if open.contains(source) || batch.iter().any(|a| &a.source == source) {
                    continue;
                }
                let alert = new_alert(severity, kind, source, region.clone(), message.clone());
                tx.put_json(Namespace::Alerts, &alert.id, &alert)?;
                batch.push(alert);
            }
            Ok::<_, StoreError>(batch)
        })?;
        raised.append(&mut batch);
    }
    Ok(raised)
}

/// [`resolve_cleared`] for many sources of one kind at once, in transactions of at most
/// [`WRITES_PER_TRANSACTION`] writes. Returns the alerts resolved.
pub fn resolve_cleared_each(
    store: &dyn Store,
    kind: &str,
    sources: &[String],
) -> Result<Vec<Alert>, StoreError> {
    let wanted: std::collections::HashSet<&str> = sources.iter().map(String::as_str).collect();
    let mut resolved: Vec<Alert> = Vec::new();
    loop {
        let mut batch = store.atomically(|tx| {
            let open: Vec<Alert> = tx
                .scan_json::<Alert>(Namespace::Alerts, "")?
                .into_iter()
                .filter(|a| {
                    a.kind == kind
                        && a.status != AlertStatus::Resolved
                        && wanted.contains(a.source.as_str())
                })
                .take(WRITES_PER_TRANSACTION)
                .collect();
            let mut batch = Vec::new();
            for mut alert in open {
                alert.status = AlertStatus::Resolved;
                alert.resolved_at = Some(Utc::now());
                alert.resolved_by = Some("system".into());
                tx.put_json(Namespace::Alerts, &alert.id, &alert)?;
                batch.push(alert);
            }
            Ok::<_, StoreError>(batch)
        })?;
        if batch.is_empty() {
            return Ok(resolved);
        }
        resolved.append(&mut batch);
    }
}

fn new_alert(
    severity: Severity,
    kind: &str,
    source: &str,
    region: Option<RegionId>,
    message: String,
) -> Alert {
    Alert {
        id: runbook_id("alert"),
        severity,
        kind: kind.to_string(),
        // Viewers read alerts: a password or URL credential in an error is masked.
        message: drmesh_protocol::redact::text(&message),
        source: source.to_string(),
        region,
        status: AlertStatus::Open,
        created_at: Utc::now(),
        acknowledged_by: None,
        acknowledged_at: None,
        resolved_at: None,
        resolved_by: None,
    }
}

/// Resolves every open alert of `kind` about `source` because the condition cleared.
pub fn resolve_cleared(
    store: &dyn Store,
    kind: &str,
    source: &str,
) -> Result<Vec<Alert>, StoreError> {
    let mut resolved = Vec::new();
    for mut alert in open_for(store, kind, source)? {
        alert.status = AlertStatus::Resolved;
        alert.resolved_at = Some(Utc::now());
        alert.resolved_by = Some("system".into());
        store.put_json(Namespace::Alerts, &alert.id, &alert)?;
        resolved.push(alert);
    }
    Ok(resolved)
}

fn load(store: &dyn Store, id: &str) -> Result<Alert, Error> {
    store
        .get_json(Namespace::Alerts, id)?
        .ok_or_else(|| Error::NotFound(format!("no alert {id}")))
}

pub fn acknowledge(store: &dyn Store, id: &str, by: &str) -> Result<Alert, Error> {
    let mut alert = load(store, id)?;
    if alert.status == AlertStatus::Resolved {
        return Err(Error::Conflict(format!("alert {id} is already resolved")));
    }
    alert.status = AlertStatus::Acknowledged;
    alert.acknowledged_by = Some(by.to_string());
    alert.acknowledged_at = Some(Utc::now());
    store.put_json(Namespace::Alerts, id, &alert)?;
    Ok(alert)
}

pub fn resolve(store: &dyn Store, id: &str, by: &str) -> Result<Alert, Error> {
    let mut alert = load(store, id)?;
    if alert.status == AlertStatus::Resolved {
        return Err(Error::Conflict(format!("alert {id} is already resolved")));
    }
    alert.status = AlertStatus::Resolved;
    alert.resolved_at = Some(Utc::now());
    alert.resolved_by = Some(by.to_string());
    store.put_json(Namespace::Alerts, id, &alert)?;
    Ok(alert)
}

/// Open (not resolved) alerts by severity.
pub fn counts(store: &dyn Store) -> Result<AlertCounts, StoreError> {
    let mut c = AlertCounts::default();
    for a in list(store, &AlertFilter::default())? {
        if a.status == AlertStatus::Resolved {
            continue;
        }
        match a.severity {
            Severity::Critical => c.critical += 1,
            Severity::High => c.high += 1,
            Severity::Medium => c.medium += 1,
            Severity::Low => c.low += 1,
        }
        c.total += 1;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;

    fn store() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("s.redb")).expect("open");
        (dir, store)
    }

    #[test]
    fn many_alerts_are_raised_and_cleared_in_batches_once_each() {
        let (_d, s) = store();
        let (_, fresh) =
            raise(&s, Severity::Critical, AGENT_DOWN, "a-0", None, "m".into()).expect("raise");
        assert!(fresh);
        // 250 sources (more than one transaction), one already open, one twice.
        let mut items: Vec<(String, Option<RegionId>, String)> = (0..250)
            .map(|i| (format!("a-{i}"), None, format!("down {i}")))
            .collect();
        items.push(("a-7".into(), None, "again".into()));
        let raised = raise_each(&s, Severity::Critical, AGENT_DOWN, &items).expect("raise");
        assert_eq!(raised.len(), 249);
        let open = |s: &RedbStore| {
            list(s, &AlertFilter::default())
                .expect("list")
                .into_iter()
                .filter(|a| a.status != AlertStatus::Resolved)
                .count()
        };
        assert_eq!(open(&s), 250);
        // Raised again: nothing new.
        assert!(raise_each(&s, Severity::Critical, AGENT_DOWN, &items)
            .expect("raise")
            .is_empty());
        let back: Vec<String> = (0..200).map(|i| format!("a-{i}")).collect();
        let resolved = resolve_cleared_each(&s, AGENT_DOWN, &back).expect("resolve");
        assert_eq!(resolved.len(), 200);
        assert!(resolved
            .iter()
            .all(|a| a.resolved_by.as_deref() == Some("system")));
        assert_eq!(open(&s), 50);
        assert!(resolve_cleared_each(&s, AGENT_DOWN, &back)
            .expect("resolve")
            .is_empty());
    }

    #[test]
    fn an_alert_is_raised_once_and_cleared_by_the_system() {
        let (_d, s) = store();
        let (a, new) = raise(
            &s,
            Severity::Critical,
            AGENT_DOWN,
            "a1",
            None,
            "down".into(),
        )
        .expect("raise");
        assert!(new);
        assert!(a.id.starts_with("alert_"));
        let (b, new) = raise(
            &s,
            Severity::Critical,
            AGENT_DOWN,
            "a1",
            None,
            "down".into(),
        )
        .expect("raise");
        assert!(!new);
        assert_eq!(a.id, b.id);
        assert_eq!(counts(&s).expect("counts").critical, 1);
        let cleared = resolve_cleared(&s, AGENT_DOWN, "a1").expect("clear");
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].resolved_by.as_deref(), Some("system"));
        assert_eq!(counts(&s).expect("counts").total, 0);
    }

    #[test]
    fn operators_acknowledge_and_resolve() {
        let (_d, s) = store();
        let (a, _) = raise(&s, Severity::High, "X", "src", None, "m".into()).expect("raise");
        let acked = acknowledge(&s, &a.id, "admin@propchain.local").expect("ack");
        assert_eq!(acked.status, AlertStatus::Acknowledged);
        assert_eq!(
            acked.acknowledged_by.as_deref(),
            Some("admin@propchain.local")
        );
        let filter = AlertFilter {
            severity: Some(Severity::High),
            status: None,
        };
        assert_eq!(list(&s, &filter).expect("list").len(), 1);
        let filter = AlertFilter {
            severity: Some(Severity::Critical),
            status: None,
        };
        assert!(list(&s, &filter).expect("list").is_empty());
        resolve(&s, &a.id, "ops").expect("resolve");
        assert!(matches!(resolve(&s, &a.id, "ops"), Err(Error::Conflict(_))));
        assert!(matches!(
            acknowledge(&s, "alert_0_none", "x"),
            Err(Error::NotFound(_))
        ));
    }
}
