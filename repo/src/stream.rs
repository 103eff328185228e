//! Backing up one stream — a `pg_dump` running as we read it — as a snapshot holding one
//! file, chunked, compressed, sealed and packed as it arrives, without a copy on disk.

use std::io::Read;
use std::path::PathBuf;

use chrono::Utc;
use sha2::{Digest, Sha256};

use super::backup::{valid_snapshot_id, PendingBackup};
use super::pack::{self, ChunkId, IndexEntry, PackBuilder};
use super::snapshot::{Entry, EntryKind, Snapshot, SnapshotStats};
use super::{pack_key, RepoError, Repository, Tags};

/// What to store, and as what.
pub struct StreamBackup {
    pub id: String,
    pub kind: String,
    /// The file's name in the snapshot, e.g. `full_1705329600000_abc123.dump`.
    pub name: String,
    /// Recorded as the snapshot's source, e.g. `pg_dump postgres`.
    pub source: PathBuf,
    pub tags: Tags,
}

impl Repository {
    /// Reads `reader` to its end into a new snapshot; returns it once durably stored.
    pub async fn backup_stream<R: Read + Send + 'static>(
        &self,
        req: StreamBackup,
        reader: R,
    ) -> Result<Snapshot, RepoError> {
        valid_snapshot_id(&req.id)?;
        super::snapshot::safe_relative(&req.name)?;
        let lock = self.lock(&format!("backup {}", req.id)).await?;
        let started_at = Utc::now();
        let repo = self.clone();
        let handle = tokio::runtime::Handle::current();
        let stored =
            tokio::task::spawn_blocking(move || store_stream(&repo, &handle, reader)).await;
        let (chunks, size, digest, index, mut stats) = match stored {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                lock.release().await;
                return Err(e);
            }
            Err(e) => {
                lock.release().await;
                return Err(RepoError::local("backup task", e));
            }
        };
        if !index.is_empty() {
            stats.bytes_stored += self.put_doc(&super::index_key(&req.id), &index).await?;
            self.add_to_index(&index);
        }
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let entry = Entry {
            path: req.name.clone(),
            kind: EntryKind::File,
            mode: 0o600,
            uid,
            gid,
            mtime_ns: Utc::now().timestamp_nanos_opt().unwrap_or_default(),
            size,
            inode: 0,
            sha256: Some(digest),
            hash: super::snapshot::FileHash::Content,
            chunks,
            extents: Vec::new(),
            target: None,
            recheck: true,
        };
        stats.files = 1;
        stats.files_read = 1;
        stats.bytes = size;
        stats.bytes_read = size;
        let snap = Snapshot {
            id: req.id,
            kind: req.kind,
            parent: None,
            source: req.source,
            hostname: super::hostname(),
            started_at,
            finished_at: Utc::now(),
            tags: req.tags,
            stats,
            postgres: None,
            entries: vec![entry],
        };
        PendingBackup::new(self.clone(), lock, snap).commit().await
    }
}

type Stored = (Vec<ChunkId>, u64, String, Vec<IndexEntry>, SnapshotStats);

fn store_stream<R: Read>(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    reader: R,
) -> Result<Stored, RepoError> {
    let c = repo.config().chunker;
    let pack_size = repo.config().pack_size as usize;
    let mut hasher = Sha256::new();
    let mut chunks = Vec::new();
    let mut index = Vec::new();
    let mut stats = SnapshotStats::default();
    let mut size = 0u64;
    let mut seen = std::collections::HashSet::new();
    let mut builder = PackBuilder::for_pack(pack_size);
    let upload = |builder: PackBuilder, index: &mut Vec<IndexEntry>, stats: &mut SnapshotStats| {
        let (name, bytes, entries) = builder.finish(repo.key())?;
        stats.bytes_stored += bytes.len() as u64;
        handle.block_on(repo.backend().put(&pack_key(&name), bytes.into_bytes()))?;
        index.extend(entries);
        Ok::<(), RepoError>(())
    };
    for chunk in fastcdc::v2020::StreamCDC::new(reader, c.min, c.avg, c.max) {
        let chunk = chunk.map_err(|e| RepoError::local("read the stream", e))?;
        let data = chunk.data;
        hasher.update(&data);
        size += data.len() as u64;
        let id = ChunkId::of(&data);
        chunks.push(id);
        if repo.contains(&id) || !seen.insert(id) {
            continue;
        }
        stats.chunks_new += 1;
        stats.bytes_new += data.len() as u64;
        builder.add(
            id,
            data.len() as u32,
            &pack::encode_blob(&data, repo.key())?,
        );
        if builder.len() >= pack_size {
            let full = std::mem::replace(&mut builder, PackBuilder::for_pack(pack_size));
            upload(full, &mut index, &mut stats)?;
        }
    }
    if !builder.is_empty() {
        upload(builder, &mut index, &mut stats)?;
    }
    Ok((chunks, size, hex::encode(hasher.finalize()), index, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeySource, Location, RepoOptions};

    /// Gives `good` bytes, then fails (as a dump whose `pg_dump` died).
    struct Failing {
        good: Vec<u8>,
        at: usize,
    }

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.at >= self.good.len() {
                return Err(std::io::Error::other("pg_dump ended with exit status: 1"));
            }
            let n = buf.len().min(self.good.len() - self.at);
            buf[..n].copy_from_slice(&self.good[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[tokio::test]
    async fn a_stream_is_stored_whole_or_not_at_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = RepoOptions {
            location: Location::new(dir.path().join("repo").to_string_lossy()),
            key: KeySource::None,
        };
        let repo = Repository::init(&options).await.expect("init");
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let req = |id: &str| StreamBackup {
            id: id.into(),
            kind: "postgres-logical".into(),
            name: format!("{id}.dump"),
            source: "pg_dump test".into(),
            tags: Tags::new(),
        };
        let err = repo
            .backup_stream(
                req("full_1_failed"),
                Failing {
                    good: data.clone(),
                    at: 0,
                },
            )
            .await
            .expect_err("a failing stream");
        assert!(err.to_string().contains("pg_dump ended"), "{err}");
        assert!(repo.snapshots().await.expect("list").is_empty());

        let snap = repo
            .backup_stream(req("full_2_whole"), std::io::Cursor::new(data.clone()))
            .await
            .expect("a whole stream");
        assert_eq!(snap.entries[0].size, data.len() as u64);
        let out = dir.path().join("out");
        repo.restore(crate::restore::RestoreRequest::new("full_2_whole", &out))
            .await
            .expect("restore");
        assert_eq!(
            std::fs::read(out.join("full_2_whole.dump")).expect("read"),
            data
        );
    }
}
