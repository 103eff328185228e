//! The agents' mesh: what the coordinator tells each agent about its peers, what agents
//! report back about them, and the signed datagrams agents probe each other with.
//!
//! Agents reach each other directly (UDP), so a primary that has lost the coordinator
//! can still learn whether a majority of the mesh is with it; its lease (see
//! ARCHITECTURE.md, "Failover safety argument") is renewed by the coordinator's
//! heartbeat acknowledgements or by a majority of peers answering its probes. Probes are
//! authenticated with HMAC-SHA256 under a key the coordinator hands out over mutual TLS,
//! so nobody outside the mesh can keep a cut-off primary's lease alive.

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{AgentId, RegionId};

/// The mesh's probe key (32 random bytes). Never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MeshKey(#[serde(with = "hex_bytes")] pub [u8; 32]);

impl std::fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshKey(<redacted>)")
    }
}

impl MeshKey {
    pub fn random() -> Self {
        use rand::RngCore;
        let mut k = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut k);
        MeshKey(k)
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a mesh key is 32 bytes"))
    }
}

/// One peer of an agent, as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPeer {
    pub agent_id: AgentId,
    pub region: RegionId,
    /// Where the peer's agent answers probes.
    pub mesh_addr: SocketAddr,
    /// Where the peer's PostgreSQL answers on the mesh network, if it has one.
    pub postgres_addr: Option<SocketAddr>,
}

/// What the coordinator tells an agent about the mesh: sent in `Welcome`, and in a
/// heartbeat acknowledgement whenever the agent reports an older generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshView {
    /// Changes whenever anything below changes.
    pub generation: u64,
    /// How long a primary's agent keeps its PostgreSQL writable without renewing its
    /// lease, in milliseconds.
    pub lease_ms: u64,
    pub key: MeshKey,
    /// Every agent of the mesh with a probe address; an agent leaves itself out.
    pub peers: Vec<MeshPeer>,
}

impl MeshView {
    /// The generation of a view: a hash of everything in it.
    pub fn generation_of(lease_ms: u64, key: &MeshKey, peers: &[MeshPeer]) -> u64 {
        let mut h = Sha256::new();
        h.update(lease_ms.to_le_bytes());
        h.update(key.0);
        for p in peers {
            h.update(p.agent_id.as_str().as_bytes());
            h.update([0]);
            h.update(p.region.as_str().as_bytes());
            h.update([0]);
            h.update(p.mesh_addr.to_string().as_bytes());
            h.update([0]);
            if let Some(a) = p.postgres_addr {
                h.update(a.to_string().as_bytes());
            }
            h.update([1]);
        }
        let d = h.finalize();
        let mut g = [0u8; 8];
        g.copy_from_slice(&d[..8]);
        // Zero means "no view yet" in reports.
        u64::from_le_bytes(g).max(1)
    }
}

/// What an agent knows about one peer, in its heartbeats.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerReport {
    pub agent_id: AgentId,
    /// Milliseconds since the last authenticated probe exchanged with this peer (either
    /// direction), at most the reporter's uptime; `None`: none since it started.
    pub contact_age_ms: Option<u64>,
    /// Whether the peer's PostgreSQL answered `SELECT 1` at the last probe; `None`: not
    /// probed (no address known yet).
    pub postgres_ok: Option<bool>,
}

/// The mesh part of a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshReport {
    /// Generation of the view the agent holds (0: none).
    pub generation: u64,
    /// How many peers that view has.
    pub peer_count: u32,
    /// Milliseconds since the agent started.
    pub uptime_ms: u64,
    /// The agent's PostgreSQL is fenced (stopped, `standby.signal` in place).
    pub fenced: bool,
    /// The agent can fence its PostgreSQL by itself when its lease runs out (it has a
    /// `[database]` section naming the data directory it stops). Absent from older
    /// agents: taken as cannot, so a silent primary of theirs is never counted as
    /// self-fenced.
    #[serde(default)]
    pub can_fence: bool,
    pub peers: Vec<PeerReport>,
}

/// A probe between agents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshPacket {
    Ping {
        from: AgentId,
        to: AgentId,
        nonce: u64,
    },
    Pong {
        from: AgentId,
        to: AgentId,
        nonce: u64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MeshPacketError {
    #[error("packet too short")]
    Short,
    #[error("bad signature")]
    BadSignature,
    #[error("undecodable packet: {0}")]
    Decode(String),
    #[error("encode: {0}")]
    Encode(String),
}

const TAG: usize = 32;
/// Largest probe datagram accepted.
pub const MAX_PACKET: usize = 1024;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &MeshKey) -> HmacSha256 {
    // HMAC takes keys of any length; 32 bytes cannot fail.
    match <HmacSha256 as Mac>::new_from_slice(&key.0) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    }
}

/// The packet, then its HMAC-SHA256 under `key`.
pub fn seal(key: &MeshKey, packet: &MeshPacket) -> Result<Vec<u8>, MeshPacketError> {
    let mut body =
        rmp_serde::to_vec_named(packet).map_err(|e| MeshPacketError::Encode(e.to_string()))?;
    let mut m = mac(key);
    m.update(&body);
    body.extend_from_slice(&m.finalize().into_bytes());
    Ok(body)
}

/// Checks the signature (in constant time), then decodes.
pub fn open(key: &MeshKey, bytes: &[u8]) -> Result<MeshPacket, MeshPacketError> {
    if bytes.len() <= TAG || bytes.len() > MAX_PACKET {
        return Err(MeshPacketError::Short);
    }
    let (body, tag) = bytes.split_at(bytes.len() - TAG);
    let mut m = mac(key);
    m.update(body);
    m.verify_slice(tag)
        .map_err(|_| MeshPacketError::BadSignature)?;
    rmp_serde::from_slice(body).map_err(|e| MeshPacketError::Decode(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ping() -> MeshPacket {
        MeshPacket::Ping {
            from: AgentId::new("db-west").unwrap(),
            to: AgentId::new("db-east").unwrap(),
            nonce: 7,
        }
    }

    #[test]
    fn a_sealed_packet_opens_with_its_key_only() {
        let key = MeshKey::random();
        let bytes = seal(&key, &ping()).unwrap();
        assert_eq!(open(&key, &bytes).unwrap(), ping());
        assert_eq!(
            open(&MeshKey::random(), &bytes),
            Err(MeshPacketError::BadSignature)
        );
    }

    #[test]
    fn tampered_short_and_huge_packets_are_refused() {
        let key = MeshKey::random();
        let mut bytes = seal(&key, &ping()).unwrap();
        bytes[3] ^= 1;
        assert_eq!(open(&key, &bytes), Err(MeshPacketError::BadSignature));
        assert_eq!(open(&key, &[0u8; 10]), Err(MeshPacketError::Short));
        assert_eq!(open(&key, &[0u8; 4096]), Err(MeshPacketError::Short));
    }

    #[test]
    fn the_key_is_never_printed_and_round_trips_as_hex() {
        let key = MeshKey([7; 32]);
        assert!(!format!("{key:?}").contains("07"));
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{}\"", "07".repeat(32)));
        assert_eq!(serde_json::from_str::<MeshKey>(&json).unwrap(), key);
        assert!(serde_json::from_str::<MeshKey>("\"0707\"").is_err());
    }

    #[test]
    fn the_generation_follows_the_view() {
        let key = MeshKey([1; 32]);
        let peer = MeshPeer {
            agent_id: AgentId::new("a").unwrap(),
            region: RegionId::new("r").unwrap(),
            mesh_addr: "127.0.0.1:1".parse().unwrap(),
            postgres_addr: None,
        };
        let g1 = MeshView::generation_of(5000, &key, std::slice::from_ref(&peer));
        let g2 = MeshView::generation_of(5000, &key, &[]);
        let g3 = MeshView::generation_of(4000, &key, std::slice::from_ref(&peer));
        assert_ne!(g1, g2);
        assert_ne!(g1, g3);
        assert_eq!(g1, MeshView::generation_of(5000, &key, &[peer]));
    }
}
