//! REST bodies shared by the coordinator (which serves them) and the CLI (which reads them).
//! Field names are camelCase as in the runbook.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, Epoch, RegionId};
use crate::role::PgRole;

/// Liveness of an agent as the coordinator derives it from heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AgentState {
    /// Heartbeats arrive on time.
    Up,
    /// Heartbeats are late (missed `suspect_after` intervals).
    Suspect,
    /// Heartbeats stopped (missed `down_after` intervals) or the agent disconnected.
    Down,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Up => "UP",
            AgentState::Suspect => "SUSPECT",
            AgentState::Down => "DOWN",
        }
    }
}

impl std::fmt::Display for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Overall health, used for the system, a region and the dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    Healthy,
    Degraded,
    Critical,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub agent_id: AgentId,
    pub region: RegionId,
    pub state: AgentState,
    /// Role of the PostgreSQL next to the agent; absent when none is configured.
    pub role: Option<PgRole>,
    pub version: String,
    pub connected: bool,
    /// Milliseconds since the last heartbeat arrived; absent before the first one.
    pub last_heartbeat_age_ms: Option<u64>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub timeline: Option<u32>,
    /// PostgreSQL LSN as `X/Y`.
    pub lsn: Option<String>,
    /// Bytes of WAL this standby is behind the primary.
    pub replication_lag_bytes: Option<u64>,
    pub replication_lag_seconds: Option<f64>,
    pub disk_free_bytes: Option<u64>,
    pub last_backup_ids: Vec<String>,
    pub postgres_error: Option<String>,
    /// The agent reported its PostgreSQL fenced (stopped, `standby.signal` left).
    #[serde(default)]
    pub fenced: bool,
    /// Where clients reach the agent's PostgreSQL, as the agent advertised it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_address: Option<std::net::SocketAddr>,
    /// How many peers the agent's mesh view has, as it last reported: a primary's lease
    /// is counted against this mesh (none: it holds no lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_peers: Option<u32>,
    /// The agent reported it can fence its PostgreSQL by itself when its lease runs out
    /// (it has a `[database]` section). Without it, a failover never counts the server
    /// as self-fenced and waits for an operator's confirmation.
    #[serde(default)]
    pub can_fence: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionStatus {
    pub name: RegionId,
    pub status: Health,
    /// `primary` when the region holds the writable database, `standby` when it holds a
    /// replica, absent when it runs no database agent.
    pub role: Option<PgRole>,
    pub agents: Vec<AgentStatus>,
}

/// `GET /v1/backup-recovery/disaster-recovery/status`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrStatus {
    pub status: Health,
    pub primary_region: Option<RegionId>,
    pub epoch: Epoch,
    pub regions: Vec<RegionStatus>,
    pub generated_at: DateTime<Utc>,
    /// The newest point-in-time recovery, running or finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_time_recovery: Option<PitrRun>,
    /// The newest failover, running or finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverRun>,
    /// The newest DR test, running or finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dr_test: Option<DrTest>,
    /// The newest health check of each DR plan's primary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<PlanHealth>,
    /// The coordinators: which one answered, which one leads, and the term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinators: Option<CoordinatorsStatus>,
}

/// Where the coordinator that answered stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Standing {
    /// The only coordinator (a redb store): it leads.
    Sole,
    Leader,
    Follower,
    /// It cannot reach etcd (no quorum): it decides nothing.
    Cut,
}

/// The coordinators as the one that answered sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorsStatus {
    /// The coordinator that answered.
    pub answered_by: Option<String>,
    pub standing: Standing,
    /// The leader's name, when known.
    pub leader: Option<String>,
    /// The leader's term (the etcd revision of its election), when known.
    pub term: Option<i64>,
    /// Every coordinator holding a lease, by name.
    pub members: Vec<CoordinatorMember>,
    /// Why this coordinator decides nothing, when it is cut off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorMember {
    pub name: String,
    /// Its REST API's URL.
    pub api: String,
    /// Its QUIC address.
    pub quic: String,
    pub leader: bool,
}

/// The verdict of a health check on a plan's primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PrimaryHealth {
    /// Its agent heartbeats and reports a primary.
    Up,
    /// Something failed, but not everything the DOWN rule needs.
    Suspect,
    /// Heartbeats missing for longer than the lease (or the agent reports its server
    /// unreachable), the coordinator cannot reach the database, and neither can a
    /// majority of the other agents.
    Down,
    /// No primary is known for the plan.
    Unknown,
}

/// One plan's primary, as the newest health check saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanHealth {
    pub plan_id: String,
    pub primary_region: Option<RegionId>,
    pub primary_agent: Option<AgentId>,
    pub verdict: PrimaryHealth,
    /// What each check found.
    pub checks: Vec<String>,
    pub checked_at: DateTime<Utc>,
    /// Whether a DOWN verdict would start a failover now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic_failover: Option<AutomaticFailover>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "LOW" => Ok(Severity::Low),
            "MEDIUM" => Ok(Severity::Medium),
            "HIGH" => Ok(Severity::High),
            "CRITICAL" => Ok(Severity::Critical),
            _ => Err(format!(
                "unknown severity {s:?} (expected CRITICAL, HIGH, MEDIUM or LOW)"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertStatus {
    Open,
    Acknowledged,
    Resolved,
}

impl std::str::FromStr for AlertStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "OPEN" => Ok(AlertStatus::Open),
            "ACKNOWLEDGED" => Ok(AlertStatus::Acknowledged),
            "RESOLVED" => Ok(AlertStatus::Resolved),
            _ => Err(format!(
                "unknown alert status {s:?} (expected OPEN, ACKNOWLEDGED or RESOLVED)"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `alert_<epoch-ms>_<6 chars>`
    pub id: String,
    pub severity: Severity,
    /// Machine-readable kind, e.g. `AGENT_DOWN`, `BACKUP_FAILED`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    /// What the alert is about (an agent id, a backup id).
    pub source: String,
    pub region: Option<RegionId>,
    pub status: AlertStatus,
    pub created_at: DateTime<Utc>,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Who resolved it, or `system` when the condition cleared by itself.
    pub resolved_by: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcknowledgeRequest {
    /// Accepted as the runbook sends it, and not recorded: the alert records the
    /// caller's token name (else its id), which a caller cannot make up.
    #[serde(default)]
    pub acknowledged_by: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolveRequest {
    /// As `acknowledgedBy`: accepted, not recorded.
    pub resolved_by: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertCounts {
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
    pub total: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentCounts {
    pub up: u64,
    pub suspect: u64,
    pub down: u64,
    pub total: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemHealth {
    pub status: Health,
    pub agents: AgentCounts,
    pub regions: u64,
}

/// `GET /v1/backup-recovery/monitoring/dashboard`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dashboard {
    /// Open (not resolved) alerts by severity.
    pub alerts: AlertCounts,
    pub recent_backups: Vec<serde_json::Value>,
    pub system_health: SystemHealth,
    /// Every secondary location's replication state, lag and last error.
    #[serde(default)]
    pub replication: Vec<crate::copies::LocationStatus>,
    pub generated_at: DateTime<Utc>,
}

/// Access levels, each including the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads status, alerts, backups, metrics.
    Viewer,
    /// Also acknowledges alerts, starts backups, verifications, DR tests and failovers.
    Operator,
    /// Also manages tokens and plans.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role {s:?} (expected viewer, operator or admin)"
            )),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// `POST /v1/tokens`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateTokenRequest {
    pub role: Role,
    pub name: Option<String>,
    /// How long the token is good for (`"90d"`, `"12h"`: 1 second to 10 years); none:
    /// until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    pub id: String,
    pub role: Role,
    pub name: Option<String>,
    /// The secret, shown once; only its hash is stored.
    pub token: String,
    /// When it stops being accepted (with a `ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Whether a token is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TokenState {
    Active,
    Expired,
    Revoked,
}

/// One token as `GET /v1/tokens` lists it (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    pub name: Option<String>,
    pub role: Role,
    pub state: TokenState,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The last request it authenticated at the leader, to within a minute.
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The token that revoked it (its name, else its id).
    pub revoked_by: Option<String>,
}

/// `GET /v1/tokens`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// Body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// HTTP status code.
    pub status: u16,
    /// Stable machine-readable code, e.g. `unauthorized`, `not_found`.
    pub error: String,
    pub message: String,
    /// For a refused body: each bad field and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

/// Life of a backup, as the runbook names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BackupStatus {
    InProgress,
    Completed,
    Failed,
    /// Completed and later verified.
    Verified,
    /// Removed from the repository by the retention policies.
    Expired,
}

impl std::str::FromStr for BackupStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "IN_PROGRESS" => Ok(BackupStatus::InProgress),
            "COMPLETED" => Ok(BackupStatus::Completed),
            "FAILED" => Ok(BackupStatus::Failed),
            "VERIFIED" => Ok(BackupStatus::Verified),
            "EXPIRED" => Ok(BackupStatus::Expired),
            _ => Err(format!(
                "unknown backup status {s:?} (expected IN_PROGRESS, COMPLETED, FAILED, \
                 VERIFIED or EXPIRED)"
            )),
        }
    }
}

/// `POST /v1/backup-recovery/documents/backup`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupRequest {
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Database backups: `"logical"` asks for a `pg_dump` instead of a physical backup.
    #[serde(default, rename = "type")]
    pub backup_type: Option<String>,
}

/// The `202 Accepted` answer to a backup request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupAccepted {
    pub backup_id: String,
    pub status: BackupStatus,
    pub timestamp: DateTime<Utc>,
    /// Seconds, from the previous backups' speed (or a default guess).
    pub estimated_duration_seconds: u64,
    /// Human form of the same estimate, e.g. `2m 30s`.
    pub estimated_duration: String,
    pub agent_id: AgentId,
}

/// Where one copy of a backup went, and how that went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocationStatus {
    pub name: String,
    /// The repository URL (with date placeholders filled in).
    pub url: String,
    /// `COMPLETED` or `FAILED`.
    pub status: BackupStatus,
    pub bytes_stored: u64,
    pub error: Option<String>,
}

/// What the agent reports when a document backup ends (the command result's detail).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentBackupOutcome {
    pub backup_id: String,
    pub parent_id: Option<String>,
    pub files: u64,
    pub bytes: u64,
    pub files_read: u64,
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub locations: Vec<LocationStatus>,
    /// The runbook's plain archive, when `keep_latest_archive` is on.
    pub archive: Option<String>,
    pub manifest: Option<String>,
}

/// `GET /v1/backup-recovery/documents/backups/:backupId`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentBackup {
    pub backup_id: String,
    pub status: BackupStatus,
    /// 0..=100
    pub progress: f32,
    pub progress_message: String,
    pub agent_id: AgentId,
    pub region: RegionId,
    pub tags: std::collections::BTreeMap<String, String>,
    pub requested_by: String,
    pub timestamp: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
    pub outcome: Option<DocumentBackupOutcome>,
    pub error: Option<String>,
    pub verification: Option<DocumentVerification>,
    pub last_restore: Option<DocumentRestoreOutcome>,
}

/// What an agent reports for a finished PostgreSQL base backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseBackupOutcome {
    pub backup_id: String,
    /// `full` or `incr`.
    pub backup_type: String,
    /// The backup an incremental one shares unchanged files with.
    pub parent: Option<String>,
    pub files: u64,
    /// Bytes in the data directory's files.
    pub bytes: u64,
    /// Bytes read this time (unchanged files are not read).
    pub bytes_read: u64,
    /// Bytes of new chunks (before compression).
    pub bytes_new: u64,
    /// Bytes written to the repository.
    pub bytes_stored: u64,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub timeline: u32,
    pub start_wal: String,
    pub stop_wal: String,
    /// When the backup became consistent: the earliest instant it can recover to.
    pub stopped_at: DateTime<Utc>,
    pub repository: String,
}

/// A database backup as `GET /database/backups/:id` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseBackup {
    pub backup_id: String,
    /// `full` or `incr`.
    pub backup_type: String,
    pub status: BackupStatus,
    /// 0..=100
    pub progress: f32,
    pub progress_message: String,
    pub agent_id: AgentId,
    pub region: RegionId,
    pub tags: std::collections::BTreeMap<String, String>,
    pub requested_by: String,
    pub timestamp: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
    pub bytes_read: Option<u64>,
    pub bytes_stored: Option<u64>,
    pub start_lsn: Option<String>,
    pub stop_lsn: Option<String>,
    pub timeline: Option<u32>,
    pub outcome: Option<DatabaseBackupOutcome>,
    pub error: Option<String>,
}

/// The runbook's checksum verdict: every chunk of the backup re-hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChecksumVerdict {
    Passed,
    Failed,
}

/// The runbook's file accessibility verdict: every object the backup needs (packs, WAL
/// segments) exists and reads back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Accessibility {
    Accessible,
    Inaccessible,
}

/// The runbook's restorability verdict: restored, recovered, started and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Restorability {
    Restorable,
    NotRestorable,
}

/// One thing a verification found wrong (or noted): which check, the object (a file
/// path with its chunk or pack, a WAL segment, a table, a smoke check) and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationFinding {
    /// `checksum`, `accessibility`, `restorability` or `note`.
    pub check: String,
    pub object: String,
    pub reason: String,
}

/// How long each phase of a database backup verification took, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationTimings {
    /// Checking that every object is there and reading back every WAL segment the
    /// backup needs; when the restore did not complete, also the read-back of every
    /// chunk that names the damage.
    pub checksum_ms: u64,
    /// Restoring the base backup into the throw-away directory, every chunk re-hashed
    /// against its id and every file against its SHA-256 as it is written (a healthy
    /// backup's checksum verdict).
    pub restore_ms: u64,
    /// From starting PostgreSQL until it left recovery.
    pub recovery_ms: u64,
    /// Smoke checks, row counts and amcheck.
    pub checks_ms: u64,
}

/// One smoke check of the restorability test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SmokeCheckResult {
    /// `sql: <query>`, `row counts` or `amcheck`.
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// What the agent reports once it verified a database backup (the command result's
/// detail); the verdicts are `None` only while the verification runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseVerificationReport {
    pub checksum_verification: Option<ChecksumVerdict>,
    pub file_accessibility: Option<Accessibility>,
    pub restorability_test: Option<Restorability>,
    #[serde(default)]
    pub timings: VerificationTimings,
    #[serde(default)]
    pub smoke_checks: Vec<SmokeCheckResult>,
    /// Every damaged or missing object, failed check and note, named.
    #[serde(default)]
    pub details: Vec<VerificationFinding>,
}

impl DatabaseVerificationReport {
    /// All three verdicts are in and pass.
    pub fn passed(&self) -> bool {
        self.checksum_verification == Some(ChecksumVerdict::Passed)
            && self.file_accessibility == Some(Accessibility::Accessible)
            && self.restorability_test == Some(Restorability::Restorable)
    }
}

/// `POST /verification/verify/:backupId`: the 202 answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationAccepted {
    /// `IN_PROGRESS`.
    pub status: BackupStatus,
    pub backup_id: String,
    pub verification_id: String,
    pub agent_id: AgentId,
}

/// One verification of a database backup, as `GET /verification/:backupId` shows the
/// newest. `status` is COMPLETED when all three verdicts pass, FAILED otherwise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseVerification {
    pub verification_id: String,
    pub backup_id: String,
    pub status: BackupStatus,
    /// 0..=100
    pub progress: f32,
    pub progress_message: String,
    pub agent_id: AgentId,
    pub region: RegionId,
    pub requested_by: String,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
    #[serde(flatten)]
    pub report: DatabaseVerificationReport,
    /// Why the verification could not run to the end, when it could not.
    pub error: Option<String>,
}

/// Why `POST /verification/verify-all` left a database backup out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyAllSkip {
    pub backup_id: String,
    pub reason: String,
}

/// Whether a verify-all run still has verifications running or waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerifyAllStatus {
    InProgress,
    Completed,
}

/// `POST /verification/verify-all`: the answer (202 when something was queued, 200 with
/// `COMPLETED` when every backup was skipped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyAllAccepted {
    pub status: VerifyAllStatus,
    pub run_id: String,
    /// Backup ids, in the order they are verified (newest backup first).
    pub queued: Vec<String>,
    pub skipped: Vec<VerifyAllSkip>,
    /// How many verifications of this run run at a time (`verify_concurrency`).
    pub concurrency: usize,
}

/// One backup of a verify-all run: its verification's state and verdicts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyAllItem {
    pub backup_id: String,
    pub verification_id: String,
    /// `IN_PROGRESS` (running or waiting for a slot), `COMPLETED` (all three verdicts
    /// pass) or `FAILED`.
    pub status: BackupStatus,
    /// Waiting for one of the run's `concurrency` slots.
    pub waiting: bool,
    pub checksum_verification: Option<ChecksumVerdict>,
    pub file_accessibility: Option<Accessibility>,
    pub restorability_test: Option<Restorability>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
}

/// A verify-all run's counts. `running` includes those waiting for a slot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyAllTotals {
    pub queued: usize,
    pub passed: usize,
    pub failed: usize,
    pub running: usize,
    pub waiting: usize,
    pub skipped: usize,
}

/// `GET /verification/verify-all[/:runId]`: a run with each backup's verdicts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyAllRun {
    pub run_id: String,
    pub status: VerifyAllStatus,
    pub requested_by: String,
    pub started_at: DateTime<Utc>,
    /// When the last of its verifications ended; `None` while one runs.
    pub completed_at: Option<DateTime<Utc>>,
    pub concurrency: usize,
    pub totals: VerifyAllTotals,
    pub results: Vec<VerifyAllItem>,
    pub skipped: Vec<VerifyAllSkip>,
}

/// Verifications that passed among those that ended within the last `days` days; `rate`
/// is `passed / finished`, `None` when none ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PassRate {
    pub days: u32,
    pub passed: u64,
    pub finished: u64,
    pub rate: Option<f64>,
}

/// Restore time of the restorability tests that restored (restore + recovery until the
/// throw-away server left recovery), in milliseconds; `None` without samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTimeStats {
    pub days: u32,
    pub samples: u64,
    pub mean_ms: Option<u64>,
    pub max_ms: Option<u64>,
}

/// A plan's last DR test with its measured RTO against the plan's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDrTestSummary {
    pub plan_id: String,
    pub test_id: String,
    pub status: DrTestStatus,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The plan's RTO now (the one the test was measured against when the plan is gone).
    pub rto_seconds: u64,
    /// From the start of step 1 to "smoke tests passed"; `None` when it did not get there.
    pub measured_rto_seconds: Option<f64>,
    /// `None` without a measured RTO.
    pub within_rto: Option<bool>,
    /// The five steps with their start, end and duration.
    pub steps: Vec<DrTestStep>,
}

/// The age of the newest VERIFIED database backup (since it completed) against a plan's
/// RPO; `withinRpo` is false when there is no verified backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanRpoStatus {
    pub plan_id: String,
    pub rpo_seconds: u64,
    pub newest_verified_backup_id: Option<String>,
    pub newest_verified_backup_age_seconds: Option<u64>,
    pub within_rpo: bool,
}

/// `GET /verification/lifecycle-stats`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleStats {
    pub generated_at: DateTime<Utc>,
    /// Database backups by status (`IN_PROGRESS`, `COMPLETED`, `FAILED`, `VERIFIED`,
    /// every one present).
    pub backups_by_status: std::collections::BTreeMap<String, u64>,
    /// Document backups by status, the same way.
    pub document_backups_by_status: std::collections::BTreeMap<String, u64>,
    pub verification_pass_rate_7d: PassRate,
    pub verification_pass_rate_30d: PassRate,
    pub restore_time: RestoreTimeStats,
    /// The last DR test of each plan that has one.
    pub last_dr_tests: Vec<PlanDrTestSummary>,
    pub rpo: Vec<PlanRpoStatus>,
}

/// `GET /recovery/point-in-time/:timestamp`: can that instant be recovered, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PitrInfo {
    pub target_timestamp: DateTime<Utc>,
    pub recoverable: bool,
    /// Why not, when it is not.
    pub reason: Option<String>,
    /// The base backup a recovery would start from: the newest that ended before the
    /// target.
    pub backup_id: Option<String>,
    /// When that backup became consistent.
    pub backup_completed_at: Option<DateTime<Utc>>,
    /// The WAL a recovery would replay, first and last segment.
    pub wal_start: Option<String>,
    pub wal_end: Option<String>,
    pub wal_segments: u64,
    /// The oldest base backup's consistent point.
    pub earliest_recoverable_time: Option<DateTime<Utc>>,
    /// When the newest segment of the unbroken WAL chain was archived.
    pub latest_recoverable_time: Option<DateTime<Utc>>,
    pub estimated_duration_seconds: u64,
    pub estimated_duration: String,
}

/// `POST /disaster-recovery/point-in-time-recovery`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PitrRequest {
    pub target_timestamp: String,
    #[serde(default)]
    pub backup_id: Option<String>,
    pub target_environment: String,
}

/// What the agent reports once a point-in-time recovery is over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PitrOutcome {
    pub backup_id: String,
    pub data_directory: String,
    pub port: u16,
    /// The last transaction replayed (`pg_last_xact_replay_timestamp()`), if any.
    pub recovered_to: Option<DateTime<Utc>>,
    pub timeline: Option<u32>,
    pub restore_seconds: f64,
    pub recovery_seconds: f64,
}

/// One point-in-time recovery, as `GET /disaster-recovery/status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PitrRun {
    pub recovery_id: String,
    pub status: BackupStatus,
    pub target_timestamp: DateTime<Utc>,
    pub backup_id: Option<String>,
    pub target_environment: String,
    pub agent_id: AgentId,
    pub progress: f32,
    pub progress_message: String,
    pub requested_by: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
    pub outcome: Option<PitrOutcome>,
    pub error: Option<String>,
}

/// `PASSED` / `FAILED` / `IN_PROGRESS` for one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Passed,
    Failed,
    InProgress,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DamagedFile {
    pub location: String,
    pub path: String,
    pub reason: String,
}

/// The four checks of the runbook, over every location.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentVerification {
    pub backup_id: String,
    pub status: Verdict,
    pub archive_integrity: Verdict,
    pub manifest_validity: Verdict,
    pub file_checksums: Verdict,
    pub data_accessible: Verdict,
    pub locations: Vec<LocationVerification>,
    pub damaged_files: Vec<DamagedFile>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocationVerification {
    pub name: String,
    pub url: String,
    pub status: Verdict,
    pub detail: String,
    pub files_checked: u64,
    pub bytes_checked: u64,
}

/// `POST /v1/backup-recovery/documents/backups/:backupId/restore`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DocumentRestoreRequest {
    /// Files or directories inside the backup; empty or absent means everything.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Directory on the agent's host; default: the agent's restore directory.
    pub target_directory: Option<String>,
    /// Location to restore from (default: the first one that holds the backup).
    pub location: Option<String>,
}

/// A document's state against the newest document backup (`GET /v1/documents`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DocumentState {
    /// Every file the backup holds is there, unchanged, and nothing was added.
    Ok,
    /// Changed since the backup (a file edited or added), nothing lost: the next backup
    /// takes it.
    Modified,
    /// A file the backup holds is missing, unreadable or (checked with checksums) damaged:
    /// restore it from the backup.
    Failed,
    /// Not in the backup yet.
    New,
}

impl DocumentState {
    pub const ALL: [Self; 4] = [Self::Ok, Self::Modified, Self::Failed, Self::New];

    /// As it is written in JSON: `OK`, `MODIFIED`, `FAILED`, `NEW`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Modified => "MODIFIED",
            Self::Failed => "FAILED",
            Self::New => "NEW",
        }
    }

    /// `ok`, `FAILED`, ...: any case.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text))
    }
}

/// A document id as the document routes take it: one directory name under `documents/`
/// (not empty, no `/`, not `.` or `..`).
pub fn valid_document_id(id: &str) -> bool {
    !id.is_empty() && id != "." && id != ".." && !id.contains('/') && !id.contains('\0')
}

/// One document (`documents/<documentId>/` under the documents source) against the
/// newest document backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentStatus {
    pub document_id: String,
    pub status: DocumentState,
    /// Files and bytes of the document in the backup.
    pub files_in_backup: u64,
    pub bytes_in_backup: u64,
    /// Files of the document on disk now.
    pub files_on_disk: u64,
    /// Paths (relative to the source) the backup holds that are gone.
    #[serde(default)]
    pub missing: Vec<String>,
    /// Paths that cannot be read, with the error.
    #[serde(default)]
    pub unreadable: Vec<String>,
    /// Paths whose content no longer matches the backup although their size and
    /// modification time do (found only with checksums): damaged on disk.
    #[serde(default)]
    pub corrupted: Vec<String>,
    /// Paths changed (size or modification time) or added since the backup.
    #[serde(default)]
    pub modified: Vec<String>,
    #[serde(default)]
    pub added: Vec<String>,
    /// For a FAILED document: the restore that brings it back
    /// (`POST /v1/backup-recovery/documents/backups/{backupId}/restore` with this body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<DocumentRestoreRequest>,
}

/// One document against the newest document backup: what `GET /v1/documents/:documentId`
/// answers (the document's fields, and the backup's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentReport {
    #[serde(flatten)]
    pub document: DocumentStatus,
    pub backup_id: String,
    pub backup_finished_at: DateTime<Utc>,
    pub checked_at: DateTime<Utc>,
    pub checksums: bool,
}

/// The documents against the newest document backup: what `GET /v1/documents` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentsReport {
    pub backup_id: String,
    pub backup_finished_at: DateTime<Utc>,
    pub checked_at: DateTime<Utc>,
    /// Whether file contents were compared (`?checksums=true`), not only sizes and times.
    pub checksums: bool,
    /// Documents per state, over all documents (before any filter).
    pub summary: std::collections::BTreeMap<String, u64>,
    pub documents: Vec<DocumentStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentRestoreOutcome {
    pub backup_id: String,
    pub status: BackupStatus,
    pub location: Option<String>,
    pub target_directory: String,
    pub files: u64,
    pub bytes: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// Per-location state in the statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocationStatistics {
    pub name: String,
    pub last_status: BackupStatus,
    pub last_backup_id: String,
    pub last_success_at: Option<DateTime<Utc>>,
    pub bytes_stored: u64,
    /// The location's last replication round (secondary locations only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<crate::copies::LocationStatus>,
}

/// `GET /v1/backup-recovery/documents/statistics`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentStatistics {
    pub total_backups: u64,
    pub completed: u64,
    pub verified: u64,
    pub failed: u64,
    pub in_progress: u64,
    /// Files and bytes in the newest completed backup.
    pub files: u64,
    pub bytes: u64,
    /// Bytes written to the primary location over all backups.
    pub bytes_stored: u64,
    /// Logical bytes over all completed backups divided by bytes stored.
    pub dedup_ratio: f64,
    pub newest_backup: Option<String>,
    pub newest_backup_at: Option<DateTime<Utc>>,
    pub locations: Vec<LocationStatistics>,
}

/// The body of `POST /disaster-recovery/plans` (and `PUT …/plans/:id`), as the runbook
/// writes it. Every field is checked by the coordinator, which answers 400 naming each
/// bad one; unknown fields are refused so a typo is not silently ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanSpec {
    /// Letters, digits, `_` and `-`; made up (`plan_<epoch-ms>_<6 chars>`) when absent.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: String,
    /// Recovery point objective, a duration such as `1h` or `15m`.
    #[serde(default)]
    pub rpo: String,
    /// Recovery time objective, a duration such as `4h`.
    #[serde(default)]
    pub rto: String,
    /// Fallback regions in order of preference.
    #[serde(default)]
    pub failover_regions: Vec<RegionId>,
    /// Milliseconds between health checks.
    #[serde(default)]
    pub health_check_interval: Option<u64>,
    #[serde(default)]
    pub automatic_failover: bool,
    /// After a failover, a fenced old primary whose agent is heard from again (its
    /// region is back) rejoins the new primary as a standby by itself (`pg_rewind`), as
    /// Patroni's `use_pg_rewind` does. Default false.
    #[serde(default)]
    pub auto_rejoin: bool,
    /// Names of the coordinator's configured notification channels.
    #[serde(default)]
    pub notification_channels: Vec<String>,
    /// Milliseconds between automatic DR tests.
    #[serde(default)]
    pub test_interval: Option<u64>,
    /// Retention policies for this plan's database (`{"database": {...}, "documents":
    /// {...}}`, each as `[retention.database]`), replacing the coordinator's.
    #[serde(default)]
    pub retention: Option<crate::retention::PlanRetention>,
}

/// A stored DR plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrPlan {
    pub id: String,
    pub name: String,
    pub rpo: String,
    pub rto: String,
    pub rpo_seconds: u64,
    pub rto_seconds: u64,
    pub failover_regions: Vec<RegionId>,
    pub health_check_interval: u64,
    pub automatic_failover: bool,
    /// See [`PlanSpec::auto_rejoin`].
    #[serde(default)]
    pub auto_rejoin: bool,
    pub notification_channels: Vec<String>,
    pub test_interval: u64,
    /// The plan's own retention policies, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<crate::retention::PlanRetention>,
    /// The region the plan's database runs in since its last failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_region: Option<RegionId>,
    /// The region the plan's database ran in before its first failover: a failover may
    /// go back to it as to a failover region (a failback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_region: Option<RegionId>,
    /// `ACTIVE` (health checks and, if enabled, automatic failover run) or
    /// `MAINTENANCE` (health checks run; automatic failover is paused: see `maintenance`).
    pub status: String,
    /// Since when, by whom and why automatic failover is paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A plan's status while automatic failover is paused.
pub const PLAN_MAINTENANCE: &str = "MAINTENANCE";
/// A plan's status otherwise.
pub const PLAN_ACTIVE: &str = "ACTIVE";

/// A plan's maintenance mode: automatic failover paused (health checks go on, manual
/// failovers are accepted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    pub since: DateTime<Utc>,
    /// The token that paused it.
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST …/plans/:planId/maintenance`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaintenanceRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Whether a plan's primary would be failed over automatically now, and why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "state",
    rename_all = "SCREAMING_SNAKE_CASE",
    rename_all_fields = "camelCase"
)]
pub enum AutomaticFailover {
    /// The plan's `automaticFailover` is false.
    Off,
    /// A DOWN primary is failed over.
    Armed,
    /// Maintenance mode.
    Paused { since: DateTime<Utc>, by: String },
    /// The plan failed over lately; no automatic failover before `until` (the
    /// coordinator's `automatic_failover_cooldown` after that failover started).
    CoolingDown {
        until: DateTime<Utc>,
        after_failover: String,
    },
}

/// One field the coordinator refused, with why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// What an agent reports once its server is promoted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromoteOutcome {
    /// False when the server already accepted writes (a resumed failover).
    pub was_standby: bool,
    pub timeline: u32,
    pub lsn: String,
    pub duration_ms: u64,
}

/// What an agent reports once its fenced old primary is a standby again (`Rejoin`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejoinOutcome {
    /// Leftover `.ready` WAL segments archived to the repository before the rewind.
    pub archived_segments: Vec<String>,
    /// Whether `pg_rewind` changed anything (false: the timelines had not diverged).
    pub rewound: bool,
    /// `pg_rewind`'s last line, e.g. "Done!" or "no rewind required".
    pub rewind_message: String,
    /// The timeline the server receives from its new primary.
    pub timeline: Option<u32>,
    /// Where it streams from (`host:port`).
    pub primary: String,
    /// `pg_stat_wal_receiver` showed `streaming`.
    pub streaming: bool,
    /// The server's log while it runs as a standby.
    pub log_file: String,
    pub duration_ms: u64,
}

/// The body of `POST /disaster-recovery/rejoin`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RejoinRequest {
    /// The region whose fenced old primary becomes a standby of the current primary.
    pub region: RegionId,
}

/// One agent's rejoined server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejoinedAgent {
    pub agent_id: AgentId,
    pub outcome: RejoinOutcome,
}

/// The `200 OK` answer to a rejoin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejoinAnswer {
    pub region: RegionId,
    /// The current primary's agent and where its PostgreSQL is reached.
    pub primary_agent_id: AgentId,
    pub primary_address: String,
    pub rejoined: Vec<RejoinedAgent>,
}

/// The body of `POST /disaster-recovery/failover`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailoverRequest {
    pub plan_id: String,
    pub target_region: RegionId,
    /// Fail over even when the target's replica is further behind than the plan's RPO.
    #[serde(default)]
    pub allow_data_loss: bool,
}

/// `POST …/disaster-recovery/switchover`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SwitchoverRequest {
    pub plan_id: String,
    pub target_region: RegionId,
}

/// The `202 Accepted` answer to a failover request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverAccepted {
    pub status: String,
    pub failover_id: String,
    #[serde(default)]
    pub kind: FailoverKind,
    pub failover_start_time: DateTime<Utc>,
    pub estimated_completion_time: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailoverStatus {
    Initiated,
    InProgress,
    Completed,
    Failed,
    /// Stopped by an operator (`POST …/failover/:id/abort`): its driver stops at the
    /// next step boundary, and the plan is free for another failover.
    Aborted,
}

impl FailoverStatus {
    /// Started and not ended: a driver owns it (or will, once the coordinator resumes it).
    pub fn is_running(self) -> bool {
        matches!(self, FailoverStatus::Initiated | FailoverStatus::InProgress)
    }
}

impl std::fmt::Display for FailoverStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailoverStatus::Initiated => "INITIATED",
            FailoverStatus::InProgress => "IN_PROGRESS",
            FailoverStatus::Completed => "COMPLETED",
            FailoverStatus::Failed => "FAILED",
            FailoverStatus::Aborted => "ABORTED",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepStatus {
    Pending,
    Running,
    Done,
    Failed,
    Skipped,
}

/// One of the runbook's seven failover steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverStep {
    /// 1 to 7, the runbook's order.
    pub number: u8,
    pub name: String,
    pub status: StepStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub message: String,
}

/// A failover, step by step, as stored (each step persisted before it acts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRun {
    pub failover_id: String,
    pub plan_id: String,
    pub status: FailoverStatus,
    pub target_region: RegionId,
    /// The agent next to the replica being promoted.
    pub target_agent: Option<AgentId>,
    /// The region and agent of the primary being replaced, when there was one.
    pub from_region: Option<RegionId>,
    pub from_agent: Option<AgentId>,
    /// The fencing epoch this failover runs under (one above the one before it).
    pub epoch: Option<Epoch>,
    pub allow_data_loss: bool,
    pub requested_by: String,
    pub failover_start_time: DateTime<Utc>,
    pub estimated_completion_time: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The promoted server's timeline.
    pub timeline: Option<u32>,
    pub current_step: Option<u8>,
    pub steps: Vec<FailoverStep>,
    pub error: Option<String>,
    /// A failover, or a planned switchover (absent in runs stored before switchovers).
    #[serde(default)]
    pub kind: FailoverKind,
    /// A switchover's LSNs, once the old primary has stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<SwitchoverLsns>,
    /// Servers step 2 waits on that only an operator can clear: their agents cannot
    /// show them fenced (no fencing capability, not known, no lease). Cleared by
    /// `POST …/failover/:id/confirm-fenced`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub awaiting_confirmation: Vec<AgentId>,
    /// Servers an operator confirmed stopped by hand, for step 2.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fenced_by_operator: Vec<FenceConfirmation>,
    /// Set when an operator aborted the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<FailoverAbort>,
}

/// What a [`FailoverRun`] is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailoverKind {
    /// The primary is lost or given up: fenced (by its agent or its lease), the target
    /// promoted with what it has (within the plan's RPO).
    #[default]
    Failover,
    /// Planned, with no data loss: the old primary stops cleanly (its final WAL sent to
    /// the standbys), the target replays up to that final LSN, then it is promoted, and
    /// the old primary rejoins it as a standby.
    Switchover,
}

/// Where a switchover's old primary stopped, and how far the target had replayed when
/// it was promoted (at least as far: nothing acknowledged is lost).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverLsns {
    /// The old primary's shutdown checkpoint (`X/Y`): the last WAL it wrote.
    pub final_lsn: String,
    /// The old primary's timeline.
    pub final_timeline: u32,
    /// What the target had replayed (`X/Y`), past `final_lsn`.
    pub target_replayed_lsn: Option<String>,
}

/// What an agent reports once its server stopped for a switchover (`Demote`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DemoteOutcome {
    /// The shutdown checkpoint's location (`X/Y`), from `pg_controldata`.
    pub final_lsn: String,
    pub timeline: u32,
    /// False when the server was already stopped cleanly (a resumed switchover).
    pub was_running: bool,
}

/// What an agent reports once its primary's WAL reached the repository
/// (`ConfirmArchiving`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchivingOutcome {
    /// The segment the server switched from, now in the repository.
    pub segment: String,
    pub timeline: u32,
    pub waited_ms: u64,
}

/// What an agent reports once its standby has replayed past an LSN (`CatchUp`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatchUpOutcome {
    /// What it had replayed (`X/Y`).
    pub replayed_lsn: String,
    pub waited_ms: u64,
}

/// An operator's word that the server next to `agent_id` is stopped (fenced by hand).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FenceConfirmation {
    pub agent_id: AgentId,
    pub by: String,
    pub at: DateTime<Utc>,
}

/// Who aborted a failover, when, and what it left behind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverAbort {
    pub by: String,
    pub at: DateTime<Utc>,
    /// Whether step 3 had promoted the target: a promotion is never undone.
    pub promoted: bool,
    pub message: String,
}

/// `POST …/disaster-recovery/failover/:id/confirm-fenced`: the body is optional; without
/// `agentId`, every server the failover waits on (its `awaitingConfirmation`) is
/// confirmed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfirmFencedRequest {
    #[serde(default)]
    pub agent_id: Option<AgentId>,
}

/// The answer to a confirm-fenced call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FenceConfirmed {
    pub failover_id: String,
    pub confirmed: Vec<AgentId>,
    pub message: String,
}

/// The answer to `POST …/disaster-recovery/failover/:id/abort`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverAborted {
    pub failover_id: String,
    pub status: FailoverStatus,
    /// Whether the target had been promoted (it stays the primary).
    pub promoted: bool,
    pub message: String,
}

/// How a DR test stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DrTestStatus {
    InProgress,
    /// All five steps done and every check passed.
    Completed,
    Failed,
}

impl std::fmt::Display for DrTestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DrTestStatus::InProgress => "IN_PROGRESS",
            DrTestStatus::Completed => "COMPLETED",
            DrTestStatus::Failed => "FAILED",
        })
    }
}

/// The runbook's five DR test steps, in order.
pub const DR_TEST_STEPS: [&str; 5] = [
    "Create isolated test environment",
    "Restore latest production backup",
    "Run application smoke tests",
    "Validate data consistency",
    "Cleanup test environment",
];

/// One of the five steps, with when it ran and how it ended (the agent's clock).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrTestStep {
    /// 1 to 5, the runbook's order.
    pub number: u8,
    pub name: String,
    pub status: StepStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub message: String,
}

impl DrTestStep {
    /// The five steps, all PENDING.
    pub fn pending() -> Vec<DrTestStep> {
        DR_TEST_STEPS
            .iter()
            .enumerate()
            .map(|(i, name)| DrTestStep {
                number: i as u8 + 1,
                name: (*name).to_string(),
                status: StepStatus::Pending,
                started_at: None,
                ended_at: None,
                duration_ms: None,
                message: String::new(),
            })
            .collect()
    }
}

/// What the agent reports once a DR test ran (the command result's detail).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrTestReport {
    pub steps: Vec<DrTestStep>,
    /// From the start of step 1 until the smoke tests passed; none when they did not.
    pub measured_rto_ms: Option<u64>,
    #[serde(default)]
    pub smoke_checks: Vec<SmokeCheckResult>,
    /// Failed checks and notes, each naming its object.
    #[serde(default)]
    pub details: Vec<VerificationFinding>,
}

impl DrTestReport {
    /// Every step done.
    pub fn passed(&self) -> bool {
        self.steps.len() == DR_TEST_STEPS.len()
            && self.steps.iter().all(|s| s.status == StepStatus::Done)
    }
}

/// A DR test of a plan, as stored (`drtests` namespace) and shown in the DR status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrTest {
    pub test_id: String,
    pub plan_id: String,
    pub status: DrTestStatus,
    pub target_region: RegionId,
    pub agent_id: AgentId,
    /// Why this region and agent (the region rule).
    #[serde(default)]
    pub target_reason: String,
    /// The base backup restored: the newest COMPLETED or VERIFIED one.
    pub backup_id: String,
    /// `manual` or `scheduled`.
    pub trigger: String,
    pub requested_by: String,
    /// 0..=100
    pub progress: f32,
    pub progress_message: String,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
    pub steps: Vec<DrTestStep>,
    /// From the start of step 1 until the smoke tests passed.
    pub measured_rto_ms: Option<u64>,
    pub measured_rto_seconds: Option<f64>,
    /// The plan's RTO when the test started.
    pub plan_rto_seconds: u64,
    /// Whether the measured RTO is within the plan's; none without a measured RTO.
    pub rto_met: Option<bool>,
    #[serde(default)]
    pub smoke_checks: Vec<SmokeCheckResult>,
    #[serde(default)]
    pub details: Vec<VerificationFinding>,
    /// Why the test could not run to the end, when it could not.
    pub error: Option<String>,
}

/// `POST /disaster-recovery/test/:planId`: the 202 answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrTestAccepted {
    /// `IN_PROGRESS`.
    pub status: DrTestStatus,
    pub test_id: String,
    pub plan_id: String,
    pub target_region: RegionId,
    pub agent_id: AgentId,
    pub target_reason: String,
    pub backup_id: String,
    pub started_at: DateTime<Utc>,
    pub plan_rto_seconds: u64,
}
