//! The drmesh wire protocol and everything both ends of it share.
//!
//! This crate holds types, codecs and TLS/PKI helpers only: no async runtime, no sockets.
//! Agents and the coordinator wrap it in their own transport code.

pub mod api;
pub mod codec;
pub mod config;
pub mod copies;
pub mod files;
pub mod ids;
pub mod instant;
pub mod lease;
pub mod mesh;
pub mod message;
pub mod outcome;
pub mod pki;
pub mod redact;
pub mod retention;
pub mod role;
pub mod tls;

pub use codec::{DecodeError, EncodeError, FrameDecoder, MAX_FRAME_SIZE};
pub use ids::{AgentId, CommandId, Epoch, Lsn, RegionId};
pub use message::*;

/// ALPN protocol id negotiated on every agent ↔ coordinator QUIC connection.
pub const ALPN: &[u8] = b"drmesh/1";

/// Version of the wire protocol written in every frame header.
pub const PROTOCOL_VERSION: u16 = 1;

/// Software version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
