//! The documents on disk against a document backup: which are as backed up, which changed
//! since (and wait for the next backup), which lost or damaged a file (and need a restore),
//! and which are new. A document is a directory `documents/<documentId>/` of the source,
//! as the runbook lays uploads out.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use chrono::Utc;
use drmesh_protocol::api::{
    valid_document_id, DocumentRestoreRequest, DocumentState, DocumentStatus, DocumentsReport,
};
use sha2::{Digest, Sha256};

use super::{Documents, DocumentsError};
use drmesh_repo::{EntryKind, FileHash, RepoError, Snapshot};

/// The directory of the source that holds one directory per document.
const ROOT: &str = "documents";

/// What is known of one file of a document in the backup.
struct Backed {
    size: u64,
    mtime_ns: i64,
    sha256: Option<String>,
}

impl Documents {
    /// Compares the documents on disk (every one, or `document`) with backup `backup_id`,
    /// by size and modification time, and with `checksums` by content too.
    pub async fn check(
        &self,
        backup_id: &str,
        document: Option<String>,
        checksums: bool,
    ) -> Result<DocumentsReport, DocumentsError> {
        if let Some(id) = &document {
            if !valid_document_id(id) {
                return Err(RepoError::Config(format!(
                    "document id {id:?}: one directory name (no '/', not '.' or '..')"
                ))
                .into());
            }
        }
        let (_, _, snap) = self.holder(backup_id, None).await?;
        let source = self.config.source.clone();
        tokio::task::spawn_blocking(move || compare(&snap, &source, document.as_deref(), checksums))
            .await
            .map_err(|e| RepoError::local("document check", e))?
    }
}

/// `documents/<id>/...` → `<id>`.
fn document_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(ROOT)?.strip_prefix('/')?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

fn compare(
    snap: &Snapshot,
    source: &Path,
    only: Option<&str>,
    checksums: bool,
) -> Result<DocumentsReport, DocumentsError> {
    let wanted = |id: &str| only.is_none_or(|o| o == id);
    // The backup's files, per document.
    let mut backed: BTreeMap<String, BTreeMap<String, Backed>> = BTreeMap::new();
    for e in &snap.entries {
        let Some(id) = document_of(&e.path) else {
            continue;
        };
        if !wanted(id) {
            continue;
        }
        let files = backed.entry(id.to_string()).or_default();
        if e.kind == EntryKind::File {
            files.insert(
                e.path.clone(),
                Backed {
                    size: e.size,
                    mtime_ns: e.mtime_ns,
                    sha256: (e.hash == FileHash::Content)
                        .then(|| e.sha256.clone())
                        .flatten(),
                },
            );
        }
    }
    // The files on disk, per document.
    let mut on_disk: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let root = source.join(ROOT);
    if root.is_dir() {
        for entry in walkdir::WalkDir::new(&root)
            .min_depth(1)
            .follow_links(false)
        {
            let entry = match entry {
                Ok(e) => e,
                // An unreadable directory: its files show as missing or unreadable below.
                Err(_) => continue,
            };
            if entry.file_type().is_dir() {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(source) else {
                continue;
            };
            let rel = rel.to_string_lossy().replace('\\', "/");
            if let Some(id) = document_of(&rel) {
                if wanted(id) {
                    on_disk
                        .entry(id.to_string())
                        .or_default()
                        .insert(rel.clone());
                }
            }
        }
    }
    let ids: BTreeSet<&String> = backed.keys().chain(on_disk.keys()).collect();
    let mut documents = Vec::new();
    let mut summary: BTreeMap<String, u64> = DocumentState::ALL
        .into_iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    let empty_files = BTreeMap::new();
    let empty_disk = BTreeSet::new();
    for id in ids {
        let files = backed.get(id).unwrap_or(&empty_files);
        let disk = on_disk.get(id).unwrap_or(&empty_disk);
        let mut status = DocumentStatus {
            document_id: id.clone(),
            status: DocumentState::Ok,
            files_in_backup: files.len() as u64,
            bytes_in_backup: files.values().map(|b| b.size).sum(),
            files_on_disk: disk.len() as u64,
            missing: vec![],
            unreadable: vec![],
            corrupted: vec![],
            modified: vec![],
            added: disk
                .iter()
                .filter(|p| !files.contains_key(*p))
                .cloned()
                .collect(),
            restore: None,
        };
        for (path, b) in files {
            check_file(&source.join(path), path, b, checksums, &mut status);
        }
        let lost = status.missing.len() + status.unreadable.len() + status.corrupted.len();
        status.status = if lost > 0 {
            DocumentState::Failed
        } else if !backed.contains_key(id) {
            DocumentState::New
        } else if !status.modified.is_empty() || !status.added.is_empty() {
            DocumentState::Modified
        } else {
            DocumentState::Ok
        };
        if status.status == DocumentState::Failed {
            status.restore = Some(DocumentRestoreRequest {
                paths: vec![format!("{ROOT}/{id}")],
                target_directory: Some(source.display().to_string()),
                location: None,
            });
        }
        *summary
            .entry(status.status.as_str().to_string())
            .or_default() += 1;
        documents.push(status);
    }
    Ok(DocumentsReport {
        backup_id: snap.id.clone(),
        backup_finished_at: snap.finished_at,
        checked_at: Utc::now(),
        checksums,
        summary,
        documents,
    })
}

/// Sorts one backed-up file into the status's missing, unreadable, corrupted or modified
/// lists (or none, when it is as backed up).
fn check_file(file: &Path, path: &str, b: &Backed, checksums: bool, status: &mut DocumentStatus) {
    let meta = match std::fs::symlink_metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            status.missing.push(path.to_string());
            return;
        }
        Err(e) => {
            status.unreadable.push(format!("{path}: {e}"));
            return;
        }
    };
    if !meta.is_file() {
        status.modified.push(path.to_string());
        return;
    }
    let mut f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) => {
            status.unreadable.push(format!("{path}: {e}"));
            return;
        }
    };
    let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    if meta.len() != b.size || mtime_ns != b.mtime_ns {
        status.modified.push(path.to_string());
        return;
    }
    let Some(want) = b.sha256.as_deref().filter(|_| checksums) else {
        return;
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) => {
                status.unreadable.push(format!("{path}: {e}"));
                return;
            }
        }
    }
    if hex::encode(h.finalize()) != want {
        status.corrupted.push(path.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_ids_are_the_directory_under_documents() {
        assert_eq!(document_of("documents/doc-1/original.pdf"), Some("doc-1"));
        assert_eq!(document_of("documents/doc-1"), Some("doc-1"));
        assert_eq!(document_of("documents"), None);
        assert_eq!(document_of("documentsx/a/b"), None);
        assert_eq!(document_of("other/doc-1/a"), None);
        assert!(valid_document_id("doc-1"));
        for bad in ["", ".", "..", "a/b"] {
            assert!(!valid_document_id(bad), "{bad:?}");
        }
        assert_eq!(DocumentState::parse("failed"), Some(DocumentState::Failed));
        assert_eq!(DocumentState::parse("broken"), None);
    }
}
