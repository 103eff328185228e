//! RFC 2136 dynamic update signed with TSIG, sent over TCP to one primary server (BIND,
//! Knot, PowerDNS), with an RFC 2136 §2.4 prerequisite on the old answer.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::{DNSClass, Name, Record, RecordType, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::names::parse_name;
use super::query::{query, CONFIRM_QUERY_TIMEOUT};
use super::tsig::TsigKey;
use super::{rdata, stale_description, DnsError, DnsProvider, UPDATE_TIMEOUT};

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

#[cfg(test)]
mod tests {
    use super::*;

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
