//! The coordinator's shared state: store, registry, live sessions, epoch, metrics, the
//! liveness ticker and the transitions it reports. The views built on it are in
//! [`crate::views`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use drmesh_protocol::api::{AgentState, AgentStatus, Severity};
use drmesh_protocol::{AgentId, Epoch, PgRole, RegionId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::alerts;
use crate::config::CoordinatorConfig;
use crate::metrics::Metrics;
use crate::rules::registry::{Hearing, Liveness, Registry, Transition};
use crate::store::{Namespace, Store, StoreError, StoreExt, Txn};

/// An agent as remembered across coordinator restarts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnownAgent {
    pub agent_id: AgentId,
    pub region: RegionId,
    pub version: String,
    pub first_seen: chrono::DateTime<Utc>,
    #[serde(default)]
    pub addresses: crate::rules::registry::AgentAddresses,
    /// The size of its mesh view, as it last reported.
    #[serde(default)]
    pub mesh_peers: Option<u32>,
    /// Whether it said it can fence its server by itself, as it last reported.
    #[serde(default)]
    pub can_fence: Option<bool>,
}

/// A live QUIC session with an agent.
#[derive(Clone)]
pub struct Session {
    pub connection: u64,
    pub conn: quinn::Connection,
}

pub struct Coordinator {
    pub config: CoordinatorConfig,
    pub store: Arc<dyn Store>,
    pub registry: Mutex<Registry>,
    pub sessions: Mutex<HashMap<AgentId, Session>>,
    pub metrics: Metrics,
    epoch: AtomicU64,
    transitions: mpsc::UnboundedSender<Transition>,
    /// What to keep of the agents in the store, written by [`Coordinator::keep_agent_records`].
    agent_records: mpsc::UnboundedSender<AgentRecord>,
    /// The key agents sign their mesh probes with; made once, kept in the store (read
    /// again when this coordinator takes office).
    mesh_key: Mutex<drmesh_protocol::mesh::MeshKey>,
    mesh_view: Mutex<Option<Arc<drmesh_protocol::mesh::MeshView>>>,
    /// When this coordinator took office (started, with a redb store; was elected, with
    /// etcd): no agent's lease can have been renewed by this coordinator before it.
    started: Mutex<Instant>,
    /// Where this coordinator stands among the coordinators ([`crate::leader`]).
    leadership: tokio::sync::watch::Receiver<crate::leader::Leadership>,
    /// Until when its leadership is proven ([`crate::leader::Proof`]).
    pub proof: Arc<crate::leader::Proof>,
    /// Whether it acts: from [`Coordinator::begin_term`] and the resumption of the
    /// stored work (`ops::office`) until [`Coordinator::end_term`].
    in_office: AtomicBool,
    /// The newest health check of each plan.
    pub health: Mutex<BTreeMap<String, drmesh_protocol::api::PlanHealth>>,
    /// Where failover points the database's DNS name (`[dns]`), once started.
    pub dns: std::sync::OnceLock<Arc<dyn crate::dns::DnsProvider>>,
    /// Tokens authenticated lately, for reads while the store does not answer.
    pub recent_callers: crate::auth::RecentCallers,
    /// The QUIC socket's receive queue, once bound: whether heartbeats wait unread
    /// (`watch_liveness`).
    pub receive_queue: std::sync::OnceLock<crate::udp::ReceiveQueue>,
    /// The HTTP client a follower forwards requests to the leader with (it trusts the
    /// `[tls]` CA for a leader on HTTPS), made on first use.
    pub forward_agent: std::sync::OnceLock<ureq::Agent>,
    /// Each token's bucket for each expensive kind of call ([`crate::rules::limits`]).
    pub buckets:
        Mutex<HashMap<(String, crate::rules::limits::Expensive), crate::rules::limits::Bucket>>,
}

pub(crate) const EPOCH_KEY: &str = "epoch";

/// The queues a [`Coordinator`] hands work to, each drained by a thread of its own.
pub struct Queues {
    pub transitions: mpsc::UnboundedReceiver<Transition>,
    pub agent_records: mpsc::UnboundedReceiver<AgentRecord>,
}

/// What to keep of an agent in the store.
pub enum AgentRecord {
    /// Connected with these addresses.
    Seen {
        id: AgentId,
        region: RegionId,
        version: String,
        addresses: crate::rules::registry::AgentAddresses,
    },
    /// Its lease facts changed (see [`Coordinator::note_lease_facts`]).
    LeaseFacts {
        id: AgentId,
        peers: Option<u32>,
        can_fence: bool,
    },
}

impl AgentRecord {
    fn agent(&self) -> &AgentId {
        match self {
            AgentRecord::Seen { id, .. } | AgentRecord::LeaseFacts { id, .. } => id,
        }
    }
}

/// Waits for the next item, then takes whatever else is queued, up to `max` in all;
/// `None` once every sender is gone. Blocking: for the store threads.
fn next_batch<T>(rx: &mut mpsc::UnboundedReceiver<T>, max: usize) -> Option<Vec<T>> {
    let mut batch = vec![rx.blocking_recv()?];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// The most agent records written in one transaction.
const RECORD_BATCH: usize = 100;

/// Writes one agent record inside a transaction: an agent is remembered the first time it
/// connects (and again when its region, version or addresses change), keeping when it was
/// first seen and its lease facts; lease facts change a remembered agent only.
fn keep_agent_record(
    tx: &mut dyn Txn,
    record: &AgentRecord,
    now: chrono::DateTime<Utc>,
) -> Result<(), StoreError> {
    match record {
        AgentRecord::Seen {
            id,
            region,
            version,
            addresses,
        } => {
            let known = KnownAgent {
                agent_id: id.clone(),
                region: region.clone(),
                version: version.clone(),
                first_seen: now,
                addresses: *addresses,
                mesh_peers: None,
                can_fence: None,
            };
            match tx.get_json::<KnownAgent>(Namespace::Agents, id.as_str())? {
                Some(old)
                    if old.region == known.region
                        && old.version == known.version
                        && old.addresses == known.addresses =>
                {
                    Ok(())
                }
                Some(old) => tx.put_json(
                    Namespace::Agents,
                    id.as_str(),
                    &KnownAgent {
                        first_seen: old.first_seen,
                        mesh_peers: old.mesh_peers,
                        can_fence: old.can_fence,
                        ..known
                    },
                ),
                None => tx.put_json(Namespace::Agents, id.as_str(), &known),
            }
        }
        AgentRecord::LeaseFacts {
            id,
            peers,
            can_fence,
        } => match tx.get_json::<KnownAgent>(Namespace::Agents, id.as_str())? {
            Some(mut known) => {
                if peers.is_some() {
                    known.mesh_peers = *peers;
                }
                known.can_fence = Some(*can_fence);
                tx.put_json(Namespace::Agents, id.as_str(), &known)
            }
            None => Ok(()),
        },
    }
}

/// The most transitions applied in one batch.
const TRANSITION_BATCH: usize = 2_000;

/// A registry of every agent the store remembers, none connected yet.
fn load_registry(
    config: &CoordinatorConfig,
    store: &dyn Store,
    now: Instant,
) -> Result<Registry, StoreError> {
    let mut registry = Registry::new(Liveness {
        interval: config.heartbeat_interval,
        suspect_after: config.suspect_after,
        down_after: config.down_after,
    });
    for known in store.scan_json::<KnownAgent>(Namespace::Agents, "")? {
        let id = known.agent_id.clone();
        registry.remember(known.agent_id, known.region, known.version, now);
        registry.set_addresses(&id, known.addresses);
        registry.set_mesh_peers(&id, known.mesh_peers);
        registry.set_can_fence(&id, known.can_fence);
    }
    Ok(registry)
}

/// The agents of `registry` as the status shows them (lag in bytes left to the caller).
fn statuses(registry: &Registry, now: Instant) -> Vec<AgentStatus> {
    registry
        .agents()
        .map(|e| {
            let pg = e.heartbeat.as_ref().and_then(|h| h.postgres.as_ref());
            AgentStatus {
                agent_id: e.id.clone(),
                region: e.region.clone(),
                state: e.state,
                role: pg.map(|p| p.role),
                version: e.version.clone(),
                connected: e.connected,
                last_heartbeat_age_ms: e
                    .last_heartbeat_instant
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                last_heartbeat_at: e.last_heartbeat_at,
                timeline: pg.and_then(|p| p.timeline),
                lsn: pg.and_then(|p| p.lsn).map(|l| l.to_string()),
                replication_lag_bytes: None,
                replication_lag_seconds: pg.and_then(|p| p.lag_seconds),
                disk_free_bytes: e.heartbeat.as_ref().and_then(|h| h.disk_free_bytes),
                last_backup_ids: e
                    .heartbeat
                    .as_ref()
                    .map(|h| h.last_backup_ids.clone())
                    .unwrap_or_default(),
                postgres_error: pg.and_then(|p| p.error.clone()),
                fenced: e
                    .heartbeat
                    .as_ref()
                    .and_then(|h| h.mesh.as_ref())
                    .is_some_and(|m| m.fenced),
                postgres_address: e.addresses.postgres,
                mesh_peers: e.mesh_peers,
                can_fence: e.can_fence == Some(true),
            }
        })
        .collect()
}

/// Bytes queued in the QUIC socket past which the coordinator is behind reading it: at
/// 10,000 heartbeats a second a steady queue peaks near 0.7 MiB, and a burst that piles
/// up faster than it is read passes 2 MiB within tens of milliseconds.
const BEHIND_BYTES: usize = 2 << 20;

/// Tells [`Hearing`] from the socket's receive queue, sampled on every liveness tick.
/// Behind from a sample over [`BEHIND_BYTES`] until the queue has stayed short for one
/// heartbeat interval: datagrams read from the socket may still wait for their
/// connection's task, so the heartbeats a backlog held are counted before agents are
/// judged again. Logs each change.
#[derive(Default)]
struct HearingWatch {
    behind_at: Option<Instant>,
}

impl HearingWatch {
    fn update(&mut self, queued: Option<usize>, now: Instant, interval: Duration) -> Hearing {
        if let Some(bytes) = queued.filter(|b| *b > BEHIND_BYTES) {
            if self.behind_at.is_none() {
                warn!(
                    queued_bytes = bytes,
                    "the coordinator is behind reading its QUIC socket: no agent is newly \
                     SUSPECT for silence until it catches up (DOWN is not delayed)"
                );
            }
            self.behind_at = Some(now);
        }
        match self.behind_at {
            Some(at) if now.saturating_duration_since(at) < interval => Hearing::Behind,
            Some(_) => {
                info!("the coordinator has caught up reading its QUIC socket");
                self.behind_at = None;
                Hearing::Current
            }
            None => Hearing::Current,
        }
    }
}

const MESH_KEY: &str = "mesh_key";

impl Coordinator {
    /// Loads the epoch and the known agents from the store. The returned [`Queues`]
    /// carry state transitions and agent records: hand them to
    /// [`Coordinator::apply_transitions`] and [`Coordinator::keep_agent_records`], each
    /// on a thread of its own.
    pub fn new(
        config: CoordinatorConfig,
        store: Arc<dyn Store>,
        leadership: tokio::sync::watch::Receiver<crate::leader::Leadership>,
        proof: Arc<crate::leader::Proof>,
    ) -> Result<(Arc<Self>, Queues), StoreError> {
        let now = Instant::now();
        let registry = load_registry(&config, store.as_ref(), now)?;
        let epoch = store
            .get_json::<u64>(Namespace::Meta, EPOCH_KEY)?
            .unwrap_or(0);
        // Made and stored by the first coordinator to take office (`begin_term`).
        let mesh_key = store
            .get_json(Namespace::Meta, MESH_KEY)?
            .unwrap_or_else(drmesh_protocol::mesh::MeshKey::random);
        let (tx, rx) = mpsc::unbounded_channel();
        let (records_tx, records_rx) = mpsc::unbounded_channel();
        Ok((
            Arc::new(Self {
                config,
                store,
                registry: Mutex::new(registry),
                sessions: Mutex::new(HashMap::new()),
                metrics: Metrics::default(),
                epoch: AtomicU64::new(epoch),
                transitions: tx,
                agent_records: records_tx,
                mesh_key: Mutex::new(mesh_key),
                mesh_view: Mutex::new(None),
                started: Mutex::new(now),
                leadership,
                proof,
                in_office: AtomicBool::new(false),
                health: Mutex::new(BTreeMap::new()),
                recent_callers: crate::auth::RecentCallers::default(),
                dns: std::sync::OnceLock::new(),
                receive_queue: std::sync::OnceLock::new(),
                forward_agent: std::sync::OnceLock::new(),
                buckets: Mutex::new(HashMap::new()),
            }),
            Queues {
                transitions: rx,
                agent_records: records_rx,
            },
        ))
    }

    /// The timing the rules judge by (`crate::rules`).
    pub fn timing(&self) -> crate::rules::Timing {
        crate::rules::Timing {
            heartbeat_interval: self.config.heartbeat_interval,
            lease: self.config.lease,
            fence_margin: self.config.fence_margin,
            started: *self.started.lock(),
        }
    }

    /// Where this coordinator stands among the coordinators.
    pub fn leadership(&self) -> crate::leader::Leadership {
        self.leadership.borrow().clone()
    }

    /// This coordinator's name among several (`[store] name`); `coordinator` alone.
    pub fn name(&self) -> String {
        match &self.config.store {
            crate::store::settings::StoreConfig::Etcd(s) => s.name.clone(),
            crate::store::settings::StoreConfig::Redb { .. } => "coordinator".to_string(),
        }
    }

    /// A receiver of every change of [`Coordinator::leadership`].
    pub fn leadership_changes(&self) -> tokio::sync::watch::Receiver<crate::leader::Leadership> {
        self.leadership.clone()
    }

    /// Whether this coordinator acts: health checks, schedules, jobs, failovers and
    /// agent commands run only while it is in office.
    pub fn in_office(&self) -> bool {
        self.in_office.load(Ordering::SeqCst)
    }

    /// Whether this coordinator may tell an agent anything now: in office, and its
    /// leadership proven at this instant ([`crate::leader::Proof`]). Checked on every
    /// heartbeat acknowledgement (which renews the agent's lease) and every command.
    pub fn may_act(&self) -> bool {
        self.in_office() && self.proof.holds_at(Instant::now())
    }

    /// The start of a term: what the previous leader left in the store is read again
    /// (the epoch it raised, the agents it met, the mesh key), and the lease clock
    /// starts at `acts_from` — no agent's lease can have been renewed by an earlier term
    /// after it, so a silent primary is waited out as after a restart. Work stored as
    /// running is resumed by `ops::office`, which then declares the coordinator in
    /// office.
    ///
    /// `acts_from` is when the previous term's acknowledgements surely ended, which
    /// starts this coordinator's lease clock (`Timing::started`): now, for a coordinator
    /// starting alone; for an elected one, see [`crate::ops::office::term_start`].
    pub fn begin_term(&self, acts_from: Instant) -> Result<(), StoreError> {
        let now = Instant::now();
        let epoch = self
            .store
            .get_json::<u64>(Namespace::Meta, EPOCH_KEY)?
            .unwrap_or(0);
        self.epoch.fetch_max(epoch, Ordering::SeqCst);
        let mesh_key = self.store.atomically(|tx| {
            match tx.get_json::<drmesh_protocol::mesh::MeshKey>(Namespace::Meta, MESH_KEY)? {
                Some(k) => Ok::<_, StoreError>(k),
                None => {
                    let k = self.mesh_key.lock().clone();
                    tx.put_json(Namespace::Meta, MESH_KEY, &k)?;
                    Ok(k)
                }
            }
        })?;
        *self.mesh_key.lock() = mesh_key;
        let registry = load_registry(&self.config, self.store.as_ref(), now)?;
        *self.registry.lock() = registry;
        *self.mesh_view.lock() = None;
        *self.started.lock() = acts_from.min(now);
        Ok(())
    }

    /// Declares the coordinator in office (after `begin_term` and the resumption).
    pub fn open_term(&self) {
        self.in_office.store(true, Ordering::SeqCst);
    }

    /// The end of a term: nothing more is started, and every agent is disconnected so
    /// that it finds the new leader.
    pub fn end_term(&self) {
        self.in_office.store(false, Ordering::SeqCst);
        let sessions: Vec<Session> = self.sessions.lock().drain().map(|(_, s)| s).collect();
        for s in sessions {
            s.conn.close(
                drmesh_protocol::close_code::NOT_LEADER.into(),
                b"this coordinator no longer leads",
            );
        }
        self.health.lock().clear();
    }

    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::SeqCst))
    }

    /// Raises the fencing epoch to `to` (never lowers it), durably before it is used:
    /// every command sent from then on carries it, and agents refuse older ones.
    pub fn raise_epoch(&self, to: Epoch) -> Result<(), StoreError> {
        if to.0 > self.epoch.load(Ordering::SeqCst) {
            // Compared with what is stored in the same transaction: two raises at once
            // never leave the lower one stored.
            self.store.atomically(|tx| {
                let stored = tx.get_json::<u64>(Namespace::Meta, EPOCH_KEY)?;
                if stored.is_none_or(|s| s < to.0) {
                    tx.put_json(Namespace::Meta, EPOCH_KEY, &to.0)?;
                }
                Ok::<_, StoreError>(())
            })?;
            self.epoch.fetch_max(to.0, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The mesh every agent is told about: each agent with a probe address (an agent
    /// leaves itself out). Cached until an agent's addresses change.
    ///
    /// The cache stays locked while the view is built: an invalidation (which takes the
    /// same lock after changing the registry) then either comes before the registry is
    /// read or clears the view built from it. Built outside the lock, a view read just
    /// before an agent's Hello could be stored just after its invalidation and be served
    /// to every agent until the next address change (seen in CI: a primary whose view
    /// never held its standby).
    pub fn mesh_view(&self) -> Arc<drmesh_protocol::mesh::MeshView> {
        use drmesh_protocol::mesh::{MeshPeer, MeshView};
        let mut cached = self.mesh_view.lock();
        if let Some(v) = cached.as_ref() {
            return v.clone();
        }
        let peers: Vec<MeshPeer> = self
            .registry
            .lock()
            .agents()
            .filter_map(|a| {
                Some(MeshPeer {
                    agent_id: a.id.clone(),
                    region: a.region.clone(),
                    mesh_addr: a.addresses.mesh?,
                    postgres_addr: a.addresses.postgres_mesh,
                })
            })
            .collect();
        let lease_ms = self.config.lease.as_millis() as u64;
        let key = self.mesh_key.lock().clone();
        let view = Arc::new(MeshView {
            generation: MeshView::generation_of(lease_ms, &key, &peers),
            lease_ms,
            key,
            peers,
        });
        *cached = Some(view.clone());
        view
    }

    /// Records what an agent's lease rests on when it changed (rarely: a write to the
    /// store): the size of its mesh view, the majority its lease is counted against, and
    /// whether it can fence its server by itself — so a restarted coordinator still
    /// knows both for an agent that has not reconnected.
    pub fn note_lease_facts(&self, id: &AgentId, peers: Option<u32>, can_fence: bool) {
        let changed = {
            let mut registry = self.registry.lock();
            let peers_changed = peers.is_some_and(|p| registry.set_mesh_peers(id, Some(p)));
            let fence_changed = registry.set_can_fence(id, Some(can_fence));
            peers_changed || fence_changed
        };
        if changed {
            let _ = self.agent_records.send(AgentRecord::LeaseFacts {
                id: id.clone(),
                peers,
                can_fence,
            });
        }
    }

    /// Records an agent's addresses (from its Hello), in the registry and the store.
    pub fn set_addresses(
        &self,
        id: &AgentId,
        region: &RegionId,
        version: &str,
        addresses: crate::rules::registry::AgentAddresses,
    ) {
        self.registry.lock().set_addresses(id, addresses);
        *self.mesh_view.lock() = None;
        let _ = self.agent_records.send(AgentRecord::Seen {
            id: id.clone(),
            region: region.clone(),
            version: version.to_string(),
            addresses,
        });
    }

    /// Writes the agents' records into the store, in the order they were noted, until
    /// the process ends: whatever queued meanwhile in one transaction (at most
    /// [`RECORD_BATCH`]), so thousands of agents connecting at once are tens of store
    /// commits (raft rounds on etcd), not thousands. Blocking: run it on a thread of its
    /// own, so that a store round trip (an etcd read, a redb commit) never holds up the
    /// QUIC endpoint. The registry in memory is what decides; the store is what a
    /// restarted or newly elected coordinator starts from.
    pub fn keep_agent_records(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<AgentRecord>) {
        while let Some(batch) = next_batch(&mut rx, RECORD_BATCH) {
            let now = Utc::now();
            let written = self.store.atomically(|tx| {
                for record in &batch {
                    keep_agent_record(tx, record, now)?;
                }
                Ok::<_, StoreError>(())
            });
            if written.is_err() {
                // One damaged record must not cost the others theirs: one at a time.
                for record in &batch {
                    if let Err(e) = self
                        .store
                        .atomically(|tx| keep_agent_record(tx, record, now))
                    {
                        error!(agent_id = %record.agent(), error = %e, "remember agent");
                    }
                }
            }
        }
    }

    pub fn report(&self, transitions: impl IntoIterator<Item = Transition>) {
        for t in transitions {
            // The receiver lives as long as the process; a send error means shutdown.
            let _ = self.transitions.send(t);
        }
    }

    /// Ticks the registry every tenth of a heartbeat interval until the process ends.
    pub async fn watch_liveness(self: Arc<Self>) {
        let period = (self.config.heartbeat_interval / 10).max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hearing = HearingWatch::default();
        loop {
            ticker.tick().await;
            if !self.in_office() {
                continue;
            }
            let now = Instant::now();
            let queued = self.receive_queue.get().and_then(|q| q.queued_bytes());
            if let Some(bytes) = queued {
                self.metrics.quic_receive_queue_bytes.set(bytes as i64);
            }
            let heard = hearing.update(queued, now, self.config.heartbeat_interval);
            let transitions = self.registry.lock().tick(now, heard);
            self.report(transitions);
        }
    }

    /// Logs each transition and raises or clears the matching alert.
    ///
    /// Blocking: run it on a thread of its own. Raising and resolving an alert are store
    /// transactions (an etcd round trip, a redb commit); on the runtime thread they would
    /// hold up the heartbeats of every other agent while many change state at once.
    pub fn apply_transitions(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Transition>) {
        // Whatever queued meanwhile goes in one batch: a mesh-wide blip (thousands of
        // agents at once) is a few transactions, not one each.
        while let Some(batch) = next_batch(&mut rx, TRANSITION_BATCH) {
            if self.in_office() {
                self.apply_batch(batch);
            }
        }
    }

    /// One batch of transitions: each logged and counted; then each agent's last state
    /// in the batch decides its alert (DOWN raises one, UP resolves it).
    fn apply_batch(&self, batch: Vec<Transition>) {
        let mut last: BTreeMap<AgentId, &Transition> = BTreeMap::new();
        for t in &batch {
            self.metrics.transition(t.to.as_str());
            match t.to {
                AgentState::Down => {
                    warn!(agent_id = %t.agent, region = %t.region, from = %t.from, reason = %t.reason, "agent DOWN")
                }
                AgentState::Suspect => {
                    warn!(agent_id = %t.agent, region = %t.region, reason = %t.reason, "agent SUSPECT")
                }
                AgentState::Up => {
                    info!(agent_id = %t.agent, region = %t.region, from = %t.from, "agent UP")
                }
            }
            last.insert(t.agent.clone(), t);
        }
        let downs: Vec<(String, Option<RegionId>, String)> = last
            .values()
            .filter(|t| t.to == AgentState::Down)
            .map(|t| {
                (
                    t.agent.to_string(),
                    Some(t.region.clone()),
                    format!("Agent {} in {} is DOWN ({})", t.agent, t.region, t.reason),
                )
            })
            .collect();
        let ups: Vec<String> = last
            .values()
            .filter(|t| t.to == AgentState::Up)
            .map(|t| t.agent.to_string())
            .collect();
        if !downs.is_empty() {
            match alerts::raise_each(
                self.store.as_ref(),
                Severity::Critical,
                alerts::AGENT_DOWN,
                &downs,
            ) {
                Ok(raised) => {
                    for a in raised {
                        warn!(alert_id = %a.id, agent_id = %a.source, "CRITICAL alert raised")
                    }
                }
                Err(e) => error!(agents = downs.len(), error = %e, "raise agent DOWN alerts"),
            }
        }
        if !ups.is_empty() {
            match alerts::resolve_cleared_each(self.store.as_ref(), alerts::AGENT_DOWN, &ups) {
                Ok(resolved) => {
                    for a in resolved {
                        info!(alert_id = %a.id, agent_id = %a.source, "alert resolved: agent is back")
                    }
                }
                Err(e) => error!(agents = ups.len(), error = %e, "resolve agent DOWN alerts"),
            }
        }
    }

    /// Every agent's status, computed now.
    ///
    /// A coordinator out of office (a follower, or one cut from the store) holds no
    /// agent's link, and its own registry dates from its start or its last term: it
    /// shows the agents the store remembers instead, none connected. Only if the store
    /// cannot be read does it show its own.
    pub fn agent_statuses(&self) -> Vec<AgentStatus> {
        let now = Instant::now();
        let remembered = if self.in_office() {
            None
        } else {
            load_registry(&self.config, self.store.as_ref(), now)
                .map_err(|e| debug!(error = %e, "read the remembered agents"))
                .ok()
        };
        let mut out = match remembered {
            Some(r) => statuses(&r, now),
            None => statuses(&self.registry.lock(), now),
        };
        // Lag in bytes is the primary's write position minus the standby's replay position.
        let primary_lsn = out
            .iter()
            .filter(|a| a.role == Some(PgRole::Primary) && a.state == AgentState::Up)
            .filter_map(|a| a.lsn.as_deref()?.parse::<drmesh_protocol::Lsn>().ok())
            .max();
        if let Some(primary) = primary_lsn {
            for a in out.iter_mut().filter(|a| a.role == Some(PgRole::Standby)) {
                if let Some(Ok(lsn)) = a.lsn.as_deref().map(str::parse::<drmesh_protocol::Lsn>) {
                    a.replication_lag_bytes = Some(primary.0.saturating_sub(lsn.0));
                }
            }
        }
        out
    }

    /// What a DR plan may name: the configured regions and those of every agent seen,
    /// and the configured notification channels.
    pub fn plan_vocabulary(&self) -> crate::plans::Known {
        let mut regions: std::collections::HashSet<RegionId> =
            self.config.regions.iter().cloned().collect();
        regions.extend(self.registry.lock().agents().map(|a| a.region.clone()));
        crate::plans::Known {
            regions,
            channels: self.config.notify.keys().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_makes_the_coordinator_behind_until_it_stayed_short_for_an_interval() {
        let interval = Duration::from_millis(500);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = HearingWatch::default();
        assert_eq!(w.update(Some(700 << 10), at(0), interval), Hearing::Current);
        assert_eq!(w.update(None, at(50), interval), Hearing::Current);
        assert_eq!(w.update(Some(3 << 20), at(100), interval), Hearing::Behind);
        // Drained, but for less than an interval: datagrams read may still wait for
        // their connection's task.
        assert_eq!(w.update(Some(0), at(400), interval), Hearing::Behind);
        assert_eq!(w.update(Some(3 << 20), at(500), interval), Hearing::Behind);
        assert_eq!(w.update(Some(0), at(999), interval), Hearing::Behind);
        assert_eq!(w.update(Some(0), at(1000), interval), Hearing::Current);
        assert_eq!(w.update(Some(0), at(1050), interval), Hearing::Current);
    }
}
