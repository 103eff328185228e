//! Checking a snapshot: its manifest, that every object it needs exists, and (with
//! `read_data`) that every chunk decrypts, decompresses and hashes to its id and every
//! file to its recorded SHA-256. The report names each damaged file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::pack;
use super::reader;
use super::snapshot::{safe_relative, Entry, EntryKind, FileHash, Snapshot};
use super::{RepoError, Repository};

/// One verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub passed: bool,
    pub detail: String,
}

impl Check {
    fn pass(detail: impl Into<String>) -> Self {
        Self {
            passed: true,
            detail: detail.into(),
        }
    }

    fn fail(detail: impl Into<String>) -> Self {
        Self {
            passed: false,
            detail: detail.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DamagedFile {
    pub path: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub snapshot: String,
    /// The manifest decodes, authenticates, and its paths and sizes are consistent.
    pub manifest: Check,
    /// Every chunk is in the index and every pack it lives in exists and is the length it
    /// was written with, its trailer included (read from the pack's tail; no blob data).
    pub objects: Check,
    /// Every chunk read back matches its id (only with read-data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Check>,
    /// Every file's content matches its SHA-256 (only with read-data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_checksums: Option<Check>,
    pub damaged: Vec<DamagedFile>,
    pub missing_objects: Vec<String>,
    pub files_checked: u64,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.manifest.passed
            && self.objects.passed
            && self.data.as_ref().is_none_or(|c| c.passed)
            && self.file_checksums.as_ref().is_none_or(|c| c.passed)
    }
}

/// Every snapshot of a repository checked, as `restic check` does: what `drmesh repo
/// verify` with no snapshot reports.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryVerifyReport {
    /// Every snapshot's report, by id.
    pub snapshots: Vec<VerifyReport>,
    /// The snapshots that failed, by id.
    pub damaged: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

impl RepositoryVerifyReport {
    pub fn passed(&self) -> bool {
        self.damaged.is_empty()
    }
}

const VERIFY_WORKERS: usize = 4;

/// Pack tails read at once: each is one small ranged read, so a deeper queue keeps the
/// disk (or the object store's connections) busy where four would wait on latency.
const TAIL_READS: usize = 16;

/// The packs as listed, taken once for every snapshot one verification checks.
struct PackListing {
    /// Size of every pack object, by pack id.
    sizes: HashMap<String, u64>,
    /// Where the last blob the index places in each pack ends: every blob of the pack,
    /// not only those of the snapshot being checked.
    indexed_ends: HashMap<String, u64>,
    /// Each pack judged so far: why it is not the pack that was written, or `None`. A
    /// pack many snapshots share is judged once.
    verdicts: Mutex<HashMap<String, Option<String>>>,
}

impl PackListing {
    fn new(repo: &Repository, sizes: HashMap<String, u64>) -> Self {
        let mut indexed_ends: HashMap<String, u64> = HashMap::new();
        for loc in repo.inner.index.read().values() {
            // Saturating: an unencrypted index says whatever its bytes say.
            let end = loc.offset.saturating_add(u64::from(loc.length));
            match indexed_ends.get_mut(&loc.pack) {
                Some(e) => *e = (*e).max(end),
                None => {
                    indexed_ends.insert(loc.pack.clone(), end);
                }
            }
        }
        Self {
            sizes,
            indexed_ends,
            verdicts: Mutex::default(),
        }
    }
}

fn manifest_problems(snap: &Snapshot) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for e in &snap.entries {
        if let Err(err) = safe_relative(&e.path) {
            problems.push(err.to_string());
        }
        if !seen.insert(e.path.as_str()) {
            problems.push(format!("{} appears twice", e.path));
        }
        match e.kind {
            EntryKind::File => {
                if e.sha256.as_deref().is_none_or(|h| h.len() != 64) {
                    problems.push(format!("{} has no SHA-256", e.path));
                }
                if e.hash == FileHash::ChunkIds && !e.extents.is_empty() {
                    problems.push(format!(
                        "{} is hashed by whole chunks but made of extents",
                        e.path
                    ));
                }
                if e.size > 0 && e.chunks.is_empty() {
                    problems.push(format!("{} has {} bytes and no chunks", e.path, e.size));
                }
            }
            EntryKind::Symlink if e.target.is_none() => {
                problems.push(format!("symlink {} has no target", e.path))
            }
            _ => {}
        }
    }
    problems
}

impl Repository {
    /// Verifies one snapshot. Errors are for failures of the check itself (the store
    /// unreachable); damage is reported in the report.
    pub async fn verify(&self, id: &str, read_data: bool) -> Result<VerifyReport, RepoError> {
        let packs = PackListing::new(self, self.packs().await?);
        self.verify_with(id, read_data, &packs).await
    }

    /// Verifies every snapshot in the repository, each as [`Self::verify`] does (with
    /// `read_data`, every chunk of every snapshot read back). A snapshot whose manifest
    /// does not even decode is reported damaged, not skipped: the ids come from the
    /// listing, not from the manifests.
    pub async fn verify_all(&self, read_data: bool) -> Result<RepositoryVerifyReport, RepoError> {
        let started = Instant::now();
        let packs = PackListing::new(self, self.packs().await?);
        let mut ids: Vec<String> = self
            .inner
            .backend
            .list("snapshots")
            .await?
            .into_iter()
            .map(|(key, _)| super::object_name(&key).to_string())
            .collect();
        ids.sort();
        let mut snapshots = Vec::with_capacity(ids.len());
        for id in &ids {
            snapshots.push(self.verify_with(id, read_data, &packs).await?);
        }
        let damaged = snapshots
            .iter()
            .filter(|r| !r.passed())
            .map(|r| r.snapshot.clone())
            .collect();
        Ok(RepositoryVerifyReport {
            snapshots,
            damaged,
            duration: started.elapsed(),
        })
    }

    /// [`Self::verify`] against a listing of the packs made beforehand.
    async fn verify_with(
        &self,
        id: &str,
        read_data: bool,
        packs: &PackListing,
    ) -> Result<VerifyReport, RepoError> {
        let started = Instant::now();
        let mut report = VerifyReport {
            snapshot: id.to_string(),
            manifest: Check::pass("manifest valid"),
            objects: Check::pass("all objects accessible"),
            data: None,
            file_checksums: None,
            damaged: Vec::new(),
            missing_objects: Vec::new(),
            files_checked: 0,
            chunks_checked: 0,
            bytes_checked: 0,
            duration: Duration::ZERO,
        };
        let snap = match self.snapshot(id).await {
            Ok(s) => s,
            Err(e @ (RepoError::Damaged(_) | RepoError::Corrupt(_))) => {
                report.manifest = Check::fail(e.to_string());
                report.objects = Check::fail("manifest unreadable");
                report.missing_objects.push(format!("snapshots/{id}"));
                report.duration = started.elapsed();
                return Ok(report);
            }
            Err(e) => return Err(e),
        };
        let problems = manifest_problems(&snap);
        if !problems.is_empty() {
            report.manifest = Check::fail(problems.join("; "));
        }

        // Objects: every chunk indexed, every pack present and whole.
        let referenced: HashSet<String> = snap
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .flat_map(|e| &e.chunks)
            .filter_map(|c| self.lookup(c))
            .map(|loc| loc.pack)
            .collect();
        // The packs' tails are read while the data is (with read-data): the two are
        // independent reads, and the tails alone cost a round trip per pack. A file is
        // read back when each of its chunks is indexed in a listed pack long enough to
        // hold it; the others are damaged without reading.
        let readable: Vec<Entry> = if read_data {
            snap.entries
                .iter()
                .filter(|e| e.kind == EntryKind::File)
                .filter(|e| {
                    e.chunks.iter().all(|c| {
                        self.lookup(c).is_some_and(|loc| {
                            packs.sizes.get(&loc.pack).is_some_and(|size| {
                                *size >= loc.offset.saturating_add(u64::from(loc.length))
                            })
                        })
                    })
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let read_back = async {
            if read_data {
                self.read_back(readable, packs.sizes.clone())
                    .await
                    .map(Some)
            } else {
                Ok(None)
            }
        };
        let (verdicts, read) =
            futures::future::try_join(self.judge_packs(&referenced, packs), read_back).await?;
        let mut damaged: BTreeMap<String, String> = BTreeMap::new();
        let mut missing: HashSet<String> = HashSet::new();
        for e in snap.entries.iter().filter(|e| e.kind == EntryKind::File) {
            let mut total = 0u64;
            for c in &e.chunks {
                match self.lookup(c) {
                    None => {
                        damaged
                            .entry(e.path.clone())
                            .or_insert_with(|| format!("chunk {} is in no index", c.hex()));
                    }
                    Some(loc) => {
                        total += loc.raw_length as u64;
                        let why = match packs.sizes.get(&loc.pack) {
                            None => Some(format!("pack {} is missing", loc.pack)),
                            Some(_) => verdicts.get(&loc.pack).cloned().flatten(),
                        };
                        if let Some(why) = why {
                            missing.insert(super::pack_key(&loc.pack));
                            damaged.entry(e.path.clone()).or_insert(why);
                        }
                    }
                }
            }
            // A file made of extents holds what its extents name, each inside its chunk.
            if !e.extents.is_empty() && !damaged.contains_key(&e.path) {
                total = 0;
                for &super::snapshot::Extent(i, off, len) in &e.extents {
                    let fits = e
                        .chunks
                        .get(i as usize)
                        .and_then(|c| self.lookup(c))
                        .is_some_and(|loc| off as u64 + len as u64 <= loc.raw_length as u64);
                    if !fits {
                        damaged.entry(e.path.clone()).or_insert_with(|| {
                            format!("an extent ({i}, {off}, {len}) lies outside its chunk")
                        });
                    }
                    total += len as u64;
                }
            }
            if !damaged.contains_key(&e.path) && total != e.size {
                damaged.insert(
                    e.path.clone(),
                    format!("chunks hold {total} bytes, manifest says {}", e.size),
                );
            }
        }
        if !damaged.is_empty() {
            report.objects = Check::fail(format!(
                "{} file(s) reference missing or inconsistent data",
                damaged.len()
            ));
        }

        if let Some(read) = read {
            let (data, checksums) = fold_read_back(read, &mut damaged, &mut report);
            report.data = Some(data);
            report.file_checksums = Some(checksums);
        }
        report.files_checked = snap
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .count() as u64;
        let mut missing: Vec<String> = missing.into_iter().collect();
        missing.sort();
        report.missing_objects = missing;
        report.damaged = damaged
            .into_iter()
            .map(|(path, reason)| DamagedFile { path, reason })
            .collect();
        report.duration = started.elapsed();
        Ok(report)
    }

    /// The verdict on each of `packs` ([`Self::pack_damage`]), by pack id: each pack
    /// judged once per listing, a few at a time. Packs not listed are left out: they are
    /// missing.
    async fn judge_packs(
        &self,
        packs: &HashSet<String>,
        listing: &PackListing,
    ) -> Result<HashMap<String, Option<String>>, RepoError> {
        use futures::{StreamExt, TryStreamExt};
        let todo: Vec<(String, u64, u64)> = {
            let judged = listing.verdicts.lock();
            packs
                .iter()
                .filter(|p| !judged.contains_key(*p))
                .filter_map(|p| {
                    let size = *listing.sizes.get(p)?;
                    // A pack indexed since the listing was made: its trailer is then
                    // looked for in the whole pack.
                    let end = listing.indexed_ends.get(p).copied().unwrap_or(0);
                    Some((p.clone(), size, end))
                })
                .collect()
        };
        let verdicts: Vec<(String, Option<String>)> = futures::stream::iter(todo)
            .map(|(pack, size, end)| async move {
                let why = self.pack_damage(&pack, size, end).await?;
                Ok::<_, RepoError>((pack, why))
            })
            .buffer_unordered(TAIL_READS)
            .try_collect()
            .await?;
        let mut judged = listing.verdicts.lock();
        judged.extend(verdicts);
        Ok(packs
            .iter()
            .filter_map(|p| Some((p.clone(), judged.get(p)?.clone())))
            .collect())
    }

    /// Why `pack`, listed at `size` bytes, is not the pack that was written; `None` when
    /// it is whole. `indexed_end` is where the last blob the index places in it ends.
    ///
    /// Invariant: a pack is uploaded once, whole, and never rewritten (see
    /// [`pack::PackBuilder::finish`]), so its size is for ever the length it was written
    /// with: its blobs, then its trailer, then its footer. Any other size is damage, even
    /// when every blob one snapshot needs survives the cut (only the trailer lost, or
    /// only blobs other snapshots reference): the store has lost bytes of an object that
    /// never changes, and the trailer is what an index is rebuilt from. A pack holding
    /// one small file is mostly trailer, so comparing the size with the blobs alone lets
    /// a cut through its middle pass.
    ///
    /// The written length is in no index entry: it comes from the pack's tail (one
    /// ranged read of the bytes after its last indexed blob, about the trailer's size),
    /// see [`pack::written_length`]. No blob data is read.
    async fn pack_damage(
        &self,
        pack: &str,
        size: u64,
        indexed_end: u64,
    ) -> Result<Option<String>, RepoError> {
        // Every blob the index places in the pack lies before its footer; checked
        // first, as it costs no read.
        if size < indexed_end.saturating_add(pack::FOOTER_LEN) {
            return Ok(Some(format!(
                "pack {pack} is truncated: {size} bytes, but its blobs alone end at byte \
                 {indexed_end} and its trailer follows them"
            )));
        }
        let tail = match self
            .inner
            .backend
            .get_range(&super::pack_key(pack), indexed_end, size - indexed_end)
            .await
        {
            Ok(tail) => tail,
            Err(RepoError::NotFound(_)) => return Ok(Some(format!("pack {pack} is missing"))),
            Err(e) => return Err(e),
        };
        Ok(match pack::written_length(&tail, self.key()) {
            Ok(written) if written == size => None,
            Ok(written) => Some(format!(
                "pack {pack} is truncated or damaged: {size} bytes, written with {written}"
            )),
            Err(RepoError::Damaged(why) | RepoError::Corrupt(why)) => {
                Some(format!("pack {pack} is truncated or damaged: {why}"))
            }
            Err(e) => return Err(e),
        })
    }

    /// Reads `files` back in a blocking task: every chunk re-hashed, every file's
    /// SHA-256 checked.
    async fn read_back(
        &self,
        files: Vec<Entry>,
        packs: HashMap<String, u64>,
    ) -> Result<ReadBack, RepoError> {
        let repo = self.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || read_back_blocking(&repo, &handle, &files, &packs))
            .await
            .map_err(|e| RepoError::local("verify task", e))?
    }
}

/// Folds what was read back into the report: a file's first reason stays (an object
/// check's, when it found one).
fn fold_read_back(
    outcome: ReadBack,
    damaged: &mut BTreeMap<String, String>,
    report: &mut VerifyReport,
) -> (Check, Check) {
    report.chunks_checked = outcome.chunks;
    report.bytes_checked = outcome.bytes;
    let bad_chunks = outcome.bad_chunks.len();
    let bad_sums = outcome.bad_checksums.len();
    for (path, reason) in outcome.bad_chunks.into_iter().chain(outcome.bad_checksums) {
        damaged.entry(path).or_insert(reason);
    }
    let data = if bad_chunks == 0 {
        Check::pass(format!("{} chunks read back intact", outcome.chunks))
    } else {
        Check::fail(format!("{bad_chunks} file(s) with damaged chunks"))
    };
    let sums = if bad_sums == 0 && bad_chunks == 0 {
        Check::pass("every file matches its SHA-256")
    } else {
        Check::fail(format!(
            "{} file(s) do not match their SHA-256",
            bad_sums + bad_chunks
        ))
    };
    (data, sums)
}

struct ReadBack {
    chunks: u64,
    bytes: u64,
    bad_chunks: Vec<(String, String)>,
    bad_checksums: Vec<(String, String)>,
}

fn read_back_blocking(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    files: &[Entry],
    packs: &HashMap<String, u64>,
) -> Result<ReadBack, RepoError> {
    let entries: Vec<&Entry> = files.iter().collect();
    let chunks = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let bad_chunks = Mutex::new(Vec::new());
    let bad_sums = Mutex::new(Vec::new());
    let mismatch = |e: &Entry| {
        bad_sums.lock().push((
            e.path.clone(),
            "content does not match its SHA-256".to_string(),
        ))
    };
    reader::read_files(
        repo,
        handle,
        &entries,
        packs,
        reader::ReadOptions {
            workers: VERIFY_WORKERS,
            always_check_ids: true,
            in_order_from: entries.len(),
        },
        |source, i| {
            let e = &files[i];
            // A one-chunk file's SHA-256 is its chunk's id, checked as it is decoded.
            let single = e.is_single_chunk();
            if single && e.sha256.as_deref() != Some(e.chunks[0].hex().as_str()) {
                mismatch(e);
                return Ok(());
            }
            // A file hashed by its chunk ids is checked chunk by chunk as it is read.
            let by_content = !single && e.hash == FileHash::Content;
            let mut hasher = Sha256::new();
            let fed = reader::content(source, e, |data| {
                if by_content {
                    hasher.update(data);
                }
                Ok(())
            });
            match fed {
                Ok(n) => {
                    chunks.fetch_add(e.chunks.len() as u64, Relaxed);
                    bytes.fetch_add(n, Relaxed);
                }
                Err(RepoError::Damaged(why) | RepoError::Corrupt(why)) => {
                    bad_chunks.lock().push((e.path.clone(), why));
                    return Ok(());
                }
                Err(RepoError::NotFound(what)) => {
                    bad_chunks
                        .lock()
                        .push((e.path.clone(), format!("{what} is missing")));
                    return Ok(());
                }
                Err(other) => return Err(other),
            }
            let expected = match e.hash {
                _ if single => None,
                FileHash::Content => Some(hex::encode(hasher.finalize())),
                FileHash::ChunkIds => Some(FileHash::of_chunk_ids(&e.chunks)),
            };
            if expected.is_some_and(|h| e.sha256.as_deref() != Some(h.as_str())) {
                mismatch(e);
            }
            Ok(())
        },
    )?;
    Ok(ReadBack {
        chunks: chunks.into_inner(),
        bytes: bytes.into_inner(),
        bad_chunks: bad_chunks.into_inner(),
        bad_checksums: bad_sums.into_inner(),
    })
}
