//! The backup repository through the `drmesh repo` CLI, on a local directory, a real S3
//! server (moto), a real Azure Blob server (Azurite) and a real GCS server (fake-gcs-server);
//! a backup killed with `kill -9` leaves a consistent repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use drmesh_tests::objstore::{
    AzuriteServer, GcsServer, S3Server, AZURITE_ACCOUNT, AZURITE_KEY, S3_ACCESS_KEY, S3_REGION,
    S3_SECRET_KEY,
};
use drmesh_tests::{bin, noise, wait_for, walk_files, Proc};
use serde_json::Value;

fn make_docs(root: &Path) {
    std::fs::create_dir_all(root.join("documents/42")).unwrap();
    std::fs::create_dir_all(root.join("documents/43")).unwrap();
    std::fs::write(root.join("documents/42/lease.pdf"), noise(1, 700_000)).unwrap();
    std::fs::write(
        root.join("documents/42/notes.txt"),
        b"tenant notes\n".repeat(200),
    )
    .unwrap();
    std::fs::write(
        root.join("documents/43/deed.pdf"),
        noise(2, 6 * 1024 * 1024),
    )
    .unwrap();
    for i in 0..50 {
        std::fs::write(
            root.join(format!("documents/43/page-{i:03}.txt")),
            format!("page {i}\n"),
        )
        .unwrap();
    }
}

/// Runs `drmesh` with the repository settings as arguments; `env` adds variables.
struct RepoCli {
    repo: String,
    options: Vec<String>,
    key_file: Option<PathBuf>,
}

impl RepoCli {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("drmesh"));
        cmd.arg("repo").arg(args[0]).args(&args[1..]);
        cmd.arg("--repo").arg(&self.repo);
        for o in &self.options {
            cmd.arg("--repo-option").arg(o);
        }
        if let Some(k) = &self.key_file {
            cmd.arg("--key-file").arg(k);
        }
        cmd.env_remove("DRMESH_REPO_PASSPHRASE")
            .env_remove("DRMESH_REPO")
            .env_remove("DRMESH_REPO_KEY_FILE");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run drmesh")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "drmesh repo {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("json output")
    }
}

fn digest(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = walk_files(root)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            (rel, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// init (encrypted), backup, incremental backup, list, verify with read-data, restore,
/// and the key checks, against one repository.
fn exercise(cli: &RepoCli, work: &Path) {
    let src = work.join("uploads");
    make_docs(&src);
    let src_arg = src.to_str().unwrap();
    cli.ok(&["init"]);
    let again = cli.run(&["init"]);
    assert!(!again.status.success(), "a second init is refused");
    let first = cli.json(&[
        "backup",
        src_arg,
        "--kind",
        "documents",
        "--tag",
        "type=manual",
    ]);
    let first_id = first["id"].as_str().unwrap().to_string();
    assert!(first_id.starts_with("docs_"), "{first_id}");
    assert_eq!(first["stats"]["files"], 53);
    std::fs::write(src.join("documents/42/new.txt"), b"added later").unwrap();
    let second = cli.json(&["backup", src_arg, "--kind", "documents"]);
    assert_eq!(second["parent"], first_id.as_str());
    let list = cli.json(&["snapshots"]);
    assert_eq!(list.as_array().map(Vec::len), Some(2));

    let report = cli.json(&["verify", &first_id, "--read-data"]);
    assert_eq!(report["manifest"]["passed"], true, "{report}");
    assert_eq!(report["fileChecksums"]["passed"], true, "{report}");

    let out = work.join("restored");
    let second_id = second["id"].as_str().unwrap();
    cli.ok(&["restore", second_id, "--target", out.to_str().unwrap()]);
    assert_eq!(digest(&src), digest(&out));

    // `repo copy` creates the destination, copies both snapshots (with the same key),
    // and a second run has nothing left to copy; the copy restores the same files.
    let copy = work.join("copy-repo");
    let copy_url = copy.to_str().unwrap();
    let copied = cli.json(&["copy", "--to", copy_url]);
    assert_eq!(copied["snapshotsCopied"], 2, "{copied}");
    assert_eq!(copied["error"], Value::Null, "{copied}");
    let again = cli.json(&["copy", "--to", copy_url]);
    assert_eq!(again["snapshotsCopied"], 0, "{again}");
    let copy_cli = RepoCli {
        repo: copy_url.to_string(),
        options: vec![],
        key_file: cli.key_file.clone(),
    };
    let from_copy = work.join("restored-from-copy");
    copy_cli.ok(&[
        "restore",
        second_id,
        "--target",
        from_copy.to_str().unwrap(),
    ]);
    assert_eq!(digest(&src), digest(&from_copy));

    // The key is required and must be the right one.
    let without_key = RepoCli {
        repo: cli.repo.clone(),
        options: cli.options.clone(),
        key_file: None,
    };
    let refused = without_key.run(&["snapshots"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("encrypted"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let wrong = work.join("wrong.key");
    std::fs::write(&wrong, "not-the-right-key-at-all-0000000").unwrap();
    let wrong_key = RepoCli {
        repo: cli.repo.clone(),
        options: cli.options.clone(),
        key_file: Some(wrong),
    };
    let refused = wrong_key.run(&["snapshots"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("wrong key"));
}

fn key_file(dir: &Path) -> PathBuf {
    let k = dir.join("repo.key");
    std::fs::write(&k, hex_of(&noise(77, 32))).unwrap();
    k
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn repository_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cli = RepoCli {
        repo: dir.path().join("repo").to_string_lossy().into_owned(),
        options: vec![],
        key_file: Some(key_file(dir.path())),
    };
    exercise(&cli, dir.path());
}

#[test]
fn repository_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(dir.path());
    s3.create_bucket("propchain-backups");
    let cli = RepoCli {
        repo: "s3://propchain-backups/document-backups".into(),
        options: vec![
            format!("endpoint={}", s3.endpoint),
            "allow_http=true".into(),
            format!("region={S3_REGION}"),
            format!("access_key_id={S3_ACCESS_KEY}"),
            format!("secret_access_key={S3_SECRET_KEY}"),
        ],
        key_file: Some(key_file(dir.path())),
    };
    exercise(&cli, dir.path());
    // Few large objects: the packs, not one object per chunk or file.
    let listing = drmesh_tests::http(
        "GET",
        &format!(
            "{}/propchain-backups?list-type=2&prefix=document-backups/data/",
            s3.endpoint
        ),
        None,
        None,
    );
    let packs = listing.text.matches("<Key>").count();
    assert!(
        (1..=4).contains(&packs),
        "54 files should fit in a few packs, found {packs}"
    );
}

#[test]
fn repository_on_azure_blob() {
    let dir = tempfile::tempdir().unwrap();
    let azurite = AzuriteServer::start(dir.path());
    azurite.create_container("document-backups");
    let cli = RepoCli {
        repo: "az://document-backups/2024/01".into(),
        options: vec![
            format!("account_name={AZURITE_ACCOUNT}"),
            format!("access_key={AZURITE_KEY}"),
            format!("endpoint={}", azurite.account_url()),
            "allow_http=true".into(),
        ],
        key_file: Some(key_file(dir.path())),
    };
    exercise(&cli, dir.path());
}

#[test]
fn repository_on_gcs() {
    let dir = tempfile::tempdir().unwrap();
    let gcs = GcsServer::start(dir.path());
    gcs.create_bucket("propchain-backups");
    let cli = RepoCli {
        repo: "gs://propchain-backups/document-backups".into(),
        options: vec![
            format!("endpoint={}", gcs.endpoint),
            "allow_anonymous=true".into(),
        ],
        key_file: Some(key_file(dir.path())),
    };
    exercise(&cli, dir.path());
    let objects = gcs.objects("propchain-backups", "document-backups/");
    let packs = objects
        .iter()
        .filter(|(name, _, _)| name.starts_with("document-backups/data/"))
        .count();
    assert!(
        (1..=4).contains(&packs),
        "54 files should fit in a few packs, found {packs}: {objects:?}"
    );
}

#[test]
fn a_backup_killed_mid_way_leaves_a_consistent_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let cli = RepoCli {
        repo: repo.to_string_lossy().into_owned(),
        options: vec![],
        key_file: None,
    };
    let src = dir.path().join("src");
    make_docs(&src);
    cli.ok(&["init"]);
    let first = cli.json(&["backup", src.to_str().unwrap(), "--id", "snap_first"]);
    assert_eq!(first["id"], "snap_first");
    let packs_before = walk_files(&repo.join("data")).len();
    // A source big enough that the backup is still running when it is killed.
    for i in 0..12 {
        std::fs::write(
            src.join(format!("big-{i}.bin")),
            noise(100 + i, 16 * 1024 * 1024),
        )
        .unwrap();
    }
    let log = dir.path().join("killed-backup.log");
    let cmd_args = [
        "repo".to_string(),
        "backup".into(),
        src.to_string_lossy().into_owned(),
        "--id".into(),
        "snap_killed".into(),
        "--repo".into(),
        cli.repo.clone(),
    ];
    let args: Vec<&str> = cmd_args.iter().map(String::as_str).collect();
    let mut backup = Proc::spawn("drmesh backup", &bin("drmesh"), &args, &log);
    let grew = wait_for(Duration::from_secs(60), || {
        (walk_files(&repo.join("data")).len() > packs_before + 1).then_some(())
    });
    assert!(
        grew.is_some(),
        "the backup wrote no packs: {}",
        backup.log_text()
    );
    assert!(
        backup.is_running(),
        "the backup finished before it could be killed"
    );
    backup.kill9();

    // No snapshot points at missing data: the killed one does not exist at all.
    let list = cli.json(&["snapshots"]);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["snap_first"]);
    let report = cli.json(&["verify", "snap_first", "--read-data"]);
    assert_eq!(report["fileChecksums"]["passed"], true, "{report}");
    // No half-written object is left where a reader would take it for a pack.
    for f in walk_files(&repo) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains(".tmp-") {
            continue;
        }
        if f.starts_with(repo.join("data")) {
            assert_eq!(name.len(), 64, "pack name {name}");
        }
    }
    // The next backup runs and restores whole.
    cli.ok(&["backup", src.to_str().unwrap(), "--id", "snap_after"]);
    let out = dir.path().join("out");
    cli.ok(&["restore", "snap_after", "--target", out.to_str().unwrap()]);
    assert_eq!(digest(&src), digest(&out));
}

/// What restic users expect: `restore latest --target`, `verify` with no snapshot
/// checking every snapshot, and a damaged pack failing it with exit 1 naming the snapshot
/// it belongs to (and no other).
#[test]
fn latest_restores_the_newest_and_verify_checks_every_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let cli = RepoCli {
        repo: repo.to_string_lossy().into_owned(),
        options: vec![],
        key_file: Some(key_file(dir.path())),
    };
    let src = dir.path().join("uploads");
    make_docs(&src);
    let src_arg = src.to_str().unwrap();
    cli.ok(&["init"]);
    let nothing = cli.run(&["restore", "latest", "--target", "/nonexistent/none"]);
    assert!(!nothing.status.success());
    assert!(
        String::from_utf8_lossy(&nothing.stderr).contains("no snapshot yet"),
        "{}",
        String::from_utf8_lossy(&nothing.stderr)
    );

    let first = cli.json(&["backup", src_arg, "--kind", "documents"]);
    let first_id = first["id"].as_str().unwrap().to_string();
    let packs_before = walk_files(&repo.join("data"));
    std::fs::create_dir_all(src.join("documents/44")).unwrap();
    std::fs::write(src.join("documents/44/survey.pdf"), noise(3, 900_000)).unwrap();
    std::fs::write(src.join("documents/42/notes.txt"), b"rewritten\n").unwrap();
    let second = cli.json(&["backup", src_arg, "--kind", "documents"]);
    let second_id = second["id"].as_str().unwrap().to_string();
    assert_ne!(first_id, second_id);

    // `latest` is the second backup.
    let out = dir.path().join("restored");
    cli.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(digest(&src), digest(&out));
    assert_eq!(
        std::fs::read(out.join("documents/42/notes.txt")).unwrap(),
        b"rewritten\n"
    );
    let report = cli.json(&["verify", "latest"]);
    assert_eq!(report["snapshot"], second_id.as_str(), "{report}");

    // No snapshot: every snapshot, every chunk.
    let all = cli.ok(&["verify", "--read-data"]);
    assert!(all.contains(&format!("snapshot {first_id}")), "{all}");
    assert!(all.contains(&format!("snapshot {second_id}")), "{all}");
    assert!(all.contains("2 snapshots checked"), "{all}");

    // Bytes flipped in a pack only the second backup wrote: its data fails to read.
    let pack = walk_files(&repo.join("data"))
        .into_iter()
        .find(|p| !packs_before.contains(p))
        .expect("the second backup wrote a pack");
    let bytes = std::fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    // One byte a page: a small pack is mostly trailer, which a read of the blobs never
    // covers, so one byte in its middle could leave every blob readable.
    let mut flipped = bytes.clone();
    for i in (0..flipped.len()).step_by(4096) {
        flipped[i] ^= 0xff;
    }
    std::fs::write(&pack, &flipped).unwrap();
    let damaged = cli.run(&["verify", "--read-data"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&damaged.stdout),
        String::from_utf8_lossy(&damaged.stderr),
    );
    assert_eq!(damaged.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains(&second_id), "{stderr}");
    assert!(!stderr.contains(&first_id), "{stderr}");
    assert!(stdout.contains("DAMAGED documents/"), "{stdout}");

    // The pack cut short: the check without --read-data finds it too, even when the cut
    // leaves the snapshot's blobs whole (a small pack is mostly trailer).
    std::fs::write(&pack, &bytes[..middle]).unwrap();
    let damaged = cli.run(&["verify"]);
    let stderr = String::from_utf8_lossy(&damaged.stderr);
    assert_eq!(damaged.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&second_id), "{stderr}");
    assert!(!stderr.contains(&first_id), "{stderr}");
    std::fs::write(&pack, &bytes).unwrap();
    // The first snapshot, by id, still verifies.
    cli.ok(&["verify", &first_id, "--read-data"]);
}

/// SHA-256 of every file under `root`, by relative path (via `sha256sum`, independent of
/// drmesh's own hashing).
fn sha_tree(root: &Path) -> std::collections::BTreeMap<String, String> {
    let o = Command::new("find")
        .arg(".")
        .args(["-type", "f", "-exec", "sha256sum", "{}", "+"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(sum, path)| (path.to_string(), sum.to_string()))
        .collect()
}

#[test]
fn ten_thousand_files_incremental_uploads_only_the_changes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let cli = RepoCli {
        repo: repo.to_string_lossy().into_owned(),
        options: vec![],
        key_file: Some(key_file(dir.path())),
    };
    let src = dir.path().join("tree");
    for i in 0..10_000u64 {
        let sub = src.join(format!("d{:02}", i % 50));
        std::fs::create_dir_all(&sub).unwrap();
        let size = 512 + (i * 7919 % 7680) as usize;
        std::fs::write(sub.join(format!("f{i:05}.bin")), noise(i, size)).unwrap();
    }
    // Old mtimes, so no file is within the re-read safety margin of the backup.
    let touch = Command::new("find")
        .arg(&src)
        .args(["-exec", "touch", "-d", "2024-01-15 09:00:00", "{}", "+"])
        .status()
        .unwrap();
    assert!(touch.success());
    cli.ok(&["init"]);
    let first = cli.json(&["backup", src.to_str().unwrap(), "--id", "snap_a"]);
    assert_eq!(first["stats"]["files"], 10_000);
    let tree_bytes = first["stats"]["bytes"].as_u64().unwrap();
    let at_first = sha_tree(&src);

    // 1% modified in place, 0.5% deleted, 0.5% added.
    for i in (0..10_000u64).step_by(100) {
        let p = src.join(format!("d{:02}/f{i:05}.bin", i % 50));
        let size = std::fs::metadata(&p).unwrap().len() as usize;
        std::fs::write(&p, noise(1_000_000 + i, size)).unwrap();
    }
    for i in (50..10_000u64).step_by(200) {
        std::fs::remove_file(src.join(format!("d{:02}/f{i:05}.bin", i % 50))).unwrap();
    }
    for i in 0..50u64 {
        std::fs::write(
            src.join(format!("d{:02}/new{i:03}.bin", i)),
            noise(2_000_000 + i, 4096),
        )
        .unwrap();
    }
    let touch = Command::new("find")
        .arg(&src)
        .args([
            "-newer",
            repo.join("config").to_str().unwrap(),
            "-exec",
            "touch",
            "-d",
            "2024-01-16 09:00:00",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(touch.success());
    let second = cli.json(&["backup", src.to_str().unwrap(), "--id", "snap_b"]);
    assert_eq!(second["parent"], "snap_a");
    assert_eq!(second["stats"]["files"], 10_000);
    let new_bytes = second["stats"]["bytesNew"].as_u64().unwrap();
    assert!(
        new_bytes <= tree_bytes / 50,
        "incremental uploaded {new_bytes} new bytes of a {tree_bytes}-byte tree (limit 2%)"
    );
    assert!(
        second["stats"]["filesRead"].as_u64().unwrap() <= 150,
        "only changed and added files are read: {}",
        second["stats"]
    );
    let at_second = sha_tree(&src);

    for (snap, expected) in [("snap_a", &at_first), ("snap_b", &at_second)] {
        let out = dir.path().join(format!("restore-{snap}"));
        cli.ok(&["restore", snap, "--target", out.to_str().unwrap()]);
        assert!(
            sha_tree(&out) == *expected,
            "{snap} restores the tree as it was"
        );
    }
}

#[test]
fn retention_through_the_cli_keeps_what_the_policy_keeps_and_a_bad_policy_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cli = RepoCli {
        repo: dir.path().join("repo").to_string_lossy().into_owned(),
        options: vec![],
        key_file: Some(key_file(dir.path())),
    };
    let src = dir.path().join("uploads");
    make_docs(&src);
    let src_arg = src.to_str().unwrap();
    cli.ok(&["init"]);
    let mut ids = Vec::new();
    for i in 0..3 {
        std::fs::write(src.join(format!("documents/42/v{i}.txt")), format!("v{i}")).unwrap();
        let b = cli.json(&["backup", src_arg, "--kind", "documents"]);
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    // 400 days on: no daily, weekly or monthly tier reaches back; the yearly tier picks
    // the newest of the year, and as the newest of all it stays in the repository.
    let later = (chrono::Utc::now() + chrono::Duration::days(400)).to_rfc3339();
    let dry = cli.json(&["retention", "--dry-run", "--now", &later]);
    assert_eq!(dry["dryRun"], true);
    assert_eq!(dry["deleted"], serde_json::json!([ids[0], ids[1]]), "{dry}");
    assert_eq!(dry["kept"][0]["snapshotId"], ids[2].as_str(), "{dry}");
    assert_eq!(
        dry["kept"][0]["reasons"],
        serde_json::json!(["yearly", "latest"])
    );
    assert_eq!(cli.json(&["snapshots"]).as_array().map(Vec::len), Some(3));

    // A policy with a bad field is refused, naming it, and nothing changes.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[documents]\nfull = \"1d\"\nincremental = \"2d\"\n").unwrap();
    let refused = cli.run(&[
        "retention",
        "--policy",
        bad.to_str().unwrap(),
        "--now",
        &later,
    ]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("retention.incremental"), "{err}");
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[documents]\nfulll = \"1d\"\n").unwrap();
    let refused = cli.run(&[
        "retention",
        "--policy",
        typo.to_str().unwrap(),
        "--now",
        &later,
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("fulll"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(cli.json(&["snapshots"]).as_array().map(Vec::len), Some(3));

    let done = cli.json(&["retention", "--now", &later]);
    assert_eq!(done["deleted"], dry["deleted"]);
    let left = cli.json(&["snapshots"]);
    assert_eq!(left.as_array().map(Vec::len), Some(1), "{left}");
    assert_eq!(left[0]["id"], ids[2].as_str());
    let again = cli.json(&["retention", "--now", &later]);
    assert_eq!(
        again["deleted"],
        serde_json::json!([]),
        "idempotent: {again}"
    );
    // What is left restores whole.
    let out = dir.path().join("restored");
    cli.ok(&["restore", &ids[2], "--target", out.to_str().unwrap()]);
    assert_eq!(digest(&src), digest(&out));
}
