//! Messages exchanged between agents and the coordinator.
//!
//! Each direction has one enum wrapped in a version enum; the frame header carries the
//! version number, and the codec maps it to the matching variant. Fields are encoded by
//! name (rmp-serde `to_vec_named`), so adding an optional field is not a breaking change.

use serde::{Deserialize, Serialize};

use std::net::SocketAddr;

use crate::ids::{AgentId, CommandId, Epoch, Lsn, RegionId};
use crate::mesh::{MeshReport, MeshView};

/// Everything an agent sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    V1(AgentMessageV1),
}

/// Version 1 of the agent → coordinator messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentMessageV1 {
    /// First frame on the control stream of every connection.
    Hello(Hello),
    /// Liveness and state report, sent every heartbeat interval as a QUIC datagram.
    Heartbeat(Heartbeat),
    /// Intermediate report on a running command.
    Progress(Progress),
    /// Final answer to a command; exactly one per command.
    Result(CommandResult),
    /// The agent refuses or cannot parse something the coordinator sent.
    Error(ErrorMessage),
}

/// Everything the coordinator sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorMessage {
    V1(CoordinatorMessageV1),
}

/// Version 1 of the coordinator → agent messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorMessageV1 {
    /// Answer to `Hello`: the agent is registered under the identity of its certificate.
    Welcome(Welcome),
    /// Work for the agent, on its own bidirectional stream.
    Command(Command),
    /// Answer to a heartbeat, as a QUIC datagram: renews the sender's lease.
    HeartbeatAck(HeartbeatAck),
    /// The coordinator refuses the connection or a message; the connection closes after it.
    Error(ErrorMessage),
}

/// What an agent announces it can do, in its `Hello` (`capabilities`).
pub mod capability {
    /// A PostgreSQL next to it is watched (`[postgres]`).
    pub const POSTGRES: &str = "postgres";
    /// It backs up and restores the database (`[database]`).
    pub const DATABASE: &str = "database";
    /// It backs up and restores the documents (`[documents]`).
    pub const DOCUMENTS: &str = "documents";
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The id the agent believes it has. The coordinator compares it with the certificate
    /// and refuses the connection when they differ.
    pub agent_id: AgentId,
    pub region: RegionId,
    /// Software version of the agent (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Features this agent supports, such as `postgres`, `documents`, `wal-archive`.
    pub capabilities: Vec<String>,
    /// Where the agent answers its peers' probes.
    #[serde(default)]
    pub mesh_addr: Option<SocketAddr>,
    /// Where clients reach the agent's PostgreSQL (what the DNS name points at, and what
    /// the coordinator's health check connects to).
    #[serde(default)]
    pub postgres_addr: Option<SocketAddr>,
    /// Where the agent's PostgreSQL answers on the mesh network (what peers probe).
    #[serde(default)]
    pub postgres_mesh_addr: Option<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub agent_id: AgentId,
    pub region: RegionId,
    pub coordinator_version: String,
    /// How often the coordinator expects a heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// The current fencing epoch.
    pub epoch: Epoch,
    /// The agent's peers, the probe key and the lease.
    #[serde(default)]
    pub mesh: Option<MeshView>,
}

/// The coordinator's answer to one heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The heartbeat answered.
    pub seq: u64,
    pub epoch: Epoch,
    /// Present when the heartbeat reported an older mesh generation.
    pub mesh: Option<MeshView>,
}

pub use crate::role::PgRole;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PgStatus {
    pub role: PgRole,
    /// Current timeline (`pg_control_checkpoint()`).
    pub timeline: Option<u32>,
    /// On a primary the current write LSN, on a standby the last replayed LSN.
    pub lsn: Option<Lsn>,
    /// On a standby, the last LSN received from the primary.
    pub receive_lsn: Option<Lsn>,
    /// On a standby, seconds since the last replayed transaction's commit time, or 0 when
    /// everything received has been replayed.
    pub lag_seconds: Option<f64>,
    /// PostgreSQL server version number (`server_version_num`).
    pub server_version: Option<u32>,
    /// Why the probe failed, when `role` is `Unreachable`.
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Rises by one with every heartbeat of a connection.
    pub seq: u64,
    /// Agent wall clock at send time, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    pub postgres: Option<PgStatus>,
    /// Free bytes on the filesystem holding the agent's data directory.
    pub disk_free_bytes: Option<u64>,
    /// Ids of the newest backups this agent has taken (at most a handful).
    pub last_backup_ids: Vec<String>,
    /// What the agent knows of its peers.
    #[serde(default)]
    pub mesh: Option<MeshReport>,
    /// Space on the filesystems of the agent's local repositories (its `[database]`
    /// repository, its document locations on local paths).
    #[serde(default)]
    pub storage: Vec<StorageUsage>,
}

/// One local repository's filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageUsage {
    /// `database`, or the document location's name.
    pub name: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// What the coordinator asks an agent to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandKind {
    /// Round trip check; the result carries the agent's clock.
    Ping,
    /// Report the PostgreSQL status now instead of waiting for the next heartbeat.
    ProbePostgres,
    /// Snapshot the documents directory into every configured location. The outcome
    /// is a `DocumentBackupOutcome`.
    DocumentsBackup {
        backup_id: String,
        tags: std::collections::BTreeMap<String, String>,
    },
    /// Verify a document backup in every location; outcome: `DocumentVerification`.
    DocumentsVerify { backup_id: String },
    /// Restore a document backup (all of it, or `paths`) into `target`, or into the
    /// agent's default restore directory; outcome: `DocumentRestoreOutcome`.
    DocumentsRestore {
        backup_id: String,
        paths: Vec<String>,
        target: Option<String>,
    },
    /// Compare the documents on disk (all, or `document`) with backup `backup_id`, by
    /// size and modification time, and by content too with `checksums`; detail:
    /// `DocumentsReport`.
    DocumentsCheck {
        backup_id: String,
        document: Option<String>,
        checksums: bool,
    },
    /// Take a PostgreSQL base backup (`backup_type`: `full` or `incr`) of the agent's
    /// `[database]`; outcome: `DatabaseBackupOutcome`.
    DatabaseBackup {
        backup_id: String,
        backup_type: String,
        tags: std::collections::BTreeMap<String, String>,
    },
    /// Can `target_time` (RFC 3339) be recovered from the repository; outcome: `PitrInfo`.
    PitrInfo { target_time: String },
    /// Restore into the named environment, recover to `target_time`, start PostgreSQL
    /// and wait until it accepts writes; outcome: `PitrOutcome`.
    PointInTimeRecovery {
        recovery_id: String,
        target_time: String,
        backup_id: Option<String>,
        environment: String,
    },
    /// Verify a database backup: its chunks re-hashed, its packs and WAL read back, and a
    /// restorability test (restored into a throw-away directory, recovered, started,
    /// smoke-checked, removed). Outcome: `DatabaseVerificationReport`.
    VerifyDatabaseBackup {
        verification_id: String,
        backup_id: String,
    },
    /// A DR test (the runbook's "Automated DR Testing"): `backup_id` restored into a
    /// throw-away directory with its own port and Unix socket, recovered, smoke-tested and
    /// checked for consistency, then removed — five steps, each timed. Detail:
    /// `DrTestReport`.
    DrTest { test_id: String, backup_id: String },
    /// Apply the retention policies to every repository the agent backs up into (its
    /// `[database]` repository, its document locations), as of `now` (default: the
    /// agent's clock); `dry_run` changes nothing. Outcome: `RetentionOutcome`.
    EnforceRetention {
        dry_run: bool,
        now: Option<chrono::DateTime<chrono::Utc>>,
        policies: crate::retention::RetentionPolicies,
    },
    /// Promote the local standby and wait until it accepts writes; a server that already
    /// does reports so. Outcome: `PromoteOutcome`.
    Promote,
    /// Fence the local PostgreSQL: stop it and leave `standby.signal`, so no restart
    /// brings it back writable.
    Fence,
    /// Stop taking writes for a switchover: `standby.signal`, then a clean (`-m fast`)
    /// shutdown, which sends the connected standbys every WAL record up to its shutdown
    /// checkpoint. Outcome: `DemoteOutcome` (that checkpoint's LSN).
    Demote,
    /// Switch the local primary to a new WAL segment and wait (at most the agent's
    /// `archive_timeout`) until the finished one is in the database repository.
    /// Outcome: `ArchivingOutcome`.
    ConfirmArchiving,
    /// Wait until the local standby has replayed WAL past `lsn` (`X/Y`), for at most
    /// `timeout_ms`. Outcome: `CatchUpOutcome`.
    CatchUp { lsn: String, timeout_ms: u64 },
    /// Make the fenced local server a standby of the primary at `primary_host:primary_port`:
    /// archive its leftover `.ready` WAL, `pg_rewind`, `standby.signal` and
    /// `primary_conninfo`, start, wait for streaming. Outcome: `RejoinOutcome`.
    Rejoin {
        primary_host: String,
        primary_port: u16,
    },
    /// Point the local standby at a new primary (`primary_conninfo`, reloaded) and wait
    /// until it streams from it. Sent to the remaining standbys after a failover.
    Repoint {
        primary_host: String,
        primary_port: u16,
    },
    /// Copy every snapshot and WAL segment each secondary location lacks (the other
    /// `[[documents.locations]]`, the `[[database.replicas]]`) and verify it there.
    /// Outcome: `copies::CopiesOutcome`.
    #[serde(rename = "replicate")]
    Copy,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: CommandId,
    /// The fencing epoch the command was issued under.
    pub epoch: Epoch,
    pub kind: CommandKind,
    /// The failover a fence, promote or repoint acts for. An agent admits a command of
    /// the epoch it has seen only from that epoch's failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub command_id: CommandId,
    /// 0.0 ..= 100.0
    pub percent: f32,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub command_id: CommandId,
    pub ok: bool,
    /// Human-readable outcome.
    pub message: String,
    /// What the command produced, when it succeeded.
    #[serde(default)]
    pub outcome: Option<crate::outcome::CommandOutcome>,
}

impl CommandResult {
    /// The outcome as the type the caller asked for (taken out, not copied: reports can
    /// be large); `Err` says what came instead.
    pub fn outcome_as<T>(self) -> Result<T, crate::outcome::WrongOutcome>
    where
        T: TryFrom<crate::outcome::CommandOutcome, Error = crate::outcome::WrongOutcome>,
    {
        match self.outcome {
            Some(o) => T::try_from(o),
            None => Err(crate::outcome::WrongOutcome {
                want: std::any::type_name::<T>(),
                got: "no".into(),
            }),
        }
    }
}

/// Stable error codes carried by `ErrorMessage`.
pub mod error_code {
    pub const IDENTITY_MISMATCH: &str = "identity_mismatch";
    pub const BAD_FRAME: &str = "bad_frame";
    pub const UNEXPECTED_MESSAGE: &str = "unexpected_message";
    pub const STALE_EPOCH: &str = "stale_epoch";
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    /// The coordinator does not lead; the message names the leader when it knows it.
    pub const NOT_LEADER: &str = "not_leader";
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    pub code: String,
    pub message: String,
}

impl ErrorMessage {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// QUIC application close codes.
pub mod close_code {
    pub const NORMAL: u32 = 0;
    pub const REFUSED: u32 = 1;
    pub const PROTOCOL: u32 = 2;
    pub const SHUTDOWN: u32 = 3;
    /// This coordinator does not lead. The reason is `leader=<host:port>` (the
    /// leader's QUIC address) when it knows the leader, else empty: the agent connects
    /// there, or to its next coordinator, at once.
    pub const NOT_LEADER: u32 = 4;
}
