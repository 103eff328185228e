//! Database backups as the coordinator sees them: a record per backup in the store, the
//! command that makes the primary's agent take it, and the record updated from the
//! agent's progress reports and result.
//!
//! Architecture Invariant: a database backup record is COMPLETED only when the agent's
//! result says the snapshot is written — which the agent does only after every WAL
//! segment from the backup's start to its stop LSN is in the archive. Anything else ends
//! FAILED with the reason and raises the runbook's CRITICAL alert.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use drmesh_protocol::api::{BackupAccepted, BackupStatus, DatabaseBackup, DatabaseBackupOutcome};
use drmesh_protocol::ids::runbook_id;
use drmesh_protocol::{AgentId, CommandKind, RegionId};
use tracing::{error, info, Instrument};

use crate::alerts;
use crate::alerts::BACKUP_FAILED;
use crate::error::Error;
use crate::ops::jobs::{self, Finished};
use crate::state::Coordinator;
use crate::store::{Namespace, Store, StoreError, StoreExt};

/// Why nothing can start: no agent that could do it.
pub const NO_AGENT: &str =
    "no agent with a [database] configuration next to a primary is connected and UP";

/// Capability an agent announces when it has a `[database]` configuration.
pub const CAPABILITY: &str = drmesh_protocol::capability::DATABASE;

/// Key prefixes of database backups in the `backups` namespace (ids sort by time).
const PREFIXES: [&str; 2] = ["full_", "incr_"];

/// `full` or `incr`, as in the ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupType {
    Full,
    Incremental,
    /// `pg_dump -Fc`, under a `full_…` id like the runbook's `full/<id>.dump`.
    Logical,
}

impl BackupType {
    fn prefix(self) -> &'static str {
        match self {
            BackupType::Full | BackupType::Logical => "full",
            BackupType::Incremental => "incr",
        }
    }

    /// As the agent's command and the record name it.
    fn name(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Incremental => "incr",
            BackupType::Logical => "logical",
        }
    }
}

pub fn get(store: &dyn Store, id: &str) -> Result<Option<DatabaseBackup>, StoreError> {
    if !PREFIXES.iter().any(|p| id.starts_with(p)) {
        return Ok(None);
    }
    store.get_json(Namespace::Backups, id)
}

pub(crate) fn save(store: &dyn Store, rec: &DatabaseBackup) -> Result<(), StoreError> {
    store.put_json(Namespace::Backups, &rec.backup_id, rec)
}

/// Newest first, optionally only those with `status`.
pub fn list(
    store: &dyn Store,
    status: Option<BackupStatus>,
) -> Result<Vec<DatabaseBackup>, StoreError> {
    let mut all: Vec<DatabaseBackup> = Vec::new();
    for prefix in PREFIXES {
        all.extend(store.scan_json::<DatabaseBackup>(Namespace::Backups, prefix)?);
    }
    all.sort_by_key(|b| std::cmp::Reverse(b.timestamp));
    all.retain(|b| status.is_none_or(|s| b.status == s));
    Ok(all)
}

/// The agent that takes database backups: UP, connected, with the database capability,
/// and next to a primary (by its last heartbeat); lowest id first.
fn pick_agent(coord: &Coordinator) -> Option<(AgentId, RegionId)> {
    jobs::capable_agents(coord, CAPABILITY)
        .into_iter()
        .find(|c| c.primary)
        .map(|c| (c.id, c.region))
}

/// A guess from the last completed backup of the same type (five minutes before any).
fn estimate(store: &dyn Store, backup_type: BackupType) -> Result<Duration, StoreError> {
    let last = list(store, None)?.into_iter().find(|b| {
        b.backup_type == backup_type.name()
            && matches!(b.status, BackupStatus::Completed | BackupStatus::Verified)
    });
    Ok(last
        .and_then(|b| b.duration_ms)
        .map(|ms| Duration::from_millis(ms.max(1000)))
        .unwrap_or(Duration::from_secs(300)))
}

/// `POST /database/backup/full|incremental`: records the backup and starts it on the
/// primary's agent.
pub fn start_backup(
    coord: &Arc<Coordinator>,
    backup_type: BackupType,
    tags: BTreeMap<String, String>,
    requested_by: String,
) -> Result<BackupAccepted, Error> {
    let store = coord.store.as_ref();
    if let Some(running) = list(store, Some(BackupStatus::InProgress))?.first() {
        return Err(Error::Conflict(format!(
            "database backup {} is still in progress",
            running.backup_id
        )));
    }
    let (agent, region) = pick_agent(coord).ok_or_else(|| Error::Unavailable(NO_AGENT.into()))?;
    let estimated = estimate(store, backup_type)?;
    let rec = DatabaseBackup {
        backup_id: runbook_id(backup_type.prefix()),
        backup_type: backup_type.name().into(),
        status: BackupStatus::InProgress,
        progress: 0.0,
        progress_message: "queued".into(),
        agent_id: agent.clone(),
        region,
        tags,
        requested_by,
        timestamp: Utc::now(),
        completed_at: None,
        duration_ms: None,
        bytes_read: None,
        bytes_stored: None,
        start_lsn: None,
        stop_lsn: None,
        timeline: None,
        outcome: None,
        error: None,
    };
    save(store, &rec)?;
    let accepted = BackupAccepted {
        backup_id: rec.backup_id.clone(),
        status: rec.status,
        timestamp: rec.timestamp,
        estimated_duration_seconds: estimated.as_secs(),
        estimated_duration: humantime::format_duration(Duration::from_secs(estimated.as_secs()))
            .to_string(),
        agent_id: agent,
    };
    let span = tracing::info_span!("database_backup", backup_id = %rec.backup_id, agent_id = %rec.agent_id);
    tokio::spawn(run_backup(coord.clone(), rec).instrument(span));
    Ok(accepted)
}

async fn run_backup(coord: Arc<Coordinator>, mut rec: DatabaseBackup) {
    info!("database backup started");
    let id = rec.backup_id.clone();
    let kind = CommandKind::DatabaseBackup {
        backup_id: id.clone(),
        backup_type: rec.backup_type.clone(),
        tags: rec.tags.clone(),
    };
    let result = jobs::run_with_progress(&coord, &mut rec, kind, coord.config.backup_timeout).await;
    let failure = match jobs::finished::<DatabaseBackupOutcome>(result, "backup") {
        Finished::Done(outcome) => {
            rec.status = BackupStatus::Completed;
            rec.progress = 100.0;
            rec.progress_message = "completed".into();
            rec.bytes_read = Some(outcome.bytes_read);
            rec.bytes_stored = Some(outcome.bytes_stored);
            rec.start_lsn = Some(outcome.start_lsn.clone());
            rec.stop_lsn = Some(outcome.stop_lsn.clone());
            rec.timeline = Some(outcome.timeline);
            let _ = alerts::resolve_cleared(coord.store.as_ref(), BACKUP_FAILED, "database");
            info!(
                bytes = outcome.bytes,
                stored = outcome.bytes_stored,
                "database backup completed"
            );
            rec.outcome = Some(outcome);
            None
        }
        Finished::Failed(why) => Some(Some(why)),
        Finished::TimedOut => Some(None),
    };
    if let Some(reason) = failure {
        rec.status = BackupStatus::Failed;
        rec.error = Some(jobs::backup_failed(
            &coord,
            "database",
            "database backup",
            &id,
            &rec.agent_id,
            &rec.region,
            reason,
        ));
    }
    if let Err(e) = save(coord.store.as_ref(), &rec) {
        error!(error = %e, "save backup result");
    }
}

/// Marks database backups that were running when the coordinator stopped as FAILED.
/// Called once at start.
pub fn fail_interrupted(store: &dyn Store) -> Result<usize, StoreError> {
    let mut n = 0;
    for mut rec in list(store, Some(BackupStatus::InProgress))? {
        rec.status = BackupStatus::Failed;
        rec.error = Some("interrupted: the coordinator restarted while the backup ran".into());
        rec.completed_at = Some(Utc::now());
        save(store, &rec)?;
        n += 1;
    }
    Ok(n)
}
