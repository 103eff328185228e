//! Document backups through the runbook's endpoints: a real coordinator, a real agent
//! with an uploads directory, and three locations — a local directory, Azure Blob
//! (Azurite, `document-backups/YYYY/MM/`) and S3 (moto, `s3://…/document-backups/YYYY/MM/`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use drmesh_tests::objstore::{
    AzuriteServer, S3Server, AZURITE_ACCOUNT, AZURITE_KEY, S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY,
};
use drmesh_tests::{noise, wait_for, walk_files, Mesh};
use serde_json::Value;

const BASE: &str = "/v1/backup-recovery/documents";

fn write_uploads(root: &Path) {
    for doc in ["doc-001", "doc-002", "doc-003"] {
        let dir = root.join("documents").join(doc);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("original.pdf"),
            format!("%PDF-1.7 {doc} ").repeat(20_000),
        )
        .unwrap();
        std::fs::write(dir.join("meta.json"), format!("{{\"id\":\"{doc}\"}}")).unwrap();
    }
}

/// Polls a backup until it leaves IN_PROGRESS.
fn wait_backup(mesh: &Mesh, id: &str) -> Value {
    wait_for(Duration::from_secs(60), || {
        let a = mesh.get(&format!("{BASE}/backups/{id}"));
        assert_eq!(a.status, 200, "{}", a.text);
        (a.body["status"] != "IN_PROGRESS").then_some(a.body)
    })
    .unwrap_or_else(|| panic!("backup {id} did not finish:\n{}", mesh.coordinator_log()))
}

fn wait_field(mesh: &Mesh, id: &str, field: &str) -> Value {
    wait_for(Duration::from_secs(60), || {
        let a = mesh.get(&format!("{BASE}/backups/{id}"));
        let v = &a.body[field];
        (v.is_object() && v["status"] != "IN_PROGRESS").then(|| v.clone())
    })
    .unwrap_or_else(|| panic!("{field} of {id} did not finish"))
}

#[test]
fn document_backups_replicate_verify_restore_and_keep_a_plain_archive() {
    let mesh = Mesh::start(200);
    let work = mesh.dir.path().join("work");
    let uploads = work.join("uploads");
    write_uploads(&uploads);
    let s3 = S3Server::start(&work);
    s3.create_bucket("propchain-backups");
    let azurite = AzuriteServer::start(&work);
    azurite.create_container("document-backups");
    let key = work.join("documents.key");
    std::fs::write(&key, "5f2b0c7e9a1d4c3b8e6f0a2d4c6e8f1a").unwrap();

    let files = mesh.issue_agent("docs-1", "us-west-2");
    let extra = format!(
        r#"
[documents]
source = "{uploads}"
key_file = "{key}"
archive_dir = "{data}/backups/documents/snapshots"
restore_dir = "{data}/restores"
[[documents.locations]]
name = "local"
url = "{local}"
[[documents.locations]]
name = "azure"
url = "az://document-backups/{{yyyy}}/{{mm}}"
options = {{ account_name = "{account}", access_key = "{akey}", endpoint = "{aurl}", allow_http = "true" }}
[[documents.locations]]
name = "s3"
url = "s3://propchain-backups/document-backups/{{yyyy}}/{{mm}}"
options = {{ endpoint = "{s3}", allow_http = "true", region = "{region}", access_key_id = "{ak}", secret_access_key = "{sk}" }}
"#,
        data = work.join("agent-data").display(),
        uploads = uploads.display(),
        key = key.display(),
        local = work.join("repo-local").display(),
        account = AZURITE_ACCOUNT,
        akey = AZURITE_KEY,
        aurl = azurite.account_url(),
        s3 = s3.endpoint,
        region = S3_REGION,
        ak = S3_ACCESS_KEY,
        sk = S3_SECRET_KEY,
    );
    let config = mesh.agent_config("docs-1", "us-west-2", &files, &extra);
    let agent = mesh.spawn_agent(&config);
    wait_for(Duration::from_secs(10), || {
        (mesh.agent_state("docs-1").as_deref() == Some("UP")).then_some(())
    })
    .unwrap_or_else(|| panic!("agent not UP:\n{}", agent.log_text()));

    // Bad input changes nothing.
    let bad = mesh.post(&format!("{BASE}/backup"), Some("{\"tags\": 5}"));
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(mesh.get(&format!("{BASE}/backups")).body["total"], 0);
    let missing = mesh.get(&format!("{BASE}/backups/docs_1_nothere"));
    assert_eq!(missing.status, 404);

    // The runbook's request.
    let accepted = mesh.post(
        &format!("{BASE}/backup"),
        Some(r#"{"tags": {"type": "manual", "reason": "audit"}}"#),
    );
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    let id = accepted.body["backupId"].as_str().unwrap().to_string();
    assert!(
        id.starts_with("docs_") && id.len() == "docs_".len() + 13 + 1 + 6,
        "{id}"
    );
    assert!(accepted.body["timestamp"].is_string());
    assert!(accepted.body["estimatedDuration"].is_string());
    let done = wait_backup(&mesh, &id);
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", agent.log_text());
    assert_eq!(done["tags"]["reason"], "audit");
    let outcome = &done["outcome"];
    assert_eq!(outcome["files"], 6);
    let locations: Vec<(&str, &str)> = outcome["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), l["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        locations,
        vec![
            ("local", "COMPLETED"),
            ("azure", "COMPLETED"),
            ("s3", "COMPLETED")
        ],
        "{outcome}"
    );
    let month = chrono_month(&id);
    assert!(
        outcome["locations"][2]["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("document-backups/{month}")),
        "{outcome}"
    );

    // The plain archive, usable with tar alone (the runbook's manual restore).
    let snapshots = work.join("agent-data/backups/documents/snapshots");
    assert!(snapshots.join(format!("{id}.tar.gz")).exists());
    assert!(snapshots.join(format!("{id}/MANIFEST.json")).exists());
    let extract = work.join("extract");
    std::fs::create_dir_all(&extract).unwrap();
    let tar = Command::new("tar")
        .arg("-xzf")
        .arg(snapshots.join("docs_latest.tar.gz"))
        .arg("-C")
        .arg(&extract)
        .status()
        .unwrap();
    assert!(tar.success());
    assert_eq!(
        std::fs::read(extract.join("docs_backup/documents/doc-002/original.pdf")).unwrap(),
        std::fs::read(uploads.join("documents/doc-002/original.pdf")).unwrap()
    );

    // A second backup stores only what changed.
    std::fs::write(uploads.join("documents/doc-004.txt"), b"new upload").unwrap();
    let second = mesh.post(&format!("{BASE}/backup"), None);
    assert_eq!(second.status, 202, "{}", second.text);
    let id2 = second.body["backupId"].as_str().unwrap().to_string();
    let done2 = wait_backup(&mesh, &id2);
    assert_eq!(done2["status"], "COMPLETED", "{done2}");
    assert_eq!(done2["outcome"]["parentId"], id.as_str());
    let listed = mesh.get(&format!("{BASE}/backups?status=COMPLETED"));
    assert_eq!(listed.body["total"], 2, "{}", listed.text);
    assert_eq!(
        mesh.get(&format!("{BASE}/backups?status=BOGUS")).status,
        400
    );

    // Verify: the runbook's four checks, in every location.
    let v = mesh.post(&format!("{BASE}/backups/{id2}/verify"), None);
    assert_eq!(v.status, 202, "{}", v.text);
    let verification = wait_field(&mesh, &id2, "verification");
    for check in [
        "archiveIntegrity",
        "manifestValidity",
        "fileChecksums",
        "dataAccessible",
    ] {
        assert_eq!(verification[check], "PASSED", "{check}: {verification}");
    }
    assert_eq!(
        verification["locations"].as_array().unwrap().len(),
        4,
        "{verification}"
    );
    assert_eq!(
        mesh.get(&format!("{BASE}/backups/{id2}")).body["status"],
        "VERIFIED"
    );
    let again = mesh.get(&format!("{BASE}/backups/{id2}/verify"));
    assert_eq!(again.status, 200);
    assert_eq!(
        mesh.get(&format!("{BASE}/backups?status=VERIFIED")).body["total"],
        1
    );

    // Statistics.
    let stats = mesh.get(&format!("{BASE}/statistics"));
    assert_eq!(stats.status, 200, "{}", stats.text);
    assert_eq!(stats.body["totalBackups"], 2);
    assert_eq!(stats.body["newestBackup"], id2.as_str());
    assert!(
        stats.body["dedupRatio"].as_f64().unwrap() > 1.0,
        "{}",
        stats.text
    );
    assert_eq!(stats.body["locations"].as_array().unwrap().len(), 3);

    // Restore chosen paths of the first backup into a directory.
    let target = work.join("restored");
    let r = mesh.post(
        &format!("{BASE}/backups/{id}/restore"),
        Some(&format!(
            r#"{{"paths": ["documents/doc-001"], "targetDirectory": "{}"}}"#,
            target.display()
        )),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let restored = wait_field(&mesh, &id, "lastRestore");
    assert_eq!(restored["status"], "COMPLETED", "{restored}");
    assert_eq!(restored["files"], 2);
    assert_eq!(
        std::fs::read(target.join("documents/doc-001/original.pdf")).unwrap(),
        std::fs::read(uploads.join("documents/doc-001/original.pdf")).unwrap()
    );
    assert!(!target.join("documents/doc-002").exists());
    let relative = mesh.post(
        &format!("{BASE}/backups/{id}/restore"),
        Some(r#"{"targetDirectory": "relative/dir"}"#),
    );
    assert_eq!(relative.status, 400);

    // The dashboard lists them.
    let dash = mesh.get("/v1/backup-recovery/monitoring/dashboard");
    assert_eq!(dash.body["recentBackups"].as_array().unwrap().len(), 2);

    // Damage the local copy: verification fails, names the file, and raises an alert.
    let local = work.join("repo-local");
    for pack in walk_files(&local.join("data")) {
        let mut b = std::fs::read(&pack).unwrap();
        b[5] ^= 0xff;
        std::fs::write(&pack, b).unwrap();
    }
    mesh.post(&format!("{BASE}/backups/{id}/verify"), None);
    let failed = wait_field(&mesh, &id, "verification");
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert!(
        failed["damagedFiles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["location"] == "local"),
        "{failed}"
    );
    let alerts = mesh.get("/v1/backup-recovery/monitoring/alerts?severity=CRITICAL");
    assert!(
        alerts.text.contains("VERIFICATION_FAILED"),
        "{}",
        alerts.text
    );
}

#[test]
fn a_backup_without_a_documents_agent_is_refused() {
    let mesh = Mesh::start(200);
    let _plain = mesh.agent("plain-1", "us-east-1");
    let a = mesh.post(&format!("{BASE}/backup"), None);
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(mesh.get(&format!("{BASE}/backups")).body["total"], 0);
    let viewer = mesh.create_token("viewer");
    let denied = drmesh_tests::http(
        "POST",
        &mesh.url(&format!("{BASE}/backup")),
        Some(&viewer),
        None,
    );
    assert_eq!(denied.status, 403);
}

/// `YYYY/MM` of a `docs_<epoch-ms>_…` id.
fn chrono_month(id: &str) -> String {
    let ms: i64 = id.split('_').nth(1).unwrap().parse().unwrap();
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{}", ms / 1000), "+%Y/%m"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn an_agent_killed_mid_backup_leaves_a_repository_that_verifies() {
    let mesh = Mesh::start(200);
    let work = mesh.dir.path().join("work");
    let uploads = work.join("uploads");
    write_uploads(&uploads);
    for i in 0..16 {
        std::fs::write(
            uploads.join(format!("scan-{i}.tiff")),
            noise(i, 16 * 1024 * 1024),
        )
        .unwrap();
    }
    let repo = work.join("repo");
    let files = mesh.issue_agent("docs-1", "us-west-2");
    let extra = format!(
        "\n[documents]\nsource = \"{}\"\nkeep_latest_archive = false\n[[documents.locations]]\nname = \"local\"\nurl = \"{}\"\n",
        uploads.display(),
        repo.display()
    );
    let config = mesh.agent_config("docs-1", "us-west-2", &files, &extra);
    let up = |mesh: &Mesh| {
        wait_for(Duration::from_secs(15), || {
            (mesh.agent_state("docs-1").as_deref() == Some("UP")).then_some(())
        })
        .is_some()
    };
    let mut agent = mesh.spawn_agent(&config);
    assert!(up(&mesh), "agent not UP:\n{}", agent.log_text());

    let a = mesh.post(&format!("{BASE}/backup"), None);
    assert_eq!(a.status, 202, "{}", a.text);
    let id = a.body["backupId"].as_str().unwrap().to_string();
    let writing = wait_for(Duration::from_secs(60), || {
        (repo.join("data").exists() && !walk_files(&repo.join("data")).is_empty()).then_some(())
    });
    assert!(writing.is_some(), "no pack written:\n{}", agent.log_text());
    agent.kill9();
    let failed = wait_backup(&mesh, &id);
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("lost the agent"),
        "{failed}"
    );
    let alerts = mesh.get("/v1/backup-recovery/monitoring/alerts?severity=CRITICAL");
    assert!(alerts.text.contains("BACKUP_FAILED"), "{}", alerts.text);

    // Back up again after a restart: it completes and verifies.
    let agent = mesh.spawn_agent(&config);
    assert!(up(&mesh), "agent not UP again:\n{}", agent.log_text());
    let a = mesh.post(&format!("{BASE}/backup"), None);
    assert_eq!(a.status, 202, "{}", a.text);
    let id2 = a.body["backupId"].as_str().unwrap().to_string();
    let done = wait_backup(&mesh, &id2);
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", agent.log_text());
    mesh.post(&format!("{BASE}/backups/{id2}/verify"), None);
    let v = wait_field(&mesh, &id2, "verification");
    assert_eq!(v["status"], "PASSED", "{v}");
    // The killed backup left no snapshot behind.
    assert!(!repo.join("snapshots").join(&id).exists());
    // A repeated verify of the failed one is refused.
    let refused = mesh.post(&format!("{BASE}/backups/{id}/verify"), None);
    assert_eq!(refused.status, 409, "{}", refused.text);
}
