//! The coordinator's durable state behind the [`Store`] trait: a namespaced key-value
//! interface small enough to put on etcd later. The default backend is an embedded redb
//! file (`store/embedded.rs`); every `put` is committed durably before it returns.

use serde::de::DeserializeOwned;
use serde::Serialize;

mod embedded;

pub use self::embedded::RedbStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0}")]
    Backend(String),
    /// The embedded database failed; the error is kept as the source (boxed: it is
    /// large, and errors travel through every store call).
    #[error("state store: {0}")]
    Redb(#[source] Box<redb::Error>),
    #[error("state store holds a damaged record {namespace}/{key}: {message}")]
    Corrupt {
        namespace: &'static str,
        key: String,
        message: String,
    },
    #[error("encode record: {0}")]
    Encode(String),
}

/// The kinds of records the coordinator keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Namespace {
    /// API tokens by SHA-256 of the secret.
    Tokens,
    /// Alerts by id.
    Alerts,
    /// Audit log by time-ordered key.
    Audit,
    /// Agents ever seen, by agent id.
    Agents,
    /// Single values: the fencing epoch, schema version.
    Meta,
    /// Backups (documents; later database), by backup id.
    Backups,
    /// Disaster-recovery plans, by plan id.
    Plans,
    /// Failovers, by failover id (`fo_<epoch-ms>_<6>`, so in time order).
    Failovers,
    /// The embedded DNS server's answer, by record name.
    Dns,
    /// Database backup verifications, by verification id (`verify_<epoch-ms>_<6>`, so
    /// in time order), and verify-all runs (`verifyall_<epoch-ms>_<6>`).
    Verifications,
    /// DR tests, by test id (`drtest_<epoch-ms>_<6>`, so in time order).
    DrTests,
}

impl Namespace {
    pub const ALL: [Namespace; 11] = [
        Namespace::Tokens,
        Namespace::Alerts,
        Namespace::Audit,
        Namespace::Agents,
        Namespace::Meta,
        Namespace::Backups,
        Namespace::Plans,
        Namespace::Failovers,
        Namespace::Dns,
        Namespace::Verifications,
        Namespace::DrTests,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Namespace::Tokens => "tokens",
            Namespace::Alerts => "alerts",
            Namespace::Audit => "audit",
            Namespace::Agents => "agents",
            Namespace::Meta => "meta",
            Namespace::Backups => "backups",
            Namespace::Plans => "plans",
            Namespace::Failovers => "failovers",
            Namespace::Dns => "dns",
            Namespace::Verifications => "verifications",
            Namespace::DrTests => "drtests",
        }
    }
}

/// Durable namespaced key-value state. Keys sort as byte strings.
pub trait Store: Send + Sync + 'static {
    fn get(&self, ns: Namespace, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes durably: when it returns `Ok`, the value survives a crash.
    fn put(&self, ns: Namespace, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn delete(&self, ns: Namespace, key: &str) -> Result<bool, StoreError>;
    /// Every record whose key starts with `prefix`, in key order.
    fn scan(&self, ns: Namespace, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}

/// JSON helpers over any store.
pub trait StoreExt: Store {
    fn get_json<T: DeserializeOwned>(
        &self,
        ns: Namespace,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        self.get(ns, key)?
            .map(|bytes| decode(ns, key, &bytes))
            .transpose()
    }

    fn put_json<T: Serialize>(
        &self,
        ns: Namespace,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.put(ns, key, &bytes)
    }

    fn scan_json<T: DeserializeOwned>(
        &self,
        ns: Namespace,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        self.scan(ns, prefix)?
            .iter()
            .map(|(k, v)| decode(ns, k, v))
            .collect()
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

pub(crate) fn decode<T: DeserializeOwned>(
    ns: Namespace,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        namespace: ns.name(),
        key: key.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let store = RedbStore::open(&path).expect("open");
            store.put(Namespace::Meta, "epoch", b"3").expect("put");
            store
                .put_json(Namespace::Alerts, "a_2", &2u32)
                .expect("put");
            store
                .put_json(Namespace::Alerts, "a_1", &1u32)
                .expect("put");
            store
                .put_json(Namespace::Alerts, "b_1", &9u32)
                .expect("put");
        }
        let store = RedbStore::open(&path).expect("reopen");
        assert_eq!(
            store.get(Namespace::Meta, "epoch").expect("get"),
            Some(b"3".to_vec())
        );
        let a: Vec<u32> = store.scan_json(Namespace::Alerts, "a_").expect("scan");
        assert_eq!(a, vec![1, 2]);
        assert!(store.delete(Namespace::Alerts, "a_1").expect("delete"));
        assert!(!store.delete(Namespace::Alerts, "a_1").expect("delete"));
        assert_eq!(store.get(Namespace::Tokens, "x").expect("get"), None);
    }

    #[test]
    fn a_damaged_record_is_reported_not_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("s.redb")).expect("open");
        store
            .put(Namespace::Alerts, "x", b"{not json")
            .expect("put");
        let err = store
            .get_json::<u32>(Namespace::Alerts, "x")
            .expect_err("corrupt");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }
}
