//! The cold archive through the real binaries: snapshots made by `drmesh repo backup`
//! and by the agent's PostgreSQL base backup, the older one's times moved back (the
//! manifest rewritten in place: the only way to have a backup finish months ago), the
//! retention policies enforced with `--archive` / `[archive]`, then each archived
//! snapshot restored from its cold object alone — by `drmesh archive restore`, by
//! `tar --zstd -xf` when unencrypted, and for the base backup by starting PostgreSQL on
//! the extracted directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drmesh_pg::local::{free_port, prepare_parent_dir, LocalCluster, PgBin};
use drmesh_repo::testing::{decode_doc, encode_doc};
use drmesh_repo::Snapshot;
use drmesh_repo::{KeySource, RepoConfig};
use drmesh_tests::{bin, noise};
use serde_json::Value;

/// Fails (never skips) when a tool the test needs is missing.
fn need(tool: &str, hint: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "{tool} is needed by this test: {hint}");
}

fn drmesh(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("drmesh"))
        .args(args)
        .env_remove("DRMESH_ARCHIVE")
        .env_remove("DRMESH_ARCHIVE_KEY_FILE")
        .env_remove("DRMESH_REPO_PASSPHRASE")
        .output()
        .expect("run drmesh");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn drmesh_ok(args: &[&str]) -> String {
    let (ok, text) = drmesh(args);
    assert!(ok, "drmesh {args:?} failed: {text}");
    text
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|k| {
            k["snapshotId"]
                .as_str()
                .or(k.as_str())
                .expect("id")
                .to_string()
        })
        .collect()
}

/// Every path under `root` with its content's SHA-256 (a symlink: its target), mode,
/// owner and mtime; `MANIFEST.json` at the top and the names in `skip` left out.
fn tree(root: &Path, skip: &[&str]) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == "MANIFEST.json" || skip.contains(&rel.as_str()) {
                continue;
            }
            let meta = path.symlink_metadata().unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                use sha2_free::digest;
                digest(&std::fs::read(&path).unwrap())
            };
            let mtime = if meta.file_type().is_symlink() || meta.is_dir() {
                0
            } else {
                meta.mtime()
            };
            out.insert(
                rel,
                format!(
                    "{what} mode {:o} owner {}:{} mtime {mtime}",
                    meta.mode() & 0o7777,
                    meta.uid(),
                    meta.gid()
                ),
            );
        }
    }
    out
}

/// A content fingerprint without a hashing crate in this package: `sha256sum`.
mod sha2_free {
    pub fn digest(data: &[u8]) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sha256sum (coreutils)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(data)
            .expect("write");
        let out = child.wait_with_output().expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// Moves snapshot `id`'s start, end (and PostgreSQL stop) times `days` back, rewriting its
/// manifest in place (owner kept), sealed with the repository's key when it has one.
fn move_back(repo: &Path, id: &str, days: i64, key_file: Option<&Path>) {
    let config: RepoConfig =
        serde_json::from_slice(&std::fs::read(repo.join("config")).unwrap()).unwrap();
    let key = config.encryption.as_ref().map(|enc| {
        let source = KeySource::KeyFile(key_file.expect("the key file").to_path_buf());
        drmesh_repo::testing::unlock(&source, enc).expect("unlock")
    });
    let path = repo.join("snapshots").join(id);
    let raw = std::fs::read(&path).unwrap();
    let mut snap: Snapshot = decode_doc(&raw, key.as_ref(), id).expect("manifest");
    let back = chrono::Duration::days(days);
    snap.started_at -= back;
    snap.finished_at -= back;
    if let Some(pg) = &mut snap.postgres {
        pg.stopped_at -= back;
    }
    std::fs::write(&path, encode_doc(&snap, key.as_ref()).unwrap()).unwrap();
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[test]
fn archived_document_snapshots_restore_from_the_cold_object_alone_with_and_without_a_key() {
    need("tar", "apt-get install -y tar");
    need("zstd", "apt-get install -y zstd");
    for encrypted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        let src = work.join("uploads");
        std::fs::create_dir_all(src.join("documents/1/scans")).unwrap();
        std::fs::write(src.join("documents/1/deed.pdf"), noise(1, 300_000)).unwrap();
        std::fs::write(src.join("documents/1/scans/big.tiff"), noise(2, 9 << 20)).unwrap();
        std::fs::write(src.join("documents/empty.txt"), b"").unwrap();
        std::os::unix::fs::symlink("1/deed.pdf", src.join("documents/latest.pdf")).unwrap();
        let repo = work.join("repo");
        let cold = work.join("cold");
        let key = work.join("repo.key");
        std::fs::write(&key, "00112233445566778899aabbccddeeff").unwrap();
        let repo_s = repo.to_str().unwrap().to_string();
        let cold_s = cold.to_str().unwrap().to_string();
        let key_s = key.to_str().unwrap().to_string();
        let mut with_repo: Vec<&str> = vec!["--repo", &repo_s];
        if encrypted {
            with_repo.extend(["--key-file", &key_s]);
        }
        let cmd = |head: &[&str], tail: &[&str]| -> Vec<String> {
            head.iter()
                .chain(with_repo.iter())
                .chain(tail.iter())
                .map(|s| s.to_string())
                .collect()
        };
        let run = |args: Vec<String>| -> String {
            drmesh_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
        };
        run(cmd(&["repo", "init"], &[]));
        let backup = || -> String {
            let out = run(cmd(
                &["repo", "backup"],
                &["--kind", "documents", "-o", "json", src.to_str().unwrap()],
            ));
            json(&out)["id"].as_str().unwrap().to_string()
        };
        let first = backup();
        let original = tree(&src, &[]);
        std::fs::remove_file(src.join("documents/1/scans/big.tiff")).unwrap();
        std::fs::write(src.join("documents/1/deed.pdf"), b"amended").unwrap();
        let second = backup();
        move_back(&repo, &first, 100, encrypted.then_some(key.as_path()));

        // A dry run says it would archive the older (the newest of its month); nothing moves.
        let now = rfc3339(Utc::now());
        let retention = |now: &str, dry: bool| -> Value {
            let mut tail = vec!["--archive", &cold_s, "--now", now, "-o", "json"];
            if dry {
                tail.push("--dry-run");
            }
            json(&run(cmd(&["repo", "retention"], &tail)))
        };
        let dry = retention(&now, true);
        assert_eq!(ids(&dry["archived"]), vec![first.clone()], "{dry}");
        assert!(!cold.join("documents").exists(), "dry run wrote nothing");

        // The real run: archived, read back, then gone from the repository.
        let done = retention(&now, false);
        assert_eq!(ids(&done["archived"]), vec![first.clone()], "{done}");
        assert_eq!(
            ids(&done["awaitingArchive"]),
            Vec::<String>::new(),
            "{done}"
        );
        assert!(!repo.join("snapshots").join(&first).exists());
        assert!(repo.join("snapshots").join(&second).exists());
        let listed = json(&drmesh_ok(&[
            "archive",
            "list",
            "--archive",
            &cold_s,
            "-o",
            "json",
        ]));
        assert_eq!(ids(&listed), vec![first.clone()], "{listed}");
        assert_eq!(listed[0]["encrypted"], encrypted, "{listed}");
        let object = cold.join(listed[0]["object"].as_str().unwrap());

        // (a) drmesh archive restore gives the original files back.
        let restored = work.join("restored");
        let mut args = vec![
            "archive",
            "restore",
            "--archive",
            &cold_s,
            &first,
            restored.to_str().unwrap(),
        ];
        if encrypted {
            args.extend(["--archive-key-file", &key_s]);
        }
        let out = drmesh_ok(&args);
        assert!(out.contains("every SHA-256 checked"), "{out}");
        assert_eq!(tree(&restored, &[]), original);
        let verified = drmesh_ok(&[
            "archive",
            "verify",
            "--archive",
            &cold_s,
            &first,
            "--archive-key-file",
            &key_s,
        ]);
        assert!(verified.contains("PASSED"), "{verified}");

        if encrypted {
            // (b) Sealed: no tar or zstd inside to read, and nothing without the key.
            let bytes = std::fs::read(&object).unwrap();
            assert!(object.to_string_lossy().ends_with(".tar.zst.enc"));
            assert_eq!(&bytes[..8], b"DRMCOLD1");
            let (ok, text) = drmesh(&[
                "archive",
                "restore",
                "--archive",
                &cold_s,
                &first,
                work.join("nokey").to_str().unwrap(),
            ]);
            assert!(!ok && text.contains("key"), "{text}");
        } else {
            // (b) tar and zstd alone.
            let by_tar = work.join("by-tar");
            std::fs::create_dir(&by_tar).unwrap();
            let out = Command::new("tar")
                .arg("--zstd")
                .arg("-xf")
                .arg(&object)
                .arg("-C")
                .arg(&by_tar)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(tree(&by_tar, &[]), original);
            let manifest = json(&std::fs::read_to_string(by_tar.join("MANIFEST.json")).unwrap());
            assert_eq!(manifest["snapshotId"], first.as_str());
            assert_eq!(manifest["kind"], "documents");
            let listing = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "zstd -dc '{}' | tar -t | head -1",
                    object.display()
                ))
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&listing.stdout).trim(),
                "MANIFEST.json"
            );
        }

        // (c) Idempotent: nothing more to archive or delete.
        let again = retention(&now, false);
        assert_eq!(ids(&again["archived"]), Vec::<String>::new(), "{again}");
        assert_eq!(
            ids(&again["archiveDeleted"]),
            Vec::<String>::new(),
            "{again}"
        );
        assert_eq!(ids(&again["deleted"]), Vec::<String>::new(), "{again}");

        // Thirteen years on, no tier keeps it: a dry run says so, the run deletes it.
        let later = rfc3339(Utc::now() + chrono::Duration::days(13 * 366));
        let dry = retention(&later, true);
        assert_eq!(ids(&dry["archiveDeleted"]), vec![first.clone()], "{dry}");
        assert!(object.exists());
        let done = retention(&later, false);
        assert_eq!(ids(&done["archiveDeleted"]), vec![first.clone()], "{done}");
        assert!(!object.exists());
        let listed = json(&drmesh_ok(&[
            "archive",
            "list",
            "--archive",
            &cold_s,
            "-o",
            "json",
        ]));
        assert_eq!(listed, serde_json::json!([]));
    }
}

/// A repository with two document snapshots, the older moved 100 days back (so the
/// monthly tier archives it): the repository path, that snapshot's id and its files.
fn repository_with_an_old_snapshot(work: &Path) -> (String, String, BTreeMap<String, String>) {
    let src = work.join("uploads");
    std::fs::create_dir_all(src.join("documents/7")).unwrap();
    std::fs::write(src.join("documents/7/deed.pdf"), noise(7, 700_000)).unwrap();
    std::fs::write(
        src.join("documents/7/notes.txt"),
        "title report ".repeat(4000),
    )
    .unwrap();
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    drmesh_ok(&["repo", "init", "--repo", &repo_s]);
    let backup = || -> String {
        let out = drmesh_ok(&[
            "repo",
            "backup",
            "--repo",
            &repo_s,
            "--kind",
            "documents",
            "-o",
            "json",
            src.to_str().unwrap(),
        ]);
        json(&out)["id"].as_str().unwrap().to_string()
    };
    let first = backup();
    let original = tree(&src, &[]);
    std::fs::write(src.join("documents/7/notes.txt"), b"amended").unwrap();
    backup();
    move_back(&repo, &first, 100, None);
    (repo_s, first, original)
}

/// `drmesh repo retention` archiving into `cold` (`--archive URL --archive-option …`) with
/// storage class `class`; returns its report.
fn archive_with_class(repo: &str, cold: &[&str], class: &str) -> Value {
    let now = rfc3339(Utc::now());
    let mut args = vec!["repo", "retention", "--repo", repo];
    args.extend(cold);
    args.extend([
        "--archive-storage-class",
        class,
        "--now",
        &now,
        "-o",
        "json",
    ]);
    json(&drmesh_ok(&args))
}

/// The archived snapshot `id` in `cold` lists, restores equal to `original` and verifies.
fn restore_from(cold: &[&str], id: &str, work: &Path, original: &BTreeMap<String, String>) {
    let mut list = vec!["archive", "list"];
    list.extend(cold);
    list.extend(["-o", "json"]);
    let listed = json(&drmesh_ok(&list));
    assert_eq!(ids(&listed), vec![id.to_string()], "{listed}");
    let restored = work.join("restored");
    let mut restore = vec!["archive", "restore"];
    restore.extend(cold);
    restore.extend([id, restored.to_str().unwrap()]);
    let out = drmesh_ok(&restore);
    assert!(out.contains("every SHA-256 checked"), "{out}");
    assert_eq!(&tree(&restored, &[]), original);
    let mut verify = vec!["archive", "verify"];
    verify.extend(cold);
    verify.push(id);
    let verified = drmesh_ok(&verify);
    assert!(verified.contains("PASSED"), "{verified}");
}

/// A cold archive in a GCS bucket (fake-gcs-server): the archived object carries the
/// configured storage class, lists, restores equal to the original and verifies there.
#[test]
fn an_archive_in_a_gcs_bucket_keeps_its_storage_class_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let gcs = drmesh_tests::objstore::GcsServer::start(work);
    gcs.create_bucket("propchain-cold");
    let (repo, first, original) = repository_with_an_old_snapshot(work);
    let endpoint = format!("endpoint={}", gcs.endpoint);
    let cold = [
        "--archive",
        "gs://propchain-cold/archive",
        "--archive-option",
        &endpoint,
        "--archive-option",
        "allow_anonymous=true",
    ];
    let done = archive_with_class(&repo, &cold, "ARCHIVE");
    assert_eq!(ids(&done["archived"]), vec![first.clone()], "{done}");
    let objects = gcs.objects("propchain-cold", "archive/");
    let archived: Vec<_> = objects
        .iter()
        .filter(|(name, _, _)| name.ends_with(".tar.zst"))
        .collect();
    assert_eq!(archived.len(), 1, "{objects:?}");
    assert_eq!(archived[0].2, "ARCHIVE", "{objects:?}");
    assert!(archived[0].0.contains(&first), "{objects:?}");
    restore_from(&cold, &first, work, &original);
}

/// A cold archive in an S3 bucket (moto): with `GLACIER_IR` the object is stored in that
/// class, read back, and restores; with `GLACIER` S3 serves nothing until the object is
/// restored (thawed), so archiving checks the stored size and the per-part SHA-256 S3
/// verified instead of reading it back (`readBack: false`), and `drmesh archive restore`
/// says what to do instead of a bare 403.
#[test]
fn an_archive_in_an_s3_bucket_keeps_its_storage_class_and_a_frozen_object_is_explained() {
    use drmesh_tests::objstore::{S3Server, S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY};
    for (class, readable) in [("GLACIER_IR", true), ("GLACIER", false)] {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        let s3 = S3Server::start(work);
        s3.create_bucket("propchain-cold");
        let (repo, first, original) = repository_with_an_old_snapshot(work);
        let options = [
            format!("endpoint={}", s3.endpoint),
            "allow_http=true".to_string(),
            format!("region={S3_REGION}"),
            format!("access_key_id={S3_ACCESS_KEY}"),
            format!("secret_access_key={S3_SECRET_KEY}"),
        ];
        let mut cold = vec!["--archive", "s3://propchain-cold/archive"];
        for o in &options {
            cold.extend(["--archive-option", o.as_str()]);
        }
        let done = archive_with_class(&repo, &cold, class);
        assert_eq!(
            ids(&done["archived"]),
            vec![first.clone()],
            "{class}: {done}"
        );
        let objects = s3.objects("propchain-cold", "archive/");
        let archived: Vec<_> = objects
            .iter()
            .filter(|(key, _, _)| key.ends_with(".tar.zst"))
            .collect();
        assert_eq!(archived.len(), 1, "{class}: {objects:?}");
        assert_eq!(archived[0].2, class, "{objects:?}");
        let mut list = vec!["archive", "list"];
        list.extend(&cold);
        list.extend(["-o", "json"]);
        let listed = json(&drmesh_ok(&list));
        assert_eq!(listed[0]["storageClass"], class, "{listed}");
        assert_eq!(listed[0]["readBack"], readable, "{listed}");
        if readable {
            restore_from(&cold, &first, work, &original);
            continue;
        }
        let mut restore = vec!["archive", "restore"];
        restore.extend(&cold);
        let target = work.join("restored");
        restore.extend([first.as_str(), target.to_str().unwrap()]);
        let (ok, text) = drmesh(&restore);
        assert!(
            !ok,
            "a GLACIER object cannot be read before it is restored: {text}"
        );
        assert!(
            text.contains("restore-object") && text.contains("GLACIER"),
            "the error says what to do: {text}"
        );
    }
}

fn postgres_ids() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("the postgres OS user (apt-get install -y postgresql)");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// `drmesh-agent --config CONFIG ARGS` as the cluster's owner.
fn agent_ok(config: &Path, args: &[&str]) -> String {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin("drmesh-agent"));
    cmd.arg("--config").arg(config).args(args);
    if let Some((uid, gid)) = postgres_ids() {
        cmd.uid(uid).gid(gid).current_dir("/");
    }
    let out = cmd.output().expect("run drmesh-agent");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "drmesh-agent {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Stops a cluster the test started, however the test ends.
struct Started(LocalCluster);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.stop_immediate();
    }
}

fn data_of(c: &LocalCluster) -> String {
    c.psql(
        "select (select count(*) || ' ' || sum(abalance) from pgbench_accounts) || ' | ' || \
         (select string_agg(note, ',' order by note) from markers)",
    )
    .expect("query")
}

#[test]
fn an_archived_base_backup_extracted_with_tar_alone_starts_postgresql_with_its_data() {
    use super::database::Fixture;
    need("tar", "apt-get install -y tar");
    need("zstd", "apt-get install -y zstd");
    let fx = Fixture::new("30s");
    let root = fx.root.clone();
    let config = root.join("agent.toml");
    fx.pgbench(&["-i", "-s", "1", "-q"]);
    fx.primary
        .psql(
            "create table markers (note text primary key); insert into markers values ('archived')",
        )
        .expect("markers");
    let backup = || -> String {
        let out = agent_ok(&config, &["backup", "full"]);
        out.split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("backup id in {out}"))
            .to_string()
    };
    let first = backup();
    let at_first = data_of(&fx.primary);
    fx.pgbench(&["-t", "50"]);
    fx.primary
        .psql("insert into markers values ('later')")
        .expect("marker");
    let second = backup();
    move_back(&root.join("repo"), &first, 100, None);

    // [archive] in the agent's configuration; the agent's one-shot enforcement (what
    // the coordinator's EnforceRetention runs) archives the older one.
    let cold = root.join("cold");
    prepare_parent_dir(&cold).expect("archive dir for postgres");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("[archive]\nurl = \"{}\"\n", cold.display()));
    std::fs::write(&config, text).unwrap();
    let now = rfc3339(Utc::now());
    let report = json(&agent_ok(&config, &["retention", "--now", &now]));
    assert_eq!(ids(&report["archived"]), vec![first.clone()], "{report}");
    let kept = ids(&report["kept"]);
    assert_eq!(kept, vec![second.clone()], "{report}");
    let object = cold.join(format!("postgres/{first}.tar.zst"));
    assert!(object.exists(), "{report}");
    assert!(!root.join("repo/snapshots").join(&first).exists());

    // (b) tar alone (as root it keeps the owner, postgres).
    let extracted = root.join("from-tar");
    std::fs::create_dir(&extracted).unwrap();
    let out = Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(&object)
        .arg("-C")
        .arg(&extracted)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wal: Vec<String> = std::fs::read_dir(extracted.join("pg_wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    assert!(!wal.is_empty(), "its WAL is in pg_wal/");
    assert!(extracted.join("backup_label").exists());

    // (a) drmesh archive restore gives the same tree.
    let restored = root.join("from-drmesh");
    drmesh_ok(&[
        "archive",
        "restore",
        "--archive",
        cold.to_str().unwrap(),
        &first,
        restored.to_str().unwrap(),
    ]);
    assert_eq!(tree(&restored, &[]), tree(&extracted, &[]));

    // PostgreSQL starts on the directory tar made, with the data as of the backup. Its
    // postgresql.conf is production's: another port, and no archiving into production.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&extracted, std::fs::Permissions::from_mode(0o700)).unwrap();
        if let Some((uid, gid)) = postgres_ids() {
            std::os::unix::fs::chown(&extracted, Some(uid), Some(gid)).unwrap();
        }
    }
    let port = free_port().expect("port");
    let pg = PgBin::find().unwrap_or_else(|e| {
        panic!("{e}: install PostgreSQL (apt-get install -y postgresql), or set DRMESH_PG_BIN")
    });
    let c = LocalCluster::open(&pg, "from-tar", &extracted, port).expect("open");
    c.append_config(
        "postgresql.auto.conf",
        &format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\narchive_mode = off\n"
        ),
    )
    .expect("settings");
    let c = Started(c);
    c.0.start().unwrap_or_else(|e| {
        panic!(
            "start PostgreSQL on the extracted directory: {e}\n{}",
            std::fs::read_to_string(c.0.log_path()).unwrap_or_default()
        )
    });
    let up = drmesh_tests::wait_for(Duration::from_secs(60), || {
        (c.0.psql("select pg_is_in_recovery()").ok()? == "f").then_some(())
    });
    assert!(
        up.is_some(),
        "{}",
        std::fs::read_to_string(c.0.log_path()).unwrap_or_default()
    );
    assert_eq!(
        data_of(&c.0),
        at_first,
        "the data as of the archived backup"
    );
    assert!(at_first.ends_with("| archived"), "{at_first}");

    // (c) Idempotent.
    let again = json(&agent_ok(&config, &["retention", "--now", &now]));
    assert_eq!(ids(&again["archived"]), Vec::<String>::new(), "{again}");
    assert_eq!(ids(&again["deleted"]), Vec::<String>::new(), "{again}");
    let listed = json(&drmesh_ok(&[
        "archive",
        "list",
        "--archive",
        cold.to_str().unwrap(),
        "-o",
        "json",
    ]));
    assert_eq!(ids(&listed), vec![first.clone()], "{listed}");
    assert!(listed[0]["files"].as_u64().unwrap() > 100, "{listed}");
}
