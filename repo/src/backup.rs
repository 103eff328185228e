//! Backing a directory up into the repository.
//!
//! The pipeline runs on threads joined by bounded channels, so memory stays bounded
//! whatever the size of the source (a few chunks per worker and a few packs in flight):
//!
//! ```text
//! file workers ×(cores+1) ──(sealed blob)──▶ packer ──(pack)──▶ uploaders ×2
//! (take the next file: reuse it         (one per worker,   (durable put)
//!                                        ~16 MiB packs)
//!  from the parent, or read, FastCDC,
//!  SHA-256, dedup, zstd, seal)
//! ```
//!
//! A large database file (stored in fixed blocks) is several work items, one per
//! [`PART_BLOCKS`] blocks, so every worker helps with the largest table instead of one
//! worker reading it while the others wait.
//!
//! When the uploads are done the backup's index object is written, and the snapshot
//! manifest last of all.

pub(crate) mod pages;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use self::pages::PageDelta;
use super::pack::{self, ChunkId, IndexEntry, PackBuilder, PackBytes};
use super::snapshot::{Entry, EntryKind, FileHash, Snapshot, SnapshotStats};
use super::{pack_key, Progress, RepoError, RepoLock, Repository, Tags};

/// A database file longer than this many blocks is read in parts of this many blocks,
/// by whichever workers are free.
pub const PART_BLOCKS: u64 = 32;

/// A file whose mtime is this close to the moment it was read is read again next time:
/// a write in the same timestamp tick would leave its mtime unchanged.
pub const RECHECK_MARGIN: Duration = Duration::from_secs(2);

/// What to back up.
#[derive(Debug)]
pub struct BackupRequest {
    /// Snapshot id, e.g. `docs_1705329600000_abc123`.
    pub id: String,
    /// `files`, `documents`, ...
    pub kind: String,
    /// An absolute directory.
    pub source: PathBuf,
    /// The snapshot whose unchanged files are reused without reading them.
    pub parent: Option<Snapshot>,
    pub tags: Tags,
    pub progress: Arc<Progress>,
    /// Set to stop the backup; it then fails with `Cancelled` and leaves no snapshot.
    pub cancel: Arc<AtomicBool>,
    /// Paths (relative, `/`-separated) to leave out; a directory left out is not walked.
    pub exclude: Option<fn(&str) -> bool>,
    /// Page-level incremental copies of database files (see [`PageDelta`]).
    pub pages: Option<PageDelta>,
    /// Symlinks (relative paths) whose targets are backed up as directories in their
    /// place, e.g. a database's tablespaces.
    pub follow: Option<fn(&str) -> bool>,
}

impl BackupRequest {
    pub fn new(id: impl Into<String>, kind: impl Into<String>, source: impl Into<PathBuf>) -> Self {
        Self {
            id: id.into(),
            kind: kind.into(),
            source: source.into(),
            parent: None,
            tags: Tags::new(),
            progress: Arc::default(),
            cancel: Arc::default(),
            exclude: None,
            pages: None,
            follow: None,
        }
    }
}

struct PipelineOut {
    entries: Vec<Entry>,
    index: Vec<IndexEntry>,
    stats: SnapshotStats,
}

impl Repository {
    /// Backs up `req.source`; returns the snapshot once it is durably stored.
    pub async fn backup(&self, req: BackupRequest) -> Result<Snapshot, RepoError> {
        self.begin_backup(req).await?.commit().await
    }

    /// Stores `req.source`'s data but not yet the manifest: the caller may add files and
    /// metadata (a database backup adds `backup_label` once the copy is over), then
    /// [`PendingBackup::commit`]s or [`PendingBackup::abandon`]s it.
    pub async fn begin_backup(&self, req: BackupRequest) -> Result<PendingBackup, RepoError> {
        valid_snapshot_id(&req.id)?;
        if !req.source.is_absolute() {
            return Err(RepoError::Config(format!(
                "backup source {} must be an absolute path",
                req.source.display()
            )));
        }
        let meta = std::fs::metadata(&req.source)
            .map_err(|e| RepoError::local(format!("backup source {}", req.source.display()), e))?;
        if !meta.is_dir() {
            return Err(RepoError::Config(format!(
                "backup source {} is not a directory",
                req.source.display()
            )));
        }
        if self
            .backend()
            .size(&format!("snapshots/{}", req.id))
            .await?
            .is_some()
        {
            return Err(RepoError::AlreadyExists(format!(
                "snapshot {} exists",
                req.id
            )));
        }
        let lock = self.lock(&format!("backup {}", req.id)).await?;
        match self.store_data(&req).await {
            Ok(snap) => Ok(PendingBackup {
                repo: self.clone(),
                lock,
                snap,
                cancel: req.cancel.clone(),
            }),
            Err(e) => {
                lock.release().await;
                warn!(snapshot = %req.id, error = %e, "backup failed");
                Err(e)
            }
        }
    }

    async fn store_data(&self, req: &BackupRequest) -> Result<Snapshot, RepoError> {
        let started_at = Utc::now();
        let handle = tokio::runtime::Handle::current();
        let repo = self.clone();
        let source = req.source.clone();
        let parent = req.parent.clone();
        let progress = req.progress.clone();
        let cancel = req.cancel.clone();
        let selection = (req.exclude, req.follow, req.pages);
        let out = tokio::task::spawn_blocking(move || {
            run_pipeline(
                &repo,
                &handle,
                &source,
                selection,
                parent.as_ref(),
                &progress,
                &cancel,
            )
        })
        .await
        .map_err(|e| RepoError::local("backup task", e))??;
        let PipelineOut {
            entries,
            index,
            mut stats,
        } = out;
        if !index.is_empty() {
            stats.bytes_stored += self.put_doc(&super::index_key(&req.id), &index).await?;
            self.add_to_index(&index);
        }
        Ok(Snapshot {
            id: req.id.clone(),
            kind: req.kind.clone(),
            parent: req.parent.as_ref().map(|p| p.id.clone()),
            source: req.source.clone(),
            hostname: super::hostname(),
            started_at,
            finished_at: Utc::now(),
            tags: req.tags.clone(),
            stats,
            postgres: None,
            entries,
        })
    }
}

/// A backup whose data is durably stored but whose manifest is not written yet: until
/// [`commit`](Self::commit) it is no snapshot at all, and its packs are unreferenced.
pub struct PendingBackup {
    repo: Repository,
    lock: RepoLock,
    snap: Snapshot,
    cancel: Arc<AtomicBool>,
}

impl PendingBackup {
    pub(crate) fn new(repo: Repository, lock: RepoLock, snap: Snapshot) -> Self {
        Self {
            repo,
            lock,
            snap,
            cancel: Arc::default(),
        }
    }

    /// The manifest to be written, for metadata such as [`Snapshot::postgres`].
    pub fn snapshot_mut(&mut self) -> &mut Snapshot {
        &mut self.snap
    }

    /// Adds (or replaces) a small file that is not in the source directory, such as the
    /// `backup_label` PostgreSQL hands over at the end of a backup. `like` gives its owner.
    pub async fn add_file(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        like: &Entry,
    ) -> Result<(), RepoError> {
        super::snapshot::safe_relative(path)?;
        let id = ChunkId::of(data);
        let mut chunks = Vec::new();
        if !data.is_empty() {
            if !self.repo.contains(&id) {
                let mut builder = PackBuilder::for_pack(data.len() + 4096);
                builder.add(
                    id,
                    data.len() as u32,
                    &pack::encode_blob(data, self.repo.key())?,
                );
                let (name, bytes, entries) = builder.finish(self.repo.key())?;
                self.snap.stats.bytes_stored += bytes.len() as u64;
                self.repo
                    .backend()
                    .put(&super::pack_key(&name), bytes.into_bytes())
                    .await?;
                self.snap.stats.bytes_stored += self
                    .repo
                    .put_doc(&super::index_key(&self.snap.id), &entries)
                    .await?;
                self.repo.add_to_index(&entries);
            }
            chunks.push(id);
        }
        let entry = Entry {
            path: path.to_string(),
            kind: EntryKind::File,
            mode,
            uid: like.uid,
            gid: like.gid,
            mtime_ns: Utc::now().timestamp_nanos_opt().unwrap_or_default(),
            size: data.len() as u64,
            inode: 0,
            sha256: Some(id.hex()),
            hash: FileHash::Content,
            chunks,
            extents: Vec::new(),
            target: None,
            recheck: true,
        };
        self.snap.entries.retain(|e| e.path != path);
        self.snap.stats.files += 1;
        self.snap.stats.bytes += data.len() as u64;
        self.snap.entries.push(entry);
        Ok(())
    }

    /// Writes the manifest: from here on the snapshot exists.
    pub async fn commit(mut self) -> Result<Snapshot, RepoError> {
        let result = self.write_manifest().await;
        self.lock.release().await;
        match &result {
            Ok(s) => info!(
                snapshot = %s.id,
                files = s.stats.files,
                bytes = s.stats.bytes,
                new_bytes = s.stats.bytes_new,
                stored = s.stats.bytes_stored,
                "backup finished"
            ),
            Err(e) => warn!(snapshot = %self.snap.id, error = %e, "backup failed"),
        }
        result
    }

    async fn write_manifest(&mut self) -> Result<Snapshot, RepoError> {
        self.snap.finished_at = Utc::now();
        // The manifest's own size is known only once it is encoded; count the estimate.
        let approx = pack::encode_doc(&self.snap, None)?.len() as u64;
        self.snap.stats.bytes_stored += approx;
        if self.cancel.load(Relaxed) {
            return Err(RepoError::Cancelled);
        }
        self.repo
            .put_doc(&format!("snapshots/{}", self.snap.id), &self.snap)
            .await?;
        Ok(self.snap.clone())
    }

    /// Gives the backup up: no manifest is written, and its packs are left for garbage
    /// collection.
    pub async fn abandon(self) {
        warn!(snapshot = %self.snap.id, "backup abandoned");
        self.lock.release().await;
    }
}

/// Snapshot ids become object names: letters, digits, `_` and `-` only; and
/// [`LATEST`](crate::LATEST) names the newest snapshot wherever an id is taken, so it is
/// never one.
pub fn valid_snapshot_id(id: &str) -> Result<(), RepoError> {
    if id == crate::LATEST {
        return Err(RepoError::Config(format!(
            "snapshot id {id:?} is reserved: it names the newest snapshot"
        )));
    }
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(RepoError::Config(format!(
            "snapshot id {id:?} must be 1-128 letters, digits, '_' or '-'"
        )));
    }
    Ok(())
}

/// The first error any stage hit; the others stop when they see it set.
#[derive(Default)]
struct Failure {
    first: Mutex<Option<RepoError>>,
    set: AtomicBool,
}

impl Failure {
    fn fail(&self, e: RepoError) {
        let mut first = self.first.lock();
        if first.is_none() {
            *first = Some(e);
        }
        self.set.store(true, Relaxed);
    }

    fn failed(&self) -> bool {
        self.set.load(Relaxed)
    }
}

fn run_pipeline(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    source: &Path,
    (exclude, follow, pages): Selection,
    parent: Option<&Snapshot>,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<PipelineOut, RepoError> {
    let listing = scan(source, exclude, follow)?;
    progress.files_total.store(
        listing.iter().filter(|(_, m)| m.is_file()).count() as u64,
        Relaxed,
    );
    progress.bytes_total.store(
        listing
            .iter()
            .filter(|(_, m)| m.is_file())
            .map(|(_, m)| m.len())
            .sum(),
        Relaxed,
    );
    let parent_files: HashMap<&str, &Entry> = parent
        .map(|p| {
            p.entries
                .iter()
                .filter(|e| e.kind == EntryKind::File)
                .map(|e| (e.path.as_str(), e))
                .collect()
        })
        .unwrap_or_default();
    let (work, parts_left) = plan_work(
        &listing,
        &parent_files,
        pages,
        PART_BLOCKS * u64::from(repo.config().chunker.avg),
    );

    // One worker per core plus one, so a worker waiting on the disk leaves the cores busy.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8)
        + 1;
    let (pack_tx, pack_rx) = bounded::<(String, PackBytes, Vec<IndexEntry>)>(1);
    let failure = Failure::default();
    let index: Mutex<Vec<IndexEntry>> = Mutex::default();
    let stored = AtomicU64::new(0);
    let pack_size = repo.config().pack_size as usize;
    let shared = Shared {
        repo,
        source,
        listing: &listing,
        parent: &parent_files,
        work: &work,
        parts_left: &parts_left,
        next: AtomicUsize::new(0),
        pending: Mutex::default(),
        progress,
        cancel,
        failure: &failure,
        pages,
    };

    let results = std::thread::scope(|s| {
        for _ in 0..2 {
            let rx = pack_rx.clone();
            let (failure, index, stored) = (&failure, &index, &stored);
            s.spawn(move || upload_stage(repo, handle, rx, index, stored, failure));
        }
        drop(pack_rx);
        let shared = &shared;
        s.spawn(move || prefetch(shared));
        // Each worker has its own packer, so the blocks of one file (or part) lie
        // together in the packs and a restore reads each pack once.
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (blob_tx, blob_rx) = bounded::<Blob>(2);
                let (pack_tx, failure) = (pack_tx.clone(), &failure);
                s.spawn(move || pack_stage(repo, blob_rx, pack_tx, pack_size, failure));
                s.spawn(move || file_worker(shared, &blob_tx))
            })
            .collect();
        drop(pack_tx);
        let results: Vec<Result<WorkerOut, RepoError>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(RepoError::Io("a backup worker panicked".into())))
            })
            .collect();
        if results.iter().any(Result::is_err) {
            // Stop the stages from finishing a pack nobody will reference.
            failure.set.store(true, Relaxed);
        }
        results
    });
    drop(shared);
    // A stage's own error explains why a worker saw its channel close.
    if let Some(e) = failure.first.lock().take() {
        return Err(e);
    }
    let mut numbered = Vec::with_capacity(listing.len());
    let mut stats = SnapshotStats::default();
    let mut parts = Vec::new();
    for r in results {
        let WorkerOut {
            entries,
            parts: p,
            stats: st,
        } = r?;
        numbered.extend(entries);
        parts.extend(p);
        stats.files += st.files;
        stats.dirs += st.dirs;
        stats.bytes += st.bytes;
        stats.files_read += st.files_read;
        stats.bytes_read += st.bytes_read;
        stats.chunks_new += st.chunks_new;
        stats.bytes_new += st.bytes_new;
        stats.skipped += st.skipped;
    }
    numbered.extend(join_parts(source, &listing, parts, &mut stats));
    numbered.sort_unstable_by_key(|(i, _)| *i);
    stats.bytes_stored = stored.load(Relaxed);
    Ok(PipelineOut {
        entries: numbered.into_iter().map(|(_, e)| e).collect(),
        index: index.into_inner(),
        stats,
    })
}

/// What the file workers share.
pub(super) struct Shared<'a> {
    pub(super) repo: &'a Repository,
    pub(super) source: &'a Path,
    listing: &'a [(String, std::fs::Metadata)],
    parent: &'a HashMap<&'a str, &'a Entry>,
    /// What the workers take, in order: listing entries, large database files in parts.
    work: &'a [Work],
    /// Parts still to read of each file read in parts (by listing position).
    parts_left: &'a HashMap<usize, AtomicUsize>,
    /// Next work item to take.
    next: AtomicUsize,
    /// Chunks this backup has already sent, so two files with the same content upload
    /// it once.
    pending: Mutex<HashSet<ChunkId>>,
    pub(super) progress: &'a Progress,
    pub(super) cancel: &'a AtomicBool,
    failure: &'a Failure,
    pages: Option<PageDelta>,
}

/// A sealed chunk on its way to the packer: id, plaintext length, stored bytes.
pub(super) type Blob = (ChunkId, u32, Vec<u8>);

/// What to leave out, which symlinks to follow, and which files to copy page by page.
type Selection = (
    Option<fn(&str) -> bool>,
    Option<fn(&str) -> bool>,
    Option<PageDelta>,
);

/// One work item: a listing entry, or one of the `parts` parts of a large database file.
#[derive(Clone, Copy, Debug)]
struct Work {
    item: usize,
    part: u32,
    parts: u32,
}

/// What one worker did: entries with their listing position, parts of files read in
/// parts (listing position, part number, what was read), its share of the statistics.
#[derive(Default)]
struct WorkerOut {
    entries: Vec<(usize, Entry)>,
    parts: Vec<(usize, u32, Part)>,
    stats: SnapshotStats,
}

/// One part of a file read in parts.
#[derive(Default)]
struct Part {
    chunks: Vec<ChunkId>,
    len: u64,
    /// Read less than its whole range (end of file), so later parts do not follow it.
    short: bool,
    /// The file's size or mtime differed from the listing's after the part was read.
    changed: bool,
    /// The next backup must read the file again (see [`Entry::recheck`]).
    recheck: bool,
    /// The file was gone.
    vanished: bool,
}

/// Walks `source` (not following symlinks), sorted by name, as `/`-separated relative
/// paths with their metadata. Entries that vanish during the walk are left out.
fn scan(
    source: &Path,
    exclude: Option<fn(&str) -> bool>,
    follow: Option<fn(&str) -> bool>,
) -> Result<Vec<(String, std::fs::Metadata)>, RepoError> {
    let listing = walk(source, source, exclude)?;
    let Some(follow) = follow else {
        return Ok(listing);
    };
    // Symlinks to follow (a database's tablespaces) become directories holding what
    // their targets hold.
    let mut out = Vec::with_capacity(listing.len());
    for (rel, meta) in listing {
        if meta.file_type().is_symlink() && follow(&rel) {
            let link = source.join(&rel);
            let target = std::fs::metadata(&link)
                .map_err(|e| RepoError::local(format!("follow {}", link.display()), e))?;
            if target.is_dir() {
                out.push((rel, target));
                out.extend(walk(source, &link, exclude)?);
                continue;
            }
        }
        out.push((rel, meta));
    }
    Ok(out)
}

/// Walks `root` (below `source`) without following symlinks, sorted by name, as paths
/// relative to `source`.
fn walk(
    source: &Path,
    root: &Path,
    exclude: Option<fn(&str) -> bool>,
) -> Result<Vec<(String, std::fs::Metadata)>, RepoError> {
    let mut out = Vec::new();
    let keep = |item: &walkdir::DirEntry| match (exclude, item.path().strip_prefix(source)) {
        (Some(excluded), Ok(rel)) => rel
            .to_str()
            .is_none_or(|rel| rel.is_empty() || !excluded(rel)),
        _ => true,
    };
    for item in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter()
        .filter_entry(keep)
    {
        let item = match item {
            Ok(item) => item,
            Err(e) => {
                if e.io_error().map(|io| io.kind()) == Some(std::io::ErrorKind::NotFound) {
                    continue;
                }
                return Err(RepoError::local(format!("walk {}", source.display()), e));
            }
        };
        let rel = item
            .path()
            .strip_prefix(source)
            .map_err(|e| RepoError::Io(format!("walk {}: {e}", item.path().display())))?;
        let rel = rel.to_str().ok_or_else(|| {
            RepoError::Io(format!(
                "{} is not valid UTF-8; drmesh stores UTF-8 paths only",
                item.path().display()
            ))
        })?;
        let meta = match item.metadata() {
            Ok(m) => m,
            Err(e) if e.io_error().map(|io| io.kind()) == Some(std::io::ErrorKind::NotFound) => {
                continue
            }
            Err(e) => {
                return Err(RepoError::Io(format!(
                    "stat {}: {e}",
                    item.path().display()
                )))
            }
        };
        out.push((rel.to_string(), meta));
    }
    Ok(out)
}

/// The file is the parent snapshot's, unread: same size, mtime and inode, and not
/// marked to be read again.
fn unchanged(parent: &Entry, meta: &std::fs::Metadata) -> bool {
    parent.size == meta.len()
        && parent.mtime_ns == mtime_ns(meta)
        && parent.inode == meta.ino()
        && !parent.recheck
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

fn base_entry(path: String, kind: EntryKind, meta: &std::fs::Metadata) -> Entry {
    Entry {
        path,
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: mtime_ns(meta),
        size: 0,
        inode: meta.ino(),
        sha256: None,
        hash: FileHash::Content,
        chunks: Vec::new(),
        extents: Vec::new(),
        target: None,
        recheck: false,
    }
}

/// How many files the prefetcher runs ahead of the workers.
const PREFETCH_AHEAD: usize = 1024;

/// Asks the kernel to start reading the next small files the workers will take
/// (`POSIX_FADV_WILLNEED`), so a cold-cache backup has many reads in flight instead of
/// one per worker. Large files are left to the kernel's own sequential readahead;
/// unchanged ones are not read at all.
fn prefetch(sh: &Shared) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    use std::os::fd::AsRawFd;
    let mut i = 0;
    while i < sh.work.len() {
        if sh.failure.failed() || sh.cancel.load(Relaxed) {
            return;
        }
        let taken = sh.next.load(Relaxed);
        if i < taken {
            i = taken;
            continue;
        }
        if i >= taken + PREFETCH_AHEAD {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let Work { item, parts, .. } = sh.work[i];
        let (rel, meta) = &sh.listing[item];
        i += 1;
        if parts > 1 || !meta.is_file() || meta.len() > 4 * 1024 * 1024 {
            continue;
        }
        if sh
            .parent
            .get(rel.as_str())
            .is_some_and(|p| unchanged(p, meta))
        {
            continue;
        }
        if let Ok(f) = std::fs::File::open(sh.source.join(rel)) {
            let _ = posix_fadvise(f.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
        }
    }
}

/// Takes listing entries one at a time until none is left: reads, chunks, hashes,
/// compresses and seals what is new, and sends the blobs to the packer.
fn file_worker(sh: &Shared, tx: &Sender<Blob>) -> Result<WorkerOut, RepoError> {
    let mut out = WorkerOut::default();
    loop {
        if sh.cancel.load(Relaxed) {
            return Err(RepoError::Cancelled);
        }
        if sh.failure.failed() {
            break;
        }
        let Some(&Work { item, part, parts }) = sh.work.get(sh.next.fetch_add(1, Relaxed)) else {
            break;
        };
        let (rel, meta) = &sh.listing[item];
        if parts > 1 {
            let read = match read_part(sh, tx, rel, meta, part, parts, &mut out.stats) {
                Ok(p) => p,
                Err(ReadError::Vanished) => Part {
                    vanished: true,
                    ..Part::default()
                },
                Err(ReadError::Repo(e)) => return Err(e),
            };
            out.parts.push((item, part, read));
            if sh
                .parts_left
                .get(&item)
                .is_some_and(|left| left.fetch_sub(1, Relaxed) == 1)
            {
                sh.progress.files_done.fetch_add(1, Relaxed);
            }
        } else if let Some(e) = entry_for(sh, tx, rel, meta, &mut out.stats)? {
            out.entries.push((item, e));
        }
    }
    Ok(out)
}

/// The work items for `listing`: one per entry, except that a database file (stored in
/// fixed blocks) longer than `part_len` with no parent file to copy against is one item
/// per `part_len` bytes. Also the parts left of each file read in parts.
fn plan_work(
    listing: &[(String, std::fs::Metadata)],
    parent: &HashMap<&str, &Entry>,
    pages: Option<PageDelta>,
    part_len: u64,
) -> (Vec<Work>, HashMap<usize, AtomicUsize>) {
    let mut work = Vec::with_capacity(listing.len());
    let mut parts_left = HashMap::new();
    for (item, (rel, meta)) in listing.iter().enumerate() {
        let split = part_len > 0
            && meta.is_file()
            && meta.len() > part_len
            && pages.is_some_and(|pd| (pd.eligible)(rel))
            && !parent.contains_key(rel.as_str());
        let parts = if split {
            u32::try_from(meta.len().div_ceil(part_len)).unwrap_or(u32::MAX)
        } else {
            1
        };
        if parts > 1 {
            parts_left.insert(item, AtomicUsize::new(parts as usize));
        }
        work.extend((0..parts).map(|part| Work { item, part, parts }));
    }
    (work, parts_left)
}

/// Reads part `part` of `parts` of a database file in fixed blocks: its
/// [`PART_BLOCKS`] blocks, or for the last part everything to the end of the file (which
/// may have grown since the listing).
fn read_part(
    sh: &Shared,
    tx: &Sender<Blob>,
    rel: &str,
    meta: &std::fs::Metadata,
    part: u32,
    parts: u32,
    stats: &mut SnapshotStats,
) -> Result<Part, ReadError> {
    use std::os::unix::fs::FileExt;
    let full = sh.source.join(rel);
    let io = |what: &str, e: std::io::Error| ReadError::of_io(&full, what, e);
    let block = u64::from(sh.repo.config().chunker.avg);
    let part_len = PART_BLOCKS * block;
    let start = u64::from(part) * part_len;
    let end = (part + 1 < parts).then_some(start + part_len);
    let read_started = SystemTime::now();
    let file = std::fs::File::open(&full).map_err(|e| io("open", e))?;
    let mut out = Part::default();
    let mut at = start;
    loop {
        if sh.cancel.load(Relaxed) {
            return Err(ReadError::Repo(RepoError::Cancelled));
        }
        let want = end.map_or(block, |end| (end - at).min(block)) as usize;
        if want == 0 {
            break;
        }
        let mut buf = vec![0u8; want];
        let mut done = 0;
        let n = fill(&mut buf, |b| {
            let k = file.read_at(b, at + done as u64)?;
            done += k;
            Ok(k)
        })
        .map_err(|e| io("read", e))?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        sh.progress.bytes_done.fetch_add(n as u64, Relaxed);
        stats.bytes_read += n as u64;
        out.chunks.push(store_chunk(sh, tx, &buf, stats)?);
        at += n as u64;
        if n < want {
            break;
        }
    }
    out.len = at - start;
    out.short = end.is_some_and(|end| at < end);
    let after = std::fs::symlink_metadata(&full).map_err(|e| io("stat", e))?;
    out.changed = after.len() != meta.len() || mtime_ns(&after) != mtime_ns(meta);
    out.recheck = out.changed || recent(read_started, &after);
    Ok(out)
}

/// Reads into `buf` until it is full or `read` reaches the end (short reads happen);
/// how many bytes it holds.
pub(super) fn fill(
    buf: &mut [u8],
    mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The entries of the files read in parts: each file's parts in order, up to the first
/// part that reached the end of the file (a file truncated while it was read ends
/// there, as a reader in one pass would have found it). A file any part found gone is
/// left out, as a vanished file is.
fn join_parts(
    source: &Path,
    listing: &[(String, std::fs::Metadata)],
    mut parts: Vec<(usize, u32, Part)>,
    stats: &mut SnapshotStats,
) -> Vec<(usize, Entry)> {
    parts.sort_unstable_by_key(|(item, part, _)| (*item, *part));
    let mut out = Vec::new();
    for group in parts.chunk_by(|a, b| a.0 == b.0) {
        let item = group[0].0;
        let (rel, meta) = &listing[item];
        if group.iter().any(|(_, _, p)| p.vanished) {
            stats.skipped += 1;
            continue;
        }
        let mut e = base_entry(rel.clone(), EntryKind::File, meta);
        let mut changed = false;
        for (_, _, p) in group {
            e.chunks.extend_from_slice(&p.chunks);
            e.size += p.len;
            changed |= p.changed;
            e.recheck |= p.recheck;
            if p.short {
                break;
            }
        }
        if changed {
            warn!(path = %source.join(rel).display(), "file changed while it was read; it will be read again next time");
        }
        (e.sha256, e.hash) = match e.chunks.as_slice() {
            [] => (Some(hex::encode(Sha256::digest(b""))), FileHash::Content),
            [one] => (Some(one.hex()), FileHash::Content),
            ids => (Some(FileHash::of_chunk_ids(ids)), FileHash::ChunkIds),
        };
        stats.files += 1;
        stats.files_read += 1;
        stats.bytes += e.size;
        out.push((item, e));
    }
    out
}

fn entry_for(
    sh: &Shared,
    tx: &Sender<Blob>,
    rel: &str,
    meta: &std::fs::Metadata,
    stats: &mut SnapshotStats,
) -> Result<Option<Entry>, RepoError> {
    let ft = meta.file_type();
    if ft.is_dir() {
        stats.dirs += 1;
        return Ok(Some(base_entry(rel.to_string(), EntryKind::Dir, meta)));
    }
    if ft.is_symlink() {
        let full = sh.source.join(rel);
        let target = match std::fs::read_link(&full) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                stats.skipped += 1;
                return Ok(None);
            }
            Err(e) => return Err(RepoError::local(format!("readlink {}", full.display()), e)),
        };
        let target = target.to_str().map(str::to_string).ok_or_else(|| {
            RepoError::Io(format!("symlink target of {} is not UTF-8", full.display()))
        })?;
        let mut e = base_entry(rel.to_string(), EntryKind::Symlink, meta);
        e.target = Some(target);
        return Ok(Some(e));
    }
    if !ft.is_file() {
        warn!(path = %sh.source.join(rel).display(), "special file left out of the backup");
        stats.skipped += 1;
        return Ok(None);
    }
    let mut e = base_entry(rel.to_string(), EntryKind::File, meta);
    e.size = meta.len();
    let reusable = sh
        .parent
        .get(rel)
        .filter(|p| unchanged(p, meta) && p.chunks.iter().all(|c| sh.repo.contains(c)));
    if let Some(p) = reusable {
        e.chunks = p.chunks.clone();
        e.extents = p.extents.clone();
        e.sha256 = p.sha256.clone();
        e.hash = p.hash;
        sh.progress.bytes_done.fetch_add(e.size, Relaxed);
    } else {
        let page_delta = sh
            .pages
            .filter(|pd| pd.lsn_floor.is_some() && (pd.eligible)(rel))
            .and_then(|pd| {
                let parent = sh.parent.get(rel)?;
                pages::applies(&pd, parent, meta).then_some((pd, *parent))
            });
        let read = match page_delta {
            Some((pd, parent)) => match pages::read_pages(sh, tx, &mut e, parent, &pd, stats) {
                Ok(false) => read_file(sh, tx, &mut e, stats),
                other => other.map(|_| ()),
            },
            None => read_file(sh, tx, &mut e, stats),
        };
        match read {
            Ok(()) => stats.files_read += 1,
            Err(ReadError::Vanished) => {
                stats.skipped += 1;
                sh.progress.files_done.fetch_add(1, Relaxed);
                return Ok(None);
            }
            Err(ReadError::Repo(err)) => return Err(err),
        }
    }
    stats.files += 1;
    stats.bytes += e.size;
    sh.progress.files_done.fetch_add(1, Relaxed);
    Ok(Some(e))
}

pub(super) enum ReadError {
    Vanished,
    Repo(RepoError),
}

impl ReadError {
    /// An I/O error on `full`: a file gone missing vanished (it is left out), anything
    /// else fails the backup.
    pub(super) fn of_io(full: &Path, what: &str, e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::NotFound {
            ReadError::Vanished
        } else {
            ReadError::Repo(RepoError::local(format!("{what} {}", full.display()), e))
        }
    }
}

impl From<RepoError> for ReadError {
    fn from(e: RepoError) -> Self {
        ReadError::Repo(e)
    }
}

/// Stores one chunk unless the repository or this backup has it already; its id.
pub(super) fn store_chunk(
    sh: &Shared,
    tx: &Sender<Blob>,
    data: &[u8],
    stats: &mut SnapshotStats,
) -> Result<ChunkId, ReadError> {
    let id = ChunkId::of(data);
    if !sh.repo.contains(&id) && sh.pending.lock().insert(id) {
        stats.chunks_new += 1;
        stats.bytes_new += data.len() as u64;
        let blob = pack::encode_blob(data, sh.repo.key())?;
        tx.send((id, data.len() as u32, blob))
            .map_err(|_| ReadError::Repo(RepoError::Io("backup pipeline stopped".into())))?;
    }
    Ok(id)
}

fn read_file(
    sh: &Shared,
    tx: &Sender<Blob>,
    entry: &mut Entry,
    stats: &mut SnapshotStats,
) -> Result<(), ReadError> {
    let full = sh.source.join(&entry.path);
    let io = |what: &str, e: std::io::Error| ReadError::of_io(&full, what, e);
    let chunker = sh.repo.config().chunker;
    let read_started = SystemTime::now();
    let file = std::fs::File::open(&full).map_err(|e| io("open", e))?;
    // Database files are stored in fixed blocks and hashed by their blocks' ids.
    let blocks = sh.pages.is_some_and(|pd| (pd.eligible)(&entry.path));
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut emit = |data: Vec<u8>, whole: bool| -> Result<(), ReadError> {
        if sh.cancel.load(Relaxed) {
            return Err(ReadError::Repo(RepoError::Cancelled));
        }
        if !whole && !blocks {
            hasher.update(&data);
        }
        size += data.len() as u64;
        sh.progress.bytes_done.fetch_add(data.len() as u64, Relaxed);
        stats.bytes_read += data.len() as u64;
        entry.chunks.push(store_chunk(sh, tx, &data, stats)?);
        Ok(())
    };
    // Small files are one chunk, read whole into a buffer of their size; a file of one
    // chunk has the chunk's id as its SHA-256, so only longer files are hashed twice.
    let mut single = true;
    let expected = (entry.size as usize).min(chunker.min as usize);
    let mut head = Vec::with_capacity(expected + 1);
    (&file)
        .take(chunker.min as u64)
        .read_to_end(&mut head)
        .map_err(|e| io("read", e))?;
    if head.len() < chunker.min as usize {
        if !head.is_empty() {
            emit(head, true)?;
        }
    } else if blocks {
        // Database relation files: fixed blocks of the average chunk size, no rolling
        // hash (their changes are found page by page, not by content).
        single = false;
        let mut reader = std::io::Cursor::new(head).chain(&file);
        loop {
            let mut block = Vec::with_capacity(chunker.avg as usize);
            (&mut reader)
                .take(chunker.avg as u64)
                .read_to_end(&mut block)
                .map_err(|e| io("read", e))?;
            if block.is_empty() {
                break;
            }
            emit(block, false)?;
        }
    } else {
        single = false;
        let reader = std::io::Cursor::new(head).chain(&file);
        for chunk in fastcdc::v2020::StreamCDC::new(reader, chunker.min, chunker.avg, chunker.max) {
            let chunk = chunk.map_err(|e| {
                ReadError::Repo(RepoError::local(format!("read {}", full.display()), e))
            })?;
            emit(chunk.data, false)?;
        }
    }
    let after = std::fs::symlink_metadata(&full).map_err(|e| io("stat", e))?;
    entry.size = size;
    (entry.sha256, entry.hash) = match entry.chunks.as_slice() {
        [id] if single || blocks => (Some(id.hex()), FileHash::Content),
        ids if blocks && ids.len() > 1 => (Some(FileHash::of_chunk_ids(ids)), FileHash::ChunkIds),
        _ => (Some(hex::encode(hasher.finalize())), FileHash::Content),
    };
    let changed = after.len() != size || mtime_ns(&after) != entry.mtime_ns;
    if changed {
        warn!(path = %full.display(), "file changed while it was read; it will be read again next time");
    }
    entry.recheck = changed || recent(read_started, &after);
    Ok(())
}

/// The file's mtime is within [`RECHECK_MARGIN`] of when it was read: a write in the same
/// timestamp tick could go unseen.
fn recent(read_started: SystemTime, after: &std::fs::Metadata) -> bool {
    read_started
        .duration_since(after.modified().unwrap_or(SystemTime::UNIX_EPOCH))
        .map(|age| age < RECHECK_MARGIN)
        .unwrap_or(true)
}

/// After reading `size` bytes of `full` whose mtime was `mtime_ns`: must the next backup
/// read it again rather than trust its size and times?
pub(super) fn recheck_after(
    full: &Path,
    read_started: SystemTime,
    size: u64,
    mtime_ns_before: i64,
) -> std::io::Result<bool> {
    let after = std::fs::symlink_metadata(full)?;
    Ok(after.len() != size || mtime_ns(&after) != mtime_ns_before || recent(read_started, &after))
}

fn pack_stage(
    repo: &Repository,
    rx: Receiver<(ChunkId, u32, Vec<u8>)>,
    tx: Sender<(String, PackBytes, Vec<IndexEntry>)>,
    pack_size: usize,
    failure: &Failure,
) {
    let mut builder = PackBuilder::for_pack(pack_size);
    let finish = |b: PackBuilder| -> bool {
        match b.finish(repo.key()) {
            Ok(p) => tx.send(p).is_ok(),
            Err(e) => {
                failure.fail(e);
                false
            }
        }
    };
    for (id, raw, blob) in rx {
        builder.add(id, raw, &blob);
        if builder.len() >= pack_size
            && !finish(std::mem::replace(
                &mut builder,
                PackBuilder::for_pack(pack_size),
            ))
        {
            return;
        }
    }
    if !builder.is_empty() && !failure.failed() {
        finish(builder);
    }
}

fn upload_stage(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    rx: Receiver<(String, PackBytes, Vec<IndexEntry>)>,
    index: &Mutex<Vec<IndexEntry>>,
    stored: &AtomicU64,
    failure: &Failure,
) {
    for (name, bytes, entries) in rx {
        let n = bytes.len() as u64;
        match handle.block_on(repo.backend().put(&pack_key(&name), bytes.into_bytes())) {
            Ok(()) => {
                stored.fetch_add(n, Relaxed);
                index.lock().extend(entries);
            }
            Err(e) => {
                failure.fail(e);
                return;
            }
        }
    }
}
