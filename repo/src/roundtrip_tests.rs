//! Backup, restore, verify and export against a real local repository.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use super::backup::BackupRequest;
use super::restore::RestoreRequest;
use super::snapshot::{Entry, EntryKind};
use super::*;

/// Deterministic pseudo-random bytes (xorshift), so chunk boundaries are content-defined.
pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn set_old_mtime(path: &Path) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(1_600_000_000, 123_456_789);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink).expect("set mtime");
}

/// A source tree with an empty file, small files, a large file, nested directories, a
/// symlink and unusual modes; every mtime set well in the past.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("docs/2024/01")).expect("mkdir");
    std::fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    std::fs::write(root.join("empty.txt"), b"").expect("write");
    std::fs::write(root.join("docs/readme.md"), b"# documents\n".repeat(50)).expect("write");
    std::fs::write(root.join("docs/2024/01/contract.pdf"), noise(1, 300_000)).expect("write");
    std::fs::write(
        root.join("docs/2024/01/scan.tiff"),
        noise(2, 9 * 1024 * 1024),
    )
    .expect("write");
    std::fs::set_permissions(
        root.join("docs/readme.md"),
        std::fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("docs/readme.md", root.join("link-to-readme")).expect("symlink");
    for e in walkdir::WalkDir::new(root).contents_first(true) {
        set_old_mtime(e.expect("walk").path());
    }
}

fn tree_digest(root: &Path) -> BTreeMap<String, (String, u32, i64, Option<String>)> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.expect("walk");
        let rel = e
            .path()
            .strip_prefix(root)
            .expect("prefix")
            .to_string_lossy()
            .into_owned();
        let meta = e.path().symlink_metadata().expect("stat");
        let content = if meta.is_file() {
            hex::encode(sha2::Sha256::digest(std::fs::read(e.path()).expect("read")))
        } else {
            String::new()
        };
        let target = meta.file_type().is_symlink().then(|| {
            std::fs::read_link(e.path())
                .expect("readlink")
                .to_string_lossy()
                .into_owned()
        });
        let mtime = if meta.file_type().is_symlink() {
            0
        } else {
            meta.mtime()
        };
        out.insert(rel, (content, meta.mode() & 0o7777, mtime, target));
    }
    out
}

use sha2::Digest;

/// Writes a manifest with no files (what summaries, `latest` and the choice of a base
/// backup read), ending at `end` and finished at `finished`; a base backup on
/// `timeline`, stopped at `end`, when one is given.
pub(crate) async fn empty_manifest(
    repo: &Repository,
    id: &str,
    kind: &str,
    end: chrono::DateTime<chrono::Utc>,
    finished: chrono::DateTime<chrono::Utc>,
    timeline: Option<u32>,
) {
    let snap = crate::Snapshot {
        id: id.into(),
        kind: kind.into(),
        parent: None,
        source: "/src".into(),
        hostname: "db-1".into(),
        started_at: end - chrono::Duration::minutes(5),
        finished_at: finished,
        tags: Default::default(),
        stats: crate::SnapshotStats::default(),
        postgres: timeline.map(|tl| crate::PgBackupInfo {
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/2000100".into(),
            timeline: tl,
            start_wal: format!("{tl:08X}0000000000000002"),
            stop_wal: format!("{tl:08X}0000000000000002"),
            wal_segment_size: 16 << 20,
            system_identifier: "7".into(),
            server_version: 150000,
            stopped_at: end,
            tablespace_map: None,
            row_counts: None,
        }),
        entries: Vec::new(),
    };
    repo.put_doc(&format!("snapshots/{id}"), &snap)
        .await
        .expect("manifest");
}

/// An unencrypted repository in a temporary directory (kept while the guard lives).
pub(crate) async fn temp_repo() -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Repository::init(&RepoOptions {
        location: Location::new(dir.path().join("repo").to_string_lossy()),
        key: KeySource::None,
    })
    .await
    .expect("init");
    (dir, repo)
}

struct Fixture {
    dir: tempfile::TempDir,
    repo: Repository,
}

impl Fixture {
    async fn new(key: KeySource) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RepoOptions {
            location: Location::new(dir.path().join("repo").to_string_lossy()),
            key,
        };
        let repo = Repository::init(&opts).await.expect("init");
        Self { dir, repo }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    async fn backup(&self, id: &str, parent: Option<Snapshot>) -> Snapshot {
        let mut req = BackupRequest::new(id, "files", self.path("src"));
        req.parent = parent;
        self.repo.backup(req).await.expect("backup")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_round_trip_keeps_content_modes_and_times() {
    let fx = Fixture::new(KeySource::None).await;
    make_tree(&fx.path("src"));
    let snap = fx.backup("snap_1", None).await;
    assert_eq!(snap.stats.files, 4);
    assert_eq!(snap.stats.dirs, 4);
    assert!(
        snap.stats.chunks_new >= 5,
        "the 9 MiB file is several chunks"
    );
    let report = fx
        .repo
        .restore(RestoreRequest::new("snap_1", fx.path("out")))
        .await
        .expect("restore");
    assert_eq!(report.files, 4);
    assert_eq!(tree_digest(&fx.path("src")), tree_digest(&fx.path("out")));

    // A second repository handle (as another process would) sees the same snapshot.
    let again = Repository::open(&RepoOptions {
        location: Location::new(fx.path("repo").to_string_lossy()),
        key: KeySource::None,
    })
    .await
    .expect("open");
    assert_eq!(again.snapshots().await.expect("list").len(), 1);
    assert!(again.verify("snap_1", true).await.expect("verify").passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_backup_reads_only_changed_files_and_stores_only_new_chunks() {
    let fx = Fixture::new(KeySource::None).await;
    make_tree(&fx.path("src"));
    let first = fx.backup("snap_1", None).await;
    // Append to the large file: only its last chunk(s) change.
    let big = fx.path("src/docs/2024/01/scan.tiff");
    let mut content = std::fs::read(&big).expect("read");
    content.extend_from_slice(&noise(3, 10_000));
    std::fs::write(&big, &content).expect("write");
    set_old_mtime(&big);
    // Touch nothing else but move one file's mtime.
    std::fs::write(fx.path("src/new.txt"), b"new file").expect("write");
    set_old_mtime(&fx.path("src/new.txt"));
    let second = fx.backup("snap_2", Some(first.clone())).await;
    assert_eq!(second.parent.as_deref(), Some("snap_1"));
    assert_eq!(
        second.stats.files_read, 2,
        "only the changed and the new file are read"
    );
    assert!(
        second.stats.bytes_new < 5 * 1024 * 1024,
        "an append uploads only the changed chunks, not the 9 MiB file ({} new bytes)",
        second.stats.bytes_new
    );
    let r = fx
        .repo
        .restore(RestoreRequest::new("snap_2", fx.path("out2")))
        .await
        .expect("restore");
    assert_eq!(r.files, 5);
    assert_eq!(tree_digest(&fx.path("src")), tree_digest(&fx.path("out2")));
    // The first snapshot is still whole.
    assert!(fx
        .repo
        .verify("snap_1", true)
        .await
        .expect("verify")
        .passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recently_modified_files_are_read_again() {
    let fx = Fixture::new(KeySource::None).await;
    std::fs::create_dir_all(fx.path("src")).expect("mkdir");
    std::fs::write(fx.path("src/hot.txt"), b"v1").expect("write");
    let first = fx.backup("snap_1", None).await;
    let hot = first
        .entries
        .iter()
        .find(|e| e.path == "hot.txt")
        .expect("entry");
    assert!(hot.recheck, "written just now: within the safety margin");
    let second = fx.backup("snap_2", Some(first)).await;
    assert_eq!(second.stats.files_read, 1, "a recheck file is read again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_chosen_paths_only() {
    let fx = Fixture::new(KeySource::None).await;
    make_tree(&fx.path("src"));
    fx.backup("snap_1", None).await;
    let mut req = RestoreRequest::new("snap_1", fx.path("out"));
    req.paths = vec!["docs/2024".into()];
    let r = fx.repo.restore(req).await.expect("restore");
    assert_eq!(r.files, 2);
    assert!(fx.path("out/docs/2024/01/contract.pdf").exists());
    assert!(!fx.path("out/empty.txt").exists());
    let mut req = RestoreRequest::new("snap_1", fx.path("out3"));
    req.paths = vec!["no/such/path".into()];
    assert!(matches!(
        fx.repo.restore(req).await,
        Err(RepoError::NotFound(_))
    ));
}

fn file_entry(path: &str, data: &[u8]) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        size: data.len() as u64,
        inode: 1,
        sha256: Some(hex::encode(sha2::Sha256::digest(data))),
        hash: super::snapshot::FileHash::Content,
        chunks: vec![pack::ChunkId::of(data)],
        extents: Vec::new(),
        target: None,
        recheck: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_with_escaping_paths_are_refused_and_nothing_is_written() {
    let fx = Fixture::new(KeySource::None).await;
    std::fs::create_dir_all(fx.path("src")).expect("mkdir");
    std::fs::write(fx.path("src/a.txt"), b"payload").expect("write");
    let good = fx.backup("snap_1", None).await;
    for (n, bad_path) in ["../escaped.txt", "/tmp/absolute.txt", "a/../../escaped.txt"]
        .into_iter()
        .enumerate()
    {
        let mut snap = good.clone();
        snap.id = format!("evil_{n}");
        snap.entries.push(file_entry(bad_path, b"payload"));
        fx.repo
            .put_doc(&format!("snapshots/{}", snap.id), &snap)
            .await
            .expect("plant");
        let target = fx.path(&format!("out{n}"));
        let err = fx
            .repo
            .restore(RestoreRequest::new(&snap.id, &target))
            .await
            .expect_err("refused");
        assert!(matches!(err, RepoError::UnsafePath { .. }), "{err}");
        assert!(
            !target.exists(),
            "nothing is written when the manifest is unsafe"
        );
        let report = fx.repo.verify(&snap.id, false).await.expect("verify");
        assert!(!report.manifest.passed, "verify flags {bad_path}");
    }
    assert!(!fx.dir.path().join("escaped.txt").exists());

    // A symlink already in the target does not redirect a restored file.
    let outside = fx.path("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let target = fx.path("linked");
    std::fs::create_dir_all(&target).expect("mkdir");
    let mut snap = good.clone();
    snap.id = "evil_link".into();
    snap.entries = vec![file_entry("sub/a.txt", b"payload")];
    fx.repo
        .put_doc("snapshots/evil_link", &snap)
        .await
        .expect("plant");
    std::os::unix::fs::symlink(&outside, target.join("sub")).expect("symlink");
    let err = fx
        .repo
        .restore(RestoreRequest::new("evil_link", &target))
        .await
        .expect_err("refused");
    assert!(matches!(err, RepoError::UnsafePath { .. }), "{err}");
    assert!(!outside.join("a.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_damaged_and_missing_files() {
    let fx = Fixture::new(KeySource::None).await;
    make_tree(&fx.path("src"));
    let snap = fx.backup("snap_1", None).await;
    let report = fx.repo.verify("snap_1", true).await.expect("verify");
    assert!(report.passed(), "{report:?}");
    assert!(report.bytes_checked > 9 * 1024 * 1024);

    // Flip one byte inside the chunk of contract.pdf.
    let entry = snap
        .entries
        .iter()
        .find(|e| e.path.ends_with("contract.pdf"))
        .expect("entry");
    let loc = fx.repo.lookup(&entry.chunks[0]).expect("indexed");
    let pack_file = fx.path("repo").join(pack_key(&loc.pack));
    let mut bytes = std::fs::read(&pack_file).expect("read pack");
    bytes[loc.offset as usize + 10] ^= 0xff;
    std::fs::write(&pack_file, &bytes).expect("write pack");
    let report = fx.repo.verify("snap_1", true).await.expect("verify");
    assert!(!report.passed());
    assert!(
        report.objects.passed,
        "the objects exist; their content is wrong"
    );
    assert_eq!(report.data.as_ref().map(|c| c.passed), Some(false));
    assert!(
        report
            .damaged
            .iter()
            .any(|d| d.path == "docs/2024/01/contract.pdf"),
        "{:?}",
        report.damaged
    );
    // Restoring that file fails loudly rather than writing wrong bytes.
    assert!(matches!(
        fx.repo
            .restore(RestoreRequest::new("snap_1", fx.path("out")))
            .await,
        Err(RepoError::Damaged(_))
    ));

    // Remove the pack: the metadata check alone finds it.
    std::fs::remove_file(&pack_file).expect("rm pack");
    let report = fx.repo.verify("snap_1", false).await.expect("verify");
    assert!(!report.objects.passed);
    assert!(report
        .damaged
        .iter()
        .any(|d| d.path.ends_with("contract.pdf")));
    assert_eq!(report.missing_objects, vec![pack_key(&loc.pack)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_all_checks_every_snapshot_and_names_only_the_damaged_ones() {
    let fx = Fixture::new(KeySource::None).await;
    make_tree(&fx.path("src"));
    let first = fx.backup("snap_1", None).await;
    std::fs::write(fx.path("src/added.bin"), noise(9, 400_000)).expect("write");
    let second = fx.backup("snap_2", Some(first)).await;
    let all = fx.repo.verify_all(true).await.expect("verify all");
    assert!(all.passed(), "{all:?}");
    assert_eq!(all.snapshots.len(), 2);

    // Damage the one chunk only the second snapshot holds, and garble a third manifest.
    let added = second
        .entries
        .iter()
        .find(|e| e.path == "added.bin")
        .expect("entry");
    let loc = fx.repo.lookup(&added.chunks[0]).expect("indexed");
    let pack_file = fx.path("repo").join(pack_key(&loc.pack));
    let mut bytes = std::fs::read(&pack_file).expect("read pack");
    bytes[loc.offset as usize + 10] ^= 0xff;
    std::fs::write(&pack_file, &bytes).expect("write pack");
    std::fs::write(fx.path("repo/snapshots/snap_3"), b"not a manifest").expect("write");

    let all = fx.repo.verify_all(true).await.expect("verify all");
    assert_eq!(all.damaged, ["snap_2", "snap_3"], "{all:?}");
    let second = &all.snapshots[1];
    assert_eq!(second.damaged.len(), 1, "{second:?}");
    assert_eq!(second.damaged[0].path, "added.bin");
    // Without reading data, only the unreadable manifest shows.
    let all = fx.repo.verify_all(false).await.expect("verify all");
    assert_eq!(all.damaged, ["snap_3"], "{all:?}");
}

/// Where the last blob the in-memory index places in `pack` ends: every blob of the
/// pack, whichever snapshot references it.
fn indexed_end(repo: &Repository, pack: &str) -> u64 {
    repo.inner
        .index
        .read()
        .values()
        .filter(|l| l.pack == pack)
        .map(|l| l.offset + u64::from(l.length))
        .max()
        .expect("the pack holds an indexed blob")
}

/// Cuts `pack`, which only `snapshot` references, to several lengths in turn and checks
/// that `snapshot` then fails the check without read-data (and with it), naming a file
/// and the pack; the whole pack is put back after each cut and passes again.
async fn assert_every_cut_is_found(repo: &Repository, root: &Path, snapshot: &str, pack: &str) {
    let file = root.join(pack_key(pack));
    let whole = std::fs::read(&file).expect("read pack");
    let written = whole.len() as u64;
    let end = indexed_end(repo, pack);
    assert!(end < written, "a trailer follows the blobs");
    // Half (as the end-to-end test cut it), one byte short, just past the last blob
    // (only the trailer and footer lost), at its very end, inside it, and nothing left.
    let cuts: std::collections::BTreeSet<u64> =
        [written / 2, written - 1, end + 1, end, end - 1, 0]
            .into_iter()
            .filter(|&n| n < written)
            .collect();
    for cut in cuts {
        std::fs::write(&file, &whole[..cut as usize]).expect("cut pack");
        let report = repo.verify(snapshot, false).await.expect("verify");
        assert!(
            !report.objects.passed && !report.passed(),
            "{pack} cut to {cut} of {written} bytes (blobs end at {end}) passed: {report:?}"
        );
        assert_eq!(report.missing_objects, vec![pack_key(pack)], "cut {cut}");
        assert!(!report.damaged.is_empty(), "cut {cut}: {report:?}");
        let all = repo.verify_all(false).await.expect("verify all");
        assert_eq!(all.damaged, [snapshot], "cut {cut}: {all:?}");
        let read = repo.verify(snapshot, true).await.expect("verify");
        assert!(!read.passed(), "cut {cut} passed with read-data: {read:?}");
        std::fs::write(&file, &whole).expect("restore pack");
        let report = repo.verify(snapshot, false).await.expect("verify");
        assert!(report.passed(), "the whole pack again: {report:?}");
    }
}

/// A pack is written once and its length never changes, so a pack shorter than it was
/// written is damaged wherever it was cut: also when only its trailer is lost and every
/// blob survives (a pack holding one small file is mostly trailer, so the end-to-end
/// test's cut in half left its blob whole and the check passed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_without_read_data_finds_a_pack_cut_to_any_length() {
    for key in [
        KeySource::None,
        KeySource::Passphrase("correct horse battery".into()),
    ] {
        let fx = Fixture::new(key).await;
        // Each backup alone, so each writes one pack of its own: one small file (the
        // second backup of the end-to-end test wrote such a pack), and one large file
        // of several chunks.
        let small = fx.path("small");
        std::fs::create_dir_all(&small).expect("mkdir");
        std::fs::write(small.join("notes.txt"), b"rewritten\n").expect("write");
        let large = fx.path("large");
        std::fs::create_dir_all(&large).expect("mkdir");
        std::fs::write(large.join("scan.bin"), noise(3, 3 * 1024 * 1024)).expect("write");
        for (id, source) in [("snap_small", small), ("snap_large", large)] {
            let snap = fx
                .repo
                .backup(BackupRequest::new(id, "files", source))
                .await
                .expect("backup");
            let packs: std::collections::BTreeSet<String> = snap
                .entries
                .iter()
                .flat_map(|e| &e.chunks)
                .map(|c| fx.repo.lookup(c).expect("indexed").pack)
                .collect();
            assert_eq!(packs.len(), 1, "{id}: {packs:?}");
            for pack in &packs {
                assert_every_cut_is_found(&fx.repo, &fx.path("repo"), id, pack).await;
            }
        }
    }
}

/// The length a pack must have comes from all of its blobs, not only from those the
/// snapshot being verified references: a snapshot that deduplicated one early chunk of
/// another backup's pack still depends on that pack being whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_is_judged_by_every_blob_in_it_not_only_the_snapshots() {
    let fx = Fixture::new(KeySource::None).await;
    std::fs::create_dir_all(fx.path("src")).expect("mkdir");
    let data = noise(4, 3 * 1024 * 1024);
    std::fs::write(fx.path("src/scan.bin"), &data).expect("write");
    let first = fx.backup("snap_1", None).await;
    let chunks = &first.entries[0].chunks;
    assert!(chunks.len() > 2, "several chunks: {chunks:?}");
    let head = fx.repo.lookup(&chunks[0]).expect("indexed");

    // A second source holding only the first chunk's bytes: the same chunk, deduplicated.
    std::fs::create_dir_all(fx.path("src2")).expect("mkdir");
    std::fs::write(fx.path("src2/head.bin"), &data[..head.raw_length as usize]).expect("write");
    let second = fx
        .repo
        .backup(BackupRequest::new("snap_2", "files", fx.path("src2")))
        .await
        .expect("backup");
    assert_eq!(second.entries[0].chunks, [chunks[0]]);

    // Cut inside a later blob: every blob snap_2 references survives, yet the pack is
    // no longer the pack that was written.
    let file = fx.path("repo").join(pack_key(&head.pack));
    let whole = std::fs::read(&file).expect("read pack");
    let cut = head.offset + u64::from(head.length) + 1;
    assert!(cut < indexed_end(&fx.repo, &head.pack));
    std::fs::write(&file, &whole[..cut as usize]).expect("cut pack");
    let report = fx.repo.verify("snap_2", false).await.expect("verify");
    assert!(!report.objects.passed, "{report:?}");
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    assert_eq!(report.damaged[0].path, "head.bin");
    assert_eq!(report.missing_objects, vec![pack_key(&head.pack)]);
    let all = fx.repo.verify_all(false).await.expect("verify all");
    assert_eq!(all.damaged, ["snap_1", "snap_2"], "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_repository_holds_no_plaintext_and_needs_its_key() {
    let fx = Fixture::new(KeySource::Passphrase("correct horse battery".into())).await;
    std::fs::create_dir_all(fx.path("src")).expect("mkdir");
    let marker = b"TOP-SECRET-MARKER-".repeat(1000);
    std::fs::write(fx.path("src/secret.txt"), &marker).expect("write");
    std::fs::write(fx.path("src/name-MARKERFILE.txt"), b"x").expect("write");
    fx.backup("snap_1", None).await;
    for e in walkdir::WalkDir::new(fx.path("repo")) {
        let e = e.expect("walk");
        if e.file_type().is_file() {
            let bytes = std::fs::read(e.path()).expect("read");
            assert!(
                !bytes.windows(18).any(|w| w == b"TOP-SECRET-MARKER-"),
                "{}",
                e.path().display()
            );
            assert!(
                !bytes.windows(10).any(|w| w == b"MARKERFILE"),
                "{}",
                e.path().display()
            );
        }
    }
    let location = Location::new(fx.path("repo").to_string_lossy());
    for key in [
        KeySource::None,
        KeySource::Passphrase("wrong passphrase".into()),
    ] {
        let err = Repository::open(&RepoOptions {
            location: location.clone(),
            key,
        })
        .await
        .expect_err("refused");
        assert!(matches!(err, RepoError::Key(_)), "{err}");
    }
    let r = fx
        .repo
        .restore(RestoreRequest::new("snap_1", fx.path("out")))
        .await
        .expect("restore");
    assert_eq!(r.files, 2);
    assert_eq!(
        std::fs::read(fx.path("out/secret.txt")).expect("read"),
        marker
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_backup_leaves_no_snapshot_and_the_others_intact() {
    let fx = Fixture::new(KeySource::None).await;
    make_tree(&fx.path("src"));
    fx.backup("snap_1", None).await;
    std::fs::write(fx.path("src/more.bin"), noise(9, 3 * 1024 * 1024)).expect("write");
    let req = BackupRequest::new("snap_2", "files", fx.path("src"));
    req.cancel.store(true, Relaxed);
    assert!(matches!(
        fx.repo.backup(req).await,
        Err(RepoError::Cancelled)
    ));
    let ids: Vec<String> = fx
        .repo
        .snapshots()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec!["snap_1".to_string()]);
    assert!(fx
        .repo
        .verify("snap_1", true)
        .await
        .expect("verify")
        .passed());
    assert!(fx
        .path("repo/locks")
        .read_dir()
        .map(|mut d| d.next().is_none())
        .unwrap_or(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_makes_a_plain_tar_gz_with_a_manifest() {
    let fx = Fixture::new(KeySource::None).await;
    make_tree(&fx.path("src"));
    fx.backup("docs_1", None).await;
    let archive = fx.path("exports/docs_1.tar.gz");
    let manifest = fx
        .repo
        .export_archive("docs_1", &archive, "docs_backup")
        .await
        .expect("export");
    assert_eq!(manifest.file_count, 4);
    let out = fx.path("untar");
    std::fs::create_dir_all(&out).expect("mkdir");
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&out)
        .status()
        .expect("run tar");
    assert!(status.success());
    assert_eq!(
        tree_digest(&fx.path("src")),
        tree_digest(&out.join("docs_backup"))
    );
    let parsed: export::ArchiveManifest =
        serde_json::from_slice(&std::fs::read(out.join("MANIFEST.json")).expect("read"))
            .expect("json");
    assert_eq!(parsed, manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_a_repository_with_another_key_moves_only_missing_chunks() {
    let fx = Fixture::new(KeySource::None).await;
    make_tree(&fx.path("src"));
    fx.backup("snap_1", None).await;
    let dest = Repository::init(&RepoOptions {
        location: Location::new(fx.path("mirror").to_string_lossy()),
        key: KeySource::Passphrase("mirror passphrase".into()),
    })
    .await
    .expect("init mirror");
    let first = fx.repo.copy_snapshot("snap_1", &dest).await.expect("copy");
    assert!(first.chunks_copied >= 5);
    assert!(dest.verify("snap_1", true).await.expect("verify").passed());
    let again = fx
        .repo
        .copy_snapshot("snap_1", &dest)
        .await
        .expect("copy again");
    assert!(again.already_present);

    std::fs::write(fx.path("src/added.txt"), b"one more document").expect("write");
    let parent = fx.repo.snapshot("snap_1").await.expect("snap");
    fx.backup("snap_2", Some(parent)).await;
    let second = fx.repo.copy_snapshot("snap_2", &dest).await.expect("copy");
    assert_eq!(second.chunks_copied, 1, "only the new file's chunk moves");
    dest.restore(RestoreRequest::new("snap_2", fx.path("from-mirror")))
        .await
        .expect("restore from mirror");
    assert_eq!(
        tree_digest(&fx.path("src")),
        tree_digest(&fx.path("from-mirror"))
    );
}

/// A fake relation file: `pages` pages of 8 KiB, page `i` with LSN `lsns[i]` and content
/// from `seed`.
fn relation_page(lsn: u64, seed: u64) -> Vec<u8> {
    let mut page = noise(seed, 8192);
    page[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
    page[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
    page
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_level_incrementals_store_only_changed_pages_and_restore_exactly() {
    use crate::PageDelta;
    use std::io::{Seek, SeekFrom, Write};
    let fx = Fixture::new(KeySource::None).await;
    let rel = fx.path("src/base/1/100");
    std::fs::create_dir_all(rel.parent().expect("parent")).expect("dirs");
    // 640 pages (5 MiB), all written before the parent started (LSN 0x1000 + i).
    let mut data = Vec::new();
    for i in 0..640u64 {
        data.extend(relation_page(0x1000 + i, i));
    }
    std::fs::write(&rel, &data).expect("write");
    std::fs::write(fx.path("src/base/1/100_fsm"), noise(7, 24576)).expect("fsm");
    let parent = fx.backup("full_1", None).await;
    let delta = |floor: u64| PageDelta {
        eligible: drmesh_pg::relation_main_fork,
        page_size: 8192,
        lsn_floor: Some(floor),
    };

    // Every 16th page changes (LSN above the floor); the file grows by 8 pages. In place,
    // so it stays the parent's file.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&rel)
        .expect("open");
    for i in (0..640u64).step_by(16) {
        let page = relation_page(0x9000 + i, 10_000 + i);
        f.seek(SeekFrom::Start(i * 8192)).expect("seek");
        f.write_all(&page).expect("write");
        data[(i * 8192) as usize..((i + 1) * 8192) as usize].copy_from_slice(&page);
    }
    f.seek(SeekFrom::End(0)).expect("seek");
    for i in 640..648u64 {
        let page = relation_page(0x9000 + i, 20_000 + i);
        f.write_all(&page).expect("write");
        data.extend(page);
    }
    drop(f);
    let mut req = BackupRequest::new("incr_2", "files", fx.path("src"));
    req.parent = Some(parent.clone());
    req.pages = Some(delta(0x8000));
    let incr = fx.repo.backup(req).await.expect("incremental");
    let changed = (40 + 8) * 8192;
    assert!(
        incr.stats.bytes_new <= changed as u64 + 8192,
        "stored {} new bytes for {changed} bytes of changed pages",
        incr.stats.bytes_new
    );
    let e = incr
        .entries
        .iter()
        .find(|e| e.path == "base/1/100")
        .expect("entry");
    assert!(!e.extents.is_empty(), "the relation is stored as extents");

    // A second incremental on top: its unchanged pages are slices of slices.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&rel)
        .expect("open");
    let page = relation_page(0xA000, 30_000);
    f.seek(SeekFrom::Start(3 * 8192)).expect("seek");
    f.write_all(&page).expect("write");
    data[3 * 8192..4 * 8192].copy_from_slice(&page);
    drop(f);
    let mut req = BackupRequest::new("incr_3", "files", fx.path("src"));
    req.parent = Some(incr.clone());
    req.pages = Some(delta(0x9800));
    let incr3 = fx.repo.backup(req).await.expect("second incremental");
    assert!(incr3.stats.bytes_new <= 2 * 8192, "{:?}", incr3.stats);

    for (id, want) in [("incr_3", &data)] {
        let out = fx.path(&format!("out-{id}"));
        fx.repo
            .restore(RestoreRequest::new(id, &out))
            .await
            .expect("restore");
        assert!(
            std::fs::read(out.join("base/1/100")).expect("read") == *want,
            "{id} restores the relation byte for byte"
        );
    }
    let report = fx.repo.verify("incr_3", true).await.expect("verify");
    assert!(report.passed(), "{report:?}");
    // The parent still restores as it was.
    let out = fx.path("out-full");
    fx.repo
        .restore(RestoreRequest::new("full_1", &out))
        .await
        .expect("restore");
    assert_eq!(tree_digest(&fx.path("src")).len(), tree_digest(&out).len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_database_files_are_read_and_restored_in_parts_byte_for_byte() {
    use crate::snapshot::FileHash;
    use crate::PageDelta;
    use std::io::{Seek, SeekFrom, Write};
    let fx = Fixture::new(KeySource::None).await;
    let rel = fx.path("src/base/1/200");
    std::fs::create_dir_all(rel.parent().expect("parent")).expect("dirs");
    // 70 MiB and a page: three parts of 32 blocks when backed up, three when restored.
    let pages = 70 * 128 + 1;
    let mut data = Vec::with_capacity(pages as usize * 8192);
    for i in 0..pages {
        data.extend(relation_page(0x1000 + i, i));
    }
    std::fs::write(&rel, &data).expect("write");
    set_old_mtime(&rel);
    let delta = |floor: Option<u64>| PageDelta {
        eligible: drmesh_pg::relation_main_fork,
        page_size: 8192,
        lsn_floor: floor,
    };
    let mut req = BackupRequest::new("full_1", "files", fx.path("src"));
    req.pages = Some(delta(None));
    let full = fx.repo.backup(req).await.expect("full backup");
    let e = full
        .entries
        .iter()
        .find(|e| e.path == "base/1/200")
        .expect("entry");
    assert_eq!(e.size, data.len() as u64);
    assert_eq!(e.chunks.len(), 71, "fixed 1 MiB blocks");
    assert_eq!(e.hash, FileHash::ChunkIds);
    assert_eq!(e.sha256, Some(FileHash::of_chunk_ids(&e.chunks)));
    let ids: Vec<_> = data.chunks(1 << 20).map(pack::ChunkId::of).collect();
    assert_eq!(
        e.chunks, ids,
        "blocks in file order whichever worker read them"
    );
    assert!(!e.recheck);

    let out = fx.path("out-full");
    fx.repo
        .restore(RestoreRequest::new("full_1", &out))
        .await
        .expect("restore");
    let restored = out.join("base/1/200");
    assert!(std::fs::read(&restored).expect("read") == data);
    let meta = std::fs::metadata(&restored).expect("stat");
    assert_eq!(meta.mtime(), 1_600_000_000, "times set after the last part");
    assert_eq!(meta.mode() & 0o7777, e.mode);
    let report = fx.repo.verify("full_1", true).await.expect("verify");
    assert!(report.passed(), "{report:?}");

    // The export's manifest still gives sha256sum's answer.
    let manifest = fx
        .repo
        .export_archive("full_1", &fx.path("full_1.tar.gz"), "db")
        .await
        .expect("export");
    let listed = manifest
        .files
        .iter()
        .find(|f| f.path == "base/1/200")
        .expect("listed");
    assert_eq!(listed.sha256, hex::encode(sha2::Sha256::digest(&data)));

    // A page-level incremental on top: extents, restored in parts too.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&rel)
        .expect("open");
    for i in (0..pages).step_by(97) {
        let page = relation_page(0x9000 + i, 50_000 + i);
        f.seek(SeekFrom::Start(i * 8192)).expect("seek");
        f.write_all(&page).expect("write");
        data[(i * 8192) as usize..((i + 1) * 8192) as usize].copy_from_slice(&page);
    }
    drop(f);
    let mut req = BackupRequest::new("incr_2", "files", fx.path("src"));
    req.parent = Some(full);
    req.pages = Some(delta(Some(0x8000)));
    let incr = fx.repo.backup(req).await.expect("incremental");
    let e = incr
        .entries
        .iter()
        .find(|e| e.path == "base/1/200")
        .expect("entry");
    assert!(!e.extents.is_empty());
    let out = fx.path("out-incr");
    fx.repo
        .restore(RestoreRequest::new("incr_2", &out))
        .await
        .expect("restore");
    assert!(std::fs::read(out.join("base/1/200")).expect("read") == data);
    let report = fx.repo.verify("incr_2", true).await.expect("verify");
    assert!(report.passed(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_block_of_a_file_restored_in_parts_fails_that_file_only() {
    use crate::PageDelta;
    let fx = Fixture::new(KeySource::None).await;
    let rel = fx.path("src/base/1/300");
    std::fs::create_dir_all(rel.parent().expect("parent")).expect("dirs");
    let data: Vec<u8> = (0..40 * 128)
        .flat_map(|i| relation_page(0x1000 + i, i))
        .collect();
    std::fs::write(&rel, &data).expect("write");
    std::fs::write(fx.path("src/other"), b"fine").expect("write");
    let mut req = BackupRequest::new("full_1", "files", fx.path("src"));
    req.pages = Some(PageDelta {
        eligible: drmesh_pg::relation_main_fork,
        page_size: 8192,
        lsn_floor: None,
    });
    let snap = fx.repo.backup(req).await.expect("backup");
    let e = snap
        .entries
        .iter()
        .find(|e| e.path == "base/1/300")
        .expect("entry");
    // Flip a byte inside the stored 35th block.
    let loc = fx.repo.lookup(&e.chunks[35]).expect("indexed");
    let pack_path = fx.path("repo").join(super::pack_key(&loc.pack));
    let mut bytes = std::fs::read(&pack_path).expect("read pack");
    bytes[loc.offset as usize + loc.length as usize / 2] ^= 0x40;
    std::fs::write(&pack_path, bytes).expect("write pack");

    let out = fx.path("out");
    let err = fx
        .repo
        .restore(RestoreRequest::new("full_1", &out))
        .await
        .expect_err("a damaged block");
    assert!(err.to_string().contains("base/1/300"), "{err}");
    assert!(
        !out.join("base/1/300").exists(),
        "the spoiled file is removed"
    );
    assert_eq!(std::fs::read(out.join("other")).expect("read"), b"fine");
}

/// Replication moves only what the destination lacks: a second round copies nothing, and
/// after an incremental backup only the new snapshot and its new pack move; every snapshot
/// then verifies at the destination, reading every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_copies_only_what_the_destination_lacks() {
    let fx = Fixture::new(KeySource::None).await;
    make_tree(&fx.path("src"));
    let first = fx.backup("snap_1", None).await;
    let dest = Repository::init(&RepoOptions {
        location: Location::new(fx.path("copy").to_string_lossy()),
        key: KeySource::None,
    })
    .await
    .expect("init the copy");

    let whole = fx.repo.sync_to(&dest, false).await.expect("first round");
    assert_eq!(whole.snapshots_copied, 1, "{whole:?}");
    assert!(whole.bytes_copied > 9 << 20, "{whole:?}");
    assert!(
        whole.missing.is_empty() && whole.error.is_none(),
        "{whole:?}"
    );

    let idle = fx.repo.sync_to(&dest, false).await.expect("second round");
    assert_eq!(
        (idle.snapshots_copied, idle.bytes_copied),
        (0, 0),
        "{idle:?}"
    );

    std::fs::write(fx.path("src/docs/new.txt"), b"a document added later").expect("write");
    fx.backup("snap_2", Some(first)).await;
    let delta = fx.repo.sync_to(&dest, false).await.expect("third round");
    assert_eq!(delta.snapshots_copied, 1, "{delta:?}");
    assert!(
        delta.bytes_copied < whole.bytes_copied / 20,
        "only the new file's pack and the manifest move: {delta:?} after {whole:?}"
    );
    for id in ["snap_1", "snap_2"] {
        assert!(
            dest.verify(id, true).await.expect("verify").passed(),
            "{id} at the destination"
        );
    }
}
