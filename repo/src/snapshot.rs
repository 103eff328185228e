//! Snapshot manifests: what one backup contains. Written last, after every pack and index
//! it refers to, so a snapshot never points at missing data.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use drmesh_protocol::Lsn;

use super::pack::ChunkId;
use super::RepoError;

/// The snapshot kind of a PostgreSQL base backup (the agent's `basebackup` takes them).
pub const KIND_POSTGRES: &str = "postgres";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One path in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Relative to the snapshot's source, `/`-separated, never `..` or absolute.
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    /// Owner, restored when restoring as root.
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    pub mtime_ns: i64,
    pub size: u64,
    pub inode: u64,
    /// SHA-256 of the whole file (files only); see `hash` for what it is taken over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// What `sha256` is the hash of.
    #[serde(default, skip_serializing_if = "FileHash::is_content")]
    pub hash: FileHash,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkId>,
    /// When set, the file is these slices of `chunks`, in order, rather than the chunks
    /// whole: a page-level incremental copy of a database file, whose unchanged pages
    /// are slices of the chunks its parent stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extents: Vec<Extent>,
    /// Symlink target, stored as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The file's mtime was within the safety margin of the moment it was read: a write
    /// in the same timestamp tick could go unseen, so the next backup reads it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recheck: bool,
}

/// What a file's `sha256` is taken over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FileHash {
    /// The file's content, as `sha256sum` would hash it.
    #[default]
    Content,
    /// The ids of its chunks in order, each the SHA-256 of one fixed-size block: a
    /// database file read by several workers at once, a block range each, has no one
    /// reader to hash its content in order. The chunk ids pin the content just as firmly
    /// (a Merkle list), and each chunk is checked against its id when it is read back.
    ChunkIds,
}

impl FileHash {
    fn is_content(&self) -> bool {
        *self == FileHash::Content
    }

    /// `FileHash::ChunkIds` of `chunks`, as hex.
    pub fn of_chunk_ids(chunks: &[ChunkId]) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for c in chunks {
            h.update(c.0);
        }
        hex::encode(h.finalize())
    }
}

/// A chunk of a file's content, and the part of it that belongs (`None`: all).
pub type Piece = (ChunkId, Option<std::ops::Range<usize>>);

/// A slice of one of an entry's chunks: (index into `chunks`, offset, length).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent(pub u32, pub u32, pub u32);

impl Entry {
    /// The file is exactly one whole chunk, whose id is then the file's SHA-256.
    pub fn is_single_chunk(&self) -> bool {
        self.chunks.len() == 1 && self.extents.is_empty()
    }

    /// The file's content as (chunk, byte range of the decoded chunk; `None` for all of
    /// it), in order. An extent naming a chunk the entry does not list is an error.
    pub fn pieces(&self) -> Result<Vec<Piece>, RepoError> {
        if self.extents.is_empty() {
            return Ok(self.chunks.iter().map(|c| (*c, None)).collect());
        }
        self.extents
            .iter()
            .map(|&Extent(i, off, len)| {
                let id = self.chunks.get(i as usize).ok_or_else(|| {
                    RepoError::Corrupt(format!(
                        "{}: an extent names chunk {i} of {}",
                        self.path,
                        self.chunks.len()
                    ))
                })?;
                Ok((*id, Some(off as usize..off as usize + len as usize)))
            })
            .collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Files read this time (the rest were unchanged since the parent).
    pub files_read: u64,
    pub bytes_read: u64,
    pub chunks_new: u64,
    /// Plaintext bytes of the new chunks.
    pub bytes_new: u64,
    /// Bytes written to the store (packs, index, manifest).
    pub bytes_stored: u64,
    /// Special files (sockets, FIFOs, devices) left out, and files that vanished while
    /// the backup ran.
    #[serde(default)]
    pub skipped: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub id: String,
    /// What was backed up: `files`, `documents`, later `postgres`.
    pub kind: String,
    pub parent: Option<String>,
    pub source: PathBuf,
    pub hostname: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub stats: SnapshotStats,
    /// For a PostgreSQL base backup: where in the WAL it starts and stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PgBackupInfo>,
    pub entries: Vec<Entry>,
}

/// What a PostgreSQL base backup needs to be restored: the WAL from `start_lsn` to
/// `stop_lsn` on `timeline` (segments `start_wal` to `stop_wal`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PgBackupInfo {
    pub start_lsn: String,
    pub stop_lsn: String,
    pub timeline: u32,
    pub start_wal: String,
    pub stop_wal: String,
    pub wal_segment_size: u64,
    pub system_identifier: String,
    pub server_version: u32,
    /// When PostgreSQL confirmed the end of the backup: the earliest time it can be
    /// recovered to.
    pub stopped_at: DateTime<Utc>,
    /// `pg_backup_stop`'s `tablespace_map` (`<oid> <path>` per line): where the
    /// tablespaces were. Their contents are in the snapshot under `pg_tblspc/<oid>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_map: Option<String>,
    /// Every user table's row count just after the backup's stop point, for the
    /// restorability test (absent when `count_rows` is off, on a standby, or it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_counts: Option<RowCounts>,
}

impl PgBackupInfo {
    /// Every WAL segment the backup needs: from its start to its stop, and on to the end
    /// of its row counts' segment switch when it recorded counts.
    pub fn needed_wal(&self) -> Vec<String> {
        let start: Lsn = self.start_lsn.parse().unwrap_or(Lsn(0));
        let stop: Lsn = self.stop_lsn.parse().unwrap_or(start);
        let end = self
            .row_counts
            .as_ref()
            .and_then(|c| c.wal_end.parse::<Lsn>().ok())
            .filter(|e| e.0 > stop.0)
            .unwrap_or(stop);
        drmesh_pg::needed_segments(self.timeline, start, end, self.wal_segment_size)
    }
}

/// Row counts of one database's user tables as of `lsn`: the state a recovery that
/// replays everything before `lsn` (and nothing from it on) must show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RowCounts {
    /// The WAL insert position read as the counting snapshot was taken.
    pub lsn: String,
    /// The last WAL byte the recovery to `lsn` needs (the end of the segment switch
    /// made after counting), so that WAL is archived before the backup completes.
    pub wal_end: String,
    pub database: String,
    /// `schema.table` → rows.
    pub tables: BTreeMap<String, i64>,
    /// Tables not counted within `count_rows_timeout`, with why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped: BTreeMap<String, String>,
}

/// The list form (no entries), for `snapshots` listings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSummary {
    pub id: String,
    pub kind: String,
    pub parent: Option<String>,
    pub source: PathBuf,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub tags: BTreeMap<String, String>,
    pub stats: SnapshotStats,
    /// A PostgreSQL base backup's WAL range, so choosing a backup needs no second read of
    /// its manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PgBackupInfo>,
}

impl Snapshot {
    pub fn summary(&self) -> SnapshotSummary {
        SnapshotSummary {
            id: self.id.clone(),
            kind: self.kind.clone(),
            parent: self.parent.clone(),
            source: self.source.clone(),
            started_at: self.started_at,
            finished_at: self.finished_at,
            tags: self.tags.clone(),
            stats: self.stats.clone(),
            postgres: self.postgres.clone(),
        }
    }
}

/// Checks that a stored path stays inside whatever directory it is restored to, and turns
/// it into a relative `PathBuf`.
///
/// Architecture Invariant: restore writes only paths that passed this check.
pub fn safe_relative(path: &str) -> Result<PathBuf, RepoError> {
    let refuse = |why: &str| RepoError::UnsafePath {
        path: path.to_string(),
        why: why.to_string(),
    };
    if path.is_empty() {
        return Err(refuse("empty path"));
    }
    if path.contains('\0') {
        return Err(refuse("NUL byte"));
    }
    let p = Path::new(path);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("`..` component")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("absolute path")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(refuse("no name"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn accepted_paths_never_leave_their_directory(path in "[a-z./\\\\\\x00]{0,24}") {
            if let Ok(p) = safe_relative(&path) {
                proptest::prop_assert!(p.components().all(|c| matches!(c, Component::Normal(_))));
            }
        }
    }

    #[test]
    fn escaping_paths_are_refused() {
        assert_eq!(
            safe_relative("a/b/c.txt").expect("ok"),
            PathBuf::from("a/b/c.txt")
        );
        assert_eq!(safe_relative("./a").expect("ok"), PathBuf::from("a"));
        for bad in ["../etc/passwd", "a/../../b", "/etc/passwd", "", ".", "a\0b"] {
            assert!(
                matches!(safe_relative(bad), Err(RepoError::UnsafePath { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_wal_a_backup_needs_reaches_its_row_counts() {
        let mut pg = PgBackupInfo {
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/2000100".into(),
            timeline: 1,
            start_wal: String::new(),
            stop_wal: String::new(),
            wal_segment_size: 16 << 20,
            system_identifier: "1".into(),
            server_version: 150000,
            stopped_at: chrono::Utc::now(),
            tablespace_map: None,
            row_counts: None,
        };
        assert_eq!(pg.needed_wal(), vec!["000000010000000000000002"]);
        pg.row_counts = Some(RowCounts {
            lsn: "0/3000000".into(),
            wal_end: "0/3000090".into(),
            database: "postgres".into(),
            tables: BTreeMap::new(),
            skipped: BTreeMap::new(),
        });
        assert_eq!(
            pg.needed_wal(),
            vec!["000000010000000000000002", "000000010000000000000003"]
        );
    }
}
