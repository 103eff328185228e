//! The etcd backend: the coordinator's state in an etcd v3 cluster, shared by several
//! coordinators of which one leads (`crate::leader`).
//!
//! Keys are `<prefix><namespace>/<key>`. Every write, transactional or not, also
//! rewrites `<prefix>_commit`, in the same etcd transaction. A [`Store::transaction`]
//! reads at one revision and commits only if `_commit` has not changed since: nothing
//! committed in between, so what it read is still true — serializable, as redb's single
//! writer is. A conflict runs the body again (the trait allows it).
//!
//! Every write is also conditioned on the [`WriteGuard`]: while this coordinator leads,
//! on the leader key still being the one it created (its term), so a deposed leader
//! can commit nothing even before it notices; while it follows, writes are refused
//! here. Tools run while no coordinator does (`store migrate`, `create-token`) write
//! unconditioned.
//!
//! The trait is synchronous (redb is); etcd's client is async. Requests run on this
//! store's own small runtime and the caller waits for the answer, bounded by
//! `[store] timeout`, so a busy caller's runtime never delays the leader's lease.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions,
    Txn, TxnOp, TxnOpResponse,
};
use parking_lot::RwLock;

use super::settings::EtcdSettings;
use super::{Namespace, Store, StoreError, Txn as StoreTxn};
use crate::runtime::OwnRuntime;

/// Records per range request when scanning (a page stays far below gRPC's 4 MiB).
const PAGE: i64 = 256;
/// How often a transaction runs again after conflicting with another writer.
const CONFLICT_RETRIES: u32 = 32;

/// What a write is conditioned on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteGuard {
    /// Nothing: a tool that runs while no coordinator does.
    Unconditioned,
    /// The leader key is the one this coordinator created at revision `term`.
    Leader { term: i64 },
    /// This coordinator does not lead: writes are refused before they reach etcd.
    Follower,
}

pub struct EtcdStore {
    /// Shut down in the background when dropped: a store may be dropped inside another
    /// runtime.
    runtime: OwnRuntime,
    client: Client,
    prefix: String,
    timeout: Duration,
    guard: RwLock<WriteGuard>,
    /// The lease [`crate::leader`] holds for this coordinator, while it holds one.
    own_lease: parking_lot::Mutex<Option<i64>>,
    /// Why etcd is unreachable, as [`crate::leader`] last found: requests then fail at
    /// once rather than each after `timeout`, so a cut-off coordinator still answers.
    cut: RwLock<Option<String>>,
}

impl EtcdStore {
    /// Connects to the cluster (waiting at most `timeout` for a member to answer).
    /// Writes start [`WriteGuard::Follower`]: refused until [`EtcdStore::set_guard`].
    pub fn connect(settings: &EtcdSettings) -> Result<Self, StoreError> {
        let runtime = OwnRuntime::new("etcd-store", 2)
            .map_err(|e| StoreError::Backend(format!("start the etcd client's runtime: {e}")))?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(settings.timeout)
            .with_timeout(settings.timeout)
            .with_keep_alive(Duration::from_secs(2), settings.timeout);
        if let Some(tls) = &settings.tls {
            let read = |p: &std::path::Path| {
                std::fs::read(p)
                    .map_err(|e| StoreError::Backend(format!("read {}: {e}", p.display())))
            };
            let mut t = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca_file)?));
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(t);
        }
        if let Some((user, password_file)) = &settings.user {
            let password = std::fs::read_to_string(password_file).map_err(|e| {
                StoreError::Backend(format!("read {}: {e}", password_file.display()))
            })?;
            options = options.with_user(user.clone(), password.trim_end().to_string());
        }
        let endpoints = settings.endpoints.clone();
        let timeout = settings.timeout;
        // Not `block_on`: the caller may itself be inside a runtime (the coordinator's).
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.get().spawn(async move {
            let _ = tx.send(
                tokio::time::timeout(timeout, Client::connect(endpoints, Some(options))).await,
            );
        });
        let client = rx
            .recv()
            .map_err(|_| StoreError::Backend("the etcd client's runtime stopped".into()))?
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "no etcd member of {} answered within {timeout:?}",
                    settings.endpoints.join(", ")
                ))
            })?
            .map_err(|e| etcd_error("connect", e))?;
        let store = Self {
            runtime,
            client,
            prefix: settings.prefix.clone(),
            timeout,
            guard: RwLock::new(WriteGuard::Follower),
            own_lease: parking_lot::Mutex::new(None),
            cut: RwLock::new(None),
        };
        // Fail now, not at the first request, when no member answers.
        store.revision()?;
        Ok(store)
    }

    pub fn set_guard(&self, guard: WriteGuard) {
        *self.guard.write() = guard;
    }

    pub fn set_own_lease(&self, lease: Option<i64>) {
        *self.own_lease.lock() = lease;
    }

    /// Says etcd cannot be reached (`Some(why)`) or can again (`None`).
    pub fn set_cut(&self, why: Option<String>) {
        *self.cut.write() = why;
    }

    pub fn own_lease(&self) -> Option<i64> {
        *self.own_lease.lock()
    }

    pub fn guard(&self) -> WriteGuard {
        self.guard.read().clone()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A client for [`crate::leader`]'s lease and election, on this store's runtime.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The runtime the client runs on: [`crate::leader`] keeps its lease there, where a
    /// blocked caller cannot delay it.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt().handle().clone()
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.runtime.get()
    }

    /// The key whose creator leads.
    pub fn leader_key(&self) -> Vec<u8> {
        format!("{}_leader", self.prefix).into_bytes()
    }

    /// The name of the coordinator that leads, if one does.
    pub fn current_leader(&self) -> Result<Option<String>, StoreError> {
        let mut kv = self.client.kv_client();
        let key = self.leader_key();
        let resp = self.run(
            "read the leader key",
            async move { kv.get(key, None).await },
        )?;
        // The value is the leader's announcement (`crate::leader`), a JSON object.
        Ok(resp.kvs().first().map(|kv| {
            serde_json::from_slice::<serde_json::Value>(kv.value())
                .ok()
                .and_then(|v| v["name"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(kv.value()).into_owned())
        }))
    }

    /// Where coordinators announce themselves (each key under its own lease).
    pub fn coordinators_prefix(&self) -> String {
        format!("{}_coordinators/", self.prefix)
    }

    fn commit_key(&self) -> Vec<u8> {
        format!("{}_commit", self.prefix).into_bytes()
    }

    fn key(&self, ns: Namespace, key: &str) -> Vec<u8> {
        format!("{}{}/{}", self.prefix, ns.name(), key).into_bytes()
    }

    /// Runs `f` on this store's runtime and waits for it, at most `timeout`.
    fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        if let Some(why) = &*self.cut.read() {
            return Err(StoreError::Unavailable(format!("etcd: {what}: {why}")));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let timeout = self.timeout;
        self.rt().spawn(async move {
            let _ = tx.send(tokio::time::timeout(timeout, f).await);
        });
        match rx.recv() {
            Ok(Ok(r)) => r.map_err(|e| etcd_error(what, e)),
            Ok(Err(_)) => Err(StoreError::Unavailable(format!(
                "etcd: {what} did not finish within {timeout:?}"
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd: {what}: the client's runtime stopped"
            ))),
        }
    }

    /// The cluster's current revision.
    fn revision(&self) -> Result<i64, StoreError> {
        let (rev, _) = self.commit_at(None)?;
        Ok(rev)
    }

    /// The revision read at (the current one when `None`) and `_commit`'s last change.
    fn commit_at(&self, revision: Option<i64>) -> Result<(i64, i64), StoreError> {
        let mut kv = self.client.kv_client();
        let key = self.commit_key();
        let resp = self.run("read the commit marker", async move {
            let mut o = GetOptions::new();
            if let Some(r) = revision {
                o = o.with_revision(r);
            }
            kv.get(key, Some(o)).await
        })?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let modified = resp.kvs().first().map(|k| k.mod_revision()).unwrap_or(0);
        Ok((rev, modified))
    }

    fn get_at(
        &self,
        ns: Namespace,
        key: &str,
        revision: Option<i64>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut kv = self.client.kv_client();
        let k = self.key(ns, key);
        let resp = self.run("get", async move {
            let mut o = GetOptions::new();
            if let Some(r) = revision {
                o = o.with_revision(r);
            }
            kv.get(k, Some(o)).await
        })?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Every record of `ns` under `prefix`, in key order, all read at one revision
    /// (`revision`, or the first page's).
    fn scan_at(
        &self,
        ns: Namespace,
        prefix: &str,
        revision: Option<i64>,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let ns_prefix = self.key(ns, "");
        let start = self.key(ns, prefix);
        let end = prefix_end(&start);
        let mut out = Vec::new();
        let mut from = start;
        let mut revision = revision;
        loop {
            let mut kv = self.client.kv_client();
            let (f, e) = (from.clone(), end.clone());
            let resp = self.run("scan", async move {
                let mut o = GetOptions::new().with_range(e).with_limit(PAGE);
                if let Some(r) = revision {
                    o = o.with_revision(r);
                }
                kv.get(f, Some(o)).await
            })?;
            revision = revision.or(resp.header().map(|h| h.revision()));
            let kvs = resp.kvs();
            for kv in kvs {
                out.push((self.record_key(ns, &ns_prefix, kv)?, kv.value().to_vec()));
            }
            match (resp.more(), kvs.last()) {
                (true, Some(last)) => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    fn record_key(
        &self,
        ns: Namespace,
        ns_prefix: &[u8],
        kv: &KeyValue,
    ) -> Result<String, StoreError> {
        kv.key()
            .strip_prefix(ns_prefix)
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_string)
            .ok_or_else(|| StoreError::Corrupt {
                namespace: ns.name(),
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                message: "a key that is not UTF-8 under the namespace".into(),
            })
    }

    /// The conditions every write carries, or why this coordinator may not write.
    fn guard_compares(&self) -> Result<Vec<Compare>, StoreError> {
        match &*self.guard.read() {
            WriteGuard::Unconditioned => Ok(Vec::new()),
            WriteGuard::Leader { term } => Ok(vec![Compare::create_revision(
                self.leader_key(),
                CompareOp::Equal,
                *term,
            )]),
            WriteGuard::Follower => Err(not_leader()),
        }
    }

    /// Commits `writes` (`None`: delete) if `_commit` was last changed at `commit_mod`
    /// (any time, when `None`). `Ok(None)`: another writer committed first.
    fn commit(
        &self,
        writes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        commit_mod: Option<i64>,
    ) -> Result<Option<Vec<TxnOpResponse>>, StoreError> {
        let mut compares = self.guard_compares()?;
        let guarded = !compares.is_empty();
        if let Some(m) = commit_mod {
            compares.push(Compare::mod_revision(
                self.commit_key(),
                CompareOp::Equal,
                m,
            ));
        }
        let mut ops: Vec<TxnOp> = writes
            .iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(k.clone(), v.clone(), None::<PutOptions>),
                None => TxnOp::delete(k.clone(), None::<DeleteOptions>),
            })
            .collect();
        ops.push(TxnOp::put(self.commit_key(), "", None));
        let mut kv = self.client.kv_client();
        let txn = Txn::new().when(compares).and_then(ops);
        let resp = self.run("commit", async move { kv.txn(txn).await })?;
        if resp.succeeded() {
            return Ok(Some(resp.op_responses()));
        }
        if guarded {
            // Tell a lost leadership from a conflict: the first is final.
            let mut kv = self.client.kv_client();
            let key = self.leader_key();
            let leader = self.run(
                "read the leader key",
                async move { kv.get(key, None).await },
            )?;
            let term = leader.kvs().first().map(|k| k.create_revision());
            if let WriteGuard::Leader { term: mine } = self.guard() {
                if term != Some(mine) {
                    return Err(StoreError::NotLeader(format!(
                        "this coordinator's term {mine} ended (the leader key is {})",
                        term.map_or("gone".into(), |t| format!("term {t}"))
                    )));
                }
            }
        }
        Ok(None)
    }

    fn write_one(&self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<bool, StoreError> {
        let deleting = value.is_none();
        let writes = BTreeMap::from([(key, value)]);
        // A lone write conflicts with nothing: only a lost leadership fails it.
        for _ in 0..CONFLICT_RETRIES {
            if let Some(responses) = self.commit(&writes, None)? {
                return Ok(match responses.first() {
                    Some(TxnOpResponse::Delete(d)) if deleting => d.deleted() > 0,
                    _ => true,
                });
            }
        }
        Err(StoreError::Backend(
            "etcd: a write's condition failed for no reason this store knows".into(),
        ))
    }
}

impl Store for EtcdStore {
    fn get(&self, ns: Namespace, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_at(ns, key, None)
    }

    fn put(&self, ns: Namespace, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write_one(self.key(ns, key), Some(value.to_vec()))
            .map(|_| ())
    }

    fn delete(&self, ns: Namespace, key: &str) -> Result<bool, StoreError> {
        self.write_one(self.key(ns, key), None)
    }

    fn scan(&self, ns: Namespace, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.scan_at(ns, prefix, None)
    }

    fn transaction(
        &self,
        body: &mut dyn FnMut(&mut dyn StoreTxn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for attempt in 0..CONFLICT_RETRIES {
            let (revision, commit_mod) = self.commit_at(None)?;
            let mut tx = EtcdTxn {
                store: self,
                revision,
                writes: BTreeMap::new(),
            };
            body(&mut tx)?;
            if tx.writes.is_empty() {
                return Ok(());
            }
            let writes = std::mem::take(&mut tx.writes);
            if self.commit(&writes, Some(commit_mod))?.is_some() {
                return Ok(());
            }
            // Another writer committed since this body read: run it again on the new
            // state, after a short, growing, jittered pause.
            let pause = 5u64 << attempt.min(6);
            std::thread::sleep(Duration::from_millis(pause + rand::random::<u64>() % pause));
        }
        Err(StoreError::Backend(format!(
            "etcd: a transaction conflicted with other writers {CONFLICT_RETRIES} times in a row"
        )))
    }
}

/// A transaction's view: reads at one revision, with its own writes on top; writes are
/// kept until the commit.
struct EtcdTxn<'a> {
    store: &'a EtcdStore,
    revision: i64,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl StoreTxn for EtcdTxn<'_> {
    fn get(&mut self, ns: Namespace, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(&self.store.key(ns, key)) {
            Some(v) => Ok(v.clone()),
            None => self.store.get_at(ns, key, Some(self.revision)),
        }
    }

    fn put(&mut self, ns: Namespace, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.writes
            .insert(self.store.key(ns, key), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, ns: Namespace, key: &str) -> Result<bool, StoreError> {
        let existed = self.get(ns, key)?.is_some();
        self.writes.insert(self.store.key(ns, key), None);
        Ok(existed)
    }

    fn scan(&mut self, ns: Namespace, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut rows: BTreeMap<String, Vec<u8>> = self
            .store
            .scan_at(ns, prefix, Some(self.revision))?
            .into_iter()
            .collect();
        let ns_prefix = self.store.key(ns, "");
        let start = self.store.key(ns, prefix);
        for (k, v) in self.writes.range(start.clone()..) {
            if !k.starts_with(&start) {
                break;
            }
            let Some(name) = k
                .strip_prefix(ns_prefix.as_slice())
                .and_then(|k| std::str::from_utf8(k).ok())
            else {
                continue;
            };
            match v {
                Some(v) => rows.insert(name.to_string(), v.clone()),
                None => rows.remove(name),
            };
        }
        Ok(rows.into_iter().collect())
    }
}

/// The first key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

pub(crate) fn not_leader() -> StoreError {
    StoreError::NotLeader("this coordinator does not lead: only the leader writes".into())
}

fn etcd_error(what: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s)
            if matches!(
                s.code(),
                // Unknown: what tonic says of a broken connection.
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ) =>
        {
            StoreError::Unavailable(format!("etcd: {what}: {}", s.message()))
        }
        E::TransportError(t) => StoreError::Unavailable(format!("etcd: {what}: {t}")),
        E::IoError(e) => StoreError::Unavailable(format!("etcd: {what}: {e}")),
        other => StoreError::Backend(format!("etcd: {what}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_after_every_key_under_it() {
        assert_eq!(prefix_end(b"/drmesh/alerts/"), b"/drmesh/alerts0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
