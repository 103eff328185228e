//! Garbage collection: deleting the packs no snapshot references any more, safely
//! against backups running at the same time and against a crash at any point.
//!
//! One run ([`Repository::gc`]) goes through these steps, holding a `gc` lock so two
//! collections never overlap:
//!
//! 1. **Mark**: every snapshot manifest is read (only the set of chunk ids it references
//!    is kept), then every index object, giving the packs that hold a referenced chunk.
//! 2. **Schedule**: the other packs in `data/` are added to `gc/pending` as a new batch,
//!    not yet sealed. Pending packs that are referenced again leave it.
//! 3. **Seal**: the locks in `locks/` are listed *after* that write; their keys become the
//!    batch's blockers and the time is its T1.
//! 4. **Sweep** (this run or a later one): a batch is ripe when each of its blockers is
//!    gone or stale (not refreshed for [`GcOptions::stale_lock`]). The snapshots and the
//!    index are then marked again; a ripe pack still unreferenced is dropped from the
//!    index (one new `index/gc-…` object replaces the index objects that listed it, which
//!    are then deleted) and deleted; a ripe pack referenced again leaves `gc/pending`
//!    untouched. `gc/pending` goes when it is empty.
//!
//! `config`, `snapshots/` and `wal/` are never written or deleted here.
//!
//! Architecture Invariant: a pack a running writer may reference is never deleted. A
//! writer deduplicates only against its in-memory index and takes its lock before it
//! stores anything; right after storing the lock it reads `gc/pending`, then lists
//! `data/`, and forgets every pending or missing pack ([`Repository::lock`]). Take a pack
//! X deleted by a sweep, and a writer W:
//! - W's lock was stored before X's batch was sealed: the seal's listing holds it, and X
//!   is deleted only once that lock is released (W is done: its manifest, if any, is
//!   written, and the sweep's mark that follows sees it) or stale (W is dead).
//! - W's lock was stored after the seal's listing, which comes after X was written to
//!   `gc/pending`: W's read of `gc/pending` lists X (X leaves it only after it is
//!   deleted, and then W's listing of `data/` misses X), so W forgot X before it could
//!   deduplicate against it.
//!
//! Packs a writer uploads after it stored its lock are not in the mark's listing when its
//! lock is not in the seal's: a pack is scheduled only if it was listed before the seal.
//! No writer stores a pack under a scheduled pack's name: every upload's name is its own
//! ([`pack::PackBuilder::finish`] salts it). As a second guard, each pending pack keeps
//! its last-modified time and a pack stored again since is not deleted.
//! And a manifest written before a sweep's mark is seen by it: manifests are read before
//! index objects, and a writer stores its index object before its manifest.
//!
//! Architecture Invariant: a crash at any point is harmless, and the next run finishes
//! the job. Every step is written before the next acts on it: a batch is in `gc/pending`
//! before its blockers are listed (an unsealed batch is sealed by the next run, with a
//! fresh listing); the replacing index object is stored before the index objects it
//! replaces are deleted (a crash leaves duplicate entries for the same locations); those
//! are deleted before the packs (no index names a deleted pack); the packs before they
//! leave `gc/pending` (a rerun deletes them again: deleting a missing object succeeds).
//! A rerun marks afresh, so nothing a snapshot references is deleted whatever a crashed
//! run left behind.
//!
//! On a write-once location (`immutable_for`, see [`super::backend`]) nothing is deleted
//! before its lock ends, and no key is written twice: a ripe pack whose own lock, or
//! that of an index object listing it, has not ended stays in `gc/pending` for a later
//! run (so no index names a deleted pack, as above); `gc/pending` is written as
//! generations `gc/pending.<n>` (the highest is in force; older ones go once unlocked);
//! locks are released by a marker and their objects deleted here once unlocked
//! ([`Repository::put_lock`]). A delete the server refuses is a lock, never a deletion.
//!
//! Limits: a pack with any referenced chunk is kept whole (no repacking); a chunk no
//! snapshot references stays indexed (and deduplicable) while its pack is kept; a
//! duplicate copy of a referenced chunk in a scheduled pack is deleted, so a restore that
//! loaded its index before the sweep may find that pack missing and must be retried.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::backend::Removal;
use super::pack::{self, ChunkId, IndexEntry};
use super::{object_name, pack_key, LockDoc, RepoError, RepoLock, Repository, LOCK_STALE_AFTER};

/// The object holding the packs scheduled for deletion; on a write-once location the
/// generations `gc/pending.<n>` instead, the highest in force.
const PENDING_KEY: &str = "gc/pending";

/// The purpose a collection's lock gives.
const GC_PURPOSE: &str = "gc";

/// How often a sweep that waits for locks looks at them again.
const LOCK_POLL: Duration = Duration::from_secs(1);

/// How a collection runs.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Work out what would happen; write and delete nothing.
    pub dry_run: bool,
    /// A lock not refreshed for this long is taken for a dead writer's.
    pub stale_lock: Duration,
    /// How long the sweep waits for the locks that keep pending packs (0: not at all; the
    /// packs stay pending for a later run).
    pub wait_for_locks: Duration,
    /// The instant write-once locks are judged at (default: the clock); enforcement
    /// passes the instant it applies the policy as of.
    pub now: Option<DateTime<Utc>>,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            stale_lock: LOCK_STALE_AFTER,
            wait_for_locks: Duration::ZERO,
            now: None,
        }
    }
}

/// What a collection did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub dry_run: bool,
    pub snapshots_read: u64,
    pub chunks_referenced: u64,
    /// Packs in the repository when it was marked.
    pub packs_total: u64,
    /// Packs holding a referenced chunk.
    pub packs_kept: u64,
    /// Packs newly scheduled for deletion by this run.
    pub packs_scheduled: u64,
    /// Packs still scheduled at the end (waiting for locks).
    pub packs_pending: u64,
    pub packs_deleted: u64,
    pub bytes_freed: u64,
    /// Index objects replaced by the one new index object.
    pub index_objects_rewritten: u64,
    /// Live locks that kept scheduled packs from being deleted, when the sweep gave up.
    pub blocking_locks: u64,
    /// Whether the sweep waited for locks.
    pub waited_for_locks: bool,
    /// On a write-once location: unreferenced packs kept scheduled because their lock,
    /// or that of an index object listing them, has not ended (or the server refused).
    pub packs_locked: u64,
    /// When the last of those locks ends, as far as drmesh knows.
    pub locked_until: Option<DateTime<Utc>>,
    /// Objects whose delete the server refused on a write-once location.
    pub refused: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

/// `gc/pending`: the packs scheduled for deletion, in batches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PendingDoc {
    batches: Vec<Batch>,
}

/// Packs scheduled together, deleted once every lock that existed when they were sealed
/// is gone or stale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Batch {
    /// T1: when the batch was sealed (when it was written, while it is unsealed).
    scheduled: DateTime<Utc>,
    /// The lock objects listed after the batch was stored; `None` until then (a run that
    /// crashed before sealing it).
    blockers: Option<Vec<String>>,
    packs: Vec<PendingPack>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PendingPack {
    name: String,
    size: u64,
    /// Its last-modified time when it was scheduled: a writer that did not deduplicate
    /// against it may store the very same pack again (an unencrypted pack's name is a
    /// hash of the chunks it holds), and a pack stored again is not deleted.
    stored: DateTime<Utc>,
}

impl PendingDoc {
    fn names(&self) -> HashSet<&str> {
        self.batches
            .iter()
            .flat_map(|b| b.packs.iter().map(|p| p.name.as_str()))
            .collect()
    }

    fn pack_count(&self) -> u64 {
        self.batches.iter().map(|b| b.packs.len() as u64).sum()
    }

    /// Drops the packs `gone` names, and the batches left empty.
    fn remove(&mut self, gone: &HashSet<String>) {
        for b in &mut self.batches {
            b.packs.retain(|p| !gone.contains(&p.name));
        }
        self.batches.retain(|b| !b.packs.is_empty());
    }
}

/// What a mark found.
struct Mark {
    snapshots: u64,
    chunks: u64,
    /// Packs holding at least one referenced chunk.
    used: HashSet<String>,
    /// Every pack, with its size and last-modified time.
    packs: HashMap<String, (u64, DateTime<Utc>)>,
}

/// The locks in the repository: key → (last stored, stale).
type Locks = HashMap<String, (DateTime<Utc>, bool)>;

/// One lock's objects ([`Repository::lock_groups`]).
struct LockGroup {
    /// When the newest of its objects was stored: its last refresh.
    stored: DateTime<Utc>,
    /// Its release marker exists (write-once locations).
    released: bool,
    objects: Vec<(String, DateTime<Utc>)>,
}

/// Where a run stops (tests stop early to leave what a crash would).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// `gc/pending` holds the new batch, unsealed.
    Scheduled,
    /// The batch is sealed.
    Sealed,
    /// The sweep's new index object is stored and the ones it replaces deleted; no pack
    /// is deleted yet.
    Reindexed,
    Done,
}

impl Repository {
    /// Deletes the packs no snapshot references, in two phases (see the module
    /// documentation): they are scheduled first and deleted once no writer that might
    /// still reference them is at work.
    pub async fn gc(&self, opts: GcOptions) -> Result<GcReport, RepoError> {
        self.gc_until(&opts, Step::Done).await
    }

    async fn gc_until(&self, opts: &GcOptions, stop: Step) -> Result<GcReport, RepoError> {
        let started = Instant::now();
        let lock = if opts.dry_run {
            None
        } else {
            Some(self.gc_lock(opts).await?)
        };
        let result = self.collect(opts, lock.as_ref(), stop).await;
        if let Some(lock) = lock {
            if stop == Step::Done || result.is_err() {
                lock.release().await;
            } else {
                // Stopped early as a crash would: the lock is left to go stale.
                drop(lock);
            }
        }
        let mut report = result?;
        report.duration = started.elapsed();
        info!(
            dry_run = report.dry_run,
            snapshots = report.snapshots_read,
            scheduled = report.packs_scheduled,
            deleted = report.packs_deleted,
            pending = report.packs_pending,
            bytes_freed = report.bytes_freed,
            "garbage collection finished"
        );
        Ok(report)
    }

    async fn collect(
        &self,
        opts: &GcOptions,
        lock: Option<&RepoLock>,
        stop: Step,
    ) -> Result<GcReport, RepoError> {
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..GcReport::default()
        };
        let mut pending = self.read_pending().await?;

        // Mark and schedule.
        let mark = self.mark(&pending.names()).await?;
        report.snapshots_read = mark.snapshots;
        report.chunks_referenced = mark.chunks;
        report.packs_total = mark.packs.len() as u64;
        report.packs_kept = mark
            .used
            .iter()
            .filter(|p| mark.packs.contains_key(*p))
            .count() as u64;
        let referenced_again: HashSet<String> = pending
            .names()
            .into_iter()
            .filter(|n| mark.used.contains(*n))
            .map(str::to_string)
            .collect();
        pending.remove(&referenced_again);
        let already = pending.names();
        let mut fresh: Vec<PendingPack> = mark
            .packs
            .iter()
            .filter(|(name, _)| !mark.used.contains(*name) && !already.contains(name.as_str()))
            .map(|(name, (size, stored))| PendingPack {
                name: name.clone(),
                size: *size,
                stored: *stored,
            })
            .collect();
        fresh.sort_by(|a, b| a.name.cmp(&b.name));
        report.packs_scheduled = fresh.len() as u64;
        if !fresh.is_empty() {
            pending.batches.push(Batch {
                scheduled: Utc::now(),
                blockers: None,
                packs: fresh,
            });
        }
        if opts.dry_run {
            return self.dry_sweep(opts, &pending, &mark, report).await;
        }
        self.write_pending(&pending, opts.now.unwrap_or_else(Utc::now))
            .await?;
        if stop <= Step::Scheduled {
            report.packs_pending = pending.pack_count();
            return Ok(report);
        }

        // Seal: the locks listed now, after the batch is stored, are the ones whose
        // writers may not have seen it.
        if pending.batches.iter().any(|b| b.blockers.is_none()) {
            let own = lock.map(RepoLock::key);
            let blockers: Vec<String> = self
                .locks(opts)
                .await?
                .into_keys()
                .filter(|k| Some(k.as_str()) != own)
                .collect();
            let t1 = Utc::now();
            for b in pending.batches.iter_mut().filter(|b| b.blockers.is_none()) {
                b.blockers = Some(blockers.clone());
                b.scheduled = t1;
            }
            self.write_pending(&pending, opts.now.unwrap_or_else(Utc::now))
                .await?;
        }
        if stop <= Step::Sealed {
            report.packs_pending = pending.pack_count();
            return Ok(report);
        }

        self.sweep(opts, pending, &mut report, stop).await?;
        if stop == Step::Done {
            self.clean_locks(opts, lock.map(RepoLock::key), &mut report)
                .await?;
        }
        Ok(report)
    }

    /// Deletes the packs of the ripe batches that are still unreferenced.
    async fn sweep(
        &self,
        opts: &GcOptions,
        mut pending: PendingDoc,
        report: &mut GcReport,
        stop: Step,
    ) -> Result<(), RepoError> {
        if pending.batches.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + opts.wait_for_locks;
        let ripe: Vec<PendingPack> = loop {
            let locks = self.locks(opts).await?;
            let (ripe, live) = ripe_packs(&pending, &locks);
            if live.is_empty() || Instant::now() >= deadline {
                report.blocking_locks = live.len() as u64;
                if !live.is_empty() {
                    info!(locks = ?live, "pending packs wait for live locks");
                }
                break ripe;
            }
            report.waited_for_locks = true;
            tokio::time::sleep(LOCK_POLL.min(deadline - Instant::now())).await;
        };
        if ripe.is_empty() {
            report.packs_pending = pending.pack_count();
            return Ok(());
        }

        // Marked again after the locks are gone: what their writers committed counts.
        let mark = self.mark(&pending.names()).await?;
        let mut done: HashSet<String> = HashSet::new();
        let mut doomed: HashMap<String, PendingPack> = HashMap::new();
        for p in ripe {
            let unchanged = mark.packs.get(&p.name).is_some_and(|(_, t)| *t == p.stored);
            if mark.packs.contains_key(&p.name) && !unchanged {
                info!(pack = %p.name, "a scheduled pack was stored again: kept");
            }
            // Referenced again, stored again or already gone: no longer pending.
            done.insert(p.name.clone());
            if !mark.used.contains(&p.name) && unchanged {
                doomed.insert(p.name.clone(), p);
            }
        }

        // A write-once location: packs whose own lock has not ended stay pending.
        let now = opts.now.unwrap_or_else(Utc::now);
        doomed.retain(|name, p| match self.backend().locked_until(p.stored, now) {
            Some(until) => {
                done.remove(name);
                report.packs_locked += 1;
                report.locked_until = report.locked_until.max(Some(until));
                false
            }
            None => true,
        });
        let mut deleted: HashSet<String> = HashSet::new();
        if !doomed.is_empty() {
            let (rewritten, withheld) = self.drop_from_index(&mut doomed, now, report).await?;
            report.index_objects_rewritten = rewritten;
            for name in withheld {
                done.remove(&name);
                report.packs_locked += 1;
            }
            if stop <= Step::Reindexed {
                report.packs_pending = pending.pack_count();
                return Ok(());
            }
            for (name, p) in &doomed {
                // Looked at once more right before it goes, to shrink the window in which
                // a writer could store the same pack again unseen.
                if !self.pack_unchanged(p).await? {
                    info!(pack = %name, "a scheduled pack was stored again: kept");
                    continue;
                }
                let key = pack_key(name);
                match self
                    .backend()
                    .delete_unless_locked(&key, Some(p.stored), now)
                    .await?
                {
                    Removal::Deleted => {
                        deleted.insert(name.clone());
                        report.packs_deleted += 1;
                        report.bytes_freed += p.size;
                    }
                    // No index names it any more: a later sweep deletes it.
                    Removal::Locked { until } => {
                        done.remove(name);
                        report.packs_locked += 1;
                        report.locked_until = report.locked_until.max(until);
                        if until.is_none() {
                            report.refused.push(key);
                        }
                    }
                }
            }
        }
        pending.remove(&done);
        self.write_pending(&pending, opts.now.unwrap_or_else(Utc::now))
            .await?;
        report.packs_pending = pending.pack_count();
        // This handle's own index forgets the deleted packs too.
        self.inner
            .index
            .write()
            .retain(|_, loc| !deleted.contains(&loc.pack));
        Ok(())
    }

    /// A dry run's sweep: what the ripe batches would lose, judged by the one mark.
    async fn dry_sweep(
        &self,
        opts: &GcOptions,
        pending: &PendingDoc,
        mark: &Mark,
        mut report: GcReport,
    ) -> Result<GcReport, RepoError> {
        let locks = self.locks(opts).await?;
        // A real run would seal the new batch with the locks there are now.
        let mut sealed = pending.clone();
        for b in sealed.batches.iter_mut().filter(|b| b.blockers.is_none()) {
            b.blockers = Some(locks.keys().cloned().collect());
        }
        let (ripe, live) = ripe_packs(&sealed, &locks);
        report.blocking_locks = live.len() as u64;
        let now = opts.now.unwrap_or_else(Utc::now);
        for p in ripe {
            if let Some(until) = self.backend().locked_until(p.stored, now) {
                report.packs_locked += 1;
                report.locked_until = report.locked_until.max(Some(until));
                continue;
            }
            if mark.packs.get(&p.name).is_some_and(|(_, t)| *t == p.stored) {
                report.packs_deleted += 1;
                report.bytes_freed += p.size;
            }
        }
        report.packs_pending = pending.pack_count() - report.packs_deleted;
        Ok(report)
    }

    /// Replaces the index objects that list a chunk in `doomed` packs by one object
    /// holding their other entries; returns how many were replaced, and the packs taken
    /// out of `doomed` because an index object listing them cannot be deleted yet (a
    /// write-once location: its lock has not ended, or the server refused), which must
    /// not be deleted either.
    async fn drop_from_index(
        &self,
        doomed: &mut HashMap<String, PendingPack>,
        now: DateTime<Utc>,
        report: &mut GcReport,
    ) -> Result<(u64, HashSet<String>), RepoError> {
        let mut listing: Vec<(String, Vec<IndexEntry>, DateTime<Utc>)> = Vec::new();
        let mut withheld: HashSet<String> = HashSet::new();
        for (key, _, stored) in self.backend().list_with_times("index").await? {
            let entries = match self.index_object(&key).await? {
                Some(entries) => entries,
                None => continue,
            };
            if !entries
                .iter()
                .any(|e| doomed.contains_key(&e.location.pack))
            {
                continue;
            }
            if let Some(until) = self.backend().locked_until(stored, now) {
                report.locked_until = report.locked_until.max(Some(until));
                withheld.extend(
                    entries
                        .iter()
                        .filter(|e| doomed.contains_key(&e.location.pack))
                        .map(|e| e.location.pack.clone()),
                );
                continue;
            }
            listing.push((key, entries, stored));
        }
        doomed.retain(|name, _| !withheld.contains(name));
        let mut keep: Vec<IndexEntry> = Vec::new();
        let mut replaced: Vec<(String, Vec<IndexEntry>, DateTime<Utc>)> = Vec::new();
        for (key, entries, stored) in listing {
            if entries
                .iter()
                .any(|e| doomed.contains_key(&e.location.pack))
            {
                keep.extend(
                    entries
                        .iter()
                        .filter(|e| !doomed.contains_key(&e.location.pack))
                        .cloned(),
                );
                replaced.push((key, entries, stored));
            }
        }
        if replaced.is_empty() {
            return Ok((0, withheld));
        }
        if !keep.is_empty() {
            let stamp = Utc::now().format("%Y%m%dT%H%M%S");
            self.put_doc(&super::index_key(&format!("gc-{stamp}")), &keep)
                .await?;
        }
        let mut rewritten = 0;
        for (key, entries, stored) in &replaced {
            match self
                .backend()
                .delete_unless_locked(key, Some(*stored), now)
                .await?
            {
                Removal::Deleted => rewritten += 1,
                // Still names its packs: they stay until it can go.
                Removal::Locked { until } => {
                    report.locked_until = report.locked_until.max(until);
                    if until.is_none() {
                        report.refused.push(key.clone());
                    }
                    for e in entries {
                        if doomed.remove(&e.location.pack).is_some() {
                            withheld.insert(e.location.pack.clone());
                        }
                    }
                }
            }
        }
        Ok((rewritten, withheld))
    }

    /// `data/` is listed first (only a pack listed before the batch is sealed may be
    /// scheduled), then the manifests, then the index: a manifest seen here has its index
    /// object stored already (a writer stores it first). A referenced chunk keeps the
    /// packs it is in outside `pending`; only when it is in none of those do its pending
    /// packs count as used (a writer that took its lock before they were scheduled
    /// deduplicated against them).
    async fn mark(&self, pending: &HashSet<&str>) -> Result<Mark, RepoError> {
        let packs: HashMap<String, (u64, DateTime<Utc>)> = self
            .backend()
            .list_with_times("data")
            .await?
            .into_iter()
            .map(|(key, size, stored)| (object_name(&key).to_string(), (size, stored)))
            .collect();
        let mut referenced: HashSet<ChunkId> = HashSet::new();
        let mut snapshots = 0;
        for (key, _) in self.backend().list("snapshots").await? {
            match self.snapshot(object_name(&key)).await {
                Ok(snap) => {
                    snapshots += 1;
                    for e in &snap.entries {
                        referenced.extend(e.chunks.iter().copied());
                    }
                }
                // Forgotten since the listing: it references nothing any more.
                Err(RepoError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        let mut used = HashSet::new();
        let mut covered: HashSet<ChunkId> = HashSet::new();
        let mut only_pending: HashMap<ChunkId, Vec<String>> = HashMap::new();
        for (key, _) in self.backend().list("index").await? {
            for e in self.index_object(&key).await?.unwrap_or_default() {
                if !referenced.contains(&e.id) {
                    continue;
                }
                if pending.contains(e.location.pack.as_str()) {
                    only_pending.entry(e.id).or_default().push(e.location.pack);
                } else {
                    if packs.contains_key(&e.location.pack) {
                        covered.insert(e.id);
                    }
                    used.insert(e.location.pack);
                }
            }
        }
        for (id, in_pending) in only_pending {
            if !covered.contains(&id) {
                used.extend(in_pending);
            }
        }
        Ok(Mark {
            snapshots,
            chunks: referenced.len() as u64,
            used,
            packs,
        })
    }

    /// Whether a scheduled pack is still there as it was when it was scheduled.
    async fn pack_unchanged(&self, p: &PendingPack) -> Result<bool, RepoError> {
        let key = pack_key(&p.name);
        let dir = key.rsplit_once('/').map_or("data", |(dir, _)| dir);
        Ok(self
            .backend()
            .list_with_times(dir)
            .await?
            .iter()
            .any(|(k, _, stored)| *k == key && *stored == p.stored))
    }

    async fn index_object(&self, key: &str) -> Result<Option<Vec<IndexEntry>>, RepoError> {
        match self.backend().get(key).await {
            Ok(raw) => Ok(Some(pack::decode_doc(&raw, self.key(), key)?)),
            Err(RepoError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The `gc/pending` in force: on a write-once location the highest generation
    /// (`gc/pending` itself counting as generation 0), elsewhere `gc/pending`.
    async fn read_pending(&self) -> Result<PendingDoc, RepoError> {
        let key = if self.backend().immutable_for().is_some() {
            match self.pending_generations().await?.pop() {
                Some((_, key, _)) => key,
                None => return Ok(PendingDoc::default()),
            }
        } else {
            PENDING_KEY.to_string()
        };
        match self.backend().get(&key).await {
            Ok(raw) => pack::decode_doc(&raw, self.key(), &key),
            Err(RepoError::NotFound(_)) => Ok(PendingDoc::default()),
            Err(e) => Err(e),
        }
    }

    /// Stores `pending` (`now`: the instant write-once locks are judged at).
    async fn write_pending(
        &self,
        pending: &PendingDoc,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        if self.backend().immutable_for().is_some() {
            return self.write_pending_generation(pending, now).await;
        }
        if pending.batches.is_empty() {
            self.backend().delete(PENDING_KEY).await
        } else {
            self.put_doc(PENDING_KEY, pending).await.map(|_| ())
        }
    }

    /// The generations of `gc/pending` on a write-once location, lowest first:
    /// (generation, key, stored).
    async fn pending_generations(&self) -> Result<Vec<(u64, String, DateTime<Utc>)>, RepoError> {
        let mut out: Vec<(u64, String, DateTime<Utc>)> = self
            .backend()
            .list_with_times("gc")
            .await?
            .into_iter()
            .filter_map(|(key, _, stored)| {
                let n = match key.strip_prefix(PENDING_KEY)? {
                    "" => 0,
                    rest => rest.strip_prefix('.')?.parse().ok()?,
                };
                Some((n, key, stored))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Stores `pending` as a new generation (never over an existing key), then deletes
    /// the older generations whose locks have ended. An empty one is stored only when it
    /// must hide an older generation that cannot be deleted yet.
    async fn write_pending_generation(
        &self,
        pending: &PendingDoc,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        let older = self.pending_generations().await?;
        let next = older.last().map_or(1, |(n, _, _)| n + 1);
        if !pending.batches.is_empty() || !older.is_empty() {
            let unchanged = match older.last() {
                Some((_, key, _)) => match self.backend().get(key).await {
                    Ok(raw) => pack::decode_doc::<PendingDoc>(&raw, self.key(), key)
                        .is_ok_and(|doc| doc == *pending),
                    Err(_) => false,
                },
                None => false,
            };
            let removable = older
                .iter()
                .all(|(_, _, stored)| self.backend().locked_until(*stored, now).is_none());
            if pending.batches.is_empty() && removable {
                // Nothing to hide: every generation can go, newest last.
            } else if !unchanged {
                self.put_doc(&format!("{PENDING_KEY}.{next:010}"), pending)
                    .await?;
            }
        }
        // Oldest first, so a crash leaves the newest (or an empty set) in force.
        for (_, key, stored) in &older {
            if let Removal::Locked { until: None } = self
                .backend()
                .delete_unless_locked(key, Some(*stored), now)
                .await?
            {
                warn!(object = %key, "a superseded gc/pending generation could not be deleted; kept");
            }
        }
        Ok(())
    }

    /// Every lock object, with whether it is stale: not refreshed for
    /// [`GcOptions::stale_lock`], or a collection's lock whose process is known to have
    /// ended ([`LockDoc::holder_gone`]: killed on this machine), so that running the
    /// collection again right after a crash finishes the job instead of being refused, or
    /// waiting, for half an hour. A writer's lock only ever goes stale with age: a dead
    /// writer's last upload may still land in an object store after its process ended.
    async fn locks(&self, opts: &GcOptions) -> Result<Locks, RepoError> {
        let now = Utc::now();
        let stale_after = chrono::Duration::from_std(opts.stale_lock)
            .map_err(|e| RepoError::Config(format!("stale lock age: {e}")))?;
        let mut locks = Locks::new();
        for (key, group) in self.lock_groups().await? {
            if group.released {
                continue;
            }
            let stale = now - group.stored > stale_after
                || self
                    .lock_doc(&key)
                    .await?
                    .is_some_and(|doc| doc.purpose == GC_PURPOSE && doc.holder_gone());
            locks.insert(key, (group.stored, stale));
        }
        Ok(locks)
    }

    /// The lock objects by lock ([`super::lock_of`]): on a write-once location a lock
    /// is its first object, its refreshes and its release marker.
    async fn lock_groups(&self) -> Result<HashMap<String, LockGroup>, RepoError> {
        let mut groups: HashMap<String, LockGroup> = HashMap::new();
        for (key, _, stored) in self.backend().list_with_times("locks").await? {
            let (lock, suffix) = super::lock_of(&key);
            let g = groups.entry(lock.to_string()).or_insert_with(|| LockGroup {
                stored,
                released: false,
                objects: Vec::new(),
            });
            g.stored = g.stored.max(stored);
            g.released |= suffix == Some(super::LOCK_RELEASED);
            g.objects.push((key, stored));
        }
        Ok(groups)
    }

    /// On a write-once location, deletes the objects of released and stale locks whose
    /// own locks have ended, the release marker last (so a lock is never seen live again
    /// once released); elsewhere a lock is deleted when released and nothing is left.
    async fn clean_locks(
        &self,
        opts: &GcOptions,
        own: Option<&str>,
        report: &mut GcReport,
    ) -> Result<(), RepoError> {
        if self.backend().immutable_for().is_none() {
            return Ok(());
        }
        let now = opts.now.unwrap_or_else(Utc::now);
        let stale_after = chrono::Duration::from_std(opts.stale_lock)
            .map_err(|e| RepoError::Config(format!("stale lock age: {e}")))?;
        for (lock, mut group) in self.lock_groups().await? {
            let stale = Utc::now() - group.stored > stale_after;
            if Some(lock.as_str()) == own || !(group.released || stale) {
                continue;
            }
            // The marker sorts last.
            group
                .objects
                .sort_by_key(|(key, _)| super::lock_of(key).1 == Some(super::LOCK_RELEASED));
            for (key, stored) in &group.objects {
                match self
                    .backend()
                    .delete_unless_locked(key, Some(*stored), now)
                    .await?
                {
                    Removal::Deleted => {}
                    Removal::Locked { until } => {
                        if until.is_none() {
                            report.refused.push(key.clone());
                        }
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// A lock's document; `None` when it is gone or unreadable.
    async fn lock_doc(&self, key: &str) -> Result<Option<LockDoc>, RepoError> {
        match self.backend().get(key).await {
            Ok(raw) => Ok(serde_json::from_slice(&raw)
                .inspect_err(|e| warn!(lock = %key, error = %e, "unreadable lock"))
                .ok()),
            Err(RepoError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes the `gc` lock, or fails when another collection holds a live one.
    async fn gc_lock(&self, opts: &GcOptions) -> Result<RepoLock, RepoError> {
        let lock = self.put_lock(GC_PURPOSE).await?;
        let others = match self.locks(opts).await {
            Ok(locks) => locks,
            Err(e) => {
                lock.release().await;
                return Err(e);
            }
        };
        for (key, (_, stale)) in others {
            if stale || key == lock.key() {
                continue;
            }
            let doc = match self.lock_doc(&key).await {
                Ok(Some(doc)) => doc,
                Ok(None) => continue,
                Err(e) => {
                    lock.release().await;
                    return Err(e);
                }
            };
            if doc.purpose == GC_PURPOSE {
                lock.release().await;
                return Err(RepoError::AlreadyExists(format!(
                    "garbage collection is already running (lock {key}, host {}, pid {}, since {})",
                    doc.hostname, doc.pid, doc.created
                )));
            }
        }
        Ok(lock)
    }

    /// Forgets, in the in-memory index, the chunks of every pack garbage collection has
    /// scheduled or deleted; [`Repository::lock`] calls it once the lock is stored.
    /// `gc/pending` is read before `data/` is listed: a pack that leaves `gc/pending`
    /// in between has been deleted, and the listing misses it.
    pub(crate) async fn forget_collected_packs(&self) -> Result<usize, RepoError> {
        let pending = self.read_pending().await?;
        let scheduled = pending.names();
        let present = self.packs().await?;
        let mut index = self.inner.index.write();
        let before = index.len();
        index.retain(|_, loc| {
            present.contains_key(&loc.pack) && !scheduled.contains(loc.pack.as_str())
        });
        Ok(before - index.len())
    }
}

/// The packs of the batches whose blockers are all gone or stale, and the live locks
/// that hold the others back.
fn ripe_packs(pending: &PendingDoc, locks: &Locks) -> (Vec<PendingPack>, Vec<String>) {
    let mut ripe = Vec::new();
    let mut live: HashSet<&str> = HashSet::new();
    for b in &pending.batches {
        let Some(blockers) = &b.blockers else {
            continue;
        };
        let holding: Vec<&str> = blockers
            .iter()
            .filter(|k| locks.get(k.as_str()).is_some_and(|(_, stale)| !stale))
            .map(String::as_str)
            .collect();
        if holding.is_empty() {
            ripe.extend(b.packs.iter().cloned());
        } else {
            live.extend(holding);
        }
    }
    let mut live: Vec<String> = live.into_iter().map(str::to_string).collect();
    live.sort();
    (ripe, live)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use sha2::Digest;

    use super::*;
    use crate::backup::BackupRequest;
    use crate::restore::RestoreRequest;
    use crate::roundtrip_tests::noise;
    use crate::LockHolder;
    use crate::{KeySource, Location, RepoOptions, Snapshot};

    fn set_mtime_back(path: &Path, secs: i64) {
        use nix::sys::stat::{utimensat, UtimensatFlags};
        use nix::sys::time::TimeSpec;
        let now = chrono::Utc::now().timestamp();
        let t = TimeSpec::new(now - secs, 0);
        utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink).expect("set mtime");
    }

    struct Fixture {
        dir: tempfile::TempDir,
        repo: Repository,
    }

    impl Fixture {
        async fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir_all(dir.path().join("src")).expect("mkdir");
            let repo = Repository::init(&Self::options(dir.path()))
                .await
                .expect("init");
            Self { dir, repo }
        }

        fn options(dir: &Path) -> RepoOptions {
            RepoOptions {
                location: Location::new(dir.join("repo").to_string_lossy()),
                key: KeySource::None,
            }
        }

        /// A new handle, as another process would open it.
        async fn open(&self) -> Repository {
            Repository::open(&Self::options(self.dir.path()))
                .await
                .expect("open")
        }

        fn path(&self, p: &str) -> PathBuf {
            self.dir.path().join(p)
        }

        /// Makes `src` hold exactly these files: (name, seed), 40 KB each.
        fn source(&self, files: &[(&str, u64)]) -> BTreeMap<String, Vec<u8>> {
            let src = self.path("src");
            std::fs::remove_dir_all(&src).expect("rm");
            std::fs::create_dir_all(&src).expect("mkdir");
            let mut out = BTreeMap::new();
            for (name, seed) in files {
                let data = noise(*seed, 40_000);
                std::fs::write(src.join(name), &data).expect("write");
                out.insert(name.to_string(), data);
            }
            out
        }

        async fn backup_with(&self, repo: &Repository, id: &str) -> Snapshot {
            repo.backup(BackupRequest::new(id, "files", self.path("src")))
                .await
                .expect("backup")
        }

        async fn backup(&self, id: &str) -> Snapshot {
            self.backup_with(&self.repo, id).await
        }

        async fn forget(&self, id: &str) {
            self.repo
                .backend()
                .delete(&format!("snapshots/{id}"))
                .await
                .expect("delete manifest");
        }

        async fn packs(&self) -> HashSet<String> {
            self.repo
                .packs()
                .await
                .expect("packs")
                .into_keys()
                .collect()
        }

        /// Every object (but locks) with the SHA-256 of its content.
        fn objects(&self) -> BTreeMap<String, String> {
            let root = self.path("repo");
            walkdir::WalkDir::new(&root)
                .into_iter()
                .map(|e| e.expect("walk"))
                .filter(|e| e.file_type().is_file())
                .map(|e| {
                    let rel = e
                        .path()
                        .strip_prefix(&root)
                        .expect("prefix")
                        .to_string_lossy()
                        .into_owned();
                    let sum =
                        hex::encode(sha2::Sha256::digest(std::fs::read(e.path()).expect("read")));
                    (rel, sum)
                })
                .filter(|(rel, _)| !rel.starts_with("locks/"))
                .collect()
        }

        /// Restores `id` through a fresh handle, compares it byte for byte and verifies
        /// it reading all data.
        async fn check(&self, id: &str, files: &BTreeMap<String, Vec<u8>>) {
            let repo = self.open().await;
            let out = self.path(&format!("out-{id}-{}", uuid::Uuid::new_v4().simple()));
            repo.restore(RestoreRequest::new(id, &out))
                .await
                .expect("restore");
            for (name, data) in files {
                assert_eq!(
                    &std::fs::read(out.join(name)).expect("read"),
                    data,
                    "{id}: {name}"
                );
            }
            let report = repo.verify(id, true).await.expect("verify");
            assert!(report.passed(), "{id}: {report:?}");
        }

        /// Makes the locks now in the repository look abandoned two hours ago.
        fn age_locks(&self) {
            for e in std::fs::read_dir(self.path("repo/locks")).expect("locks") {
                set_mtime_back(&e.expect("entry").path(), 2 * 3600);
            }
        }
    }

    /// Three snapshots; the first one's manifest is deleted. Returns the packs only it
    /// used and the content of the other two.
    async fn three_snapshots_first_forgotten(
        fx: &Fixture,
    ) -> (
        HashSet<String>,
        BTreeMap<String, Vec<u8>>,
        BTreeMap<String, Vec<u8>>,
    ) {
        fx.source(&[("a.bin", 1)]);
        fx.backup("snap_1").await;
        let only_first = fx.packs().await;
        let second = fx.source(&[("b.bin", 2)]);
        fx.backup("snap_2").await;
        let third = fx.source(&[("b.bin", 2), ("c.bin", 3)]);
        fx.backup("snap_3").await;
        fx.forget("snap_1").await;
        assert!(!only_first.is_empty());
        (only_first, second, third)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gc_frees_only_the_packs_of_forgotten_snapshots_and_is_idempotent() {
        let fx = Fixture::new().await;
        let (only_first, second, third) = three_snapshots_first_forgotten(&fx).await;
        let all = fx.packs().await;

        let report = fx.repo.gc(GcOptions::default()).await.expect("gc");
        assert_eq!(report.snapshots_read, 2);
        assert_eq!(report.packs_scheduled, only_first.len() as u64);
        assert_eq!(report.packs_deleted, only_first.len() as u64);
        assert!(report.bytes_freed > 0);
        assert!(report.index_objects_rewritten >= 1);
        assert_eq!(report.packs_pending, 0);
        let left = fx.packs().await;
        assert_eq!(left, all.difference(&only_first).cloned().collect());
        assert!(fx.objects().keys().all(|k| !k.starts_with("gc/")));
        fx.check("snap_2", &second).await;
        fx.check("snap_3", &third).await;

        let before = fx.objects();
        let again = fx.repo.gc(GcOptions::default()).await.expect("gc again");
        assert_eq!(again.packs_scheduled, 0);
        assert_eq!(again.packs_deleted, 0);
        assert_eq!(again.index_objects_rewritten, 0);
        assert_eq!(fx.objects(), before, "a second collection changes nothing");
        assert!(std::fs::read_dir(fx.path("repo/locks"))
            .expect("locks")
            .next()
            .is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dry_run_writes_and_deletes_nothing() {
        let fx = Fixture::new().await;
        let (only_first, _, _) = three_snapshots_first_forgotten(&fx).await;
        let before = fx.objects();
        let report = fx
            .repo
            .gc(GcOptions {
                dry_run: true,
                ..GcOptions::default()
            })
            .await
            .expect("dry run");
        assert!(report.dry_run);
        assert_eq!(report.packs_scheduled, only_first.len() as u64);
        assert_eq!(
            report.packs_deleted,
            only_first.len() as u64,
            "would delete"
        );
        assert_eq!(fx.objects(), before);
        assert!(std::fs::read_dir(fx.path("repo/locks"))
            .expect("locks")
            .next()
            .is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_older_than_the_schedule_blocks_the_sweep_and_a_stale_one_does_not() {
        let fx = Fixture::new().await;
        let (only_first, second, third) = three_snapshots_first_forgotten(&fx).await;

        let writer = fx.repo.lock("backup elsewhere").await.expect("lock");
        let report = fx.repo.gc(GcOptions::default()).await.expect("gc");
        assert_eq!(report.packs_scheduled, only_first.len() as u64);
        assert_eq!(report.packs_deleted, 0);
        assert_eq!(report.packs_pending, only_first.len() as u64);
        assert_eq!(report.blocking_locks, 1);
        assert!(fx.packs().await.is_superset(&only_first));
        assert!(fx.objects().contains_key(PENDING_KEY));
        // Runs in between change nothing while the writer is at work.
        let report = fx.repo.gc(GcOptions::default()).await.expect("gc");
        assert_eq!((report.packs_scheduled, report.packs_deleted), (0, 0));
        writer.release().await;
        let report = fx.repo.gc(GcOptions::default()).await.expect("gc");
        assert_eq!(report.packs_deleted, only_first.len() as u64);
        assert_eq!(report.packs_pending, 0);
        assert!(fx.packs().await.is_disjoint(&only_first));
        assert!(!fx.objects().contains_key(PENDING_KEY));
        fx.check("snap_2", &second).await;
        fx.check("snap_3", &third).await;

        // A writer that died long ago holds nothing back.
        fx.forget("snap_3").await;
        let before = fx.packs().await;
        let dead = fx.repo.lock("backup crashed").await.expect("lock");
        let report = fx.repo.gc(GcOptions::default()).await.expect("gc");
        assert!(report.packs_pending > 0, "{report:?}");
        assert_eq!(report.packs_deleted, 0);
        drop(dead);
        fx.age_locks();
        let report = fx.repo.gc(GcOptions::default()).await.expect("gc");
        assert!(report.packs_deleted > 0, "{report:?}");
        assert_eq!(report.packs_pending, 0);
        assert!(fx.packs().await.len() < before.len());
        fx.check("snap_2", &second).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sweep_can_wait_for_a_lock() {
        let fx = Fixture::new().await;
        let (only_first, _, third) = three_snapshots_first_forgotten(&fx).await;
        let writer = fx.repo.lock("backup elsewhere").await.expect("lock");
        let releaser = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            writer.release().await;
        });
        let report = fx
            .repo
            .gc(GcOptions {
                wait_for_locks: Duration::from_secs(30),
                ..GcOptions::default()
            })
            .await
            .expect("gc");
        releaser.await.expect("releaser");
        assert!(report.waited_for_locks);
        assert_eq!(report.packs_deleted, only_first.len() as u64);
        assert_eq!(report.blocking_locks, 0);
        fx.check("snap_3", &third).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_after_any_step_is_finished_by_the_next_run() {
        for step in [Step::Scheduled, Step::Sealed, Step::Reindexed] {
            let fx = Fixture::new().await;
            let (only_first, second, third) = three_snapshots_first_forgotten(&fx).await;
            fx.repo
                .gc_until(&GcOptions::default(), step)
                .await
                .expect("gc until");
            assert!(fx.packs().await.is_superset(&only_first), "{step:?}");
            if step == Step::Reindexed {
                // The index no longer names them; the remaining snapshots are whole.
                let repo = fx.open().await;
                let named: HashSet<String> = repo
                    .inner
                    .index
                    .read()
                    .values()
                    .map(|l| l.pack.clone())
                    .collect();
                assert!(named.is_disjoint(&only_first));
            }
            fx.check("snap_2", &second).await;
            // The crashed run's lock is left behind, and goes stale.
            fx.age_locks();
            let report = fx.repo.gc(GcOptions::default()).await.expect("gc");
            assert_eq!(report.packs_pending, 0, "{step:?}: {report:?}");
            assert!(fx.packs().await.is_disjoint(&only_first), "{step:?}");
            assert!(!fx.objects().contains_key(PENDING_KEY));
            fx.check("snap_2", &second).await;
            fx.check("snap_3", &third).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handle_opened_before_gc_never_deduplicates_against_a_collected_pack() {
        let fx = Fixture::new().await;
        let data = fx.source(&[("same.bin", 7)]);
        fx.backup("snap_a").await;
        fx.forget("snap_a").await;
        // Opened (index loaded) before the collection starts.
        let early = fx.open().await;
        let earlier = fx.open().await;
        fx.repo
            .gc_until(&GcOptions::default(), Step::Sealed)
            .await
            .expect("schedule");
        // A backup of the same data while snap_a's packs are scheduled: it stores its
        // chunks again (in a pack of its own name), and nothing it references goes.
        let b = fx.backup_with(&early, "snap_b").await;
        assert!(b.stats.chunks_new > 0, "a scheduled pack is not reused");
        fx.age_locks();
        let report = fx.repo.gc(GcOptions::default()).await.expect("gc");
        assert_eq!(report.packs_pending, 0, "{report:?}");
        fx.check("snap_b", &data).await;

        // And after the packs are gone altogether: its index knows only the collected
        // pack, so it stores the chunks again.
        let c = fx.backup_with(&earlier, "snap_c").await;
        assert!(c.stats.chunks_new > 0, "a collected pack is not reused");
        fx.check("snap_c", &data).await;
        let report = fx.repo.gc(GcOptions::default()).await.expect("gc");
        assert_eq!(report.packs_deleted, 0);
        fx.check("snap_b", &data).await;
        fx.check("snap_c", &data).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scheduled_pack_stored_again_is_kept() {
        let fx = Fixture::new().await;
        let (only_first, _, third) = three_snapshots_first_forgotten(&fx).await;
        fx.repo
            .gc_until(&GcOptions::default(), Step::Sealed)
            .await
            .expect("schedule");
        for name in &only_first {
            set_mtime_back(&fx.path(&format!("repo/{}", pack_key(name))), -60);
        }
        fx.age_locks();
        let report = fx.repo.gc(GcOptions::default()).await.expect("gc");
        assert_eq!(report.packs_deleted, 0, "{report:?}");
        assert_eq!(report.packs_pending, 0, "{report:?}");
        assert!(fx.packs().await.is_superset(&only_first));
        fx.check("snap_3", &third).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_started_before_the_schedule_keeps_what_it_deduplicated() {
        let fx = Fixture::new().await;
        let data = fx.source(&[("same.bin", 7)]);
        fx.backup("snap_a").await;
        let first = fx.packs().await;
        fx.forget("snap_a").await;
        let handle = fx.open().await;
        // Its data is stored (all of it deduplicated against snap_a), its lock held, its
        // manifest not written yet.
        let pending = handle
            .begin_backup(BackupRequest::new("snap_b", "files", fx.path("src")))
            .await
            .expect("begin");
        let report = fx.repo.gc(GcOptions::default()).await.expect("gc");
        assert_eq!(report.packs_scheduled, first.len() as u64);
        assert_eq!(report.packs_deleted, 0);
        assert_eq!(report.blocking_locks, 1);
        let b = pending.commit().await.expect("commit");
        assert_eq!(
            b.stats.chunks_new, 0,
            "deduplicated against snap_a's chunks"
        );
        let report = fx.repo.gc(GcOptions::default()).await.expect("gc");
        assert_eq!(report.packs_deleted, 0, "{report:?}");
        assert_eq!(report.packs_pending, 0, "referenced again");
        assert!(fx.packs().await.is_superset(&first));
        fx.check("snap_b", &data).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_collection_refuses_to_run_beside_a_live_one() {
        let fx = Fixture::new().await;
        let other = fx.repo.put_lock("gc").await.expect("lock");
        let err = fx.repo.gc(GcOptions::default()).await.expect_err("refused");
        assert!(err.to_string().contains("already running"), "{err}");
        other.release().await;
        // The refused run left no lock of its own.
        assert!(std::fs::read_dir(fx.path("repo/locks"))
            .expect("locks")
            .next()
            .is_none());
        fx.repo.gc(GcOptions::default()).await.expect("gc");
    }

    /// Stores a `gc` lock as process `pid` would, with `holder` as the process it names.
    async fn foreign_gc_lock(fx: &Fixture, pid: u32, holder: Option<LockHolder>) {
        let mut doc = LockDoc::new(GC_PURPOSE);
        doc.pid = pid;
        doc.holder = holder;
        let key = format!("locks/{}", uuid::Uuid::new_v4().simple());
        let json = serde_json::to_vec(&doc).expect("json");
        fx.repo
            .backend()
            .put(&key, json.into())
            .await
            .expect("put lock");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_collection_killed_on_this_machine_is_finished_at_once_by_the_next_run() {
        let fx = Fixture::new().await;
        let (only_first, second, third) = three_snapshots_first_forgotten(&fx).await;
        // Another process schedules the packs and is killed, its lock left fresh: here a
        // run stopped there, whose lock is then made that process's.
        fx.repo
            .gc_until(&GcOptions::default(), Step::Scheduled)
            .await
            .expect("gc until");
        for e in std::fs::read_dir(fx.path("repo/locks")).expect("locks") {
            std::fs::remove_file(e.expect("entry").path()).expect("rm lock");
        }
        let mut other = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("sleep");
        let holder = LockHolder::of(other.id());
        assert!(holder.is_some(), "this test needs Linux's /proc");
        foreign_gc_lock(&fx, other.id(), holder.clone()).await;
        // While it runs, a second collection is refused.
        let err = fx.repo.gc(GcOptions::default()).await.expect_err("refused");
        assert!(err.to_string().contains("already running"), "{err}");

        // Killed: its lock is known dead at once, and the next run finishes the job.
        other.kill().expect("kill");
        other.wait().expect("reap");
        let report = fx.repo.gc(GcOptions::default()).await.expect("gc");
        assert_eq!(report.packs_pending, 0, "{report:?}");
        assert_eq!(report.blocking_locks, 0, "{report:?}");
        assert!(fx.packs().await.is_disjoint(&only_first));
        assert!(!fx.objects().contains_key(PENDING_KEY));
        fx.check("snap_2", &second).await;
        fx.check("snap_3", &third).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_is_judged_dead_only_for_a_process_of_this_machine_and_pid_namespace() {
        let fx = Fixture::new().await;
        let mut gone = std::process::Command::new("true").spawn().expect("true");
        let pid = gone.id();
        let holder = LockHolder::of(pid).expect("this test needs Linux's /proc");
        gone.wait().expect("reap");
        let doc = |holder: Option<LockHolder>| {
            let mut d = LockDoc::new(GC_PURPOSE);
            d.pid = pid;
            d.holder = holder;
            d
        };
        assert!(doc(Some(holder.clone())).holder_gone());
        // Its pid taken by a later process: the start time differs.
        let reused = LockHolder {
            started: holder.started + 1,
            ..holder.clone()
        };
        assert!(doc(Some(reused)).holder_gone());
        // Another boot, another container, or no holder named: not known.
        for other in [
            LockHolder {
                boot_id: "another-boot".into(),
                ..holder.clone()
            },
            LockHolder {
                pid_namespace: "pid:[1]".into(),
                ..holder.clone()
            },
        ] {
            assert!(!doc(Some(other)).holder_gone());
        }
        assert!(!doc(None).holder_gone());
        assert!(!LockDoc::new(GC_PURPOSE).holder_gone(), "this process runs");
        // Such a lock from another machine still refuses a collection until it is old.
        foreign_gc_lock(
            &fx,
            pid,
            Some(LockHolder {
                boot_id: "another-boot".into(),
                ..holder
            }),
        )
        .await;
        let err = fx.repo.gc(GcOptions::default()).await.expect_err("refused");
        assert!(err.to_string().contains("already running"), "{err}");
        fx.age_locks();
        fx.repo.gc(GcOptions::default()).await.expect("gc");
    }
}
