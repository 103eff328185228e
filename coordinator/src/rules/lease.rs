//! The coordinator's half of the lease argument: whether a silent old primary's agent
//! has surely fenced its server by itself (see ARCHITECTURE.md, "Failover safety
//! argument"; the agent's half and the shared arithmetic are in
//! `drmesh_protocol::lease`).
//!
//! The agent renews its lease by the coordinator's heartbeat acknowledgements or by a
//! majority of the mesh answering its pings, each dated by its own send time. So the
//! latest renewal it can hold is no later than
//! - the arrival of its newest heartbeat here (or this process's start), and
//! - for each peer, the last contact that peer reports with it (arrival of the report
//!   minus the reported age; without one, the peer's start).
//!
//! It needs `k = ceil(n / 2)` of its `n` peers. The lease has run out once its own
//! renewal is older than lease + margin and fewer than `k` peers lack a fresh report
//! proving their contact with it is older than that too.
//!
//! Assumption (checked by the simulation below, and the one known gap): a peer whose
//! link to the old primary has been silent for longer than lease + margin − (the
//! freshness window + the largest message delay) does not hear from it again before
//! the failover is over. Contact that resumes after the peer's last report is invisible
//! here; `contact_that_resumes_after_the_last_report_is_not_seen` pins that gap.

use std::fmt;
use std::time::{Duration, Instant};

use drmesh_protocol::lease;
use drmesh_protocol::AgentId;

use super::health::fresh;
use super::registry::Registry;
use super::Timing;

/// Whether a silent agent's lease has surely run out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseVerdict {
    /// It has fenced itself: its newest renewal, through the coordinator or a mesh
    /// majority, is older than lease + margin.
    Ended { silent_for: Duration },
    /// Not an agent this coordinator knows: nothing shows its server fenced.
    UnknownAgent,
    /// Silent past its lease, but its agent never said it can fence its server (no
    /// `[database]` section, or an agent too old to say): the server may still be
    /// writable.
    CannotFence { silent_for: Duration },
    /// Heard from within lease + margin.
    HeardRecently { ago: Duration },
    /// Never reported its mesh view, so whether it fences itself is unknown.
    NoView,
    /// Its view has no peers: it holds no lease and never fences itself.
    EmptyView,
    /// Enough peers may still be in contact with it to renew it through the mesh.
    MeshMayRenew { unproven: Vec<Unproven> },
}

/// A peer that cannot be shown out of contact with the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unproven {
    NotHeard(AgentId),
    NoMesh(AgentId),
    InContact { peer: AgentId, ago: Duration },
}

impl LeaseVerdict {
    /// Whether a failover may promote past this agent without its confirmation: only
    /// when the agent can fence, held a lease, and the lease has surely run out.
    pub fn ended(&self) -> bool {
        matches!(self, LeaseVerdict::Ended { .. })
    }

    /// Whether waiting longer cannot change the verdict: only an operator (who stops the
    /// server by hand and confirms it) or the agent coming back can.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            LeaseVerdict::UnknownAgent
                | LeaseVerdict::CannotFence { .. }
                | LeaseVerdict::NoView
                | LeaseVerdict::EmptyView
        )
    }

    /// Whether the agent has been silent for longer than lease + margin (whatever that
    /// proves about its server).
    pub fn silent_past_wait(&self) -> bool {
        matches!(
            self,
            LeaseVerdict::Ended { .. }
                | LeaseVerdict::CannotFence { .. }
                | LeaseVerdict::NoView
                | LeaseVerdict::EmptyView
                | LeaseVerdict::MeshMayRenew { .. }
        )
    }

    /// The verdict in words, for the failover's step message.
    pub fn explain(&self, agent: &AgentId, timing: &Timing) -> String {
        let lease = timing.lease.as_millis();
        let margin = timing.fence_margin.as_millis();
        match self {
            LeaseVerdict::Ended { silent_for } => format!(
                "{agent} not heard from for {} ms, and no majority of the mesh in contact with it for longer than its lease ({lease} ms) plus margin ({margin} ms): it has fenced itself",
                silent_for.as_millis()
            ),
            LeaseVerdict::UnknownAgent => format!(
                "{agent} is not a known agent, so nothing shows its server fenced"
            ),
            LeaseVerdict::CannotFence { silent_for } => format!(
                "{agent} not heard from for {} ms, and it cannot fence itself (its agent has no \
                 [database] section, or never said it can), so its PostgreSQL may still be writable",
                silent_for.as_millis()
            ),
            LeaseVerdict::HeardRecently { ago } => format!(
                "{agent} was heard from {} ms ago; its lease ({lease} ms) plus margin ({margin} ms) has not run out",
                ago.as_millis()
            ),
            LeaseVerdict::NoView => format!(
                "{agent} never reported its mesh view, so whether it fences itself is unknown; \
                 fence it by hand (stop its PostgreSQL, leave standby.signal) or bring its agent back"
            ),
            LeaseVerdict::EmptyView => format!(
                "{agent} had no peers in its mesh view, so it does not fence itself when cut off; \
                 fence it by hand (stop its PostgreSQL, leave standby.signal) or bring its agent back"
            ),
            LeaseVerdict::MeshMayRenew { unproven } => format!(
                "{agent} may still hold its lease through the mesh: {} of its peers cannot be shown out of contact: {}",
                unproven.len(),
                unproven
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl fmt::Display for Unproven {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unproven::NotHeard(p) => write!(f, "{p} (not heard from)"),
            Unproven::NoMesh(p) => write!(f, "{p} (reports no mesh)"),
            Unproven::InContact { peer, ago } => {
                write!(f, "{peer} (in contact {} ms ago)", ago.as_millis())
            }
        }
    }
}

/// Whether `old`'s lease has surely run out at `now`, judged on the registry.
pub fn old_primary(
    registry: &Registry,
    old: &AgentId,
    now: Instant,
    timing: &Timing,
) -> LeaseVerdict {
    let wait = timing.fence_wait();
    let Some(entry) = registry.get(old) else {
        return LeaseVerdict::UnknownAgent;
    };
    let heard = entry.last_heartbeat_instant.unwrap_or(timing.started);
    let since = now.saturating_duration_since(heard);
    if !lease::waited_out(heard, now, wait) {
        return LeaseVerdict::HeardRecently { ago: since };
    }
    // Only an agent that said it can fence does so when its lease runs out.
    if entry.can_fence != Some(true) {
        return LeaseVerdict::CannotFence { silent_for: since };
    }
    let mut unproven = Vec::new();
    let mut peers = 0usize;
    for p in registry.agents() {
        if &p.id == old || p.addresses.mesh.is_none() {
            continue;
        }
        peers += 1;
        let Some(arrived) = p.last_heartbeat_instant.filter(|_| fresh(p, now, timing)) else {
            unproven.push(Unproven::NotHeard(p.id.clone()));
            continue;
        };
        let Some(mesh) = p.heartbeat.as_ref().and_then(|h| h.mesh.as_ref()) else {
            unproven.push(Unproven::NoMesh(p.id.clone()));
            continue;
        };
        let age = mesh
            .peers
            .iter()
            .find(|r| &r.agent_id == old)
            .and_then(|r| r.contact_age_ms)
            .unwrap_or(mesh.uptime_ms);
        if let Some(c) = lease::reported_contact(arrived, Duration::from_millis(age)) {
            if !lease::waited_out(c, now, wait) {
                unproven.push(Unproven::InContact {
                    peer: p.id.clone(),
                    ago: now.saturating_duration_since(c),
                });
            }
        }
    }
    // The size of the old agent's view, as it last reported (kept across restarts).
    let Some(view) = entry.mesh_peers else {
        return LeaseVerdict::NoView;
    };
    if !lease::holds_lease(view as usize) {
        return LeaseVerdict::EmptyView;
    }
    if !lease::mesh_cannot_renew(view as usize, peers, unproven.len()) {
        return LeaseVerdict::MeshMayRenew { unproven };
    }
    LeaseVerdict::Ended { silent_for: since }
}

#[cfg(test)]
mod tests {
    //! The central property: under every interleaving of heartbeats, acknowledgements,
    //! pings, answers, reports, losses, delays, link cuts and coordinator restarts, the
    //! coordinator never decides that the old primary's lease has ended while its agent
    //! may still hold it (its lease end plus the margin not yet past).
    //!
    //! `DRMESH_LEASE_SEED=<n>` runs one seed; a failing seed is printed and goes into
    //! `PINNED`.

    use std::collections::BTreeMap;

    use drmesh_protocol::mesh::{MeshReport, PeerReport};
    use drmesh_protocol::{PgRole, RegionId};
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::rules::registry::{AgentAddresses, Liveness};

    /// Seeds that once failed, or that cover a case worth keeping.
    const PINNED: &[u64] = &[0, 1, 2, 3, 42];

    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum Node {
        Old,
        Peer(usize),
        Coordinator,
    }

    #[derive(Clone, Debug)]
    enum Msg {
        /// A heartbeat sent at `sent` (by the old primary or a peer).
        Heartbeat { from: Node, seq: u64, sent: u64 },
        /// The coordinator's acknowledgement of the old primary's heartbeat sent at `sent`.
        Ack { sent: u64 },
        /// A ping sent at `sent` by `from` to `to`.
        Ping { from: Node, to: Node, sent: u64 },
        /// The answer to a ping `from` sent at `sent`.
        Pong { to: Node, from: Node, sent: u64 },
    }

    /// One run's knobs, drawn from the seed.
    #[derive(Clone, Debug)]
    struct Scenario {
        peers: usize,
        interval: u64,
        lease: u64,
        margin: u64,
        max_delay: u64,
        loss: f64,
        /// Per link (old primary ↔ node), when it is cut, and for how long (`None`: for
        /// good).
        cuts: BTreeMap<Node, Vec<(u64, Option<u64>)>>,
        /// Peer ↔ coordinator cuts.
        peer_cuts: Vec<Vec<(u64, Option<u64>)>>,
        /// When the coordinator restarts (its registry is rebuilt from the store).
        restart: Option<u64>,
        /// Enforce the documented assumption: a long silence on a link to the old
        /// primary lasts until the end.
        assume_long_silence_lasts: bool,
        end: u64,
    }

    impl Scenario {
        fn draw(seed: u64) -> Scenario {
            let mut rng = StdRng::seed_from_u64(seed);
            let peers = rng.gen_range(1..=4);
            let interval = [100, 250, 500][rng.gen_range(0..3)];
            let lease = interval * rng.gen_range(4..=12);
            let margin = rng.gen_range(200..=1000);
            let max_delay = rng.gen_range(0..=interval / 2);
            let loss = [0.0, 0.05, 0.2][rng.gen_range(0..3)];
            let end = 40_000;
            let cut = |rng: &mut StdRng| {
                let mut v = Vec::new();
                for _ in 0..rng.gen_range(0..=3) {
                    let at = rng.gen_range(0..end / 2);
                    let len = if rng.gen_bool(0.5) {
                        None
                    } else {
                        Some(rng.gen_range(1..=2 * lease))
                    };
                    v.push((at, len));
                }
                v
            };
            let mut cuts = BTreeMap::new();
            cuts.insert(Node::Coordinator, cut(&mut rng));
            for p in 0..peers {
                cuts.insert(Node::Peer(p), cut(&mut rng));
            }
            let peer_cuts = (0..peers).map(|_| cut(&mut rng)).collect();
            let restart = rng.gen_bool(0.3).then(|| rng.gen_range(1000..end / 2));
            Scenario {
                peers,
                interval,
                lease,
                margin,
                max_delay,
                loss,
                cuts,
                peer_cuts,
                restart,
                assume_long_silence_lasts: true,
                end,
            }
        }

        fn timing(&self, started: Instant) -> Timing {
            Timing {
                heartbeat_interval: Duration::from_millis(self.interval),
                lease: Duration::from_millis(self.lease),
                fence_margin: Duration::from_millis(self.margin),
                started,
            }
        }

        fn cut(list: &[(u64, Option<u64>)], t: u64) -> bool {
            list.iter()
                .any(|&(at, len)| t >= at && len.is_none_or(|l| t < at + l))
        }
    }

    /// The simulated world, in milliseconds since the start.
    struct World {
        s: Scenario,
        rng: StdRng,
        t0: Instant,
        /// Messages in flight, by arrival time.
        flight: BTreeMap<(u64, u64), Msg>,
        next_msg: u64,
        /// The old primary's renewals: the coordinator's (send time of the acknowledged
        /// heartbeat) and each peer's (send time of the newest answered ping).
        renewed_by_coordinator: Option<u64>,
        answered: Vec<Option<u64>>,
        /// Each peer's last contact with the old primary.
        contact: Vec<Option<u64>>,
        /// Each peer's last contact as of each of its heartbeats' send times.
        contact_at_send: Vec<BTreeMap<u64, Option<u64>>>,
        /// The last delivery on each of the old primary's links, either way.
        last_delivery: BTreeMap<Node, u64>,
        /// Links the assumption has frozen.
        frozen: BTreeMap<Node, bool>,
        registry: Registry,
        started: u64,
        connections: BTreeMap<Node, u64>,
        seqs: BTreeMap<Node, u64>,
    }

    fn id(n: Node) -> AgentId {
        let name = match n {
            Node::Old => "old".to_string(),
            Node::Peer(i) => format!("peer{i}"),
            Node::Coordinator => "coordinator".to_string(),
        };
        AgentId::new(&name).expect("id")
    }

    impl World {
        fn new(s: Scenario, seed: u64) -> World {
            let t0 = Instant::now();
            let peers = s.peers;
            let mut w = World {
                rng: StdRng::seed_from_u64(seed ^ 0x5eed),
                t0,
                flight: BTreeMap::new(),
                next_msg: 0,
                renewed_by_coordinator: None,
                answered: vec![None; peers],
                contact: vec![None; peers],
                contact_at_send: vec![BTreeMap::new(); peers],
                last_delivery: BTreeMap::new(),
                frozen: BTreeMap::new(),
                registry: Registry::new(Liveness {
                    interval: Duration::from_millis(s.interval),
                    suspect_after: 2,
                    down_after: 4,
                }),
                started: 0,
                connections: BTreeMap::new(),
                seqs: BTreeMap::new(),
                s,
            };
            w.boot_coordinator(0);
            w
        }

        fn at(&self, t: u64) -> Instant {
            self.t0 + Duration::from_millis(t)
        }

        fn agents(&self) -> Vec<Node> {
            std::iter::once(Node::Old)
                .chain((0..self.s.peers).map(Node::Peer))
                .collect()
        }

        /// A (re)started coordinator: agents remembered from the store, the old
        /// primary's view size kept; each reconnects on its next heartbeat.
        fn boot_coordinator(&mut self, t: u64) {
            self.started = t;
            self.registry = Registry::new(self.registry.liveness());
            self.connections.clear();
            let region = RegionId::new("r").expect("region");
            for n in self.agents() {
                self.registry
                    .remember(id(n), region.clone(), "0".into(), self.at(t));
                self.registry.set_addresses(
                    &id(n),
                    AgentAddresses {
                        mesh: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 1))),
                        postgres: None,
                        postgres_mesh: None,
                    },
                );
            }
            self.registry
                .set_mesh_peers(&id(Node::Old), Some(self.s.peers as u32));
            self.registry.set_can_fence(&id(Node::Old), Some(true));
        }

        fn link_up(&self, a: Node, b: Node, t: u64) -> bool {
            let other = match (a, b) {
                (Node::Old, o) | (o, Node::Old) => o,
                (Node::Peer(i), Node::Coordinator) | (Node::Coordinator, Node::Peer(i)) => {
                    return !Scenario::cut(&self.s.peer_cuts[i], t)
                }
                _ => return true,
            };
            !self.frozen.get(&other).copied().unwrap_or(false)
                && !Scenario::cut(&self.s.cuts[&other], t)
        }

        fn send(&mut self, from: Node, to: Node, t: u64, msg: Msg) {
            if !self.link_up(from, to, t) || self.rng.gen_bool(self.s.loss) {
                return;
            }
            let arrive = t + self.rng.gen_range(0..=self.s.max_delay);
            self.next_msg += 1;
            self.flight.insert((arrive, self.next_msg), msg);
        }

        fn deliver(&mut self, t: u64, msg: Msg) {
            match msg {
                Msg::Heartbeat { from, seq, sent } => {
                    if from == Node::Old {
                        self.touch(Node::Coordinator, t);
                    }
                    let agent = id(from);
                    let conn = match self.connections.get(&from) {
                        Some(c) => *c,
                        None => {
                            let region = RegionId::new("r").expect("region");
                            let (c, _) =
                                self.registry.connect(&agent, &region, "0", &[], self.at(t));
                            self.connections.insert(from, c);
                            c
                        }
                    };
                    let mesh = match from {
                        Node::Peer(i) => Some(MeshReport {
                            generation: 1,
                            peer_count: self.s.peers as u32,
                            uptime_ms: sent,
                            fenced: false,
                            can_fence: true,
                            peers: vec![PeerReport {
                                agent_id: id(Node::Old),
                                contact_age_ms: self.contact_at_send[i]
                                    .get(&sent)
                                    .copied()
                                    .flatten()
                                    .map(|c| sent - c.min(sent)),
                                postgres_ok: Some(false),
                            }],
                        }),
                        _ => None,
                    };
                    let role = (from == Node::Old).then_some(PgRole::Primary);
                    let hb = crate::rules::fixtures::heartbeat(seq, sent, role, mesh);
                    self.registry
                        .heartbeat(&agent, conn, hb, self.at(t), chrono::Utc::now());
                    if from == Node::Old {
                        self.send(Node::Coordinator, Node::Old, t, Msg::Ack { sent });
                    }
                }
                Msg::Ack { sent } => {
                    self.touch(Node::Coordinator, t);
                    self.renewed_by_coordinator = self.renewed_by_coordinator.max(Some(sent));
                }
                Msg::Ping { from, to, sent } => {
                    if let Node::Peer(i) = to {
                        // A peer hears the old primary.
                        self.touch(to, t);
                        self.contact[i] = Some(t);
                    } else if let Node::Peer(_) = from {
                        self.touch(from, t);
                    }
                    self.send(
                        to,
                        from,
                        t,
                        Msg::Pong {
                            to: from,
                            from: to,
                            sent,
                        },
                    );
                }
                Msg::Pong { to, from, sent } => match (to, from) {
                    (Node::Old, Node::Peer(i)) => {
                        self.touch(from, t);
                        self.answered[i] = self.answered[i].max(Some(sent));
                    }
                    (Node::Peer(i), Node::Old) => {
                        self.touch(to, t);
                        self.contact[i] = Some(t);
                    }
                    _ => {}
                },
            }
        }

        /// A delivery on the old primary's link to `other`.
        fn touch(&mut self, other: Node, t: u64) {
            self.last_delivery.insert(other, t);
        }

        /// The assumption: a link to the old primary silent for longer than lease +
        /// margin − (freshness window + largest delay) stays silent.
        fn freeze(&mut self, t: u64) {
            if !self.s.assume_long_silence_lasts {
                return;
            }
            let fresh_window = self.s.interval * u64::from(crate::rules::FRESH_INTERVALS);
            let limit =
                (self.s.lease + self.s.margin).saturating_sub(fresh_window + self.s.max_delay);
            let others: Vec<Node> = std::iter::once(Node::Coordinator)
                .chain((0..self.s.peers).map(Node::Peer))
                .collect();
            for o in others {
                let last = self.last_delivery.get(&o).copied().unwrap_or(0);
                if t.saturating_sub(last) > limit {
                    self.frozen.insert(o, true);
                }
            }
        }

        /// The old primary's lease end, from every renewal it has received.
        fn lease_end(&self) -> u64 {
            let answered: Vec<lease::Millis> = self
                .answered
                .iter()
                .flatten()
                .map(|&a| lease::Millis(a))
                .collect();
            lease::lease_end(
                lease::Millis(0),
                Duration::from_millis(self.s.lease),
                self.renewed_by_coordinator.map(lease::Millis),
                answered,
                self.s.peers,
            )
            .0
        }
    }

    /// What a run found: each time the coordinator decided the lease had ended.
    struct Run {
        decisions: Vec<u64>,
        /// A decision the agent's lease end (plus the margin) had not passed.
        violation: Option<(u64, u64)>,
    }

    fn run(s: Scenario, seed: u64) -> Run {
        let end = s.end;
        let mut w = World::new(s, seed);
        let mut decisions = Vec::new();
        for t in 0..=end {
            if w.s.restart == Some(t) {
                w.boot_coordinator(t);
            }
            while let Some(key) = w.flight.first_key_value().map(|(k, _)| *k) {
                if key.0 > t {
                    break;
                }
                let msg = w.flight.remove(&key).expect("message");
                w.deliver(t, msg);
            }
            if t % w.s.interval == 0 {
                for a in w.agents() {
                    let seq = w.seqs.entry(a).or_insert(0);
                    *seq += 1;
                    let seq = *seq;
                    if let Node::Peer(i) = a {
                        let c = w.contact[i];
                        w.contact_at_send[i].insert(t, c);
                    }
                    w.send(
                        a,
                        Node::Coordinator,
                        t,
                        Msg::Heartbeat {
                            from: a,
                            seq,
                            sent: t,
                        },
                    );
                }
                for p in 0..w.s.peers {
                    w.send(
                        Node::Old,
                        Node::Peer(p),
                        t,
                        Msg::Ping {
                            from: Node::Old,
                            to: Node::Peer(p),
                            sent: t,
                        },
                    );
                    w.send(
                        Node::Peer(p),
                        Node::Old,
                        t,
                        Msg::Ping {
                            from: Node::Peer(p),
                            to: Node::Old,
                            sent: t,
                        },
                    );
                }
            }
            w.freeze(t);
            if t % 50 == 0 {
                let timing = w.s.timing(w.at(w.started));
                let verdict = old_primary(&w.registry, &id(Node::Old), w.at(t), &timing);
                if verdict.ended() {
                    decisions.push(t);
                }
            }
        }
        // Every renewal has now arrived: the agent's final lease end bounds every
        // lease it held at any decision.
        let lease_end = w.lease_end();
        let violation = decisions
            .iter()
            .find(|&&d| lease_end + w.s.margin > d)
            .map(|&d| (d, lease_end));
        Run {
            decisions,
            violation,
        }
    }

    fn check(seed: u64) -> Result<usize, String> {
        let s = Scenario::draw(seed);
        let desc = format!("{s:?}");
        let r = run(s, seed);
        match r.violation {
            None => Ok(r.decisions.len()),
            Some((d, end)) => Err(format!(
                "seed {seed}: the coordinator decided at {d} ms that the lease had ended, but the agent's lease runs to {end} ms (+ margin); scenario {desc}; rerun with DRMESH_LEASE_SEED={seed}"
            )),
        }
    }

    #[test]
    fn pinned_seeds_hold() {
        for &seed in PINNED {
            if let Err(e) = check(seed) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn the_seed_from_the_environment_holds() {
        let Ok(seed) = std::env::var("DRMESH_LEASE_SEED") else {
            return;
        };
        let seed: u64 = seed.parse().expect("DRMESH_LEASE_SEED is a number");
        let decisions = check(seed).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("seed {seed}: {decisions} decisions, none early");
    }

    /// Many random worlds; some decide (a region really cut off), most do not. Both
    /// kinds must occur, or the test proves nothing.
    #[test]
    fn random_worlds_never_decide_early() {
        let base: u64 = rand::random();
        let mut decided = 0;
        let mut quiet = 0;
        for i in 0..200u64 {
            let seed = base.wrapping_add(i);
            match check(seed) {
                Ok(0) => quiet += 1,
                Ok(_) => decided += 1,
                Err(e) => panic!("{e}"),
            }
        }
        eprintln!("seeds {base}..+200: {decided} worlds decided, {quiet} never did");
        assert!(
            decided > 10 && quiet > 10,
            "{decided} decided, {quiet} quiet"
        );
    }

    /// The known gap (issue 18): a peer silent for longer than the wait reports so, then
    /// hears from the old primary again before the coordinator decides; the decision
    /// cannot see that contact, and the agent's lease was renewed by it.
    #[test]
    fn contact_that_resumes_after_the_last_report_is_not_seen() {
        let mut s = Scenario::draw(7);
        s.peers = 2;
        s.interval = 500;
        s.lease = 5000;
        s.margin = 1000;
        s.max_delay = 0;
        s.loss = 0.0;
        s.restart = None;
        s.assume_long_silence_lasts = false;
        s.peer_cuts = vec![vec![], vec![]];
        s.cuts = BTreeMap::new();
        // Cut from the coordinator for good at 1 s; cut from both peers at 1 s, and from
        // peer 0 until just after the coordinator has its report of a long silence.
        s.cuts.insert(Node::Coordinator, vec![(1000, None)]);
        s.cuts.insert(Node::Peer(1), vec![(1000, None)]);
        s.cuts.insert(Node::Peer(0), vec![(1000, Some(6100))]);
        let r = run(s, 7);
        assert!(
            r.violation.is_some(),
            "the gap is closed (decisions {:?}): turn this into a regular pinned case",
            r.decisions
        );
    }

    /// A silent primary is self-fenced only when its agent said it can fence (and held a
    /// lease that ran out); an agent the registry does not know is never taken as fenced.
    #[test]
    fn a_silent_primary_counts_as_self_fenced_only_if_its_agent_can_fence() {
        let t0 = Instant::now();
        let timing = Timing {
            heartbeat_interval: Duration::from_millis(500),
            lease: Duration::from_secs(5),
            fence_margin: Duration::from_secs(1),
            started: t0,
        };
        let now = t0 + Duration::from_secs(20);
        let mut r = Registry::new(Liveness {
            interval: Duration::from_millis(500),
            suspect_after: 2,
            down_after: 4,
        });
        let region = RegionId::new("r").expect("region");
        let (old, peer) = (id(Node::Old), id(Node::Peer(0)));
        r.remember(old.clone(), region.clone(), "0".into(), t0);
        r.set_mesh_peers(&old, Some(1));
        // Its one peer is heard from and lost contact with it 15 s ago.
        let arrived = now - Duration::from_millis(100);
        let (c, _) = r.connect(&peer, &region, "0", &[], arrived);
        r.set_addresses(
            &peer,
            AgentAddresses {
                mesh: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 1))),
                postgres: None,
                postgres_mesh: None,
            },
        );
        let mesh = MeshReport {
            generation: 1,
            peer_count: 1,
            uptime_ms: 19_000,
            fenced: false,
            can_fence: true,
            peers: vec![PeerReport {
                agent_id: old.clone(),
                contact_age_ms: Some(15_000),
                postgres_ok: Some(false),
            }],
        };
        let hb = crate::rules::fixtures::heartbeat(1, 0, Some(PgRole::Standby), Some(mesh));
        r.heartbeat(&peer, c, hb, arrived, chrono::Utc::now());

        // Never said: not fenced.
        let silent_for = Duration::from_secs(20);
        let v = old_primary(&r, &old, now, &timing);
        assert_eq!(v, LeaseVerdict::CannotFence { silent_for });
        assert!(!v.ended() && v.needs_operator());
        // Said it cannot: not fenced.
        r.set_can_fence(&old, Some(false));
        assert_eq!(
            old_primary(&r, &old, now, &timing),
            LeaseVerdict::CannotFence { silent_for }
        );
        // Said it can: its lease ran out, it fenced itself.
        r.set_can_fence(&old, Some(true));
        assert_eq!(
            old_primary(&r, &old, now, &timing),
            LeaseVerdict::Ended { silent_for }
        );
        // Heard from within the lease: waiting, whatever it can do.
        r.set_can_fence(&old, Some(false));
        let early = t0 + Duration::from_secs(3);
        assert!(matches!(
            old_primary(&r, &old, early, &timing),
            LeaseVerdict::HeardRecently { .. }
        ));
        // Not in the registry (e.g. never reconnected to a coordinator whose store lost
        // it): never taken as fenced.
        let gone = AgentId::new("gone").expect("id");
        let v = old_primary(&r, &gone, now, &timing);
        assert_eq!(v, LeaseVerdict::UnknownAgent);
        assert!(!v.ended() && v.needs_operator());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_seed_holds(seed in any::<u64>()) {
            if let Err(e) = check(seed) {
                prop_assert!(false, "{}", e);
            }
        }
    }
}
