//! Enforcing the retention policies on a repository: the pure rules of [`retention`]
//! applied to its snapshots and its WAL archive.
//!
//! - Snapshots are grouped by kind and source (a cluster's base backups, its logical
//!   dumps, a documents tree; all the base backups of a repository are one group, see
//!   [`group_key`]), and each group is planned with its kind's policy
//!   (`documents` for document snapshots, `database` for the rest). Incrementals are the
//!   base backups with a parent; the time is when the backup finished.
//! - Several repositories that hold one history between them (a document location with
//!   a date template: one repository per month) are planned as one
//!   ([`enforce_history`]): each group over the snapshots of all of them, each
//!   repository then applying the decisions about its own.
//! - The newest full of each group is always kept ([`Tier::Latest`]): enforcement never
//!   removes the last whole backup, whatever the policy says.
//! - `Delete`: the manifest is removed ([`Repository::forget`]); the chunks only it used
//!   are left for garbage collection.
//! - `Archive`: the snapshot is one the monthly or yearly tier keeps. With a cold archive
//!   ([`Repository::enforce_with_archive`], [`super::archive`]) it is written there as
//!   one object (its own WAL inside), read back, and only then forgotten here; the
//!   monthly and yearly tiers are planned over the hot and archived snapshots together
//!   ([`retention::plan_with_archive`]), and archived snapshots no tier keeps any more
//!   are deleted from the archive ([`retention::archive_expired`]). Without an archive
//!   (or when writing it fails) the snapshot stays in the repository (never deleted for
//!   want of an archive) and is reported as waiting for the archive; its own WAL (start
//!   to stop, and to its row counts' point) is kept with it.
//! - Then (not in a dry run) garbage collection ([`Repository::gc`]) deletes the packs
//!   no remaining snapshot references, safely beside a running backup.
//! - WAL: a segment goes when no base backup kept hot needs it for point-in-time
//!   recovery ([`retention::wal_to_delete`], across timelines from the archive's
//!   `.history` files) and no snapshot waiting for the archive needs it to be restored.
//!   History, `.partial` and `.backup` files stay.
//!
//! Architecture Invariant: a dry run writes and deletes nothing; a real run deletes only
//! manifests the plan deletes and WAL segments no kept backup needs, so running it again
//! at the same time deletes nothing more (idempotent), and a crash in the middle leaves
//! a repository whose every manifest still restores.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::archive::{ArchivedSnapshot, ColdArchive};
use super::backend::Removal;
use super::gc::GcOptions;
use super::retention::{self, Action, BaseBackupWal, Candidate, Kind, Tier};
use super::snapshot::{PgBackupInfo, SnapshotSummary};
use super::wal::wal_key;
use super::{RepoError, Repository};
use drmesh_pg::{WalKind, WalName};

pub use drmesh_protocol::retention::{
    EnforceReport, Kept, LockedSnapshot, RetentionPolicies as Policies,
};

/// A snapshot's place in the plan: an incremental is a base backup with a parent; every
/// other snapshot (a document snapshot reusing its parent's unchanged files too) is
/// whole by itself, a full.
fn candidate(s: &SnapshotSummary) -> Candidate {
    let incremental = s.kind == crate::snapshot::KIND_POSTGRES && s.parent.is_some();
    Candidate {
        id: s.id.clone(),
        kind: if incremental {
            Kind::Incremental
        } else {
            Kind::Full
        },
        time: s.finished_at,
    }
}

/// An archived snapshot's place in the plan, as [`candidate`] would have placed it hot.
fn archived_candidate(a: &ArchivedSnapshot) -> Candidate {
    let incremental = a.kind == crate::snapshot::KIND_POSTGRES && a.parent.is_some();
    Candidate {
        id: a.snapshot_id.clone(),
        kind: if incremental {
            Kind::Incremental
        } else {
            Kind::Full
        },
        time: a.finished_at,
    }
}

/// The group a snapshot is planned in: its kind and source, except that all base
/// backups are one group. A repository archives the WAL of one cluster only, and that
/// cluster's primary moves to another data directory when a failover promotes a standby:
/// the backups taken there continue the same history, and the last one taken before the
/// failover must not stay forever as the newest of a group of its own.
fn group_key(kind: &str, source: &Path) -> (String, PathBuf) {
    if kind == crate::snapshot::KIND_POSTGRES {
        (kind.to_string(), PathBuf::new())
    } else {
        (kind.to_string(), source.to_path_buf())
    }
}

/// The newest full of a group is kept hot whatever the policy says ([`Tier::Latest`]):
/// enforcement never removes the last whole backup.
fn keep_latest(mut plan: retention::Plan, candidates: &[Candidate]) -> retention::Plan {
    let newest = candidates
        .iter()
        .filter(|c| c.kind == Kind::Full)
        .max_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
    if let Some(newest) = newest {
        if let Some(d) = plan.decisions.iter_mut().find(|d| d.id == newest.id) {
            if d.action != Action::KeepHot {
                d.action = Action::KeepHot;
                d.reasons.push(Tier::Latest);
            }
        }
    }
    plan
}

/// The parent timelines a `.history` file lists, oldest first.
pub fn history_parents(text: &str) -> Vec<u32> {
    drmesh_pg::parse_history(text)
        .into_iter()
        .map(|(parent, _)| parent)
        .collect()
}

/// Where a base backup's WAL starts: its recorded start segment, or the one its start
/// LSN falls in.
fn start_segment(pg: &PgBackupInfo) -> Option<String> {
    if WalName::parse(&pg.start_wal).is_ok_and(|n| n.kind == WalKind::Segment) {
        return Some(pg.start_wal.clone());
    }
    pg.needed_wal().into_iter().next()
}

/// One repository's share of a plan made over a whole history.
struct Part<'a> {
    /// The decisions about its snapshots (and, for the first part, the archived
    /// snapshots no tier keeps any more).
    report: EnforceReport,
    /// Its base backups kept hot: point-in-time recovery from the oldest.
    hot_wal: Vec<BaseBackupWal>,
    /// The WAL of those awaiting the archive (their own only).
    archive_wal: BTreeSet<(u32, String)>,
    /// The monthly and yearly picks bound for the archive, when there is one.
    to_archive: Vec<(Kept, Option<&'a PgBackupInfo>)>,
}

impl Part<'_> {
    fn new(dry_run: bool, now: DateTime<Utc>) -> Self {
        Self {
            report: empty_report(dry_run, now),
            hot_wal: Vec::new(),
            archive_wal: BTreeSet::new(),
            to_archive: Vec::new(),
        }
    }
}

/// The report of an enforcement that has done nothing yet.
pub fn empty_report(dry_run: bool, now: DateTime<Utc>) -> EnforceReport {
    EnforceReport {
        dry_run,
        now,
        months: Vec::new(),
        kept: Vec::new(),
        awaiting_archive: Vec::new(),
        archived: Vec::new(),
        archive_deleted: Vec::new(),
        archive_errors: Vec::new(),
        deleted: Vec::new(),
        wal_deleted: Vec::new(),
        packs_deleted: 0,
        bytes_freed: 0,
        packs_pending: 0,
        gc_error: None,
        locked: Default::default(),
    }
}

/// Adds the report of one part of a history (see [`enforce_history`]) to `total`, the
/// history's: the lists one after the other (so oldest part first when added in
/// order), the counts summed, the latest lock end, `name` before its garbage
/// collection's error.
pub fn merge_report(total: &mut EnforceReport, name: &str, part: EnforceReport) {
    total.kept.extend(part.kept);
    total.awaiting_archive.extend(part.awaiting_archive);
    total.archived.extend(part.archived);
    total.archive_deleted.extend(part.archive_deleted);
    total.archive_errors.extend(part.archive_errors);
    total.deleted.extend(part.deleted);
    total.wal_deleted.extend(part.wal_deleted);
    total.packs_deleted += part.packs_deleted;
    total.bytes_freed += part.bytes_freed;
    total.packs_pending += part.packs_pending;
    let (locked, more) = (&mut total.locked, part.locked);
    locked.snapshots.extend(more.snapshots);
    locked.archived.extend(more.archived);
    locked.wal_segments += more.wal_segments;
    locked.packs += more.packs;
    locked.locked_until = locked.locked_until.max(more.locked_until);
    locked.refused.extend(more.refused);
    if let Some(e) = part.gc_error {
        let e = format!("{name}: {e}");
        total.gc_error = Some(match total.gc_error.take() {
            Some(before) => format!("{before}; {e}"),
            None => e,
        });
    }
}

/// Applies `policies` as of `now` to `parts`, repositories that hold one history between
/// them (a document location with a date template: one repository per month), moving
/// the monthly and yearly picks to `archive` when there is one. Each group (kind and
/// source) is planned once over the snapshots of every part, so the calendar tiers and
/// [`Tier::Latest`] see the whole history: a month's repository does not keep its own
/// newest snapshot for ever, and a week across two months keeps one. Then each part
/// carries out the decisions about its own snapshots (see the module notes); the
/// archived snapshots no tier keeps are listed, and removed, by the first part only.
/// One report per part, in order; a part that fails does not stop the others (the plan
/// decides about each snapshot alone, so the rest of it stays right).
pub async fn enforce_history(
    parts: &[Repository],
    policies: &Policies,
    now: DateTime<Utc>,
    dry_run: bool,
    archive: Option<&ColdArchive>,
) -> Result<Vec<Result<EnforceReport, RepoError>>, RepoError> {
    let mut listed = Vec::with_capacity(parts.len());
    for repo in parts {
        listed.push(repo.snapshots().await?);
    }
    let cold = match archive {
        Some(a) => a.list().await?,
        None => Vec::new(),
    };
    type Group<'a> = (Vec<(usize, &'a SnapshotSummary)>, Vec<&'a ArchivedSnapshot>);
    let mut groups: BTreeMap<(String, PathBuf), Group> = BTreeMap::new();
    for (i, snapshots) in listed.iter().enumerate() {
        for s in snapshots {
            groups
                .entry(group_key(&s.kind, &s.source))
                .or_default()
                .0
                .push((i, s));
        }
    }
    for a in &cold {
        groups
            .entry(group_key(&a.kind, &a.source))
            .or_default()
            .1
            .push(a);
    }
    let mut plans: Vec<Part> = parts.iter().map(|_| Part::new(dry_run, now)).collect();
    let mut archive_deleted = Vec::new();
    for ((kind, _), (members, archived)) in &groups {
        // A snapshot in two parts (a copy) is decided once, by the first.
        let mut by_id: BTreeMap<&str, (usize, &SnapshotSummary)> = BTreeMap::new();
        for (i, s) in members {
            by_id.entry(s.id.as_str()).or_insert((*i, *s));
        }
        let candidates: Vec<Candidate> = by_id.values().map(|(_, s)| candidate(s)).collect();
        let archived: Vec<Candidate> = archived.iter().map(|a| archived_candidate(a)).collect();
        let policy = policies.of(kind);
        let plan = keep_latest(
            retention::plan_with_archive(now, policy, &candidates, &archived),
            &candidates,
        );
        archive_deleted.extend(retention::archive_expired(
            now,
            policy,
            &candidates,
            &archived,
        ));
        for d in plan.decisions {
            let Some((i, s)) = by_id.get(d.id.as_str()) else {
                continue;
            };
            let part = &mut plans[*i];
            let kept = Kept {
                snapshot_id: d.id.clone(),
                kind: kind.clone(),
                finished_at: s.finished_at,
                reasons: d.reasons,
            };
            match d.action {
                Action::KeepHot => {
                    if let Some(pg) = &s.postgres {
                        if let Some(start_segment) = start_segment(pg) {
                            part.hot_wal.push(BaseBackupWal {
                                id: d.id.clone(),
                                timeline: pg.timeline,
                                start_segment,
                            });
                        }
                    }
                    part.report.kept.push(kept);
                }
                Action::Archive if archive.is_some() => {
                    part.to_archive.push((kept, s.postgres.as_ref()));
                }
                Action::Archive => {
                    if let Some(pg) = &s.postgres {
                        part.archive_wal
                            .extend(pg.needed_wal().into_iter().map(|n| (pg.timeline, n)));
                    }
                    part.report.awaiting_archive.push(kept);
                }
                Action::Delete => part.report.deleted.push(d.id),
            }
        }
    }
    if let Some(first) = plans.first_mut() {
        first.report.archive_deleted = archive_deleted;
    }
    let mut out = Vec::with_capacity(parts.len());
    for (repo, part) in parts.iter().zip(plans) {
        out.push(repo.apply(part, dry_run, archive).await);
    }
    Ok(out)
}

impl Repository {
    /// Removes one snapshot's manifest; its chunks stay until garbage collection.
    pub async fn forget(&self, id: &str) -> Result<(), RepoError> {
        // Checked to be a snapshot of this repository first.
        self.snapshot(id).await?;
        self.backend().delete(&format!("snapshots/{id}")).await
    }

    /// Applies `policies` as of `now` with no cold archive: see the module notes.
    pub async fn enforce(
        &self,
        policies: &Policies,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<EnforceReport, RepoError> {
        self.enforce_with_archive(policies, now, dry_run, None)
            .await
    }

    /// Applies `policies` as of `now`, moving the monthly and yearly picks to `archive`
    /// when there is one: see the module notes.
    pub async fn enforce_with_archive(
        &self,
        policies: &Policies,
        now: DateTime<Utc>,
        dry_run: bool,
        archive: Option<&ColdArchive>,
    ) -> Result<EnforceReport, RepoError> {
        let parts = std::slice::from_ref(self);
        match enforce_history(parts, policies, now, dry_run, archive)
            .await?
            .pop()
        {
            Some(report) => report,
            None => Err(RepoError::Io("enforcement made no report".into())),
        }
    }

    /// Carries out this repository's share of a plan (see [`enforce_history`]): the
    /// archive moves, the WAL, the manifests, the archived snapshots no tier keeps, then
    /// garbage collection.
    async fn apply(
        &self,
        part: Part<'_>,
        dry_run: bool,
        archive: Option<&ColdArchive>,
    ) -> Result<EnforceReport, RepoError> {
        let Part {
            mut report,
            hot_wal,
            mut archive_wal,
            mut to_archive,
        } = part;
        let now = report.now;
        // A write-once location: what is still locked stays (see [`super::immutable`]).
        let write_once = self.write_once(now).await?;
        if let Some(w) = &write_once {
            w.hold_snapshots(self, &mut report, &mut to_archive, &mut archive_wal)
                .await?;
        }

        // Archived before the WAL is reckoned: one that fails stays here with its WAL.
        if let Some(archive) = archive {
            for (kept, pg) in to_archive {
                if dry_run {
                    report.archived.push(kept);
                    continue;
                }
                match archive.archive(self, &kept.snapshot_id).await {
                    Ok(_) => {
                        if let Removal::Locked { until } =
                            self.forget_unless_locked(&kept.snapshot_id, now).await?
                        {
                            // Archived, and kept here too until the server lets it go.
                            let mut none = Vec::new();
                            self.hold_snapshot(&kept.snapshot_id, until, &mut report, &mut none)
                                .await?;
                            if let Some(pg) = pg {
                                archive_wal
                                    .extend(pg.needed_wal().into_iter().map(|n| (pg.timeline, n)));
                            }
                        }
                        info!(snapshot = %kept.snapshot_id, archive = %archive.describe(), "retention: snapshot moved to the cold archive");
                        report.archived.push(kept);
                    }
                    Err(e) => {
                        warn!(snapshot = %kept.snapshot_id, error = %e, "retention: could not archive; kept here");
                        report
                            .archive_errors
                            .push(format!("{}: {e}", kept.snapshot_id));
                        if let Some(pg) = pg {
                            archive_wal
                                .extend(pg.needed_wal().into_iter().map(|n| (pg.timeline, n)));
                        }
                        report.awaiting_archive.push(kept);
                    }
                }
            }
        }

        // WAL, with the timelines' ancestry from the archived history files.
        let archived = self.wal_files().await?;
        let mut histories: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (tl, name) in &archived {
            if WalName::parse(name).is_ok_and(|n| n.kind == WalKind::History) {
                let text = self.get_wal(*tl, name).await?;
                histories.insert(*tl, history_parents(&String::from_utf8_lossy(&text)));
            }
        }
        let doomed = retention::wal_to_delete(&hot_wal, &histories, &archived);
        let mut doomed: Vec<(u32, String)> = doomed
            .into_iter()
            .filter(|seg| !archive_wal.contains(seg))
            .collect();
        if let Some(w) = &write_once {
            w.hold_wal(self, &mut report, &mut doomed);
        }

        if !dry_run {
            let mut refused = Vec::new();
            for id in &report.deleted {
                match self.forget_unless_locked(id, now).await? {
                    Removal::Deleted => info!(snapshot = %id, "retention: snapshot deleted"),
                    Removal::Locked { until } => refused.push((id.clone(), until)),
                }
            }
            report
                .deleted
                .retain(|id| !refused.iter().any(|(r, _)| r == id));
            for (id, until) in refused {
                self.hold_snapshot(&id, until, &mut report, &mut doomed)
                    .await?;
            }
            let mut wal_held = Vec::new();
            for seg in &doomed {
                let key = wal_key(seg.0, &seg.1);
                if let Removal::Locked { until } =
                    self.backend().delete_unless_locked(&key, None, now).await?
                {
                    report.locked.wal_segments += 1;
                    report.locked.note(until);
                    if until.is_none() {
                        report.locked.refused.push(key);
                    }
                    wal_held.push(seg.clone());
                }
            }
            doomed.retain(|seg| !wal_held.contains(seg));
            if let Some(archive) = archive {
                let mut held = Vec::new();
                for id in &report.archive_deleted {
                    if let Removal::Locked { until } = archive.remove_unless_locked(id, now).await?
                    {
                        report.locked.note(until);
                        report.locked.archived.push(LockedSnapshot {
                            snapshot_id: id.clone(),
                            locked_until: until,
                        });
                        held.push(id.clone());
                    }
                }
                report.archive_deleted.retain(|id| !held.contains(id));
            }
            if !doomed.is_empty() {
                info!(
                    segments = doomed.len(),
                    "retention: WAL no kept backup needs deleted"
                );
            }
            // The deleted snapshots' chunks; a failure (another collection running, a
            // store error) leaves them for the next run.
            let gc = GcOptions {
                now: Some(now),
                ..GcOptions::default()
            };
            match self.gc(gc).await {
                Ok(gc) => {
                    report.packs_deleted = gc.packs_deleted;
                    report.bytes_freed = gc.bytes_freed;
                    report.packs_pending = gc.packs_pending;
                    report.locked.packs = gc.packs_locked;
                    report.locked.note(gc.locked_until);
                    report.locked.refused.extend(gc.refused);
                }
                Err(e) => report.gc_error = Some(e.to_string()),
            }
        }
        report.wal_deleted = doomed
            .into_iter()
            .map(|(tl, name)| format!("{tl}/{name}"))
            .collect();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::RetentionPolicy;
    use crate::roundtrip_tests::temp_repo;
    use crate::snapshot::{Snapshot, SnapshotStats};
    use chrono::TimeZone;

    fn segment(tl: u32, n: u64) -> String {
        format!("{tl:08X}{:08X}{:08X}", n >> 8, n & 0xff)
    }

    /// A base backup's manifest (no files: the rules look only at its summary), its
    /// WAL starting in segment `seg` of `tl`.
    async fn base_backup(
        repo: &Repository,
        id: &str,
        parent: Option<&str>,
        at: DateTime<Utc>,
        tl: u32,
        seg: u64,
    ) {
        let lsn = |n: u64| format!("{:X}/{:X}", n >> 8, (n & 0xff) << 24);
        let snap = Snapshot {
            id: id.into(),
            kind: crate::snapshot::KIND_POSTGRES.into(),
            parent: parent.map(String::from),
            source: "/var/lib/postgresql/15/main".into(),
            hostname: "db-1".into(),
            started_at: at,
            finished_at: at,
            tags: BTreeMap::new(),
            stats: SnapshotStats::default(),
            postgres: Some(PgBackupInfo {
                start_lsn: lsn(seg),
                stop_lsn: format!("{:X}/{:X}", seg >> 8, ((seg & 0xff) << 24) + 0x100),
                timeline: tl,
                start_wal: segment(tl, seg),
                stop_wal: segment(tl, seg),
                wal_segment_size: 16 << 20,
                system_identifier: "7".into(),
                server_version: 150000,
                stopped_at: at,
                tablespace_map: None,
                row_counts: None,
            }),
            entries: Vec::new(),
        };
        repo.put_doc(&format!("snapshots/{id}"), &snap)
            .await
            .expect("manifest");
    }

    async fn wal(repo: &Repository, tl: u32, name: &str) {
        repo.put_wal(tl, name, name.as_bytes()).await.expect("wal");
    }

    async fn wal_names(repo: &Repository) -> Vec<String> {
        repo.wal_files()
            .await
            .expect("wal")
            .into_iter()
            .map(|(tl, n)| format!("{tl}/{n}"))
            .collect()
    }

    #[tokio::test]
    async fn sixty_days_of_backups_keep_what_the_plan_keeps_and_wal_from_the_oldest_kept() {
        let (_dir, repo) = temp_repo().await;
        let now = Utc
            .with_ymd_and_hms(2026, 12, 2, 12, 0, 0)
            .single()
            .expect("now");
        // A full every day at 01:00 (WAL segment 10 * day), an incremental at 13:00.
        for day in 0..60u64 {
            let at = now - chrono::Duration::days(60 - day as i64) - chrono::Duration::hours(11);
            base_backup(&repo, &format!("full_{day:03}"), None, at, 1, 10 * day + 1).await;
            let at = at + chrono::Duration::hours(12);
            let parent = format!("full_{day:03}");
            base_backup(
                &repo,
                &format!("incr_{day:03}"),
                Some(&parent),
                at,
                1,
                10 * day + 5,
            )
            .await;
            for n in 10 * day + 1..10 * day + 11 {
                wal(&repo, 1, &segment(1, n)).await;
            }
        }
        let policies = Policies::default();
        let all: Vec<Candidate> = repo
            .snapshots()
            .await
            .expect("list")
            .iter()
            .map(candidate)
            .collect();
        let plan = retention::plan(now, &policies.database, &all);
        let deleted_by_plan: Vec<String> = plan
            .with_action(Action::Delete)
            .map(|d| d.id.clone())
            .collect();

        let dry = repo.enforce(&policies, now, true).await.expect("dry run");
        assert_eq!(dry.deleted, deleted_by_plan);
        assert_eq!(
            repo.snapshots().await.expect("list").len(),
            120,
            "dry: nothing gone"
        );
        assert_eq!(wal_names(&repo).await.len(), 600, "dry: no WAL gone");

        let done = repo.enforce(&policies, now, false).await.expect("enforce");
        assert_eq!(done.deleted, deleted_by_plan);
        assert_eq!(done.wal_deleted, dry.wal_deleted);
        let left: BTreeSet<String> = repo
            .snapshots()
            .await
            .expect("list")
            .into_iter()
            .map(|s| s.id)
            .collect();
        let expected: BTreeSet<String> = plan
            .decisions
            .iter()
            .filter(|d| d.action != Action::Delete)
            .map(|d| d.id.clone())
            .collect();
        assert_eq!(left, expected);
        // Within 60 days the weekly tier reaches furthest back among the hot ones; the
        // monthly picks beyond it wait for the archive with their own segment.
        let oldest_hot = done
            .kept
            .iter()
            .map(|k| k.snapshot_id.clone())
            .min()
            .expect("kept");
        let day: u64 = oldest_hot[5..].parse().expect("day");
        let remaining = wal_names(&repo).await;
        for n in 1..=600u64 {
            let name = format!("1/{}", segment(1, n));
            let archive_own = done
                .awaiting_archive
                .iter()
                .any(|k| k.snapshot_id == format!("full_{:03}", (n - 1) / 10) && n % 10 == 1);
            assert_eq!(
                remaining.contains(&name),
                n > 10 * day || archive_own,
                "{name}: oldest hot full is day {day}"
            );
        }
        assert!(!done.awaiting_archive.is_empty());
        assert!(done.awaiting_archive.iter().all(|k| k
            .reasons
            .iter()
            .all(|r| matches!(r, Tier::Monthly | Tier::Yearly))));

        // Idempotent.
        let again = repo.enforce(&policies, now, false).await.expect("again");
        assert!(again.deleted.is_empty(), "{:?}", again.deleted);
        assert!(again.wal_deleted.is_empty(), "{:?}", again.wal_deleted);
    }

    #[tokio::test]
    async fn after_a_failover_wal_is_kept_from_the_oldest_hot_backup_on_both_timelines() {
        let (_dir, repo) = temp_repo().await;
        let now = Utc
            .with_ymd_and_hms(2026, 12, 2, 12, 0, 0)
            .single()
            .expect("now");
        let days = |d: i64| now - chrono::Duration::days(d);
        // Timeline 1 until a failover 3 days ago, timeline 2 since: the backup on the
        // higher timeline is the newest, and the oldest one only the monthly tier keeps.
        base_backup(&repo, "full_old", None, days(200), 1, 1).await;
        base_backup(&repo, "full_tl1", None, days(5), 1, 20).await;
        base_backup(&repo, "full_tl2", None, days(1), 2, 30).await;
        for n in 1..=29 {
            wal(&repo, 1, &segment(1, n)).await;
        }
        repo.put_wal(
            2,
            "00000002.history",
            b"1\t0/1C000000\tno recovery target specified\n",
        )
        .await
        .expect("history");
        for n in 28..=31 {
            wal(&repo, 2, &segment(2, n)).await;
        }
        let done = repo
            .enforce(&Policies::default(), now, false)
            .await
            .expect("enforce");
        let kept: Vec<&str> = done.kept.iter().map(|k| k.snapshot_id.as_str()).collect();
        assert_eq!(kept, ["full_tl1", "full_tl2"]);
        assert_eq!(done.awaiting_archive[0].snapshot_id, "full_old");
        assert_eq!(done.awaiting_archive[0].reasons, [Tier::Monthly]);
        assert!(done.deleted.is_empty());
        let remaining = wal_names(&repo).await;
        for n in 1..=29u64 {
            let name = format!("1/{}", segment(1, n));
            // full_old's own segment, then everything from full_tl1's start.
            assert_eq!(remaining.contains(&name), n == 1 || n >= 20, "{name}");
        }
        for n in 28..=31 {
            assert!(remaining.contains(&format!("2/{}", segment(2, n))));
        }
        assert!(remaining.contains(&"2/00000002.history".to_string()));
        assert_eq!(histories_of(&repo).await.get(&2), Some(&vec![1]));
    }

    #[tokio::test]
    async fn a_failover_to_another_data_directory_does_not_keep_the_old_primarys_last_backup() {
        let (_dir, repo) = temp_repo().await;
        let now = Utc
            .with_ymd_and_hms(2026, 12, 2, 12, 0, 0)
            .single()
            .expect("now");
        let days = |d: i64| now - chrono::Duration::days(d);
        // The old primary's last backup, on timeline 1, then the promoted standby's (in
        // its own data directory), on timeline 2.
        base_backup(&repo, "full_primary", None, days(40), 1, 10).await;
        base_backup(&repo, "full_standby", None, days(1), 2, 30).await;
        let mut moved = repo.snapshot("full_standby").await.expect("manifest");
        moved.source = "/srv/standby/15/main".into();
        repo.put_doc("snapshots/full_standby", &moved)
            .await
            .expect("manifest");
        let policies = Policies {
            database: RetentionPolicy {
                weekly: 0,
                monthly: 0,
                yearly: 0,
                ..RetentionPolicy::default()
            },
            ..Policies::default()
        };
        let done = repo.enforce(&policies, now, false).await.expect("enforce");
        assert_eq!(done.deleted, ["full_primary"]);
        let kept: Vec<&str> = done.kept.iter().map(|k| k.snapshot_id.as_str()).collect();
        assert_eq!(kept, ["full_standby"]);
        assert_eq!(done.kept[0].reasons, [Tier::Daily]);
    }

    async fn histories_of(repo: &Repository) -> BTreeMap<u32, Vec<u32>> {
        let mut out = BTreeMap::new();
        for (tl, name) in repo.wal_files().await.expect("wal") {
            if name.ends_with(".history") {
                let text = repo.get_wal(tl, &name).await.expect("history");
                out.insert(tl, history_parents(&String::from_utf8_lossy(&text)));
            }
        }
        out
    }

    #[test]
    fn the_newest_full_is_kept_whatever_the_policy() {
        let now = Utc
            .with_ymd_and_hms(2026, 12, 2, 12, 0, 0)
            .single()
            .expect("now");
        let full = |id: &str, days: i64| Candidate {
            id: id.into(),
            kind: Kind::Full,
            time: now - chrono::Duration::days(days),
        };
        let cands = [full("a", 900), full("b", 800), full("c", 700)];
        let none = RetentionPolicy {
            weekly: 0,
            monthly: 0,
            yearly: 0,
            ..RetentionPolicy::default()
        };
        let plan = keep_latest(retention::plan(now, &none, &cands), &cands);
        let actions: Vec<(&str, Action, Vec<Tier>)> = plan
            .decisions
            .iter()
            .map(|d| (d.id.as_str(), d.action, d.reasons.clone()))
            .collect();
        assert_eq!(
            actions,
            [
                ("a", Action::Delete, vec![]),
                ("b", Action::Delete, vec![]),
                ("c", Action::KeepHot, vec![Tier::Latest]),
            ]
        );
    }

    /// A document snapshot's manifest (no files: the rules look only at its summary).
    async fn document(repo: &Repository, id: &str, at: DateTime<Utc>) {
        let snap = Snapshot {
            id: id.into(),
            kind: drmesh_protocol::retention::DOCUMENTS_KIND.into(),
            parent: None,
            source: "/srv/uploads".into(),
            hostname: "docs-1".into(),
            started_at: at,
            finished_at: at,
            tags: BTreeMap::new(),
            stats: SnapshotStats::default(),
            postgres: None,
            entries: Vec::new(),
        };
        repo.put_doc(&format!("snapshots/{id}"), &snap)
            .await
            .expect("manifest");
    }

    /// One repository per month under `dir` (as a `{yyyy}/{mm}` location makes them),
    /// oldest first, holding a document snapshot `docs-<day>` at 03:00 of every day from
    /// `first` to `last`.
    async fn months_of_daily_documents(
        dir: &Path,
        first: chrono::NaiveDate,
        last: chrono::NaiveDate,
    ) -> Vec<(String, Repository)> {
        use crate::{KeySource, Location, RepoOptions};
        let mut months: Vec<(String, Repository)> = Vec::new();
        let mut day = first;
        while day <= last {
            let month = day.format("%Y/%m").to_string();
            if months.last().map(|(m, _)| m) != Some(&month) {
                let opts = RepoOptions {
                    location: Location::new(dir.join(&month).to_string_lossy()),
                    key: KeySource::None,
                };
                let repo = Repository::init(&opts).await.expect("init");
                months.push((month, repo));
            }
            let at = Utc.from_utc_datetime(&day.and_hms_opt(3, 0, 0).expect("03:00"));
            if let Some((_, repo)) = months.last() {
                document(repo, &format!("docs-{day}"), at).await;
            }
            day = day.succ_opt().expect("next day");
        }
        months
    }

    fn date(s: &str) -> chrono::NaiveDate {
        s.parse().expect("date")
    }

    fn ids_of(kept: &[Kept]) -> BTreeSet<String> {
        kept.iter().map(|k| k.snapshot_id.clone()).collect()
    }

    async fn left(repo: &Repository) -> BTreeSet<String> {
        repo.snapshots()
            .await
            .expect("list")
            .into_iter()
            .map(|s| s.id)
            .collect()
    }

    /// What `policy` keeps of document snapshots (all fulls) at `times`, computed
    /// directly from the calendar: (kept hot, archived); the rest is deleted.
    fn keeps(
        now: DateTime<Utc>,
        policy: &RetentionPolicy,
        times: &BTreeMap<String, DateTime<Utc>>,
    ) -> (BTreeSet<String>, BTreeSet<String>) {
        use chrono::Datelike;
        let newest_where = |pred: &dyn Fn(DateTime<Utc>) -> bool| -> Option<String> {
            times
                .iter()
                .filter(|(_, t)| **t <= now && pred(**t))
                .max_by_key(|(id, t)| (**t, (*id).clone()))
                .map(|(id, _)| id.clone())
        };
        let full = chrono::Duration::from_std(policy.full).expect("full");
        let mut hot: BTreeSet<String> = times
            .iter()
            .filter(|(_, t)| now - **t < full)
            .map(|(id, _)| id.clone())
            .collect();
        for w in 0..policy.weekly {
            let week = (now - chrono::Duration::weeks(i64::from(w))).iso_week();
            hot.extend(newest_where(&|t| t.iso_week() == week));
        }
        hot.extend(newest_where(&|_| true));
        let mut archived = BTreeSet::new();
        let mut month = (now.year(), now.month());
        for _ in 0..policy.monthly {
            archived.extend(newest_where(&|t| (t.year(), t.month()) == month));
            month = if month.1 == 1 {
                (month.0 - 1, 12)
            } else {
                (month.0, month.1 - 1)
            };
        }
        for y in 0..policy.yearly {
            let year = now.year() - y as i32;
            archived.extend(newest_where(&|t| t.year() == year));
        }
        let archived = archived.difference(&hot).cloned().collect();
        (hot, archived)
    }

    #[tokio::test]
    async fn month_repositories_are_planned_as_one_history() {
        // 2026-03-04 is a Wednesday; the week before it runs from Monday 23 February to
        // Sunday 1 March.
        let dir = tempfile::tempdir().expect("tempdir");
        let months =
            months_of_daily_documents(dir.path(), date("2026-01-01"), date("2026-03-04")).await;
        let now = Utc
            .with_ymd_and_hms(2026, 3, 4, 12, 0, 0)
            .single()
            .expect("now");
        let policies = Policies {
            documents: RetentionPolicy {
                full: std::time::Duration::from_secs(3 * 24 * 3600),
                incremental: std::time::Duration::from_secs(3600),
                weekly: 2,
                monthly: 0,
                yearly: 0,
            },
            ..Policies::default()
        };
        let parts: Vec<Repository> = months.iter().map(|(_, r)| r.clone()).collect();
        // Each month on its own would keep its newest (latest), and February's Saturday
        // as the newest of the week across the two months besides March's Sunday.
        let alone = parts[0].enforce(&policies, now, true).await.expect("alone");
        assert_eq!(ids_of(&alone.kept), ["docs-2026-01-31".to_string()].into());
        assert_eq!(alone.kept[0].reasons, [Tier::Latest]);
        let alone = parts[1].enforce(&policies, now, true).await.expect("alone");
        assert_eq!(ids_of(&alone.kept), ["docs-2026-02-28".to_string()].into());
        assert_eq!(alone.kept[0].reasons, [Tier::Weekly]);

        let reports: Vec<EnforceReport> = enforce_history(&parts, &policies, now, false, None)
            .await
            .expect("enforce")
            .into_iter()
            .map(|r| r.expect("month"))
            .collect();
        // One snapshot for the week across February and March (Sunday's, in March), and
        // no month keeps its own newest: January and February are emptied.
        assert_eq!(left(&parts[0]).await, BTreeSet::new());
        assert_eq!(left(&parts[1]).await, BTreeSet::new());
        assert_eq!(
            left(&parts[2]).await,
            [
                "docs-2026-03-01",
                "docs-2026-03-02",
                "docs-2026-03-03",
                "docs-2026-03-04"
            ]
            .map(String::from)
            .into()
        );
        assert!(reports[1].deleted.contains(&"docs-2026-02-28".to_string()));
        assert_eq!(reports[0].deleted.len(), 31);
        assert_eq!(reports[2].kept[0].reasons, [Tier::Weekly]);
        assert!(reports.iter().all(|r| r.awaiting_archive.is_empty()));
    }

    #[tokio::test]
    async fn fifteen_months_of_month_repositories_keep_and_archive_what_the_policy_defines() {
        use crate::archive::ArchiveOptions;
        use crate::{KeySource, Location};
        let dir = tempfile::tempdir().expect("tempdir");
        let months =
            months_of_daily_documents(dir.path(), date("2025-10-01"), date("2026-12-02")).await;
        assert_eq!(months.len(), 15);
        let cold = ColdArchive::open(&ArchiveOptions {
            location: Location::new(dir.path().join("cold").to_string_lossy()),
            key: KeySource::None,
            storage_class: None,
        })
        .await
        .expect("archive");
        let now = Utc
            .with_ymd_and_hms(2026, 12, 2, 12, 0, 0)
            .single()
            .expect("now");
        let policy = RetentionPolicy {
            full: std::time::Duration::from_secs(14 * 24 * 3600),
            incremental: std::time::Duration::from_secs(24 * 3600),
            weekly: 4,
            monthly: 6,
            yearly: 2,
        };
        let policies = Policies {
            documents: policy.clone(),
            ..Policies::default()
        };
        let parts: Vec<Repository> = months.iter().map(|(_, r)| r.clone()).collect();
        let mut times: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        let mut home: BTreeMap<String, usize> = BTreeMap::new();
        for (i, repo) in parts.iter().enumerate() {
            for s in repo.snapshots().await.expect("list") {
                home.insert(s.id.clone(), i);
                times.insert(s.id, s.finished_at);
            }
        }
        let (hot, archived) = keeps(now, &policy, &times);
        let deleted: BTreeSet<String> = times
            .keys()
            .filter(|id| !hot.contains(*id) && !archived.contains(*id))
            .cloned()
            .collect();
        // By hand: the last 14 days, the newest of each of the 4 weeks (one before
        // them: Sunday 15 November), the newest of July to October and of 2025.
        assert_eq!(hot.len(), 14 + 1);
        assert_eq!(
            archived,
            [
                "docs-2025-12-31",
                "docs-2026-07-31",
                "docs-2026-08-31",
                "docs-2026-09-30",
                "docs-2026-10-31"
            ]
            .map(String::from)
            .into()
        );

        let run = |now: DateTime<Utc>, dry_run: bool| {
            let (parts, policies, cold) = (&parts, &policies, &cold);
            async move {
                enforce_history(parts, policies, now, dry_run, Some(cold))
                    .await
                    .expect("enforce")
                    .into_iter()
                    .map(|r| r.expect("month"))
                    .collect::<Vec<EnforceReport>>()
            }
        };
        let union = |reports: &[EnforceReport], f: fn(&EnforceReport) -> BTreeSet<String>| {
            reports.iter().flat_map(f).collect::<BTreeSet<String>>()
        };
        let check = |reports: &[EnforceReport]| {
            assert_eq!(union(reports, |r| ids_of(&r.kept)), hot);
            assert_eq!(union(reports, |r| ids_of(&r.archived)), archived);
            assert_eq!(
                union(reports, |r| r.deleted.iter().cloned().collect()),
                deleted
            );
            // Each month decides about its own snapshots only.
            for (i, r) in reports.iter().enumerate() {
                for id in ids_of(&r.kept)
                    .iter()
                    .chain(&ids_of(&r.archived))
                    .chain(&r.deleted)
                {
                    assert_eq!(home[id], i, "{id}");
                }
            }
        };

        let dry = run(now, true).await;
        check(&dry);
        assert!(
            cold.list().await.expect("list").is_empty(),
            "dry: nothing archived"
        );
        for (i, repo) in parts.iter().enumerate() {
            let own: BTreeSet<String> = home
                .iter()
                .filter(|(_, m)| **m == i)
                .map(|(id, _)| id.clone())
                .collect();
            assert_eq!(left(repo).await, own, "dry: nothing gone");
        }

        let done = run(now, false).await;
        check(&done);
        for (i, repo) in parts.iter().enumerate() {
            let own: BTreeSet<String> = hot.iter().filter(|id| home[*id] == i).cloned().collect();
            assert_eq!(left(repo).await, own, "{}", months[i].0);
        }
        let in_archive: BTreeSet<String> = cold
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|a| a.snapshot_id)
            .collect();
        assert_eq!(in_archive, archived);

        // Idempotent.
        let again = run(now, false).await;
        assert_eq!(union(&again, |r| ids_of(&r.kept)), hot);
        for r in &again {
            assert!(r.deleted.is_empty() && r.archived.is_empty() && r.archive_deleted.is_empty());
        }

        // Three years on, with no backup since: the newest stays (latest), everything
        // else goes, and the archive lets its snapshots go once.
        let later = now + chrono::Duration::days(3 * 366);
        let gone = run(later, false).await;
        assert_eq!(gone[0].archive_deleted.len(), archived.len());
        assert!(gone[1..].iter().all(|r| r.archive_deleted.is_empty()));
        assert!(cold.list().await.expect("list").is_empty());
        let last = parts.len() - 1;
        assert_eq!(
            left(&parts[last]).await,
            BTreeSet::from(["docs-2026-12-02".to_string()])
        );
        assert_eq!(gone[last].kept[0].reasons, [Tier::Latest]);
        for repo in &parts[..last] {
            assert!(left(repo).await.is_empty());
        }
    }

    #[test]
    fn the_reports_of_a_history_s_parts_add_up() {
        let now = Utc
            .with_ymd_and_hms(2026, 12, 2, 12, 0, 0)
            .single()
            .expect("now");
        let mut november = empty_report(false, now);
        november.deleted = vec!["a".into()];
        november.bytes_freed = 5;
        november.locked.packs = 1;
        november.locked.locked_until = Some(now + chrono::Duration::days(2));
        let mut december = empty_report(false, now);
        december.deleted = vec!["b".into()];
        december.bytes_freed = 7;
        december.gc_error = Some("busy".into());
        december.locked.locked_until = Some(now + chrono::Duration::days(1));
        let mut total = empty_report(false, now);
        merge_report(&mut total, "2026/11", november);
        merge_report(&mut total, "2026/12", december);
        assert_eq!(total.deleted, ["a", "b"]);
        assert_eq!(total.bytes_freed, 12);
        assert_eq!(total.gc_error.as_deref(), Some("2026/12: busy"));
        assert_eq!(total.locked.packs, 1);
        assert_eq!(
            total.locked.locked_until,
            Some(now + chrono::Duration::days(2))
        );
    }

    #[test]
    fn history_files_list_their_parent_timelines() {
        assert_eq!(
            history_parents(
                "1\t0/3000000\tno recovery target specified\n2\t0/5000000\tbefore 2026-01-01\n"
            ),
            vec![1, 2]
        );
        assert!(history_parents("").is_empty());
    }
}
