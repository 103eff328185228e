//! Reading many chunks efficiently: whole packs into one reused buffer, files ordered
//! by where their data lies, so each pack is read about once. Restore and verify share
//! it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use parking_lot::Mutex;

use super::pack::{self, ChunkId, PackBuf, PACK_ALIGN};
use super::snapshot::Entry;
use super::{RepoError, Repository};

/// One worker's chunk reader.
pub(crate) struct PackReader<'a> {
    repo: &'a Repository,
    handle: &'a tokio::runtime::Handle,
    /// Whole packs (kept while the worker's files come from them), or single ranged reads.
    whole_packs: bool,
    /// Hash every chunk against its id (verify); otherwise only an unencrypted
    /// repository's chunks are hashed, since AES-GCM already authenticates the rest.
    always_check_ids: bool,
    /// The packs read last (most recent last), each `(name, buf, len)` with the pack in
    /// `buf[..len]`: a page-level incremental file alternates between its parent's packs
    /// and its new pages' pack, and packs are read with `O_DIRECT` (no page cache to
    /// make a second read cheap).
    cached: Vec<(String, PackBuf, usize)>,
}

/// Packs kept per reader.
const CACHED_PACKS: usize = 2;

impl<'a> PackReader<'a> {
    pub(crate) fn new(
        repo: &'a Repository,
        handle: &'a tokio::runtime::Handle,
        whole_packs: bool,
        always_check_ids: bool,
    ) -> Self {
        Self {
            repo,
            handle,
            whole_packs,
            always_check_ids,
            cached: Vec::with_capacity(CACHED_PACKS),
        }
    }

    pub(crate) fn chunk(&mut self, id: &ChunkId) -> Result<Vec<u8>, RepoError> {
        if !self.whole_packs {
            return self.handle.block_on(self.repo.read_chunk(id));
        }
        let loc = self
            .repo
            .lookup(id)
            .ok_or_else(|| RepoError::Damaged(format!("chunk {} is in no index", id.hex())))?;
        let at = match self
            .cached
            .iter()
            .position(|(name, _, _)| *name == loc.pack)
        {
            Some(at) => at,
            None => {
                // Reuse the least recently used buffer once the cache is full.
                let (mut buf, _) = if self.cached.len() == CACHED_PACKS {
                    let (_, buf, len) = self.cached.remove(0);
                    (buf, len)
                } else {
                    (PackBuf::new(PACK_ALIGN), 0)
                };
                let len = self
                    .handle
                    .block_on(self.repo.read_pack(&loc.pack, &mut buf))?;
                self.cached.push((loc.pack.clone(), buf, len));
                self.cached.len() - 1
            }
        };
        // Most recently used last.
        let entry = self.cached.remove(at);
        self.cached.push(entry);
        let (_, buf, len) = &self.cached[self.cached.len() - 1];
        let start = loc.offset as usize;
        let stored = buf[..*len]
            .get(start..start + loc.length as usize)
            .ok_or_else(|| RepoError::Damaged(format!("pack {} is truncated", loc.pack)))?;
        let check =
            self.always_check_ids || (!self.repo.is_encrypted() && !pack::self_checking(stored));
        pack::decode_blob_checked(stored, id, loc.raw_length, self.repo.key(), check)
    }
}

/// Feeds a file's content to `out` in order: its chunks whole, or the slices its
/// extents name, each chunk decoded once while consecutive extents use it. Returns the
/// number of bytes fed.
pub(crate) fn content(
    source: &mut PackReader,
    e: &Entry,
    mut out: impl FnMut(&[u8]) -> Result<(), RepoError>,
) -> Result<u64, RepoError> {
    let mut fed = 0u64;
    if e.extents.is_empty() {
        for c in &e.chunks {
            let data = source.chunk(c)?;
            out(&data)?;
            fed += data.len() as u64;
        }
        return Ok(fed);
    }
    // Extents alternate between a few chunks (the parent's and the new pages'): keep the
    // last ones decoded.
    let mut recent: Vec<(ChunkId, Vec<u8>)> = Vec::with_capacity(RECENT_CHUNKS);
    for (id, range) in e.pieces()? {
        let at = match recent.iter().position(|(c, _)| *c == id) {
            Some(at) => at,
            None => {
                if recent.len() == RECENT_CHUNKS {
                    recent.remove(0);
                }
                recent.push((id, source.chunk(&id)?));
                recent.len() - 1
            }
        };
        let data = &recent[at].1;
        let slice = match range {
            Some(r) => data.get(r.clone()).ok_or_else(|| {
                RepoError::Damaged(format!(
                    "chunk {} is {} bytes; an extent wants {r:?}",
                    id.hex(),
                    data.len()
                ))
            })?,
            None => data.as_slice(),
        };
        out(slice)?;
        fed += slice.len() as u64;
    }
    Ok(fed)
}

const RECENT_CHUNKS: usize = 4;

/// The work plan for reading many files.
struct ReadPlan {
    /// File indices ordered by the pack and offset of their first chunk.
    order: Vec<usize>,
    /// Ranges of `order` whose files start in the same pack; a worker takes a whole group.
    groups: Vec<Range<usize>>,
    /// Whole-pack reads pay off: the files need at least a quarter of what the packs
    /// they touch hold.
    whole_packs: bool,
}

/// Calls `visit(reader, i)` for every index `i` of `files`, on up to `workers` threads,
/// each with its own [`PackReader`] and taking whole groups of files that start in the
/// same pack, so each pack is read about once. `packs` is the repository's pack listing
/// (name → size). The first error `visit` returns stops every worker and is returned;
/// a visitor that only records a problem returns `Ok`.
pub(crate) fn read_files(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    files: &[&Entry],
    packs: &HashMap<String, u64>,
    workers: usize,
    always_check_ids: bool,
    visit: impl Fn(&mut PackReader, usize) -> Result<(), RepoError> + Sync,
) -> Result<(), RepoError> {
    let ReadPlan {
        order,
        groups,
        whole_packs,
    } = plan(repo, files, packs);
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<RepoError>> = Mutex::default();
    std::thread::scope(|s| {
        for _ in 0..workers.min(groups.len()).max(1) {
            s.spawn(|| {
                let mut reader = PackReader::new(repo, handle, whole_packs, always_check_ids);
                while first_error.lock().is_none() {
                    let Some(range) = groups.get(next.fetch_add(1, Relaxed)) else {
                        return;
                    };
                    for &i in &order[range.clone()] {
                        if let Err(e) = visit(&mut reader, i) {
                            first_error.lock().get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn plan(repo: &Repository, files: &[&Entry], packs: &HashMap<String, u64>) -> ReadPlan {
    let first: Vec<Option<pack::Location>> = files
        .iter()
        .map(|e| e.chunks.first().and_then(|c| repo.lookup(c)))
        .collect();
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |l: &Option<pack::Location>| l.as_ref().map(|l| (l.pack.clone(), l.offset));
        key(&first[a]).cmp(&key(&first[b]))
    });
    let mut groups: Vec<Range<usize>> = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        let same = pos > 0
            && first[i].as_ref().map(|l| &l.pack)
                == first[order[pos - 1]].as_ref().map(|l| &l.pack);
        match groups.last_mut() {
            Some(g) if same => g.end = pos + 1,
            _ => groups.push(pos..pos + 1),
        }
    }
    let mut needed: HashMap<String, u64> = HashMap::new();
    for e in files {
        for c in &e.chunks {
            if let Some(l) = repo.lookup(c) {
                *needed.entry(l.pack).or_default() += l.length as u64;
            }
        }
    }
    let held: u64 = needed.keys().filter_map(|p| packs.get(p)).sum();
    let whole_packs = held > 0 && needed.values().sum::<u64>() * 4 >= held;
    ReadPlan {
        order,
        groups,
        whole_packs,
    }
}
