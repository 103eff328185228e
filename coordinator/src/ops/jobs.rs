//! Commands whose progress goes into a stored record: backups (documents, database) and
//! point-in-time recoveries. The agent's progress frames are written into the record
//! (at most once a second, and only while it is still IN_PROGRESS); the caller then
//! reads the record back and folds the result in.

use std::time::{Duration, Instant};

use drmesh_protocol::api::{
    BackupStatus, DatabaseBackup, DatabaseVerification, DocumentBackup, PitrRun,
};
use drmesh_protocol::{AgentId, CommandKind, CommandResult};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

use crate::alerts;
use crate::state::Coordinator;
use crate::store::{Namespace, StoreExt};
use crate::transport::{self, TransportError};

/// A stored record that a running command reports progress into.
pub(crate) trait Job: Serialize + DeserializeOwned {
    /// The namespace it is kept in.
    const NAMESPACE: Namespace = Namespace::Backups;
    /// Its key in that namespace.
    fn key(&self) -> &str;
    fn agent(&self) -> &AgentId;
    fn status(&self) -> BackupStatus;
    fn set_progress(&mut self, percent: f32, message: String);
    /// Records when the command ended and how long it took.
    fn ended(&mut self, duration_ms: u64);
}

macro_rules! job {
    ($t:ty, $key:ident, $ended_at:ident) => {
        impl Job for $t {
            fn key(&self) -> &str {
                &self.$key
            }
            fn agent(&self) -> &AgentId {
                &self.agent_id
            }
            fn status(&self) -> BackupStatus {
                self.status
            }
            fn set_progress(&mut self, percent: f32, message: String) {
                self.progress = percent.clamp(0.0, 100.0);
                self.progress_message = message;
            }
            fn ended(&mut self, duration_ms: u64) {
                self.duration_ms = Some(duration_ms);
                self.$ended_at = Some(chrono::Utc::now());
            }
        }
    };
}

job!(DocumentBackup, backup_id, completed_at);
job!(DatabaseBackup, backup_id, completed_at);
job!(PitrRun, recovery_id, finished_at);

impl Job for DatabaseVerification {
    const NAMESPACE: Namespace = Namespace::Verifications;
    fn key(&self) -> &str {
        &self.verification_id
    }
    fn agent(&self) -> &AgentId {
        &self.agent_id
    }
    fn status(&self) -> BackupStatus {
        self.status
    }
    fn set_progress(&mut self, percent: f32, message: String) {
        self.progress = percent.clamp(0.0, 100.0);
        self.progress_message = message;
    }
    fn ended(&mut self, duration_ms: u64) {
        self.duration_ms = Some(duration_ms);
        self.completed_at = Some(chrono::Utc::now());
    }
}

/// Writes progress to the store at most once a second, except that a step of at least
/// [`STEP`] percent is written at once: a fast job's phases (a verification reaching its
/// smoke checks within a second of its recovery) are never lost to the throttle.
#[derive(Default)]
struct Throttle {
    last: Option<(Instant, f32)>,
}

/// Percent points that are written whatever the time since the last write.
const STEP: f32 = 5.0;

impl Throttle {
    fn ready(&mut self, percent: f32) -> bool {
        if self
            .last
            .is_some_and(|(t, p)| t.elapsed() < Duration::from_secs(1) && percent < p + STEP)
        {
            return false;
        }
        self.last = Some((Instant::now(), percent));
        true
    }
}

/// Sends `kind` to `rec`'s agent and writes its progress into the stored record; then
/// reloads `rec` from the store (progress went there) and records when it ended.
pub(crate) async fn run_with_progress<J: Job>(
    coord: &Coordinator,
    rec: &mut J,
    kind: CommandKind,
    timeout: Duration,
) -> Result<CommandResult, TransportError> {
    let started = Instant::now();
    let store = coord.store.clone();
    let key = rec.key().to_string();
    let mut throttle = Throttle::default();
    let result = transport::send_command_with_progress(coord, rec.agent(), kind, timeout, |p| {
        if !throttle.ready(p.percent) {
            return;
        }
        if let Ok(Some(mut current)) = store.get_json::<J>(J::NAMESPACE, &key) {
            if current.status() == BackupStatus::InProgress {
                current.set_progress(p.percent, p.message);
                if let Err(e) = store.put_json(J::NAMESPACE, &key, &current) {
                    warn!(error = %e, "save progress");
                }
            }
        }
    })
    .await;
    if let Ok(Some(current)) = store.get_json::<J>(J::NAMESPACE, &key) {
        *rec = current;
    }
    rec.ended(started.elapsed().as_millis() as u64);
    result
}

/// How a job's command ended.
pub(crate) enum Finished<T> {
    /// The agent's result, read as `T`.
    Done(T),
    /// The reason it failed: the agent's own message, an unreadable result, or a lost
    /// agent.
    Failed(String),
    /// No result within the timeout.
    TimedOut,
}

/// Reads a command's result as `T`; `what` names the job in messages ("backup").
pub(crate) fn finished<T>(result: Result<CommandResult, TransportError>, what: &str) -> Finished<T>
where
    T: TryFrom<
        drmesh_protocol::outcome::CommandOutcome,
        Error = drmesh_protocol::outcome::WrongOutcome,
    >,
{
    match result {
        Ok(r) if r.ok => match r.outcome_as::<T>() {
            Ok(v) => Finished::Done(v),
            Err(e) => Finished::Failed(format!("the agent's result could not be read: {e}")),
        },
        Ok(r) => Finished::Failed(r.message),
        Err(TransportError::Timeout(_)) => Finished::TimedOut,
        Err(e) => Finished::Failed(format!("lost the agent while the {what} ran: {e}")),
    }
}

/// A backup that did not complete: its error, and the runbook's CRITICAL alerts —
/// "Backup Timeout" when it ran past the timeout, and "Backup Failed" in every case.
/// `source` is the alert source (`documents`, `database`), `what` names the backup in
/// messages ("document backup").
pub(crate) fn backup_failed(
    coord: &Coordinator,
    source: &str,
    what: &str,
    id: &str,
    agent: &AgentId,
    region: &drmesh_protocol::RegionId,
    reason: Option<String>,
) -> String {
    use crate::alerts::{BACKUP_FAILED, BACKUP_TIMEOUT};
    use drmesh_protocol::api::Severity;
    let why = match reason {
        Some(why) => why,
        None => {
            let limit = humantime::format_duration(coord.config.backup_timeout);
            alerts::raise_logged(
                coord.store.as_ref(),
                Severity::Critical,
                BACKUP_TIMEOUT,
                source,
                Some(region.clone()),
                format!("Backup Timeout: {what} {id} on {agent} ran past {limit}"),
            );
            format!("no result within the backup timeout ({limit})")
        }
    };
    warn!(error = %why, "{what} failed");
    alerts::raise_logged(
        coord.store.as_ref(),
        Severity::Critical,
        BACKUP_FAILED,
        source,
        Some(region.clone()),
        format!("Backup Failed: {what} {id} on {agent}: {why}"),
    );
    why
}

/// An agent a job can run on.
pub(crate) struct Candidate {
    pub id: AgentId,
    pub region: drmesh_protocol::RegionId,
    /// Its last heartbeat reported a primary PostgreSQL next to it.
    pub primary: bool,
}

/// The connected, UP agents that announced `capability`, by id.
pub(crate) fn capable_agents(coord: &Coordinator, capability: &str) -> Vec<Candidate> {
    use drmesh_protocol::api::AgentState;
    use drmesh_protocol::PgRole;
    let registry = coord.registry.lock();
    let mut out: Vec<Candidate> = registry
        .agents()
        .filter(|e| {
            e.connected
                && e.state == AgentState::Up
                && e.capabilities.iter().any(|c| c == capability)
        })
        .map(|e| Candidate {
            id: e.id.clone(),
            region: e.region.clone(),
            primary: e
                .heartbeat
                .as_ref()
                .and_then(|h| h.postgres.as_ref())
                .is_some_and(|pg| pg.role == PgRole::Primary),
        })
        .collect();
    out.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    out
}

/// Capability prefix under which agents announce each repository they back up into
/// (`repository:<url>`).
pub(crate) const REPOSITORY_PREFIX: &str = "repository:";

/// The UP agents that back up (`database` or `documents`), one per set of
/// repositories: an agent whose announced repositories are all another's already (the
/// standbys of a failover pair sharing the primary's repository) is left out, so a
/// repository is enforced or replicated by one agent at a time. Next to a primary first,
/// then by id. Agents that announce no repository are all kept.
pub(crate) fn repository_agents(coord: &Coordinator) -> Vec<Candidate> {
    let mut agents: Vec<Candidate> = capable_agents(coord, drmesh_protocol::capability::DATABASE)
        .into_iter()
        .chain(capable_agents(
            coord,
            drmesh_protocol::capability::DOCUMENTS,
        ))
        .collect();
    agents.sort_by(|a, b| {
        b.primary
            .cmp(&a.primary)
            .then_with(|| a.id.as_str().cmp(b.id.as_str()))
    });
    agents.dedup_by(|a, b| a.id == b.id);
    let repositories: std::collections::HashMap<AgentId, Vec<String>> = {
        let registry = coord.registry.lock();
        registry
            .agents()
            .map(|e| {
                let repos = e
                    .capabilities
                    .iter()
                    .filter_map(|c| c.strip_prefix(REPOSITORY_PREFIX))
                    .map(str::to_string)
                    .collect();
                (e.id.clone(), repos)
            })
            .collect()
    };
    let mut covered = std::collections::HashSet::new();
    agents
        .into_iter()
        .filter(|a| {
            let repos = repositories.get(&a.id).cloned().unwrap_or_default();
            let mut new = repos.is_empty();
            for r in repos {
                new |= covered.insert(r);
            }
            new
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_writes_once_a_second_and_every_step_of_five_percent() {
        let mut t = Throttle::default();
        assert!(t.ready(10.0));
        assert!(!t.ready(11.0), "within the second, a small step waits");
        assert!(!t.ready(14.9));
        assert!(t.ready(60.0), "a new phase is written at once");
        assert!(t.ready(75.0));
        assert!(!t.ready(76.0));
        t.last = t.last.map(|(at, p)| (at - Duration::from_secs(2), p));
        assert!(t.ready(76.0), "after a second, any update is written");
    }
}
