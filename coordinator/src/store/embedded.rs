//! The embedded single-file store (redb): one table per namespace, each `put` and
//! `delete` its own durable write transaction. redb runs one write transaction at a
//! time, so a [`Store::transaction`] is serializable: it reads and writes inside one.

use std::path::Path;

use ::redb::ReadableTable;

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
    db: ::redb::Database,
}

impl RedbStore {
    /// Opens or creates the file and every table. Fails if another process holds it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Backend(format!("create {}: {e}", parent.display()))
                })?;
            }
        }
        let db = ::redb::Database::create(path)
            .map_err(|e| StoreError::Backend(format!("open {}: {e}", path.display())))?;
        let tx = db.begin_write()?;
        for ns in Namespace::ALL {
            tx.open_table(table(ns))?;
        }
        tx.commit()?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn get(&self, ns: Namespace, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table(ns))?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    fn put(&self, ns: Namespace, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(table(ns))?;
            t.insert(key, value)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn delete(&self, ns: Namespace, key: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write()?;
        let existed = {
            let mut t = tx.open_table(table(ns))?;
            let existed = t.remove(key)?.is_some();
            existed
        };
        tx.commit()?;
        Ok(existed)
    }

    fn scan(&self, ns: Namespace, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table(ns))?;
        scan_table(&t, prefix)
    }

    fn transaction(
        &self,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        match body(&mut WriteTxn(&tx)) {
            Ok(()) => Ok(tx.commit()?),
            Err(e) => {
                // Nothing the body wrote is kept.
                tx.abort()?;
                Err(e)
            }
        }
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
