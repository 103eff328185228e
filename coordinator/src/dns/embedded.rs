//! The embedded authoritative server (hickory-server) for the mesh's zone: SOA, NS and
//! the record, whose answer is kept in the store so that a restarted coordinator serves
//! at least what it served before.
//!
//! With several coordinators on one etcd store every one of them runs a server, but only
//! the leader changes the answer. The others re-read it from the store every
//! [`REFRESH_EVERY`] and serve the stored answer once its serial is higher than theirs, so
//! a follower does not keep serving the old primary after a failover.

use std::fmt;
use std::iter;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hickory_proto::op::{Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{NS, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::names::parse_name;
use super::{rdata, stale_description, DnsError, DnsProvider};
use crate::store::{Namespace, Store, StoreExt};

/// Idle TCP connections to the embedded server are closed after this long.
const EMBEDDED_TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the server re-reads its answer from the store, where another coordinator
/// (the leader, on a shared store) may have changed it.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The embedded server's answer, as kept in the store (key: the record's name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ZoneState {
    /// The record's addresses: none, or one after the first update.
    addrs: Vec<IpAddr>,
    /// The SOA serial, raised by every change.
    serial: u32,
}

/// What to serve after reading `stored` from the store while serving `current`: the
/// stored state when its serial is higher (another coordinator changed the answer), else
/// nothing. An equal or lower serial is this server's own state, or a read that raced
/// one of its updates, and must not undo it.
fn newer(current: &ZoneState, stored: Option<ZoneState>) -> Option<ZoneState> {
    stored.filter(|s| s.serial > current.serial)
}

/// The refresh task's way to the store. [`Embedded`]'s drop empties it, waiting for a
/// read in flight, so that nothing of a dropped server still holds the store (redb locks
/// its file while it is open).
type StoreSlot = Arc<Mutex<Option<Arc<dyn Store>>>>;

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
    /// Serialises updates, and the refresh's compare-and-swap with them: check,
    /// persist, then publish, one at a time.
    updating: Arc<Mutex<()>>,
    /// The refresh task's store, emptied on drop.
    refresh_store: StoreSlot,
    /// Dropping it shuts the server and the refresh down.
    _stop: tokio::sync::watch::Sender<()>,
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
        let (stop, mut stopped) = tokio::sync::watch::channel(());
        let refresh_stop = stopped.clone();
        tokio::spawn(async move {
            // The sender's drop ends the wait.
            let _ = stopped.changed().await;
            if let Err(e) = server.shutdown_gracefully().await {
                tracing::warn!(error = %e, "embedded DNS server stopped with an error");
            }
        });
        let updating = Arc::new(Mutex::new(()));
        let refresh_store: StoreSlot = Arc::new(Mutex::new(Some(store.clone())));
        tokio::spawn(refresh(
            Refresh {
                state: state.clone(),
                updating: updating.clone(),
                store: refresh_store.clone(),
                key: record_text.clone(),
            },
            refresh_stop,
        ));
        tracing::info!(listen = %bound, zone = %zone, record = %record_text, "embedded DNS server started");
        Ok(Embedded {
            listen: bound,
            zone,
            record: record_name,
            record_text,
            ttl,
            state,
            store,
            updating,
            refresh_store,
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

impl Drop for Embedded {
    fn drop(&mut self) {
        self.refresh_store.lock().take();
    }
}

/// What the refresh task shares with its server.
struct Refresh {
    state: Arc<RwLock<ZoneState>>,
    updating: Arc<Mutex<()>>,
    store: StoreSlot,
    /// The record's name: its key in the store.
    key: String,
}

impl Refresh {
    /// The stored state; `None` once the server is dropped. Blocking: an etcd store
    /// waits for its answer.
    fn read(&self) -> Option<Result<Option<ZoneState>, crate::store::StoreError>> {
        let store = self.store.lock();
        store
            .as_ref()
            .map(|s| s.get_json::<ZoneState>(Namespace::Dns, &self.key))
    }

    /// Serves `stored` if it is [`newer`]; under the update lock, so an update's check,
    /// persist and publish is never interleaved with it.
    fn adopt(&self, stored: Option<ZoneState>) {
        let _one_at_a_time = self.updating.lock();
        let current = self.state.read().clone();
        if let Some(next) = newer(&current, stored) {
            tracing::info!(
                record = %self.key,
                addrs = ?next.addrs,
                serial = next.serial,
                "embedded DNS answer taken from the store (changed by another coordinator)"
            );
            *self.state.write() = next;
        }
    }
}

/// Every [`REFRESH_EVERY`] until `stop`'s sender is dropped: re-reads the answer from
/// the store and serves it when it is newer. A store that fails is logged at debug and
/// the answer served stays.
async fn refresh(refresh: Refresh, mut stop: tokio::sync::watch::Receiver<()>) {
    let refresh = Arc::new(refresh);
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let reader = refresh.clone();
        match tokio::task::spawn_blocking(move || reader.read()).await {
            Ok(Some(Ok(stored))) => refresh.adopt(stored),
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, record = %refresh.key, "embedded DNS: re-reading the answer from the store failed; serving the one held");
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "embedded DNS: the store read did not finish");
            }
        }
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
    use crate::dns::{confirm, query};
    use crate::store::RedbStore;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
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

    fn zone(addr: &str, serial: u32) -> ZoneState {
        ZoneState {
            addrs: vec![ip(addr)],
            serial,
        }
    }

    #[test]
    fn a_stored_answer_is_served_only_when_its_serial_is_higher() {
        let current = zone("198.18.0.1", 5);
        assert_eq!(
            newer(&current, Some(zone("198.18.0.2", 6))),
            Some(zone("198.18.0.2", 6))
        );
        // This server's own state, read back, and an older one (a read that raced an
        // update) are left alone; so is a store with no answer yet.
        assert_eq!(newer(&current, Some(zone("198.18.0.1", 5))), None);
        assert_eq!(newer(&current, Some(zone("198.18.0.2", 5))), None);
        assert_eq!(newer(&current, Some(zone("198.18.0.3", 4))), None);
        assert_eq!(newer(&current, None), None);
    }

    /// Two servers on one store, as a leader and a follower on one etcd: the follower
    /// serves the leader's change within a refresh or two.
    #[tokio::test]
    async fn a_server_serves_the_answer_another_one_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.path().join("s.redb")).expect("open"));
        let leader = embedded(store.clone(), Some(ip("198.18.0.31"))).await;
        let follower = embedded(store, Some(ip("198.18.0.31"))).await;
        leader
            .update(Some(ip("198.18.0.31")), ip("198.18.0.32"))
            .await
            .expect("update");
        assert_eq!(follower.current(), vec![ip("198.18.0.31")]);
        let lines = confirm(&follower, ip("198.18.0.32"), REFRESH_EVERY * 3)
            .await
            .expect("the follower serves the new answer");
        assert_eq!(lines.len(), 1, "{lines:?}");
        // The follower's own later update starts from what it now serves.
        follower
            .update(Some(ip("198.18.0.32")), ip("198.18.0.33"))
            .await
            .expect("update from the refreshed answer");
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
}
