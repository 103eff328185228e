//! Where a repository's objects live, addressed by URL: a local directory (`/path` or
//! `file:///path`), `s3://bucket/prefix`, `az://container/prefix`, `gs://bucket/prefix`.
//!
//! Reads, listings and deletes go through the `object_store` interface for every kind: the
//! `object_store` crate's own clients for local directories, S3 and Azure, and for GCS
//! OpenDAL's client behind the same interface (`object_store_opendal`), which speaks GCS's
//! JSON API — the API the GCS emulator the tests run (fake-gcs-server) implements, where
//! `object_store`'s GCS client speaks the XML API only. Writes to a local directory are
//! our own: `object_store` renames a temporary file into place
//! but never calls `fsync`, and a backup is reported done only when it is durable. So a
//! local put writes a temporary file, syncs it, renames it and syncs the directory.
//!
//! A location may be declared write-once with the option `immutable_for` (e.g. `"30d"`):
//! the bucket locks every object it stores for that long (S3 Object Lock with a default
//! retention, an Azure time-based immutability policy, a GCS retention policy; on a
//! local directory drmesh alone keeps the rule). drmesh then deletes an object only once
//! its lock has ended, judged from its last-modified time ([`Backend::delete_unless_locked`]),
//! and takes a refusal of the server for a lock, never for a deletion. On S3 every write
//! carries a SHA-256 checksum, which Object Lock buckets require.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
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

    /// How long the location keeps every object it stores write-once (the option
    /// [`IMMUTABLE_FOR`], a humantime duration such as `"30d"`), if it does.
    pub fn immutable_for(&self) -> Result<Option<std::time::Duration>, RepoError> {
        let Some(text) = self
            .options
            .iter()
            .find(|(k, _)| normalise("", k) == IMMUTABLE_FOR)
            .map(|(_, v)| v)
        else {
            return Ok(None);
        };
        let d = humantime::parse_duration(text.trim()).map_err(|e| {
            RepoError::Config(format!("{IMMUTABLE_FOR} {text:?}: {e} (e.g. \"30d\")"))
        })?;
        if d.is_zero() {
            return Err(RepoError::Config(format!(
                "{IMMUTABLE_FOR} must be longer than zero (leave it out for a location that is not write-once)"
            )));
        }
        Ok(Some(d))
    }
}

/// The location option declaring a write-once location: how long the store locks each
/// object it stores (the bucket's default retention).
pub const IMMUTABLE_FOR: &str = "immutable_for";

/// What [`Backend::delete_unless_locked`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The object is gone (or was not there).
    Deleted,
    /// The object stays: its write-once lock ends at `until`, or (`None`) the server
    /// refused the delete, which is taken for a lock whose end drmesh does not know.
    Locked { until: Option<DateTime<Utc>> },
}

/// An open object store with the repository's prefix.
#[derive(Clone)]
pub struct Backend {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// Set for local directories: the root the prefix is under, for durable writes.
    local_root: Option<PathBuf>,
    display: String,
    /// Set for a write-once location: how long each object stays locked once stored.
    immutable_for: Option<chrono::Duration>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backend({})", self.display)
    }
}

/// A store's refusal of a write or delete on a write-once location: S3 answers 403
/// AccessDenied for a locked version, Azure 409 for an immutable blob, GCS 403 for an
/// object its retention policy holds.
fn refused_by_lock(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::AlreadyExists { .. }
    )
}

fn backend_error(op: &str, key: &str, e: object_store::Error) -> RepoError {
    match e {
        object_store::Error::NotFound { .. } => RepoError::NotFound(key.to_string()),
        other => {
            let text = other.to_string();
            if text.contains("InvalidObjectState") {
                return RepoError::Backend(format!(
                    "{op} {key}: the object is in an S3 archival storage class (GLACIER or DEEP_ARCHIVE), which serves nothing until it is restored: run `aws s3api restore-object --bucket BUCKET --key PREFIX/{key} --restore-request Days=7`, wait for the restore (minutes to 48 hours, by tier) and run this again; storage class GLACIER_IR avoids the wait ({text})"
                ));
            }
            if text.contains("BlobArchived") {
                return RepoError::Backend(format!(
                    "{op} {key}: the blob is in the Azure Archive tier, which serves nothing until it is rehydrated: run `az storage blob set-tier --tier Cool --rehydrate-priority Standard` on it, wait for the rehydration (up to 15 hours) and run this again ({text})"
                ));
            }
            RepoError::Backend(format!("{op} {key}: {text}"))
        }
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
        ("gs", "base_url" | "gcs_base_url") => "endpoint".into(),
        ("gs", "service_account_key" | "google_service_account_key") => "credential".into(),
        (
            "gs",
            "service_account_path"
            | "google_service_account_path"
            | "google_service_account"
            | "application_credentials"
            | "google_application_credentials",
        ) => "credential_path".into(),
        ("gs", "storage_class") => "default_storage_class".into(),
        ("gs", "skip_signature") => "allow_anonymous".into(),
        _ => key,
    }
}

/// An S3 builder from the `AWS_*` environment variables (as `from_env`). For a
/// write-once bucket every write carries a SHA-256 checksum (`x-amz-checksum-sha256`),
/// which S3 requires of any write to an Object Lock bucket, and the
/// `x-amz-sdk-checksum-algorithm` header the AWS SDKs send with it, which some
/// S3-compatible servers (moto) look for instead.
fn s3_builder(immutable: bool) -> object_store::aws::AmazonS3Builder {
    let mut b = object_store::aws::AmazonS3Builder::new();
    if immutable {
        let mut headers = object_store::HeaderMap::new();
        headers.insert(
            "x-amz-sdk-checksum-algorithm",
            object_store::HeaderValue::from_static("SHA256"),
        );
        b = b
            .with_client_options(object_store::ClientOptions::new().with_default_headers(headers))
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256);
    }
    for (key, value) in std::env::vars() {
        if key.starts_with("AWS_") {
            if let Ok(k) = key.to_ascii_lowercase().parse() {
                b = b.with_config(k, value);
            }
        }
    }
    b
}

/// The GCS options a location takes (after [`normalise`]).
const GCS_OPTIONS: &[&str] = &[
    "endpoint",
    "credential",
    "credential_path",
    "service_account",
    "token",
    "scope",
    "predefined_acl",
    "default_storage_class",
    "allow_anonymous",
    "disable_vm_metadata",
    "disable_config_load",
];

/// A GCS bucket through OpenDAL's JSON-API client, behind the `object_store` interface.
/// Credentials not given as options come, as with `object_store`, from
/// `GOOGLE_SERVICE_ACCOUNT_KEY` (the service-account JSON), `GOOGLE_SERVICE_ACCOUNT` /
/// `GOOGLE_SERVICE_ACCOUNT_PATH` / `GOOGLE_APPLICATION_CREDENTIALS` (its path), then the
/// gcloud default credentials and the VM metadata server. A request that fails for a
/// transient reason is retried four times within about two seconds, as `object_store`'s
/// clients retry theirs (a longer outage is the replication rounds' to ride out), and
/// times out like theirs.
fn gcs_store(bucket: &str, options: &[(&String, &String)]) -> Result<Arc<dyn ObjectStore>, String> {
    let mut settings: BTreeMap<String, String> = BTreeMap::new();
    for (var, key) in [
        ("GOOGLE_APPLICATION_CREDENTIALS", "credential_path"),
        ("GOOGLE_SERVICE_ACCOUNT_PATH", "credential_path"),
        ("GOOGLE_SERVICE_ACCOUNT", "credential_path"),
        ("GOOGLE_SERVICE_ACCOUNT_KEY", "credential"),
    ] {
        if let Ok(value) = std::env::var(var) {
            settings.insert(key.to_string(), value);
        }
    }
    for (k, v) in options.iter().copied() {
        let key = normalise("gs", k);
        if !GCS_OPTIONS.contains(&key.as_str()) {
            return Err(format!(
                "unknown GCS option {k:?} (known: {})",
                GCS_OPTIONS.join(", ")
            ));
        }
        settings.insert(key, v.clone());
    }
    let flag = |key: &str| -> Result<bool, String> {
        match settings.get(key).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) if v == "true" || v == "1" || v == "yes" => Ok(true),
            Some(v) if v == "false" || v == "0" || v == "no" => Ok(false),
            Some(v) => Err(format!("{key} {v:?}: expected true or false")),
        }
    };
    let mut b = opendal::services::Gcs::default().bucket(bucket).root("/");
    for (key, value) in &settings {
        b = match key.as_str() {
            "endpoint" => b.endpoint(value.trim_end_matches('/')),
            // OpenDAL takes the service-account JSON base64-encoded; object_store and
            // gcloud take it as it is.
            "credential" if value.trim_start().starts_with('{') => {
                b.credential(&data_encoding::BASE64.encode(value.as_bytes()))
            }
            "credential" => b.credential(value),
            "credential_path" => b.credential_path(value),
            "service_account" => b.service_account(value),
            "token" => b.token(value.clone()),
            "scope" => b.scope(value),
            "predefined_acl" => b.predefined_acl(value),
            "default_storage_class" => b.default_storage_class(value),
            _ => b,
        };
    }
    // Anonymous requests (a public bucket, an emulator) look for no credentials at all:
    // the VM metadata server is not there off Google Cloud, and asking it takes a minute.
    let anonymous = flag("allow_anonymous")?;
    if anonymous {
        b = b.allow_anonymous();
    }
    if anonymous || flag("disable_vm_metadata")? {
        b = b.disable_vm_metadata();
    }
    if anonymous || flag("disable_config_load")? {
        b = b.disable_config_load();
    }
    let op = opendal::Operator::new(b)
        .map_err(|e| e.to_string())?
        .layer(opendal::layers::TimeoutLayer::new())
        .layer(
            opendal::layers::RetryLayer::new()
                .with_min_delay(std::time::Duration::from_millis(100))
                .with_max_delay(std::time::Duration::from_secs(2))
                .with_max_times(4)
                .with_jitter(),
        )
        .finish();
    Ok(Arc::new(object_store_opendal::OpendalStore::new(op)))
}

impl Backend {
    pub async fn open(location: &Location) -> Result<Self, RepoError> {
        let url = location.url.trim();
        if url.is_empty() {
            return Err(RepoError::Config("repository URL is empty".into()));
        }
        let immutable_for = location
            .immutable_for()?
            .map(chrono::Duration::from_std)
            .transpose()
            .map_err(|e| RepoError::Config(format!("{IMMUTABLE_FOR}: {e}")))?;
        // drmesh's own options; the rest go to the object-store builder.
        let store_options: Vec<(&String, &String)> = location
            .options
            .iter()
            .filter(|(k, _)| normalise("", k) != IMMUTABLE_FOR)
            .collect();
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
                immutable_for,
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
                let mut b = s3_builder(immutable_for.is_some()).with_bucket_name(&bucket);
                for (k, v) in store_options.iter().copied() {
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
                for (k, v) in store_options.iter().copied() {
                    let key = normalise("az", k);
                    let parsed_key = key.parse().map_err(|_| {
                        RepoError::Config(format!("unknown Azure option {k:?}"))
                    })?;
                    b = b.with_config(parsed_key, v);
                }
                Arc::new(b.build().map_err(|e| RepoError::Config(format!("Azure {url}: {e}")))?)
            }
            "gs" => gcs_store(&bucket, &store_options)
                .map_err(|e| RepoError::Config(format!("GCS {url}: {e}")))?,
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
            immutable_for,
        })
    }

    /// How long this location keeps each object write-once, if it does.
    pub fn immutable_for(&self) -> Option<chrono::Duration> {
        self.immutable_for
    }

    /// When the write-once lock of an object stored at `stored` ends, if it has not ended
    /// by `now` (always `None` on a location that is not write-once).
    pub fn locked_until(&self, stored: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let until = stored + self.immutable_for?;
        (until > now).then_some(until)
    }

    /// When an object was stored (its last-modified time), or `None` when it is absent.
    pub async fn stored_at(&self, key: &str) -> Result<Option<DateTime<Utc>>, RepoError> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.last_modified)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(backend_error("head", key, e)),
        }
    }

    /// Deletes `key` unless its write-once lock, judged as of `now` from `stored` (its
    /// last-modified time; looked up when not given), has not ended. A refusal of the
    /// server on a write-once location is a lock too, never a deletion.
    pub async fn delete_unless_locked(
        &self,
        key: &str,
        stored: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Removal, RepoError> {
        if self.immutable_for.is_some() {
            let stored = match stored {
                Some(t) => t,
                None => match self.stored_at(key).await? {
                    Some(t) => t,
                    None => return Ok(Removal::Deleted),
                },
            };
            if let Some(until) = self.locked_until(stored, now) {
                return Ok(Removal::Locked { until: Some(until) });
            }
        }
        match self.delete(key).await {
            Ok(()) => Ok(Removal::Deleted),
            Err(RepoError::Locked(why)) => {
                tracing::warn!(object = %key, reason = %why, "the write-once location refused a delete: the object stays");
                Ok(Removal::Locked { until: None })
            }
            Err(e) => Err(e),
        }
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

    /// Deletes an object; on a write-once location a refusal of the server is
    /// [`RepoError::Locked`]. Callers that may meet young objects there use
    /// [`delete_unless_locked`](Self::delete_unless_locked).
    pub async fn delete(&self, key: &str) -> Result<(), RepoError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) if self.immutable_for.is_some() && refused_by_lock(&e) => {
                Err(RepoError::Locked(format!(
                    "delete {key} refused by the write-once location: {e}"
                )))
            }
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
    /// access tier); a local directory has none and ignores it. GCS takes it per bucket
    /// handle instead (the location option `storage_class`, which the cold archive sets).
    /// On GCS an object that fits in one part is one JSON-API upload; a longer one is an
    /// XML-API multipart upload, which fake-gcs-server lacks, so the tests' GCS objects
    /// stay under one part.
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

/// Temp file written by `fill`, fsync, rename, fsync of the directory: after a crash the
/// object is either whole or absent; on any failure the temp file is removed.
fn write_via_temp<T>(
    file: &FsPath,
    fill: impl FnOnce(&FsPath) -> Result<(std::fs::File, T), RepoError>,
) -> Result<T, RepoError> {
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
        let (f, out) = fill(&tmp)?;
        f.sync_all().map_err(|e| err("sync", e))?;
        std::fs::rename(&tmp, file).map_err(|e| err("rename into", e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err("sync directory of", e))?;
        Ok(out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
    write_via_temp(file, |tmp| {
        let mut f = std::fs::File::create_new(tmp).map_err(|e| err("create", e))?;
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
        Ok((f, total))
    })
}

/// Temp file, fsync, rename, fsync of the directory: after a crash the object is either
/// whole or absent.
pub fn write_durably(file: &FsPath, data: &[u8]) -> Result<(), RepoError> {
    use std::io::Write;
    let err = |what: &str, e: std::io::Error| {
        RepoError::Backend(format!("{what} {}: {e}", file.display()))
    };
    write_via_temp(file, |tmp| {
        let mut f = create_direct(tmp, data).map_err(|e| err("create", e))?;
        let done = direct_prefix(&f, data).map_err(|e| err("write", e))?;
        f.write_all(&data[done..]).map_err(|e| err("write", e))?;
        Ok((f, ()))
    })
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
        let mut loc = Location::new("gs://drmesh-bucket/backups/db");
        for (k, v) in [
            ("gcs_base_url", "http://127.0.0.1:9"),
            ("skip_signature", "true"),
            ("disable_vm_metadata", "yes"),
        ] {
            loc.options.insert(k.into(), v.into());
        }
        let b = Backend::open(&loc).await.expect("gs:// opens");
        assert!(
            b.describe().contains("gs://drmesh-bucket/backups/db"),
            "{}",
            b.describe()
        );
        let mut bad_flag = loc.clone();
        bad_flag.options.remove("skip_signature");
        bad_flag
            .options
            .insert("allow_anonymous".into(), "maybe".into());
        let Err(err) = Backend::open(&bad_flag).await else {
            panic!("a flag that is neither true nor false must be refused");
        };
        assert!(err.to_string().contains("expected true or false"), "{err}");
        loc.options.insert("no_such_option".into(), "1".into());
        let Err(err) = Backend::open(&loc).await else {
            panic!("an unknown option must be refused");
        };
        assert!(err.to_string().contains("unknown GCS option"), "{err}");
    }

    #[tokio::test]
    async fn immutable_for_is_drmesh_s_own_option() {
        let mut loc = Location::new("s3://bucket/prefix");
        assert_eq!(loc.immutable_for().expect("none"), None);
        loc.options.insert("immutable-for".into(), "30d".into());
        assert_eq!(
            loc.immutable_for().expect("30d"),
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        // Not handed to the S3 builder (which would refuse an unknown option), and every
        // write then carries a checksum.
        loc.options.insert("region".into(), "us-east-1".into());
        let b = Backend::open(&loc).await.expect("opens");
        assert_eq!(b.immutable_for(), Some(chrono::Duration::days(30)));
        let stored = Utc::now() - chrono::Duration::days(29);
        assert!(b.locked_until(stored, Utc::now()).is_some());
        assert_eq!(
            b.locked_until(stored, Utc::now() + chrono::Duration::days(2)),
            None
        );
        loc.options.remove("immutable-for");
        for bad in ["0s", "soon", ""] {
            loc.options.insert("immutable_for".into(), bad.into());
            assert!(
                matches!(Backend::open(&loc).await, Err(RepoError::Config(_))),
                "{bad}"
            );
        }
    }

    /// A store that refuses every delete as a locked S3 bucket does (403).
    #[derive(Debug)]
    struct Refusing(object_store::memory::InMemory);

    impl std::fmt::Display for Refusing {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Refusing")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Refusing {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.0.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.0.get_opts(location, options).await
        }
        async fn delete(&self, location: &Path) -> object_store::Result<()> {
            Err(object_store::Error::PermissionDenied {
                path: location.to_string(),
                source: "AccessDenied: object is WORM protected".into(),
            })
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.0.copy(from, to).await
        }
        async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.0.copy_if_not_exists(from, to).await
        }
    }

    #[tokio::test]
    async fn a_refused_delete_is_a_lock_never_a_deletion() {
        let backend = |immutable_for| Backend {
            store: Arc::new(Refusing(object_store::memory::InMemory::new())),
            prefix: Path::default(),
            local_root: None,
            display: "refusing".into(),
            immutable_for,
        };
        // Write-once for a second: drmesh's own rule lets the delete go, the server not.
        let b = backend(Some(chrono::Duration::seconds(1)));
        b.put("wal/1", Bytes::from_static(b"x")).await.expect("put");
        let later = Utc::now() + chrono::Duration::minutes(1);
        assert_eq!(
            b.delete_unless_locked("wal/1", None, later)
                .await
                .expect("delete"),
            Removal::Locked { until: None }
        );
        assert!(matches!(b.delete("wal/1").await, Err(RepoError::Locked(_))));
        assert_eq!(b.size("wal/1").await.expect("head"), Some(1), "still there");
        // Within its lock drmesh does not even ask.
        assert!(matches!(
            b.delete_unless_locked("wal/1", None, Utc::now()).await,
            Ok(Removal::Locked { until: Some(_) })
        ));
        // A location not declared write-once: a refusal is an ordinary storage error.
        let plain = backend(None);
        plain.put("a", Bytes::from_static(b"x")).await.expect("put");
        assert!(matches!(
            plain.delete("a").await,
            Err(RepoError::Backend(_))
        ));
    }

    #[tokio::test]
    async fn bad_urls_are_refused() {
        for url in ["", "relative/path", "ftp://x/y", "s3:///nobucket"] {
            assert!(Backend::open(&Location::new(url)).await.is_err(), "{url}");
        }
    }
}
