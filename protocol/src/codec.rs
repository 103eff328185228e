//! Length-prefixed rmp-serde frames.
//!
//! A frame is `[len: u32 BE][version: u16 BE][payload: MessagePack map]`, where `len`
//! counts the version and the payload. The decoder never trusts `len` before checking it
//! against [`MAX_FRAME_SIZE`], never panics, and reports each failure with its own error:
//! truncated, oversized, unknown version, malformed payload.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::message::{AgentMessage, AgentMessageV1, CoordinatorMessage, CoordinatorMessageV1};
use crate::PROTOCOL_VERSION;

/// Largest frame accepted or produced, header excluded (1 MiB).
pub const MAX_FRAME_SIZE: usize = 1 << 20;

const LEN_BYTES: usize = 4;
const VERSION_BYTES: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("serialize message: {0}")]
    Serialize(#[from] rmp_serde::encode::Error),
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    Oversized { size: usize, max: usize },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame truncated: {have} of {need} bytes")]
    Truncated { have: usize, need: usize },
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    Oversized { size: usize, max: usize },
    #[error("frame length {0} is too short to hold a version")]
    TooShort(usize),
    #[error("unknown protocol version {found} (this build speaks {supported})")]
    UnknownVersion { found: u16, supported: u16 },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
}

/// A message type that travels in frames. The version enum wraps the per-version enum.
pub trait Frame: Sized {
    fn version(&self) -> u16;
    fn encode_payload(&self) -> Result<Vec<u8>, rmp_serde::encode::Error>;
    fn decode_payload(version: u16, payload: &[u8]) -> Result<Self, DecodeError>;
}

fn to_named<T: Serialize>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

fn from_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    let mut de = rmp_serde::Deserializer::new(payload);
    let value = T::deserialize(&mut de).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let rest = de.into_inner().len();
    if rest != 0 {
        return Err(DecodeError::Malformed(format!(
            "{rest} bytes left after the message"
        )));
    }
    Ok(value)
}

fn check_version(version: u16) -> Result<(), DecodeError> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(DecodeError::UnknownVersion {
            found: version,
            supported: PROTOCOL_VERSION,
        })
    }
}

impl Frame for AgentMessage {
    fn version(&self) -> u16 {
        match self {
            AgentMessage::V1(_) => 1,
        }
    }
    fn encode_payload(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        match self {
            AgentMessage::V1(m) => to_named(m),
        }
    }
    fn decode_payload(version: u16, payload: &[u8]) -> Result<Self, DecodeError> {
        check_version(version)?;
        Ok(AgentMessage::V1(from_payload::<AgentMessageV1>(payload)?))
    }
}

impl Frame for CoordinatorMessage {
    fn version(&self) -> u16 {
        match self {
            CoordinatorMessage::V1(_) => 1,
        }
    }
    fn encode_payload(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        match self {
            CoordinatorMessage::V1(m) => to_named(m),
        }
    }
    fn decode_payload(version: u16, payload: &[u8]) -> Result<Self, DecodeError> {
        check_version(version)?;
        Ok(CoordinatorMessage::V1(
            from_payload::<CoordinatorMessageV1>(payload)?,
        ))
    }
}

/// Encodes one message as a complete frame.
pub fn encode<M: Frame>(msg: &M) -> Result<Vec<u8>, EncodeError> {
    let payload = msg.encode_payload()?;
    let len = payload.len() + VERSION_BYTES;
    if len > MAX_FRAME_SIZE {
        return Err(EncodeError::Oversized {
            size: len,
            max: MAX_FRAME_SIZE,
        });
    }
    let mut out = Vec::with_capacity(LEN_BYTES + len);
    // `len` <= MAX_FRAME_SIZE, so it fits in a u32.
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&msg.version().to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads the header of the frame at the start of `buf`: the number of bytes the whole frame
/// occupies, or `None` when fewer than four bytes are there yet.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(header) = buf.get(..LEN_BYTES) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; LEN_BYTES];
    len_bytes.copy_from_slice(header);
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > MAX_FRAME_SIZE {
        return Err(DecodeError::Oversized {
            size: len,
            max: MAX_FRAME_SIZE,
        });
    }
    if len < VERSION_BYTES {
        return Err(DecodeError::TooShort(len));
    }
    Ok(Some(LEN_BYTES + len))
}

fn decode_body<M: Frame>(frame: &[u8]) -> Result<M, DecodeError> {
    let version = u16::from_be_bytes([frame[LEN_BYTES], frame[LEN_BYTES + 1]]);
    M::decode_payload(version, &frame[LEN_BYTES + VERSION_BYTES..])
}

/// Decodes a buffer that must hold exactly one frame (a QUIC datagram, a test vector).
pub fn decode_exact<M: Frame>(buf: &[u8]) -> Result<M, DecodeError> {
    let total = frame_len(buf)?.ok_or(DecodeError::Truncated {
        have: buf.len(),
        need: LEN_BYTES,
    })?;
    if buf.len() < total {
        return Err(DecodeError::Truncated {
            have: buf.len(),
            need: total,
        });
    }
    if buf.len() > total {
        return Err(DecodeError::TrailingBytes(buf.len() - total));
    }
    decode_body(buf)
}

/// Incremental decoder for a byte stream: push what arrived, take out whole frames.
///
/// It holds at most one frame plus what arrived with it, so memory is bounded by
/// [`MAX_FRAME_SIZE`] plus the read size.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next complete frame, `Ok(None)` when more bytes are needed. A frame
    /// header announcing more than the maximum fails at once, before its body arrives.
    pub fn next_frame<M: Frame>(&mut self) -> Result<Option<M>, DecodeError> {
        let Some(total) = frame_len(&self.buf)? else {
            return Ok(None);
        };
        if self.buf.len() < total {
            return Ok(None);
        }
        let msg = decode_body(&self.buf[..total]);
        self.buf.drain(..total);
        msg.map(Some)
    }

    /// Call at end of stream: leftover bytes mean the peer stopped mid-frame.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = match frame_len(&self.buf)? {
            Some(total) => total,
            None => LEN_BYTES,
        };
        Err(DecodeError::Truncated {
            have: self.buf.len(),
            need,
        })
    }

    /// Bytes buffered and not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ids::{AgentId, CommandId, Epoch, Lsn, RegionId};
    use crate::message::*;

    fn hello() -> AgentMessage {
        AgentMessage::V1(AgentMessageV1::Hello(Hello {
            agent_id: AgentId::new("pg-1").expect("id"),
            region: RegionId::new("us-west-2").expect("region"),
            version: "0.1.0".into(),
            capabilities: vec!["postgres".into()],
            mesh_addr: None,
            postgres_addr: None,
            postgres_mesh_addr: None,
        }))
    }

    #[test]
    fn a_frame_round_trips() {
        let msg = hello();
        let bytes = encode(&msg).expect("encode");
        assert_eq!(decode_exact::<AgentMessage>(&bytes), Ok(msg));
    }

    #[test]
    fn truncated_frames_are_reported() {
        let bytes = encode(&hello()).expect("encode");
        for cut in 0..bytes.len() {
            let err = decode_exact::<AgentMessage>(&bytes[..cut]).expect_err("truncated");
            assert!(matches!(err, DecodeError::Truncated { .. }), "{cut}: {err}");
            let mut dec = FrameDecoder::new();
            dec.push(&bytes[..cut]);
            assert_eq!(dec.next_frame::<AgentMessage>(), Ok(None));
            if cut > 0 {
                assert!(matches!(dec.finish(), Err(DecodeError::Truncated { .. })));
            }
        }
    }

    #[test]
    fn oversized_frames_fail_before_the_body_arrives() {
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_be_bytes());
        assert_eq!(
            dec.next_frame::<AgentMessage>(),
            Err(DecodeError::Oversized {
                size: u32::MAX as usize,
                max: MAX_FRAME_SIZE
            })
        );
        let huge = AgentMessage::V1(AgentMessageV1::Error(ErrorMessage::new(
            "x",
            "y".repeat(MAX_FRAME_SIZE),
        )));
        assert!(matches!(encode(&huge), Err(EncodeError::Oversized { .. })));
    }

    #[test]
    fn unknown_versions_are_named() {
        let mut bytes = encode(&hello()).expect("encode");
        bytes[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            decode_exact::<AgentMessage>(&bytes),
            Err(DecodeError::UnknownVersion {
                found: 7,
                supported: 1
            })
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut bytes = vec![0, 0, 0, 10, 0, 1];
        bytes.extend_from_slice(&[0xc1, 0xff, 0x00, 0x13, 0x37, 0x42, 0x99, 0xde]);
        assert!(matches!(
            decode_exact::<AgentMessage>(&bytes),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            decode_exact::<AgentMessage>(&[0, 0, 0, 1, 0]),
            Err(DecodeError::TooShort(1))
        );
    }

    #[test]
    fn trailing_bytes_in_a_datagram_are_refused() {
        let mut bytes = encode(&hello()).expect("encode");
        bytes.push(0);
        assert_eq!(
            decode_exact::<AgentMessage>(&bytes),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn a_stream_of_frames_decodes_byte_by_byte() {
        let msgs = vec![
            hello(),
            AgentMessage::V1(AgentMessageV1::Heartbeat(Heartbeat {
                seq: 3,
                sent_at_ms: 9,
                postgres: None,
                disk_free_bytes: Some(1),
                last_backup_ids: vec![],
                mesh: None,
                storage: Vec::new(),
            })),
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend(encode(m).expect("encode"));
        }
        let mut dec = FrameDecoder::new();
        let mut out = Vec::new();
        for b in wire {
            dec.push(&[b]);
            while let Some(m) = dec.next_frame::<AgentMessage>().expect("decode") {
                out.push(m);
            }
        }
        assert_eq!(out, msgs);
        assert_eq!(dec.finish(), Ok(()));
    }

    fn arb_pg() -> impl Strategy<Value = Option<PgStatus>> {
        proptest::option::of(
            (
                prop_oneof![
                    Just(PgRole::Primary),
                    Just(PgRole::Standby),
                    Just(PgRole::Unreachable)
                ],
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u64>()),
                proptest::option::of(0.0f64..1e9),
                proptest::option::of(".{0,40}"),
            )
                .prop_map(|(role, timeline, lsn, lag, error)| PgStatus {
                    role,
                    timeline,
                    lsn: lsn.map(Lsn),
                    receive_lsn: lsn.map(|l| Lsn(l / 2)),
                    lag_seconds: lag,
                    server_version: Some(150_000),
                    error,
                }),
        )
    }

    fn arb_agent_message() -> impl Strategy<Value = AgentMessage> {
        let heartbeat = (
            any::<u64>(),
            any::<u64>(),
            arb_pg(),
            proptest::option::of(any::<u64>()),
            proptest::collection::vec("[a-z0-9_]{1,30}", 0..4),
        )
            .prop_map(|(seq, sent_at_ms, postgres, disk, ids)| {
                AgentMessageV1::Heartbeat(Heartbeat {
                    seq,
                    sent_at_ms,
                    postgres,
                    disk_free_bytes: disk,
                    last_backup_ids: ids,
                    mesh: None,
                    storage: Vec::new(),
                })
            });
        let hello = ("[a-z0-9-]{1,20}", "[a-z0-9-]{1,20}", ".{0,10}").prop_map(|(a, r, v)| {
            AgentMessageV1::Hello(Hello {
                agent_id: AgentId::new(a).expect("strategy makes valid ids"),
                region: RegionId::new(r).expect("strategy makes valid ids"),
                version: v,
                capabilities: vec!["postgres".into()],
                mesh_addr: None,
                postgres_addr: None,
                postgres_mesh_addr: None,
            })
        });
        let progress = (any::<u128>(), 0.0f32..100.0, ".{0,50}").prop_map(|(id, p, m)| {
            AgentMessageV1::Progress(Progress {
                command_id: CommandId(uuid::Uuid::from_u128(id)),
                percent: p,
                message: m,
            })
        });
        let result = (
            any::<u128>(),
            any::<bool>(),
            ".{0,50}",
            proptest::option::of(any::<u32>()),
        )
            .prop_map(|(id, ok, m, t)| {
                AgentMessageV1::Result(CommandResult {
                    command_id: CommandId(uuid::Uuid::from_u128(id)),
                    ok,
                    message: m,
                    outcome: t.map(|timeline| crate::outcome::CommandOutcome::Repoint { timeline }),
                })
            });
        let error = ("[a-z_]{1,20}", ".{0,80}").prop_map(|(c, m)| {
            AgentMessageV1::Error(ErrorMessage {
                code: c,
                message: m,
            })
        });
        prop_oneof![heartbeat, hello, progress, result, error].prop_map(AgentMessage::V1)
    }

    fn arb_coordinator_message() -> impl Strategy<Value = CoordinatorMessage> {
        let command = (any::<u128>(), any::<u64>(), any::<bool>()).prop_map(|(id, e, ping)| {
            CoordinatorMessageV1::Command(Command {
                id: CommandId(uuid::Uuid::from_u128(id)),
                epoch: Epoch(e),
                failover: ping.then(|| format!("fo_{id}")),
                kind: if ping {
                    CommandKind::Ping
                } else {
                    CommandKind::ProbePostgres
                },
            })
        });
        let welcome = ("[a-z0-9-]{1,20}", any::<u64>(), any::<u64>()).prop_map(|(a, hb, e)| {
            CoordinatorMessageV1::Welcome(Welcome {
                agent_id: AgentId::new(a.clone()).expect("valid"),
                region: RegionId::new(a).expect("valid"),
                coordinator_version: "0.1.0".into(),
                heartbeat_interval_ms: hb,
                epoch: Epoch(e),
                mesh: None,
            })
        });
        let ack = (any::<u64>(), any::<u64>()).prop_map(|(seq, e)| {
            CoordinatorMessageV1::HeartbeatAck(crate::HeartbeatAck {
                seq,
                epoch: Epoch(e),
                mesh: None,
            })
        });
        prop_oneof![command, welcome, ack].prop_map(CoordinatorMessage::V1)
    }

    proptest! {
        #[test]
        fn agent_messages_round_trip(msg in arb_agent_message()) {
            let bytes = encode(&msg).expect("encode");
            prop_assert_eq!(decode_exact::<AgentMessage>(&bytes).expect("decode"), msg);
        }

        #[test]
        fn coordinator_messages_round_trip(msg in arb_coordinator_message()) {
            let bytes = encode(&msg).expect("encode");
            prop_assert_eq!(decode_exact::<CoordinatorMessage>(&bytes).expect("decode"), msg);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_exact::<AgentMessage>(&bytes);
            let _ = decode_exact::<CoordinatorMessage>(&bytes);
            let mut dec = FrameDecoder::new();
            dec.push(&bytes);
            while let Ok(Some(_)) = dec.next_frame::<CoordinatorMessage>() {}
        }
    }
}
