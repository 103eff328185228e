//! The mesh: this agent's probes of its peers, and the primary's lease.
//!
//! Every heartbeat interval the agent sends each peer a signed UDP ping and connects to
//! the peer's PostgreSQL (`SELECT 1`); the results go into its heartbeats, where the
//! coordinator reads them for its health checks and for the lease argument below.
//!
//! **The lease.** While the PostgreSQL next to this agent is (or was last seen as) a
//! primary, the agent keeps it only as long as it holds a lease, renewed by either
//! - the coordinator acknowledging a heartbeat (renewed as of the heartbeat's *send*
//!   time), or
//! - a majority of the mesh answering its pings: itself plus `floor(n/2)` peers for a
//!   mesh of `n` agents, each renewed as of the *send* time of the ping it answered.
//!
//! When the lease runs out the agent fences its server at once (`pg_ctl stop -m
//! immediate`, `standby.signal`). Renewals are dated by send times, which come before
//! the coordinator receives the heartbeat or the peer the ping, so the coordinator's own
//! reckoning (last heartbeat received, last contact each peer reports) is never earlier
//! than the agent's: once it has waited out the lease plus a margin, the agent has
//! fenced. See ARCHITECTURE.md, "Failover safety argument".

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drmesh_protocol::lease;
use drmesh_protocol::mesh::{open, seal, MeshPacket, MeshReport, MeshView, PeerReport, MAX_PACKET};
use drmesh_protocol::{AgentId, PgRole};
use parking_lot::Mutex;
use rand::Rng;
use tokio::net::UdpSocket;
use tracing::{debug, error, info, warn};

use crate::config::{AgentConfig, DatabaseConfig};
use crate::observed::Observed;

/// Pings kept waiting for an answer, per peer.
const OUTSTANDING: usize = 8;
/// How often the lease is checked.
const LEASE_CHECK: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Peer {
    /// Send time of the newest ping this peer answered.
    answered: Option<Instant>,
    /// Last authenticated packet from or to this peer, either direction.
    contact: Option<Instant>,
    postgres_ok: Option<bool>,
    outstanding: VecDeque<(u64, Instant)>,
}

#[derive(Default)]
struct State {
    view: Option<MeshView>,
    peers: HashMap<AgentId, Peer>,
    /// Send time of the newest heartbeat the coordinator acknowledged.
    coordinator: Option<Instant>,
    /// The server was seen writable since it was last fenced or seen in recovery.
    was_primary: bool,
}

pub struct Mesh {
    me: AgentId,
    view_file: PathBuf,
    interval: Duration,
    /// What fencing stops.
    database: Option<DatabaseConfig>,
    /// The credentials peers' PostgreSQL servers are probed with.
    conninfo: Option<String>,
    observed: Arc<Observed>,
    started: Instant,
    state: Mutex<State>,
}

impl Mesh {
    pub fn new(config: &AgentConfig, observed: Arc<Observed>) -> Arc<Mesh> {
        let view_file = config
            .data_dir
            .join(format!("mesh-view-{}.json", config.id));
        let view = std::fs::read(&view_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<MeshView>(&b).ok());
        if view.is_some() {
            info!(file = %view_file.display(), "mesh view loaded");
        }
        Arc::new(Mesh {
            me: config.id.clone(),
            view_file,
            interval: config.heartbeat_interval,
            database: config.database.clone(),
            conninfo: config.postgres.as_ref().map(|p| p.conninfo.clone()),
            observed,
            started: Instant::now(),
            state: Mutex::new(State {
                view,
                ..State::default()
            }),
        })
    }

    /// Binds the probe socket and starts probing, answering and watching the lease.
    /// Returns the bound address.
    pub async fn start(self: &Arc<Self>, listen: SocketAddr) -> std::io::Result<SocketAddr> {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let bound = socket.local_addr()?;
        tokio::spawn(self.clone().answer(socket.clone()));
        tokio::spawn(self.clone().ping(socket));
        tokio::spawn(self.clone().probe_postgres());
        tokio::spawn(self.clone().watch_lease());
        Ok(bound)
    }

    /// Takes the coordinator's view when it is new, and keeps it on disk so a restart
    /// during a coordinator outage still knows its peers.
    pub fn set_view(&self, mut view: MeshView) {
        view.peers.retain(|p| p.agent_id != self.me);
        let mut st = self.state.lock();
        if st.view.as_ref().map(|v| v.generation) == Some(view.generation) {
            return;
        }
        info!(
            generation = view.generation,
            peers = view.peers.len(),
            lease_ms = view.lease_ms,
            "mesh view updated"
        );
        st.peers
            .retain(|id, _| view.peers.iter().any(|p| &p.agent_id == id));
        if let Err(e) = write_private(&self.view_file, &view) {
            warn!(file = %self.view_file.display(), error = %e, "cannot keep the mesh view on disk");
        }
        st.view = Some(view);
    }

    /// The coordinator acknowledged a heartbeat sent at `sent`.
    pub fn renewed_by_coordinator(&self, sent: Instant) {
        let mut st = self.state.lock();
        if st.coordinator.is_none_or(|c| c < sent) {
            st.coordinator = Some(sent);
        }
    }

    pub fn generation(&self) -> u64 {
        self.state.lock().view.as_ref().map_or(0, |v| v.generation)
    }

    /// The mesh part of the next heartbeat.
    pub fn report(&self) -> MeshReport {
        let now = Instant::now();
        let uptime = now.duration_since(self.started);
        let st = self.state.lock();
        let peers = st
            .peers
            .iter()
            .map(|(id, p)| PeerReport {
                agent_id: id.clone(),
                contact_age_ms: p
                    .contact
                    .map(|c| now.duration_since(c).min(uptime).as_millis() as u64),
                postgres_ok: p.postgres_ok,
            })
            .collect();
        MeshReport {
            generation: st.view.as_ref().map_or(0, |v| v.generation),
            peer_count: st.view.as_ref().map_or(0, |v| v.peers.len() as u32),
            uptime_ms: uptime.as_millis() as u64,
            fenced: self.is_fenced(),
            can_fence: self.can_fence(),
            peers,
        }
    }

    /// Whether this agent can fence its server when its lease runs out: only with a
    /// `[database]` section naming the data directory it stops. The coordinator counts a
    /// silent primary as self-fenced only when its agent said so.
    fn can_fence(&self) -> bool {
        self.database.is_some()
    }

    fn is_fenced(&self) -> bool {
        self.database
            .as_ref()
            .is_some_and(|db| crate::failover::is_fenced(&db.data_dir))
    }

    /// When the lease ends, if there is one: an agent whose view has no peers (a mesh of
    /// one) holds none and never fences by itself — nothing else could be promoted, and
    /// the coordinator refuses to wait out a lease it does not hold.
    fn lease_end(&self) -> Option<Instant> {
        let st = self.state.lock();
        let view = st
            .view
            .as_ref()
            .filter(|v| lease::holds_lease(v.peers.len()))?;
        let answered: Vec<Instant> = view
            .peers
            .iter()
            .filter_map(|p| st.peers.get(&p.agent_id)?.answered)
            .collect();
        Some(lease::lease_end(
            self.started,
            Duration::from_millis(view.lease_ms),
            st.coordinator,
            answered,
            view.peers.len(),
        ))
    }

    async fn answer(self: Arc<Self>, socket: Arc<UdpSocket>) {
        let mut buf = vec![0u8; MAX_PACKET + 1];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "mesh socket");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let now = Instant::now();
            let Some(key) = self.state.lock().view.as_ref().map(|v| v.key.clone()) else {
                continue;
            };
            let packet = match open(&key, &buf[..n]) {
                Ok(p) => p,
                Err(e) => {
                    debug!(%from, error = %e, "mesh packet refused");
                    continue;
                }
            };
            match packet {
                MeshPacket::Ping {
                    from: peer,
                    to,
                    nonce,
                } if to == self.me => {
                    self.state
                        .lock()
                        .peers
                        .entry(peer.clone())
                        .or_default()
                        .contact = Some(now);
                    let pong = MeshPacket::Pong {
                        from: self.me.clone(),
                        to: peer,
                        nonce,
                    };
                    if let Ok(bytes) = seal(&key, &pong) {
                        let _ = socket.send_to(&bytes, from).await;
                    }
                }
                MeshPacket::Pong {
                    from: peer,
                    to,
                    nonce,
                } if to == self.me => {
                    let mut st = self.state.lock();
                    let p = st.peers.entry(peer).or_default();
                    if let Some(i) = p.outstanding.iter().position(|(n, _)| *n == nonce) {
                        let (_, sent) = p.outstanding[i];
                        p.outstanding.remove(i);
                        p.contact = Some(now);
                        if p.answered.is_none_or(|a| a < sent) {
                            p.answered = Some(sent);
                        }
                    }
                }
                other => debug!(?other, "mesh packet for another agent"),
            }
        }
    }

    async fn ping(self: Arc<Self>, socket: Arc<UdpSocket>) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let mut out = Vec::new();
            {
                let mut st = self.state.lock();
                let Some(view) = st.view.clone() else {
                    continue;
                };
                let now = Instant::now();
                for peer in &view.peers {
                    let nonce: u64 = rand::thread_rng().gen();
                    let p = st.peers.entry(peer.agent_id.clone()).or_default();
                    if p.outstanding.len() >= OUTSTANDING {
                        p.outstanding.pop_front();
                    }
                    p.outstanding.push_back((nonce, now));
                    let packet = MeshPacket::Ping {
                        from: self.me.clone(),
                        to: peer.agent_id.clone(),
                        nonce,
                    };
                    if let Ok(bytes) = seal(&view.key, &packet) {
                        out.push((bytes, peer.mesh_addr));
                    }
                }
            }
            for (bytes, addr) in out {
                if let Err(e) = socket.send_to(&bytes, addr).await {
                    debug!(%addr, error = %e, "mesh ping not sent");
                }
            }
        }
    }

    /// Connects to every peer's PostgreSQL (`SELECT 1`) each interval.
    async fn probe_postgres(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout = self
            .interval
            .clamp(Duration::from_millis(200), Duration::from_secs(2));
        loop {
            ticker.tick().await;
            let targets: Vec<(AgentId, SocketAddr)> = {
                let st = self.state.lock();
                st.view
                    .iter()
                    .flat_map(|v| &v.peers)
                    .filter_map(|p| Some((p.agent_id.clone(), p.postgres_addr?)))
                    .collect()
            };
            let probes = targets.into_iter().map(|(id, addr)| {
                let conninfo = self.conninfo.clone();
                async move {
                    let ok = tokio::time::timeout(timeout, select_one(conninfo, addr, timeout))
                        .await
                        .is_ok_and(|r| r.is_ok());
                    (id, ok)
                }
            });
            let results = futures::future::join_all(probes).await;
            let mut st = self.state.lock();
            for (id, ok) in results {
                st.peers.entry(id).or_default().postgres_ok = Some(ok);
            }
        }
    }

    async fn watch_lease(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(LEASE_CHECK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let role = self.observed.postgres.lock().as_ref().map(|s| s.role);
            let was_primary = {
                let mut st = self.state.lock();
                match role {
                    Some(PgRole::Primary) => st.was_primary = true,
                    Some(PgRole::Standby) => st.was_primary = false,
                    _ => {}
                }
                st.was_primary
            };
            if !was_primary {
                continue;
            }
            let Some(end) = self.lease_end() else {
                continue;
            };
            if Instant::now() < end || self.is_fenced() {
                continue;
            }
            let Some(db) = &self.database else {
                // The coordinator knows (`can_fence: false` in every heartbeat): a failover
                // waits for an operator to stop this server by hand and confirm it.
                error!("the lease ran out but there is no [database] section to fence: PostgreSQL stays writable until an operator stops it");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            };
            error!("lease lost (no coordinator, no majority of the mesh): fencing PostgreSQL now");
            match crate::failover::fence_now(db).await {
                Ok(()) => {
                    self.state.lock().was_primary = false;
                    error!("fenced: PostgreSQL stopped, standby.signal left; `drmesh rejoin` makes it a standby again");
                }
                Err(e) => error!(error = %e, "self-fencing failed; retrying"),
            }
        }
    }
}

/// Connects to the PostgreSQL at `addr` with the local server's credentials and runs
/// `SELECT 1`; without credentials, a TCP connect.
async fn select_one(
    conninfo: Option<String>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    let Some(conninfo) = conninfo else {
        return tokio::net::TcpStream::connect(addr)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    };
    let local: tokio_postgres::Config = conninfo.parse().map_err(|e| format!("{e}"))?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(addr.ip().to_string()).port(addr.port());
    cfg.connect_timeout(timeout);
    if let Some(u) = local.get_user() {
        cfg.user(u);
    }
    if let Some(p) = local.get_password() {
        cfg.password(p);
    }
    if let Some(d) = local.get_dbname() {
        cfg.dbname(d);
    }
    cfg.application_name("drmesh-mesh-probe");
    let (client, connection) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(connection);
    let r = client
        .simple_query("select 1")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    drop(client);
    conn.abort();
    r
}

fn write_private(path: &std::path::Path, view: &MeshView) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(view).map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
