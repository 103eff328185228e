//! The embedded single-file store (redb): one table per namespace, each `put` and
//! `delete` its own durable write transaction. redb runs one write transaction at a
//! time, so a [`Store::transaction`] is serializable: it reads and writes inside one.
//!
//! After an I/O error (a full disk) redb answers every later operation with
//! `PreviousIo` until the database is opened again; so an operation that fails so
//! closes and reopens the file, and once the cause is gone (space freed) the store works
//! again without a coordinator restart. A reopen that fails leaves the store closed
//! ([`StoreError::Unavailable`]) and the next operation tries again.

use std::path::{Path, PathBuf};

use ::redb::ReadableTable;
use parking_lot::RwLock;
use tracing::{info, warn};

use super::{Namespace, Store, StoreError, Txn};

impl From<::redb::Error> for StoreError {
    fn from(e: ::redb::Error) -> Self {
        StoreError::Redb(Box::new(e))
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::from(::redb::Error::from(e)) }
        }
    )*};
}
from_redb!(
    ::redb::DatabaseError,
    ::redb::TransactionError,
    ::redb::TableError,
    ::redb::StorageError,
    ::redb::CommitError
);

type Table = ::redb::TableDefinition<'static, &'static str, &'static [u8]>;

fn table(ns: Namespace) -> Table {
    ::redb::TableDefinition::new(ns.name())
}

/// The embedded single-file store.
pub struct RedbStore {
    path: PathBuf,
    /// `Err(why)` while closed after an I/O error that a reopen has not cured yet.
    db: RwLock<Result<::redb::Database, String>>,
}

impl RedbStore {
    /// Opens or creates the file and every table. Fails if another process holds it.
    /// Opens the store at `path`, creating it (mode 0600, in directories made 0700) when
    /// it does not exist.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() && !parent.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(|e| {
                        StoreError::Backend(format!("create {}: {e}", parent.display()))
                    })?;
            }
        }
        let new = !path.exists();
        let db = ::redb::Database::create(path)
            .map_err(|e| StoreError::Backend(format!("open {}: {e}", path.display())))?;
        if new {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| StoreError::Backend(format!("make {} private: {e}", path.display())),
            )?;
        }
        let tx = db.begin_write()?;
        for ns in Namespace::ALL {
            tx.open_table(table(ns))?;
        }
        tx.commit()?;
        Ok(Self {
            path: path.to_path_buf(),
            db: RwLock::new(Ok(db)),
        })
    }

    /// Runs `op` on the open database; an error that leaves redb unusable (I/O,
    /// `PreviousIo`) reopens it for the next operation.
    fn with_db<T>(
        &self,
        op: impl FnOnce(&::redb::Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = {
            // Recursive: a transaction's body may (wrongly, but harmlessly) read the
            // store while a reopen waits.
            let guard = self.db.read_recursive();
            match guard.as_ref() {
                Ok(db) => op(db),
                Err(why) => Err(StoreError::Unavailable(why.clone())),
            }
        };
        if let Err(e) = &result {
            if e.needs_reopen() {
                self.reopen(e);
            }
        }
        result
    }

    /// Closes the database (after every running operation ends) and opens the file
    /// again; redb recovers it to its last commit.
    fn reopen(&self, cause: &StoreError) {
        // Bounded: a caller that (wrongly) holds the store inside a transaction body
        // must not deadlock it; a later failing operation tries again.
        let Some(mut guard) = self.db.try_write_for(std::time::Duration::from_secs(5)) else {
            warn!(file = %self.path.display(), "state store busy; not reopened this time");
            return;
        };
        // What the store says until a reopen works: the first cause, not its echoes.
        let why = match cause {
            StoreError::Unavailable(why) => why.clone(),
            other => format!(
                "{} is closed after an I/O error ({other})",
                self.path.display()
            ),
        };
        // Dropped first: redb refuses a second handle on the same file.
        *guard = Err(why);
        match ::redb::Database::create(&self.path) {
            Ok(db) => {
                info!(file = %self.path.display(), after = %cause, "state store reopened");
                *guard = Ok(db);
            }
            Err(e) => {
                warn!(file = %self.path.display(), error = %e, after = %cause, "state store could not be reopened; the next operation tries again")
            }
        }
    }
}

impl Store for RedbStore {
    fn get(&self, ns: Namespace, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(table(ns))?;
            let value = t.get(key)?.map(|v| v.value().to_vec());
            Ok(value)
        })
    }

    fn put(&self, ns: Namespace, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(table(ns))?;
                t.insert(key, value)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn delete(&self, ns: Namespace, key: &str) -> Result<bool, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write()?;
            let existed = {
                let mut t = tx.open_table(table(ns))?;
                let existed = t.remove(key)?.is_some();
                existed
            };
            tx.commit()?;
            Ok(existed)
        })
    }

    fn scan(&self, ns: Namespace, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(table(ns))?;
            scan_table(&t, prefix)
        })
    }

    fn transaction(
        &self,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write()?;
            match body(&mut WriteTxn(&tx)) {
                Ok(()) => Ok(tx.commit()?),
                Err(e) => {
                    // Nothing the body wrote is kept.
                    tx.abort()?;
                    Err(e)
                }
            }
        })
    }
}

fn scan_table(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for item in t.range(prefix..)? {
        let (k, v) = item?;
        let k = k.value();
        if !k.starts_with(prefix) {
            break;
        }
        out.push((k.to_string(), v.value().to_vec()));
    }
    Ok(out)
}

/// A body's view of an open redb write transaction.
struct WriteTxn<'a>(&'a ::redb::WriteTransaction);

impl Txn for WriteTxn<'_> {
    fn get(&mut self, ns: Namespace, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.0.open_table(table(ns))?;
        let value = t.get(key)?.map(|v| v.value().to_vec());
        Ok(value)
    }

    fn put(&mut self, ns: Namespace, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut t = self.0.open_table(table(ns))?;
        t.insert(key, value)?;
        Ok(())
    }

    fn delete(&mut self, ns: Namespace, key: &str) -> Result<bool, StoreError> {
        let mut t = self.0.open_table(table(ns))?;
        let existed = t.remove(key)?.is_some();
        Ok(existed)
    }

    fn scan(&mut self, ns: Namespace, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let t = self.0.open_table(table(ns))?;
        scan_table(&t, prefix)
    }
}

#[cfg(test)]
mod mode_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_new_store_is_private_in_private_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/state.redb");
        drop(RedbStore::open(&path).expect("open"));
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        // An existing store keeps the mode its operator gave it (the start warns).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        drop(RedbStore::open(&path).expect("open"));
        assert_eq!(mode(&path), 0o640);
    }
}
