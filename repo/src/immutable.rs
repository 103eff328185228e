//! Enforcement on a write-once location (the location option `immutable_for`, see
//! [`super::backend`]): the store locks every object for that long after it is stored,
//! and drmesh removes nothing before its lock ends.
//!
//! - A snapshot the plan deletes, or moves to the cold archive, whose manifest is still
//!   locked stays: listed, restorable, its chunks referenced (so garbage collection keeps
//!   its packs) and its own WAL kept. It is reported in `locked.snapshots` with the end
//!   of its lock, and a run after that time removes it.
//! - WAL segments no kept backup needs, still locked, stay (`locked.walSegments`).
//! - Archived snapshots no tier keeps, still locked in the archive, stay
//!   (`locked.archived`).
//! - Garbage collection keeps an unreferenced pack scheduled while it, or an index
//!   object listing it, is locked (`locked.packs`); see [`super::gc`].
//! - A delete the server refuses (its lock is longer than `immutable_for` says) is a
//!   lock, never a deletion (`locked.refused`).
//!
//! Architecture Invariant: on a write-once location drmesh neither deletes an object
//! before its last-modified time plus `immutable_for`, nor writes a key twice (index
//! objects, packs and manifests have names of their own; `gc/pending` is written in
//! generations, locks refresh into new objects and are released by a marker), and the
//! repository stays whole in between: whatever is held back is exactly what a run before
//! the plan's deletions would have left.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use tracing::info;

use super::backend::Removal;
use super::enforce::{EnforceReport, Kept};
use super::snapshot::PgBackupInfo;
use super::{object_name, RepoError, Repository};
use drmesh_protocol::retention::LockedSnapshot;

/// When each manifest and WAL file of a write-once repository was stored, read once per
/// enforcement, and the instant the locks are judged at.
pub(crate) struct WriteOnce {
    now: DateTime<Utc>,
    manifests: HashMap<String, DateTime<Utc>>,
    wal: HashMap<(u32, String), DateTime<Utc>>,
}

impl Repository {
    /// The stored times enforcement judges locks by as of `now`; `None` when the
    /// location is not write-once.
    pub(crate) async fn write_once(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<WriteOnce>, RepoError> {
        if self.backend().immutable_for().is_none() {
            return Ok(None);
        }
        let manifests = self
            .backend()
            .list_with_times("snapshots")
            .await?
            .into_iter()
            .map(|(key, _, stored)| (object_name(&key).to_string(), stored))
            .collect();
        let wal = self
            .wal_files_archived()
            .await?
            .into_iter()
            .map(|(tl, name, stored)| ((tl, name), stored))
            .collect();
        Ok(Some(WriteOnce {
            now,
            manifests,
            wal,
        }))
    }

    /// Removes one snapshot's manifest unless it is locked as of `now` (see
    /// [`super::backend::Backend::delete_unless_locked`]).
    pub async fn forget_unless_locked(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Removal, RepoError> {
        // Checked to be a snapshot of this repository first.
        self.snapshot(id).await?;
        self.backend()
            .delete_unless_locked(&format!("snapshots/{id}"), None, now)
            .await
    }

    /// Reports snapshot `id` as kept for its lock (`until`; `None`: refused by the
    /// server) and keeps its own WAL out of `doomed`.
    pub(crate) async fn hold_snapshot(
        &self,
        id: &str,
        until: Option<DateTime<Utc>>,
        report: &mut EnforceReport,
        doomed: &mut Vec<(u32, String)>,
    ) -> Result<(), RepoError> {
        info!(snapshot = %id, locked_until = ?until, "retention: snapshot kept, its manifest is locked");
        report.locked.snapshots.push(LockedSnapshot {
            snapshot_id: id.to_string(),
            locked_until: until,
        });
        report.locked.note(until);
        if until.is_none() {
            report.locked.refused.push(format!("snapshots/{id}"));
        }
        if let Some(pg) = self.snapshot(id).await?.postgres {
            let own: BTreeSet<(u32, String)> = pg
                .needed_wal()
                .into_iter()
                .map(|n| (pg.timeline, n))
                .collect();
            doomed.retain(|seg| !own.contains(seg));
        }
        Ok(())
    }
}

impl WriteOnce {
    fn locked(&self, stored: Option<&DateTime<Utc>>, repo: &Repository) -> Option<DateTime<Utc>> {
        repo.backend().locked_until(*stored?, self.now)
    }

    /// Takes out of the plan (`report.deleted`, `to_archive`) the snapshots whose
    /// manifest is still locked: they stay, with their own WAL in `keep_wal`, and are
    /// reported in `report.locked`.
    pub(crate) async fn hold_snapshots(
        &self,
        repo: &Repository,
        report: &mut EnforceReport,
        to_archive: &mut Vec<(Kept, Option<&PgBackupInfo>)>,
        keep_wal: &mut BTreeSet<(u32, String)>,
    ) -> Result<(), RepoError> {
        let mut held = Vec::new();
        let mut locked = Vec::new();
        report
            .deleted
            .retain(|id| match self.locked(self.manifests.get(id), repo) {
                Some(until) => {
                    locked.push(LockedSnapshot {
                        snapshot_id: id.clone(),
                        locked_until: Some(until),
                    });
                    held.push(id.clone());
                    false
                }
                None => true,
            });
        to_archive.retain(|(kept, pg)| {
            match self.locked(self.manifests.get(&kept.snapshot_id), repo) {
                Some(until) => {
                    locked.push(LockedSnapshot {
                        snapshot_id: kept.snapshot_id.clone(),
                        locked_until: Some(until),
                    });
                    if let Some(pg) = pg {
                        keep_wal.extend(pg.needed_wal().into_iter().map(|n| (pg.timeline, n)));
                    }
                    false
                }
                None => true,
            }
        });
        for l in locked {
            report.locked.note(l.locked_until);
            report.locked.snapshots.push(l);
        }
        for id in held {
            if let Some(pg) = repo.snapshot(&id).await?.postgres {
                keep_wal.extend(pg.needed_wal().into_iter().map(|n| (pg.timeline, n)));
            }
        }
        Ok(())
    }

    /// Takes the still locked segments out of `doomed`, counted in `report.locked`.
    pub(crate) fn hold_wal(
        &self,
        repo: &Repository,
        report: &mut EnforceReport,
        doomed: &mut Vec<(u32, String)>,
    ) {
        doomed.retain(|seg| match self.locked(self.wal.get(seg), repo) {
            Some(until) => {
                report.locked.wal_segments += 1;
                report.locked.note(Some(until));
                false
            }
            None => true,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::Duration;

    use super::*;
    use crate::backup::BackupRequest;
    use crate::enforce::Policies;
    use crate::roundtrip_tests::noise;
    use crate::{KeySource, Location, RepoOptions};

    /// A write-once local repository (`immutable_for = "1d"`, kept by drmesh's rule) and
    /// the directory it backs up.
    async fn write_once_repo(dir: &std::path::Path) -> Repository {
        let mut location = Location::new(dir.join("repo").to_string_lossy());
        location.options.insert("immutable_for".into(), "1d".into());
        Repository::init(&RepoOptions {
            location,
            key: KeySource::None,
        })
        .await
        .expect("init")
    }

    /// Documents: one hour hot, no calendar tier, so all but the newest expire at once.
    fn short_policy() -> Policies {
        toml::from_str(
            "[documents]\nfull = \"1h\"\nincremental = \"1h\"\nweekly = 0\nmonthly = 0\nyearly = 0\n",
        )
        .expect("policy")
    }

    async fn verify_all(repo: &Repository) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        for s in repo.snapshots().await.expect("list") {
            let v = repo.verify(&s.id, true).await.expect("verify");
            assert!(v.passed(), "{} does not verify: {v:?}", s.id);
            ids.insert(s.id);
        }
        ids
    }

    fn keys(root: &std::path::Path, dir: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(root).expect("under root");
                    out.insert(rel.to_string_lossy().into_owned());
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn a_write_once_location_keeps_what_is_locked_and_finishes_once_the_lock_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = write_once_repo(dir.path()).await;
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).expect("src");
        for i in 0..3u64 {
            // Each snapshot has a file of its own: its pack goes with it.
            std::fs::write(src.join(format!("doc{i}")), noise(i, 300_000)).expect("write");
            if i > 0 {
                std::fs::remove_file(src.join(format!("doc{}", i - 1))).expect("rm");
            }
            repo.backup(BackupRequest::new(format!("docs_{i}"), "documents", &src))
                .await
                .expect("backup");
        }
        let root = dir.path().join("repo");
        let packs_before = keys(&root, "data");
        let all = verify_all(&repo).await;
        assert_eq!(all.len(), 3);

        // Two hours on: the policy deletes two, but everything is locked for a day.
        let soon = Utc::now() + Duration::hours(2);
        let dry = repo
            .enforce(&short_policy(), soon, true)
            .await
            .expect("dry");
        assert!(dry.deleted.is_empty(), "{dry:?}");
        assert_eq!(dry.locked.snapshots.len(), 2, "{dry:?}");
        let held = repo
            .enforce(&short_policy(), soon, false)
            .await
            .expect("enforce");
        assert!(held.deleted.is_empty(), "{held:?}");
        assert_eq!(held.packs_deleted, 0);
        let locked: BTreeSet<&str> = held
            .locked
            .snapshots
            .iter()
            .map(|l| l.snapshot_id.as_str())
            .collect();
        assert_eq!(locked, BTreeSet::from(["docs_0", "docs_1"]));
        let until = held.locked.locked_until.expect("locked until");
        assert!(
            until > Utc::now() + Duration::hours(23) && until <= Utc::now() + Duration::days(1),
            "{until}"
        );
        assert!(held
            .locked
            .snapshots
            .iter()
            .all(|l| l.locked_until.is_some_and(|t| t <= until)));
        assert_eq!(verify_all(&repo).await, all, "nothing left the repository");
        assert_eq!(keys(&root, "data"), packs_before);

        // Garbage collection alone with the lock still on deletes nothing either.
        let gc = repo
            .gc(crate::gc::GcOptions {
                now: Some(soon),
                ..Default::default()
            })
            .await
            .expect("gc");
        assert_eq!(gc.packs_deleted, 0, "{gc:?}");

        // Two days on the locks have ended: the run finishes the job.
        let later = Utc::now() + Duration::days(2);
        let done = repo
            .enforce(&short_policy(), later, false)
            .await
            .expect("enforce");
        let deleted: BTreeSet<&str> = done.deleted.iter().map(String::as_str).collect();
        assert_eq!(deleted, BTreeSet::from(["docs_0", "docs_1"]), "{done:?}");
        assert!(done.locked.is_empty(), "{:?}", done.locked);
        assert_eq!(done.packs_deleted, 2, "{done:?}");
        assert_eq!(
            verify_all(&repo).await,
            BTreeSet::from(["docs_2".to_string()])
        );
        // No key was stored twice: `gc/pending` is in generations, never the one key.
        assert!(keys(&root, "gc")
            .iter()
            .all(|k| k.starts_with("gc/pending.")));
        // The backups' locks were released by markers, deleted now the locks ended; only
        // this run's collection lock (and its marker) is left.
        let locks = keys(&root, "locks");
        let holders: BTreeSet<&str> = locks.iter().map(|k| crate::lock_of(k).0).collect();
        assert_eq!(holders.len(), 1, "{locks:?}");
        assert!(locks.iter().any(|k| k.ends_with(".released")), "{locks:?}");

        let again = repo
            .enforce(&short_policy(), later, false)
            .await
            .expect("again");
        assert!(
            again.deleted.is_empty() && again.locked.is_empty(),
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn a_pack_listed_in_a_locked_index_object_stays_pending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = write_once_repo(dir.path()).await;
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).expect("src");
        std::fs::write(src.join("a"), noise(7, 200_000)).expect("write");
        repo.backup(BackupRequest::new("docs_a", "documents", &src))
            .await
            .expect("backup");
        repo.backend()
            .delete("snapshots/docs_a")
            .await
            .expect("a local write-once location lets drmesh delete by hand");
        // The pack alone is old enough, its index object is not: judged at a time
        // between the two by backdating the pack's file.
        let root = dir.path().join("repo");
        let pack = keys(&root, "data").into_iter().next().expect("a pack");
        let t = nix::sys::time::TimeSpec::new(Utc::now().timestamp() - 3 * 86_400, 0);
        nix::sys::stat::utimensat(
            None,
            &root.join(&pack),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .expect("backdate");
        let gc = repo.gc(Default::default()).await.expect("gc");
        assert_eq!((gc.packs_deleted, gc.packs_locked), (0, 1), "{gc:?}");
        assert!(root.join(&pack).exists());
        assert_eq!(gc.packs_pending, 1);
        let gc = repo
            .gc(crate::gc::GcOptions {
                now: Some(Utc::now() + Duration::days(2)),
                ..Default::default()
            })
            .await
            .expect("gc");
        assert_eq!((gc.packs_deleted, gc.packs_locked), (1, 0), "{gc:?}");
        assert!(!root.join(&pack).exists());
        assert!(keys(&root, "index").is_empty());
    }

    #[test]
    fn lock_objects_belong_to_their_lock() {
        use crate::lock_of;
        assert_eq!(lock_of("locks/abc"), ("locks/abc", None));
        assert_eq!(lock_of("locks/abc.3"), ("locks/abc", Some("3")));
        assert_eq!(
            lock_of("locks/abc.released"),
            ("locks/abc", Some("released"))
        );
    }
}
