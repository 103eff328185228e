//! Amazon Route 53 through its REST API: the change batch (`DELETE` of the record set as
//! held, `CREATE` of the new one), `GetChange` until `INSYNC`, the XML of requests and
//! answers, and which API errors are permanent. Requests are signed by `sigv4.rs`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::names::normalize_name;
use super::sigv4::{sigv4_headers, AwsCredentials};
use super::{stale_description, DnsError, DnsProvider, UPDATE_TIMEOUT};

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

mod xml {
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
    let parsed: xml::ListResourceRecordSetsResponse =
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
    let parsed: xml::ChangeResponse =
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::confirm;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
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
