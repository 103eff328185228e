//! The coordinator's durable state behind the [`Store`] trait: a namespaced key-value
//! interface. The default backend is an embedded redb file (`store/embedded.rs`); with
//! several coordinators it is an etcd cluster (`store/etcd.rs`). Every `put` is
//! committed durably before it returns.
//!
//! Architecture Invariant: every check-then-act on shared state (admitting a failover,
//! choosing its epoch) runs inside one [`Store::transaction`] — what it read is still
//! true when its writes commit. A lone `get` followed by a `put` decides nothing.

use serde::de::DeserializeOwned;
use serde::Serialize;

mod embedded;
mod etcd;
pub mod migrate;
pub mod settings;

pub use self::embedded::RedbStore;
pub use self::etcd::{EtcdStore, WriteGuard};

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
    /// A transaction's body gave up (its own error is returned by
    /// [`StoreExt::atomically`]); nothing it wrote was committed.
    #[error("transaction aborted")]
    Aborted,
    /// The backend is closed after an I/O error and could not be reopened yet, or
    /// etcd does not answer.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// This coordinator does not lead (any more): its writes are refused.
    #[error("not the leader: {0}")]
    NotLeader(String),
}

impl StoreError {
    /// Whether trying again cannot help: a damaged record, a value that does not encode,
    /// a body that gave up. I/O errors (a full disk, a failing device) may pass.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Corrupt { .. }
            | StoreError::Encode(_)
            | StoreError::Aborted
            | StoreError::NotLeader(_) => true,
            StoreError::Redb(e) => matches!(
                **e,
                redb::Error::Corrupted(_)
                    | redb::Error::ValueTooLarge(_)
                    | redb::Error::TableTypeMismatch { .. }
                    | redb::Error::TableIsMultimap(_)
                    | redb::Error::TableIsNotMultimap(_)
                    | redb::Error::TypeDefinitionChanged { .. }
                    | redb::Error::UpgradeRequired(_)
            ),
            StoreError::Backend(_) | StoreError::Unavailable(_) => false,
        }
    }

    /// Whether the embedded database must be reopened before it works again: redb
    /// answers every operation after an I/O error with `PreviousIo` until then.
    pub fn needs_reopen(&self) -> bool {
        match self {
            StoreError::Redb(e) => matches!(**e, redb::Error::Io(_) | redb::Error::PreviousIo),
            StoreError::Unavailable(_) => true,
            _ => false,
        }
    }
}

/// Opens the store a configuration names for a tool run beside (or instead of) the
/// coordinators — `create-token`, `store migrate` — whose writes are unconditioned.
pub fn open_for_tools(
    config: &settings::StoreConfig,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(match config {
        settings::StoreConfig::Redb { path } => std::sync::Arc::new(RedbStore::open(path)?),
        settings::StoreConfig::Etcd(s) => {
            let store = EtcdStore::connect(s)?;
            store.set_guard(WriteGuard::Unconditioned);
            std::sync::Arc::new(store)
        }
    })
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
    /// Runs `body` as one serializable transaction: nothing another writer commits
    /// changes what it reads before its own writes commit, durably and all together.
    /// When `body` returns an error nothing it wrote is kept. `body` may run more than
    /// once (a store with optimistic transactions retries it after a conflict), so it
    /// must act on nothing outside the transaction. See [`StoreExt::atomically`].
    fn transaction(
        &self,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
}

/// What a transaction's body reads and writes through.
pub trait Txn {
    fn get(&mut self, ns: Namespace, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&mut self, ns: Namespace, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn delete(&mut self, ns: Namespace, key: &str) -> Result<bool, StoreError>;
    fn scan(&mut self, ns: Namespace, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}

/// JSON inside a transaction, as [`StoreExt`] outside one.
impl dyn Txn + '_ {
    pub fn get_json<T: DeserializeOwned>(
        &mut self,
        ns: Namespace,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        decode_some(ns, key, self.get(ns, key)?)
    }

    pub fn put_json<T: Serialize>(
        &mut self,
        ns: Namespace,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        self.put(ns, key, &encode(value)?)
    }

    pub fn scan_json<T: DeserializeOwned>(
        &mut self,
        ns: Namespace,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        decode_all(ns, self.scan(ns, prefix)?)
    }
}

/// JSON helpers over any store.
pub trait StoreExt: Store {
    fn get_json<T: DeserializeOwned>(
        &self,
        ns: Namespace,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        decode_some(ns, key, self.get(ns, key)?)
    }

    fn put_json<T: Serialize>(
        &self,
        ns: Namespace,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        self.put(ns, key, &encode(value)?)
    }

    fn scan_json<T: DeserializeOwned>(
        &self,
        ns: Namespace,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        decode_all(ns, self.scan(ns, prefix)?)
    }

    /// [`Store::transaction`] with the body's own result and error: `Ok` commits, and
    /// its value is returned once the commit is durable; `Err` keeps nothing and is
    /// returned as it is (a refusal, not a store failure).
    fn atomically<T, E: From<StoreError>>(
        &self,
        mut body: impl FnMut(&mut dyn Txn) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut result = None;
        let committed = self.transaction(&mut |tx| match body(tx) {
            Ok(v) => {
                result = Some(Ok(v));
                Ok(())
            }
            Err(e) => {
                result = Some(Err(e));
                Err(StoreError::Aborted)
            }
        });
        match (committed, result) {
            (Ok(()), Some(r)) | (Err(StoreError::Aborted), Some(r @ Err(_))) => r,
            (Err(e), _) => Err(e.into()),
            (Ok(()), None) => {
                Err(StoreError::Backend("a transaction ended without running".into()).into())
            }
        }
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Encode(e.to_string()))
}

fn decode_some<T: DeserializeOwned>(
    ns: Namespace,
    key: &str,
    bytes: Option<Vec<u8>>,
) -> Result<Option<T>, StoreError> {
    bytes.map(|b| decode(ns, key, &b)).transpose()
}

fn decode_all<T: DeserializeOwned>(
    ns: Namespace,
    rows: Vec<(String, Vec<u8>)>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(|(k, v)| decode(ns, k, v)).collect()
}

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

    #[derive(Debug, PartialEq)]
    enum Refused {
        Taken(String),
        Store(String),
    }

    impl From<StoreError> for Refused {
        fn from(e: StoreError) -> Self {
            Refused::Store(e.to_string())
        }
    }

    /// Claims `slot` for `who` unless someone holds it: the check-then-act the
    /// admission of a failover is.
    fn claim(store: &RedbStore, who: &str) -> Result<(), Refused> {
        store.atomically(|tx| {
            if let Some(holder) = tx.get_json::<String>(Namespace::Meta, "slot")? {
                return Err(Refused::Taken(holder));
            }
            tx.put_json(Namespace::Meta, "slot", &who.to_string())?;
            Ok(())
        })
    }

    #[test]
    fn a_refused_transaction_keeps_nothing_it_wrote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("state.redb")).expect("open");
        let r: Result<(), Refused> = store.atomically(|tx| {
            tx.put(Namespace::Meta, "half", b"written")?;
            Err(Refused::Taken("someone".into()))
        });
        assert_eq!(r, Err(Refused::Taken("someone".into())));
        assert_eq!(store.get(Namespace::Meta, "half").expect("get"), None);
        // Reads inside see the transaction's own writes, and scans too.
        let seen = store
            .atomically(|tx| {
                tx.put(Namespace::Alerts, "x_1", b"1")?;
                tx.put(Namespace::Alerts, "x_2", b"2")?;
                Ok::<_, StoreError>(tx.scan(Namespace::Alerts, "x_")?.len())
            })
            .expect("commit");
        assert_eq!(seen, 2);
        assert_eq!(store.scan(Namespace::Alerts, "x_").expect("scan").len(), 2);
    }

    #[test]
    fn of_many_racing_claims_exactly_one_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            std::sync::Arc::new(RedbStore::open(&dir.path().join("state.redb")).expect("open"));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    claim(&store, &format!("t{i}"))
                })
            })
            .collect();
        let results: Vec<_> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        let holder: String = store
            .get_json(Namespace::Meta, "slot")
            .expect("get")
            .expect("held");
        // Every loser names the winner.
        for r in &results {
            if let Err(Refused::Taken(h)) = r {
                assert_eq!(*h, holder);
            }
        }
    }

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
