//! Where a repository's objects live, addressed by URL: a local directory (`/path` or
//! `file:///path`), `s3://bucket/prefix`, `az://container/prefix`, `gs://bucket/prefix`.
//!
//! Reads, listings and deletes go through the `object_store` crate for every kind. Writes
//! to a local directory are our own: `object_store` renames a temporary file into place
//! but never calls `fsync`, and a backup is reported done only when it is durable. So a
//! local put writes a temporary file, syncs it, renames it and syncs the directory.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use super::pack::PackBuf;
use super::RepoError;

/// A repository location with its options (endpoint, credentials, ...).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub url: String,
    /// Options passed to the object-store builder, e.g. `endpoint`, `allow_http`,
    /// `access_key_id`, `secret_access_key`, `region` for S3; `account_name`,
    /// `access_key`, `endpoint`, `use_emulator` for Azure. Credentials not given here
    /// are taken from the usual environment variables (`AWS_*`, `AZURE_*`, `GOOGLE_*`).
    pub options: BTreeMap<String, String>,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self.options.keys().collect();
        write!(f, "Location({}, options: {keys:?})", self.url)
    }
}

impl Location {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            options: BTreeMap::new(),
        }
    }
}

/// An open object store with the repository's prefix.
#[derive(Clone)]
pub struct Backend {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// Set for local directories: the root the prefix is under, for durable writes.
    local_root: Option<PathBuf>,
    display: String,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backend({})", self.display)
    }
}

fn backend_error(op: &str, key: &str, e: object_store::Error) -> RepoError {
    match e {
        object_store::Error::NotFound { .. } => RepoError::NotFound(key.to_string()),
        other => RepoError::Backend(format!("{op} {key}: {other}")),
    }
}

/// Maps a few friendly option names onto the `object_store` keys of each kind.
fn normalise(kind: &str, key: &str) -> String {
    let key = key.to_ascii_lowercase().replace('-', "_");
    match (kind, key.as_str()) {
        ("s3", "endpoint" | "region" | "access_key_id" | "secret_access_key" | "allow_http") => {
            format!("aws_{key}")
        }
        ("s3", "session_token" | "token") => "aws_session_token".into(),
        ("s3", "virtual_hosted_style_request") => "aws_virtual_hosted_style_request".into(),
        _ => key,
    }
}

impl Backend {
    pub async fn open(location: &Location) -> Result<Self, RepoError> {
        let url = location.url.trim();
        if url.is_empty() {
            return Err(RepoError::Config("repository URL is empty".into()));
        }
        let local = if let Some(rest) = url.strip_prefix("file://") {
            Some(PathBuf::from(rest))
        } else if !url.contains("://") {
            Some(PathBuf::from(url))
        } else {
            None
        };
        if let Some(root) = local {
            if !root.is_absolute() {
                return Err(RepoError::Config(format!(
                    "local repository path {} must be absolute",
                    root.display()
                )));
            }
            std::fs::create_dir_all(&root)
                .map_err(|e| RepoError::Backend(format!("create {}: {e}", root.display())))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
                .map_err(|e| RepoError::Backend(format!("open {}: {e}", root.display())))?;
            return Ok(Self {
                store: Arc::new(store),
                prefix: Path::default(),
                display: root.display().to_string(),
                local_root: Some(root),
            });
        }
        let parsed = url::Url::parse(url)
            .map_err(|e| RepoError::Config(format!("repository URL {url:?}: {e}")))?;
        let scheme = parsed.scheme().to_string();
        let bucket = parsed.host_str().unwrap_or_default().to_string();
        if bucket.is_empty() {
            return Err(RepoError::Config(format!(
                "repository URL {url:?} names no bucket or container"
            )));
        }
        let prefix = Path::parse(parsed.path().trim_matches('/'))
            .map_err(|e| RepoError::Config(format!("repository URL {url:?}: {e}")))?;
        let store: Arc<dyn ObjectStore> = match scheme.as_str() {
            "s3" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&bucket);
                for (k, v) in &location.options {
                    let key = normalise("s3", k);
                    let parsed_key = key.parse().map_err(|_| {
                        RepoError::Config(format!("unknown S3 option {k:?}"))
                    })?;
                    b = b.with_config(parsed_key, v);
                }
                Arc::new(b.build().map_err(|e| RepoError::Config(format!("S3 {url}: {e}")))?)
            }
            "az" | "azure" => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(&bucket);
                for (k, v) in &location.options {
                    let key = normalise("az", k);
                    let parsed_key = key.parse().map_err(|_| {
                        RepoError::Config(format!("unknown Azure option {k:?}"))
                    })?;
                    b = b.with_config(parsed_key, v);
                }
                Arc::new(b.build().map_err(|e| RepoError::Config(format!("Azure {url}: {e}")))?)
            }
            "gs" => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(&bucket);
                for (k, v) in &location.options {
                    let key = normalise("gs", k);
                    let parsed_key = key.parse().map_err(|_| {
                        RepoError::Config(format!("unknown GCS option {k:?}"))
                    })?;
                    b = b.with_config(parsed_key, v);
                }
                Arc::new(b.build().map_err(|e| RepoError::Config(format!("GCS {url}: {e}")))?)
            }
            other => {
                return Err(RepoError::Config(format!(
                    "repository URL scheme {other:?} is not supported (use a path, file://, s3://, az:// or gs://)"
                )))
            }
        };
        Ok(Self {
            store,
            prefix,
            local_root: None,
            display: format!("{scheme}://{bucket}/{}", parsed.path().trim_matches('/')),
        })
    }

    pub fn describe(&self) -> &str {
        &self.display
    }

    fn path(&self, key: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in key.split('/').filter(|part| !part.is_empty()) {
            p = p.child(part);
        }
        p
    }

    /// Writes an object; returns only when it is durable.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), RepoError> {
        if let Some(root) = &self.local_root {
            let file = root.join(key);
            let key = key.to_string();
            return tokio::task::spawn_blocking(move || write_durably(&file, &data))
                .await
                .map_err(|e| RepoError::Backend(format!("put {key}: {e}")))?;
        }
        self.store
            .put(&self.path(key), PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| backend_error("put", key, e))
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, RepoError> {
        let r = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| backend_error("get", key, e))?;
        r.bytes().await.map_err(|e| backend_error("get", key, e))
    }

    /// Reads a whole object into `buf[..n]` and returns `n`, reusing the buffer's
    /// allocation: readers of many large objects keep one buffer instead of allocating one
    /// per object. Local objects are read with `O_DIRECT` (the buffer is page-aligned), so
    /// a restore does not copy every pack through the page cache.
    pub async fn get_into(&self, key: &str, buf: &mut PackBuf) -> Result<usize, RepoError> {
        if let Some(root) = &self.local_root {
            return read_direct(&root.join(key), buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => RepoError::NotFound(key.to_string()),
                _ => RepoError::Backend(format!("get {key}: {e}")),
            });
        }
        let bytes = self.get(key).await?;
        buf.clear();
        buf.extend_from_slice(&bytes);
        Ok(bytes.len())
    }

    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, RepoError> {
        self.store
            .get_range(&self.path(key), start..start + len)
            .await
            .map_err(|e| backend_error("get range of", key, e))
    }

    /// Size of an object, or `None` when it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, RepoError> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(backend_error("head", key, e)),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), RepoError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(backend_error("delete", key, e)),
        }
    }

    /// Keys (relative to the repository) and sizes of every object under `dir`.
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, RepoError> {
        Ok(self
            .list_with_times(dir)
            .await?
            .into_iter()
            .map(|(key, size, _)| (key, size))
            .collect())
    }

    /// As [`list`](Self::list), with each object's last-modified time (when it was
    /// stored).
    pub async fn list_with_times(
        &self,
        dir: &str,
    ) -> Result<Vec<(String, u64, chrono::DateTime<chrono::Utc>)>, RepoError> {
        let base = self.path(dir);
        let strip = if self.prefix.as_ref().is_empty() {
            0
        } else {
            self.prefix.as_ref().len() + 1
        };
        let items: Vec<_> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| backend_error("list", dir, e))?;
        Ok(items
            .into_iter()
            .filter_map(|m| {
                let full = m.location.as_ref();
                let key = full.get(strip..)?.to_string();
                // Temporary files of an interrupted local write are not objects.
                (!key.contains(".tmp-")).then_some((key, m.size, m.last_modified))
            })
            .collect())
    }
}

/// One message of a streamed upload ([`Backend::put_stream`]).
#[derive(Debug)]
pub enum Upload {
    /// The next bytes of the object.
    Data(Bytes),
    /// The object is complete: store it. A stream that ends without `Done` (the producer
    /// failed) is abandoned and nothing is stored.
    Done,
}

impl Backend {
    /// Stores an object whose bytes arrive over `rx`, holding at most one multipart part
    /// (or, locally, one message) at a time, so memory stays bounded whatever the size.
    /// Locally: a temporary file, synced, renamed and the directory synced, like
    /// [`put`](Self::put). Elsewhere: a multipart upload, aborted unless `Done` arrives.
    /// `storage_class` becomes the object's storage class (S3 `x-amz-storage-class`, Azure
    /// access tier, GCS storage class); a local directory has none and ignores it.
    /// Returns the bytes stored.
    pub async fn put_stream(
        &self,
        key: &str,
        storage_class: Option<&str>,
        mut rx: tokio::sync::mpsc::Receiver<Upload>,
    ) -> Result<u64, RepoError> {
        if let Some(root) = &self.local_root {
            let file = root.join(key);
            let key = key.to_string();
            return tokio::task::spawn_blocking(move || write_stream_durably(&file, &mut rx))
                .await
                .map_err(|e| RepoError::Backend(format!("put {key}: {e}")))?;
        }
        let mut opts = object_store::PutMultipartOptions::default();
        if let Some(class) = storage_class {
            opts.attributes.insert(
                object_store::Attribute::StorageClass,
                class.to_string().into(),
            );
        }
        let upload = self
            .store
            .put_multipart_opts(&self.path(key), opts)
            .await
            .map_err(|e| backend_error("start upload of", key, e))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        let mut total = 0u64;
        loop {
            match rx.recv().await {
                Some(Upload::Data(bytes)) => {
                    if let Err(e) = writer.wait_for_capacity(2).await {
                        let _ = writer.abort().await;
                        return Err(backend_error("upload", key, e));
                    }
                    total += bytes.len() as u64;
                    writer.put(bytes);
                }
                Some(Upload::Done) => break,
                None => {
                    let _ = writer.abort().await;
                    return Err(RepoError::Backend(format!(
                        "upload {key}: the writer stopped before the end; nothing stored"
                    )));
                }
            }
        }
        writer
            .finish()
            .await
            .map_err(|e| backend_error("finish upload of", key, e))?;
        Ok(total)
    }

    /// An object's bytes as they arrive, never the whole object in memory.
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes, RepoError>>, RepoError> {
        use futures::StreamExt;
        let r = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| backend_error("get", key, e))?;
        let key = key.to_string();
        Ok(r.into_stream()
            .map(move |c| c.map_err(|e| backend_error("get", &key, e)))
            .boxed())
    }
}

/// [`write_durably`] for an object that arrives in pieces.
fn write_stream_durably(
    file: &FsPath,
    rx: &mut tokio::sync::mpsc::Receiver<Upload>,
) -> Result<u64, RepoError> {
    use std::io::Write;
    let err = |what: &str, e: std::io::Error| {
        RepoError::Backend(format!("{what} {}: {e}", file.display()))
    };
    let dir = file
        .parent()
        .ok_or_else(|| RepoError::Backend(format!("{} has no parent", file.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| err("create directory for", e))?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = std::fs::File::create_new(&tmp).map_err(|e| err("create", e))?;
        let mut total = 0u64;
        loop {
            match rx.blocking_recv() {
                Some(Upload::Data(bytes)) => {
                    f.write_all(&bytes).map_err(|e| err("write", e))?;
                    total += bytes.len() as u64;
                }
                Some(Upload::Done) => break,
                None => {
                    return Err(RepoError::Backend(format!(
                        "write {}: the writer stopped before the end; nothing stored",
                        file.display()
                    )))
                }
            }
        }
        f.sync_all().map_err(|e| err("sync", e))?;
        std::fs::rename(&tmp, file).map_err(|e| err("rename into", e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err("sync directory of", e))?;
        Ok(total)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Temp file, fsync, rename, fsync of the directory: after a crash the object is either
/// whole or absent.
pub(crate) fn write_durably(file: &FsPath, data: &[u8]) -> Result<(), RepoError> {
    use std::io::Write;
    let err = |what: &str, e: std::io::Error| {
        RepoError::Backend(format!("{what} {}: {e}", file.display()))
    };
    let dir = file
        .parent()
        .ok_or_else(|| RepoError::Backend(format!("{} has no parent", file.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| err("create directory for", e))?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = create_direct(&tmp, data).map_err(|e| err("create", e))?;
        let done = direct_prefix(&f, data).map_err(|e| err("write", e))?;
        f.write_all(&data[done..]).map_err(|e| err("write", e))?;
        f.sync_all().map_err(|e| err("sync", e))?;
        std::fs::rename(&tmp, file).map_err(|e| err("rename into", e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err("sync directory of", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` for writing `data`, with `O_DIRECT` when `data` is page-aligned (a pack
/// buffer, see [`super::pack::PACK_ALIGN`]) and the filesystem takes it.
fn create_direct(path: &FsPath, data: &[u8]) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    if aligned_len(data) > 0 {
        let direct = options
            .clone()
            .custom_flags(OFlag::O_DIRECT.bits())
            .open(path);
        match direct {
            // tmpfs and a few others refuse O_DIRECT: write through the page cache there.
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {}
            other => return other,
        }
    }
    options.open(path)
}

/// The longest prefix of `data` that can go to disk with `O_DIRECT`: whole pages from a
/// page-aligned start.
fn aligned_len(data: &[u8]) -> usize {
    let page = super::pack::PACK_ALIGN;
    if (data.as_ptr() as usize).is_multiple_of(page) {
        data.len() / page * page
    } else {
        0
    }
}

/// Writes the page-aligned prefix of `data` straight to disk when `f` was opened with
/// `O_DIRECT`, then turns `O_DIRECT` off for the rest; returns how many bytes it wrote.
fn direct_prefix(f: &std::fs::File, data: &[u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let flags = OFlag::from_bits_retain(fcntl(f.as_raw_fd(), FcntlArg::F_GETFL)?);
    if !flags.contains(OFlag::O_DIRECT) {
        return Ok(0);
    }
    let n = aligned_len(data);
    f.write_all_at(&data[..n], 0)?;
    fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(flags - OFlag::O_DIRECT))?;
    let mut f = f;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(n as u64))?;
    Ok(n)
}

/// Reads the file at `path` into `buf[..n]`, with `O_DIRECT` where the filesystem takes
/// it; `buf` only grows (by whole pages), so a reused buffer is not zeroed again.
fn read_direct(path: &FsPath, buf: &mut PackBuf) -> std::io::Result<usize> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_DIRECT.bits())
        .open(path);
    let mut f = match direct {
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => std::fs::File::open(path)?,
        other => other?,
    };
    let page = super::pack::PACK_ALIGN;
    // One page more than the size, so reaching the end is seen even if the file grew.
    let room = (f.metadata()?.len() as usize / page + 1) * page;
    if buf.len() < room {
        buf.resize(room, 0);
    }
    let mut n = 0;
    loop {
        match f.read(&mut buf[n..room]) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if n == room {
            return Err(std::io::Error::other("the object grew while it was read"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_put_get_list_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = Backend::open(&Location::new(dir.path().to_string_lossy()))
            .await
            .expect("open");
        b.put("data/ab/abc", Bytes::from_static(b"hello"))
            .await
            .expect("put");
        b.put("index/1", Bytes::from_static(b"x"))
            .await
            .expect("put");
        assert_eq!(&b.get("data/ab/abc").await.expect("get")[..], b"hello");
        assert_eq!(
            &b.get_range("data/ab/abc", 1, 3).await.expect("range")[..],
            b"ell"
        );
        assert_eq!(b.size("data/ab/abc").await.expect("head"), Some(5));
        assert_eq!(b.size("nope").await.expect("head"), None);
        let listed = b.list("data").await.expect("list");
        assert_eq!(listed, vec![("data/ab/abc".to_string(), 5)]);
        b.delete("data/ab/abc").await.expect("delete");
        assert!(matches!(
            b.get("data/ab/abc").await,
            Err(RepoError::NotFound(_))
        ));
    }

    #[test]
    fn page_aligned_writes_go_direct_and_keep_every_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A pack buffer (page-aligned) whose length is not a whole number of pages, one
        // shorter than a page, and an ordinary (unaligned) slice.
        let mut builder = super::super::pack::PackBuilder::for_pack(1 << 20);
        let blob: Vec<u8> = (0..3 * 4096 + 123).map(|i| (i % 251) as u8).collect();
        builder.add(super::super::pack::ChunkId::of(&blob), 7, &blob);
        let (_, pack, _) = builder.finish(None).expect("finish");
        let pack = pack.into_bytes();
        assert_eq!(aligned_len(&pack) % 4096, 0);
        assert!(
            aligned_len(&pack) >= 3 * 4096,
            "a pack buffer is page-aligned"
        );
        let cases: [&[u8]; 3] = [&pack, &pack[..100], &blob[1..]];
        for (i, data) in cases.into_iter().enumerate() {
            let file = dir.path().join(format!("obj{i}"));
            write_durably(&file, data).expect("write");
            assert_eq!(std::fs::read(&file).expect("read"), data, "case {i}");
        }
    }

    /// No GCS emulator from PyPI or npm accepts object_store's uploads (see
    /// docs/benchmarks.md), so gs:// is shown to open with a service-account key pointing
    /// at a local base URL, and to refuse options GCS does not have.
    #[tokio::test]
    async fn gs_urls_open_with_gcs_options() {
        let key = r#"{"disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": "", "gcs_base_url": "http://127.0.0.1:9"}"#;
        let mut loc = Location::new("gs://drmesh-bucket/backups/db");
        loc.options.insert("service_account_key".into(), key.into());
        let b = Backend::open(&loc).await.expect("gs:// opens");
        assert!(
            b.describe().contains("gs://drmesh-bucket/backups/db"),
            "{}",
            b.describe()
        );
        loc.options.insert("no_such_option".into(), "1".into());
        let Err(err) = Backend::open(&loc).await else {
            panic!("an unknown option must be refused");
        };
        assert!(err.to_string().contains("unknown GCS option"), "{err}");
    }

    #[tokio::test]
    async fn bad_urls_are_refused() {
        for url in ["", "relative/path", "ftp://x/y", "s3:///nobucket"] {
            assert!(Backend::open(&Location::new(url)).await.is_err(), "{url}");
        }
    }
}
