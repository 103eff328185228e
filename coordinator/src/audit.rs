//! The audit log's records and their keeping: one record per mutating call an
//! authenticated caller made (allowed or not), keyed by time so the keys sort oldest
//! first; records older than `[audit] retention`, or past `[audit] max_records`, are
//! pruned ([`to_prune`], [`prune`]). Written by the REST middleware (`http::audit`);
//! unauthenticated calls are only counted, never written.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drmesh_protocol::api::Role;
use serde::{Deserialize, Serialize};

use crate::store::{Namespace, Store, StoreError};

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub at: DateTime<Utc>,
    /// The token: `tok_… (name)`.
    pub actor: String,
    pub role: Option<Role>,
    pub method: String,
    pub path: String,
    /// The query string, when there was one (`now=…`, `checksums=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// What the call asked for: the body's top-level values (`targetRegion`,
    /// `allowDataLoss`, `dryRun`, a new token's `role`, …), never a secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    pub status: u16,
}

/// A new record's key: its time in nanoseconds (20 digits) and a sequence number, so
/// keys sort by time.
pub fn key(at: DateTime<Utc>) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{:06}",
        time_prefix(at),
        SEQ.fetch_add(1, Ordering::Relaxed) % 1_000_000
    )
}

/// The part of a key that says when: every key of a record at or after `at` sorts at or
/// after it.
pub fn time_prefix(at: DateTime<Utc>) -> String {
    format!("{:020}", at.timestamp_nanos_opt().unwrap_or(0).max(0))
}

/// Whether `text` is a record's key (`cursor` of the audit list).
pub fn is_key(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 27
        && b[20] == b'-'
        && text
            .bytes()
            .enumerate()
            .all(|(i, c)| i == 20 || c.is_ascii_digit())
}

/// Top-level body keys never recorded, whatever the route (their values are secrets).
const SECRET_KEYS: &[&str] = &["token", "password", "secret", "key", "passphrase"];

/// What of a request's JSON body the record keeps: its top-level scalar values (a
/// string up to 200 characters), except any whose name says it is a secret.
pub fn params_of(body: &[u8]) -> BTreeMap<String, serde_json::Value> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return BTreeMap::new();
    };
    map.into_iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            !SECRET_KEYS.iter().any(|s| k.contains(s))
        })
        .filter(|(_, v)| match v {
            serde_json::Value::String(s) => s.chars().count() <= 200,
            serde_json::Value::Bool(_) | serde_json::Value::Number(_) => true,
            _ => false,
        })
        .take(32)
        .collect()
}

/// How the log is kept (`[audit]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keeping {
    pub retention: Duration,
    pub max_records: usize,
}

/// How many of the oldest records to delete: those older than the retention, and then
/// as many more as the count is over `max_records`. `keys` sorted oldest first.
pub fn to_prune(keys: &[String], now: DateTime<Utc>, keeping: Keeping) -> usize {
    let cutoff = chrono::TimeDelta::from_std(keeping.retention)
        .ok()
        .and_then(|r| now.checked_sub_signed(r))
        .map(time_prefix)
        .unwrap_or_default();
    let expired = keys.partition_point(|k| k.as_str() < cutoff.as_str());
    expired.max(keys.len().saturating_sub(keeping.max_records))
}

/// Deletes what [`to_prune`] says, oldest first, a thousand to a transaction; how many.
pub fn prune(store: &dyn Store, now: DateTime<Utc>, keeping: Keeping) -> Result<usize, StoreError> {
    let keys: Vec<String> = store
        .scan(Namespace::Audit, "")?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let n = to_prune(&keys, now, keeping);
    for batch in keys[..n].chunks(1000) {
        store.transaction(&mut |tx| {
            for k in batch {
                tx.delete(Namespace::Audit, k)?;
            }
            Ok(())
        })?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_time_and_are_recognised() {
        let t0 = Utc::now();
        let a = key(t0);
        let b = key(t0 + chrono::TimeDelta::milliseconds(1));
        assert!(a < b && is_key(&a) && is_key(&b));
        assert!(time_prefix(t0) <= a);
        assert!(!is_key("2026-12-08T00:00:00Z") && !is_key("") && !is_key(&a[..26]));
    }

    #[test]
    fn the_oldest_past_the_retention_or_the_count_are_pruned() {
        let now = Utc::now();
        let day = chrono::TimeDelta::days(1);
        let keys: Vec<String> = (0..10).rev().map(|d| key(now - day * d)).collect();
        let keep = |days: u64, max: usize| Keeping {
            retention: Duration::from_secs(days * 86_400),
            max_records: max,
        };
        // Records 9..=0 days old: retention 5 days keeps the 5 newest and today's edge.
        assert_eq!(to_prune(&keys, now, keep(5, 100)), 4);
        assert_eq!(to_prune(&keys, now, keep(30, 100)), 0);
        assert_eq!(to_prune(&keys, now, keep(30, 3)), 7);
        assert_eq!(to_prune(&keys, now, keep(5, 3)), 7);
        assert_eq!(to_prune(&[], now, keep(1, 0)), 0);
    }

    #[test]
    fn prune_deletes_the_oldest_from_the_store() {
        use crate::store::{RedbStore, StoreExt};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("s.redb")).expect("open");
        let now = Utc::now();
        for d in (0..2500i64).rev() {
            let at = now - chrono::TimeDelta::seconds(d);
            store
                .put_json(Namespace::Audit, &key(at), &serde_json::json!({ "d": d }))
                .expect("put");
        }
        let keeping = Keeping {
            retention: Duration::from_secs(3600),
            max_records: 1000,
        };
        assert_eq!(prune(&store, now, keeping).expect("prune"), 1500);
        let left = store.scan(Namespace::Audit, "").expect("scan");
        assert_eq!(left.len(), 1000);
        // The newest are what is left.
        let newest: serde_json::Value = serde_json::from_slice(&left[999].1).expect("json");
        assert_eq!(newest["d"], 0);
        assert_eq!(prune(&store, now, keeping).expect("prune"), 0);
    }

    #[test]
    fn params_keep_scalars_and_never_a_secret() {
        let p = params_of(
            br#"{"targetRegion":"us-east-1","allowDataLoss":false,"dryRun":true,"role":"viewer",
                "token":"drm_x","dbPassword":"p","secretKey":"s","nested":{"a":1},"n":3}"#,
        );
        assert_eq!(p.get("targetRegion"), Some(&serde_json::json!("us-east-1")));
        assert_eq!(p.get("allowDataLoss"), Some(&serde_json::json!(false)));
        assert_eq!(p.get("dryRun"), Some(&serde_json::json!(true)));
        assert_eq!(p.get("n"), Some(&serde_json::json!(3)));
        for k in ["token", "dbPassword", "secretKey", "nested"] {
            assert!(!p.contains_key(k), "{k}");
        }
        assert!(params_of(b"not json").is_empty());
        assert!(params_of(b"[1,2]").is_empty());
    }
}
