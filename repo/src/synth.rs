//! Synthetic repositories for benchmarks: many snapshots over many small chunks, written
//! straight in the repository's own formats (packs, one index object and one manifest
//! per snapshot, exactly as a backup writes them), without reading any source files —
//! a thousand backups of a million chunks take seconds to make.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::pack::{self, ChunkId, IndexEntry, PackBuilder};
use super::snapshot::{Entry, EntryKind, FileHash, Snapshot, SnapshotStats};
use super::{index_key, pack_key, RepoError, Repository};

impl Repository {
    /// Writes a snapshot manifest as it is, without packs or an index: for tests of what
    /// reads only manifests (which backup a recovery starts from, retention).
    pub async fn write_manifest(&self, snap: &Snapshot) -> Result<u64, RepoError> {
        self.put_doc(&format!("snapshots/{}", snap.id), snap).await
    }
}

/// What to make.
#[derive(Clone, Debug)]
pub struct SynthSpec {
    /// Snapshots, one every `every`, the newest finishing at `newest`.
    pub snapshots: usize,
    /// Chunks each snapshot stores new (its own).
    pub new_chunks: usize,
    /// Chunks each snapshot shares with the one before it (deduplicated, as an
    /// incremental backup's unchanged files).
    pub shared_chunks: usize,
    /// Chunks per file.
    pub chunks_per_file: usize,
    pub newest: DateTime<Utc>,
    pub every: Duration,
    /// The snapshots' kind, e.g. `documents`.
    pub kind: String,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SynthReport {
    pub snapshots: usize,
    pub chunks: usize,
    pub packs: usize,
    pub bytes_stored: u64,
}

/// Chunk `n`'s content: 64 bytes that differ for every `n`.
fn content(n: u64) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

impl Repository {
    /// Writes `spec`'s snapshots, oldest first; snapshot `k` stores chunks
    /// `k * new_chunks ..` in packs of its own and references the last `shared_chunks`
    /// of the one before it too.
    pub async fn write_synthetic(&self, spec: &SynthSpec) -> Result<SynthReport, RepoError> {
        let mut report = SynthReport::default();
        let pack_size = self.config().pack_size as usize;
        let every = chrono::Duration::from_std(spec.every)
            .map_err(|e| RepoError::Config(format!("every: {e}")))?;
        let mut previous: Vec<(ChunkId, u32)> = Vec::new();
        for k in 0..spec.snapshots {
            let id = format!("synth_{k:06}");
            let finished = spec.newest - every * (spec.snapshots - 1 - k) as i32;
            let first = (k * spec.new_chunks) as u64;
            let mut own = Vec::with_capacity(spec.new_chunks);
            let mut entries = Vec::with_capacity(spec.new_chunks);
            let mut builder = PackBuilder::for_pack(pack_size);
            for n in first..first + spec.new_chunks as u64 {
                let data = content(n);
                let cid = ChunkId::of(&data);
                builder.add(
                    cid,
                    data.len() as u32,
                    &pack::encode_blob(&data, self.key())?,
                );
                own.push((cid, data.len() as u32));
                if builder.len() >= pack_size {
                    let full = std::mem::replace(&mut builder, PackBuilder::for_pack(pack_size));
                    report.bytes_stored += self.put_pack(full, &mut entries, &mut report).await?;
                }
            }
            if !builder.is_empty() {
                report.bytes_stored += self.put_pack(builder, &mut entries, &mut report).await?;
            }
            report.bytes_stored += self.put_doc(&index_key(&id), &entries).await?;
            self.add_to_index(&entries);

            // The files: the shared chunks first, then its own.
            let shared = previous.len().saturating_sub(spec.shared_chunks);
            let chunks: Vec<(ChunkId, u32)> = previous[shared..]
                .iter()
                .chain(own.iter())
                .copied()
                .collect();
            let files: Vec<Entry> = chunks
                .chunks(spec.chunks_per_file.max(1))
                .enumerate()
                .map(|(i, part)| {
                    let ids: Vec<ChunkId> = part.iter().map(|(c, _)| *c).collect();
                    let (sha256, hash) = match ids.as_slice() {
                        [one] => (one.hex(), FileHash::Content),
                        _ => (FileHash::of_chunk_ids(&ids), FileHash::ChunkIds),
                    };
                    Entry {
                        path: format!("files/{i:06}.bin"),
                        kind: EntryKind::File,
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        mtime_ns: finished.timestamp_nanos_opt().unwrap_or(0),
                        size: part.iter().map(|(_, n)| u64::from(*n)).sum(),
                        inode: i as u64 + 1,
                        sha256: Some(sha256),
                        hash,
                        chunks: ids,
                        extents: Vec::new(),
                        target: None,
                        recheck: false,
                    }
                })
                .collect();
            let mut dirs = vec![Entry {
                path: "files".into(),
                kind: EntryKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime_ns: 0,
                size: 0,
                inode: 0,
                sha256: None,
                hash: FileHash::Content,
                chunks: Vec::new(),
                extents: Vec::new(),
                target: None,
                recheck: false,
            }];
            dirs.extend(files);
            let snap = Snapshot {
                id: id.clone(),
                kind: spec.kind.clone(),
                parent: k.checked_sub(1).map(|p| format!("synth_{p:06}")),
                source: "/srv/synthetic".into(),
                hostname: "synth".into(),
                started_at: finished,
                finished_at: finished,
                tags: Default::default(),
                stats: SnapshotStats {
                    files: dirs.len() as u64 - 1,
                    chunks_new: spec.new_chunks as u64,
                    ..SnapshotStats::default()
                },
                postgres: None,
                entries: dirs,
            };
            report.bytes_stored += self.put_doc(&format!("snapshots/{id}"), &snap).await?;
            report.snapshots += 1;
            report.chunks += spec.new_chunks;
            previous = own;
        }
        Ok(report)
    }

    async fn put_pack(
        &self,
        builder: PackBuilder,
        entries: &mut Vec<IndexEntry>,
        report: &mut SynthReport,
    ) -> Result<u64, RepoError> {
        let (name, bytes, index) = builder.finish(self.key())?;
        let bytes = bytes.into_bytes();
        let n = bytes.len() as u64;
        self.backend().put(&pack_key(&name), bytes).await?;
        entries.extend(index);
        report.packs += 1;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roundtrip_tests::temp_repo;
    use crate::{KeySource, Location, RepoOptions};

    #[tokio::test]
    async fn a_synthetic_repository_verifies_and_restores() {
        let (dir, repo) = temp_repo().await;
        let spec = SynthSpec {
            snapshots: 5,
            new_chunks: 300,
            shared_chunks: 100,
            chunks_per_file: 7,
            newest: Utc::now(),
            every: Duration::from_secs(86400),
            kind: "documents".into(),
        };
        let made = repo.write_synthetic(&spec).await.expect("write");
        assert_eq!((made.snapshots, made.chunks), (5, 1500));
        let reopened = Repository::open(&RepoOptions {
            location: Location::new(dir.path().join("repo").to_string_lossy()),
            key: KeySource::None,
        })
        .await
        .expect("open");
        for k in 0..5 {
            let v = reopened
                .verify(&format!("synth_{k:06}"), true)
                .await
                .expect("verify");
            assert!(v.passed(), "{v:?}");
        }
        let snap = reopened.snapshot("synth_000004").await.expect("snapshot");
        let referenced: usize = snap.entries.iter().map(|e| e.chunks.len()).sum();
        assert_eq!(referenced, 400, "100 shared and 300 own");
    }
}
