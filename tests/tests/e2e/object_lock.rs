//! Write-once locations (issue 7, Deliver 7): a repository in an S3 bucket with Object
//! Lock and a default retention of one day (COMPLIANCE), on moto_server.
//!
//! What moto enforces: a write without a checksum header is refused in a bucket with a
//! default retention; every object stored gets the retention (mode and retain-until date
//! on HEAD); the bucket is versioned, and deleting a locked version is refused (403). A
//! delete without a version (all object_store sends) only adds a delete marker there, as
//! on AWS, so moto cannot show drmesh's own rule; that rule is judged on drmesh's clock
//! from each object's last-modified time, and the test moves it with `--now`.
//!
//! Shown: without `immutable_for` drmesh cannot even write there; with it backups work;
//! enforcement (and its garbage collection) two hours on deletes nothing and says until
//! when the objects are locked; two days on (the locks ended) it finishes the deletions;
//! every remaining snapshot verifies with all its data throughout; the versions drmesh
//! deleted once their locks ended are still kept by moto (its lock runs on its clock).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use chrono::{DateTime, Utc};
use drmesh_tests::objstore::{S3Server, S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY};
use serde_json::Value;

const BUCKET: &str = "drmesh-worm";

/// Documents: one hour hot, no calendar tier, so every snapshot but the newest expires
/// two hours on.
const POLICY: &str =
    "[documents]\nfull = \"1h\"\nincremental = \"1h\"\nweekly = 0\nmonthly = 0\nyearly = 0\n";

/// moto answers an unsigned request for an object 403 (anonymous), and checks no
/// signature: an `Authorization` header naming the test credentials is enough.
fn authorization() -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={S3_ACCESS_KEY}/20260101/{S3_REGION}/s3/aws4_request, SignedHeaders=host, Signature=0"
    )
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(15))
        .build()
}

/// A bucket with Object Lock enabled and a default retention of one day (COMPLIANCE).
fn create_locked_bucket(s3: &S3Server) {
    let url = format!("{}/{BUCKET}", s3.endpoint);
    let r = agent()
        .put(&url)
        .set("x-amz-bucket-object-lock-enabled", "true")
        .call()
        .unwrap_or_else(|e| panic!("create {url}: {e}"));
    assert_eq!(r.status(), 200);
    let config = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled>\
        <Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Days>1</Days></DefaultRetention></Rule>\
        </ObjectLockConfiguration>";
    let r = agent()
        .put(&format!("{url}?object-lock"))
        .send_string(config)
        .unwrap_or_else(|e| panic!("object lock configuration: {e}"));
    assert_eq!(r.status(), 200);
    let got = agent()
        .get(&format!("{url}?object-lock"))
        .call()
        .unwrap_or_else(|e| panic!("get object lock configuration: {e}"))
        .into_string()
        .unwrap_or_default();
    assert!(
        got.contains("COMPLIANCE") && got.contains("<Days>1</Days>"),
        "{got}"
    );
}

struct Repo<'a> {
    s3: &'a S3Server,
    options: Vec<String>,
}

impl Repo<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(drmesh_tests::bin("drmesh"));
        cmd.arg("repo")
            .arg(args[0])
            .args(["--repo", &format!("s3://{BUCKET}/docs")])
            .args(&args[1..])
            .env_remove("DRMESH_REPO")
            .env_remove("DRMESH_REPO_KEY_FILE")
            .env_remove("DRMESH_REPO_PASSPHRASE");
        for o in [
            format!("endpoint={}", self.s3.endpoint),
            "allow_http=true".into(),
            format!("region={S3_REGION}"),
            format!("access_key_id={S3_ACCESS_KEY}"),
            format!("secret_access_key={S3_SECRET_KEY}"),
        ]
        .iter()
        .chain(&self.options)
        {
            cmd.args(["--repo-option", o]);
        }
        cmd.output().unwrap_or_else(|e| panic!("run drmesh: {e}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "drmesh repo {args:?} failed:\n{}{}\nmoto_server log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.s3.proc.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn snapshots(&self) -> Vec<String> {
        let list: Value =
            serde_json::from_str(&self.ok(&["snapshots", "--output", "json"])).expect("JSON");
        list.as_array()
            .expect("array")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_string())
            .collect()
    }

    /// Every snapshot verifies, reading all its data; their ids.
    fn verify_all(&self) -> Vec<String> {
        let ids = self.snapshots();
        for id in &ids {
            self.ok(&["verify", id, "--read-data"]);
        }
        ids
    }

    fn enforce(&self, policy: &Path, now: DateTime<Utc>) -> Value {
        let out = self.ok(&[
            "retention",
            "--policy",
            &policy.display().to_string(),
            "--now",
            &now.to_rfc3339(),
            "--output",
            "json",
        ]);
        serde_json::from_str(&out).expect("JSON report")
    }
}

/// The versions moto holds of `key`: (version id, is the latest).
fn versions(s3: &S3Server, key: &str) -> Vec<String> {
    let body = agent()
        .get(&format!("{}/{BUCKET}?versions&prefix={key}", s3.endpoint))
        .call()
        .unwrap_or_else(|e| panic!("list versions: {e}"))
        .into_string()
        .unwrap_or_default();
    body.split("<Version>")
        .skip(1)
        .filter_map(|v| {
            let id = v
                .split("<VersionId>")
                .nth(1)?
                .split("</VersionId>")
                .next()?;
            Some(id.to_string())
        })
        .collect()
}

#[test]
fn object_lock_write_once_location_keeps_locked_objects_until_their_lock_ends() {
    let work = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(work.path());
    create_locked_bucket(&s3);
    let policy = work.path().join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");

    // Not declared write-once: no checksum goes with the writes and the bucket refuses.
    let plain = Repo {
        s3: &s3,
        options: vec![],
    };
    let out = plain.run(&["init"]);
    assert!(
        !out.status.success(),
        "a write without a checksum was taken"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Content-MD5") || err.contains("checksum"),
        "{err}"
    );

    let repo = Repo {
        s3: &s3,
        options: vec!["immutable_for=1d".into()],
    };
    repo.ok(&["init"]);
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).expect("src");
    for i in 0..3 {
        // Each snapshot has a file of its own, so each has a pack only it references.
        let body: Vec<u8> = (0..200_000u32)
            .map(|n| (n.wrapping_mul(2_654_435_761).wrapping_add(i * 7919) >> 13) as u8)
            .collect();
        std::fs::write(src.join(format!("doc{i}.bin")), body).expect("write");
        if i > 0 {
            std::fs::remove_file(src.join(format!("doc{}.bin", i - 1))).expect("rm");
        }
        repo.ok(&[
            "backup",
            &src.display().to_string(),
            "--kind",
            "documents",
            "--id",
            &format!("docs_{i}"),
        ]);
    }
    let all = repo.verify_all();
    assert_eq!(all, ["docs_0", "docs_1", "docs_2"]);

    // moto locked what drmesh stored: COMPLIANCE until a day on.
    let head = agent()
        .head(&format!("{}/{BUCKET}/docs/snapshots/docs_0", s3.endpoint))
        .set("Authorization", &authorization())
        .call()
        .unwrap_or_else(|e| panic!("head: {e}"));
    assert_eq!(head.header("x-amz-object-lock-mode"), Some("COMPLIANCE"));
    let until = head
        .header("x-amz-object-lock-retain-until-date")
        .expect("retain-until date");
    let until: DateTime<Utc> = until.parse().expect("date");
    assert!(until > Utc::now() + chrono::Duration::hours(23), "{until}");

    // Two hours on: the policy deletes docs_0 and docs_1, but everything is locked.
    let soon = Utc::now() + chrono::Duration::hours(2);
    let held = repo.enforce(&policy, soon);
    assert_eq!(held["deleted"], serde_json::json!([]), "{held:#}");
    assert_eq!(held["packsDeleted"], 0, "{held:#}");
    let locked: Vec<&str> = held["locked"]["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("no locked snapshots: {held:#}"))
        .iter()
        .map(|l| l["snapshotId"].as_str().expect("id"))
        .collect();
    assert_eq!(locked, ["docs_0", "docs_1"], "{held:#}");
    let locked_until: DateTime<Utc> = held["locked"]["lockedUntil"]
        .as_str()
        .expect("lockedUntil")
        .parse()
        .expect("date");
    assert!(
        locked_until > soon
            && locked_until < Utc::now() + chrono::Duration::days(1) + chrono::Duration::minutes(1),
        "{held:#}"
    );
    let text = String::from_utf8_lossy(
        &repo
            .run(&[
                "retention",
                "--policy",
                &policy.display().to_string(),
                "--now",
                &soon.to_rfc3339(),
                "--dry-run",
            ])
            .stdout,
    )
    .into_owned();
    assert!(text.contains("locked until"), "{text}");
    assert_eq!(repo.verify_all(), all, "nothing left the repository");

    // Two days on, drmesh's locks have ended: the run finishes the job.
    let later = Utc::now() + chrono::Duration::days(2);
    let done = repo.enforce(&policy, later);
    assert_eq!(
        done["deleted"],
        serde_json::json!(["docs_0", "docs_1"]),
        "{done:#}"
    );
    assert!(done.get("locked").is_none(), "{done:#}");
    assert_eq!(done["packsDeleted"], 2, "{done:#}");
    assert_eq!(repo.verify_all(), ["docs_2"]);
    let again = repo.enforce(&policy, later);
    assert_eq!(again["deleted"], serde_json::json!([]), "{again:#}");
    assert_eq!(again["packsDeleted"], 0, "{again:#}");

    // moto still holds the deleted manifest's locked version (behind a delete marker),
    // and refuses to delete it: its own lock runs a day on its own clock.
    let kept = versions(&s3, "docs/snapshots/docs_0");
    assert!(!kept.is_empty(), "moto dropped a locked version");
    let refused = agent()
        .delete(&format!(
            "{}/{BUCKET}/docs/snapshots/docs_0?versionId={}",
            s3.endpoint, kept[0]
        ))
        .set("Authorization", &authorization())
        .call();
    match refused {
        Err(ureq::Error::Status(403, r)) => {
            let body = r.into_string().unwrap_or_default();
            assert!(body.contains("AccessDenied"), "{body}");
        }
        other => panic!("deleting a locked version: {other:?}"),
    }
    assert_eq!(versions(&s3, "docs/snapshots/docs_0"), kept);
}
