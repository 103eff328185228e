//! The WAL archive inside a repository: one object per file PostgreSQL archives
//! (segments, partial segments, timeline history files, backup history files), under
//! `wal/<timeline, 8 hex>/<file name>`.
//!
//! An object is `DRMWAL01 u32-le(plaintext length) blob`, where the blob (compressed, and
//! sealed when the repository is encrypted) holds the SHA-256 of the file followed by the
//! file. Reading checks that digest, so a damaged object is never handed to PostgreSQL.
//!
//! Pushing is idempotent, because PostgreSQL retries `archive_command` after any failure,
//! including after a push that landed: the same name with the same content succeeds; the
//! same name with other content is refused loudly and the archived copy is kept.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::pack::{self, ChunkId};
use super::{RepoError, Repository};

mod commands;

const MAGIC: &[u8; 8] = b"DRMWAL01";
const HEADER: usize = MAGIC.len() + 4;

/// Largest archived file accepted (PostgreSQL's largest segment size is 1 GiB).
const MAX_WAL_FILE: usize = 1 << 30;

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    Stored,
    /// The same content was already archived under that name (a retried push).
    AlreadyArchived,
}

/// The object key of an archived WAL file.
pub fn wal_key(timeline: u32, name: &str) -> String {
    format!("wal/{timeline:08X}/{name}")
}

fn hex_digest(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl Repository {
    /// Stores one archived WAL file durably; see the module notes for retries.
    pub async fn put_wal(
        &self,
        timeline: u32,
        name: &str,
        data: &[u8],
    ) -> Result<Pushed, RepoError> {
        let key = wal_key(timeline, name);
        match self.get_wal(timeline, name).await {
            Ok(archived) if archived == data => return Ok(Pushed::AlreadyArchived),
            Ok(archived) => {
                return Err(RepoError::AlreadyExists(format!(
                    "{name} is already archived with other content (archived SHA-256 {}, \
                     {} bytes; this one {}, {} bytes): refusing to overwrite it",
                    hex_digest(&archived),
                    archived.len(),
                    hex_digest(data),
                    data.len()
                )))
            }
            Err(RepoError::NotFound(_)) => {}
            // A damaged copy is useless to recovery; a good one replaces it.
            Err(RepoError::Damaged(why)) => {
                warn!(wal = name, reason = %why, "archived copy is damaged; replacing it")
            }
            Err(e) => return Err(e),
        }
        let object = encode(data, self)?;
        self.backend().put(&key, Bytes::from(object)).await?;
        Ok(Pushed::Stored)
    }

    /// One archived WAL file, checked against its digest.
    pub async fn get_wal(&self, timeline: u32, name: &str) -> Result<Vec<u8>, RepoError> {
        let key = wal_key(timeline, name);
        let object = self.backend().get(&key).await?;
        decode(&object, self).map_err(|why| RepoError::Damaged(format!("{key}: {why}")))
    }

    /// Every archived WAL file as (timeline, name), sorted.
    pub async fn wal_files(&self) -> Result<Vec<(u32, String)>, RepoError> {
        Ok(self
            .wal_files_archived()
            .await?
            .into_iter()
            .map(|(tli, name, _)| (tli, name))
            .collect())
    }

    /// Every archived WAL file as (timeline, name, when it was archived), sorted.
    pub async fn wal_files_archived(
        &self,
    ) -> Result<Vec<(u32, String, chrono::DateTime<chrono::Utc>)>, RepoError> {
        let mut out = Vec::new();
        for (key, _, at) in self.backend().list_with_times("wal").await? {
            let mut parts = key.rsplit('/');
            let (Some(name), Some(tli)) = (parts.next(), parts.next()) else {
                continue;
            };
            if let Ok(tli) = u32::from_str_radix(tli, 16) {
                out.push((tli, name.to_string(), at));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether a WAL file is archived (without reading it).
    pub async fn has_wal(&self, timeline: u32, name: &str) -> Result<bool, RepoError> {
        Ok(self
            .backend()
            .size(&wal_key(timeline, name))
            .await?
            .is_some())
    }
}

fn encode(data: &[u8], repo: &Repository) -> Result<Vec<u8>, RepoError> {
    let mut plain = Vec::with_capacity(32 + data.len());
    plain.extend_from_slice(&Sha256::digest(data));
    plain.extend_from_slice(data);
    let blob = pack::encode_blob(&plain, repo.key())?;
    let mut object = Vec::with_capacity(HEADER + blob.len());
    object.extend_from_slice(MAGIC);
    object.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    object.extend_from_slice(&blob);
    Ok(object)
}

fn decode(object: &[u8], repo: &Repository) -> Result<Vec<u8>, String> {
    if object.len() < HEADER || &object[..MAGIC.len()] != MAGIC {
        return Err("not a drmesh WAL object".into());
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&object[MAGIC.len()..HEADER]);
    let len = u32::from_le_bytes(len);
    if (len as usize) < 32 || len as usize > MAX_WAL_FILE + 32 {
        return Err(format!("bad length {len}"));
    }
    // The digest inside is what is checked; the blob's own id is not used.
    let plain =
        pack::decode_blob_checked(&object[HEADER..], &ChunkId([0; 32]), len, repo.key(), false)
            .map_err(|e| e.to_string())?;
    let (digest, data) = plain.split_at(32);
    if Sha256::digest(data).as_slice() != digest {
        return Err("content does not match its SHA-256".into());
    }
    Ok(data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeySource, Location, RepoOptions};

    async fn repo(dir: &std::path::Path, key: bool) -> Repository {
        let key = if key {
            let file = dir.join("key");
            std::fs::write(&file, "k".repeat(64)).expect("key");
            KeySource::KeyFile(file)
        } else {
            KeySource::None
        };
        let options = RepoOptions {
            location: Location::new(dir.join("repo").to_string_lossy()),
            key,
        };
        Repository::init(&options).await.expect("init");
        Repository::open(&options).await.expect("open")
    }

    #[tokio::test]
    async fn push_is_idempotent_and_never_overwrites() {
        for encrypted in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let repo = repo(dir.path(), encrypted).await;
            let seg = b"segment one ".repeat(1000);
            let name = "000000010000000000000001";
            assert_eq!(
                repo.put_wal(1, name, &seg).await.expect("push"),
                Pushed::Stored
            );
            assert_eq!(
                repo.put_wal(1, name, &seg).await.expect("retry"),
                Pushed::AlreadyArchived
            );
            let other = b"segment two ".repeat(1000);
            let err = repo
                .put_wal(1, name, &other)
                .await
                .expect_err("other content");
            assert!(err.to_string().contains("refusing to overwrite"), "{err}");
            assert_eq!(repo.get_wal(1, name).await.expect("get"), seg);
            assert_eq!(
                repo.wal_files().await.expect("list"),
                vec![(1, name.to_string())]
            );
            assert!(matches!(
                repo.get_wal(1, "000000010000000000000002").await,
                Err(RepoError::NotFound(_))
            ));
        }
    }

    #[tokio::test]
    async fn a_damaged_object_is_never_returned_and_a_good_push_replaces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = repo(dir.path(), false).await;
        let seg: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let name = "000000010000000000000003";
        repo.put_wal(1, name, &seg).await.expect("push");
        let file = dir.path().join("repo").join(wal_key(1, name));
        let mut raw = std::fs::read(&file).expect("read");
        let at = raw.len() / 2;
        raw[at] ^= 0x40;
        std::fs::write(&file, &raw).expect("write");
        let err = repo.get_wal(1, name).await.expect_err("damaged");
        assert!(matches!(err, RepoError::Damaged(_)), "{err}");
        assert_eq!(
            repo.put_wal(1, name, &seg).await.expect("push"),
            Pushed::Stored
        );
        assert_eq!(repo.get_wal(1, name).await.expect("get"), seg);
    }
}
