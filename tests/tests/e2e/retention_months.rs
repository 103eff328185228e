//! Retention of a document location with a date template (`…/{yyyy}/{mm}`: one
//! repository per month, the runbook's layout) through the coordinator's
//! `POST …/retention/enforce-policies`: a real documents agent backs up into this
//! month's repository, `drmesh repo backup` fills last month's (the manifests' times
//! moved into that month), and the policy is applied to both months as one history.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::retention::{backup, snapshots};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use drmesh_repo::testing::{decode_doc, encode_doc};
use drmesh_repo::Snapshot;
use drmesh_tests::{bin, noise, wait_for, Mesh};
use serde_json::{json, Value};

const DOCS: &str = "/v1/backup-recovery/documents";
const RETENTION: &str = "/v1/backup-recovery/retention";

/// Document snapshots are kept a second; the newest of each of the last two months is
/// kept for the cold archive; no weekly or yearly tier.
const POLICY: &str = "[retention]\nschedule = \"off\"\n[retention.documents]\nfull = \"1s\"\nincremental = \"1s\"\nweekly = 0\nmonthly = 2\nyearly = 0\n";

fn drmesh(args: &[&str]) -> String {
    let out = Command::new(bin("drmesh"))
        .args(args)
        .env_remove("DRMESH_REPO")
        .env_remove("DRMESH_REPO_KEY_FILE")
        .env_remove("DRMESH_REPO_PASSPHRASE")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "drmesh {args:?}: {text}");
    text
}

fn month_dir(root: &Path, t: DateTime<Utc>) -> PathBuf {
    root.join(t.format("%Y").to_string())
        .join(t.format("%m").to_string())
}

/// A document snapshot of `source` in `repo` (created if need be) that finished at
/// `at`: taken now by `drmesh repo backup`, its manifest's times then moved to `at`.
fn backup_at(repo: &Path, source: &Path, at: DateTime<Utc>, suffix: &str) -> String {
    if !repo.join("config").exists() {
        drmesh(&["repo", "init", "--repo", repo.to_str().unwrap()]);
    }
    let id = format!("docs_{}_{suffix}", at.timestamp_millis());
    drmesh(&[
        "repo",
        "backup",
        "--repo",
        repo.to_str().unwrap(),
        source.to_str().unwrap(),
        "--id",
        &id,
        "--kind",
        "documents",
    ]);
    let path = repo.join("snapshots").join(&id);
    let mut snap: Snapshot = decode_doc(&std::fs::read(&path).unwrap(), None, &id).unwrap();
    snap.started_at = at;
    snap.finished_at = at;
    std::fs::write(&path, encode_doc(&snap, None).unwrap()).unwrap();
    id
}

/// The policies enforced (as of `now` when given); the templated location's entry.
fn enforce(mesh: &Mesh, dry_run: bool, now: Option<DateTime<Utc>>) -> (Value, Value) {
    let mut path = format!("{RETENTION}/enforce-policies?dryRun={dry_run}");
    if let Some(now) = now {
        path.push_str(&format!(
            "&now={}",
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    let a = mesh.post(&path, None);
    assert_eq!(a.status, 200, "{}", a.text);
    let location = a.body["agents"][0]["repositories"][0].clone();
    assert_eq!(location["repository"], "local", "{}", a.text);
    assert!(location["error"].is_null(), "{}", a.text);
    (a.body, location)
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|k| {
            k["snapshotId"]
                .as_str()
                .unwrap_or_else(|| k.as_str().unwrap())
                .to_string()
        })
        .collect()
}

#[test]
fn a_templated_location_s_months_are_enforced_as_one_history() {
    // Both of this test's backups through the agent must land in one month: not in
    // the last two minutes of one.
    let soon = Utc::now() + chrono::Duration::minutes(2);
    if soon.month() != Utc::now().month() {
        let wait = (soon - Utc::now()).to_std().unwrap_or_default();
        std::thread::sleep(wait.min(Duration::from_secs(121)));
    }
    let this_month = Utc::now();
    let first_of_month = Utc
        .with_ymd_and_hms(this_month.year(), this_month.month(), 1, 0, 0, 0)
        .single()
        .unwrap();
    let last_month = first_of_month - chrono::Duration::days(20);

    let mesh = Mesh::start_with(200, POLICY);
    let (uploads, root, agent) = super::retention::documents_agent_with(&mesh, "/{yyyy}/{mm}", "");

    // Last month: two snapshots, a day apart (a 4 MiB scan in the first only).
    let earlier = month_dir(&root, last_month);
    std::fs::write(uploads.join("documents/1/scan.tiff"), noise(9, 4 << 20)).unwrap();
    let p1 = backup_at(&earlier, &uploads, last_month, "prev01");
    std::fs::remove_file(uploads.join("documents/1/scan.tiff")).unwrap();
    let p2 = backup_at(
        &earlier,
        &uploads,
        last_month + chrono::Duration::days(1),
        "prev02",
    );
    // This month: two backups through the agent.
    let c1 = backup(&mesh);
    std::fs::write(uploads.join("documents/1/note.txt"), b"this month").unwrap();
    let c2 = backup(&mesh);
    let current = month_dir(&root, this_month);
    assert_eq!(
        snapshots(&current),
        [c1.clone(), c2.clone()],
        "{}",
        agent.log_text()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let months = json!([earlier.display().to_string(), current.display().to_string()]);

    // A dry run: one report for the location, over both months; the newest of each
    // month stays (for the archive, none being configured), the others would go.
    let (all, dry) = enforce(&mesh, true, None);
    let report = &dry["report"];
    assert_eq!(report["months"], months, "{dry}");
    assert_eq!(ids(&report["deleted"]), [p1.clone(), c1.clone()], "{dry}");
    assert_eq!(
        ids(&report["awaitingArchive"]),
        std::slice::from_ref(&p2),
        "{dry}"
    );
    assert_eq!(report["awaitingArchive"][0]["reasons"], json!(["monthly"]));
    assert_eq!(ids(&report["kept"]), std::slice::from_ref(&c2), "{dry}");
    assert_eq!(report["kept"][0]["reasons"], json!(["monthly", "latest"]));
    assert_eq!(all["deleted"], 2, "{all}");
    assert_eq!(
        snapshots(&earlier),
        [p1.clone(), p2.clone()],
        "dry: nothing gone"
    );
    assert_eq!(
        snapshots(&current),
        [c1.clone(), c2.clone()],
        "dry: nothing gone"
    );

    // The real run does it, in each month's repository, and frees the scan's packs.
    let (all, done) = enforce(&mesh, false, None);
    assert_eq!(
        done["report"]["deleted"], dry["report"]["deleted"],
        "{done}"
    );
    assert_eq!(all["deleted"], 2, "{all}");
    assert!(all["bytesFreed"].as_u64().unwrap() >= 4 << 20, "{all}");
    assert_eq!(snapshots(&earlier), std::slice::from_ref(&p2));
    assert_eq!(snapshots(&current), std::slice::from_ref(&c2));
    let rec = mesh.get(&format!("{DOCS}/backups/{c1}"));
    assert_eq!(rec.body["status"], "EXPIRED", "{}", rec.text);
    // What is left in last month's repository still reads back whole.
    drmesh(&[
        "repo",
        "verify",
        "--repo",
        earlier.to_str().unwrap(),
        &p2,
        "--read-data",
    ]);

    // Idempotent.
    let (all, again) = enforce(&mesh, false, None);
    assert_eq!(all["deleted"], 0, "{all}");
    assert_eq!(
        ids(&again["report"]["awaitingArchive"]),
        std::slice::from_ref(&p2)
    );
    assert_eq!(ids(&again["report"]["kept"]), std::slice::from_ref(&c2));

    // A hundred days on no month tier reaches either month: only the newest of the
    // whole history stays (each month alone would keep its own newest), and last
    // month's repository is left, empty.
    let later = Utc::now() + chrono::Duration::days(100);
    let (all, gone) = enforce(&mesh, false, Some(later));
    assert_eq!(gone["report"]["months"], months, "{gone}");
    assert_eq!(
        ids(&gone["report"]["deleted"]),
        std::slice::from_ref(&p2),
        "{gone}"
    );
    assert_eq!(
        ids(&gone["report"]["kept"]),
        std::slice::from_ref(&c2),
        "{gone}"
    );
    assert_eq!(gone["report"]["kept"][0]["reasons"], json!(["latest"]));
    assert_eq!(all["deleted"], 1, "{all}");
    assert!(snapshots(&earlier).is_empty());
    assert!(earlier.join("config").exists());
    assert_eq!(snapshots(&current), std::slice::from_ref(&c2));

    // What is left verifies and restores whole through the agent.
    let v = mesh.post(&format!("{DOCS}/backups/{c2}/verify"), None);
    assert!(v.status == 202 || v.status == 200, "{}", v.text);
    let verdict = wait_for(Duration::from_secs(60), || {
        let b = mesh.get(&format!("{DOCS}/backups/{c2}"));
        let v = &b.body["verification"];
        (v.is_object() && v["status"] != "IN_PROGRESS").then(|| v.clone())
    })
    .expect("verification ends");
    assert_eq!(verdict["status"], "PASSED", "{verdict}");
}
