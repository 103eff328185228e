//! DNS for failover steps 4 and 5: point the mesh's record at the new primary, then
//! confirm it at every authoritative server.
//!
//! Providers sit behind one object-safe trait, [`DnsProvider`]:
//! - [`Rfc2136`]: a dynamic update (RFC 2136) signed with TSIG (RFC 8945), sent to a
//!   primary server such as BIND, Knot or PowerDNS;
//! - [`Embedded`]: an authoritative server for the mesh's zone inside the coordinator
//!   (hickory-server), the quickstart default, whose answer is kept in the store;
//! - [`Route53`]: Amazon Route 53's REST API, signed with SigV4.
//!
//! This file holds the trait, [`DnsError`], [`from_config`] and the helpers the
//! providers share; the rest is one file per job:
//! - `dns/settings.rs`: `[dns]` of `coordinator.toml` as written and checked
//!   ([`DnsSection`] → [`DnsConfig`]);
//! - `dns/names.rs`: names made lowercase and fully qualified, zone membership;
//! - `dns/query.rs`: [`query`] one server directly, [`confirm`] at every
//!   authoritative server (or through the provider's API);
//! - `dns/tsig.rs`: [`TsigKey`], read from a base64 secret or a BIND `key` file;
//! - `dns/rfc2136.rs`: [`Rfc2136`], the TSIG-signed dynamic update over TCP with a
//!   prerequisite on the old answer;
//! - `dns/embedded.rs`: [`Embedded`], the hickory-server authoritative server whose
//!   answer is kept in the store;
//! - `dns/route53.rs`: [`Route53`], the change batch, `GetChange` and the API's XML;
//! - `dns/sigv4.rs`: [`AwsCredentials`] and the SigV4 signature of a Route 53 request.
//!
//! Architecture Invariant: an update only replaces the answer it expects to replace (an
//! RFC 2136 §2.4.2 prerequisite on the old address; for Route 53 a change batch whose
//! `DELETE` must match the old record exactly), so a stale coordinator cannot overwrite
//! a newer coordinator's answer.
//!
//! Architecture Invariant: success is established by [`confirm`], which asks every
//! authoritative server directly, never by the absence of an error from `update`. A
//! provider with no authoritative server listed but an API that reports the record
//! (Route 53 without `authoritative`) is confirmed by reading the record back through
//! that API ([`DnsProvider::api_answer`]) after its change is `INSYNC`. That checks
//! Route 53's own view, not what resolvers are answered: with real Route 53, list the
//! zone's four awsdns name servers in `authoritative` so the answer is checked where
//! resolvers ask.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::RData;

use crate::store::{Store, StoreError};

mod embedded;
mod names;
mod query;
mod rfc2136;
mod route53;
mod settings;
mod sigv4;
mod tsig;

pub use self::embedded::Embedded;
pub use self::query::{confirm, query};
pub use self::rfc2136::Rfc2136;
pub use self::route53::{RecordSet, Route53, Route53Settings};
pub use self::settings::{DnsConfig, DnsProviderConfig, DnsProviderKind, DnsSection};
pub use self::sigv4::AwsCredentials;
pub use self::tsig::{TsigAlgorithmName, TsigKey};

/// How long one update exchange may take: an RFC 2136 connect, send and answer, or one
/// Route 53 API call.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The server would not apply the update: wrong key, key not allowed, policy.
    #[error("{server} refused the update of {record}: {reason}")]
    Refused {
        server: String,
        record: String,
        reason: String,
    },
    /// The prerequisite on the old answer failed: someone else changed the record.
    #[error("the record {record} {found} (prerequisite failed, {rcode}): another coordinator changed it; not overwriting")]
    Stale {
        record: String,
        /// e.g. "no longer holds 198.18.0.11 (it holds 198.18.0.13)".
        found: String,
        rcode: String,
    },
    /// Any other error code in answer to an update.
    #[error("{server} failed the update of {record}: {rcode}")]
    Failed {
        server: String,
        record: String,
        rcode: String,
    },
    /// A success answer without a valid signature of our key: it may be forged, and
    /// whether the update applied is unknown.
    #[error("{server} answered the update of {record} without a valid TSIG signature of key {key} ({message}); whether it applied is unknown")]
    Unauthenticated {
        server: String,
        record: String,
        key: String,
        message: String,
    },
    #[error("cannot reach {server} to update {record}: {message}")]
    Unreachable {
        server: String,
        record: String,
        message: String,
    },
    #[error("query {name} at {server}: {message}")]
    Query {
        server: SocketAddr,
        name: String,
        message: String,
    },
    /// Some authoritative server did not answer the expected address in time.
    #[error("{record} is not confirmed after {within}: {}", .failures.join("; "))]
    NotConfirmed {
        record: String,
        within: String,
        failures: Vec<String>,
    },
    #[error("TSIG key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("invalid DNS name {name:?}: {message}")]
    Name { name: String, message: String },
    #[error("embedded DNS server cannot listen on {addr}: {message}")]
    Listen { addr: SocketAddr, message: String },
    #[error("DNS configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DnsError {
    /// Whether retrying the same call cannot help (a refusal, a lost race, bad
    /// configuration), as opposed to a server that was unreachable or slow.
    pub fn is_permanent(&self) -> bool {
        match self {
            DnsError::Refused { .. }
            | DnsError::Stale { .. }
            | DnsError::Key { .. }
            | DnsError::Name { .. }
            | DnsError::Config(_)
            | DnsError::Listen { .. } => true,
            DnsError::Failed { .. }
            | DnsError::Unauthenticated { .. }
            | DnsError::Unreachable { .. }
            | DnsError::Query { .. }
            | DnsError::NotConfirmed { .. }
            | DnsError::Store(_) => false,
        }
    }
}

/// Where the mesh's DNS record is changed. Object safe: the coordinator holds an
/// `Arc<dyn DnsProvider>`.
#[async_trait]
pub trait DnsProvider: Send + Sync {
    /// e.g. "rfc2136 at 127.0.0.1:5353" / "embedded at 127.0.0.1:5300"
    fn describe(&self) -> String;
    /// The record's fully qualified name, e.g. "db.drmesh.test."
    fn record(&self) -> &str;
    fn ttl(&self) -> u32;
    /// Replaces the A (or AAAA) record of `record()` with `new`, on the condition that it
    /// currently holds exactly `old` (None: on the condition that it has no A/AAAA
    /// record). Idempotent: when the record already holds exactly `new`, Ok without
    /// change.
    async fn update(&self, old: Option<IpAddr>, new: IpAddr) -> Result<(), DnsError>;
    /// Every authoritative server to confirm with. Empty only for a provider whose
    /// [`DnsProvider::api_answer`] is Some.
    fn authoritative(&self) -> Vec<SocketAddr>;
    /// The record's addresses as the provider's own API reports them, once its last
    /// change is applied (Route 53: `INSYNC`); None when the provider has no such API
    /// (the default). [`confirm`] uses it when `authoritative()` is empty.
    async fn api_answer(&self) -> Option<Result<Vec<IpAddr>, DnsError>> {
        None
    }
}

/// Builds the configured provider; for `embedded` this binds and starts the server,
/// which stops when the last `Arc` of the provider is dropped.
pub async fn from_config(
    cfg: &DnsConfig,
    store: Arc<dyn Store>,
) -> Result<Arc<dyn DnsProvider>, DnsError> {
    match &cfg.provider {
        DnsProviderConfig::Rfc2136 {
            server,
            zone,
            tsig_key_name,
            tsig_algorithm,
            tsig_secret_file,
            authoritative,
        } => {
            let key = TsigKey::load(tsig_secret_file, tsig_key_name, Some(*tsig_algorithm))?;
            Ok(Arc::new(Rfc2136::new(
                *server,
                zone,
                &cfg.record,
                cfg.ttl,
                key,
                authoritative.clone(),
            )?))
        }
        DnsProviderConfig::Embedded {
            listen,
            zone,
            initial,
        } => Ok(Arc::new(
            Embedded::start(*listen, zone, &cfg.record, cfg.ttl, *initial, store).await?,
        )),
        DnsProviderConfig::Route53 {
            hosted_zone_id,
            endpoint,
            region,
            access_key_id,
            secret_access_key_file,
            authoritative,
        } => {
            let credentials = match (access_key_id, secret_access_key_file) {
                (Some(id), Some(file)) => AwsCredentials::load(id, file)?,
                _ => AwsCredentials::from_env()?,
            };
            Ok(Arc::new(Route53::new(
                &cfg.record,
                cfg.ttl,
                Route53Settings {
                    hosted_zone_id: hosted_zone_id.clone(),
                    endpoint: endpoint.clone(),
                    region: region.clone(),
                    credentials,
                    authoritative: authoritative.clone(),
                },
            )?))
        }
    }
}

fn rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

fn show_addrs(addrs: &[IpAddr]) -> String {
    if addrs.is_empty() {
        "no address".to_string()
    } else {
        addrs
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What the record must look like for an update to proceed, in words for errors.
fn stale_description(old: Option<IpAddr>, current: Result<Vec<IpAddr>, DnsError>) -> String {
    let now = match current {
        Ok(addrs) => format!("it holds {}", show_addrs(&addrs)),
        Err(e) => format!("its current answer is unknown: {e}"),
    };
    match old {
        Some(ip) => format!("no longer holds {ip} ({now})"),
        None => format!("already has an address although none was expected ({now})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[tokio::test]
    async fn from_config_starts_the_embedded_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.path().join("s.redb")).expect("open"));
        let cfg = DnsConfig {
            record: "db.drmesh.test.".into(),
            ttl: 60,
            provider: DnsProviderConfig::Embedded {
                listen: "127.0.0.1:0".parse().expect("addr"),
                zone: "drmesh.test.".into(),
                initial: Some(ip("198.18.0.31")),
            },
        };
        let dns = from_config(&cfg, store).await.expect("start");
        let server = dns.authoritative()[0];
        assert_ne!(server.port(), 0);
        assert_eq!(dns.describe(), format!("embedded at {server}"));
        confirm(dns.as_ref(), ip("198.18.0.31"), Duration::from_secs(5))
            .await
            .expect("confirm");
    }
}
