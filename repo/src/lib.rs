//! The backup repository: content-addressed, on any object store, usable without the
//! coordinator (the `drmesh repo …` commands open it with only a URL and a key).
//!
//! Layout under the repository's prefix:
//!
//! | key | what |
//! |---|---|
//! | `config` | JSON, in clear: format version, repository id, chunker sizes, and the wrapped master key when encrypted |
//! | `data/<2 hex>/<pack id>` | packs of compressed (and sealed) chunks, ~8 MiB each (the size is in `config`) |
//! | `index/<id>` | which chunk is where, one object per backup (sealed JSON) |
//! | `snapshots/<id>` | one manifest per backup (sealed JSON), written last |
//! | `wal/<timeline>/<name>` | archived WAL files, each with its SHA-256 ([`Repository::put_wal`]) |
//! | `locks/<id>` | live writers, so garbage collection never removes what they are about to reference |
//!
//! Architecture Invariant: a snapshot manifest is written only after every pack and index
//! object it depends on is durably stored, so a crash at any point leaves either a whole
//! snapshot or none; the debris of a crashed backup is unreferenced packs, which garbage
//! collection removes.
//!
//! The crate's surface is the `pub use` list below: [`Repository`], whose methods (backup,
//! restore, verify, copy, export, retention, garbage collection, the WAL archive) live in
//! the private modules that implement them, and every type those methods take or return
//! (`unnameable_types` keeps that list complete). The `testing` feature adds `synth`
//! (synthetic repositories, for benchmarks) and `testing` (the stored document format,
//! for tests that tamper with objects and for fuzz targets).

#![warn(unnameable_types)]

mod archive;
mod backend;
mod backup;
mod copy;
mod crypto;
mod enforce;
mod export;
mod gc;
mod immutable;
mod pack;
mod reader;
mod recovery;
mod restore;
mod retention;
mod snapshot;
mod stream;
#[cfg(any(test, feature = "testing"))]
pub mod synth;
mod verify;
mod wal;

#[cfg(test)]
mod roundtrip_tests;

/// The repository's own formats, for tests that tamper with stored objects and for the
/// fuzz targets: sealed JSON documents (manifests, indexes) and the master key.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    pub use crate::crypto::{unlock, MasterKey};
    pub use crate::pack::{decode_doc, encode_doc};
}

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tracing::info;

pub use archive::{ArchiveOptions, ArchivedSnapshot, ColdArchive, ColdReport};
pub use backend::{write_durably, Backend, Location, Removal, Upload};
pub use backup::pages::PageDelta;
pub use backup::{valid_snapshot_id, BackupRequest, PendingBackup};
pub use copy::{CopyReport, SyncReport};
pub use crypto::{EncryptionConfig, KeySource};
pub use enforce::{empty_report, enforce_history, merge_report, Kept, Policies};
pub use export::{ArchiveManifest, ManifestFile};
pub use gc::{GcOptions, GcReport};
pub use pack::ChunkId;
pub use recovery::{shell_quote, RecoveryRequest, RestoredBackup};
pub use restore::{FailedFile, RestoreReport, RestoreRequest};
pub use snapshot::{
    safe_relative, Entry, EntryKind, Extent, FileHash, PgBackupInfo, RowCounts, Snapshot,
    SnapshotStats, SnapshotSummary, KIND_POSTGRES,
};
pub use stream::StreamBackup;
pub use verify::{Check, DamagedFile, RepositoryVerifyReport, VerifyReport};
pub use wal::Pushed;

use crypto::MasterKey;
use pack::IndexEntry;

/// Everything that can go wrong with a repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// Bad URL, options or parameters: permanent.
    #[error("repository configuration: {0}")]
    Config(String),
    /// The object store failed (network, permissions, disk): may be transient.
    #[error("storage: {0}")]
    Backend(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The key is missing or wrong: never falls back to plaintext.
    #[error("key: {0}")]
    Key(String),
    #[error("encryption: {0}")]
    Crypto(String),
    /// A repository object does not parse as what it should be.
    #[error("corrupt repository: {0}")]
    Corrupt(String),
    /// Stored data fails its checksum or authentication.
    #[error("damaged data: {0}")]
    Damaged(String),
    #[error("unsafe path {path:?} refused: {why}")]
    UnsafePath { path: String, why: String },
    /// A local file, directory or task failed; what was being done, and why.
    #[error("local file: {0}")]
    Io(String),
    /// As `Io`, keeping the error that caused it as the source.
    #[error("local file: {context}: {source}")]
    Local {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A request that cannot be done as asked (no base backup reaches the time, a target
    /// directory that is not empty): permanent.
    #[error("{0}")]
    Invalid(String),
    /// A file offered to the WAL archive is not one PostgreSQL archives.
    #[error(transparent)]
    Wal(#[from] drmesh_pg::WalError),
    /// One cluster per archive: a segment from another cluster is refused.
    #[error(
        "WAL segment {name} comes from another cluster (system identifier {this}; the \
         archive holds {archived}'s): point this cluster at its own repository"
    )]
    OtherCluster {
        name: String,
        archived: String,
        this: u64,
    },
    #[error("cancelled")]
    Cancelled,
    /// A write-once location refused to delete or replace an object: its lock has not
    /// ended. Permanent until then; never taken for a deletion.
    #[error("locked: {0}")]
    Locked(String),
}

impl RepoError {
    /// A local failure while doing `context`, keeping `source`.
    pub fn local(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> RepoError {
        RepoError::Local {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Keeps resident memory flat while large buffers stream through (backups, restores).
/// glibc raises its mmap threshold each time a large block is freed; after that, chunk
/// and pack buffers come from per-thread arenas that are rarely given back, and a
/// backup's RSS grew with the amount of data (132 MB at 1 GB, 192 MB at 4 GB). Pinning
/// the threshold at 1 MiB (larger buffers are mapped and unmapped) and capping the arenas
/// keeps it bounded. Call first thing in `main`, before any thread starts.
#[allow(unsafe_code)]
pub fn bound_allocator_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters, and runs before other threads.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 6 << 20);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 32 << 20);
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 4);
    }
}

/// `step` on the location at `url`, given up after `limit` as a backend failure (the
/// location is unreachable): object stores retry a refused connection for minutes.
pub async fn within<T>(
    url: &str,
    limit: std::time::Duration,
    step: impl std::future::Future<Output = Result<T, RepoError>>,
) -> Result<T, RepoError> {
    tokio::time::timeout(limit, step).await.unwrap_or_else(|_| {
        Err(RepoError::Backend(format!(
            "{url} did not answer within {}s",
            limit.as_secs()
        )))
    })
}

/// Current repository format.
pub const FORMAT_VERSION: u32 = 1;

/// FastCDC sizes. The average (1 MiB) keeps the in-memory index near one entry per MiB
/// stored (about 150 MB of index per TB) while still deduplicating edits inside large
/// documents; restic chose the same order of magnitude. Files below `min` are one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkerConfig {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        Self {
            min: 256 * 1024,
            avg: 1024 * 1024,
            max: 4 * 1024 * 1024,
        }
    }
}

/// The `config` object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepoConfig {
    pub version: u32,
    pub id: String,
    pub created: DateTime<Utc>,
    pub chunker: ChunkerConfig,
    /// Target pack size in bytes.
    pub pack_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
}

/// How to reach a repository and unlock it.
#[derive(Clone, Debug, Default)]
pub struct RepoOptions {
    pub location: Location,
    pub key: KeySource,
}

/// An open repository: its backend, key and chunk index.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    key: Option<MasterKey>,
    config: RepoConfig,
    index: RwLock<HashMap<ChunkId, pack::Location>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Repository({}, encrypted: {})",
            self.inner.backend.describe(),
            self.inner.key.is_some()
        )
    }
}

/// What `drmesh repo restore latest` and every other command that takes a snapshot id
/// accept for the newest snapshot, as restic does. Never a snapshot's own id
/// ([`valid_snapshot_id`] refuses it).
pub const LATEST: &str = "latest";

/// The id of the newest of `listed` (ids and kinds, oldest first) of `kind` (any when
/// `None`), for [`LATEST`]; `place` names the repository or archive in the error.
pub(crate) fn newest_of<'a>(
    listed: impl DoubleEndedIterator<Item = (&'a str, &'a str)>,
    kind: Option<&str>,
    place: &str,
) -> Result<String, RepoError> {
    listed
        .rev()
        .find(|(_, k)| kind.is_none_or(|want| *k == want))
        .map(|(id, _)| id.to_string())
        .ok_or_else(|| {
            RepoError::NotFound(match kind {
                None => format!("no snapshot yet in {place}"),
                Some(k) => format!("no snapshot yet of kind {k} in {place}"),
            })
        })
}

/// The last part of an object key (the snapshot or pack id).
fn object_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

impl Repository {
    /// Creates a new repository at the location; fails if one is there already.
    pub async fn init(options: &RepoOptions) -> Result<Self, RepoError> {
        let backend = Backend::open(&options.location).await?;
        if backend.size("config").await?.is_some() {
            return Err(RepoError::AlreadyExists(format!(
                "a repository already exists at {}",
                backend.describe()
            )));
        }
        let (encryption, key) = match crypto::create(&options.key)? {
            Some((cfg, key)) => (Some(cfg), Some(key)),
            None => (None, None),
        };
        let config = RepoConfig {
            version: FORMAT_VERSION,
            id: uuid::Uuid::new_v4().simple().to_string(),
            created: Utc::now(),
            chunker: ChunkerConfig::default(),
            pack_size: 8 * 1024 * 1024,
            encryption,
        };
        let json = serde_json::to_vec_pretty(&config)
            .map_err(|e| RepoError::local("serialize config", e))?;
        backend.put("config", Bytes::from(json)).await?;
        info!(repo = %backend.describe(), encrypted = key.is_some(), "repository created");
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                key,
                config,
                index: RwLock::new(HashMap::new()),
            }),
        })
    }

    /// Opens a repository, creating it the first time (a copy's destination, a
    /// document location). Two writers creating it at once both end with it open.
    pub async fn open_or_init(options: &RepoOptions) -> Result<Self, RepoError> {
        match Repository::open(options).await {
            Err(RepoError::NotFound(_)) => match Repository::init(options).await {
                Err(RepoError::AlreadyExists(_)) => Repository::open(options).await,
                other => other,
            },
            other => other,
        }
    }

    /// Opens an existing repository, unlocks it and loads its index.
    pub async fn open(options: &RepoOptions) -> Result<Self, RepoError> {
        let backend = Backend::open(&options.location).await?;
        let raw = match backend.get("config").await {
            Ok(raw) => raw,
            Err(RepoError::NotFound(_)) => {
                return Err(RepoError::NotFound(format!(
                    "no repository at {} (run `drmesh repo init` first)",
                    backend.describe()
                )))
            }
            Err(e) => return Err(e),
        };
        let config: RepoConfig =
            serde_json::from_slice(&raw).map_err(|e| RepoError::Corrupt(format!("config: {e}")))?;
        if config.version != FORMAT_VERSION {
            return Err(RepoError::Corrupt(format!(
                "repository format {} is not supported (this drmesh reads {FORMAT_VERSION})",
                config.version
            )));
        }
        let c = &config.chunker;
        if !(64 <= c.min && c.min <= c.avg && c.avg <= c.max && c.max <= 64 * 1024 * 1024) {
            return Err(RepoError::Corrupt(format!(
                "config: bad chunker sizes {c:?}"
            )));
        }
        let key = match (&config.encryption, &options.key) {
            (Some(enc), source) => Some(crypto::unlock(source, enc)?),
            (None, KeySource::None) => None,
            (None, _) => {
                return Err(RepoError::Key(format!(
                    "a key was given but the repository at {} is not encrypted; refusing to write plaintext",
                    backend.describe()
                )))
            }
        };
        let repo = Self {
            inner: Arc::new(Inner {
                backend,
                key,
                config,
                index: RwLock::new(HashMap::new()),
            }),
        };
        repo.load_index().await?;
        Ok(repo)
    }

    pub fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    pub fn config(&self) -> &RepoConfig {
        &self.inner.config
    }

    pub fn is_encrypted(&self) -> bool {
        self.inner.key.is_some()
    }

    pub(crate) fn key(&self) -> Option<&MasterKey> {
        self.inner.key.as_ref()
    }

    /// Reads every index object into memory.
    pub async fn load_index(&self) -> Result<usize, RepoError> {
        let keys = self.inner.backend.list("index").await?;
        let mut map = HashMap::new();
        for (key, _) in keys {
            let raw = self.inner.backend.get(&key).await?;
            let entries: Vec<IndexEntry> = pack::decode_doc(&raw, self.key(), &key)?;
            for e in entries {
                map.insert(e.id, e.location);
            }
        }
        let n = map.len();
        *self.inner.index.write() = map;
        Ok(n)
    }

    pub(crate) fn lookup(&self, id: &ChunkId) -> Option<pack::Location> {
        self.inner.index.read().get(id).cloned()
    }

    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        self.inner.index.read().contains_key(id)
    }

    pub(crate) fn add_to_index(&self, entries: &[IndexEntry]) {
        let mut index = self.inner.index.write();
        for e in entries {
            index.insert(e.id, e.location.clone());
        }
    }

    pub(crate) async fn put_doc<T: Serialize>(&self, key: &str, doc: &T) -> Result<u64, RepoError> {
        let bytes = pack::encode_doc(doc, self.key())?;
        let n = bytes.len() as u64;
        self.inner.backend.put(key, Bytes::from(bytes)).await?;
        Ok(n)
    }

    /// One snapshot manifest, checked to be what it says it is.
    pub async fn snapshot(&self, id: &str) -> Result<Snapshot, RepoError> {
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(RepoError::NotFound(format!("snapshot {id:?}")));
        }
        let key = format!("snapshots/{id}");
        let raw = match self.inner.backend.get(&key).await {
            Err(RepoError::NotFound(_)) => {
                return Err(RepoError::NotFound(format!("snapshot {id}")))
            }
            other => other?,
        };
        let snap: Snapshot = pack::decode_doc(&raw, self.key(), &key)?;
        if snap.id != id {
            return Err(RepoError::Corrupt(format!(
                "snapshot object {id} holds snapshot {}",
                snap.id
            )));
        }
        Ok(snap)
    }

    /// All snapshots, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotSummary>, RepoError> {
        let keys = self.inner.backend.list("snapshots").await?;
        let mut out = Vec::with_capacity(keys.len());
        for (key, _) in keys {
            out.push(self.snapshot(object_name(&key)).await?.summary());
        }
        out.sort_by(|a, b| a.finished_at.cmp(&b.finished_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The snapshot id `id_or_latest` names: an id as it is, or for [`LATEST`] the newest
    /// snapshot, of `kind` when one is given. Newest is the last that [`Self::snapshots`]
    /// lists (by end time, then id; never by timeline or id alone), so it is the last line
    /// of `drmesh repo snapshots` and what the retention policies keep as `latest`.
    ///
    /// An id is not looked up here: reading its manifest is the caller's first step, and
    /// a damaged manifest is for `verify` to report, not for this to fail on.
    pub async fn resolve(
        &self,
        id_or_latest: &str,
        kind: Option<&str>,
    ) -> Result<String, RepoError> {
        if id_or_latest != LATEST {
            return Ok(id_or_latest.to_string());
        }
        let listed = self.snapshots().await?;
        newest_of(
            listed.iter().map(|s| (s.id.as_str(), s.kind.as_str())),
            kind,
            self.inner.backend.describe(),
        )
    }

    /// The newest snapshot of `kind` taken from `source`, the natural parent of the next.
    pub async fn latest(
        &self,
        kind: &str,
        source: &std::path::Path,
    ) -> Result<Option<Snapshot>, RepoError> {
        // Each manifest is read once; only the newest match is kept.
        let mut newest: Option<Snapshot> = None;
        for (key, _) in self.inner.backend.list("snapshots").await? {
            let s = self.snapshot(object_name(&key)).await?;
            let newer = newest
                .as_ref()
                .is_none_or(|n| (s.finished_at, &s.id) > (n.finished_at, &n.id));
            if s.kind == kind && s.source == source && newer {
                newest = Some(s);
            }
        }
        Ok(newest)
    }

    /// Sizes of all pack objects, by pack id.
    pub async fn packs(&self) -> Result<HashMap<String, u64>, RepoError> {
        Ok(self
            .inner
            .backend
            .list("data")
            .await?
            .into_iter()
            .map(|(k, size)| (object_name(&k).to_string(), size))
            .collect())
    }

    /// Reads and checks one chunk.
    pub async fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, RepoError> {
        let loc = self
            .lookup(id)
            .ok_or_else(|| RepoError::Damaged(format!("chunk {} is in no index", id.hex())))?;
        let stored = self
            .inner
            .backend
            .get_range(&pack_key(&loc.pack), loc.offset, loc.length as u64)
            .await
            .map_err(|e| match e {
                RepoError::NotFound(_) => {
                    RepoError::Damaged(format!("pack {} is missing", loc.pack))
                }
                other => other,
            })?;
        let repo = self.clone();
        let id = *id;
        tokio::task::spawn_blocking(move || {
            pack::decode_blob(&stored, &id, loc.raw_length, repo.key())
        })
        .await
        .map_err(|e| RepoError::local("decode task", e))?
    }

    /// A whole pack object into `buf` (for readers that use most of a pack's chunks).
    pub(crate) async fn read_pack(
        &self,
        pack: &str,
        buf: &mut pack::PackBuf,
    ) -> Result<usize, RepoError> {
        self.inner
            .backend
            .get_into(&pack_key(pack), buf)
            .await
            .map_err(|e| match e {
                RepoError::NotFound(_) => RepoError::Damaged(format!("pack {pack} is missing")),
                other => other,
            })
    }

    /// A lock object that tells garbage collection a writer is at work, refreshed in the
    /// background while held.
    ///
    /// Architecture Invariant: once the lock is stored, the in-memory index forgets every
    /// pack garbage collection has scheduled or already deleted (see [`gc`]), so a writer
    /// that garbage collection does not wait for never deduplicates against a pack it may
    /// delete, however long ago this handle loaded its index.
    pub(crate) async fn lock(&self, purpose: &str) -> Result<RepoLock, RepoError> {
        let lock = self.put_lock(purpose).await?;
        if let Err(e) = self.forget_collected_packs().await {
            lock.release().await;
            return Err(e);
        }
        Ok(lock)
    }

    /// Stores a lock object and starts re-putting it every [`LOCK_REFRESH_EVERY`].
    ///
    /// On a write-once location no key is written twice and a young object cannot be
    /// deleted, so each refresh is a new object `locks/<id>.<n>` and the release stores
    /// `locks/<id>.released` ([`LOCK_RELEASED`]); a lock counts as released once that
    /// marker exists, and as refreshed when the newest of its objects was stored (see
    /// [`lock_of`]). Garbage collection deletes the objects of released and stale locks
    /// once their own locks have ended.
    pub(crate) async fn put_lock(&self, purpose: &str) -> Result<RepoLock, RepoError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let doc = LockDoc::new(purpose);
        let json = Bytes::from(serde_json::to_vec(&doc).map_err(|e| RepoError::Io(e.to_string()))?);
        let key = format!("locks/{id}");
        self.inner.backend.put(&key, json.clone()).await?;
        let write_once = self.inner.backend.immutable_for().is_some();
        let released = Arc::new(tokio::sync::Mutex::new(false));
        let refresher = tokio::spawn({
            let backend = self.inner.backend.clone();
            let key = key.clone();
            let released = released.clone();
            async move {
                for n in 1u64.. {
                    tokio::time::sleep(LOCK_REFRESH_EVERY).await;
                    // Held across the put, so `release` never deletes the lock while a
                    // refresh is about to store it again.
                    let released = released.lock().await;
                    if *released {
                        return;
                    }
                    let target = if write_once {
                        format!("{key}.{n}")
                    } else {
                        key.clone()
                    };
                    if let Err(e) = backend.put(&target, json.clone()).await {
                        tracing::warn!(lock = %key, error = %e, "could not refresh lock");
                    }
                }
            }
        });
        Ok(RepoLock {
            repo: self.clone(),
            key,
            released,
            refresher,
        })
    }
}

/// The suffix of the marker that releases a lock on a write-once location.
pub(crate) const LOCK_RELEASED: &str = "released";

/// The lock a lock object belongs to (`locks/<id>`), and the object's suffix on a
/// write-once location (`<n>` for a refresh, [`LOCK_RELEASED`] for the release marker).
pub(crate) fn lock_of(key: &str) -> (&str, Option<&str>) {
    let name_at = key.rfind('/').map_or(0, |i| i + 1);
    match key[name_at..].find('.') {
        Some(dot) => (&key[..name_at + dot], Some(&key[name_at + dot + 1..])),
        None => (key, None),
    }
}

/// Index objects get a random suffix: a retried backup or copy of the same snapshot
/// never overwrites the index a crashed attempt left.
pub(crate) fn index_key(snapshot: &str) -> String {
    format!(
        "index/{snapshot}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

pub(crate) fn pack_key(pack: &str) -> String {
    let prefix = pack.get(..2).unwrap_or("00");
    format!("data/{prefix}/{pack}")
}

/// A lock not refreshed for this long belongs to a writer that is gone.
pub const LOCK_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// A held lock is stored again this often: a third of [`LOCK_STALE_AFTER`], so a live
/// writer's lock is never taken for stale even when two refreshes in a row fail.
pub const LOCK_REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(10 * 60);

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LockDoc {
    purpose: String,
    hostname: String,
    pid: u32,
    created: DateTime<Utc>,
    /// The process that stored it, where that can be told (Linux); absent in older locks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holder: Option<LockHolder>,
}

impl LockDoc {
    /// A lock document for this process.
    fn new(purpose: &str) -> Self {
        let pid = std::process::id();
        LockDoc {
            purpose: purpose.to_string(),
            hostname: hostname(),
            pid,
            created: Utc::now(),
            holder: LockHolder::of(pid),
        }
    }

    /// Whether the process that stored this lock has ended, for certain: it ran on this
    /// machine since its last boot and in this pid namespace, and no process with its pid
    /// and start time runs now. A lock from any other machine, boot or container is never
    /// judged so (it goes stale only with age).
    fn holder_gone(&self) -> bool {
        let (Some(h), Some((boot_id, pid_namespace))) = (&self.holder, LockHolder::here()) else {
            return false;
        };
        h.boot_id == boot_id
            && h.pid_namespace == pid_namespace
            && LockHolder::start_time(self.pid) != Some(h.started)
    }
}

/// Which process stored a lock, exactly enough for another process on the same machine to
/// tell that it has ended: the kernel's boot id, the pid namespace, and the process's
/// start time in clock ticks after boot (a pid is reused; a pid and a start time are not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LockHolder {
    boot_id: String,
    pid_namespace: String,
    started: u64,
}

impl LockHolder {
    fn of(pid: u32) -> Option<Self> {
        let (boot_id, pid_namespace) = Self::here()?;
        Some(LockHolder {
            boot_id,
            pid_namespace,
            started: Self::start_time(pid)?,
        })
    }

    /// This machine's boot id and this process's pid namespace.
    fn here() -> Option<(String, String)> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
        Some((boot.trim().to_string(), ns.to_string_lossy().into_owned()))
    }

    /// When process `pid` (of this pid namespace) started, if it is running.
    fn start_time(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name, which is in parentheses and may hold spaces:
        // the state is field 3, the start time field 22.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(19)?
            .parse()
            .ok()
    }
}

/// A held lock; `release` removes it. Dropped without `release` (a crash, a cancelled
/// task) it stops being refreshed and goes stale, never removed early: a write already
/// under way may still land.
pub(crate) struct RepoLock {
    repo: Repository,
    key: String,
    released: Arc<tokio::sync::Mutex<bool>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl RepoLock {
    pub(crate) async fn release(self) {
        *self.released.lock().await = true;
        self.refresher.abort();
        let backend = &self.repo.inner.backend;
        let done = if backend.immutable_for().is_some() {
            // A write-once location: a marker, since the lock object cannot go yet.
            let marker = format!("{}.{LOCK_RELEASED}", self.key);
            backend.put(&marker, Bytes::from_static(b"{}")).await
        } else {
            backend.delete(&self.key).await
        };
        if let Err(e) = done {
            tracing::warn!(lock = %self.key, error = %e, "could not remove lock");
        }
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

pub(crate) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// A progress bar (bytes, rate, eta) on stderr fed from a [`Progress`], while it lives;
/// made only when stderr is a terminal. Needs a tokio runtime.
pub struct TerminalBar {
    bar: indicatif::ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for TerminalBar {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

pub fn terminal_bar(progress: Arc<Progress>, what: &str) -> Option<TerminalBar> {
    use std::io::IsTerminal;
    use std::sync::atomic::Ordering::Relaxed;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                bar.set_length(progress.bytes_total.load(Relaxed));
                bar.set_position(progress.bytes_done.load(Relaxed));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    };
    Some(TerminalBar { bar, ticker })
}

/// Counters a long operation updates and a caller may watch.
#[derive(Debug, Default)]
pub struct Progress {
    pub files_total: std::sync::atomic::AtomicU64,
    pub bytes_total: std::sync::atomic::AtomicU64,
    pub files_done: std::sync::atomic::AtomicU64,
    pub bytes_done: std::sync::atomic::AtomicU64,
}

impl Progress {
    /// Done as a percentage of the total (0 when the total is not known yet).
    pub fn percent(&self) -> f64 {
        use std::sync::atomic::Ordering::Relaxed;
        let total = self.bytes_total.load(Relaxed);
        if total == 0 {
            return if self.files_total.load(Relaxed) > 0
                && self.files_done.load(Relaxed) >= self.files_total.load(Relaxed)
            {
                100.0
            } else {
                0.0
            };
        }
        (self.bytes_done.load(Relaxed) as f64 * 100.0 / total as f64).min(100.0)
    }
}

/// Tags as given by an operator.
pub type Tags = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest with no files (resolving reads only summaries), ending at `end`; a
    /// base backup on `timeline` when one is given.
    async fn manifest(repo: &Repository, id: &str, kind: &str, end: &str, timeline: Option<u32>) {
        let end: DateTime<Utc> = end.parse().expect("time");
        crate::roundtrip_tests::empty_manifest(repo, id, kind, end, end, timeline).await;
    }

    #[tokio::test]
    async fn latest_is_the_newest_by_end_time_of_its_kind_never_by_timeline_or_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RepoOptions {
            location: Location::new(dir.path().to_string_lossy()),
            key: KeySource::None,
        };
        let repo = Repository::init(&opts).await.expect("init");
        let err = repo.resolve(LATEST, None).await.expect_err("empty");
        assert!(
            matches!(&err, RepoError::NotFound(m) if m.contains("no snapshot yet")),
            "{err}"
        );

        // Base backups whose ids and timeline numbers both sort against their end times,
        // as across a timeline switch: the highest timeline is not the newest backup.
        manifest(
            &repo,
            "full_zz_tl3",
            KIND_POSTGRES,
            "2026-03-01T10:00:00Z",
            Some(3),
        )
        .await;
        manifest(
            &repo,
            "full_aa_tl2",
            KIND_POSTGRES,
            "2026-03-01T10:05:00Z",
            Some(2),
        )
        .await;
        manifest(&repo, "docs_00", "documents", "2026-03-01T10:10:00Z", None).await;
        manifest(
            &repo,
            "full_mm_tl1",
            KIND_POSTGRES,
            "2026-02-28T23:00:00Z",
            Some(1),
        )
        .await;

        assert_eq!(repo.resolve(LATEST, None).await.expect("any"), "docs_00");
        assert_eq!(
            repo.resolve(LATEST, Some(KIND_POSTGRES))
                .await
                .expect("postgres"),
            "full_aa_tl2"
        );
        // The last line of `drmesh repo snapshots` is what `latest` means.
        let listed = repo.snapshots().await.expect("list");
        assert_eq!(listed.last().map(|s| s.id.as_str()), Some("docs_00"));
        // Another kind with none of it yet: said so, with the kind.
        let err = repo.resolve(LATEST, Some("files")).await.expect_err("none");
        assert!(
            err.to_string().contains("no snapshot yet of kind files"),
            "{err}"
        );
        // An id is passed through, looked up by whoever reads it.
        assert_eq!(
            repo.resolve("full_zz_tl3", None).await.expect("id"),
            "full_zz_tl3"
        );
        assert_eq!(repo.resolve("nope", None).await.expect("id"), "nope");
        // `latest` is never a snapshot's own id.
        assert!(valid_snapshot_id(LATEST).is_err());
    }

    #[tokio::test]
    async fn init_then_open_and_refuse_a_second_init() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RepoOptions {
            location: Location::new(dir.path().to_string_lossy()),
            key: KeySource::None,
        };
        Repository::init(&opts).await.expect("init");
        assert!(matches!(
            Repository::init(&opts).await,
            Err(RepoError::AlreadyExists(_))
        ));
        let repo = Repository::open(&opts).await.expect("open");
        assert!(!repo.is_encrypted());
        assert!(repo.snapshots().await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn a_key_for_a_plain_repository_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = RepoOptions {
            location: Location::new(dir.path().to_string_lossy()),
            key: KeySource::None,
        };
        Repository::init(&opts).await.expect("init");
        opts.key = KeySource::Passphrase("a long passphrase".into());
        assert!(matches!(
            Repository::open(&opts).await,
            Err(RepoError::Key(_))
        ));
    }

    #[tokio::test]
    async fn an_encrypted_repository_needs_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keyfile = dir.path().join("key");
        std::fs::write(&keyfile, "0123456789abcdef0123456789abcdef").expect("key");
        let mut opts = RepoOptions {
            location: Location::new(dir.path().join("repo").to_string_lossy()),
            key: KeySource::KeyFile(keyfile.clone()),
        };
        Repository::init(&opts).await.expect("init");
        Repository::open(&opts).await.expect("open with key");
        opts.key = KeySource::None;
        assert!(matches!(
            Repository::open(&opts).await,
            Err(RepoError::Key(_))
        ));
        let wrong = dir.path().join("wrong");
        std::fs::write(&wrong, "ffffffffffffffffffffffffffffffff").expect("key");
        opts.key = KeySource::KeyFile(wrong);
        assert!(matches!(
            Repository::open(&opts).await,
            Err(RepoError::Key(_))
        ));
        opts.key = KeySource::KeyFile(dir.path().join("missing"));
        assert!(matches!(
            Repository::open(&opts).await,
            Err(RepoError::Key(_))
        ));
    }
}
