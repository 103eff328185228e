//! Reading many chunks efficiently: whole packs, read once into a cache the workers
//! share, and files taken in the order their data lies, so each pack is read about
//! once however the work is spread. Restore and verify share it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::pack::{self, ChunkId, PackBuf, PACK_ALIGN};
use super::snapshot::Entry;
use super::{RepoError, Repository};

/// A pack read whole: its bytes are `buf[..len]`.
pub(crate) struct LoadedPack {
    buf: PackBuf,
    len: usize,
}

/// Whole packs shared by a set of readers: each pack is read once (a reader wanting a
/// pack another is reading waits for it) and kept while there is room; packs no reader
/// holds are dropped least recently used first, their buffers reused. Packs are read
/// with `O_DIRECT`, with no page cache behind them to make a second read cheap.
pub(crate) struct PackCache {
    state: Mutex<CacheState>,
    loaded: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct CacheState {
    /// Least recently used first; `None` while being read.
    packs: Vec<(String, Option<Arc<LoadedPack>>)>,
    /// Packs read ahead that no reader has asked for yet.
    ahead: Vec<String>,
    /// Packs readers have asked for: reading them ahead is too late.
    asked: std::collections::HashSet<String>,
    /// Work items not yet done that need each pack: a pack still needed is dropped
    /// only when nothing else can go (a page-level incremental's new pages lie in a few
    /// packs every file part needs).
    needed: HashMap<String, usize>,
    /// Buffers of dropped packs.
    spare: Vec<PackBuf>,
}

impl PackCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            loaded: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// The pack `name`, from the cache or read by `read` into a buffer.
    fn get(
        &self,
        name: &str,
        read: impl FnOnce(&mut PackBuf) -> Result<usize, RepoError>,
    ) -> Result<Arc<LoadedPack>, RepoError> {
        let mut st = self.state.lock();
        if !st.asked.contains(name) {
            st.asked.insert(name.to_string());
        }
        self.load(st, name, read)
    }

    fn load(
        &self,
        mut st: parking_lot::MutexGuard<'_, CacheState>,
        name: &str,
        read: impl FnOnce(&mut PackBuf) -> Result<usize, RepoError>,
    ) -> Result<Arc<LoadedPack>, RepoError> {
        while let Some(at) = st.packs.iter().position(|(n, _)| n == name) {
            match &st.packs[at].1 {
                Some(pack) => {
                    let pack = pack.clone();
                    let entry = st.packs.remove(at);
                    st.packs.push(entry);
                    if st.ahead.iter().any(|n| n == name) {
                        st.ahead.retain(|n| n != name);
                        self.loaded.notify_all();
                    }
                    return Ok(pack);
                }
                None => self.loaded.wait(&mut st),
            }
        }
        self.make_room(&mut st);
        st.packs.push((name.to_string(), None));
        let mut buf = st.spare.pop().unwrap_or_else(|| PackBuf::new(PACK_ALIGN));
        drop(st);
        let result = read(&mut buf);
        let mut st = self.state.lock();
        let at = st.packs.iter().position(|(n, _)| n == name);
        let out = match result {
            Ok(len) => {
                let pack = Arc::new(LoadedPack { buf, len });
                if let Some(at) = at {
                    st.packs[at].1 = Some(pack.clone());
                }
                Ok(pack)
            }
            Err(e) => {
                if let Some(at) = at {
                    st.packs.remove(at);
                }
                st.spare.push(buf);
                Err(e)
            }
        };
        self.loaded.notify_all();
        out
    }

    /// Drops the least recently used packs no reader holds until there is room for one
    /// more (or nothing more can go).
    fn make_room(&self, st: &mut CacheState) {
        while st.packs.len() >= self.capacity {
            // Packs read ahead go last: a reader is about to want them.
            let free = |(name, p): &(String, Option<Arc<LoadedPack>>), ahead: bool| {
                p.as_ref().is_some_and(|p| Arc::strong_count(p) == 1)
                    && st.ahead.contains(name) == ahead
            };
            let unneeded = |e: &(String, Option<Arc<LoadedPack>>)| {
                free(e, false) && st.needed.get(&e.0).is_none_or(|n| *n == 0)
            };
            let Some(at) = st
                .packs
                .iter()
                .position(unneeded)
                .or_else(|| st.packs.iter().position(|e| free(e, false)))
                .or_else(|| st.packs.iter().position(|e| free(e, true)))
            else {
                break;
            };
            let (name, pack) = st.packs.remove(at);
            st.ahead.retain(|n| *n != name);
            if let Some(pack) = pack.and_then(|p| Arc::try_unwrap(p).ok()) {
                st.spare.push(pack.buf);
            }
        }
    }

    /// Counts the packs each work item needs (see `CacheState::needed`).
    fn expect(&self, items: &[Vec<String>]) {
        let mut st = self.state.lock();
        for packs in items {
            for p in packs {
                *st.needed.entry(p.clone()).or_default() += 1;
            }
        }
    }

    /// A work item that needed `packs` is done.
    fn done_with(&self, packs: &[String]) {
        let mut st = self.state.lock();
        for p in packs {
            if let Some(n) = st.needed.get_mut(p) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Reads `names` in order ahead of the readers, at most [`READ_AHEAD`] packs they
    /// have not asked for yet and never past the cache's room, until `stop`.
    fn read_ahead(
        &self,
        names: &[String],
        stop: &std::sync::atomic::AtomicBool,
        read: impl Fn(&str, &mut PackBuf) -> Result<usize, RepoError>,
    ) {
        for name in names {
            let mut st = self.state.lock();
            loop {
                if stop.load(Relaxed) {
                    return;
                }
                let room = st.packs.len() < self.capacity
                    || st
                        .packs
                        .iter()
                        .any(|(_, p)| p.as_ref().is_some_and(|p| Arc::strong_count(p) == 1));
                if st.ahead.len() < READ_AHEAD && room {
                    break;
                }
                self.loaded
                    .wait_for(&mut st, std::time::Duration::from_millis(20));
            }
            if st.asked.contains(name) || st.packs.iter().any(|(n, _)| n == name) {
                continue;
            }
            st.ahead.push(name.clone());
            // A failed read is left for the reader that needs the pack to report.
            if self.load(st, name, |buf| read(name, buf)).is_err() {
                self.state.lock().ahead.retain(|n| n != name);
            }
        }
    }
}

/// Packs read ahead of the readers.
const READ_AHEAD: usize = 2;

/// The most packs a cache keeps (8 MiB each by default), so memory stays bounded
/// whatever the number of workers: at 16, restore and verify of the documents benchmark
/// peaked at 205 and 247 MB.
const MAX_CACHED_PACKS: usize = 13;

/// One worker's chunk reader.
pub(crate) struct PackReader<'a> {
    repo: &'a Repository,
    handle: &'a tokio::runtime::Handle,
    /// Whole packs from the shared cache, or single ranged reads.
    whole_packs: Option<&'a PackCache>,
    /// Hash every chunk against its id (verify); otherwise only an unencrypted
    /// repository's chunks are hashed, since AES-GCM already authenticates the rest.
    always_check_ids: bool,
    /// The packs this reader used last (most recent last), held so they stay cached: a
    /// page-level incremental file alternates between its parent's packs and its new
    /// pages' pack.
    held: Vec<(String, Arc<LoadedPack>)>,
}

/// Packs held per reader.
const HELD_PACKS: usize = 2;

impl<'a> PackReader<'a> {
    pub(crate) fn new(
        repo: &'a Repository,
        handle: &'a tokio::runtime::Handle,
        whole_packs: Option<&'a PackCache>,
        always_check_ids: bool,
    ) -> Self {
        Self {
            repo,
            handle,
            whole_packs,
            always_check_ids,
            held: Vec::with_capacity(HELD_PACKS),
        }
    }

    pub(crate) fn chunk(&mut self, id: &ChunkId) -> Result<Vec<u8>, RepoError> {
        let Some(cache) = self.whole_packs else {
            return self.handle.block_on(self.repo.read_chunk(id));
        };
        let loc = self
            .repo
            .lookup(id)
            .ok_or_else(|| RepoError::Damaged(format!("chunk {} is in no index", id.hex())))?;
        let at = match self.held.iter().position(|(name, _)| *name == loc.pack) {
            Some(at) => at,
            None => {
                if self.held.len() == HELD_PACKS {
                    self.held.remove(0);
                }
                let (repo, handle) = (self.repo, self.handle);
                let pack = cache.get(&loc.pack, |buf| {
                    handle.block_on(repo.read_pack(&loc.pack, buf))
                })?;
                self.held.push((loc.pack.clone(), pack));
                self.held.len() - 1
            }
        };
        // Most recently used last.
        let entry = self.held.remove(at);
        self.held.push(entry);
        let pack = &self.held[self.held.len() - 1].1;
        let (buf, len) = (&pack.buf, pack.len);
        let start = loc.offset as usize;
        let stored = buf[..len]
            .get(start..start + loc.length as usize)
            .ok_or_else(|| RepoError::Damaged(format!("pack {} is truncated", loc.pack)))?;
        let check =
            self.always_check_ids || (!self.repo.is_encrypted() && !pack::self_checking(stored));
        // Named with its pack, so a report leads to the damaged object.
        pack::decode_blob_checked(stored, id, loc.raw_length, self.repo.key(), check).map_err(|e| {
            match e {
                RepoError::Damaged(why) => {
                    RepoError::Damaged(format!("chunk {} in pack {}: {why}", id.hex(), loc.pack))
                }
                RepoError::Corrupt(why) => {
                    RepoError::Corrupt(format!("chunk {} in pack {}: {why}", id.hex(), loc.pack))
                }
                other => other,
            }
        })
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

/// How [`read_files`] goes about it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadOptions {
    pub workers: usize,
    /// See [`PackReader::new`].
    pub always_check_ids: bool,
    /// Files from this index on are taken in the order given, after the others.
    pub in_order_from: usize,
}

/// The work plan for reading many files.
struct ReadPlan {
    /// File indices ordered by the pack and offset of their first chunk.
    order: Vec<usize>,
    /// Whole-pack reads pay off: the files need at least a quarter of what the packs
    /// they touch hold.
    whole_packs: bool,
}

/// Calls `visit(reader, i)` for every index `i` of `files`, on up to `workers` threads,
/// each with its own [`PackReader`] over one shared [`PackCache`], taking the files in
/// the order their data lies in the packs (then `files[in_order_from..]` as given), so
/// each pack is read about once. `packs` is
/// the repository's pack listing (name → size). The first error `visit` returns stops
/// every worker and is returned; a visitor that only records a problem returns `Ok`.
pub(crate) fn read_files(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    files: &[&Entry],
    packs: &HashMap<String, u64>,
    how: ReadOptions,
    visit: impl Fn(&mut PackReader, usize) -> Result<(), RepoError> + Sync,
) -> Result<(), RepoError> {
    let ReadOptions {
        workers,
        always_check_ids,
        in_order_from,
    } = how;
    let ReadPlan { order, whole_packs } = plan(repo, files, in_order_from, packs);
    // Room for twice the packs the readers hold and those read ahead: a page-level
    // incremental needs its parent's packs and its new pages' at once.
    let cache = PackCache::new((2 * (HELD_PACKS * workers + READ_AHEAD)).min(MAX_CACHED_PACKS));
    let cache = whole_packs.then_some(&cache);
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<RepoError>> = Mutex::default();
    let done = std::sync::atomic::AtomicBool::new(false);
    // Each file's packs, for the cache to keep those still needed.
    let packs_of: Vec<Vec<String>> = match cache {
        Some(_) => files
            .iter()
            .map(|e| {
                let mut packs: Vec<String> = e
                    .chunks
                    .iter()
                    .filter_map(|c| repo.lookup(c).map(|l| l.pack))
                    .collect();
                packs.sort_unstable();
                packs.dedup();
                packs
            })
            .collect(),
        None => Vec::new(),
    };
    std::thread::scope(|s| {
        if let Some(cache) = cache {
            cache.expect(&packs_of);
            // The packs in the order the readers will want them.
            let mut seen = std::collections::HashSet::new();
            let names: Vec<String> = order
                .iter()
                .flat_map(|&i| files[i].chunks.iter())
                .filter_map(|c| repo.lookup(c).map(|l| l.pack))
                .filter(|p| seen.insert(p.clone()))
                .collect();
            let done = &done;
            s.spawn(move || {
                cache.read_ahead(&names, done, |name, buf| {
                    handle.block_on(repo.read_pack(name, buf))
                })
            });
        }
        let readers: Vec<_> = (0..workers.min(order.len()).max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut reader = PackReader::new(repo, handle, cache, always_check_ids);
                    while first_error.lock().is_none() {
                        let Some(&i) = order.get(next.fetch_add(1, Relaxed)) else {
                            return;
                        };
                        let result = visit(&mut reader, i);
                        if let Some(cache) = cache {
                            cache.done_with(&packs_of[i]);
                        }
                        if let Err(e) = result {
                            first_error.lock().get_or_insert(e);
                            return;
                        }
                    }
                })
            })
            .collect();
        for r in readers {
            let _ = r.join();
        }
        done.store(true, Relaxed);
    });
    match first_error.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `files[..in_order_from]` are taken in the order their data lies; the rest after them,
/// in the order given (the parts of a large file, whose neighbours share packs).
fn plan(
    repo: &Repository,
    files: &[&Entry],
    in_order_from: usize,
    packs: &HashMap<String, u64>,
) -> ReadPlan {
    let sorted = in_order_from.min(files.len());
    let first: Vec<Option<pack::Location>> = files[..sorted]
        .iter()
        .map(|e| e.chunks.first().and_then(|c| repo.lookup(c)))
        .collect();
    let mut order: Vec<usize> = (0..sorted).collect();
    order.sort_by(|&a, &b| {
        let key = |l: &Option<pack::Location>| l.as_ref().map(|l| (l.pack.clone(), l.offset));
        key(&first[a]).cmp(&key(&first[b]))
    });
    order.extend(sorted..files.len());
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
    ReadPlan { order, whole_packs }
}
