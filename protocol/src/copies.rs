//! Copies of backups to secondary locations ("copies"; "replication" in drmesh means
//! PostgreSQL streaming only, though the REST fields keep the runbook's `replication`
//! name): what an agent reports after catching a location up (`CommandKind::Copy`), and what the coordinator shows of it (documents
//! statistics, a database backup's details, the dashboard) and alerts on.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// At most this many missing snapshot ids are listed per location.
pub const MAX_MISSING_LISTED: usize = 100;

/// Where a location stands after a replication round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CopyState {
    /// Holds every snapshot and WAL segment of the primary location, verified.
    InSync,
    /// Reachable, but something could not be copied yet (see `last_error`).
    Behind,
    /// Could not be opened or written at all.
    Unreachable,
}

/// One secondary location after a replication round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocationCopy {
    /// `database` or `documents`.
    pub repository: String,
    /// The location's configured name.
    pub name: String,
    /// Its URL (credentials are never part of it).
    pub url: String,
    pub state: CopyState,
    pub checked_at: DateTime<Utc>,
    /// Copied (and verified there) in this round.
    pub snapshots_copied: u64,
    pub wal_copied: u64,
    pub bytes_copied: u64,
    /// Snapshots of the primary still not there after this round (at most
    /// [`MAX_MISSING_LISTED`], oldest first) and how many in all.
    #[serde(default)]
    pub missing_snapshots: Vec<String>,
    #[serde(default)]
    pub missing_snapshot_count: u64,
    #[serde(default)]
    pub missing_wal: u64,
    /// Age of the oldest snapshot or WAL segment still missing there; 0 when in sync.
    pub lag_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Bytes the location holds, and its configured quota (object stores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_used: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
}

impl LocationCopy {
    /// A location with nothing to copy, as checked at `at`.
    pub fn in_sync(repository: &str, name: &str, url: String, at: DateTime<Utc>) -> Self {
        Self {
            repository: repository.to_string(),
            name: name.to_string(),
            url,
            state: CopyState::InSync,
            checked_at: at,
            snapshots_copied: 0,
            wal_copied: 0,
            bytes_copied: 0,
            missing_snapshots: Vec::new(),
            missing_snapshot_count: 0,
            missing_wal: 0,
            lag_seconds: 0.0,
            last_error: None,
            bytes_used: None,
            quota_bytes: None,
        }
    }
}

/// The detail of a `Replicate` command.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopiesOutcome {
    pub locations: Vec<LocationCopy>,
}

/// A location as the coordinator knows it: the agent's last report plus history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocationStatus {
    pub agent_id: String,
    #[serde(flatten)]
    pub report: LocationCopy,
    /// The last round that left the location in sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_in_sync_at: Option<DateTime<Utc>>,
    /// Since when the location has been unreachable without a break.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<DateTime<Utc>>,
}

/// Where one backup stands at one secondary location (a backup's details).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupLocation {
    pub name: String,
    pub url: String,
    /// The location's last round found the backup there (copied and verified).
    pub replicated: bool,
    pub state: CopyState,
    pub checked_at: DateTime<Utc>,
    pub lag_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl LocationStatus {
    /// Where backup `id`, finished at `finished_at`, stands at this location: there when
    /// a round after it finished did not list it as missing.
    pub fn backup(&self, id: &str, finished_at: DateTime<Utc>) -> BackupLocation {
        let r = &self.report;
        let listed_complete = r.missing_snapshot_count as usize == r.missing_snapshots.len();
        let replicated = r.checked_at >= finished_at
            && r.state != CopyState::Unreachable
            && listed_complete
            && !r.missing_snapshots.iter().any(|m| m == id);
        BackupLocation {
            name: r.name.clone(),
            url: r.url.clone(),
            replicated,
            state: r.state,
            checked_at: r.checked_at,
            lag_seconds: r.lag_seconds,
            last_error: r.last_error.clone(),
        }
    }

    /// The key alerts and the store use: `agent/repository/name`.
    pub fn source(&self) -> String {
        format!(
            "{}/{}/{}",
            self.agent_id, self.report.repository, self.report.name
        )
    }

    /// The status after `report`, given the one before.
    pub fn next(agent_id: &str, previous: Option<&Self>, report: LocationCopy) -> Self {
        let at = report.checked_at;
        let last_in_sync_at = match report.state {
            CopyState::InSync => Some(at),
            _ => previous.and_then(|p| p.last_in_sync_at),
        };
        let unreachable_since = match report.state {
            CopyState::Unreachable => {
                Some(previous.and_then(|p| p.unreachable_since).unwrap_or(at))
            }
            _ => None,
        };
        Self {
            agent_id: agent_id.to_string(),
            report,
            last_in_sync_at,
            unreachable_since,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn report(state: CopyState, secs: i64) -> LocationCopy {
        let at = Utc.timestamp_opt(secs, 0).single().unwrap_or_default();
        LocationCopy {
            state,
            ..LocationCopy::in_sync("documents", "s3", "s3://b/p".into(), at)
        }
    }

    #[test]
    fn unreachable_since_is_the_first_failure_of_a_run_and_clears_when_back() {
        use CopyState::*;
        let a = LocationStatus::next("docs-1", None, report(InSync, 100));
        assert_eq!(a.last_in_sync_at.map(|t| t.timestamp()), Some(100));
        let b = LocationStatus::next("docs-1", Some(&a), report(Unreachable, 200));
        let c = LocationStatus::next("docs-1", Some(&b), report(Unreachable, 300));
        assert_eq!(c.unreachable_since.map(|t| t.timestamp()), Some(200));
        assert_eq!(c.last_in_sync_at.map(|t| t.timestamp()), Some(100));
        let d = LocationStatus::next("docs-1", Some(&c), report(Behind, 400));
        assert_eq!(d.unreachable_since, None);
        assert_eq!(d.source(), "docs-1/documents/s3");
        let b = d.backup(
            "docs_1",
            Utc.timestamp_opt(399, 0).single().unwrap_or_default(),
        );
        assert!(b.replicated, "checked after it finished, not missing");
        let b = d.backup(
            "docs_1",
            Utc.timestamp_opt(401, 0).single().unwrap_or_default(),
        );
        assert!(!b.replicated, "finished after the last round");
        let b = c.backup(
            "docs_1",
            Utc.timestamp_opt(100, 0).single().unwrap_or_default(),
        );
        assert!(!b.replicated, "unreachable: unknown");
        let json = serde_json::to_value(&d).unwrap_or_default();
        assert_eq!(json["state"], "BEHIND");
        assert_eq!(json["agentId"], "docs-1");
    }
}
