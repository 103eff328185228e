//! The one door the `drmesh` CLI has into the coordinator's internals: what it needs
//! before any coordinator runs (the first token, written straight into the store) and
//! the quickstart's DNS check. Everything else goes over the REST API.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use drmesh_protocol::api::{CreatedToken, Role};

use crate::store::settings::StoreConfig;
use crate::store::{RedbStore, StoreError};

/// Creates a token in the state store at `path`, which no running coordinator may hold
/// open (redb takes a lock).
pub fn create_token(
    path: &Path,
    role: Role,
    name: Option<String>,
) -> Result<CreatedToken, StoreError> {
    let store = RedbStore::open(path)?;
    crate::auth::create_token(&store, role, name)
}

/// Creates a token in the etcd store at `endpoints` (default prefix, no TLS), before or
/// beside the coordinators, as `drmesh-coordinator create-token` does.
pub fn create_token_in_etcd(
    endpoints: &[String],
    leader_ttl: Duration,
    role: Role,
    name: Option<String>,
) -> Result<CreatedToken, StoreError> {
    let config = StoreConfig::Etcd(crate::store::settings::EtcdSettings {
        endpoints: endpoints.to_vec(),
        prefix: crate::store::settings::DEFAULT_PREFIX.to_string(),
        timeout: Duration::from_secs(2),
        leader_ttl,
        name: "tool".into(),
        tls: None,
        user: None,
    });
    let store = crate::store::open_for_tools(&config)?;
    crate::auth::create_token(store.as_ref(), role, name)
}

/// `drmesh store migrate`: the stores named by `from` and `to` (`redb:PATH`,
/// `etcd:URL[,URL…]`), every record copied and compared ([`crate::store::migrate`]).
pub fn migrate_store(
    from: &str,
    to: &str,
    prefix: Option<&str>,
) -> Result<crate::store::migrate::Migrated, String> {
    use crate::store::migrate;
    let from = store_spec(from, prefix).map_err(|e| format!("--from {e}"))?;
    let to = store_spec(to, prefix).map_err(|e| format!("--to {e}"))?;
    migrate::migrate(&from, &to).map_err(|e| e.to_string())
}

/// A store named on the command line: `redb:PATH`, `etcd:URL[,URL…]`, or
/// `config:PATH`, the `[store]` of that coordinator.toml (with its TLS and user).
fn store_spec(
    spec: &str,
    prefix: Option<&str>,
) -> Result<crate::store::settings::StoreConfig, String> {
    match spec.strip_prefix("config:") {
        Some(path) => crate::config::CoordinatorConfig::load(std::path::Path::new(path))
            .map(|c| c.store)
            .map_err(|e| format!("{spec:?}: {e}")),
        None => crate::store::migrate::parse_spec(spec, prefix),
    }
}

/// Asks one DNS server for the A/AAAA records of `name` (no cache, no recursion).
pub async fn query_dns(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<IpAddr>, crate::dns::DnsError> {
    crate::dns::query(server, name, timeout).await
}
