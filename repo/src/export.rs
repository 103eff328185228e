//! Exporting a snapshot as a plain `tar.gz` with a `MANIFEST.json` (path, size, SHA-256
//! per file), readable with `tar` alone: the runbook's manual restore needs no drmesh.
//!
//! Archive layout: `MANIFEST.json` at the root and the snapshot's files under a prefix
//! directory (`docs_backup/` for documents), so `tar -xzf X.tar.gz && cp -r docs_backup/* …`
//! works as the runbook writes it.

use std::io::{Read, Write};

use sha2::Digest;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::pack::ChunkId;
use super::snapshot::{safe_relative, Entry, EntryKind, FileHash, Snapshot};
use super::{RepoError, Repository};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `MANIFEST.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveManifest {
    pub snapshot_id: String,
    pub kind: String,
    pub created_at: DateTime<Utc>,
    /// Directory inside the archive that holds the files.
    pub root: String,
    pub file_count: u64,
    pub total_bytes: u64,
    pub files: Vec<ManifestFile>,
}

impl ArchiveManifest {
    pub fn of(snap: &Snapshot, root: &str) -> Self {
        let files: Vec<ManifestFile> = snap
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| ManifestFile {
                path: e.path.clone(),
                size: e.size,
                sha256: e.sha256.clone().unwrap_or_default(),
            })
            .collect();
        Self {
            snapshot_id: snap.id.clone(),
            kind: snap.kind.clone(),
            created_at: snap.finished_at,
            root: root.to_string(),
            file_count: files.len() as u64,
            total_bytes: files.iter().map(|f| f.size).sum(),
            files,
        }
    }
}

/// Reads a file's content piece by piece from the repository (one chunk in memory).
pub(super) struct ChunkReader<'a> {
    repo: &'a Repository,
    handle: &'a tokio::runtime::Handle,
    path: &'a str,
    pieces: std::vec::IntoIter<super::snapshot::Piece>,
    /// The decoded chunk, its id, and the part of it still to read.
    chunk: Option<ChunkId>,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.end {
            let Some((id, range)) = self.pieces.next() else {
                return Ok(0);
            };
            if self.chunk != Some(id) {
                self.buf = self
                    .handle
                    .block_on(self.repo.read_chunk(&id))
                    .map_err(|e| std::io::Error::other(format!("{}: {e}", self.path)))?;
                self.chunk = Some(id);
            }
            let range = range.unwrap_or(0..self.buf.len());
            if range.end > self.buf.len() {
                return Err(std::io::Error::other(format!(
                    "{}: an extent reaches past its chunk",
                    self.path
                )));
            }
            (self.pos, self.end) = (range.start, range.end);
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

pub(super) fn chunk_reader<'a>(
    repo: &'a Repository,
    handle: &'a tokio::runtime::Handle,
    e: &'a Entry,
) -> Result<ChunkReader<'a>, RepoError> {
    Ok(ChunkReader {
        repo,
        handle,
        path: &e.path,
        pieces: e.pieces()?.into_iter(),
        chunk: None,
        buf: Vec::new(),
        pos: 0,
        end: 0,
    })
}

fn write_archive(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    snap: &Snapshot,
    root: &str,
    out: impl Write,
) -> Result<ArchiveManifest, RepoError> {
    let io = |e: std::io::Error| RepoError::local("write archive", e);
    let mut manifest = ArchiveManifest::of(snap, root);
    // The manifest promises `sha256sum`'s answer: files hashed by their chunk ids are
    // read once more to hash their content.
    for (f, e) in manifest
        .files
        .iter_mut()
        .zip(snap.entries.iter().filter(|e| e.kind == EntryKind::File))
    {
        if e.hash == FileHash::ChunkIds {
            let mut hasher = sha2::Sha256::new();
            std::io::copy(&mut chunk_reader(repo, handle, e)?, &mut hasher)
                .map_err(|err| RepoError::local(format!("read {}", e.path), err))?;
            f.sha256 = hex::encode(hasher.finalize());
        }
    }
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Complete);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| RepoError::Io(e.to_string()))?;
    let mut h = tar::Header::new_gnu();
    h.set_size(json.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(snap.finished_at.timestamp().max(0) as u64);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, "MANIFEST.json", json.as_slice())
        .map_err(io)?;
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(snap.finished_at.timestamp().max(0) as u64);
    tar.append_data(&mut dir, format!("{root}/"), std::io::empty())
        .map_err(io)?;
    for e in &snap.entries {
        let rel = safe_relative(&e.path)?;
        let path = Path::new(root).join(&rel);
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_uid(e.uid as u64);
        h.set_gid(e.gid as u64);
        h.set_mtime(e.mtime_ns.div_euclid(1_000_000_000).max(0) as u64);
        match e.kind {
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, &path, std::io::empty())
                    .map_err(io)?;
            }
            EntryKind::Symlink => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                let target = e.target.as_deref().unwrap_or_default();
                tar.append_link(&mut h, &path, target).map_err(io)?;
            }
            EntryKind::File => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(e.size);
                tar.append_data(&mut h, &path, chunk_reader(repo, handle, e)?)
                    .map_err(io)?;
            }
        }
    }
    let gz = tar.into_inner().map_err(io)?;
    let mut out = gz.finish().map_err(io)?;
    out.flush().map_err(io)?;
    Ok(manifest)
}

impl Repository {
    /// Writes snapshot `id` to `out` as a `tar.gz` (atomically: a temporary file, synced,
    /// renamed), its files under `root/`. Returns the manifest it wrote.
    pub async fn export_archive(
        &self,
        id: &str,
        out: &Path,
        root: &str,
    ) -> Result<ArchiveManifest, RepoError> {
        safe_relative(root)?;
        let snap = self.snapshot(id).await?;
        let repo = self.clone();
        let handle = tokio::runtime::Handle::current();
        let out = out.to_path_buf();
        let root = root.to_string();
        tokio::task::spawn_blocking(move || {
            let dir = out
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            std::fs::create_dir_all(&dir)
                .map_err(|e| RepoError::local(format!("create {}", dir.display()), e))?;
            let tmp = dir.join(format!(
                ".{}.tmp-{}",
                out.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
                uuid::Uuid::new_v4().simple()
            ));
            let result = (|| {
                let file = std::fs::File::create(&tmp)
                    .map_err(|e| RepoError::local(format!("create {}", tmp.display()), e))?;
                let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
                let manifest = write_archive(&repo, &handle, &snap, &root, &mut writer)?;
                let file = writer
                    .into_inner()
                    .map_err(|e| RepoError::local(format!("write {}", tmp.display()), e))?;
                file.sync_all()
                    .map_err(|e| RepoError::local(format!("sync {}", tmp.display()), e))?;
                std::fs::rename(&tmp, &out)
                    .map_err(|e| RepoError::local(format!("rename to {}", out.display()), e))?;
                if let Ok(d) = std::fs::File::open(&dir) {
                    let _ = d.sync_all();
                }
                Ok(manifest)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        })
        .await
        .map_err(|e| RepoError::local("export task", e))?
    }
}
