//! The cold archive: one self-contained object per archived snapshot, in a location of
//! its own (any [`Backend`] URL: a path, `s3://`, `az://`, `gs://`), readable years later
//! without the repository it came from — and, when not encrypted, without drmesh.
//!
//! Layout under the archive's prefix:
//!
//! | key | what |
//! |---|---|
//! | `<kind>/<snapshot id>.tar.zst` | the snapshot: a tar stream compressed with zstd |
//! | `<kind>/<snapshot id>.tar.zst.enc` | the same, encrypted (see below) |
//! | `<kind>/<snapshot id>.json` | what is archived (id, kind, source, times, the object's size and SHA-256), in clear, no file names; written last |
//!
//! The tar stream holds `MANIFEST.json` first ([`ColdManifest`]: the snapshot's id,
//! kind, source, times, PostgreSQL start/stop, and every entry with its mode, owner,
//! mtime, size and SHA-256 of its content), then every entry of the snapshot in that
//! order at the root, so `zstd -d < X.tar.zst | tar -x` (or `tar --zstd -xf X.tar.zst`)
//! gives the snapshot's tree. A PostgreSQL base backup also carries its own WAL in
//! `pg_wal/` (the segments from its start to its stop LSN, and its timeline's `.history`
//! file): the extracted directory is a data directory PostgreSQL starts from by itself
//! (crash recovery from `backup_label` up to the backup's end, then it is a primary; set
//! `archive_mode = off` or a new `archive_command` first, or it archives into production's
//! repository).
//!
//! Encrypted object (when the archive has a key): `DRMCOLD1`, `u32-le` length of a JSON
//! header (format, frame size, and the key-wrapping parameters of
//! [`crypto`](super::crypto): a fresh data key per object, wrapped by the key file or
//! passphrase), then frames `u32-le length || nonce || AES-256-GCM(index u64-le || last
//! u8 || up to 1 MiB of the .tar.zst) || tag`. Frame numbers and the last-frame flag are
//! inside the authenticated plaintext, so reordered, dropped or truncated frames are
//! refused like altered bytes.
//!
//! Memory stays bounded whatever the snapshot's size: the tar is built into the zstd
//! encoder into 1 MiB messages over a channel of [`CHANNEL`] into a multipart upload
//! ([`Backend::put_stream`]); reading streams the same way back.
//!
//! Architecture Invariant: an archived snapshot is listed (its `.json` exists) only
//! after its object was stored and read back whole with the size and SHA-256 the writer
//! computed; the hot repository forgets it only after that ([`super::enforce`]). An
//! archive with a key never stores plaintext, and an encrypted repository never archives
//! into an archive without a key.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::info;

use super::backend::Upload;
use super::crypto::{self, EncryptionConfig, KeySource, MasterKey, NONCE_LEN};
use super::export::chunk_reader;
use super::snapshot::{safe_relative, EntryKind, FileHash, PgBackupInfo, Snapshot};
use super::{Backend, Location, RepoError, Repository, Tags};
use drmesh_pg::{WalKind, WalName};

/// `format` of [`ColdManifest`] and of an encrypted object's header.
pub const FORMAT: &str = "drmesh-cold-archive/1";
/// The first bytes of an encrypted object.
const MAGIC: &[u8; 8] = b"DRMCOLD1";
/// zstd's frame magic: the first bytes of an unencrypted object.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Plaintext bytes per encrypted frame.
pub const FRAME: usize = 1 << 20;
/// The largest frame a reader accepts (a header naming more is refused).
const MAX_FRAME: usize = 16 << 20;
/// Index (8) and last flag (1) before a frame's data.
const FRAME_PREFIX: usize = 9;
const TAG_LEN: usize = 16;
/// Bytes per message between the tar/zstd writer and the upload.
const MESSAGE: usize = 1 << 20;
/// Messages in flight between writer and upload (or download and reader).
pub const CHANNEL: usize = 4;
/// zstd's default level: several times smaller than tar for text, fast.
const ZSTD_LEVEL: i32 = 3;
const MANIFEST: &str = "MANIFEST.json";
/// The largest `MANIFEST.json` a reader accepts.
const MAX_MANIFEST: u64 = 1 << 30;

/// Where the archive is and how its objects are sealed.
#[derive(Clone, Debug, Default)]
pub struct ArchiveOptions {
    pub location: Location,
    /// The key objects are encrypted with (a key file or passphrase); `None` stores
    /// plain `.tar.zst`, which an encrypted repository refuses.
    pub key: KeySource,
    /// The objects' storage class, e.g. `GLACIER`, `DEEP_ARCHIVE`, `STANDARD_IA` on S3,
    /// `Cool`/`Archive` on Azure, `ARCHIVE` on GCS. Default: the bucket's default.
    pub storage_class: Option<String>,
}

/// An open cold archive.
#[derive(Clone, Debug)]
pub struct ColdArchive {
    backend: Backend,
    key: KeySource,
    storage_class: Option<String>,
    /// The storage class is frozen ([`frozen_class`]): objects are not read back.
    frozen: bool,
}

/// What the archive holds of one snapshot (`<kind>/<id>.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchivedSnapshot {
    pub snapshot_id: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub source: PathBuf,
    pub hostname: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub archived_at: DateTime<Utc>,
    /// The object's key in the archive.
    pub object: String,
    /// The object's size and SHA-256, as written and read back.
    pub size: u64,
    pub sha256: String,
    pub encrypted: bool,
    /// Files in the snapshot (WAL added for a base backup included) and their bytes.
    pub files: u64,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Whether the object was read back whole after it was stored. An object in a frozen
    /// storage class ([`frozen_class`]) cannot be until it is restored: it was checked by
    /// its stored size and, on S3, by the SHA-256 the server verified of every part.
    #[serde(default = "read_back_default")]
    pub read_back: bool,
}

fn read_back_default() -> bool {
    true
}

/// Whether objects of storage class `class` at `url` are frozen: stored, but served only
/// after a restore that takes hours (S3 `GLACIER` and `DEEP_ARCHIVE`, the Azure `Archive`
/// tier). GCS `ARCHIVE` and S3 `GLACIER_IR` are read at once.
pub fn frozen_class(url: &str, class: Option<&str>) -> bool {
    let Some(class) = class else {
        return false;
    };
    let url = url.trim_start();
    if url.starts_with("s3://") {
        matches!(
            class.to_ascii_uppercase().as_str(),
            "GLACIER" | "DEEP_ARCHIVE"
        )
    } else if url.starts_with("az://") || url.starts_with("azure://") {
        class.eq_ignore_ascii_case("archive")
    } else {
        false
    }
}

/// `MANIFEST.json`, the first member of every archived object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ColdManifest {
    /// [`FORMAT`].
    pub format: String,
    pub snapshot_id: String,
    pub kind: String,
    #[serde(default)]
    pub parent: Option<String>,
    pub source: PathBuf,
    pub hostname: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    #[serde(default)]
    pub tags: Tags,
    /// A PostgreSQL base backup's WAL range, timeline and server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PgBackupInfo>,
    pub archived_at: DateTime<Utc>,
    /// Every member after `MANIFEST.json`, in the order the tar holds them.
    pub entries: Vec<ColdEntry>,
}

/// One member of an archived object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ColdEntry {
    /// Relative, `/`-separated.
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    pub size: u64,
    /// SHA-256 of a file's content, as `sha256sum` gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A WAL file added from the repository's archive (not a file of the snapshot).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wal: bool,
}

/// What a restore or verification of an archived object found (all of it checked).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ColdReport {
    pub snapshot_id: String,
    pub kind: String,
    /// Where it was restored (`None` for a verification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBuf>,
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub wal_files: u64,
    pub object_bytes: u64,
    pub object_sha256: String,
    pub encrypted: bool,
}

fn sidecar_key(kind: &str, id: &str) -> String {
    format!("{kind}/{id}.json")
}

fn object_key(kind: &str, id: &str, encrypted: bool) -> String {
    format!("{kind}/{id}.tar.zst{}", if encrypted { ".enc" } else { "" })
}

/// Kinds and ids become object keys: letters, digits, `-` and `_` only.
fn check_name(what: &str, name: &str) -> Result<(), RepoError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(RepoError::NotFound(format!("{what} {name:?}")));
    }
    Ok(())
}

/// An `io::Error` carrying a [`RepoError`], so the kind (key, damage, storage) survives
/// the tar and zstd layers.
fn to_io(e: RepoError) -> std::io::Error {
    std::io::Error::other(e)
}

/// An error reading an object: anything not from the store or the key is damage (a
/// zstd checksum, a tar header, a frame).
fn damaged_io(what: &str, e: std::io::Error) -> RepoError {
    match from_io(what, e) {
        RepoError::Io(why) => RepoError::Damaged(why),
        RepoError::Local { context, source } => RepoError::Damaged(format!("{context}: {source}")),
        other => other,
    }
}

fn from_io(what: &str, e: std::io::Error) -> RepoError {
    if e.get_ref().is_some_and(|inner| inner.is::<RepoError>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(repo) = inner.downcast::<RepoError>() {
                return *repo;
            }
        }
        return RepoError::Io(what.to_string());
    }
    match e.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
            RepoError::Damaged(format!("{what}: {e}"))
        }
        _ => RepoError::local(what, e),
    }
}

impl ColdArchive {
    pub async fn open(options: &ArchiveOptions) -> Result<Self, RepoError> {
        if let Some(class) = &options.storage_class {
            if class.is_empty() || !class.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(RepoError::Config(format!(
                    "archive storage class {class:?}: letters, digits and '_' only"
                )));
            }
        }
        let mut location = options.location.clone();
        let frozen = frozen_class(&location.url, options.storage_class.as_deref());
        if frozen && location.url.trim_start().starts_with("s3://") {
            // What stands in for the read-back: S3 checks every part against its SHA-256.
            location
                .options
                .insert("checksum_algorithm".into(), "SHA256".into());
        }
        if let Some(class) = &options.storage_class {
            // GCS takes the storage class per bucket handle, not per upload.
            if location.url.trim_start().starts_with("gs://") {
                location
                    .options
                    .insert("default_storage_class".into(), class.clone());
            }
        }
        Ok(Self {
            backend: Backend::open(&location).await?,
            key: options.key.clone(),
            storage_class: options.storage_class.clone(),
            frozen,
        })
    }

    pub fn describe(&self) -> &str {
        self.backend.describe()
    }

    /// Whether new objects are encrypted.
    pub fn is_encrypted(&self) -> bool {
        !matches!(self.key, KeySource::None)
    }

    /// Every archived snapshot, oldest first (by end time, then id).
    pub async fn list(&self) -> Result<Vec<ArchivedSnapshot>, RepoError> {
        let mut out = Vec::new();
        for (key, _) in self.backend.list("").await? {
            if !key.ends_with(".json") || key.matches('/').count() != 1 {
                continue;
            }
            let raw = self.backend.get(&key).await?;
            let a: ArchivedSnapshot = serde_json::from_slice(&raw)
                .map_err(|e| RepoError::Corrupt(format!("archive {key}: {e}")))?;
            if sidecar_key(&a.kind, &a.snapshot_id) != key {
                return Err(RepoError::Corrupt(format!(
                    "archive {key} describes {}/{}",
                    a.kind, a.snapshot_id
                )));
            }
            out.push(a);
        }
        out.sort_by(|a, b| (a.finished_at, &a.snapshot_id).cmp(&(b.finished_at, &b.snapshot_id)));
        Ok(out)
    }

    /// The snapshot id `id_or_latest` names in the archive: an id as it is, or for
    /// [`LATEST`](crate::LATEST) the newest archived snapshot (of `kind` when given), by
    /// the order of [`Self::list`] — the rule [`Repository::resolve`] follows.
    pub async fn resolve(
        &self,
        id_or_latest: &str,
        kind: Option<&str>,
    ) -> Result<String, RepoError> {
        if id_or_latest != crate::LATEST {
            return Ok(id_or_latest.to_string());
        }
        let listed = self.list().await?;
        crate::newest_of(
            listed
                .iter()
                .map(|a| (a.snapshot_id.as_str(), a.kind.as_str())),
            kind,
            &format!("the archive at {}", self.describe()),
        )
    }

    /// One archived snapshot.
    pub async fn find(&self, id: &str) -> Result<ArchivedSnapshot, RepoError> {
        check_name("archived snapshot", id)?;
        self.list()
            .await?
            .into_iter()
            .find(|a| a.snapshot_id == id)
            .ok_or_else(|| {
                RepoError::NotFound(format!(
                    "snapshot {id} in the archive at {}",
                    self.describe()
                ))
            })
    }

    /// Writes snapshot `id` of `repo` as one object, reads it back whole (in a frozen
    /// storage class: checks its stored size, S3 having checked every part's SHA-256), and
    /// only then lists it. Archiving a snapshot already listed writes nothing.
    pub async fn archive(
        &self,
        repo: &Repository,
        id: &str,
    ) -> Result<ArchivedSnapshot, RepoError> {
        if repo.is_encrypted() && !self.is_encrypted() {
            return Err(RepoError::Key(format!(
                "the repository is encrypted but the archive at {} has no key: refusing to \
                 archive {id} as plaintext (give the archive a key file)",
                self.describe()
            )));
        }
        let snap = repo.snapshot(id).await?;
        check_name("snapshot kind", &snap.kind)?;
        if let Ok(done) = self.find(id).await {
            return Ok(done);
        }
        let sealing = crypto::create(&self.key)?;
        let encrypted = sealing.is_some();
        let key = object_key(&snap.kind, id, encrypted);
        let wal = wal_of(repo, &snap).await?;

        let (tx, rx) = mpsc::channel(CHANNEL);
        let upload = tokio::spawn({
            let backend = self.backend.clone();
            let key = key.clone();
            let class = self.storage_class.clone();
            async move { backend.put_stream(&key, class.as_deref(), rx).await }
        });
        let writer = tokio::task::spawn_blocking({
            let repo = repo.clone();
            let handle = tokio::runtime::Handle::current();
            let snap = snap.clone();
            move || write_object(&repo, &handle, &snap, &wal, sealing, tx)
        });
        let written = writer
            .await
            .map_err(|e| RepoError::local("archive task", e));
        let stored = upload.await.map_err(|e| RepoError::local("upload task", e));
        let (manifest, size, sha256) = written??;
        let stored = stored??;
        if stored != size {
            return Err(RepoError::Backend(format!(
                "archive {key}: {stored} bytes stored of {size} written"
            )));
        }
        // Read back: the size the store reports, then every byte against the digest.
        match self.backend.size(&key).await? {
            Some(n) if n == size => {}
            other => {
                return Err(RepoError::Damaged(format!(
                    "archive {key}: {size} bytes written, the store holds {other:?}"
                )))
            }
        }
        if self.frozen {
            info!(object = %key, class = ?self.storage_class, "frozen storage class: the object is not read back (the store serves it only after a restore)");
        } else {
            let (n, digest) = self.digest(&key).await?;
            if (n, digest.as_str()) != (size, sha256.as_str()) {
                return Err(RepoError::Damaged(format!(
                    "archive {key}: read back {n} bytes with SHA-256 {digest}, wrote {size} with {sha256}"
                )));
            }
        }
        let files: Vec<&ColdEntry> = manifest
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .collect();
        let listed = ArchivedSnapshot {
            snapshot_id: snap.id.clone(),
            kind: snap.kind.clone(),
            parent: snap.parent.clone(),
            source: snap.source.clone(),
            hostname: snap.hostname.clone(),
            started_at: snap.started_at,
            finished_at: snap.finished_at,
            archived_at: manifest.archived_at,
            object: key.clone(),
            size,
            sha256,
            encrypted,
            files: files.len() as u64,
            bytes: files.iter().map(|e| e.size).sum(),
            storage_class: self.storage_class.clone(),
            read_back: !self.frozen,
        };
        let json = serde_json::to_vec_pretty(&listed)
            .map_err(|e| RepoError::local(format!("serialize {key}"), e))?;
        self.backend
            .put(&sidecar_key(&snap.kind, id), Bytes::from(json))
            .await?;
        info!(snapshot = %id, object = %key, bytes = size, encrypted, "snapshot archived");
        Ok(listed)
    }

    /// Size and SHA-256 of a stored object, read as a stream.
    async fn digest(&self, key: &str) -> Result<(u64, String), RepoError> {
        use futures::StreamExt;
        let mut stream = self.backend.get_stream(key).await?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            n += chunk.len() as u64;
            h.update(&chunk);
        }
        Ok((n, hex::encode(h.finalize())))
    }

    /// Removes an archived snapshot: its listing first (so it is never listed without
    /// its object), then the object.
    pub async fn remove(&self, id: &str) -> Result<(), RepoError> {
        let a = self.find(id).await?;
        self.backend
            .delete(&sidecar_key(&a.kind, &a.snapshot_id))
            .await?;
        self.backend.delete(&a.object).await?;
        info!(snapshot = %id, object = %a.object, "archived snapshot deleted");
        Ok(())
    }

    /// As [`remove`](Self::remove), unless the archive is write-once and the listing or
    /// the object is still locked as of `now` (both are checked before either goes, so
    /// an object is never left unlisted for want of a lock).
    pub async fn remove_unless_locked(
        &self,
        id: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<super::backend::Removal, RepoError> {
        use super::backend::Removal;
        let a = self.find(id).await?;
        let sidecar = sidecar_key(&a.kind, &a.snapshot_id);
        let mut until = None;
        for key in [&sidecar, &a.object] {
            if let Some(stored) = self.backend.stored_at(key).await? {
                until = until.max(self.backend.locked_until(stored, now));
            }
        }
        if until.is_some() {
            return Ok(Removal::Locked { until });
        }
        for key in [&sidecar, &a.object] {
            if let Removal::Locked { until } =
                self.backend.delete_unless_locked(key, None, now).await?
            {
                return Ok(Removal::Locked { until });
            }
        }
        info!(snapshot = %id, object = %a.object, "archived snapshot deleted");
        Ok(Removal::Deleted)
    }

    /// Restores archived snapshot `id` into `target` (absent or empty), checking every
    /// file's SHA-256 and size against the manifest, and the object against its listing.
    pub async fn restore(&self, id: &str, target: &Path) -> Result<ColdReport, RepoError> {
        let a = self.find(id).await?;
        self.read(&a, Some(target.to_path_buf())).await
    }

    /// Reads archived snapshot `id` whole and checks it as a restore would, writing
    /// nothing.
    pub async fn verify(&self, id: &str) -> Result<ColdReport, RepoError> {
        let a = self.find(id).await?;
        self.read(&a, None).await
    }

    async fn read(
        &self,
        a: &ArchivedSnapshot,
        target: Option<PathBuf>,
    ) -> Result<ColdReport, RepoError> {
        if let Some(t) = &target {
            prepare_target(t)?;
        }
        let mut stream = self.backend.get_stream(&a.object).await?;
        let (tx, rx) = mpsc::channel::<Result<Bytes, RepoError>>(CHANNEL);
        let download = tokio::spawn(async move {
            use futures::StreamExt;
            while let Some(chunk) = stream.next().await {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        });
        let key = self.key.clone();
        let reader = tokio::task::spawn_blocking(move || {
            read_object(ChannelReader::new(rx), &key, target.as_deref())
        });
        let result = reader
            .await
            .map_err(|e| RepoError::local("restore task", e))?;
        download.abort();
        let report = result?;
        if report.snapshot_id != a.snapshot_id || report.kind != a.kind {
            return Err(RepoError::Damaged(format!(
                "{} holds snapshot {}/{}",
                a.object, report.kind, report.snapshot_id
            )));
        }
        if (report.object_bytes, report.object_sha256.as_str()) != (a.size, a.sha256.as_str()) {
            return Err(RepoError::Damaged(format!(
                "{}: {} bytes with SHA-256 {}, archived as {} bytes with {}",
                a.object, report.object_bytes, report.object_sha256, a.size, a.sha256
            )));
        }
        Ok(report)
    }
}

/// The WAL a base backup needs to start by itself: its segments from start to stop (and
/// to its row counts' point), and its timeline's history file when archived.
async fn wal_of(repo: &Repository, snap: &Snapshot) -> Result<Vec<(u32, String)>, RepoError> {
    let Some(pg) = &snap.postgres else {
        return Ok(Vec::new());
    };
    let mut out: Vec<(u32, String)> = pg
        .needed_wal()
        .into_iter()
        .map(|n| (pg.timeline, n))
        .collect();
    if out.is_empty() {
        return Err(RepoError::Corrupt(format!(
            "{}: no WAL range in its manifest",
            snap.id
        )));
    }
    let history = format!("{:08X}.history", pg.timeline);
    if pg.timeline > 1 && repo.has_wal(pg.timeline, &history).await? {
        out.insert(0, (pg.timeline, history));
    }
    for (tl, name) in &out {
        let kind = WalName::parse(name).map(|n| n.kind).ok();
        if !matches!(kind, Some(WalKind::Segment | WalKind::History)) {
            return Err(RepoError::Corrupt(format!("bad WAL name {tl}/{name}")));
        }
    }
    Ok(out)
}

/// The writer end of an upload: 1 MiB messages, with the size and SHA-256 of all.
struct ChannelWriter {
    tx: mpsc::Sender<Upload>,
    buf: Vec<u8>,
    hash: Sha256,
    n: u64,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<Upload>) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(MESSAGE),
            hash: Sha256::new(),
            n: 0,
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(MESSAGE));
        self.tx
            .blocking_send(Upload::Data(Bytes::from(data)))
            .map_err(|_| to_io(RepoError::Backend("the upload stopped".into())))
    }

    /// Sends the rest and `Done`: the object is complete.
    fn finish(mut self) -> Result<(u64, String), RepoError> {
        self.send().map_err(|e| from_io("upload", e))?;
        self.tx
            .blocking_send(Upload::Done)
            .map_err(|_| RepoError::Backend("the upload stopped".into()))?;
        Ok((self.n, hex::encode(self.hash.finalize())))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(MESSAGE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.hash.update(&data[..n]);
        self.n += n as u64;
        if self.buf.len() == MESSAGE {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The header of an encrypted object.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SealedHeader {
    format: String,
    frame_size: u32,
    encryption: EncryptionConfig,
}

/// Encrypts what is written into authenticated frames of [`FRAME`] bytes.
pub struct FrameSealer<W: Write> {
    inner: W,
    key: MasterKey,
    /// `nonce room || index || last || data`, never more than one frame.
    buf: Vec<u8>,
    index: u64,
}

impl<W: Write> FrameSealer<W> {
    /// Writes the header (how to unwrap `key` with the archive's key) and starts.
    pub fn new(mut inner: W, cfg: EncryptionConfig, key: MasterKey) -> Result<Self, RepoError> {
        let header = serde_json::to_vec(&SealedHeader {
            format: FORMAT.into(),
            frame_size: FRAME as u32,
            encryption: cfg,
        })
        .map_err(|e| RepoError::Io(e.to_string()))?;
        inner
            .write_all(MAGIC)
            .and_then(|_| inner.write_all(&(header.len() as u32).to_le_bytes()))
            .and_then(|_| inner.write_all(&header))
            .map_err(|e| from_io("write archive header", e))?;
        let mut s = Self {
            inner,
            key,
            buf: Vec::with_capacity(NONCE_LEN + FRAME_PREFIX + FRAME + TAG_LEN),
            index: 0,
        };
        s.start_frame();
        Ok(s)
    }

    fn start_frame(&mut self) {
        self.buf.clear();
        self.buf.resize(NONCE_LEN, 0);
        self.buf.extend_from_slice(&self.index.to_le_bytes());
        self.buf.push(0);
    }

    fn seal(&mut self, last: bool) -> std::io::Result<()> {
        self.buf[NONCE_LEN + 8] = u8::from(last);
        self.key.seal_in_place(&mut self.buf).map_err(to_io)?;
        self.inner
            .write_all(&(self.buf.len() as u32).to_le_bytes())?;
        self.inner.write_all(&self.buf)?;
        self.index += 1;
        self.start_frame();
        Ok(())
    }

    /// Seals the last frame (possibly empty) and returns the inner writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.seal(true)?;
        Ok(self.inner)
    }

    /// Capacity of the frame buffer: one frame, whatever was written.
    #[cfg(test)]
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }
}

impl<W: Write> Write for FrameSealer<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = NONCE_LEN + FRAME_PREFIX + FRAME - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if n == room {
            self.seal(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads what a [`FrameSealer`] wrote, refusing altered, reordered, missing or extra
/// frames.
pub struct FrameOpener<R: Read> {
    inner: R,
    key: MasterKey,
    frame_size: usize,
    buf: Vec<u8>,
    /// The current frame's plaintext within `buf`, and how much of it was read.
    plain: std::ops::Range<usize>,
    next: u64,
    done: bool,
}

impl<R: Read> FrameOpener<R> {
    /// Reads the header (after [`MAGIC`]) and unwraps the object's key with `source`.
    pub fn new(mut inner: R, source: &KeySource) -> Result<Self, RepoError> {
        let mut len = [0u8; 4];
        inner
            .read_exact(&mut len)
            .map_err(|e| from_io("read archive header", e))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > 64 * 1024 {
            return Err(RepoError::Damaged(format!("archive header of {len} bytes")));
        }
        let mut header = vec![0u8; len];
        inner
            .read_exact(&mut header)
            .map_err(|e| from_io("read archive header", e))?;
        let header: SealedHeader = serde_json::from_slice(&header)
            .map_err(|e| RepoError::Damaged(format!("archive header: {e}")))?;
        if header.format != FORMAT {
            return Err(RepoError::Corrupt(format!(
                "archive format {:?} is not supported (this drmesh reads {FORMAT})",
                header.format
            )));
        }
        let frame_size = header.frame_size as usize;
        if frame_size == 0 || frame_size > MAX_FRAME {
            return Err(RepoError::Damaged(format!(
                "archive frame size {frame_size}"
            )));
        }
        if matches!(source, KeySource::None) {
            return Err(RepoError::Key(
                "the archived object is encrypted: give the archive's key file \
                 (--archive-key-file) or passphrase (DRMESH_ARCHIVE_PASSPHRASE)"
                    .into(),
            ));
        }
        let key = crypto::unlock(source, &header.encryption)?;
        Ok(Self {
            inner,
            key,
            frame_size,
            buf: Vec::new(),
            plain: 0..0,
            next: 0,
            done: false,
        })
    }

    /// Reads, opens and checks the next frame into `buf`; false after the last.
    fn next_frame(&mut self) -> std::io::Result<bool> {
        let damaged = |why: String| to_io(RepoError::Damaged(format!("archive: {why}")));
        if self.done {
            return Ok(false);
        }
        let mut len = [0u8; 4];
        if let Err(e) = self.inner.read_exact(&mut len) {
            return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                damaged(format!("truncated after frame {}", self.next))
            } else {
                e
            });
        }
        let len = u32::from_le_bytes(len) as usize;
        if len < NONCE_LEN + FRAME_PREFIX + TAG_LEN
            || len > NONCE_LEN + FRAME_PREFIX + self.frame_size + TAG_LEN
        {
            return Err(damaged(format!("frame {} of {len} bytes", self.next)));
        }
        self.buf.resize(len, 0);
        self.inner.read_exact(&mut self.buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                damaged(format!("truncated in frame {}", self.next))
            } else {
                e
            }
        })?;
        let range = self
            .key
            .open_in_place(&mut self.buf)
            .ok_or_else(|| damaged(format!("frame {} fails authentication", self.next)))?;
        let plain = &self.buf[range.clone()];
        let mut index = [0u8; 8];
        index.copy_from_slice(&plain[..8]);
        if u64::from_le_bytes(index) != self.next {
            return Err(damaged(format!(
                "frame {} where frame {} belongs",
                u64::from_le_bytes(index),
                self.next
            )));
        }
        let last = plain[8] == 1;
        self.next += 1;
        self.plain = range.start + FRAME_PREFIX..range.end;
        if last {
            self.done = true;
            let mut extra = [0u8; 1];
            if self.inner.read(&mut extra)? != 0 {
                return Err(damaged("data after the last frame".into()));
            }
        }
        Ok(true)
    }
}

impl<R: Read> Read for FrameOpener<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.plain.is_empty() {
            if !self.next_frame()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.plain.len());
        out[..n].copy_from_slice(&self.buf[self.plain.start..self.plain.start + n]);
        self.plain.start += n;
        Ok(n)
    }
}

/// Where the zstd stream goes: straight out, or through a [`FrameSealer`].
enum Sealing<W: Write> {
    Plain(W),
    Sealed(Box<FrameSealer<W>>),
}

impl<W: Write> Sealing<W> {
    fn finish(self) -> std::io::Result<W> {
        match self {
            Sealing::Plain(w) => Ok(w),
            Sealing::Sealed(s) => s.finish(),
        }
    }
}

impl<W: Write> Write for Sealing<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Sealing::Plain(w) => w.write(data),
            Sealing::Sealed(s) => s.write(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sealing::Plain(w) => w.flush(),
            Sealing::Sealed(s) => s.flush(),
        }
    }
}

/// Counts and hashes what passes through.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    n: u64,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            n: 0,
        }
    }

    fn result(self) -> (u64, String) {
        (self.n, hex::encode(self.hash.finalize()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        self.hash.update(&out[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hash.update(&data[..n]);
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The manifest of `snap` archived now, with `wal` added: every file's content SHA-256
/// (files hashed by their chunk ids are read once to hash their content).
fn manifest_of(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    snap: &Snapshot,
    wal: &[(u32, String)],
) -> Result<ColdManifest, RepoError> {
    let mut entries = Vec::with_capacity(snap.entries.len() + wal.len());
    for e in &snap.entries {
        safe_relative(&e.path)?;
        let sha256 = match e.kind {
            EntryKind::File if e.hash == FileHash::Content && e.sha256.is_some() => {
                e.sha256.clone()
            }
            EntryKind::File => {
                let mut h = Hashing::new(chunk_reader(repo, handle, e)?);
                std::io::copy(&mut h, &mut std::io::sink())
                    .map_err(|err| from_io(&format!("read {}", e.path), err))?;
                Some(h.result().1)
            }
            _ => None,
        };
        entries.push(ColdEntry {
            path: e.path.clone(),
            kind: e.kind,
            mode: e.mode & 0o7777,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime_ns.div_euclid(1_000_000_000),
            size: if e.kind == EntryKind::File { e.size } else { 0 },
            sha256,
            target: e.target.clone(),
            wal: false,
        });
    }
    // The WAL belongs to the data directory's owner, like its other files.
    let like = snap.entries.iter().find(|e| e.path == "PG_VERSION");
    for (tl, name) in wal {
        let data = handle.block_on(repo.get_wal(*tl, name))?;
        entries.push(ColdEntry {
            path: format!("pg_wal/{name}"),
            kind: EntryKind::File,
            mode: 0o600,
            uid: like.map_or(0, |e| e.uid),
            gid: like.map_or(0, |e| e.gid),
            mtime: snap.finished_at.timestamp(),
            size: data.len() as u64,
            sha256: Some(hex::encode(Sha256::digest(&data))),
            target: None,
            wal: true,
        });
    }
    Ok(ColdManifest {
        format: FORMAT.into(),
        snapshot_id: snap.id.clone(),
        kind: snap.kind.clone(),
        parent: snap.parent.clone(),
        source: snap.source.clone(),
        hostname: snap.hostname.clone(),
        started_at: snap.started_at,
        finished_at: snap.finished_at,
        tags: snap.tags.clone(),
        postgres: snap.postgres.clone(),
        archived_at: Utc::now(),
        entries,
    })
}

fn tar_header(e: &ColdEntry) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(match e.kind {
        EntryKind::File => tar::EntryType::Regular,
        EntryKind::Dir => tar::EntryType::Directory,
        EntryKind::Symlink => tar::EntryType::Symlink,
    });
    h.set_mode(e.mode);
    h.set_uid(e.uid as u64);
    h.set_gid(e.gid as u64);
    h.set_mtime(e.mtime.max(0) as u64);
    h.set_size(e.size);
    h
}

/// Builds the object (tar → zstd → frames when sealed) into `tx`; returns the manifest,
/// and the size and SHA-256 of what was sent. Sends `Done` only when all of it is
/// written and every file matched its manifest entry.
fn write_object(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    snap: &Snapshot,
    wal: &[(u32, String)],
    sealing: Option<(EncryptionConfig, MasterKey)>,
    tx: mpsc::Sender<Upload>,
) -> Result<(ColdManifest, u64, String), RepoError> {
    let io = |e: std::io::Error| from_io("write archive", e);
    let manifest = manifest_of(repo, handle, snap, wal)?;
    let out = ChannelWriter::new(tx);
    let out = match sealing {
        None => Sealing::Plain(out),
        Some((cfg, key)) => Sealing::Sealed(Box::new(FrameSealer::new(out, cfg, key)?)),
    };
    let mut zstd = zstd::Encoder::new(out, ZSTD_LEVEL).map_err(io)?;
    zstd.include_checksum(true).map_err(io)?;
    let mut tar = tar::Builder::new(zstd);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| RepoError::Io(e.to_string()))?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(json.len() as u64);
    h.set_mtime(manifest.archived_at.timestamp().max(0) as u64);
    tar.append_data(&mut h, MANIFEST, json.as_slice())
        .map_err(io)?;
    let mut wal_iter = wal.iter();
    for (i, e) in manifest.entries.iter().enumerate() {
        let mut h = tar_header(e);
        match e.kind {
            EntryKind::Dir => tar.append_data(&mut h, &e.path, std::io::empty()),
            EntryKind::Symlink => {
                tar.append_link(&mut h, &e.path, e.target.as_deref().unwrap_or_default())
            }
            EntryKind::File => {
                let content: Box<dyn Read> = if e.wal {
                    let (tl, name) = wal_iter
                        .next()
                        .ok_or_else(|| RepoError::Io("WAL list out of step".into()))?;
                    Box::new(std::io::Cursor::new(
                        handle.block_on(repo.get_wal(*tl, name))?,
                    ))
                } else {
                    Box::new(chunk_reader(repo, handle, &snap.entries[i])?)
                };
                let mut content = Hashing::new(content);
                tar.append_data(&mut h, &e.path, &mut content).map_err(io)?;
                let (n, sha) = content.result();
                if n != e.size || Some(&sha) != e.sha256.as_ref() {
                    return Err(RepoError::Damaged(format!(
                        "{}: read {n} bytes with SHA-256 {sha}, the manifest says {} bytes with {}",
                        e.path,
                        e.size,
                        e.sha256.as_deref().unwrap_or("none")
                    )));
                }
                Ok(())
            }
        }
        .map_err(io)?;
    }
    let zstd = tar.into_inner().map_err(io)?;
    let out = zstd.finish().map_err(io)?;
    let out = out.finish().map_err(io)?;
    let (size, sha256) = out.finish()?;
    Ok((manifest, size, sha256))
}

/// The reader end of a download.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, RepoError>>,
    cur: Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Result<Bytes, RepoError>>) -> Self {
        Self {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(to_io(e)),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// A restore goes into a new or empty directory, so no path in it can be a symlink
/// an earlier member made (symlinks are made last).
fn prepare_target(target: &Path) -> Result<(), RepoError> {
    if !target.is_absolute() {
        return Err(RepoError::Config(format!(
            "restore target {} must be absolute",
            target.display()
        )));
    }
    match std::fs::read_dir(target) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(RepoError::AlreadyExists(format!(
                    "restore target {} is not empty",
                    target.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target)
                .map_err(|e| RepoError::local(format!("create {}", target.display()), e))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| RepoError::local(format!("chmod {}", target.display()), e))?;
        }
        Err(e) => return Err(RepoError::local(format!("open {}", target.display()), e)),
    }
    Ok(())
}

/// Shared count and digest of the object's bytes, read by whoever reaches its end.
#[derive(Clone, Default)]
struct ObjectDigest(Arc<Mutex<(Sha256, u64)>>);

struct DigestReader<R> {
    inner: R,
    digest: ObjectDigest,
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        if let Ok(mut d) = self.digest.0.lock() {
            d.0.update(&out[..n]);
            d.1 += n as u64;
        }
        Ok(n)
    }
}

/// Reads an object, checking everything; restores into `target` when given.
fn read_object(
    src: impl Read + Send + 'static,
    key: &KeySource,
    target: Option<&Path>,
) -> Result<ColdReport, RepoError> {
    let digest = ObjectDigest::default();
    let mut src = DigestReader {
        inner: src,
        digest: digest.clone(),
    };
    let mut magic = [0u8; 8];
    src.read_exact(&mut magic)
        .map_err(|e| damaged_io("read archive", e))?;
    let encrypted = &magic == MAGIC;
    let plain: Box<dyn Read + Send> = if encrypted {
        Box::new(FrameOpener::new(src, key)?)
    } else if magic[..4] == ZSTD_MAGIC {
        Box::new(std::io::Cursor::new(magic).chain(src))
    } else {
        return Err(RepoError::Damaged(
            "archive: neither a zstd stream nor an encrypted archive".into(),
        ));
    };
    let zstd = zstd::Decoder::new(plain).map_err(|e| damaged_io("read archive", e))?;
    let mut tar = tar::Archive::new(zstd);
    let mut report = ColdReport {
        target: target.map(Path::to_path_buf),
        encrypted,
        ..ColdReport::default()
    };
    let mut dirs: Vec<(PathBuf, &ColdEntry)> = Vec::new();
    let mut links: Vec<(PathBuf, &ColdEntry)> = Vec::new();
    let manifest: ColdManifest;
    {
        let io = |e: std::io::Error| damaged_io("read archive", e);
        let mut members = tar.entries().map_err(io)?;
        let mut first = members
            .next()
            .ok_or_else(|| RepoError::Damaged("archive: empty".into()))?
            .map_err(io)?;
        if first.path().map_err(io)?.as_os_str() != MANIFEST || first.size() > MAX_MANIFEST {
            return Err(RepoError::Damaged(format!(
                "archive: the first member is not {MANIFEST}"
            )));
        }
        let mut json = Vec::new();
        first.read_to_end(&mut json).map_err(io)?;
        drop(first);
        manifest = serde_json::from_slice(&json)
            .map_err(|e| RepoError::Damaged(format!("archive: {MANIFEST}: {e}")))?;
        if manifest.format != FORMAT {
            return Err(RepoError::Corrupt(format!(
                "archive format {:?} is not supported (this drmesh reads {FORMAT})",
                manifest.format
            )));
        }
        report.snapshot_id = manifest.snapshot_id.clone();
        report.kind = manifest.kind.clone();
        let root_owner = nix::unistd::geteuid().is_root();
        let mut expected = manifest.entries.iter();
        for member in members {
            let mut member = member.map_err(io)?;
            let path = member.path().map_err(io)?.to_string_lossy().into_owned();
            let e = expected.next().ok_or_else(|| {
                RepoError::Damaged(format!("archive: {path} is not in {MANIFEST}"))
            })?;
            let kind = match member.header().entry_type() {
                tar::EntryType::Regular => EntryKind::File,
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Symlink => EntryKind::Symlink,
                other => {
                    return Err(RepoError::Damaged(format!(
                        "archive: {path} is a {other:?}"
                    )))
                }
            };
            if path.trim_end_matches('/') != e.path || kind != e.kind {
                return Err(RepoError::Damaged(format!(
                    "archive: member {path} ({kind:?}) where {MANIFEST} has {} ({:?})",
                    e.path, e.kind
                )));
            }
            let rel = safe_relative(&e.path)?;
            let dest = target.map(|t| t.join(&rel));
            match e.kind {
                EntryKind::Dir => {
                    report.dirs += 1;
                    if let Some(d) = dest {
                        std::fs::create_dir_all(&d).map_err(|err| {
                            RepoError::local(format!("create {}", d.display()), err)
                        })?;
                        dirs.push((d, e));
                    }
                }
                EntryKind::Symlink => {
                    report.symlinks += 1;
                    let target_of = member.link_name().map_err(io)?;
                    let target_of = target_of
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if Some(&target_of) != e.target.as_ref() {
                        return Err(RepoError::Damaged(format!(
                            "archive: {path} points at {target_of}, {MANIFEST} says {:?}",
                            e.target
                        )));
                    }
                    if let Some(d) = dest {
                        links.push((d, e));
                    }
                }
                EntryKind::File => {
                    let mut content = Hashing::new(&mut member);
                    match &dest {
                        Some(d) => write_file(d, e, &mut content, root_owner)?,
                        None => {
                            std::io::copy(&mut content, &mut std::io::sink()).map_err(io)?;
                        }
                    }
                    let (n, sha) = content.result();
                    if n != e.size || Some(&sha) != e.sha256.as_ref() {
                        return Err(RepoError::Damaged(format!(
                            "{}: {n} bytes with SHA-256 {sha}, {MANIFEST} says {} bytes with {}",
                            e.path,
                            e.size,
                            e.sha256.as_deref().unwrap_or("none")
                        )));
                    }
                    if e.wal {
                        report.wal_files += 1;
                    } else {
                        report.files += 1;
                        report.bytes += n;
                    }
                }
            }
        }
        if let Some(missing) = expected.next() {
            return Err(RepoError::Damaged(format!(
                "archive: {} is in {MANIFEST} but not in the archive",
                missing.path
            )));
        }
        for (d, e) in &links {
            if let Some(parent) = d.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|err| RepoError::local(format!("create {}", parent.display()), err))?;
            }
            std::os::unix::fs::symlink(e.target.as_deref().unwrap_or_default(), d)
                .map_err(|err| RepoError::local(format!("symlink {}", d.display()), err))?;
            if root_owner {
                std::os::unix::fs::lchown(d, Some(e.uid), Some(e.gid))
                    .map_err(|err| RepoError::local(format!("chown {}", d.display()), err))?;
            }
        }
        // Deepest first, so a directory's time is set after its contents are made.
        dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (d, e) in &dirs {
            set_metadata(d, e, root_owner)?;
        }
    }
    // The rest of the stream (tar's end blocks, zstd's checksum, the last frame): read
    // to the end, so every byte of the object is checked and counted.
    let mut zstd = tar.into_inner();
    std::io::copy(&mut zstd, &mut std::io::sink()).map_err(|e| damaged_io("read archive", e))?;
    drop(zstd);
    let (hash, n) = digest
        .0
        .lock()
        .map(|d| (d.0.clone(), d.1))
        .map_err(|_| RepoError::Io("digest lock".into()))?;
    report.object_bytes = n;
    report.object_sha256 = hex::encode(hash.finalize());
    Ok(report)
}

fn write_file(
    dest: &Path,
    e: &ColdEntry,
    content: &mut impl Read,
    root_owner: bool,
) -> Result<(), RepoError> {
    let err =
        |what: &str, x: std::io::Error| RepoError::local(format!("{what} {}", dest.display()), x);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|x| err("create directory for", x))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|x| err("create", x))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match content.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(x) if x.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(x) => return Err(damaged_io(&format!("read {}", e.path), x)),
        };
        f.write_all(&buf[..n]).map_err(|x| err("write", x))?;
    }
    f.sync_all().map_err(|x| err("sync", x))?;
    drop(f);
    set_metadata(dest, e, root_owner)
}

/// Owner (as root), then mode (a chown clears set-id bits), then mtime.
fn set_metadata(path: &Path, e: &ColdEntry, root_owner: bool) -> Result<(), RepoError> {
    use std::os::unix::fs::PermissionsExt;
    let err =
        |what: &str, x: std::io::Error| RepoError::local(format!("{what} {}", path.display()), x);
    if root_owner {
        std::os::unix::fs::chown(path, Some(e.uid), Some(e.gid)).map_err(|x| err("chown", x))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(e.mode))
        .map_err(|x| err("chmod", x))?;
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.mtime.max(0) as u64);
    std::fs::File::open(path)
        .and_then(|f| f.set_modified(mtime))
        .map_err(|x| err("set the time of", x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::BackupRequest;
    use crate::RepoOptions;

    /// A tree with nested directories, an empty file, a symlink, a long name, a file
    /// bigger than one chunk and a frame, and odd modes.
    fn tree(root: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let long = "x".repeat(150);
        std::fs::create_dir_all(root.join(format!("a/b/{long}"))).expect("dirs");
        std::fs::write(root.join("a/one.txt"), b"one").expect("file");
        std::fs::write(root.join("a/empty"), b"").expect("file");
        let big: Vec<u8> = (0..(5 << 20) + 17u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(root.join(format!("a/b/{long}/big.bin")), big).expect("file");
        std::fs::write(root.join("a/b/secret"), b"mode 600").expect("file");
        std::fs::set_permissions(
            root.join("a/b/secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("one.txt", root.join("a/link")).expect("symlink");
    }

    fn files_of(root: &Path) -> Vec<(String, Vec<u8>, u32)> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = Vec::new();
        for e in walkdir::WalkDir::new(root).sort_by_file_name() {
            let e = e.expect("walk");
            let rel = e
                .path()
                .strip_prefix(root)
                .expect("inside")
                .to_string_lossy()
                .into_owned();
            if rel.is_empty() || rel == MANIFEST {
                continue;
            }
            let meta = e.path().symlink_metadata().expect("meta");
            let content = if meta.file_type().is_symlink() {
                std::fs::read_link(e.path())
                    .expect("link")
                    .to_string_lossy()
                    .into_owned()
                    .into_bytes()
            } else if meta.is_file() {
                std::fs::read(e.path()).expect("read")
            } else {
                Vec::new()
            };
            out.push((rel, content, meta.permissions().mode() & 0o7777));
        }
        out
    }

    struct Setup {
        dir: tempfile::TempDir,
        repo: Repository,
        id: String,
        source: PathBuf,
    }

    async fn setup(key: Option<&str>) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("src");
        tree(&source);
        let key = match key {
            Some(k) => {
                let f = dir.path().join("repo.key");
                std::fs::write(&f, k).expect("key");
                KeySource::KeyFile(f)
            }
            None => KeySource::None,
        };
        let opts = RepoOptions {
            location: Location::new(dir.path().join("repo").to_string_lossy()),
            key,
        };
        let repo = Repository::init(&opts).await.expect("init");
        let snap = repo
            .backup(BackupRequest::new(
                "docs_1_abc",
                "documents",
                source.clone(),
            ))
            .await
            .expect("backup");
        Setup {
            id: snap.id,
            repo,
            source,
            dir,
        }
    }

    async fn archive_at(s: &Setup, key: KeySource) -> ColdArchive {
        ColdArchive::open(&ArchiveOptions {
            location: Location::new(s.dir.path().join("cold").to_string_lossy()),
            key,
            storage_class: None,
        })
        .await
        .expect("open archive")
    }

    fn key_file(s: &Setup, name: &str, secret: &str) -> KeySource {
        let f = s.dir.path().join(name);
        std::fs::write(&f, secret).expect("key");
        KeySource::KeyFile(f)
    }

    #[tokio::test]
    async fn round_trip_without_a_key_is_a_plain_tar_zst() {
        let s = setup(None).await;
        let cold = archive_at(&s, KeySource::None).await;
        let a = cold.archive(&s.repo, &s.id).await.expect("archive");
        assert_eq!(a.object, format!("documents/{}.tar.zst", s.id));
        assert!(!a.encrypted);
        assert_eq!(cold.list().await.expect("list"), vec![a.clone()]);
        // Archiving again writes nothing new.
        assert_eq!(cold.archive(&s.repo, &s.id).await.expect("again"), a);

        let target = s.dir.path().join("restored");
        let report = cold.restore(&s.id, &target).await.expect("restore");
        assert_eq!(files_of(&target), files_of(&s.source));
        assert_eq!(report.files, 4);
        assert_eq!(report.symlinks, 1);
        assert!(cold.verify(&s.id).await.is_ok());

        // Plain zstd and tar read it: MANIFEST.json first, then the tree.
        let object = std::fs::read(s.dir.path().join("cold").join(&a.object)).expect("object");
        let tar_bytes = zstd::decode_all(object.as_slice()).expect("zstd");
        let mut ar = tar::Archive::new(tar_bytes.as_slice());
        let first = ar
            .entries()
            .expect("entries")
            .next()
            .expect("one")
            .expect("entry");
        assert_eq!(first.path().expect("path").to_string_lossy(), MANIFEST);
        let plain = s.dir.path().join("by-tar");
        tar::Archive::new(tar_bytes.as_slice())
            .unpack(&plain)
            .expect("unpack");
        assert_eq!(files_of(&plain), files_of(&s.source));
        let manifest: ColdManifest =
            serde_json::from_slice(&std::fs::read(plain.join(MANIFEST)).expect("manifest"))
                .expect("json");
        assert_eq!(manifest.snapshot_id, s.id);
        assert_eq!(manifest.kind, "documents");

        // The listing goes first, then the object.
        cold.remove(&s.id).await.expect("remove");
        assert!(cold.list().await.expect("list").is_empty());
        assert!(!s.dir.path().join("cold").join(&a.object).exists());
    }

    #[tokio::test]
    async fn round_trip_with_a_key_is_sealed_and_needs_the_key() {
        let s = setup(Some("0123456789abcdef0123456789abcdef")).await;
        // An encrypted repository never archives as plaintext.
        let plain = archive_at(&s, KeySource::None).await;
        assert!(matches!(
            plain.archive(&s.repo, &s.id).await,
            Err(RepoError::Key(_))
        ));
        assert!(
            crate::Backend::open(&Location::new(s.dir.path().join("cold").to_string_lossy()))
                .await
                .expect("open")
                .list("")
                .await
                .expect("list")
                .is_empty()
        );

        let key = key_file(&s, "archive.key", "fedcba9876543210fedcba9876543210");
        let cold = archive_at(&s, key.clone()).await;
        let a = cold.archive(&s.repo, &s.id).await.expect("archive");
        assert!(a.encrypted);
        assert!(a.object.ends_with(".tar.zst.enc"));
        let object = std::fs::read(s.dir.path().join("cold").join(&a.object)).expect("object");
        assert_eq!(&object[..8], MAGIC);
        assert!(
            !object.windows(7).any(|w| w == b"one.txt"),
            "no file name in clear"
        );

        let target = s.dir.path().join("restored");
        cold.restore(&s.id, &target).await.expect("restore");
        assert_eq!(files_of(&target), files_of(&s.source));

        // Without the key, or with another, nothing is restored.
        let nokey = archive_at(&s, KeySource::None).await;
        let empty = s.dir.path().join("nokey");
        assert!(matches!(
            nokey.restore(&s.id, &empty).await,
            Err(RepoError::Key(_))
        ));
        let wrong = archive_at(
            &s,
            key_file(&s, "wrong.key", "ffffffffffffffffffffffffffffffff"),
        )
        .await;
        assert!(matches!(wrong.verify(&s.id).await, Err(RepoError::Key(_))));
    }

    /// One byte changed anywhere in an object, or the object cut short, fails the
    /// restore: the frame's tag, zstd's checksum, a file's SHA-256 or the object's.
    #[tokio::test]
    async fn a_tampered_or_truncated_object_is_refused() {
        for key in [false, true] {
            let s = setup(None).await;
            let ks = if key {
                key_file(&s, "archive.key", "fedcba9876543210fedcba9876543210")
            } else {
                KeySource::None
            };
            let cold = archive_at(&s, ks).await;
            let a = cold.archive(&s.repo, &s.id).await.expect("archive");
            let path = s.dir.path().join("cold").join(&a.object);
            let good = std::fs::read(&path).expect("object");
            let cases: Vec<(&str, Vec<u8>)> = vec![
                ("a byte in the middle", {
                    let mut b = good.clone();
                    let mid = b.len() / 2;
                    b[mid] ^= 0x40;
                    b
                }),
                ("the last byte", {
                    let mut b = good.clone();
                    let last = b.len() - 1;
                    b[last] ^= 0x01;
                    b
                }),
                ("cut short", good[..good.len() - 100].to_vec()),
            ];
            for (what, bad) in cases {
                std::fs::write(&path, &bad).expect("tamper");
                let target = s.dir.path().join(format!("t-{}", what.replace(' ', "-")));
                let r = cold.restore(&s.id, &target).await;
                assert!(
                    matches!(r, Err(RepoError::Damaged(_))),
                    "key {key}, {what}: {r:?}"
                );
                assert!(cold.verify(&s.id).await.is_err(), "key {key}, {what}");
            }
            std::fs::write(&path, &good).expect("restore the object");
            assert!(cold.verify(&s.id).await.is_ok());
        }
    }

    /// Frames never grow past one frame of buffer, whatever is written through them, and
    /// frames cannot be reordered or dropped.
    #[test]
    fn sealed_frames_keep_memory_bounded_and_their_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("k");
        std::fs::write(&f, "0123456789abcdef0123456789abcdef").expect("key");
        let source = KeySource::KeyFile(f);
        let (cfg, key) = crypto::create(&source).expect("create").expect("a key");
        let mut sealer = FrameSealer::new(Vec::new(), cfg, key).expect("sealer");
        let block: Vec<u8> = (0..64 * 1024u32).map(|i| i as u8).collect();
        let cap = sealer.buffer_capacity();
        for _ in 0..(40 << 20) / block.len() {
            sealer.write_all(&block).expect("write");
            assert_eq!(sealer.buffer_capacity(), cap, "one frame of buffer");
        }
        let sealed = sealer.finish().expect("finish");
        let mut opener = FrameOpener::new(&sealed[8..], &source).expect("opener");
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let k = opener.read(&mut buf).expect("read");
            if k == 0 {
                break;
            }
            n += k as u64;
            assert!(opener.buf.capacity() <= NONCE_LEN + FRAME_PREFIX + FRAME + TAG_LEN);
        }
        assert_eq!(n, 40 << 20);

        // Swap the first two frames: refused.
        let hlen = u32::from_le_bytes(sealed[8..12].try_into().expect("4")) as usize;
        let start = 12 + hlen;
        let flen = 4 + u32::from_le_bytes(sealed[start..start + 4].try_into().expect("4")) as usize;
        let mut swapped = sealed[..start].to_vec();
        swapped.extend_from_slice(&sealed[start + flen..start + 2 * flen]);
        swapped.extend_from_slice(&sealed[start..start + flen]);
        swapped.extend_from_slice(&sealed[start + 2 * flen..]);
        let mut opener = FrameOpener::new(&swapped[8..], &source).expect("opener");
        assert!(std::io::copy(&mut opener, &mut std::io::sink()).is_err());
        // Drop the last frame: refused as truncated.
        let mut opener = FrameOpener::new(&sealed[8..start + 3 * flen], &source).expect("opener");
        assert!(std::io::copy(&mut opener, &mut std::io::sink()).is_err());
    }

    /// Enforcement with an archive: the monthly pick moves there (read back, then
    /// forgotten here), a dry run changes nothing, a second run nothing more, and years
    /// later the archive lets it go.
    #[tokio::test]
    async fn enforcement_moves_the_monthly_pick_to_the_archive_once() {
        use crate::enforce::Policies;
        let s = setup(None).await;
        let cold = archive_at(&s, KeySource::None).await;
        let now = Utc::now();
        // The backup made by `setup`, 100 days older: the newest of its month.
        let mut old = s.repo.snapshot(&s.id).await.expect("snapshot");
        old.finished_at = now - chrono::Duration::days(100);
        old.started_at = old.finished_at;
        s.repo
            .put_doc(&format!("snapshots/{}", s.id), &old)
            .await
            .expect("manifest");
        let newest = s
            .repo
            .backup(BackupRequest::new(
                "docs_2_abc",
                "documents",
                s.source.clone(),
            ))
            .await
            .expect("backup");
        let policies = Policies::default();

        let dry = s
            .repo
            .enforce_with_archive(&policies, now, true, Some(&cold))
            .await
            .expect("dry");
        let ids = |v: &[crate::enforce::Kept]| -> Vec<String> {
            v.iter().map(|k| k.snapshot_id.clone()).collect()
        };
        assert_eq!(ids(&dry.archived), vec![s.id.clone()]);
        assert!(dry.awaiting_archive.is_empty());
        assert!(
            cold.list().await.expect("list").is_empty(),
            "dry: nothing written"
        );
        assert_eq!(s.repo.snapshots().await.expect("hot").len(), 2);

        let done = s
            .repo
            .enforce_with_archive(&policies, now, false, Some(&cold))
            .await
            .expect("enforce");
        assert_eq!(ids(&done.archived), vec![s.id.clone()]);
        assert!(done.archive_errors.is_empty(), "{:?}", done.archive_errors);
        let hot: Vec<String> = s
            .repo
            .snapshots()
            .await
            .expect("hot")
            .into_iter()
            .map(|x| x.id)
            .collect();
        assert_eq!(hot, vec![newest.id.clone()]);
        let listed = cold.list().await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].finished_at, old.finished_at);
        // The archived copy restores whole though its packs may be gone from the hot
        // repository.
        let target = s.dir.path().join("from-cold");
        cold.restore(&s.id, &target).await.expect("restore");
        assert_eq!(files_of(&target), files_of(&s.source));

        let again = s
            .repo
            .enforce_with_archive(&policies, now, false, Some(&cold))
            .await
            .expect("again");
        assert!(again.archived.is_empty() && again.archive_deleted.is_empty());
        assert!(again.deleted.is_empty());
        assert_eq!(cold.list().await.expect("list").len(), 1);

        // Thirteen years on no tier keeps it: it leaves the archive; the newest full
        // stays hot.
        let later = now + chrono::Duration::days(13 * 366);
        let gone = s
            .repo
            .enforce_with_archive(&policies, later, false, Some(&cold))
            .await
            .expect("later");
        assert_eq!(gone.archive_deleted, vec![s.id.clone()]);
        assert!(cold.list().await.expect("list").is_empty());
        assert_eq!(s.repo.snapshots().await.expect("hot").len(), 1);
    }

    #[tokio::test]
    async fn a_restore_refuses_a_non_empty_target() {
        let s = setup(None).await;
        let cold = archive_at(&s, KeySource::None).await;
        cold.archive(&s.repo, &s.id).await.expect("archive");
        let target = s.dir.path().join("busy");
        std::fs::create_dir_all(&target).expect("dir");
        std::fs::write(target.join("x"), b"x").expect("file");
        assert!(matches!(
            cold.restore(&s.id, &target).await,
            Err(RepoError::AlreadyExists(_))
        ));
        assert!(matches!(
            cold.restore("nope", &s.dir.path().join("t")).await,
            Err(RepoError::NotFound(_))
        ));
    }
}
