//! The runbook's "Storage Full" alert: agents report, with every heartbeat, the free and
//! total space of the filesystem each of their local repositories is on; when one is
//! `storage_full_percent` full or more, a CRITICAL `STORAGE_FULL` alert names the
//! repository and says to run the retention policies. It resolves itself when space is
//! back under the threshold. Checked off the heartbeat path, every few seconds, raising
//! or resolving only on a change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use drmesh_protocol::api::Severity;
use drmesh_protocol::{RegionId, StorageUsage};
use tracing::{error, info, warn};

use crate::alerts;
use crate::state::Coordinator;

/// Alert kind of a local repository's filesystem past the threshold.
pub const STORAGE_FULL: &str = "STORAGE_FULL";

/// How often the reported usage is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Whether `u` is at least `percent` full.
pub fn is_full(u: &StorageUsage, percent: u8) -> bool {
    let used = u.total_bytes.saturating_sub(u.free_bytes);
    u.total_bytes > 0 && used.saturating_mul(100) >= u.total_bytes.saturating_mul(percent.into())
}

/// The alert's text: which repository, how full, and what to do.
pub fn message(agent: &str, u: &StorageUsage) -> String {
    let used = u.total_bytes.saturating_sub(u.free_bytes);
    format!(
        "Storage Full: the {} repository of agent {agent} is {}% full ({} MB free of {} MB). \
         Run the retention policies (POST /v1/backup-recovery/retention/enforce-policies) \
         immediately or expand storage",
        u.name,
        used.saturating_mul(100) / u.total_bytes.max(1),
        u.free_bytes / 1_000_000,
        u.total_bytes / 1_000_000
    )
}

/// A location's use of its configured quota, as a filesystem would report it.
pub fn quota_usage(s: &drmesh_protocol::copies::LocationStatus) -> Option<StorageUsage> {
    let quota = s.report.quota_bytes?;
    let used = s.report.bytes_used?;
    Some(StorageUsage {
        name: format!("{} location {}", s.report.repository, s.report.name),
        free_bytes: quota.saturating_sub(used),
        total_bytes: quota,
    })
}

/// Watches the usage the agents report until the process ends.
pub async fn watch(coord: Arc<Coordinator>) {
    // Each repository's last verdict (`agent/name` → full), so the store is written
    // only on a change; unknown after a restart, when each is raised or resolved once.
    let mut known: HashMap<String, bool> = HashMap::new();
    let percent = coord.config.storage_full_percent;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if !coord.in_office() {
            continue;
        }
        let mut reports: Vec<(String, Option<RegionId>, Vec<StorageUsage>)> = coord
            .registry
            .lock()
            .agents()
            .filter_map(|e| {
                let hb = e.heartbeat.as_ref()?;
                Some((e.id.to_string(), Some(e.region.clone()), hb.storage.clone()))
            })
            .collect();
        // Object stores with a quota, as their agents' last replication rounds measured.
        for s in crate::ops::copies::statuses(coord.store.as_ref()) {
            if let Some(u) = quota_usage(&s) {
                reports.push((s.agent_id.clone(), None, vec![u]));
            }
        }
        for (agent, region, usage) in reports {
            for u in usage {
                let source = format!("{agent}/{}", u.name);
                let full = is_full(&u, percent);
                if known.get(&source) == Some(&full) {
                    continue;
                }
                let store = coord.store.as_ref();
                let done = if full {
                    alerts::raise(
                        store,
                        Severity::Critical,
                        STORAGE_FULL,
                        &source,
                        region.clone(),
                        message(&agent, &u),
                    )
                    .map(|(alert, new)| {
                        if new {
                            warn!(alert_id = %alert.id, %source, "CRITICAL alert raised: storage full")
                        }
                    })
                } else {
                    alerts::resolve_cleared(store, STORAGE_FULL, &source).map(|resolved| {
                        for a in resolved {
                            info!(alert_id = %a.id, %source, "alert resolved: storage below the threshold")
                        }
                    })
                };
                match done {
                    Ok(()) => {
                        known.insert(source, full);
                    }
                    Err(e) => error!(%source, error = %e, "storage alert"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(free: u64, total: u64) -> StorageUsage {
        StorageUsage {
            name: "local".into(),
            free_bytes: free,
            total_bytes: total,
        }
    }

    #[test]
    fn an_object_store_past_its_quota_share_is_full_like_a_disk() {
        use drmesh_protocol::copies::{LocationCopy, LocationStatus};
        let mut report =
            LocationCopy::in_sync("documents", "s3", "s3://b/p".into(), chrono::Utc::now());
        let status = |report: &LocationCopy| LocationStatus::next("docs-1", None, report.clone());
        assert!(
            quota_usage(&status(&report)).is_none(),
            "no quota, nothing to watch"
        );
        report.quota_bytes = Some(1_000);
        report.bytes_used = Some(950);
        let u = quota_usage(&status(&report)).expect("a quota and a measured use");
        assert_eq!((u.free_bytes, u.total_bytes), (50, 1_000));
        assert_eq!(u.name, "documents location s3");
        assert!(is_full(&u, 90));
        report.bytes_used = Some(2_000);
        let over = quota_usage(&status(&report)).expect("over the quota");
        assert_eq!(over.free_bytes, 0);
        assert!(is_full(&over, 90));
        report.bytes_used = Some(100);
        assert!(!is_full(&quota_usage(&status(&report)).expect("room"), 90));
    }

    #[test]
    fn full_at_the_threshold_and_the_message_says_what_to_do() {
        assert!(is_full(&usage(10, 100), 90));
        assert!(!is_full(&usage(11, 100), 90));
        assert!(!is_full(&usage(0, 0), 90), "an unknown size is not full");
        assert!(is_full(&usage(0, 100), 100));
        let m = message("docs-1", &usage(5_000_000, 100_000_000));
        assert!(
            m.starts_with("Storage Full: the local repository of agent docs-1 is 95% full"),
            "{m}"
        );
        assert!(m.contains("retention/enforce-policies"), "{m}");
    }
}
