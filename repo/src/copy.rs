//! Copying a snapshot into another repository (a secondary location, perhaps with its
//! own key). Content-addressed, so only the chunks the destination lacks move; each is
//! checked against its id when read, re-sealed for the destination, packed, uploaded.
//! The destination's index and then the manifest are written last, exactly as a backup
//! does, so an interrupted copy leaves no snapshot there — and running it again resumes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tracing::info;

use super::pack::{self, ChunkId, IndexEntry, PackBuilder};
use super::snapshot::EntryKind;
use super::{pack_key, RepoError, Repository};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyReport {
    pub snapshot: String,
    /// The destination had the snapshot already.
    pub already_present: bool,
    pub chunks_copied: u64,
    pub bytes_copied: u64,
    pub bytes_stored: u64,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

/// What [`Repository::sync_to`] did and what is still missing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncReport {
    pub snapshots_copied: u64,
    pub wal_copied: u64,
    pub bytes_copied: u64,
    /// Snapshots still missing at the destination, oldest first, with when they ended.
    pub missing: Vec<(String, DateTime<Utc>)>,
    /// WAL files still missing at the destination, with when they were archived.
    pub missing_wal: Vec<(u32, String, DateTime<Utc>)>,
    /// Why the round stopped early, if it did.
    pub error: Option<String>,
    /// It stopped because a store did not answer (rather than on damaged data).
    pub unreachable: bool,
}

impl SyncReport {
    /// Age at `now` of the oldest thing still missing; zero when nothing is.
    pub fn lag(&self, now: DateTime<Utc>) -> Duration {
        let oldest = self
            .missing
            .iter()
            .map(|(_, t)| *t)
            .chain(self.missing_wal.iter().map(|(_, _, t)| *t))
            .min();
        oldest
            .and_then(|t| (now - t).to_std().ok())
            .unwrap_or_default()
    }
}

/// Packs uploading at once.
const UPLOADS_IN_FLIGHT: usize = 3;

/// Chunks read and re-sealed at once.
const COPY_CONCURRENCY: usize = 4;

impl Repository {
    /// Brings `dest` up to date: every snapshot it lacks is copied (oldest first) and
    /// verified there (manifest, every chunk indexed in a pack of the right size), then,
    /// with `wal`, every archived WAL and history file it lacks (re-sealed for its key,
    /// checked against its digest on the way). Only what is missing moves, so an
    /// interrupted round is finished by the next. Stops at the first failure, which is
    /// reported with what is still missing.
    pub async fn sync_to(&self, dest: &Repository, wal: bool) -> Result<SyncReport, RepoError> {
        self.sync_some_to(dest, wal, &|_| true).await
    }

    /// [`sync_to`](Self::sync_to) for the snapshots whose id `belongs` says go to `dest`
    /// (a month's repository of a location with a date template takes that month's).
    pub async fn sync_some_to(
        &self,
        dest: &Repository,
        wal: bool,
        belongs: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<SyncReport, RepoError> {
        let mut report = SyncReport::default();
        let there: HashSet<String> = names(dest.backend().list("snapshots").await?);
        let mut missing = Vec::new();
        for id in names(self.backend().list("snapshots").await?) {
            if !there.contains(&id) && belongs(&id) {
                let snap = self.snapshot(&id).await?;
                missing.push((id, snap.finished_at));
            }
        }
        missing.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        let mut missing_wal = Vec::new();
        if wal {
            let there: HashSet<(u32, String)> = dest.wal_files().await?.into_iter().collect();
            missing_wal = self
                .wal_files_archived()
                .await?
                .into_iter()
                .filter(|(tl, name, _)| !there.contains(&(*tl, name.clone())))
                .collect();
        }
        report.missing = missing.clone();
        report.missing_wal = missing_wal.clone();
        for (id, at) in missing {
            let step = async {
                let copied = self.copy_snapshot(&id, dest).await?;
                let check = dest.verify(&id, false).await?;
                if !check.passed() {
                    return Err(RepoError::Damaged(format!(
                        "snapshot {id} does not verify at the destination after the copy: {} {}",
                        check.manifest.detail, check.objects.detail
                    )));
                }
                Ok::<_, RepoError>(copied)
            };
            match step.await {
                Ok(copied) => {
                    report.snapshots_copied += 1;
                    report.bytes_copied += copied.bytes_stored;
                    report.missing.retain(|(m, t)| (m, t) != (&id, &at));
                }
                Err(e) => {
                    report.unreachable = matches!(e, RepoError::Backend(_));
                    report.error = Some(format!("snapshot {id}: {e}"));
                    return Ok(report);
                }
            }
        }
        for (tl, name, at) in missing_wal {
            let step = async {
                let data = self.get_wal(tl, &name).await?;
                dest.put_wal(tl, &name, &data).await?;
                Ok::<_, RepoError>(data.len() as u64)
            };
            match step.await {
                Ok(n) => {
                    report.wal_copied += 1;
                    report.bytes_copied += n;
                    report
                        .missing_wal
                        .retain(|(t, m, a)| (t, m, a) != (&tl, &name, &at));
                }
                Err(e) => {
                    report.unreachable = matches!(e, RepoError::Backend(_));
                    report.error = Some(format!("WAL {name} (timeline {tl}): {e}"));
                    return Ok(report);
                }
            }
        }
        if report.snapshots_copied + report.wal_copied > 0 {
            info!(
                destination = %dest.backend().describe(),
                snapshots = report.snapshots_copied,
                wal = report.wal_copied,
                "destination caught up"
            );
        }
        Ok(report)
    }

    pub async fn copy_snapshot(
        &self,
        id: &str,
        dest: &Repository,
    ) -> Result<CopyReport, RepoError> {
        let started = Instant::now();
        let mut report = CopyReport {
            snapshot: id.to_string(),
            ..CopyReport::default()
        };
        let snap = self.snapshot(id).await?;
        if dest
            .backend()
            .size(&format!("snapshots/{id}"))
            .await?
            .is_some()
        {
            report.already_present = true;
            report.duration = started.elapsed();
            return Ok(report);
        }
        let lock = dest.lock(&format!("copy {id}")).await?;
        let result = self.copy_locked(&snap, dest, &mut report).await;
        lock.release().await;
        result?;
        report.duration = started.elapsed();
        info!(
            snapshot = %id,
            destination = %dest.backend().describe(),
            chunks = report.chunks_copied,
            bytes = report.bytes_copied,
            "snapshot copied"
        );
        Ok(report)
    }

    async fn copy_locked(
        &self,
        snap: &super::Snapshot,
        dest: &Repository,
        report: &mut CopyReport,
    ) -> Result<(), RepoError> {
        let mut seen = HashSet::new();
        let missing: Vec<ChunkId> = snap
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .flat_map(|e| e.chunks.iter().copied())
            .filter(|c| !dest.contains(c) && seen.insert(*c))
            .collect();
        let pack_size = dest.config().pack_size as usize;
        let mut blobs = futures::stream::iter(missing)
            .map(|c| async move {
                let data = self.read_chunk(&c).await?;
                let dest = dest.clone();
                tokio::task::spawn_blocking(move || {
                    let blob = pack::encode_blob(&data, dest.key())?;
                    Ok::<_, RepoError>((c, data.len() as u32, blob))
                })
                .await
                .map_err(|e| RepoError::local("encode task", e))?
            })
            .buffered(COPY_CONCURRENCY);
        let mut builder = PackBuilder::for_pack(pack_size);
        let mut index: Vec<IndexEntry> = Vec::new();
        // Full packs upload in the background while the next ones fill.
        let mut uploads: tokio::task::JoinSet<Result<(u64, Vec<IndexEntry>), RepoError>> =
            tokio::task::JoinSet::new();
        let mut collect = |done: Result<Result<(u64, Vec<IndexEntry>), RepoError>, _>,
                           report: &mut CopyReport|
         -> Result<(), RepoError> {
            let (n, entries) =
                done.map_err(|e: tokio::task::JoinError| RepoError::local("upload task", e))??;
            report.bytes_stored += n;
            index.extend(entries);
            Ok(())
        };
        while let Some((id, raw, blob)) = blobs.try_next().await? {
            report.chunks_copied += 1;
            report.bytes_copied += raw as u64;
            builder.add(id, raw, &blob);
            if builder.len() >= pack_size {
                let full = std::mem::replace(&mut builder, PackBuilder::for_pack(pack_size));
                uploads.spawn(upload(dest.clone(), full));
                while uploads.len() >= UPLOADS_IN_FLIGHT {
                    if let Some(done) = uploads.join_next().await {
                        collect(done, report)?;
                    }
                }
            }
        }
        if !builder.is_empty() {
            uploads.spawn(upload(dest.clone(), builder));
        }
        while let Some(done) = uploads.join_next().await {
            collect(done, report)?;
        }
        if !index.is_empty() {
            report.bytes_stored += dest.put_doc(&super::index_key(&snap.id), &index).await?;
            dest.add_to_index(&index);
        }
        report.bytes_stored += dest
            .put_doc(&format!("snapshots/{}", snap.id), snap)
            .await?;
        Ok(())
    }
}

/// The object names (last path part) of listed keys.
fn names(keys: Vec<(String, u64)>) -> HashSet<String> {
    keys.into_iter()
        .map(|(k, _)| super::object_name(&k).to_string())
        .collect()
}

async fn upload(
    dest: Repository,
    builder: PackBuilder,
) -> Result<(u64, Vec<IndexEntry>), RepoError> {
    let key = dest.clone();
    let (name, bytes, entries) = tokio::task::spawn_blocking(move || builder.finish(key.key()))
        .await
        .map_err(|e| RepoError::local("pack task", e))??;
    let n = bytes.len() as u64;
    dest.backend()
        .put(&pack_key(&name), bytes.into_bytes())
        .await?;
    Ok((n, entries))
}
