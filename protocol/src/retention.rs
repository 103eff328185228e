//! Retention policies as configured, sent to agents and shown by the REST API, and the
//! report of an enforcement. The rules themselves are the agent's
//! (`repo/src/retention.rs`); these are the shared types.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The largest count a calendar tier accepts.
pub const MAX_COUNT: u32 = 1000;

/// A retention policy that cannot be used; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    #[error("retention.{field} must be longer than zero")]
    ZeroDuration { field: &'static str },
    #[error(
        "retention.incremental ({incremental}) must not be longer than retention.full ({full})"
    )]
    IncrementalLongerThanFull { incremental: String, full: String },
    #[error("retention.{field} ({value}) must be at most {MAX_COUNT}")]
    TooMany { field: &'static str, value: u32 },
}

/// One kind's retention policy (`[retention.database]`, `[retention.documents]` later).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct RetentionPolicy {
    /// Every full backup (and document snapshot) is kept hot this long. Default 30 days
    /// ("30d").
    #[serde(with = "humantime_serde")]
    pub full: Duration,
    /// Every incremental backup is kept hot this long. Default 7 days.
    #[serde(with = "humantime_serde")]
    pub incremental: Duration,
    /// The newest full backup of each of the last N ISO weeks is kept hot (point-in-time
    /// recovery reaches back to it). Default 12.
    pub weekly: u32,
    /// The newest full backup of each of the last N calendar months goes to the cold
    /// archive. Default 12.
    pub monthly: u32,
    /// The newest full backup of each of the last N calendar years goes to the cold
    /// archive ("archived backups: 7 years"). Default 7.
    pub yearly: u32,
}

/// One day.
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

impl Default for RetentionPolicy {
    /// The runbook's values.
    fn default() -> Self {
        Self {
            full: DAY * 30,
            incremental: DAY * 7,
            weekly: 12,
            monthly: 12,
            yearly: 7,
        }
    }
}

impl RetentionPolicy {
    /// Durations longer than zero, `incremental <= full`, each count at most
    /// [`MAX_COUNT`].
    pub fn validate(&self) -> Result<(), RetentionError> {
        for (field, d) in [("full", self.full), ("incremental", self.incremental)] {
            if d.is_zero() {
                return Err(RetentionError::ZeroDuration { field });
            }
        }
        if self.incremental > self.full {
            return Err(RetentionError::IncrementalLongerThanFull {
                incremental: humantime::format_duration(self.incremental).to_string(),
                full: humantime::format_duration(self.full).to_string(),
            });
        }
        for (field, value) in [
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ] {
            if value > MAX_COUNT {
                return Err(RetentionError::TooMany { field, value });
            }
        }
        Ok(())
    }
}

/// The retention policy of each kind of backup (`[retention.database]`,
/// `[retention.documents]`), each with the runbook's defaults, and when the coordinator
/// enforces them by itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionPolicies {
    pub database: RetentionPolicy,
    pub documents: RetentionPolicy,
    /// A cron expression (minute hour day month weekday, UTC) for the automatic
    /// enforcement, or `off`. Default `0 1 * * *`: daily at 01:00 UTC, as the runbook.
    pub schedule: String,
}

/// The runbook's "Runs daily at 01:00 UTC".
pub const DEFAULT_SCHEDULE: &str = "0 1 * * *";

impl Default for RetentionPolicies {
    fn default() -> Self {
        Self {
            database: RetentionPolicy::default(),
            documents: RetentionPolicy::default(),
            schedule: DEFAULT_SCHEDULE.into(),
        }
    }
}

/// The snapshot kind document backups have; every other kind is a database's.
pub const DOCUMENTS_KIND: &str = "documents";

impl RetentionPolicies {
    pub fn validate(&self) -> Result<(), RetentionError> {
        self.database.validate()?;
        self.documents.validate()
    }

    /// The policy for snapshots of `kind`.
    pub fn of(&self, kind: &str) -> &RetentionPolicy {
        if kind == DOCUMENTS_KIND {
            &self.documents
        } else {
            &self.database
        }
    }
}

/// A rule that keeps a backup. Serialized in camelCase (`"daily"`, `"weekly"`, …).
/// A DR plan's own policies (`"retention"` in the plan's body): each kind given replaces
/// the coordinator's for the agents of the plan's database (the primary's and those in
/// its failover regions); a kind left out keeps the coordinator's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanRetention {
    pub database: Option<RetentionPolicy>,
    pub documents: Option<RetentionPolicy>,
}

impl PlanRetention {
    pub fn validate(&self) -> Result<(), RetentionError> {
        for p in [&self.database, &self.documents].into_iter().flatten() {
            p.validate()?;
        }
        Ok(())
    }

    /// `base` with this plan's kinds in place of its own.
    pub fn apply(&self, base: &RetentionPolicies) -> RetentionPolicies {
        let mut out = base.clone();
        if let Some(p) = &self.database {
            out.database = p.clone();
        }
        if let Some(p) = &self.documents {
            out.documents = p.clone();
        }
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Tier {
    /// A full younger than `policy.full` (or in the future).
    Daily,
    /// An incremental younger than `policy.incremental` (or in the future).
    Incremental,
    /// The newest full of one of the last `policy.weekly` ISO weeks.
    Weekly,
    /// The newest full of one of the last `policy.monthly` calendar months.
    Monthly,
    /// The newest full of one of the last `policy.yearly` calendar years.
    Yearly,
    /// The newest full of its kind and source, whatever the policy says: enforcement
    /// never removes the last whole backup.
    Latest,
}

/// One snapshot the policy keeps, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Kept {
    pub snapshot_id: String,
    pub kind: String,
    pub finished_at: DateTime<Utc>,
    pub reasons: Vec<Tier>,
}

/// What an enforcement on one repository did (or, dry, would do).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnforceReport {
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    /// For a location with a date template (`{yyyy}/{mm}`: one repository per month):
    /// the month repositories enforced as one history, oldest first; the lists and
    /// counts below are theirs together. Empty for a single repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub months: Vec<String>,
    /// Kept in the repository by the daily, incremental or weekly tier.
    pub kept: Vec<Kept>,
    /// Kept by the monthly or yearly tier only: bound for the cold archive, and kept in
    /// the repository until they are archived (when no archive is configured, or
    /// archiving them failed).
    pub awaiting_archive: Vec<Kept>,
    /// Moved to the cold archive (dry: would be): written there, read back, then
    /// removed from the repository. Empty when no archive is configured.
    #[serde(default)]
    pub archived: Vec<Kept>,
    /// Archived snapshots no monthly or yearly tier keeps any more, removed from the
    /// cold archive (dry: would be).
    #[serde(default)]
    pub archive_deleted: Vec<String>,
    /// Snapshots that could not be archived, with why; they stay in the repository
    /// (listed in `awaiting_archive`) for the next run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub archive_errors: Vec<String>,
    /// Snapshots whose manifests were (dry: would be) removed.
    pub deleted: Vec<String>,
    /// WAL segments removed (dry: would be), as `timeline/name`.
    pub wal_deleted: Vec<String>,
    /// After a real run, garbage collection: packs no snapshot references deleted, and
    /// the bytes that freed (0 in a dry run).
    #[serde(default)]
    pub packs_deleted: u64,
    #[serde(default)]
    pub bytes_freed: u64,
    /// Packs left scheduled because a backup running meanwhile may still use them; the
    /// next enforcement deletes them.
    #[serde(default)]
    pub packs_pending: u64,
    /// Why garbage collection did not run (the snapshots were deleted all the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_error: Option<String>,
    /// On a write-once location (`immutable_for`): what this run would have removed but
    /// left because its lock has not ended; a run after `lockedUntil` finishes the job.
    #[serde(default, skip_serializing_if = "LockedObjects::is_empty")]
    pub locked: LockedObjects,
}

/// Objects a run left on a write-once location because their lock has not ended (or the
/// server refused to delete them). The repository stays consistent: a snapshot listed
/// here stays listed, restorable and referenced (with its WAL); a pack stays scheduled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockedObjects {
    /// Snapshots the plan removes from the repository (deleted, or moved to the cold
    /// archive) whose manifest is still locked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<LockedSnapshot>,
    /// Archived snapshots no tier keeps any more, still locked in the cold archive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub archived: Vec<LockedSnapshot>,
    /// WAL segments no kept backup needs, still locked.
    #[serde(default)]
    pub wal_segments: u64,
    /// Unreferenced packs garbage collection keeps scheduled until their lock (or that of
    /// an index object listing them) ends.
    #[serde(default)]
    pub packs: u64,
    /// When the last of these locks ends, as far as drmesh knows (the object's
    /// last-modified time plus `immutable_for`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<DateTime<Utc>>,
    /// Objects whose delete the server refused (a lock longer than `immutable_for`
    /// says), by key; they stay, counted above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

/// A snapshot kept because its object is locked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockedSnapshot {
    pub snapshot_id: String,
    /// When its lock ends; absent when the server refused the delete and its end is not
    /// known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<DateTime<Utc>>,
}

impl LockedObjects {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Counts a lock ending at `until` (`None`: refused by the server) in `locked_until`.
    pub fn note(&mut self, until: Option<DateTime<Utc>>) {
        if let Some(until) = until {
            self.locked_until = self.locked_until.max(Some(until));
        }
    }
}

/// One repository's enforcement, or why it could not run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryRetention {
    /// `database`, or the document location's name.
    pub repository: String,
    /// The repository's own policy (agent configuration), when it replaced the
    /// coordinator's for its kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RetentionPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<EnforceReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An agent's answer to `EnforceRetention`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionOutcome {
    pub repositories: Vec<RepositoryRetention>,
}

/// One agent's part of `POST /v1/backup-recovery/retention/enforce-policies`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRetention {
    pub agent_id: String,
    /// The DR plan whose policies this agent was given instead of the coordinator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    #[serde(default)]
    pub repositories: Vec<RepositoryRetention>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer of `POST /v1/backup-recovery/retention/enforce-policies`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionEnforcement {
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    pub policies: RetentionPolicies,
    pub agents: Vec<AgentRetention>,
    /// Snapshots deleted (dry: that would be), over every agent and repository.
    pub deleted: usize,
    /// Snapshots bound for the cold archive but not moved there (no `[archive]`, or it
    /// failed), over every agent and repository.
    pub awaiting_archive: usize,
    /// Snapshots moved to the cold archive (dry: that would be).
    #[serde(default)]
    pub archived: usize,
    /// Archived snapshots no tier keeps any more, deleted from the archive.
    #[serde(default)]
    pub archive_deleted: usize,
    /// WAL segments deleted (dry: that would be).
    pub wal_deleted: usize,
    /// Bytes garbage collection freed, over every repository.
    pub bytes_freed: u64,
}
