//! `drmesh store migrate`: every record of one store copied into another (redb to etcd
//! and back), then read back and compared. Run while no coordinator runs: a redb file
//! is locked by its coordinator, and an etcd store with a leader is refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::settings::{EtcdSettings, StoreConfig};
use super::{open_for_tools, EtcdStore, Namespace, Store, StoreError, WriteGuard};

/// Records per transaction (etcd allows 128 operations in one; one more is the commit
/// marker).
const BATCH: usize = 100;

/// What a migration copied, per namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Migrated {
    pub records: BTreeMap<&'static str, usize>,
}

impl Migrated {
    pub fn total(&self) -> usize {
        self.records.values().sum()
    }
}

/// A store named on the command line: `redb:PATH` or `etcd:URL[,URL…]` (prefix
/// `/drmesh/` unless `prefix` says otherwise).
pub fn parse_spec(spec: &str, prefix: Option<&str>) -> Result<StoreConfig, String> {
    if let Some(path) = spec.strip_prefix("redb:") {
        if path.is_empty() {
            return Err("redb: needs a file path, e.g. redb:/var/lib/drmesh/state.redb".into());
        }
        return Ok(StoreConfig::Redb { path: path.into() });
    }
    if let Some(urls) = spec.strip_prefix("etcd:") {
        let endpoints: Vec<String> = urls
            .split(',')
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() || endpoints.iter().any(|u| !u.starts_with("http://")) {
            return Err(format!(
                "{spec:?}: etcd: takes http:// URLs separated by commas, e.g. \
                 etcd:http://10.0.1.5:2379,http://10.0.2.5:2379"
            ));
        }
        let mut p = prefix
            .unwrap_or(super::settings::DEFAULT_PREFIX)
            .to_string();
        if !p.ends_with('/') {
            p.push('/');
        }
        return Ok(StoreConfig::Etcd(EtcdSettings {
            endpoints,
            prefix: p,
            timeout: super::settings::DEFAULT_TIMEOUT,
            leader_ttl: super::settings::DEFAULT_LEADER_TTL,
            name: "migrate".into(),
            tls: None,
            user: None,
        }));
    }
    Err(format!("{spec:?}: a store is redb:PATH or etcd:URL[,URL…]"))
}

/// Copies every record of `from` into `to`, which must hold none, then reads `to`
/// back and compares. Nothing is deleted from `from`.
pub fn migrate(from: &StoreConfig, to: &StoreConfig) -> Result<Migrated, StoreError> {
    if from == to {
        return Err(StoreError::Backend(
            "the source and the destination are the same store".into(),
        ));
    }
    let source = open(from)?;
    let dest = open(to)?;
    for ns in Namespace::ALL {
        if !dest.scan(ns, "")?.is_empty() {
            return Err(StoreError::Backend(format!(
                "the destination already holds {} records: migrate only into an empty store",
                ns.name()
            )));
        }
    }
    let mut done = Migrated::default();
    for ns in Namespace::ALL {
        let rows = source.scan(ns, "")?;
        for batch in rows.chunks(BATCH) {
            copy(dest.as_ref(), ns, batch)?;
        }
        let copied = dest.scan(ns, "")?;
        if copied != rows {
            return Err(StoreError::Backend(format!(
                "{}: {} records read back from the destination differ from the {} copied",
                ns.name(),
                copied.len(),
                rows.len()
            )));
        }
        done.records.insert(ns.name(), rows.len());
    }
    Ok(done)
}

fn copy(dest: &dyn Store, ns: Namespace, batch: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
    dest.transaction(&mut |tx| {
        for (k, v) in batch {
            tx.put(ns, k, v)?;
        }
        Ok(())
    })
}

/// [`open_for_tools`], refusing an etcd store on which a coordinator leads: a migration
/// beside it would miss what it writes meanwhile.
fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    let StoreConfig::Etcd(settings) = config else {
        return open_for_tools(config);
    };
    let store = EtcdStore::connect(settings)?;
    if let Some(leader) = store.current_leader()? {
        return Err(StoreError::Backend(format!(
            "coordinator {leader} leads on this etcd store: stop every coordinator before migrating"
        )));
    }
    store.set_guard(WriteGuard::Unconditioned);
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_a_store_or_are_refused() {
        assert_eq!(
            parse_spec("redb:/var/s.redb", None),
            Ok(StoreConfig::Redb {
                path: "/var/s.redb".into()
            })
        );
        let Ok(StoreConfig::Etcd(e)) = parse_spec("etcd:http://a:2379,http://b:2379", Some("/x"))
        else {
            panic!("etcd spec")
        };
        assert_eq!(e.endpoints, vec!["http://a:2379", "http://b:2379"]);
        assert_eq!(e.prefix, "/x/");
        for bad in ["redb:", "etcd:", "etcd:a:2379", "file:/x", "/x"] {
            assert!(parse_spec(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_redb_state_migrates_into_an_empty_redb_and_nowhere_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = StoreConfig::Redb {
            path: dir.path().join("a.redb"),
        };
        let b = StoreConfig::Redb {
            path: dir.path().join("b.redb"),
        };
        {
            let s = open_for_tools(&a).expect("open");
            for i in 0..250 {
                s.put(Namespace::Audit, &format!("k{i:04}"), b"x")
                    .expect("put");
            }
            s.put(Namespace::Meta, "epoch", b"7").expect("put");
        }
        let done = migrate(&a, &b).expect("migrate");
        assert_eq!(done.total(), 251);
        assert_eq!(done.records["audit"], 250);
        // Again into the now full store: refused, nothing changed.
        let err = migrate(&a, &b).expect_err("not empty");
        assert!(err.to_string().contains("empty store"), "{err}");
        assert!(migrate(&a, &a).is_err());
    }
}
