//! The commands PostgreSQL runs on the archive: `wal-push` as `archive_command` (after
//! the checks a segment must pass), `wal-fetch` as `restore_command`, and the archiving of
//! what a stopped server's archiver left `.ready`. The agent and the CLI both run them.

use std::path::Path;

use drmesh_pg::{check_segment, WalError, WalKind, WalName};

use super::Pushed;
use crate::{RepoError, Repository};

impl Repository {
    /// `wal-push`: archives the file at `path` (PostgreSQL's `%p`, relative to the data
    /// directory or absolute). Returns only once it is durably in the repository.
    pub async fn push_wal_file(&self, path: &Path) -> Result<Pushed, RepoError> {
        push(self, path).await
    }

    /// `wal-fetch`: writes the archived file `name` (PostgreSQL's `%f`) to `dest` (`%p`),
    /// durably and atomically (temporary file, fsync, rename), checked against its
    /// digest. `Ok(false)` when it is not archived, which PostgreSQL expects at the end of
    /// the archive.
    pub async fn fetch_wal_file(&self, name: &str, dest: &Path) -> Result<bool, RepoError> {
        fetch(self, name, dest).await
    }

    /// Archives what PostgreSQL's archiver left behind in a stopped data directory; see
    /// [`archive_ready`].
    pub async fn archive_ready(&self, data_dir: &Path) -> Result<Vec<String>, RepoError> {
        archive_ready(self, data_dir).await
    }
}

async fn push(repo: &Repository, path: &Path) -> Result<Pushed, RepoError> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| WalError::BadName(path.display().to_string()))?;
    let name = WalName::parse(file_name)?;
    let data = tokio::fs::read(path)
        .await
        .map_err(|e| RepoError::local(format!("read {}", path.display()), e))?;
    if matches!(name.kind, WalKind::Segment | WalKind::Partial) {
        let header = check_segment(&name, &data)?;
        check_system(repo, &name, header.system_identifier).await?;
    }
    repo.put_wal(name.timeline, &name.name, &data).await
}

/// Archives what PostgreSQL's archiver left behind in a stopped data directory: every
/// `pg_wal/archive_status/X.ready` whose `pg_wal/X` is pushed (as `wal-push` would), then
/// marked `X.done` — what the archiver itself does after a successful
/// `archive_command`. In WAL order (history files first), stopping at the first file
/// that cannot be archived, so nothing is marked done that is not in the repository.
/// Returns the names archived. Nothing is deleted.
async fn archive_ready(repo: &Repository, data_dir: &Path) -> Result<Vec<String>, RepoError> {
    let status_dir = data_dir.join("pg_wal/archive_status");
    let mut ready = match std::fs::read_dir(&status_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".ready")
                    .map(str::to_string)
            })
            .collect::<Vec<String>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(RepoError::local(
                format!("read {}", status_dir.display()),
                e,
            ))
        }
    };
    // History files name the timelines the segments after them belong to.
    ready.sort_by_key(|n| (!n.ends_with(".history"), n.clone()));
    let mut archived = Vec::with_capacity(ready.len());
    for name in ready {
        let file = data_dir.join("pg_wal").join(&name);
        push(repo, &file)
            .await
            .map_err(|e| RepoError::Invalid(format!("archive {name}: {e}")))?;
        let from = status_dir.join(format!("{name}.ready"));
        let to = status_dir.join(format!("{name}.done"));
        std::fs::rename(&from, &to)
            .map_err(|e| RepoError::local(format!("rename {}", from.display()), e))?;
        archived.push(name);
    }
    if !archived.is_empty() {
        if let Ok(d) = std::fs::File::open(&status_dir) {
            let _ = d.sync_all();
        }
    }
    Ok(archived)
}

/// One cluster per archive: the first segment pushed records its system identifier,
/// and a segment from another cluster is refused.
async fn check_system(repo: &Repository, name: &WalName, system: u64) -> Result<(), RepoError> {
    const KEY: &str = "wal/system-identifier";
    match repo.backend().get(KEY).await {
        Ok(raw) => {
            let archived = String::from_utf8_lossy(&raw).trim().to_string();
            if archived != system.to_string() {
                return Err(RepoError::OtherCluster {
                    name: name.name.clone(),
                    archived,
                    this: system,
                });
            }
            Ok(())
        }
        Err(RepoError::NotFound(_)) => {
            repo.backend()
                .put(KEY, bytes::Bytes::from(system.to_string()))
                .await
        }
        Err(e) => Err(e),
    }
}

async fn fetch(repo: &Repository, name: &str, dest: &Path) -> Result<bool, RepoError> {
    let parsed = WalName::parse(name)?;
    let data = match repo.get_wal(parsed.timeline, &parsed.name).await {
        Ok(d) => d,
        Err(RepoError::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || crate::write_durably(&dest, &data))
        .await
        .map_err(|e| RepoError::local("write task", e))??;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use drmesh_pg::wal::testing::segment;

    use super::*;

    #[tokio::test]
    async fn leftover_ready_segments_are_archived_then_marked_done() {
        use crate::{KeySource, Location, RepoOptions};
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let status = data.join("pg_wal/archive_status");
        std::fs::create_dir_all(&status).expect("mkdir");
        // Small segments keep the test light; the header says which size they are.
        let size = 1 << 20;
        let names = ["000000010000000000000003", "000000010000000000000004"];
        for n in names {
            std::fs::write(data.join("pg_wal").join(n), segment(n, size)).expect("segment");
            std::fs::write(status.join(format!("{n}.ready")), b"").expect("ready");
        }
        // Already archived: left alone.
        std::fs::write(status.join("000000010000000000000002.done"), b"").expect("done");
        let repo = Repository::init(&RepoOptions {
            location: Location::new(dir.path().join("repo").to_string_lossy()),
            key: KeySource::None,
        })
        .await
        .expect("init");

        let archived = archive_ready(&repo, &data).await.expect("archive");
        assert_eq!(archived, names);
        for n in names {
            assert!(status.join(format!("{n}.done")).exists(), "{n}.done");
            assert!(!status.join(format!("{n}.ready")).exists(), "{n}.ready");
            assert_eq!(
                repo.get_wal(1, n).await.expect("archived"),
                segment(n, size)
            );
        }
        assert!(
            data.join("pg_wal").join(names[0]).exists(),
            "nothing deleted"
        );
        // Nothing left: a second run archives nothing.
        assert!(archive_ready(&repo, &data).await.expect("again").is_empty());

        // A segment that cannot be archived stops it, and stays `.ready`.
        let bad = "000000010000000000000005";
        std::fs::write(data.join("pg_wal").join(bad), b"not a segment").expect("write");
        std::fs::write(status.join(format!("{bad}.ready")), b"").expect("ready");
        let err = archive_ready(&repo, &data).await.expect_err("bad segment");
        assert!(err.to_string().contains(bad), "{err}");
        assert!(status.join(format!("{bad}.ready")).exists());
    }
}
