//! Which coordinator acts. With a redb store there is one, and it always leads
//! ([`Leadership::Sole`]). With etcd, every coordinator campaigns for one key,
//! `<prefix>_leader`, attached to its own etcd lease: whoever creates it leads until its
//! lease ends, or until a follower deposes it; the key's creation revision is its
//! **term**. The others follow, serve reads, and point agents and writers at the leader.
//!
//! The leader renews every `leader_ttl / 3`: it keeps its lease alive and rewrites the
//! leader key (conditioned on its term). A follower that has seen the key's revision
//! stand for a whole `leader_ttl` deletes it (conditioned on that revision) and
//! campaigns ([`crate::rules::leadership`]): it does not wait for etcd to end the lease,
//! which etcd renews whenever it elects a leader of its own — so a coordinator lost
//! with etcd's leader is replaced as fast as one lost alone.
//!
//! Architecture Invariant: a coordinator acts (health checks, schedules, jobs,
//! failovers, agent commands) only while in office — between
//! [`crate::state::Coordinator::take_office`] and `leave_office` — and every store write
//! it makes is conditioned on its term ([`WriteGuard::Leader`]), so a deposed leader
//! commits nothing even before it learns it was deposed. It also leaves office by
//! itself once it may be deposed: when no renewal has been confirmed for
//! `leader_ttl * 2/3` (etcd dates the lease from its receipt of a renewal, and a
//! follower the key's revision from its own read of it, both after the leader sent
//! it), so at least `leader_ttl / 3` passes between an old leader stopping and another
//! being elected.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::rules::leadership::{proof_until, Sighting};
use crate::store::{EtcdStore, WriteGuard};

/// Where this coordinator stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Leadership {
    /// The only coordinator (a redb store): it always leads.
    Sole,
    /// This coordinator leads, since `since`, in `term` (the leader key's revision);
    /// `members` are the coordinators announced.
    Leader {
        term: i64,
        since: Instant,
        members: Vec<Announcement>,
    },
    /// Another coordinator leads (`leader`, in `term`), or none is known yet.
    Follower {
        leader: Option<Announcement>,
        term: Option<i64>,
        members: Vec<Announcement>,
    },
    /// etcd does not answer (no quorum, or no member reachable): this coordinator decides
    /// nothing, and cannot know who does.
    Cut { error: String, since: Instant },
}

impl Leadership {
    pub fn leads(&self) -> bool {
        matches!(self, Leadership::Sole | Leadership::Leader { .. })
    }

    /// The coordinators announced, as last read.
    pub fn members(&self) -> &[Announcement] {
        match self {
            Leadership::Leader { members, .. } | Leadership::Follower { members, .. } => members,
            Leadership::Sole | Leadership::Cut { .. } => &[],
        }
    }

    /// The term, when known.
    pub fn term(&self) -> Option<i64> {
        match self {
            Leadership::Leader { term, .. } => Some(*term),
            Leadership::Follower { term, .. } => *term,
            Leadership::Sole | Leadership::Cut { .. } => None,
        }
    }
}

/// What a coordinator tells the others about itself, under `<prefix>_coordinators/` and,
/// while it leads, in the leader key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Announcement {
    pub name: String,
    /// The REST API's base URL, e.g. `http://10.0.1.5:3000`.
    pub api: String,
    /// Where agents reach its QUIC endpoint, `host:port`.
    pub quic: String,
}

/// Until when this coordinator's leadership is proven: the send time of its last lease
/// renewal that etcd confirmed, plus 2/3 of the lease (etcd counts the lease from its own
/// receipt of that renewal, later). Read on every heartbeat acknowledgement and every
/// command to an agent: a coordinator whose runtime stalled past its proof acts on
/// nothing, even before it has noticed that it lost office. A sole coordinator's proof
/// always holds.
pub struct Proof {
    base: Instant,
    /// Nanoseconds after `base`; 0: no proof; `u64::MAX`: always.
    until: std::sync::atomic::AtomicU64,
}

impl Proof {
    pub fn always() -> Self {
        Self {
            base: Instant::now(),
            until: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    pub fn none() -> Self {
        Self {
            base: Instant::now(),
            until: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The proof now holds until `until`.
    pub fn extend_to(&self, until: Instant) {
        let nanos = until.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1).max(1);
        self.until.store(nanos, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn revoke(&self) {
        self.until.store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the proof holds at `now`.
    pub fn holds_at(&self, now: Instant) -> bool {
        let until = self.until.load(std::sync::atomic::Ordering::SeqCst);
        until == u64::MAX
            || (until != 0 && now.saturating_duration_since(self.base).as_nanos() < until as u128)
    }
}

/// One campaign round's pause: how soon a follower notices a vacant leader key.
const ROUND: Duration = Duration::from_millis(250);

/// Campaigns for leadership, forever: holds a lease, announces this coordinator, takes
/// the leader key when it is free, and publishes every change of standing on `tx`.
/// Runs on the store's own runtime ([`EtcdStore::handle`]).
pub async fn campaign(
    store: Arc<EtcdStore>,
    me: Announcement,
    ttl: Duration,
    tx: watch::Sender<Leadership>,
    proof: Arc<Proof>,
) {
    // Kept across leases: a follower cut from etcd for a moment still knows how long
    // the leader key has stood unchanged.
    let mut sighting = None;
    loop {
        let err = hold_lease(&store, &me, ttl, &tx, &proof, &mut sighting).await;
        proof.revoke();
        store.set_guard(WriteGuard::Follower);
        let since = match &*tx.borrow() {
            Leadership::Cut { since, .. } => *since,
            _ => Instant::now(),
        };
        warn!(error = %err, "etcd: no lease held; this coordinator decides nothing until it holds one");
        store.set_cut(Some(format!("cut off from etcd: {err}")));
        tx.send_replace(Leadership::Cut { error: err, since });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One lease's life: returns why it ended.
async fn hold_lease(
    store: &EtcdStore,
    me: &Announcement,
    ttl: Duration,
    tx: &watch::Sender<Leadership>,
    proof: &Proof,
    sighting: &mut Option<Sighting>,
) -> String {
    let mut client = store.client();
    let request = (ttl / 3).max(Duration::from_millis(500));
    let lease = match tokio::time::timeout(
        request,
        client.lease_grant(ttl.as_secs().max(1) as i64, None),
    )
    .await
    {
        Ok(Ok(l)) => l.id(),
        Ok(Err(e)) => return format!("grant a lease: {e}"),
        Err(_) => return format!("grant a lease: no answer within {request:?}"),
    };
    store.set_own_lease(Some(lease));
    store.set_cut(None);
    let mut renewed = Instant::now();
    let (mut keeper, mut stream) =
        match tokio::time::timeout(request, client.lease_keep_alive(lease)).await {
            Ok(Ok(k)) => k,
            Ok(Err(e)) => return format!("keep the lease alive: {e}"),
            Err(_) => return format!("keep the lease alive: no answer within {request:?}"),
        };
    let me_json = match serde_json::to_vec(me) {
        Ok(j) => j,
        Err(e) => return format!("encode this coordinator's announcement: {e}"),
    };
    let announced = tokio::time::timeout(
        request,
        client.put(
            format!("{}{}", store.coordinators_prefix(), me.name),
            me_json.clone(),
            Some(PutOptions::new().with_lease(lease)),
        ),
    )
    .await;
    if !matches!(announced, Ok(Ok(_))) {
        return "announce this coordinator: etcd did not answer".into();
    }
    let leader_key = store.leader_key();
    let mut term: Option<i64> = None;
    let outcome = loop {
        // Renew a third of the way through the lease; a leader also rewrites its key, so
        // that the followers see it alive.
        if renewed.elapsed() >= ttl / 3 {
            let sent = Instant::now();
            let touch = term.map(|t| {
                Txn::new()
                    .when([Compare::create_revision(
                        leader_key.clone(),
                        CompareOp::Equal,
                        t,
                    )])
                    .and_then([TxnOp::put(
                        leader_key.clone(),
                        me_json.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
            });
            match tokio::time::timeout(request, async {
                keeper.keep_alive().await?;
                let kept = stream.message().await?;
                let touched = match touch {
                    Some(txn) => Some(client.txn(txn).await?.succeeded()),
                    None => None,
                };
                Ok::<_, etcd_client::Error>((kept, touched))
            })
            .await
            {
                Ok(Ok((_, Some(false)))) => {
                    break "the leader key changed under this coordinator".into()
                }
                Ok(Ok((Some(r), _))) if r.ttl() > 0 => {
                    renewed = sent;
                    if term.is_some() {
                        proof.extend_to(proof_until(renewed, ttl));
                    }
                }
                Ok(Ok(_)) => break "the lease expired".to_string(),
                Ok(Err(e)) => warn!(error = %e, "etcd: renewing the lease failed"),
                Err(_) => warn!("etcd: renewing the lease got no answer within {request:?}"),
            }
        }
        if term.is_some() && renewed.elapsed() >= ttl * 2 / 3 {
            break format!(
                "the lease was not renewed for {:?}: it may end within {:?}",
                renewed.elapsed(),
                ttl.saturating_sub(renewed.elapsed())
            );
        }
        // Take the key if it is free, else read who holds it; and who is announced.
        let members_get = || {
            TxnOp::get(
                store.coordinators_prefix(),
                Some(GetOptions::new().with_prefix()),
            )
        };
        let txn = Txn::new()
            .when([Compare::create_revision(
                leader_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(
                    leader_key.clone(),
                    me_json.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                members_get(),
            ])
            .or_else([
                TxnOp::get(leader_key.clone(), None::<GetOptions>),
                members_get(),
            ]);
        let resp = match tokio::time::timeout(request, client.txn(txn)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                if term.is_none() {
                    break format!("read the leader key: {e}");
                }
                warn!(error = %e, "etcd: reading the leader key failed");
                tokio::time::sleep(ROUND).await;
                continue;
            }
            Err(_) => {
                if term.is_none() {
                    break format!("read the leader key: no answer within {request:?}");
                }
                tokio::time::sleep(ROUND).await;
                continue;
            }
        };
        let responses = resp.op_responses();
        let members: Vec<Announcement> = match responses.get(1) {
            Some(TxnOpResponse::Get(g)) => g
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                .collect(),
            _ => Vec::new(),
        };
        if resp.succeeded() {
            let t = resp.header().map(|h| h.revision()).unwrap_or(0);
            store.set_guard(WriteGuard::Leader { term: t });
            proof.extend_to(proof_until(renewed, ttl));
            term = Some(t);
            info!(term = t, name = %me.name, "this coordinator leads");
            tx.send_replace(Leadership::Leader {
                term: t,
                since: Instant::now(),
                members,
            });
        } else {
            let holder = match responses.first() {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
                _ => None,
            };
            match holder {
                Some(kv) if kv.lease() == lease => {
                    // Still ours.
                    if term != Some(kv.create_revision()) {
                        break "the leader key changed under this coordinator".into();
                    }
                    tx.send_if_modified(|l| match l {
                        Leadership::Leader { members: m, .. } if *m != members => {
                            *m = members;
                            true
                        }
                        _ => false,
                    });
                }
                Some(kv) => {
                    if term.is_some() {
                        break format!(
                            "another coordinator holds the leader key (term {})",
                            kv.create_revision()
                        );
                    }
                    let now = Instant::now();
                    let seen = Sighting::observe(*sighting, kv.mod_revision(), now);
                    *sighting = Some(seen);
                    if seen.may_depose(now, ttl)
                        && depose(&mut client, &leader_key, seen, request).await
                    {
                        info!(
                            term = kv.create_revision(),
                            unchanged_for = ?now.saturating_duration_since(seen.since),
                            "deposed a silent leader: its key was not renewed within the lease"
                        );
                        // Campaign at once.
                        continue;
                    }
                    let leader = serde_json::from_slice::<Announcement>(kv.value()).ok();
                    let standing = Leadership::Follower {
                        leader,
                        term: Some(kv.create_revision()),
                        members,
                    };
                    if *tx.borrow() != standing {
                        tx.send_replace(standing);
                    }
                }
                None => {
                    if term.is_some() {
                        break "the leader key is gone".into();
                    }
                    *sighting = None;
                }
            }
        }
        tokio::time::sleep(ROUND).await;
    };
    // Leave at once: act on nothing, refuse writes, then say so, then free the key for
    // the others.
    proof.revoke();
    store.set_guard(WriteGuard::Follower);
    if term.is_some() {
        tx.send_replace(Leadership::Follower {
            leader: None,
            term: None,
            members: Vec::new(),
        });
    }
    store.set_own_lease(None);
    let _ = tokio::time::timeout(request, client.lease_revoke(lease)).await;
    outcome
}

/// Deletes the leader key if it still has the revision `seen` (no renewal since):
/// whether it did.
async fn depose(
    client: &mut etcd_client::Client,
    leader_key: &[u8],
    seen: Sighting,
    request: Duration,
) -> bool {
    let txn = Txn::new()
        .when([Compare::mod_revision(
            leader_key.to_vec(),
            CompareOp::Equal,
            seen.revision,
        )])
        .and_then([TxnOp::delete(leader_key.to_vec(), None)]);
    match tokio::time::timeout(request, client.txn(txn)).await {
        Ok(Ok(r)) => r.succeeded(),
        Ok(Err(e)) => {
            warn!(error = %e, "etcd: deposing a silent leader failed");
            false
        }
        Err(_) => false,
    }
}

/// Gives up this coordinator's lease (and so its leadership, at once) on a clean stop.
pub async fn resign(store: &EtcdStore, proof: &Proof) {
    proof.revoke();
    store.set_guard(WriteGuard::Follower);
    if let Some(lease) = store.own_lease() {
        let mut client = store.client();
        let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
    }
}

#[cfg(test)]
mod proof_tests {
    use super::*;

    #[test]
    fn a_proof_holds_until_its_instant_and_not_once_revoked() {
        let t0 = Instant::now();
        let p = Proof::none();
        assert!(!p.holds_at(t0));
        p.extend_to(t0 + Duration::from_secs(2));
        assert!(p.holds_at(t0 + Duration::from_secs(1)));
        assert!(!p.holds_at(t0 + Duration::from_secs(2)));
        p.revoke();
        assert!(!p.holds_at(t0));
        assert!(Proof::always().holds_at(t0 + Duration::from_secs(1_000_000)));
    }
}
