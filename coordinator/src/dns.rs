//! DNS for failover steps 4 and 5: point the mesh's record at the new primary, then
//! confirm it at every authoritative server.
//!
//! Providers sit behind one object-safe trait, [`DnsProvider`]:
//! - [`Rfc2136`]: a dynamic update (RFC 2136) signed with TSIG (RFC 8945), sent to a
//!   primary server such as BIND, Knot or PowerDNS;
//! - [`Embedded`]: an authoritative server for the mesh's zone inside the coordinator
//!   (hickory-server), the quickstart default, whose answer is kept in the store.
//!
//! Architecture Invariant: an update only replaces the answer it expects to replace (an
//! RFC 2136 §2.4.2 prerequisite on the old address), so a stale coordinator cannot
//! overwrite a newer coordinator's answer.
//!
//! Architecture Invariant: success is established by [`confirm`], which asks every
//! authoritative server directly, never by the absence of an error from `update`.

use std::fmt;
use std::iter;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hickory_proto::op::{
    Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
    UpdateMessage,
};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::runtime::{Time, TokioRuntimeProvider};
use hickory_resolver::Resolver;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{DnsConfig, DnsProviderConfig, TsigAlgorithmName};
use crate::store::{Namespace, Store, StoreError, StoreExt};

/// How long one RFC 2136 exchange (connect, send, answer) may take.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Allowed clock difference for TSIG, in seconds (RFC 8945 recommends 300).
const TSIG_FUDGE: u16 = 300;
/// How long one query of [`confirm`] may take before it counts as unanswered.
const CONFIRM_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between rounds of [`confirm`].
const CONFIRM_INTERVAL: Duration = Duration::from_millis(250);
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
    /// Every authoritative server to confirm with.
    fn authoritative(&self) -> Vec<SocketAddr>;
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
    }
}

/// Parses a domain name, lowercases it and makes it fully qualified ("db.x.test.").
pub fn normalize_name(name: &str) -> Result<String, DnsError> {
    parse_name(name).map(|n| n.to_string())
}

/// Whether `name` is `zone` or inside it (both as given to [`normalize_name`]).
pub fn in_zone(zone: &str, name: &str) -> Result<bool, DnsError> {
    Ok(parse_name(zone)?.zone_of(&parse_name(name)?))
}

/// The zone a record belongs to by default: its parent ("db.x.test." → "x.test.").
pub fn parent_zone(name: &str) -> Result<String, DnsError> {
    let n = parse_name(name)?;
    if n.num_labels() < 2 {
        return Err(DnsError::Name {
            name: name.to_string(),
            message: "needs at least two labels to have a parent zone".into(),
        });
    }
    Ok(n.base_name().to_string())
}

fn parse_name(name: &str) -> Result<Name, DnsError> {
    let bad = |message: String| DnsError::Name {
        name: name.to_string(),
        message,
    };
    if name.trim().is_empty() || name == "." {
        return Err(bad("empty".into()));
    }
    let mut n = Name::from_ascii(name).map_err(|e| bad(e.to_string()))?;
    n.set_fqdn(true);
    Ok(n.to_lowercase())
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

/// Asks `server` directly, and only it, for the A and AAAA records of `name`.
///
/// Uses hickory-resolver with that single name server, recursion not desired, the cache
/// size 0 and a resolver built for this one call, so nothing is cached between calls; the
/// hosts file is not read. No records (NODATA or NXDOMAIN) is `Ok(vec![])`.
pub async fn query(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<IpAddr>, DnsError> {
    let fail = |message: String| DnsError::Query {
        server,
        name: name.to_string(),
        message,
    };
    let fqdn = parse_name(name)?;
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = server.port();
    let mut config = ResolverConfig::default();
    config.name_servers = vec![NameServerConfig::new(server.ip(), true, vec![udp, tcp])];
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.recursion_desired = false;
    opts.attempts = 1;
    opts.timeout = timeout;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.ndots = 0;
    opts.try_tcp_on_error = true;
    let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let lookup = tokio::time::timeout(timeout, resolver.lookup_ip(fqdn))
        .await
        .map_err(|_| {
            fail(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
        })?;
    match lookup {
        Ok(found) => {
            let mut addrs: Vec<IpAddr> = found.iter().collect();
            addrs.sort();
            addrs.dedup();
            Ok(addrs)
        }
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Polls every authoritative server of `provider` until each answers exactly
/// `[expected]`, for at most `timeout`. Ok lists what each answered ("127.0.0.1:5353
/// answers 198.18.0.12"); the error names each server that did not, with its answer.
pub async fn confirm(
    provider: &dyn DnsProvider,
    expected: IpAddr,
    timeout: Duration,
) -> Result<Vec<String>, DnsError> {
    let record = provider.record().to_string();
    let servers = provider.authoritative();
    if servers.is_empty() {
        return Err(DnsError::Config(format!(
            "{} names no authoritative server to confirm {record} with",
            provider.describe()
        )));
    }
    let deadline = Instant::now() + timeout;
    loop {
        let mut confirmed = Vec::new();
        let mut failures = Vec::new();
        for server in &servers {
            let left = deadline.saturating_duration_since(Instant::now());
            let per_query = left.clamp(Duration::from_millis(200), CONFIRM_QUERY_TIMEOUT);
            match query(*server, &record, per_query).await {
                Ok(addrs) if addrs == [expected] => {
                    confirmed.push(format!("{server} answers {expected}"))
                }
                Ok(addrs) => failures.push(format!(
                    "{server} answers {} instead of {expected}",
                    show_addrs(&addrs)
                )),
                Err(e) => failures.push(format!("{server} did not answer: {e}")),
            }
        }
        if failures.is_empty() {
            return Ok(confirmed);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DnsError::NotConfirmed {
                record,
                within: humantime::format_duration(timeout).to_string(),
                failures,
            });
        }
        tokio::time::sleep(left.min(CONFIRM_INTERVAL)).await;
    }
}

/// A TSIG key: its name, algorithm and secret. `Debug` leaves the secret out.
#[derive(Clone)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: TsigAlgorithmName,
    secret: Vec<u8>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// Reads the key `name` from `path`: either a bare base64 secret, or a BIND
    /// `key "NAME" { algorithm …; secret "…"; };` file as `tsig-keygen` writes it. For a
    /// BIND file the algorithm is the file's, and `algorithm`, when given, must agree;
    /// for a bare secret it is `algorithm`, by default hmac-sha256.
    pub fn load(
        path: &Path,
        name: &str,
        algorithm: Option<TsigAlgorithmName>,
    ) -> Result<TsigKey, DnsError> {
        let text = std::fs::read_to_string(path).map_err(|e| DnsError::Key {
            path: path.to_path_buf(),
            message: format!("read: {e}"),
        })?;
        Self::parse(&text, name, algorithm).map_err(|message| DnsError::Key {
            path: path.to_path_buf(),
            message,
        })
    }

    /// [`TsigKey::load`] on the file's text.
    pub fn parse(
        text: &str,
        name: &str,
        algorithm: Option<TsigAlgorithmName>,
    ) -> Result<TsigKey, String> {
        let wanted = normalize_name(name).map_err(|e| e.to_string())?;
        let tokens = tokenize(text)?;
        if !tokens.iter().any(|t| t == "key") {
            let secret: String = text.split_whitespace().collect();
            let secret = decode_secret(&secret)?;
            return Ok(TsigKey {
                name: wanted,
                algorithm: algorithm.unwrap_or_default(),
                secret,
            });
        }
        let keys = parse_bind_keys(&tokens)?;
        let mut names = Vec::new();
        for (key_name, key_alg, key_secret) in keys {
            if normalize_name(&key_name).ok().as_deref() != Some(wanted.as_str()) {
                names.push(key_name);
                continue;
            }
            let file_alg = TsigAlgorithmName::from_bind(&key_alg).ok_or_else(|| {
                format!("key {key_name:?} uses algorithm {key_alg:?}; drmesh supports hmac-sha256, hmac-sha384 and hmac-sha512")
            })?;
            if let Some(configured) = algorithm {
                if configured != file_alg {
                    return Err(format!(
                        "key {key_name:?} is {file_alg} in the file but tsig_algorithm says {configured}"
                    ));
                }
            }
            return Ok(TsigKey {
                name: wanted,
                algorithm: file_alg,
                secret: decode_secret(&key_secret)?,
            });
        }
        Err(format!(
            "no key named {name:?} in the file (it has {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ))
    }

    fn signer(&self) -> Result<TSigner, DnsError> {
        let bad = |message: String| DnsError::Config(format!("TSIG key {}: {message}", self.name));
        let name = parse_name(&self.name)?;
        let algorithm = match self.algorithm {
            TsigAlgorithmName::HmacSha256 => TsigAlgorithm::HmacSha256,
            TsigAlgorithmName::HmacSha384 => TsigAlgorithm::HmacSha384,
            TsigAlgorithmName::HmacSha512 => TsigAlgorithm::HmacSha512,
        };
        TSigner::new(self.secret.clone(), algorithm, name, TSIG_FUDGE)
            .map_err(|e| bad(e.to_string()))
    }
}

fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let bytes = data_encoding::BASE64
        .decode(secret.trim().as_bytes())
        .map_err(|e| format!("the secret is not base64: {e}"))?;
    if bytes.len() < 16 {
        return Err(format!(
            "the secret is {} bytes; at least 16 are needed (make one with `tsig-keygen -a hmac-sha256 NAME`)",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Splits named.conf-style text into words, quoted strings (without quotes) and the
/// punctuation `{`, `}`, `;`; drops `#`, `//` and `/* */` comments.
fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                let mut closed = false;
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        closed = true;
                        break;
                    }
                    prev = c;
                }
                if !closed {
                    return Err("unterminated /* comment".into());
                }
            }
            '"' => {
                let mut s = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '"' {
                        closed = true;
                        break;
                    }
                    s.push(c);
                }
                if !closed {
                    return Err("unterminated quoted string".into());
                }
                out.push(s);
            }
            '{' | '}' | ';' => out.push(c.to_string()),
            c => {
                let mut s = c.to_string();
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// Every `key NAME { algorithm ALG; secret SECRET; };` statement: (name, algorithm,
/// secret). Other statements are skipped.
fn parse_bind_keys(tokens: &[String]) -> Result<Vec<(String, String, String)>, String> {
    let mut keys = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] != "key" {
            i += 1;
            continue;
        }
        let name = tokens.get(i + 1).ok_or("`key` without a name")?.to_string();
        if tokens.get(i + 2).map(String::as_str) != Some("{") {
            return Err(format!("key {name:?}: expected `{{` after the name"));
        }
        i += 3;
        let (mut algorithm, mut secret) = (None, None);
        loop {
            match tokens.get(i).map(String::as_str) {
                None => return Err(format!("key {name:?}: missing `}}`")),
                Some("}") => {
                    i += 1;
                    break;
                }
                Some(word) => {
                    let value = tokens
                        .get(i + 1)
                        .ok_or_else(|| format!("key {name:?}: {word} without a value"))?;
                    if tokens.get(i + 2).map(String::as_str) != Some(";") {
                        return Err(format!("key {name:?}: expected `;` after {word}"));
                    }
                    match word {
                        "algorithm" => algorithm = Some(value.to_string()),
                        "secret" => secret = Some(value.to_string()),
                        other => return Err(format!("key {name:?}: unknown clause {other:?}")),
                    }
                    i += 3;
                }
            }
        }
        if tokens.get(i).map(String::as_str) == Some(";") {
            i += 1;
        }
        let algorithm = algorithm.ok_or_else(|| format!("key {name:?} has no algorithm"))?;
        let secret = secret.ok_or_else(|| format!("key {name:?} has no secret"))?;
        keys.push((name, algorithm, secret));
    }
    Ok(keys)
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
    fn names_are_normalized_and_zones_checked() {
        assert_eq!(
            normalize_name("DB.Drmesh.Test").expect("name"),
            "db.drmesh.test."
        );
        assert_eq!(
            normalize_name("db.drmesh.test.").expect("name"),
            "db.drmesh.test."
        );
        assert!(normalize_name("").is_err());
        assert!(normalize_name("a..b").is_err());
        assert!(in_zone("drmesh.test", "db.drmesh.test.").expect("names"));
        assert!(!in_zone("other.test", "db.drmesh.test.").expect("names"));
        assert_eq!(
            parent_zone("db.drmesh.test").expect("parent"),
            "drmesh.test."
        );
        assert!(parent_zone("test.").is_err());
    }

    #[test]
    fn a_bare_base64_secret_is_read_with_the_configured_algorithm() {
        let key = TsigKey::parse(&format!("{SECRET}\n"), "drmesh-key", None).expect("key");
        assert_eq!(key.name, "drmesh-key.");
        assert_eq!(key.algorithm, TsigAlgorithmName::HmacSha256);
        let key = TsigKey::parse(SECRET, "k", Some(TsigAlgorithmName::HmacSha512)).expect("key");
        assert_eq!(key.algorithm, TsigAlgorithmName::HmacSha512);
        assert!(!format!("{key:?}").contains(SECRET));
        let err = TsigKey::parse("not base64!", "k", None).expect_err("bad");
        assert!(err.contains("base64"), "{err}");
        let err = TsigKey::parse("c2hvcnQ=", "k", None).expect_err("short");
        assert!(err.contains("at least 16"), "{err}");
    }

    #[test]
    fn a_bind_key_file_is_read() {
        let text = format!(
            "# made by tsig-keygen\nkey \"other\" {{\n\talgorithm hmac-sha512;\n\tsecret \"{SECRET}\";\n}};\n/* the one */\nkey \"drmesh-key\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{SECRET}\";\n}};\n"
        );
        let key = TsigKey::parse(&text, "drmesh-key", None).expect("key");
        assert_eq!(key.algorithm, TsigAlgorithmName::HmacSha256);
        let key = TsigKey::parse(&text, "other.", None).expect("key");
        assert_eq!(key.algorithm, TsigAlgorithmName::HmacSha512);
        let err = TsigKey::parse(&text, "drmesh-key", Some(TsigAlgorithmName::HmacSha512))
            .expect_err("mismatch");
        assert!(err.contains("tsig_algorithm"), "{err}");
        let err = TsigKey::parse(&text, "missing", None).expect_err("missing");
        assert!(err.contains("other, drmesh-key"), "{err}");
        let err = TsigKey::parse(
            "key \"k\" { algorithm hmac-md5; secret \"x\"; };",
            "k",
            None,
        )
        .expect_err("md5");
        assert!(err.contains("hmac-md5"), "{err}");
        let err = TsigKey::parse("key \"k\" { secret \"x\"; };", "k", None).expect_err("no alg");
        assert!(err.contains("no algorithm"), "{err}");
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
}
