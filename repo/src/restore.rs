//! Restoring a snapshot (or chosen paths of it) into a directory.
//!
//! Architecture Invariant: nothing is written outside the target directory. Every path
//! in the manifest is checked before anything is written (no `..`, nothing absolute);
//! no write goes through a symlink (every ancestor inside the target is checked to be a
//! real directory, files are opened with `O_NOFOLLOW`); symlinks are created last, so a
//! symlink in the snapshot cannot redirect a later file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::pack::{ChunkId, PackBuf, PACK_ALIGN};
use super::reader::{self, PackReader};
use super::snapshot::{safe_relative, Entry, EntryKind, Extent, FileHash, Snapshot};
use super::{Progress, RepoError, Repository};

/// What to restore, and where.
#[derive(Debug)]
pub struct RestoreRequest {
    pub snapshot: String,
    pub target: PathBuf,
    /// Paths (files or directories) inside the snapshot; empty means everything.
    pub paths: Vec<String>,
    pub progress: Arc<Progress>,
    /// Check the data as a verification does: every chunk re-hashed against its id
    /// (not only where neither AES-GCM nor zstd's checksum covers it) and every file
    /// against its SHA-256. A restore that completes has then read every chunk intact.
    pub check_data: bool,
    /// Sync the target's filesystem at the end (default). Off only for a throw-away
    /// copy whose server runs with `fsync = off`, which is also written through the page
    /// cache (no `O_DIRECT`): it is read straight back by the checks.
    pub sync: bool,
}

impl RestoreRequest {
    pub fn new(snapshot: impl Into<String>, target: impl Into<PathBuf>) -> Self {
        Self {
            snapshot: snapshot.into(),
            target: target.into(),
            paths: Vec::new(),
            progress: Arc::default(),
            check_data: false,
            sync: true,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    pub snapshot: String,
    pub target: PathBuf,
    /// Files restored whole.
    pub files: u64,
    /// Files that could not be restored (damaged or missing data), with the reason;
    /// every other file is restored.
    pub failed: Vec<FailedFile>,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedFile {
    pub path: String,
    pub reason: String,
}

/// The restore's options the workers need.
#[derive(Clone, Copy)]
struct How {
    check_data: bool,
    sync: bool,
}

/// Parallel file restores: more than the cores, since most of the time is waiting on
/// the object store.
const RESTORE_WORKERS: usize = 3;

impl Repository {
    pub async fn restore(&self, req: RestoreRequest) -> Result<RestoreReport, RepoError> {
        let started = Instant::now();
        let snap = self.snapshot(&req.snapshot).await?;
        let plan = plan(&snap, &req.paths)?;
        for (_, e) in &plan {
            if e.kind == EntryKind::File {
                for c in &e.chunks {
                    if !self.contains(c) {
                        return Err(RepoError::Damaged(format!(
                            "{}: chunk {} is in no index",
                            e.path,
                            c.hex()
                        )));
                    }
                }
                // A file hashed by its chunk ids is checked here, before any read.
                if req.check_data
                    && e.hash == FileHash::ChunkIds
                    && e.sha256.as_deref() != Some(FileHash::of_chunk_ids(&e.chunks).as_str())
                {
                    return Err(RepoError::Damaged(format!(
                        "{}: the manifest's SHA-256 does not match its chunk ids",
                        e.path
                    )));
                }
            }
        }
        let files: Vec<&(PathBuf, &Entry)> = plan
            .iter()
            .filter(|(_, e)| e.kind == EntryKind::File)
            .collect();
        req.progress.files_total.store(files.len() as u64, Relaxed);
        req.progress
            .bytes_total
            .store(files.iter().map(|(_, e)| e.size).sum(), Relaxed);

        let target = req.target.clone();
        let repo = self.clone();
        let handle = tokio::runtime::Handle::current();
        let progress = req.progress.clone();
        let how = How {
            check_data: req.check_data,
            sync: req.sync,
        };
        let owned: Vec<(PathBuf, Entry)> = plan.into_iter().map(|(p, e)| (p, e.clone())).collect();
        let mut report = tokio::task::spawn_blocking(move || {
            restore_blocking(&repo, &handle, &target, &owned, &progress, how)
        })
        .await
        .map_err(|e| RepoError::local("restore task", e))??;
        report.snapshot = snap.id.clone();
        report.target = req.target.clone();
        report.duration = started.elapsed();
        if !report.failed.is_empty() {
            let names: Vec<String> = report
                .failed
                .iter()
                .take(10)
                .map(|f| format!("{} ({})", f.path, f.reason))
                .collect();
            warn!(snapshot = %snap.id, failed = report.failed.len(), "restore incomplete");
            return Err(RepoError::Damaged(format!(
                "{} file(s) could not be restored, {} were: {}",
                report.failed.len(),
                report.files,
                names.join("; ")
            )));
        }
        info!(
            snapshot = %snap.id,
            target = %req.target.display(),
            files = report.files,
            bytes = report.bytes,
            "restore finished"
        );
        Ok(report)
    }
}

/// Checks every path and picks the entries to restore, in manifest order.
fn plan<'a>(snap: &'a Snapshot, paths: &[String]) -> Result<Vec<(PathBuf, &'a Entry)>, RepoError> {
    let mut all = Vec::with_capacity(snap.entries.len());
    for e in &snap.entries {
        all.push((safe_relative(&e.path)?, e));
    }
    if paths.is_empty() {
        return Ok(all);
    }
    let wanted: Vec<PathBuf> = paths
        .iter()
        .map(|p| safe_relative(p.trim_end_matches('/')))
        .collect::<Result<_, _>>()?;
    for w in &wanted {
        if !all.iter().any(|(p, _)| p.starts_with(w)) {
            return Err(RepoError::NotFound(format!(
                "{} is not in snapshot {}",
                w.display(),
                snap.id
            )));
        }
    }
    Ok(all
        .into_iter()
        .filter(|(p, _)| wanted.iter().any(|w| p.starts_with(w)))
        .collect())
}

/// Joins `rel` to `target`, creating missing directories, and refuses when any existing
/// ancestor inside the target is a symlink or not a directory.
fn prepare_parent(target: &Path, rel: &Path) -> Result<PathBuf, RepoError> {
    let unsafe_path = |why: String| RepoError::UnsafePath {
        path: rel.display().to_string(),
        why,
    };
    let mut dir = target.to_path_buf();
    if let Some(parent) = rel.parent() {
        for part in parent.components() {
            dir.push(part);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(unsafe_path(format!("{} is a symlink", dir.display())))
                }
                Ok(m) if !m.is_dir() => {
                    return Err(unsafe_path(format!("{} is not a directory", dir.display())))
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&dir)
                        .map_err(|e| RepoError::local(format!("create {}", dir.display()), e))?;
                }
                Err(e) => return Err(RepoError::local(format!("stat {}", dir.display()), e)),
            }
        }
    }
    Ok(target.join(rel))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Owner (when root) and mtime, never following a symlink.
fn set_owner_and_time(path: &Path, e: &Entry) -> Result<(), RepoError> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    let io = |what: &str, err: String| RepoError::local(format!("{what} {}", path.display()), err);
    if is_root() {
        std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid))
            .map_err(|err| io("chown", err.to_string()))?;
    }
    let mtime = mtime_spec(e);
    utimensat(None, path, &mtime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(|err| io("set times of", err.to_string()))
}

fn mtime_spec(e: &Entry) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(
        e.mtime_ns.div_euclid(1_000_000_000),
        e.mtime_ns.rem_euclid(1_000_000_000),
    )
}

fn set_mode(path: &Path, mode: u32) -> Result<(), RepoError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| RepoError::local(format!("chmod {}", path.display()), e))
}

/// Creates (or truncates) the file `rel` is restored to; its path.
fn create_file(target: &Path, rel: &Path) -> Result<(PathBuf, File), RepoError> {
    let path = prepare_parent(target, rel)?;
    let create = || {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
    };
    let created = match create() {
        // A symlink where the file goes is replaced, never followed.
        Err(err) if err.raw_os_error() == Some(nix::libc::ELOOP) => std::fs::remove_file(&path)
            .map_err(|err| RepoError::local(format!("remove {}", path.display()), err))
            .and_then(|()| {
                create().map_err(|err| RepoError::local(format!("create {}", path.display()), err))
            }),
        Err(err) if err.raw_os_error() == Some(nix::libc::EISDIR) => Err(RepoError::Io(format!(
            "{} is a directory; cannot restore a file there",
            path.display()
        ))),
        other => other.map_err(|err| RepoError::local(format!("create {}", path.display()), err)),
    };
    Ok((path, created?))
}

fn restore_file(
    source: &mut PackReader,
    target: &Path,
    rel: &Path,
    e: &Entry,
    progress: &Progress,
    check_data: bool,
) -> Result<(), RepoError> {
    let (path, mut f) = create_file(target, rel)?;
    // Every chunk is checked against its SHA-256 id as it is decoded, so the content
    // is exactly the manifest's chunk list; a one-chunk file's id is its SHA-256.
    if e.is_single_chunk() && e.sha256.as_deref() != Some(e.chunks[0].hex().as_str()) {
        return Err(RepoError::Damaged(format!(
            "{}: the manifest's SHA-256 does not match its content",
            e.path
        )));
    }
    // A file hashed by its content is hashed as it is written (a file hashed by its
    // chunk ids was checked before the restore began).
    let mut hasher =
        (check_data && !e.is_single_chunk() && e.hash == FileHash::Content).then(Sha256::new);
    reader::content(source, e, |data| {
        f.write_all(data)
            .map_err(|err| RepoError::local(format!("write {}", path.display()), err))?;
        if let Some(h) = hasher.as_mut() {
            h.update(data);
        }
        progress.bytes_done.fetch_add(data.len() as u64, Relaxed);
        Ok(())
    })
    .map_err(|err| in_file(e, err))?;
    if let Some(h) = hasher {
        if e.sha256.as_deref() != Some(hex::encode(h.finalize()).as_str()) {
            return Err(RepoError::Damaged(format!(
                "{}: content does not match its SHA-256",
                e.path
            )));
        }
    }
    finish_file(&f, &path, e)?;
    // Durability comes from one syncfs at the end, not a sync per file.
    drop(f);
    progress.files_done.fetch_add(1, Relaxed);
    Ok(())
}

/// Writes one part of a file restored in parts into the file (created beforehand);
/// whoever writes the last part sets its owner, mode and times.
fn restore_part(
    source: &mut PackReader,
    target: &Path,
    file: &(PathBuf, Entry),
    part: &Part,
    progress: &Progress,
    allow_direct: bool,
) -> Result<(), RepoError> {
    let (rel, e) = file;
    let path = target.join(rel);
    let open = |direct: bool| {
        let direct = if direct { nix::libc::O_DIRECT } else { 0 };
        OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW | direct)
            .open(&path)
    };
    let f = match open(allow_direct && part.offset.is_multiple_of(PACK_ALIGN as u64)) {
        // tmpfs and a few others refuse O_DIRECT.
        Err(err) if err.raw_os_error() == Some(nix::libc::EINVAL) => open(false),
        other => other,
    }
    .map_err(|err| RepoError::local(format!("open {}", path.display()), err))?;
    let io = |err: std::io::Error| RepoError::local(format!("write {}", path.display()), err);
    let mut out = PartWriter::new(&f, part.offset).map_err(io)?;
    reader::content(source, &part.entry, |data| {
        out.write(data).map_err(io)?;
        progress.bytes_done.fetch_add(data.len() as u64, Relaxed);
        Ok(())
    })
    .map_err(|err| in_file(e, err))?;
    out.finish().map_err(io)?;
    if part.left.fetch_sub(1, Relaxed) == 1 {
        finish_file(&f, &path, e)?;
        progress.files_done.fetch_add(1, Relaxed);
    }
    Ok(())
}

/// Writes a part at its offset, with `O_DIRECT` through a page-aligned buffer when the
/// file was opened so: in a VM whose freed memory goes back to the host (free page
/// reporting), every page-cache page written after a cache drop is a fault on the host,
/// and the page cache costs more than the disk. A tail that is not whole pages is written
/// through the page cache.
struct PartWriter<'a> {
    f: &'a File,
    direct: bool,
    buf: PackBuf,
    at: u64,
}

/// How much a [`PartWriter`] gathers before it writes.
const PART_WRITE: usize = 2 << 20;

impl<'a> PartWriter<'a> {
    fn new(f: &'a File, at: u64) -> std::io::Result<Self> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = OFlag::from_bits_retain(fcntl(f.as_raw_fd(), FcntlArg::F_GETFL)?);
        let direct = flags.contains(OFlag::O_DIRECT);
        let buf = PackBuf::with_capacity(PACK_ALIGN, if direct { PART_WRITE } else { 0 });
        Ok(Self { f, direct, buf, at })
    }

    fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if !self.direct {
            self.f.write_all_at(data, self.at)?;
            self.at += data.len() as u64;
            return Ok(());
        }
        while !data.is_empty() {
            let take = (PART_WRITE - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == PART_WRITE {
                self.write_pages()?;
            }
        }
        Ok(())
    }

    /// Writes the whole pages gathered; keeps the rest.
    fn write_pages(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let n = self.buf.len() / PACK_ALIGN * PACK_ALIGN;
        self.f.write_all_at(&self.buf[..n], self.at)?;
        self.at += n as u64;
        let rest = self.buf.len() - n;
        self.buf.copy_within(n.., 0);
        self.buf.truncate(rest);
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use std::os::unix::fs::FileExt;
        if !self.direct {
            return Ok(());
        }
        self.write_pages()?;
        if !self.buf.is_empty() {
            let flags = OFlag::from_bits_retain(fcntl(self.f.as_raw_fd(), FcntlArg::F_GETFL)?);
            fcntl(
                self.f.as_raw_fd(),
                FcntlArg::F_SETFL(flags - OFlag::O_DIRECT),
            )?;
            self.f.write_all_at(&self.buf, self.at)?;
        }
        Ok(())
    }
}

/// Damaged data names the file it spoiled.
fn in_file(e: &Entry, err: RepoError) -> RepoError {
    match err {
        RepoError::Damaged(why) => RepoError::Damaged(format!("{}: {why}", e.path)),
        other => other,
    }
}

/// Owner, then mode (a chown clears set-id bits), then times, all on the open file.
fn finish_file(f: &File, path: &Path, e: &Entry) -> Result<(), RepoError> {
    let io = |what: &str, err: std::io::Error| {
        RepoError::local(format!("{what} {}", path.display()), err)
    };
    if is_root() {
        std::os::unix::fs::fchown(f, Some(e.uid), Some(e.gid)).map_err(|err| io("chown", err))?;
    }
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(e.mode))
        .map_err(|err| io("chmod", err))?;
    let mtime = mtime_spec(e);
    nix::sys::stat::futimens(std::os::fd::AsRawFd::as_raw_fd(f), &mtime, &mtime)
        .map_err(|err| io("set times of", err.into()))
}

/// A file of more than this many chunks (or, made of extents, of more than this many
/// MiB) is restored in parts of about this size, by whichever workers are free.
const PART_CHUNKS: usize = 32;

/// One part of a file restored in parts.
struct Part {
    /// The file's index in the restore's file list.
    file: usize,
    /// The part as an entry of its own: its chunks (and extents over them).
    entry: Entry,
    /// Where the part starts in the file.
    offset: u64,
    /// Parts of the file not yet written (shared by its parts).
    left: Arc<AtomicUsize>,
}

/// Splits the files of more than [`PART_CHUNKS`] chunks into parts — except, when
/// `check_data`, those hashed by their content, which must be read in one go.
fn split_large(repo: &Repository, files: &[&(PathBuf, Entry)], check_data: bool) -> Vec<Part> {
    let mut parts = Vec::new();
    for (file, (_, e)) in files.iter().enumerate() {
        if check_data && e.hash == FileHash::Content {
            continue;
        }
        let pieces: Vec<(Vec<ChunkId>, Vec<Extent>, u64)> = if e.extents.is_empty() {
            if e.chunks.len() <= PART_CHUNKS {
                continue;
            }
            chunk_parts(repo, &e.chunks)
        } else {
            extent_parts(e, PART_CHUNKS as u64 * u64::from(repo.config().chunker.avg))
        };
        // A manifest whose chunks do not add up to the file's size is restored whole.
        let total: u64 = pieces.iter().map(|(_, _, len)| len).sum();
        if pieces.len() < 2 || total != e.size || e.pieces().is_err() {
            continue;
        }
        let left = Arc::new(AtomicUsize::new(pieces.len()));
        let mut offset = 0;
        for (chunks, extents, len) in pieces {
            let entry = Entry {
                chunks,
                extents,
                size: len,
                ..(*e).clone()
            };
            parts.push(Part {
                file,
                entry,
                offset,
                left: left.clone(),
            });
            offset += len;
        }
    }
    parts
}

/// `chunks` in runs of at most [`PART_CHUNKS`] from one pack each (so each part reads
/// one pack, and the parts of a pack are taken one after another), each with its
/// length.
fn chunk_parts(repo: &Repository, chunks: &[ChunkId]) -> Vec<(Vec<ChunkId>, Vec<Extent>, u64)> {
    let mut out: Vec<(Vec<ChunkId>, Vec<Extent>, u64)> = Vec::new();
    let mut pack = None;
    for c in chunks {
        let loc = repo.lookup(c);
        let len = loc.as_ref().map_or(0, |l| u64::from(l.raw_length));
        let here = loc.map(|l| l.pack);
        match out.last_mut() {
            Some((ids, _, n)) if ids.len() < PART_CHUNKS && here == pack => {
                ids.push(*c);
                *n += len;
            }
            _ => out.push((vec![*c], Vec::new(), len)),
        }
        pack = here;
    }
    out
}

/// `e`'s extents in runs of about `len` bytes, each with the chunks it uses (extents
/// renumbered) and its length.
fn extent_parts(e: &Entry, len: u64) -> Vec<(Vec<ChunkId>, Vec<Extent>, u64)> {
    let mut out = Vec::new();
    let mut run: Vec<Extent> = Vec::new();
    let mut run_len = 0u64;
    let mut flush = |run: &mut Vec<Extent>, run_len: &mut u64| {
        let mut chunks: Vec<ChunkId> = Vec::new();
        let mut index: HashMap<u32, u32> = HashMap::new();
        let extents = run
            .drain(..)
            .map(|Extent(i, off, n)| {
                let new = *index.entry(i).or_insert_with(|| {
                    chunks.push(
                        e.chunks
                            .get(i as usize)
                            .copied()
                            .unwrap_or(ChunkId([0; 32])),
                    );
                    (chunks.len() - 1) as u32
                });
                Extent(new, off, n)
            })
            .collect();
        out.push((chunks, extents, std::mem::take(run_len)));
    };
    for &x in &e.extents {
        run.push(x);
        run_len += u64::from(x.2);
        if run_len >= len {
            flush(&mut run, &mut run_len);
        }
    }
    if !run.is_empty() {
        flush(&mut run, &mut run_len);
    }
    out
}

/// Restores `files` on the reader's workers; a damaged file is removed and listed in
/// `failed` while the others are restored.
#[allow(clippy::too_many_arguments)]
fn restore_files(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    target: &Path,
    files: &[&(PathBuf, Entry)],
    packs: &HashMap<String, u64>,
    progress: &Progress,
    failed: &Mutex<Vec<FailedFile>>,
    how: How,
) -> Result<(), RepoError> {
    let check_data = how.check_data;
    // Large files are restored in parts, into files created beforehand.
    let parts = split_large(repo, files, check_data);
    let mut split = vec![false; files.len()];
    for p in &parts {
        if !split[p.file] {
            split[p.file] = true;
            let (path, f) = create_file(target, &files[p.file].0)?;
            // Allocated up front, so the parts' O_DIRECT writes go to the disk side by
            // side rather than one at a time (ext4 serialises direct writes that
            // allocate). Where the filesystem cannot, the parts extend the file.
            let size = i64::try_from(files[p.file].1.size).unwrap_or(i64::MAX);
            if let Err(err) =
                nix::fcntl::fallocate(f.as_raw_fd(), nix::fcntl::FallocateFlags::empty(), 0, size)
            {
                if err == nix::errno::Errno::ENOSPC {
                    return Err(RepoError::local(
                        format!("allocate {}", path.display()),
                        err,
                    ));
                }
            }
        }
    }
    // What the workers take: whole files, then parts, as entries of their own.
    let whole: Vec<usize> = (0..files.len()).filter(|&i| !split[i]).collect();
    let entries: Vec<&Entry> = whole
        .iter()
        .map(|&i| &files[i].1)
        .chain(parts.iter().map(|p| &p.entry))
        .collect();
    // Files damaged data spoiled: listed once, their other parts skipped, removed at
    // the end (when no part is writing them any more).
    let spoiled: Mutex<std::collections::HashSet<usize>> = Mutex::default();
    let result = reader::read_files(
        repo,
        handle,
        &entries,
        packs,
        reader::ReadOptions {
            workers: RESTORE_WORKERS,
            always_check_ids: check_data,
            in_order_from: whole.len(),
        },
        |source, i| {
            let (file, result) = match whole.get(i) {
                Some(&file) => {
                    let (rel, e) = files[file];
                    (
                        file,
                        restore_file(source, target, rel, e, progress, check_data),
                    )
                }
                None => {
                    let part = &parts[i - whole.len()];
                    if spoiled.lock().contains(&part.file) {
                        return Ok(());
                    }
                    let file = files[part.file];
                    (
                        part.file,
                        restore_part(source, target, file, part, progress, how.sync),
                    )
                }
            };
            match result {
                // Damaged data spoils one file; the others are still restored.
                Err(RepoError::Damaged(why)) => {
                    if spoiled.lock().insert(file) {
                        failed.lock().push(FailedFile {
                            path: files[file].1.path.clone(),
                            reason: why,
                        });
                    }
                    Ok(())
                }
                other => other,
            }
        },
    );
    for file in spoiled.into_inner() {
        let _ = std::fs::remove_file(target.join(&files[file].0));
    }
    result
}

/// While `running`, starts writing the restored data to disk each time another
/// [`FLUSH_EVERY`] bytes have been restored, so the disk works alongside the restore
/// instead of taking all of it in the final `syncfs`. Durability still comes from that
/// final `syncfs`, which reports errors; these early ones only move work forward.
fn flush_while(target: &Path, progress: &Progress, running: &AtomicBool) {
    let Ok(dir) = File::open(target) else {
        return;
    };
    let mut flushed = 0;
    while running.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        let done = progress.bytes_done.load(Relaxed);
        if done >= flushed + FLUSH_EVERY {
            let _ = nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir));
            flushed = done;
        }
    }
}

/// How much restored data [`flush_while`] lets pile up before it starts writing.
const FLUSH_EVERY: u64 = 64 << 20;

fn restore_blocking(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    target: &Path,
    plan: &[(PathBuf, Entry)],
    progress: &Progress,
    how: How,
) -> Result<RestoreReport, RepoError> {
    std::fs::create_dir_all(target)
        .map_err(|e| RepoError::local(format!("create {}", target.display()), e))?;
    let mut report = RestoreReport::default();
    // Directories first, so files have somewhere to go.
    for (rel, e) in plan.iter().filter(|(_, e)| e.kind == EntryKind::Dir) {
        let path = prepare_parent(target, rel)?;
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(RepoError::UnsafePath {
                    path: e.path.clone(),
                    why: format!("{} exists and is not a directory", path.display()),
                })
            }
            Err(_) => std::fs::create_dir(&path)
                .map_err(|err| RepoError::local(format!("create {}", path.display()), err))?,
        }
        report.dirs += 1;
    }
    // Files, in parallel, in the order their data lies in the packs.
    let files: Vec<&(PathBuf, Entry)> = plan
        .iter()
        .filter(|(_, e)| e.kind == EntryKind::File)
        .collect();
    let packs = handle.block_on(repo.packs())?;
    let failed: Mutex<Vec<FailedFile>> = Mutex::default();
    let restoring = AtomicBool::new(true);
    std::thread::scope(|s| {
        if how.sync {
            s.spawn(|| flush_while(target, progress, &restoring));
        }
        let result = restore_files(repo, handle, target, &files, &packs, progress, &failed, how);
        restoring.store(false, Relaxed);
        result
    })?;
    let mut failed = failed.into_inner();
    failed.sort_by(|a, b| a.path.cmp(&b.path));
    let failed_paths: std::collections::HashSet<&str> =
        failed.iter().map(|f| f.path.as_str()).collect();
    report.files = (files.len() - failed.len()) as u64;
    report.bytes = files
        .iter()
        .filter(|(_, e)| !failed_paths.contains(e.path.as_str()))
        .map(|(_, e)| e.size)
        .sum();
    report.failed = failed;
    // Symlinks after every file, so none can redirect a write.
    for (rel, e) in plan.iter().filter(|(_, e)| e.kind == EntryKind::Symlink) {
        let path = prepare_parent(target, rel)?;
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            if m.is_dir() {
                return Err(RepoError::Io(format!(
                    "{} is a directory; cannot restore a symlink there",
                    path.display()
                )));
            }
            std::fs::remove_file(&path)
                .map_err(|err| RepoError::local(format!("remove {}", path.display()), err))?;
        }
        let link_target = e.target.as_deref().unwrap_or_default();
        std::os::unix::fs::symlink(link_target, &path)
            .map_err(|err| RepoError::local(format!("symlink {}", path.display()), err))?;
        set_owner_and_time(&path, e)?;
        report.symlinks += 1;
    }
    // Directory modes and times last, deepest first (writing inside a directory moves
    // its mtime, and a read-only mode would stop the writes).
    let mut dirs: Vec<&(PathBuf, Entry)> = plan
        .iter()
        .filter(|(_, e)| e.kind == EntryKind::Dir)
        .collect();
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (rel, e) in dirs {
        let path = target.join(rel);
        // The owner before the mode, which a chown could strip of set-id bits (a chmod
        // leaves the times alone).
        set_owner_and_time(&path, e)?;
        set_mode(&path, e.mode)?;
    }
    if how.sync {
        let d = File::open(target)
            .map_err(|e| RepoError::local(format!("open {}", target.display()), e))?;
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)).map_err(|e| {
            RepoError::local(format!("sync the filesystem of {}", target.display()), e)
        })?;
    }
    Ok(report)
}
