//! Page-level incremental copies of database files. A PostgreSQL page starts with the
//! LSN of the last WAL record that changed it (`pd_lsn`); a page whose LSN is below the
//! parent backup's start LSN has not changed since the parent read it, so the new
//! snapshot points at the parent's bytes for it (an [`Extent`] of the parent's chunks)
//! and stores only the changed pages — where file-level tools copy every file a single
//! update touched.
//!
//! Why that is safe: `pg_backup_start` checkpoints, so every change before the new
//! backup's start LSN is on disk when the file is read, with its LSN on the page; a
//! page changed after that start is replayed from the WAL (full-page images) on
//! recovery whatever was copied. The caller enables this only for relation main forks
//! (whose changes are all WAL-logged), only when the parent is on the same timeline,
//! and a file is treated this way only when it is the parent's file (same inode).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering::Relaxed;

use crossbeam_channel::Sender;
use sha2::{Digest, Sha256};

use super::{store_chunk, Blob, ReadError, Shared};
use crate::pack::ChunkId;
use crate::snapshot::{Entry, Extent, SnapshotStats};
use crate::{RepoError, Repository};

/// Which files are database pages: stored in fixed blocks, and — given a parent —
/// copied page by page against it.
#[derive(Clone, Copy, Debug)]
pub struct PageDelta {
    /// Files made of pages with an LSN header (PostgreSQL relation main forks).
    pub eligible: fn(&str) -> bool,
    /// PostgreSQL's block size (8192 unless built otherwise).
    pub page_size: u32,
    /// The parent backup's start LSN: a page below it is the parent's. `None`: no
    /// parent to copy against (a full backup).
    pub lsn_floor: Option<u64>,
}

/// New pages are gathered into chunks of about this size.
const NEW_CHUNK: usize = 1 << 20;

/// Whether `meta`'s file can be copied against `parent`'s: the same file (inode), whole
/// pages in both.
pub(super) fn applies(pd: &PageDelta, parent: &Entry, meta: &std::fs::Metadata) -> bool {
    let page = pd.page_size as u64;
    page > 0
        && parent.inode == meta.ino()
        && meta.len().is_multiple_of(page)
        && parent.size.is_multiple_of(page)
        && parent.size > 0
}

/// Where each byte of the parent's file lies: (file offset, chunk, offset in the decoded
/// chunk, length), in file order.
type Layout = Vec<(u64, ChunkId, u32, u32)>;

fn layout(repo: &Repository, parent: &Entry) -> Option<Layout> {
    let mut out = Vec::new();
    let mut at = 0u64;
    for (id, range) in parent.pieces().ok()? {
        let (off, len) = match range {
            Some(r) => (r.start as u32, (r.end - r.start) as u32),
            None => (0, repo.lookup(&id)?.raw_length),
        };
        out.push((at, id, off, len));
        at += len as u64;
    }
    (at == parent.size).then_some(out)
}

/// One piece of the new file: the parent's bytes, or bytes of the `n`th new chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Parent(ChunkId),
    New(usize),
}

struct Builder {
    pieces: Vec<(Source, u32, u32)>,
}

impl Builder {
    fn push(&mut self, src: Source, off: u32, len: u32) {
        if let Some(last) = self.pieces.last_mut() {
            if last.0 == src && last.1 + last.2 == off {
                last.2 += len;
                return;
            }
        }
        self.pieces.push((src, off, len));
    }

    /// The parent's bytes for `[at, at + len)` of the file.
    fn parent_range(&mut self, layout: &Layout, mut at: u64, mut len: u64) {
        while len > 0 {
            let i = layout.partition_point(|p| p.0 <= at).saturating_sub(1);
            let (start, id, off, plen) = layout[i];
            let within = at - start;
            let take = len.min(plen as u64 - within);
            self.push(Source::Parent(id), off + within as u32, take as u32);
            at += take;
            len -= take;
        }
    }
}

/// Copies `entry`'s file page by page against `parent`; see the module notes. `false`
/// when the parent's layout is not known (its chunks not all indexed): the caller then
/// copies the file whole.
pub(super) fn read_pages(
    sh: &Shared,
    tx: &Sender<Blob>,
    entry: &mut Entry,
    parent: &Entry,
    pd: &PageDelta,
    stats: &mut SnapshotStats,
) -> Result<bool, ReadError> {
    let full = sh.source.join(&entry.path);
    let Some(layout) = layout(sh.repo, parent) else {
        return Ok(false);
    };
    let read_started = std::time::SystemTime::now();
    let io = |what: &str, e: std::io::Error| ReadError::of_io(&full, what, e);
    let file = std::fs::File::open(&full).map_err(|e| io("open", e))?;
    let page = pd.page_size as usize;
    let mut buf = vec![0u8; (NEW_CHUNK / page).max(1) * page];
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut new_data: Vec<u8> = Vec::with_capacity(NEW_CHUNK + page);
    let mut new_ids: Vec<ChunkId> = Vec::new();
    let mut b = Builder { pieces: Vec::new() };
    let floor = pd.lsn_floor.unwrap_or(0);
    loop {
        if sh.cancel.load(Relaxed) {
            return Err(ReadError::Repo(RepoError::Cancelled));
        }
        // Fill the buffer (short reads happen); what is read is a whole number of pages
        // unless the file ends (or grew) mid-page.
        let n = super::fill(&mut buf, |b| (&file).read(b)).map_err(|e| io("read", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        for start in (0..n).step_by(page) {
            let bytes = &buf[start..(start + page).min(n)];
            let at = size + start as u64;
            let lsn = if bytes.len() == page {
                let mut hi = [0u8; 4];
                let mut lo = [0u8; 4];
                hi.copy_from_slice(&bytes[0..4]);
                lo.copy_from_slice(&bytes[4..8]);
                (u64::from(u32::from_le_bytes(hi)) << 32) | u64::from(u32::from_le_bytes(lo))
            } else {
                0
            };
            let unchanged = lsn != 0 && lsn < floor && at + page as u64 <= parent.size;
            if unchanged {
                b.parent_range(&layout, at, page as u64);
            } else {
                b.push(
                    Source::New(new_ids.len()),
                    new_data.len() as u32,
                    bytes.len() as u32,
                );
                new_data.extend_from_slice(bytes);
                if new_data.len() >= NEW_CHUNK {
                    new_ids.push(store_chunk(sh, tx, &new_data, stats)?);
                    new_data.clear();
                }
            }
        }
        size += n as u64;
        sh.progress.bytes_done.fetch_add(n as u64, Relaxed);
        stats.bytes_read += n as u64;
        if n < buf.len() {
            break;
        }
    }
    if !new_data.is_empty() {
        new_ids.push(store_chunk(sh, tx, &new_data, stats)?);
    }
    // The pieces as extents over the entry's distinct chunks, in order of first use.
    let mut chunks: Vec<ChunkId> = Vec::new();
    let mut index_of: std::collections::HashMap<ChunkId, u32> = std::collections::HashMap::new();
    let mut extents = Vec::with_capacity(b.pieces.len());
    for (src, off, len) in b.pieces {
        let id = match src {
            Source::Parent(id) => id,
            Source::New(i) => new_ids[i],
        };
        let index = *index_of.entry(id).or_insert_with(|| {
            chunks.push(id);
            (chunks.len() - 1) as u32
        });
        extents.push(Extent(index, off, len));
    }
    entry.chunks = chunks;
    entry.extents = extents;
    entry.size = size;
    entry.sha256 = Some(hex::encode(hasher.finalize()));
    // A live database file changes while it is read (the WAL covers that); what matters
    // is whether the next backup may skip it on its size and times.
    entry.recheck = super::recheck_after(&full, read_started, size, entry.mtime_ns)
        .map_err(|e| io("stat", e))?;
    Ok(true)
}
