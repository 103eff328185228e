//! The agent registry: who is connected, their last heartbeat, and their liveness state.
//!
//! State is derived from heartbeat age by a pure function ([`derive_state`]); the registry
//! reports only changes ([`Transition`]) and the caller acts on them (alerts, logs). Time
//! is passed in, never read here, so the logic is tested without sleeping.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use drmesh_protocol::api::AgentState;
use drmesh_protocol::{AgentId, Heartbeat, RegionId};

/// Heartbeat timing the registry judges agents by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    pub interval: Duration,
    pub suspect_after: u32,
    pub down_after: u32,
}

impl Liveness {
    pub fn suspect_age(&self) -> Duration {
        self.interval * self.suspect_after
    }
    pub fn down_age(&self) -> Duration {
        self.interval * self.down_after
    }
}

/// The state an agent is in, given how long ago it was last heard from.
///
/// Architecture Invariant: an agent is UP only while heartbeats arrive within
/// `suspect_after` intervals; DOWN after `down_after` intervals of silence.
pub fn derive_state(since_heard: Duration, liveness: &Liveness) -> AgentState {
    if since_heard >= liveness.down_age() {
        AgentState::Down
    } else if since_heard >= liveness.suspect_age() {
        AgentState::Suspect
    } else {
        AgentState::Up
    }
}

/// Whether the coordinator hears its agents on time: the judge's own state, which
/// [`Registry::tick`] weighs before it blames an agent for silence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hearing {
    /// Datagrams are read as they arrive: silence is the agent's.
    Current,
    /// Datagrams wait in the coordinator's own socket (it fell behind reading it, as
    /// after a burst): a heartbeat may be there, unread.
    Behind,
}

/// The state an agent moves to on a tick: as [`derive_state`] says, except that a
/// coordinator that is [`Hearing::Behind`] does not newly blame a connected agent
/// silent for less than the down age — its heartbeat may be waiting in the
/// coordinator's own socket. A backlog never hides a silent agent past the down age.
///
/// Architecture Invariant: a coordinator behind on its own socket delays SUSPECT by at
/// most `down_after - suspect_after` intervals, and DOWN not at all.
pub fn next_state(
    current: AgentState,
    since_heard: Duration,
    connected: bool,
    liveness: &Liveness,
    hearing: Hearing,
) -> AgentState {
    let derived = derive_state(since_heard, liveness);
    if !connected {
        // Without a connection an agent is never UP, and once DOWN it stays DOWN until
        // it reconnects.
        return match (current, derived) {
            (AgentState::Down, _) => AgentState::Down,
            (_, AgentState::Up) => AgentState::Suspect,
            (_, n) => n,
        };
    }
    let worse = severity(derived) > severity(current);
    if hearing == Hearing::Behind && worse && since_heard < liveness.down_age() {
        current
    } else {
        derived
    }
}

fn severity(state: AgentState) -> u8 {
    match state {
        AgentState::Up => 0,
        AgentState::Suspect => 1,
        AgentState::Down => 2,
    }
}

/// One agent as the coordinator knows it.
#[derive(Clone, Debug)]
pub struct AgentEntry {
    pub id: AgentId,
    pub region: RegionId,
    pub version: String,
    pub capabilities: Vec<String>,
    pub state: AgentState,
    /// Which connection is current; a reconnect bumps it, so events from an old
    /// connection that is still closing are ignored.
    pub connection: u64,
    pub connected: bool,
    /// When the agent was last heard from (hello or heartbeat), monotonic.
    pub last_heard: Instant,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub last_heartbeat_instant: Option<Instant>,
    pub last_seq: u64,
    pub heartbeat: Option<Heartbeat>,
    pub addresses: AgentAddresses,
    /// When a heartbeat last reported a writable PostgreSQL.
    pub last_primary_at: Option<Instant>,
    /// How many peers the agent's mesh view last had, as it reported (kept in the store
    /// across restarts): what its lease's majority is counted against.
    pub mesh_peers: Option<u32>,
    /// Whether the agent said it can fence its server by itself (kept in the store
    /// across restarts); `None`: never said.
    pub can_fence: Option<bool>,
}

impl AgentEntry {
    /// Where standbys stream from this agent's PostgreSQL: its mesh address, else the
    /// address it advertises to clients.
    pub fn replication_address(&self) -> Option<std::net::SocketAddr> {
        self.addresses.postgres_mesh.or(self.addresses.postgres)
    }
}

/// Where an agent and its PostgreSQL are reached, as its Hello said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentAddresses {
    /// The agent's mesh probe socket.
    pub mesh: Option<std::net::SocketAddr>,
    /// PostgreSQL as clients reach it.
    pub postgres: Option<std::net::SocketAddr>,
    /// PostgreSQL as peers reach it.
    pub postgres_mesh: Option<std::net::SocketAddr>,
}

/// A change of an agent's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub agent: AgentId,
    pub region: RegionId,
    pub from: AgentState,
    pub to: AgentState,
    pub reason: String,
}

/// Outcome of feeding a heartbeat to the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    Accepted(Option<Transition>),
    /// Older than one already seen (datagrams may be reordered).
    Stale,
    /// No such agent or connection.
    Unknown,
}

#[derive(Debug)]
pub struct Registry {
    liveness: Liveness,
    agents: BTreeMap<AgentId, AgentEntry>,
    next_connection: u64,
}

impl Registry {
    pub fn new(liveness: Liveness) -> Self {
        Self {
            liveness,
            agents: BTreeMap::new(),
            next_connection: 1,
        }
    }

    pub fn liveness(&self) -> Liveness {
        self.liveness
    }

    /// Adds an agent remembered from the store, before it reconnects. It starts SUSPECT
    /// with `now` as its last contact, so it goes DOWN (and alerts) only if it stays away.
    pub fn remember(&mut self, id: AgentId, region: RegionId, version: String, now: Instant) {
        self.agents.entry(id.clone()).or_insert(AgentEntry {
            id,
            region,
            version,
            capabilities: Vec::new(),
            state: AgentState::Suspect,
            connection: 0,
            connected: false,
            last_heard: now,
            last_heartbeat_at: None,
            last_heartbeat_instant: None,
            last_seq: 0,
            heartbeat: None,
            addresses: AgentAddresses::default(),
            last_primary_at: None,
            mesh_peers: None,
            can_fence: None,
        });
    }

    /// Records a new connection (after its Hello was accepted) and returns its number.
    pub fn connect(
        &mut self,
        id: &AgentId,
        region: &RegionId,
        version: &str,
        capabilities: &[String],
        now: Instant,
    ) -> (u64, Option<Transition>) {
        let connection = self.next_connection;
        self.next_connection += 1;
        let entry = self.agents.entry(id.clone()).or_insert_with(|| AgentEntry {
            id: id.clone(),
            region: region.clone(),
            version: version.to_string(),
            capabilities: capabilities.to_vec(),
            state: AgentState::Down,
            connection,
            connected: true,
            last_heard: now,
            last_heartbeat_at: None,
            last_heartbeat_instant: None,
            last_seq: 0,
            heartbeat: None,
            addresses: AgentAddresses::default(),
            last_primary_at: None,
            mesh_peers: None,
            can_fence: None,
        });
        entry.region = region.clone();
        entry.version = version.to_string();
        entry.capabilities = capabilities.to_vec();
        entry.connection = connection;
        entry.connected = true;
        entry.last_heard = now;
        entry.last_seq = 0;
        let transition = set_state(entry, AgentState::Up, "connected");
        (connection, transition)
    }

    pub fn heartbeat(
        &mut self,
        id: &AgentId,
        connection: u64,
        hb: Heartbeat,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> HeartbeatOutcome {
        let Some(entry) = self.agents.get_mut(id) else {
            return HeartbeatOutcome::Unknown;
        };
        if entry.connection != connection || !entry.connected {
            return HeartbeatOutcome::Unknown;
        }
        if hb.seq <= entry.last_seq && entry.last_seq != 0 {
            return HeartbeatOutcome::Stale;
        }
        entry.last_seq = hb.seq;
        entry.last_heard = now;
        entry.last_heartbeat_instant = Some(now);
        entry.last_heartbeat_at = Some(wall);
        if hb
            .postgres
            .as_ref()
            .is_some_and(|p| p.role == drmesh_protocol::PgRole::Primary)
        {
            entry.last_primary_at = Some(now);
        }
        entry.heartbeat = Some(hb);
        HeartbeatOutcome::Accepted(set_state(entry, AgentState::Up, "heartbeat"))
    }

    /// Records where the agent and its PostgreSQL are reached.
    pub fn set_addresses(&mut self, id: &AgentId, addresses: AgentAddresses) {
        if let Some(entry) = self.agents.get_mut(id) {
            entry.addresses = addresses;
        }
    }

    /// Records the size of the agent's mesh view; true when it changed.
    pub fn set_mesh_peers(&mut self, id: &AgentId, peers: Option<u32>) -> bool {
        match self.agents.get_mut(id) {
            Some(entry) if entry.mesh_peers != peers => {
                entry.mesh_peers = peers;
                true
            }
            _ => false,
        }
    }

    /// Records whether the agent can fence its server by itself; true when it changed.
    pub fn set_can_fence(&mut self, id: &AgentId, can: Option<bool>) -> bool {
        match self.agents.get_mut(id) {
            Some(entry) if entry.can_fence != can => {
                entry.can_fence = can;
                true
            }
            _ => false,
        }
    }

    /// The connection closed. The agent is DOWN at once: it cannot be commanded.
    pub fn disconnect(
        &mut self,
        id: &AgentId,
        connection: u64,
        reason: &str,
    ) -> Option<Transition> {
        let entry = self.agents.get_mut(id)?;
        if entry.connection != connection {
            return None;
        }
        entry.connected = false;
        set_state(entry, AgentState::Down, reason)
    }

    /// Re-derives every agent's state from its heartbeat age ([`next_state`]).
    pub fn tick(&mut self, now: Instant, hearing: Hearing) -> Vec<Transition> {
        let liveness = self.liveness;
        let mut out = Vec::new();
        for entry in self.agents.values_mut() {
            let silent = now.saturating_duration_since(entry.last_heard);
            let next = next_state(entry.state, silent, entry.connected, &liveness, hearing);
            if entry.state != next {
                let reason = format!("no heartbeat for {} ms", silent.as_millis());
                out.extend(set_state(entry, next, &reason));
            }
        }
        out
    }

    pub fn agents(&self) -> impl Iterator<Item = &AgentEntry> + Clone {
        self.agents.values()
    }

    pub fn get(&self, id: &AgentId) -> Option<&AgentEntry> {
        self.agents.get(id)
    }
}

fn set_state(entry: &mut AgentEntry, to: AgentState, reason: &str) -> Option<Transition> {
    if entry.state == to {
        return None;
    }
    let from = entry.state;
    entry.state = to;
    Some(Transition {
        agent: entry.id.clone(),
        region: entry.region.clone(),
        from,
        to,
        reason: reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn liveness() -> Liveness {
        Liveness {
            interval: Duration::from_millis(500),
            suspect_after: 2,
            down_after: 4,
        }
    }

    fn hb(seq: u64) -> Heartbeat {
        crate::rules::fixtures::heartbeat(seq, 0, None, None)
    }

    fn ids() -> (AgentId, RegionId) {
        (
            AgentId::new("a1").expect("id"),
            RegionId::new("us-east-1").expect("region"),
        )
    }

    #[test]
    fn state_follows_heartbeat_age() {
        let l = liveness();
        assert_eq!(derive_state(Duration::from_millis(999), &l), AgentState::Up);
        assert_eq!(
            derive_state(Duration::from_millis(1000), &l),
            AgentState::Suspect
        );
        assert_eq!(
            derive_state(Duration::from_millis(2000), &l),
            AgentState::Down
        );
    }

    #[test]
    fn silence_makes_an_agent_suspect_then_down_and_a_heartbeat_brings_it_back() {
        let (id, region) = ids();
        let mut r = Registry::new(liveness());
        let t0 = Instant::now();
        let (conn, t) = r.connect(&id, &region, "0.1.0", &[], t0);
        assert_eq!(t.map(|t| t.to), Some(AgentState::Up));
        assert!(matches!(
            r.heartbeat(&id, conn, hb(1), t0, Utc::now()),
            HeartbeatOutcome::Accepted(None)
        ));
        assert!(r
            .tick(t0 + Duration::from_millis(900), Hearing::Current)
            .is_empty());
        let t = r.tick(t0 + Duration::from_millis(1100), Hearing::Current);
        assert_eq!(t[0].to, AgentState::Suspect);
        let t = r.tick(t0 + Duration::from_millis(2100), Hearing::Current);
        assert_eq!(
            (t[0].from, t[0].to),
            (AgentState::Suspect, AgentState::Down)
        );
        assert!(r
            .tick(t0 + Duration::from_millis(5000), Hearing::Current)
            .is_empty());
        let back = r.heartbeat(
            &id,
            conn,
            hb(2),
            t0 + Duration::from_millis(5000),
            Utc::now(),
        );
        assert!(matches!(
            back,
            HeartbeatOutcome::Accepted(Some(Transition {
                to: AgentState::Up,
                ..
            }))
        ));
    }

    #[test]
    fn reordered_and_foreign_heartbeats_are_ignored() {
        let (id, region) = ids();
        let mut r = Registry::new(liveness());
        let t0 = Instant::now();
        let (conn, _) = r.connect(&id, &region, "0.1.0", &[], t0);
        assert!(matches!(
            r.heartbeat(&id, conn, hb(5), t0, Utc::now()),
            HeartbeatOutcome::Accepted(_)
        ));
        assert_eq!(
            r.heartbeat(&id, conn, hb(4), t0, Utc::now()),
            HeartbeatOutcome::Stale
        );
        assert_eq!(
            r.heartbeat(&id, conn + 1, hb(6), t0, Utc::now()),
            HeartbeatOutcome::Unknown
        );
        let other = AgentId::new("zz").expect("id");
        assert_eq!(
            r.heartbeat(&other, conn, hb(6), t0, Utc::now()),
            HeartbeatOutcome::Unknown
        );
    }

    #[test]
    fn an_old_connection_closing_does_not_take_down_the_new_one() {
        let (id, region) = ids();
        let mut r = Registry::new(liveness());
        let t0 = Instant::now();
        let (old, _) = r.connect(&id, &region, "0.1.0", &[], t0);
        let (new, _) = r.connect(&id, &region, "0.1.0", &[], t0);
        assert_eq!(r.disconnect(&id, old, "closed"), None);
        assert_eq!(r.get(&id).map(|e| e.state), Some(AgentState::Up));
        let t = r.disconnect(&id, new, "closed").expect("transition");
        assert_eq!(t.to, AgentState::Down);
        assert!(
            r.tick(t0, Hearing::Current).is_empty(),
            "a disconnected agent stays down"
        );
    }

    #[test]
    fn remembered_agents_get_a_grace_period() {
        let (id, region) = ids();
        let mut r = Registry::new(liveness());
        let t0 = Instant::now();
        r.remember(id.clone(), region, "0.1.0".into(), t0);
        assert!(r
            .tick(t0 + Duration::from_millis(1500), Hearing::Current)
            .is_empty());
        let t = r.tick(t0 + Duration::from_millis(2000), Hearing::Current);
        assert_eq!(
            (t[0].from, t[0].to),
            (AgentState::Suspect, AgentState::Down)
        );
    }

    /// The liveness the property tests draw: `down_after` is `extra` past `suspect_after`.
    fn liveness_of(interval_ms: u64, suspect_after: u32, extra: u32) -> Liveness {
        Liveness {
            interval: Duration::from_millis(interval_ms),
            suspect_after,
            down_after: suspect_after + extra,
        }
    }

    proptest::proptest! {
        /// The state only worsens with silence: UP, then SUSPECT, then DOWN, at the
        /// configured ages and never before.
        #[test]
        fn state_worsens_monotonically_with_silence(
            a in 0u64..10_000,
            b in 0u64..10_000,
            interval in 50u64..2000,
            suspect_after in 1u32..5,
            extra in 1u32..5,
        ) {
            let l = liveness_of(interval, suspect_after, extra);
            let rank = severity;
            let (early, late) = (a.min(b), a.max(b));
            let se = derive_state(Duration::from_millis(early), &l);
            let sl = derive_state(Duration::from_millis(late), &l);
            proptest::prop_assert!(rank(se) <= rank(sl));
            let age = Duration::from_millis(late);
            proptest::prop_assert_eq!(sl == AgentState::Up, age < l.suspect_age());
            proptest::prop_assert_eq!(sl == AgentState::Down, age >= l.down_age());
        }

        /// A coordinator behind on its own socket blames no agent sooner, never more
        /// than the coordinator that hears on time would, and no later than the down
        /// age; it changes nothing for a disconnected agent.
        #[test]
        fn a_coordinator_behind_blames_later_but_by_the_down_age(
            silent in 0u64..10_000,
            interval in 50u64..2000,
            suspect_after in 1u32..5,
            extra in 1u32..5,
            current in 0u8..3,
            connected: bool,
        ) {
            let l = liveness_of(interval, suspect_after, extra);
            let current = [AgentState::Up, AgentState::Suspect, AgentState::Down][current as usize];
            let age = Duration::from_millis(silent);
            let on_time = next_state(current, age, connected, &l, Hearing::Current);
            let behind = next_state(current, age, connected, &l, Hearing::Behind);
            proptest::prop_assert!(severity(behind) <= severity(on_time));
            proptest::prop_assert!(behind == on_time || behind == current);
            if !connected || age >= l.down_age() {
                proptest::prop_assert_eq!(behind, on_time);
            }
        }
    }

    #[test]
    fn behind_on_its_socket_the_coordinator_holds_suspicion_until_the_down_age() {
        let (id, region) = ids();
        let mut r = Registry::new(liveness());
        let t0 = Instant::now();
        let (conn, _) = r.connect(&id, &region, "0.1.0", &[], t0);
        r.heartbeat(&id, conn, hb(1), t0, Utc::now());
        // Silent 1.1 s (past suspect_after, 1 s) while datagrams wait unread: still UP.
        assert!(r
            .tick(t0 + Duration::from_millis(1100), Hearing::Behind)
            .is_empty());
        // The backlog read, its heartbeat was there: UP all along, no transition.
        r.heartbeat(
            &id,
            conn,
            hb(2),
            t0 + Duration::from_millis(1200),
            Utc::now(),
        );
        assert!(r
            .tick(t0 + Duration::from_millis(1300), Hearing::Current)
            .is_empty());
        // Silent past the down age (2 s): DOWN even while behind.
        let t = r.tick(t0 + Duration::from_millis(3300), Hearing::Behind);
        assert_eq!((t[0].from, t[0].to), (AgentState::Up, AgentState::Down));
    }
}
