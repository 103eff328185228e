//! Copying a snapshot into another repository (a secondary location, perhaps with its
//! own key). Content-addressed, so only the chunks the destination lacks move; each is
//! checked against its id when read, re-sealed for the destination, packed, uploaded.
//! The destination's index and then the manifest are written last, exactly as a backup
//! does, so an interrupted copy leaves no snapshot there — and running it again resumes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

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

/// Chunks read and re-sealed at once.
const COPY_CONCURRENCY: usize = 4;

impl Repository {
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
                .map_err(|e| RepoError::Io(format!("encode task: {e}")))?
            })
            .buffered(COPY_CONCURRENCY);
        let mut builder = PackBuilder::for_pack(pack_size);
        let mut index: Vec<IndexEntry> = Vec::new();
        while let Some((id, raw, blob)) = blobs.try_next().await? {
            report.chunks_copied += 1;
            report.bytes_copied += raw as u64;
            builder.add(id, raw, &blob);
            if builder.len() >= pack_size {
                report.bytes_stored += upload(
                    dest,
                    std::mem::replace(&mut builder, PackBuilder::for_pack(pack_size)),
                    &mut index,
                )
                .await?;
            }
        }
        if !builder.is_empty() {
            report.bytes_stored += upload(dest, builder, &mut index).await?;
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

async fn upload(
    dest: &Repository,
    builder: PackBuilder,
    index: &mut Vec<IndexEntry>,
) -> Result<u64, RepoError> {
    let (name, bytes, entries) = builder.finish(dest.key())?;
    let n = bytes.len() as u64;
    dest.backend()
        .put(&pack_key(&name), bytes.into_bytes())
        .await?;
    index.extend(entries);
    Ok(n)
}
