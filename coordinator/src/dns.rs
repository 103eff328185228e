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

use std::fmt;
use std::iter;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hickory_proto::op::{
    Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
    UpdateMessage,
};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use hickory_resolver::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::store::{Namespace, Store, StoreError, StoreExt};

mod names;
mod query;
mod settings;
mod sigv4;
mod tsig;

pub use self::query::{confirm, query};
pub use self::settings::{DnsConfig, DnsProviderConfig, DnsProviderKind, DnsSection};
pub use self::sigv4::AwsCredentials;
pub use self::tsig::{TsigAlgorithmName, TsigKey};

use self::names::{normalize_name, parse_name};
use self::query::CONFIRM_QUERY_TIMEOUT;
use self::sigv4::sigv4_headers;

/// How long one RFC 2136 exchange (connect, send, answer) may take.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle TCP connections to the embedded server are closed after this long.
const EMBEDDED_TCP_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The RFC mnemonic of a response code ("NOTAUTH", "NXRRSET"), as operators and BIND's
/// logs name them.
fn rcode_name(rcode: ResponseCode) -> String {
    let name = match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        ResponseCode::BADSIG => "BADSIG",
        ResponseCode::BADKEY => "BADKEY",
        ResponseCode::BADTIME => "BADTIME",
        other => return format!("rcode {}", u16::from(other)),
    };
    name.to_string()
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

/// RFC 2136 dynamic update signed with TSIG, to one primary server.
pub struct Rfc2136 {
    server: SocketAddr,
    zone: Name,
    record: Name,
    record_text: String,
    ttl: u32,
    key_name: String,
    signer: TSigner,
    authoritative: Vec<SocketAddr>,
}

impl fmt::Debug for Rfc2136 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rfc2136")
            .field("server", &self.server)
            .field("zone", &self.zone.to_string())
            .field("record", &self.record_text)
            .field("ttl", &self.ttl)
            .field("key_name", &self.key_name)
            .field("authoritative", &self.authoritative)
            .finish()
    }
}

impl Rfc2136 {
    /// `authoritative` empty means just `server`.
    pub fn new(
        server: SocketAddr,
        zone: &str,
        record: &str,
        ttl: u32,
        key: TsigKey,
        authoritative: Vec<SocketAddr>,
    ) -> Result<Rfc2136, DnsError> {
        let zone = parse_name(zone)?;
        let record_name = parse_name(record)?;
        if !zone.zone_of(&record_name) {
            return Err(DnsError::Config(format!(
                "record {record_name} is not inside zone {zone}"
            )));
        }
        Ok(Rfc2136 {
            server,
            zone,
            record_text: record_name.to_string(),
            record: record_name,
            ttl,
            key_name: key.name.trim_end_matches('.').to_string(),
            signer: key.signer()?,
            authoritative: if authoritative.is_empty() {
                vec![server]
            } else {
                authoritative
            },
        })
    }

    fn server_text(&self) -> String {
        format!("the DNS server at {}", self.server)
    }

    /// One UPDATE: the prerequisite on `old`, delete the A and AAAA RRsets, add `new`.
    fn update_message(&self, old: Option<IpAddr>, new: IpAddr) -> Message {
        let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Update);
        message.metadata.recursion_desired = false;
        let mut zone = Query::query(self.zone.clone(), RecordType::SOA);
        zone.set_query_class(DNSClass::IN);
        message.add_zone(zone);
        match old {
            // §2.4.2 "RRset exists (value dependent)": class IN, TTL 0, the old RR.
            Some(ip) => {
                message.add_pre_requisite(Record::from_rdata(self.record.clone(), 0, rdata(ip)))
            }
            // §2.4.3 "RRset does not exist": class NONE, TTL 0, no RDATA.
            None => {
                for rtype in [RecordType::A, RecordType::AAAA] {
                    let mut r = Record::update0(self.record.clone(), 0, rtype);
                    r.dns_class = DNSClass::NONE;
                    message.add_pre_requisite(r);
                }
            }
        }
        // §2.5.2 "Delete an RRset": class ANY, TTL 0, no RDATA.
        for rtype in [RecordType::A, RecordType::AAAA] {
            let mut r = Record::update0(self.record.clone(), 0, rtype);
            r.dns_class = DNSClass::ANY;
            message.add_update(r);
        }
        message.add_update(Record::from_rdata(
            self.record.clone(),
            self.ttl,
            rdata(new),
        ));
        message
    }

    /// Sends `request` over TCP (one exchange, so a lost answer is never resent as a
    /// second update) and returns the answer's bytes.
    async fn exchange(&self, request: &[u8]) -> Result<Vec<u8>, String> {
        let len = u16::try_from(request.len()).map_err(|_| "update too large".to_string())?;
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(self.server).await?;
            let mut framed = Vec::with_capacity(request.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(request);
            stream.write_all(&framed).await?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await?;
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        match tokio::time::timeout(UPDATE_TIMEOUT, attempt).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(UPDATE_TIMEOUT)
            )),
        }
    }

    fn refused(&self, reason: String) -> DnsError {
        DnsError::Refused {
            server: self.server_text(),
            record: self.record_text.clone(),
            reason,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[async_trait]
impl DnsProvider for Rfc2136 {
    fn describe(&self) -> String {
        format!("rfc2136 at {}", self.server)
    }

    fn record(&self) -> &str {
        &self.record_text
    }

    fn ttl(&self) -> u32 {
        self.ttl
    }

    async fn update(&self, old: Option<IpAddr>, new: IpAddr) -> Result<(), DnsError> {
        let unreachable = |message: String| DnsError::Unreachable {
            server: self.server_text(),
            record: self.record_text.clone(),
            message,
        };
        let mut message = self.update_message(old, new);
        let id = message.metadata.id;
        let mut verifier = message
            .finalize(&self.signer, unix_now())
            .map_err(|e| DnsError::Config(format!("sign the update with TSIG: {e}")))?;
        let request = message
            .to_vec()
            .map_err(|e| DnsError::Config(format!("encode the update: {e}")))?;
        let answer_bytes = self.exchange(&request).await.map_err(unreachable)?;
        let answer = Message::from_vec(&answer_bytes)
            .map_err(|e| unreachable(format!("undecodable answer: {e}")))?;
        if answer.metadata.id != id {
            return Err(unreachable(format!(
                "answer id {} does not match the update's {id}",
                answer.metadata.id
            )));
        }
        let rcode = answer.metadata.response_code;
        let rname = rcode_name(rcode);
        let tsig_error = answer.signature().and_then(|s| s.data.error);
        match (rcode, tsig_error) {
            (ResponseCode::NoError, _) => {
                let checked = match verifier.as_mut() {
                    Some(v) => v
                        .verify(&answer_bytes)
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => Err("no verifier".to_string()),
                };
                checked.map_err(|message| DnsError::Unauthenticated {
                    server: self.server_text(),
                    record: self.record_text.clone(),
                    key: self.key_name.clone(),
                    message,
                })
            }
            (_, Some(error)) => {
                let what = match error {
                    TsigError::BadSig => "BADSIG: the key's secret is wrong".to_string(),
                    TsigError::BadKey => "BADKEY: the server does not know this key".to_string(),
                    TsigError::BadTime => {
                        "BADTIME: the clocks of the coordinator and the server differ too much"
                            .to_string()
                    }
                    other => format!("{other:?}"),
                };
                Err(self.refused(format!(
                    "{rname} (TSIG key {} rejected, {what})",
                    self.key_name
                )))
            }
            (ResponseCode::NXRRSet | ResponseCode::YXRRSet, None) => {
                // The prerequisite failed. If the record already holds exactly `new` (an
                // earlier attempt of this same change succeeded), that is success.
                let current = query(self.server, &self.record_text, CONFIRM_QUERY_TIMEOUT).await;
                if matches!(&current, Ok(addrs) if addrs == &[new]) {
                    return Ok(());
                }
                Err(DnsError::Stale {
                    record: self.record_text.clone(),
                    found: stale_description(old, current),
                    rcode: rcode_name(rcode),
                })
            }
            (ResponseCode::NotAuth, None) => Err(self.refused(format!(
                "{rname} (the server is not authoritative for zone {} or key {} may not update it)",
                self.zone, self.key_name
            ))),
            (ResponseCode::Refused, None) => Err(self.refused(format!(
                "{rname} (key {} is not allowed to update zone {})",
                self.key_name, self.zone
            ))),
            (ResponseCode::BADSIG | ResponseCode::BADKEY | ResponseCode::BADTIME, None) => {
                Err(self.refused(format!("{rname} (TSIG key {} rejected)", self.key_name)))
            }
            (ResponseCode::NotZone, None) => Err(self.refused(format!(
                "{rname} (the record is not in zone {} on that server)",
                self.zone
            ))),
            (other, None) => Err(DnsError::Failed {
                server: self.server_text(),
                record: self.record_text.clone(),
                rcode: rcode_name(other),
            }),
        }
    }

    fn authoritative(&self) -> Vec<SocketAddr> {
        self.authoritative.clone()
    }
}

/// How long [`Route53::update`] waits for its change to be `INSYNC` (Route 53 usually
/// takes well under a minute).
const ROUTE53_SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between `GetChange` polls; Route 53 allows 5 requests a second per account.
const ROUTE53_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// The Route 53 REST API version, the first segment of every path.
const ROUTE53_API: &str = "2013-04-01";
const ROUTE53_XMLNS: &str = "https://route53.amazonaws.com/doc/2013-04-01/";

/// What [`Route53::new`] needs besides the record and its TTL.
#[derive(Clone, Debug)]
pub struct Route53Settings {
    /// `Z…` (a `/hostedzone/` prefix is dropped).
    pub hosted_zone_id: String,
    /// e.g. `https://route53.amazonaws.com`.
    pub endpoint: String,
    /// The SigV4 region, `us-east-1` for Route 53.
    pub region: String,
    pub credentials: AwsCredentials,
    /// Name servers to confirm with; empty: confirm through the API.
    pub authoritative: Vec<SocketAddr>,
}

/// One resource record set of the record's name, as `ListResourceRecordSets` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSet {
    pub name: String,
    /// `A` or `AAAA`.
    pub rtype: String,
    /// None for an alias record.
    pub ttl: Option<u32>,
    pub values: Vec<String>,
    /// An alias, weighted, latency, … record: not a plain one drmesh can replace.
    pub special: bool,
}

/// One `Change` of a change batch.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Change {
    action: &'static str,
    rtype: &'static str,
    ttl: u32,
    values: Vec<String>,
}

fn rtype_of(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "A",
        IpAddr::V6(_) => "AAAA",
    }
}

/// The `ChangeResourceRecordSetsRequest` document for `changes` of `record`.
fn change_batch_xml(record: &str, changes: &[Change]) -> String {
    use quick_xml::escape::escape;
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ChangeResourceRecordSetsRequest xmlns=\"{ROUTE53_XMLNS}\"><ChangeBatch><Comment>drmesh failover</Comment><Changes>"
    );
    for c in changes {
        xml.push_str(&format!(
            "<Change><Action>{}</Action><ResourceRecordSet><Name>{}</Name><Type>{}</Type><TTL>{}</TTL><ResourceRecords>",
            c.action,
            escape(record),
            c.rtype,
            c.ttl
        ));
        for v in &c.values {
            xml.push_str(&format!(
                "<ResourceRecord><Value>{}</Value></ResourceRecord>",
                escape(v.as_str())
            ));
        }
        xml.push_str("</ResourceRecords></ResourceRecordSet></Change>");
    }
    xml.push_str("</Changes></ChangeBatch></ChangeResourceRecordSetsRequest>");
    xml
}

mod route53_xml {
    //! The parts of Route 53's answers drmesh reads.
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    pub struct ListResourceRecordSetsResponse {
        #[serde(rename = "ResourceRecordSets", default)]
        pub sets: ResourceRecordSets,
    }

    #[derive(Debug, Default, Deserialize)]
    pub struct ResourceRecordSets {
        #[serde(rename = "ResourceRecordSet", default)]
        pub items: Vec<ResourceRecordSet>,
    }

    #[derive(Debug, Deserialize)]
    pub struct ResourceRecordSet {
        #[serde(rename = "Name")]
        pub name: String,
        #[serde(rename = "Type")]
        pub rtype: String,
        #[serde(rename = "TTL")]
        pub ttl: Option<u32>,
        #[serde(rename = "ResourceRecords")]
        pub records: Option<ResourceRecords>,
        #[serde(rename = "AliasTarget")]
        pub alias: Option<serde::de::IgnoredAny>,
        #[serde(rename = "SetIdentifier")]
        pub set_identifier: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    pub struct ResourceRecords {
        #[serde(rename = "ResourceRecord", default)]
        pub items: Vec<ResourceRecord>,
    }

    #[derive(Debug, Deserialize)]
    pub struct ResourceRecord {
        #[serde(rename = "Value")]
        pub value: String,
    }

    /// `ChangeResourceRecordSetsResponse` and `GetChangeResponse`.
    #[derive(Debug, Deserialize)]
    pub struct ChangeResponse {
        #[serde(rename = "ChangeInfo")]
        pub info: ChangeInfo,
    }

    #[derive(Debug, Deserialize)]
    pub struct ChangeInfo {
        #[serde(rename = "Id")]
        pub id: String,
        #[serde(rename = "Status")]
        pub status: String,
    }
}

/// The record sets named `record` (A and AAAA only) in a `ListResourceRecordSets` answer,
/// which lists sets from the start name and type onwards.
fn parse_record_sets(xml: &str, record: &str) -> Result<Vec<RecordSet>, String> {
    let parsed: route53_xml::ListResourceRecordSetsResponse =
        quick_xml::de::from_str(xml).map_err(|e| format!("undecodable answer: {e}"))?;
    let wanted = record.trim_end_matches('.').to_ascii_lowercase();
    Ok(parsed
        .sets
        .items
        .into_iter()
        .filter(|s| {
            s.name.trim_end_matches('.').to_ascii_lowercase() == wanted
                && matches!(s.rtype.as_str(), "A" | "AAAA")
        })
        .map(|s| RecordSet {
            name: s.name,
            rtype: s.rtype,
            ttl: s.ttl,
            values: s
                .records
                .unwrap_or_default()
                .items
                .into_iter()
                .map(|r| r.value.trim().to_string())
                .collect(),
            special: s.alias.is_some() || s.set_identifier.is_some(),
        })
        .collect())
}

/// (id without the `/change/` prefix, status) of a change answer.
fn parse_change_info(xml: &str) -> Result<(String, String), String> {
    let parsed: route53_xml::ChangeResponse =
        quick_xml::de::from_str(xml).map_err(|e| format!("undecodable answer: {e}"))?;
    Ok((
        parsed.info.id.trim_start_matches("/change/").to_string(),
        parsed.info.status,
    ))
}

/// (code, message) of an error answer: `<ErrorResponse><Error><Code>…<Message>…` or,
/// for `InvalidChangeBatch`, `<InvalidChangeBatch><Messages><Message>…` (the root is the
/// code). Messages are joined with "; ".
fn parse_route53_error(xml: &str) -> (String, String) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut root: Option<String> = None;
    let mut current = String::new();
    let mut code: Option<String> = None;
    let mut messages: Vec<String> = Vec::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                current = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if root.is_none() {
                    root = Some(current.clone());
                }
            }
            Ok(Event::End(_)) => current.clear(),
            Ok(Event::Text(t)) => {
                let text = t
                    .decode()
                    .ok()
                    .and_then(|s| quick_xml::escape::unescape(&s).ok().map(|u| u.into_owned()))
                    .unwrap_or_default();
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                match current.as_str() {
                    "Code" if code.is_none() => code = Some(text.to_string()),
                    "Message" => messages.push(text.to_string()),
                    _ => {}
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let code = code
        .or(root.filter(|r| r != "ErrorResponse"))
        .unwrap_or_default();
    (code, messages.join("; "))
}

/// Percent-encoding of a query value (RFC 3986 unreserved characters kept), as SigV4's
/// canonical query string expects it.
fn query_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A failed API call, before it is turned into a [`DnsError`].
#[derive(Debug)]
enum ApiError {
    /// No HTTP answer (connect, TLS, timeout).
    Transport(String),
    /// An HTTP error answer: status, the error code and message from its body.
    Status {
        status: u16,
        code: String,
        message: String,
    },
}

/// Signs and sends Route 53 API requests (blocking; call it in `spawn_blocking`).
struct Route53Api {
    endpoint: String,
    region: String,
    credentials: AwsCredentials,
    agent: ureq::Agent,
}

impl Route53Api {
    fn sign(
        &self,
        method: &str,
        url: &str,
        body: &[u8],
        time: SystemTime,
    ) -> Result<Vec<(String, String)>, String> {
        sigv4_headers(
            &self.credentials,
            &self.region,
            "route53",
            method,
            url,
            body,
            time,
        )
    }

    /// `method /2013-04-01/{path}` with `body`; Ok is the answer's body.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<String, ApiError> {
        let url = format!("{}/{ROUTE53_API}/{path}", self.endpoint);
        let bytes = body.unwrap_or("").as_bytes();
        let headers = self
            .sign(method, &url, bytes, SystemTime::now())
            .map_err(|e| ApiError::Transport(format!("sign the request: {e}")))?;
        let mut request = self.agent.request(method, &url);
        for (name, value) in &headers {
            request = request.set(name, value);
        }
        let answer = match body {
            Some(b) => request
                .set("content-type", "application/xml")
                .send_string(b),
            None => request.call(),
        };
        match answer {
            Ok(response) => response
                .into_string()
                .map_err(|e| ApiError::Transport(format!("read the answer: {e}"))),
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                let (code, message) = parse_route53_error(&text);
                let message = if message.is_empty() && code.is_empty() {
                    text.chars().take(300).collect()
                } else {
                    message
                };
                Err(ApiError::Status {
                    status,
                    code,
                    message,
                })
            }
            Err(ureq::Error::Transport(e)) => Err(ApiError::Transport(e.to_string())),
        }
    }
}

/// Amazon Route 53, through its REST API signed with SigV4.
///
/// An update is one `ChangeResourceRecordSets` batch: `DELETE` of the record set as it
/// is (value and TTL, read first) and `CREATE` of the new one. Route 53 applies a batch
/// atomically and refuses a `DELETE` that does not match exactly, which is the
/// prerequisite on the old address. The update then waits for the change to be `INSYNC`.
pub struct Route53 {
    api: Arc<Route53Api>,
    zone_id: String,
    record_text: String,
    ttl: u32,
    authoritative: Vec<SocketAddr>,
    /// The last change submitted and not yet seen `INSYNC`.
    pending: Mutex<Option<String>>,
}

impl fmt::Debug for Route53 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route53")
            .field("hosted_zone_id", &self.zone_id)
            .field("endpoint", &self.api.endpoint)
            .field("region", &self.api.region)
            .field("credentials", &self.api.credentials)
            .field("record", &self.record_text)
            .field("ttl", &self.ttl)
            .field("authoritative", &self.authoritative)
            .finish()
    }
}

impl Route53 {
    pub fn new(record: &str, ttl: u32, settings: Route53Settings) -> Result<Route53, DnsError> {
        let record_text = normalize_name(record)?;
        let zone_id = settings
            .hosted_zone_id
            .trim()
            .trim_start_matches("/hostedzone/")
            .to_string();
        if zone_id.is_empty() || !zone_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(DnsError::Config(format!(
                "hosted_zone_id {:?} is not a hosted zone id",
                settings.hosted_zone_id
            )));
        }
        let agent = ureq::AgentBuilder::new()
            .timeout(UPDATE_TIMEOUT)
            .user_agent(concat!("drmesh/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Route53 {
            api: Arc::new(Route53Api {
                endpoint: settings.endpoint.trim_end_matches('/').to_string(),
                region: settings.region,
                credentials: settings.credentials,
                agent,
            }),
            zone_id,
            record_text,
            ttl,
            authoritative: settings.authoritative,
            pending: Mutex::new(None),
        })
    }

    fn server_text(&self) -> String {
        format!(
            "Route 53 ({}, hosted zone {})",
            self.api.endpoint, self.zone_id
        )
    }

    /// Runs one API call on the blocking pool.
    async fn call(
        &self,
        method: &'static str,
        path: String,
        body: Option<String>,
    ) -> Result<String, DnsError> {
        let api = self.api.clone();
        let what = format!("{method} {path}");
        let answer = tokio::task::spawn_blocking(move || api.call(method, &path, body.as_deref()))
            .await
            .map_err(|e| DnsError::Failed {
                server: self.server_text(),
                record: self.record_text.clone(),
                rcode: format!("{what}: {e}"),
            })?;
        answer.map_err(|e| self.api_error(&what, e))
    }

    /// Maps a failed call: a refused signature or permission is `Refused`, throttling,
    /// 5xx and no answer are transient, other client errors permanent (`Refused`).
    /// `InvalidChangeBatch` is handled by the caller before this.
    fn api_error(&self, what: &str, e: ApiError) -> DnsError {
        match e {
            ApiError::Transport(message) => DnsError::Unreachable {
                server: self.server_text(),
                record: self.record_text.clone(),
                message: format!("{what}: {message}"),
            },
            ApiError::Status {
                status,
                code,
                message,
            } => {
                let detail = format!("{what}: HTTP {status} {code}: {message}");
                let transient = status >= 500
                    || status == 429
                    || matches!(
                        code.as_str(),
                        "Throttling"
                            | "ThrottlingException"
                            | "PriorRequestNotComplete"
                            | "ServiceUnavailable"
                            | "InternalFailure"
                    );
                if transient {
                    DnsError::Failed {
                        server: self.server_text(),
                        record: self.record_text.clone(),
                        rcode: detail,
                    }
                } else {
                    let why = match code.as_str() {
                        "SignatureDoesNotMatch" | "IncompleteSignature" => {
                            " (the secret access key is wrong)"
                        }
                        "InvalidClientTokenId" | "UnrecognizedClientException" => {
                            " (the access key id is unknown)"
                        }
                        "AccessDenied" | "AccessDeniedException" => {
                            " (the credentials may not change this hosted zone)"
                        }
                        "ExpiredToken" => " (the session token expired)",
                        "NoSuchHostedZone" => " (check hosted_zone_id)",
                        _ => "",
                    };
                    DnsError::Refused {
                        server: self.server_text(),
                        record: self.record_text.clone(),
                        reason: format!("{detail}{why}"),
                    }
                }
            }
        }
    }

    /// The record's A and AAAA record sets, as `ListResourceRecordSets` reports them.
    pub async fn record_sets(&self) -> Result<Vec<RecordSet>, DnsError> {
        let path = format!(
            "hostedzone/{}/rrset?maxitems=10&name={}&type=A",
            self.zone_id,
            query_encode(&self.record_text)
        );
        let xml = self.call("GET", path, None).await?;
        parse_record_sets(&xml, &self.record_text).map_err(|message| DnsError::Failed {
            server: self.server_text(),
            record: self.record_text.clone(),
            rcode: format!("ListResourceRecordSets: {message}"),
        })
    }

    /// The record's addresses; an alias or routing-policy record is a configuration
    /// error (drmesh replaces only a plain record).
    async fn current(&self) -> Result<(Vec<RecordSet>, Vec<IpAddr>), DnsError> {
        let sets = self.record_sets().await?;
        if let Some(s) = sets.iter().find(|s| s.special) {
            return Err(DnsError::Config(format!(
                "{} {} in hosted zone {} is an alias or routing-policy record; drmesh replaces only a plain record",
                s.name, s.rtype, self.zone_id
            )));
        }
        let mut addrs = Vec::new();
        for v in sets.iter().flat_map(|s| &s.values) {
            addrs.push(v.parse::<IpAddr>().map_err(|_| DnsError::Failed {
                server: self.server_text(),
                record: self.record_text.clone(),
                rcode: format!("ListResourceRecordSets answered {v:?}, not an address"),
            })?);
        }
        addrs.sort();
        addrs.dedup();
        Ok((sets, addrs))
    }

    /// One `GetChange`: whether `id` is `INSYNC`.
    async fn in_sync(&self, id: &str) -> Result<bool, DnsError> {
        let xml = self.call("GET", format!("change/{id}"), None).await?;
        let (_, status) = parse_change_info(&xml).map_err(|message| DnsError::Failed {
            server: self.server_text(),
            record: self.record_text.clone(),
            rcode: format!("GetChange: {message}"),
        })?;
        Ok(status == "INSYNC")
    }

    /// Polls the pending change, if any, until `INSYNC`, for at most
    /// [`ROUTE53_SYNC_TIMEOUT`]; then forgets it.
    async fn wait_pending(&self) -> Result<(), DnsError> {
        let Some(id) = self.pending.lock().clone() else {
            return Ok(());
        };
        let deadline = Instant::now() + ROUTE53_SYNC_TIMEOUT;
        loop {
            if self.in_sync(&id).await? {
                let mut pending = self.pending.lock();
                if pending.as_deref() == Some(id.as_str()) {
                    *pending = None;
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DnsError::Failed {
                    server: self.server_text(),
                    record: self.record_text.clone(),
                    rcode: format!(
                        "change {id} was accepted but is still PENDING after {}",
                        humantime::format_duration(ROUTE53_SYNC_TIMEOUT)
                    ),
                });
            }
            tokio::time::sleep(ROUTE53_POLL_INTERVAL).await;
        }
    }

    /// The change batch that replaces `current` (the sets read) with `new`.
    fn changes(&self, current: &[RecordSet], new: IpAddr) -> Vec<Change> {
        let mut changes: Vec<Change> = current
            .iter()
            .map(|s| Change {
                action: "DELETE",
                rtype: if s.rtype == "AAAA" { "AAAA" } else { "A" },
                ttl: s.ttl.unwrap_or(self.ttl),
                values: s.values.clone(),
            })
            .collect();
        changes.push(Change {
            action: "CREATE",
            rtype: rtype_of(new),
            ttl: self.ttl,
            values: vec![new.to_string()],
        });
        changes
    }
}

#[async_trait]
impl DnsProvider for Route53 {
    fn describe(&self) -> String {
        format!(
            "route53 hosted zone {} at {}",
            self.zone_id, self.api.endpoint
        )
    }

    fn record(&self) -> &str {
        &self.record_text
    }

    fn ttl(&self) -> u32 {
        self.ttl
    }

    async fn update(&self, old: Option<IpAddr>, new: IpAddr) -> Result<(), DnsError> {
        // An earlier attempt's change may still be propagating.
        self.wait_pending().await?;
        let (sets, addrs) = self.current().await?;
        if addrs == [new] {
            return Ok(());
        }
        let expected: Vec<IpAddr> = old.into_iter().collect();
        if addrs != expected {
            return Err(DnsError::Stale {
                record: self.record_text.clone(),
                found: stale_description(old, Ok(addrs)),
                rcode: "read before the change".into(),
            });
        }
        let body = change_batch_xml(&self.record_text, &self.changes(&sets, new));
        let path = format!("hostedzone/{}/rrset/", self.zone_id);
        let what = format!("POST {path}");
        let api = self.api.clone();
        let answer = tokio::task::spawn_blocking(move || api.call("POST", &path, Some(&body)))
            .await
            .map_err(|e| DnsError::Failed {
                server: self.server_text(),
                record: self.record_text.clone(),
                rcode: format!("{what}: {e}"),
            })?;
        let xml = match answer {
            Ok(xml) => xml,
            Err(ApiError::Status { code, message, .. })
                if code == "InvalidChangeBatch"
                    // moto answers a DELETE that does not match with InvalidInput.
                    || (code == "InvalidInput" && message.contains("Action=DELETE")) =>
            {
                // The record changed between the read and the change. If it now holds
                // exactly `new`, an earlier attempt of this same change won: success.
                let now = self.current().await.map(|(_, a)| a);
                if matches!(&now, Ok(a) if a == &[new]) {
                    return Ok(());
                }
                return Err(DnsError::Stale {
                    record: self.record_text.clone(),
                    found: format!("{} (Route 53: {message})", stale_description(old, now)),
                    rcode: code,
                });
            }
            Err(e) => return Err(self.api_error(&what, e)),
        };
        let (id, status) = parse_change_info(&xml).map_err(|message| DnsError::Failed {
            server: self.server_text(),
            record: self.record_text.clone(),
            rcode: format!("ChangeResourceRecordSets: {message}"),
        })?;
        tracing::info!(record = %self.record_text, %new, change = %id, %status, "Route 53 change submitted");
        if status != "INSYNC" {
            *self.pending.lock() = Some(id);
            self.wait_pending().await?;
        }
        Ok(())
    }

    fn authoritative(&self) -> Vec<SocketAddr> {
        self.authoritative.clone()
    }

    async fn api_answer(&self) -> Option<Result<Vec<IpAddr>, DnsError>> {
        let pending = self.pending.lock().clone();
        if let Some(id) = pending {
            match self.in_sync(&id).await {
                Ok(true) => {
                    let mut p = self.pending.lock();
                    if p.as_deref() == Some(id.as_str()) {
                        *p = None;
                    }
                }
                Ok(false) => {
                    return Some(Err(DnsError::Failed {
                        server: self.server_text(),
                        record: self.record_text.clone(),
                        rcode: format!("change {id} is still PENDING"),
                    }))
                }
                Err(e) => return Some(Err(e)),
            }
        }
        Some(self.current().await.map(|(_, addrs)| addrs))
    }
}

/// The embedded server's answer, as kept in the store (key: the record's name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ZoneState {
    /// The record's addresses: none, or one after the first update.
    addrs: Vec<IpAddr>,
    /// The SOA serial, raised by every change.
    serial: u32,
}

/// An authoritative server for the mesh's zone inside the coordinator: SOA, NS (with
/// `ns.<zone>` at the listen address) and the record. It stops when dropped.
pub struct Embedded {
    listen: SocketAddr,
    zone: Name,
    record: Name,
    record_text: String,
    ttl: u32,
    state: Arc<RwLock<ZoneState>>,
    store: Arc<dyn Store>,
    /// Serialises updates: check, persist, then publish, one at a time.
    updating: Mutex<()>,
    /// Dropping it shuts the server down.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl fmt::Debug for Embedded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Embedded")
            .field("listen", &self.listen)
            .field("zone", &self.zone.to_string())
            .field("record", &self.record_text)
            .field("ttl", &self.ttl)
            .field("state", &*self.state.read())
            .finish()
    }
}

impl Embedded {
    /// Binds UDP and TCP on `listen` (port 0: a free port, the same for both) and serves
    /// the zone. The answer is the one in the store, else `initial`, else none.
    pub async fn start(
        listen: SocketAddr,
        zone: &str,
        record: &str,
        ttl: u32,
        initial: Option<IpAddr>,
        store: Arc<dyn Store>,
    ) -> Result<Embedded, DnsError> {
        let zone = parse_name(zone)?;
        let record_name = parse_name(record)?;
        if !zone.zone_of(&record_name) {
            return Err(DnsError::Config(format!(
                "record {record_name} is not inside zone {zone}"
            )));
        }
        let record_text = record_name.to_string();
        let state = match store.get_json::<ZoneState>(Namespace::Dns, &record_text)? {
            Some(s) => s,
            None => ZoneState {
                addrs: initial.into_iter().collect(),
                serial: 1,
            },
        };
        let (udp, tcp) = bind_both(listen)?;
        let bound = udp.local_addr().map_err(|e| DnsError::Listen {
            addr: listen,
            message: e.to_string(),
        })?;
        let state = Arc::new(RwLock::new(state));
        let ns = Name::from_ascii("ns")
            .and_then(|n| n.append_domain(&zone))
            .map_err(|e| DnsError::Config(format!("name the zone's server: {e}")))?;
        let handler = ZoneAnswers {
            zone: zone.clone(),
            record: record_name.clone(),
            ns,
            ns_addr: (!bound.ip().is_unspecified()).then_some(bound.ip()),
            ttl,
            state: state.clone(),
        };
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, EMBEDDED_TCP_TIMEOUT, 64);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            // Either a send or the sender's drop ends the wait.
            let _ = stopped.await;
            if let Err(e) = server.shutdown_gracefully().await {
                tracing::warn!(error = %e, "embedded DNS server stopped with an error");
            }
        });
        tracing::info!(listen = %bound, zone = %zone, record = %record_text, "embedded DNS server started");
        Ok(Embedded {
            listen: bound,
            zone,
            record: record_name,
            record_text,
            ttl,
            state,
            store,
            updating: Mutex::new(()),
            _stop: stop,
        })
    }

    /// The address the server is bound to (with the real port when 0 was asked for).
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The record's current addresses.
    pub fn current(&self) -> Vec<IpAddr> {
        self.state.read().addrs.clone()
    }
}

/// Binds a UDP socket and a TCP listener on the same address; for port 0 the TCP side
/// takes the port UDP got, trying again a few times if that port is taken for TCP.
fn bind_both(
    listen: SocketAddr,
) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener), DnsError> {
    let fail = |message: String| DnsError::Listen {
        addr: listen,
        message,
    };
    let mut last = String::new();
    for _ in 0..10 {
        let udp = std::net::UdpSocket::bind(listen).map_err(|e| fail(format!("UDP: {e}")))?;
        let port = udp.local_addr().map_err(|e| fail(e.to_string()))?.port();
        match std::net::TcpListener::bind(SocketAddr::new(listen.ip(), port)) {
            Ok(tcp) => {
                udp.set_nonblocking(true).map_err(|e| fail(e.to_string()))?;
                tcp.set_nonblocking(true).map_err(|e| fail(e.to_string()))?;
                let udp = tokio::net::UdpSocket::from_std(udp).map_err(|e| fail(e.to_string()))?;
                let tcp =
                    tokio::net::TcpListener::from_std(tcp).map_err(|e| fail(e.to_string()))?;
                return Ok((udp, tcp));
            }
            Err(e) if listen.port() == 0 => last = e.to_string(),
            Err(e) => return Err(fail(format!("TCP: {e}"))),
        }
    }
    Err(fail(format!("TCP: {last}")))
}

#[async_trait]
impl DnsProvider for Embedded {
    fn describe(&self) -> String {
        format!("embedded at {}", self.listen)
    }

    fn record(&self) -> &str {
        &self.record_text
    }

    fn ttl(&self) -> u32 {
        self.ttl
    }

    async fn update(&self, old: Option<IpAddr>, new: IpAddr) -> Result<(), DnsError> {
        let _one_at_a_time = self.updating.lock();
        let current = self.state.read().clone();
        if current.addrs == [new] {
            return Ok(());
        }
        let expected: Vec<IpAddr> = old.into_iter().collect();
        if current.addrs != expected {
            return Err(DnsError::Stale {
                record: self.record_text.clone(),
                found: stale_description(old, Ok(current.addrs)),
                rcode: if old.is_some() { "NXRRSET" } else { "YXRRSET" }.to_string(),
            });
        }
        let next = ZoneState {
            addrs: vec![new],
            serial: current.serial.wrapping_add(1).max(1),
        };
        // Persist, then publish: a restarted coordinator serves at least what was served.
        self.store
            .put_json(Namespace::Dns, &self.record_text, &next)?;
        *self.state.write() = next;
        tracing::info!(record = %self.record, %new, "embedded DNS answer changed");
        Ok(())
    }

    fn authoritative(&self) -> Vec<SocketAddr> {
        vec![self.listen]
    }
}

/// Answers queries for the embedded zone from the shared state.
struct ZoneAnswers {
    zone: Name,
    record: Name,
    ns: Name,
    ns_addr: Option<IpAddr>,
    ttl: u32,
    state: Arc<RwLock<ZoneState>>,
}

impl ZoneAnswers {
    /// Every record of the zone, built from the current state.
    fn records(&self) -> Vec<Record> {
        let state = self.state.read().clone();
        let soa = SOA::new(
            self.ns.clone(),
            Name::from_ascii("hostmaster")
                .and_then(|n| n.append_domain(&self.zone))
                .unwrap_or_else(|_| self.zone.clone()),
            state.serial,
            3600,
            600,
            86400,
            self.ttl,
        );
        let mut out = vec![
            Record::from_rdata(self.zone.clone(), self.ttl, RData::SOA(soa)),
            Record::from_rdata(self.zone.clone(), self.ttl, RData::NS(NS(self.ns.clone()))),
        ];
        if let Some(ip) = self.ns_addr {
            if self.ns != self.record {
                out.push(Record::from_rdata(self.ns.clone(), self.ttl, rdata(ip)));
            }
        }
        for ip in state.addrs {
            out.push(Record::from_rdata(self.record.clone(), self.ttl, rdata(ip)));
        }
        out
    }

    /// (rcode, answers, authorities) for one query.
    fn answer(&self, request: &Request) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        if request.metadata.op_code != OpCode::Query {
            return (ResponseCode::NotImp, vec![], vec![]);
        }
        let Ok(info) = request.request_info() else {
            return (ResponseCode::FormErr, vec![], vec![]);
        };
        let qname = info.query.original().name().to_lowercase();
        let qtype = info.query.query_type();
        if !self.zone.zone_of(&qname) {
            return (ResponseCode::Refused, vec![], vec![]);
        }
        let all = self.records();
        let soa: Vec<Record> = all
            .iter()
            .filter(|r| r.record_type() == RecordType::SOA)
            .cloned()
            .collect();
        let at_name: Vec<&Record> = all.iter().filter(|r| r.name == qname).collect();
        if at_name.is_empty() {
            return (ResponseCode::NXDomain, vec![], soa);
        }
        let answers: Vec<Record> = at_name
            .into_iter()
            .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
            .cloned()
            .collect();
        if answers.is_empty() {
            (ResponseCode::NoError, vec![], soa)
        } else {
            (ResponseCode::NoError, answers, vec![])
        }
    }
}

#[async_trait]
impl RequestHandler for ZoneAnswers {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let (rcode, answers, authorities) = self.answer(request);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain);
        metadata.recursion_available = false;
        metadata.response_code = rcode;
        let response = MessageResponseBuilder::from_message_request(request).build(
            metadata,
            answers.iter(),
            authorities.iter(),
            iter::empty(),
            iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "embedded DNS server could not send an answer");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;

    const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ==";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_update_carries_the_prerequisite_and_replaces_the_rrset() {
        let key = TsigKey::parse(SECRET, "k", None).expect("key");
        let p = Rfc2136::new(
            "127.0.0.1:53".parse().expect("addr"),
            "drmesh.test",
            "db.drmesh.test",
            60,
            key,
            vec![],
        )
        .expect("provider");
        assert_eq!(
            p.authoritative(),
            vec!["127.0.0.1:53".parse().expect("addr")]
        );
        let m = p.update_message(Some(ip("198.18.0.11")), ip("198.18.0.12"));
        assert_eq!(m.metadata.op_code, OpCode::Update);
        // Prerequisites travel in the answer section, updates in the authority section.
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].dns_class, DNSClass::IN);
        assert_eq!(m.answers[0].data, rdata(ip("198.18.0.11")));
        assert_eq!(m.authorities.len(), 3);
        assert_eq!(m.authorities[2].ttl, 60);
        let m = p.update_message(None, ip("198.18.0.12"));
        assert_eq!(m.answers.len(), 2);
        assert!(m.answers.iter().all(|r| r.dns_class == DNSClass::NONE));
        let err = Rfc2136::new(
            "127.0.0.1:53".parse().expect("addr"),
            "other.test",
            "db.drmesh.test",
            60,
            TsigKey::parse(SECRET, "k", None).expect("key"),
            vec![],
        )
        .expect_err("outside");
        assert!(err.to_string().contains("not inside zone"), "{err}");
    }

    async fn embedded(store: Arc<dyn Store>, initial: Option<IpAddr>) -> Embedded {
        Embedded::start(
            "127.0.0.1:0".parse().expect("addr"),
            "drmesh.test",
            "db.drmesh.test",
            60,
            initial,
            store,
        )
        .await
        .expect("start")
    }

    #[tokio::test]
    async fn the_embedded_server_checks_the_prerequisite_and_serves_the_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.path().join("s.redb")).expect("open"));
        let dns = embedded(store, Some(ip("198.18.0.11"))).await;
        let server = dns.authoritative()[0];
        assert_ne!(server.port(), 0);
        assert_eq!(dns.describe(), format!("embedded at {server}"));
        let t = Duration::from_secs(2);
        assert_eq!(
            query(server, "db.drmesh.test", t).await.expect("query"),
            vec![ip("198.18.0.11")]
        );
        assert_eq!(
            query(server, "nothing.drmesh.test.", t)
                .await
                .expect("query"),
            Vec::<IpAddr>::new()
        );

        let err = dns
            .update(Some(ip("198.18.0.99")), ip("198.18.0.12"))
            .await
            .expect_err("stale");
        assert!(matches!(err, DnsError::Stale { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("no longer holds 198.18.0.99 (it holds 198.18.0.11)"),
            "{err}"
        );
        let err = dns
            .update(None, ip("198.18.0.12"))
            .await
            .expect_err("stale");
        assert!(matches!(err, DnsError::Stale { .. }), "{err}");
        assert_eq!(dns.current(), vec![ip("198.18.0.11")]);

        dns.update(Some(ip("198.18.0.11")), ip("198.18.0.12"))
            .await
            .expect("update");
        // Repeating the same change (or any change to what is already there) is Ok.
        dns.update(Some(ip("198.18.0.11")), ip("198.18.0.12"))
            .await
            .expect("idempotent");
        let lines = confirm(&dns, ip("198.18.0.12"), Duration::from_secs(5))
            .await
            .expect("confirm");
        assert_eq!(lines, vec![format!("{server} answers 198.18.0.12")]);
        let err = confirm(&dns, ip("198.18.0.13"), Duration::from_millis(300))
            .await
            .expect_err("not confirmed");
        assert!(
            err.to_string().contains(&format!(
                "{server} answers 198.18.0.12 instead of 198.18.0.13"
            )),
            "{err}"
        );

        // IPv6 replaces IPv4 under the same name.
        dns.update(Some(ip("198.18.0.12")), ip("2001:db8::12"))
            .await
            .expect("update to v6");
        assert_eq!(
            query(server, "db.drmesh.test.", t).await.expect("query"),
            vec![ip("2001:db8::12")]
        );
    }

    #[tokio::test]
    async fn the_embedded_answer_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        {
            let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).expect("open"));
            let dns = embedded(store, None).await;
            assert!(dns.current().is_empty());
            dns.update(None, ip("198.18.0.21")).await.expect("update");
            dns.update(Some(ip("198.18.0.21")), ip("198.18.0.22"))
                .await
                .expect("update");
        }
        // The server task may still hold nothing of the store; the file can be reopened.
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).expect("reopen"));
        let dns = embedded(store, Some(ip("198.18.0.1"))).await;
        assert_eq!(dns.current(), vec![ip("198.18.0.22")]);
        assert_eq!(
            query(dns.listen(), "db.drmesh.test.", Duration::from_secs(2))
                .await
                .expect("query"),
            vec![ip("198.18.0.22")]
        );
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

    #[tokio::test]
    async fn an_unreachable_server_is_reported_as_such() {
        let key = TsigKey::parse(SECRET, "k", None).expect("key");
        // A port nobody listens on (bound then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let server = SocketAddr::from(([127, 0, 0, 1], port));
        let p = Rfc2136::new(server, "drmesh.test", "db.drmesh.test", 60, key, vec![])
            .expect("provider");
        let err = p
            .update(None, ip("198.18.0.1"))
            .await
            .expect_err("unreachable");
        assert!(matches!(err, DnsError::Unreachable { .. }), "{err}");
        assert!(!err.is_permanent());
    }
    fn route53(authoritative: Vec<SocketAddr>) -> Route53 {
        Route53::new(
            "DB.drmesh.test",
            60,
            Route53Settings {
                hosted_zone_id: "/hostedzone/Z0123ABC".into(),
                endpoint: "http://127.0.0.1:9/".into(),
                region: "us-east-1".into(),
                credentials: AwsCredentials::new("AKIDTEST", "s3cr3t-key", Some("t0ken")),
                authoritative,
            },
        )
        .expect("provider")
    }

    #[test]
    fn route53_secrets_stay_out_of_debug() {
        let p = route53(vec![]);
        let text = format!("{p:?}");
        assert!(text.contains("AKIDTEST"), "{text}");
        assert!(
            !text.contains("s3cr3t-key") && !text.contains("t0ken"),
            "{text}"
        );
        assert_eq!(p.record(), "db.drmesh.test.");
        assert_eq!(p.zone_id, "Z0123ABC");
        assert_eq!(
            p.describe(),
            "route53 hosted zone Z0123ABC at http://127.0.0.1:9"
        );
    }

    #[test]
    fn the_route53_change_batch_deletes_the_old_set_exactly_and_creates_the_new() {
        let p = route53(vec![]);
        let current = vec![RecordSet {
            name: "db.drmesh.test.".into(),
            rtype: "A".into(),
            ttl: Some(300),
            values: vec!["198.18.0.11".into()],
            special: false,
        }];
        let changes = p.changes(&current, ip("2001:db8::12"));
        assert_eq!(
            changes,
            vec![
                Change {
                    action: "DELETE",
                    rtype: "A",
                    ttl: 300,
                    values: vec!["198.18.0.11".into()],
                },
                Change {
                    action: "CREATE",
                    rtype: "AAAA",
                    ttl: 60,
                    values: vec!["2001:db8::12".into()],
                },
            ]
        );
        let xml = change_batch_xml(p.record(), &changes);
        assert!(xml.contains("<ChangeResourceRecordSetsRequest xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\">"), "{xml}");
        assert!(xml.contains("<Change><Action>DELETE</Action><ResourceRecordSet><Name>db.drmesh.test.</Name><Type>A</Type><TTL>300</TTL><ResourceRecords><ResourceRecord><Value>198.18.0.11</Value></ResourceRecord></ResourceRecords></ResourceRecordSet></Change>"), "{xml}");
        assert!(xml.contains("<Action>CREATE</Action><ResourceRecordSet><Name>db.drmesh.test.</Name><Type>AAAA</Type><TTL>60</TTL>"), "{xml}");
        // With nothing to replace, only the CREATE.
        let only = p.changes(&[], ip("198.18.0.12"));
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].action, "CREATE");
        // The document is well-formed XML.
        let mut reader = quick_xml::Reader::from_str(&xml);
        loop {
            match reader.read_event().expect("well-formed") {
                quick_xml::events::Event::Eof => break,
                _ => continue,
            }
        }
    }

    #[test]
    fn route53_answers_are_parsed() {
        let list = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListResourceRecordSetsResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/">
  <ResourceRecordSets>
    <ResourceRecordSet><Name>db.drmesh.test.</Name><Type>A</Type><TTL>300</TTL>
      <ResourceRecords><ResourceRecord><Value>198.18.0.11</Value></ResourceRecord></ResourceRecords>
    </ResourceRecordSet>
    <ResourceRecordSet><Name>DB.drmesh.test.</Name><Type>AAAA</Type><TTL>60</TTL>
      <ResourceRecords><ResourceRecord><Value>2001:db8::1</Value></ResourceRecord><ResourceRecord><Value>2001:db8::2</Value></ResourceRecord></ResourceRecords>
    </ResourceRecordSet>
    <ResourceRecordSet><Name>db.drmesh.test.</Name><Type>TXT</Type><TTL>60</TTL>
      <ResourceRecords><ResourceRecord><Value>"x"</Value></ResourceRecord></ResourceRecords>
    </ResourceRecordSet>
    <ResourceRecordSet><Name>dc.drmesh.test.</Name><Type>A</Type><TTL>60</TTL>
      <ResourceRecords><ResourceRecord><Value>198.18.0.99</Value></ResourceRecord></ResourceRecords>
    </ResourceRecordSet>
  </ResourceRecordSets>
  <IsTruncated>true</IsTruncated><NextRecordName>e.drmesh.test.</NextRecordName><NextRecordType>A</NextRecordType><MaxItems>10</MaxItems>
</ListResourceRecordSetsResponse>"#;
        let sets = parse_record_sets(list, "db.drmesh.test.").expect("parse");
        assert_eq!(sets.len(), 2, "{sets:?}");
        assert_eq!(sets[0].ttl, Some(300));
        assert_eq!(sets[0].values, vec!["198.18.0.11"]);
        assert_eq!(sets[1].rtype, "AAAA");
        assert_eq!(sets[1].values.len(), 2);
        assert!(!sets[0].special);
        let alias = r#"<ListResourceRecordSetsResponse><ResourceRecordSets><ResourceRecordSet><Name>db.drmesh.test.</Name><Type>A</Type><AliasTarget><HostedZoneId>Z2</HostedZoneId><DNSName>lb.example.</DNSName><EvaluateTargetHealth>false</EvaluateTargetHealth></AliasTarget></ResourceRecordSet></ResourceRecordSets><IsTruncated>false</IsTruncated><MaxItems>10</MaxItems></ListResourceRecordSetsResponse>"#;
        let sets = parse_record_sets(alias, "db.drmesh.test").expect("parse");
        assert!(sets[0].special && sets[0].ttl.is_none());
        let empty = r#"<ListResourceRecordSetsResponse><ResourceRecordSets/><IsTruncated>false</IsTruncated><MaxItems>10</MaxItems></ListResourceRecordSetsResponse>"#;
        assert!(parse_record_sets(empty, "db.drmesh.test.")
            .expect("parse")
            .is_empty());
        assert!(parse_record_sets("not xml <", "db.drmesh.test.").is_err());

        let change = r#"<?xml version="1.0" encoding="UTF-8"?><ChangeResourceRecordSetsResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><ChangeInfo><Id>/change/C2682N5HXP0BZ4</Id><Status>PENDING</Status><SubmittedAt>2017-03-10T01:36:41.958Z</SubmittedAt></ChangeInfo></ChangeResourceRecordSetsResponse>"#;
        assert_eq!(
            parse_change_info(change).expect("parse"),
            ("C2682N5HXP0BZ4".to_string(), "PENDING".to_string())
        );

        let batch = r#"<?xml version="1.0"?><InvalidChangeBatch xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><Messages><Message>Tried to delete resource record set [name='db.drmesh.test.', type='A'] but the values provided do not match the current values</Message></Messages><RequestId>b25f48e8</RequestId></InvalidChangeBatch>"#;
        let (code, message) = parse_route53_error(batch);
        assert_eq!(code, "InvalidChangeBatch");
        assert!(
            message.contains("do not match the current values"),
            "{message}"
        );
        let denied = r#"<?xml version="1.0"?><ErrorResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message></Error><RequestId>x</RequestId></ErrorResponse>"#;
        let (code, message) = parse_route53_error(denied);
        assert_eq!(code, "SignatureDoesNotMatch");
        assert!(message.starts_with("The request signature"), "{message}");
        assert_eq!(query_encode("db.drmesh.test."), "db.drmesh.test.");
        assert_eq!(query_encode("*.x y"), "%2A.x%20y");
    }

    #[test]
    fn route53_errors_map_to_permanent_or_transient() {
        let p = route53(vec![]);
        let status = |status: u16, code: &str| ApiError::Status {
            status,
            code: code.into(),
            message: "m".into(),
        };
        for (e, permanent) in [
            (status(403, "SignatureDoesNotMatch"), true),
            (status(403, "InvalidClientTokenId"), true),
            (status(403, "AccessDenied"), true),
            (status(404, "NoSuchHostedZone"), true),
            (status(400, "Throttling"), false),
            (status(400, "PriorRequestNotComplete"), false),
            (status(503, "ServiceUnavailable"), false),
            (status(500, ""), false),
            (ApiError::Transport("connection refused".into()), false),
        ] {
            let what = format!("{e:?}");
            let err = p.api_error("GET x", e);
            assert_eq!(err.is_permanent(), permanent, "{what}: {err}");
            if permanent {
                assert!(matches!(err, DnsError::Refused { .. }), "{what}: {err}");
            }
        }
    }

    #[tokio::test]
    async fn route53_without_a_server_is_unreachable_and_not_confirmed() {
        // Port 9 (discard) on loopback: nothing listens.
        let p = route53(vec![]);
        let err = p
            .update(None, ip("198.18.0.1"))
            .await
            .expect_err("unreachable");
        assert!(matches!(err, DnsError::Unreachable { .. }), "{err}");
        assert!(!err.is_permanent());
        // No authoritative server: confirm reads back through the API, and fails here.
        let err = confirm(&p, ip("198.18.0.1"), Duration::from_millis(100))
            .await
            .expect_err("not confirmed");
        assert!(matches!(err, DnsError::NotConfirmed { .. }), "{err}");
        assert!(err.to_string().contains("API did not answer"), "{err}");
        let p = route53(vec!["127.0.0.1:53".parse().expect("addr")]);
        assert_eq!(p.authoritative().len(), 1);
    }
}
