//! The runbook's "Document Storage Failure" steps: `GET /v1/documents?status=failed` names
//! the documents a storage failure took (a file gone, a file damaged in place) against the
//! newest document backup, with the restore that brings each back; after that restore
//! `GET /v1/documents/{documentId}` says it is as backed up again.

use std::path::Path;
use std::time::Duration;

use drmesh_tests::{field_pairs, wait_for, Mesh};
use serde_json::Value;

const BASE: &str = "/v1/backup-recovery/documents";

fn write_doc(root: &Path, doc: &str, body: &str) {
    let dir = root.join("documents").join(doc);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    std::fs::write(dir.join("original.pdf"), body.repeat(3000)).expect("write");
    std::fs::write(dir.join("meta.json"), format!("{{\"id\":\"{doc}\"}}")).expect("write");
}

/// The backup's last restore, once it has finished.
fn restored(mesh: &Mesh, id: &str) -> Value {
    wait_for(Duration::from_secs(60), || {
        let v = mesh.get(&format!("{BASE}/backups/{id}")).body["lastRestore"].clone();
        (v.is_object() && v["status"] != "IN_PROGRESS").then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "the restore of {id} did not finish:\n{}",
            mesh.coordinator_log()
        )
    })
}

fn by_id(report: &Value) -> Vec<(String, String)> {
    field_pairs(&report["documents"], "documentId", "status")
}

#[test]
fn failed_documents_are_named_with_their_restore_and_ok_once_restored() {
    let mesh = Mesh::start(200);
    let work = mesh.dir.path().join("work");
    let uploads = work.join("uploads");
    for doc in ["doc-001", "doc-002", "doc-003", "doc-004"] {
        write_doc(&uploads, doc, &format!("%PDF-1.7 {doc} "));
    }
    let files = mesh.issue_agent("docs-1", "us-west-2");
    let extra = format!(
        "\n[documents]\nsource = \"{}\"\n[[documents.locations]]\nname = \"local\"\nurl = \"{}\"\n",
        uploads.display(),
        work.join("repo").display()
    );
    let config = mesh.agent_config("docs-1", "us-west-2", &files, &extra);
    let agent = mesh.spawn_agent(&config);
    wait_for(Duration::from_secs(10), || {
        (mesh.agent_state("docs-1").as_deref() == Some("UP")).then_some(())
    })
    .unwrap_or_else(|| panic!("agent not UP:\n{}", agent.log_text()));

    // Before any backup there is nothing to compare with.
    let none = mesh.get("/v1/documents");
    assert_eq!(none.status, 404, "{}", none.text);
    assert!(none.text.contains("no document backup"), "{}", none.text);

    let done = mesh.document_backup();
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let id = done["backupId"].as_str().unwrap_or_default().to_string();

    let all = mesh.get("/v1/documents");
    assert_eq!(all.status, 200, "{}", all.text);
    assert_eq!(all.body["backupId"], id.as_str(), "{}", all.text);
    assert_eq!(all.body["summary"]["OK"], 4, "{}", all.text);

    // The storage failure: doc-002 loses a file, doc-003 is damaged in place (same size and
    // time, other bytes), doc-004 is edited; doc-005 arrives.
    std::fs::remove_file(uploads.join("documents/doc-002/original.pdf")).expect("rm");
    let damaged = uploads.join("documents/doc-003/original.pdf");
    let meta = std::fs::metadata(&damaged).expect("stat");
    let mut bytes = std::fs::read(&damaged).expect("read");
    bytes[100] ^= 0xff;
    std::fs::write(&damaged, &bytes).expect("write");
    let f = std::fs::File::options()
        .write(true)
        .open(&damaged)
        .expect("open");
    f.set_modified(meta.modified().expect("mtime"))
        .expect("set mtime");
    drop(f);
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(
        uploads.join("documents/doc-004/meta.json"),
        "{\"id\":\"doc-004\",\"v\":2}",
    )
    .expect("edit");
    write_doc(&uploads, "doc-005", "%PDF-1.7 doc-005 ");

    // Sizes and times alone: the lost file shows, the damage in place does not.
    let quick = mesh.get("/v1/documents");
    assert_eq!(
        by_id(&quick.body),
        [
            ("doc-001".into(), "OK".into()),
            ("doc-002".into(), "FAILED".into()),
            ("doc-003".into(), "OK".into()),
            ("doc-004".into(), "MODIFIED".into()),
            ("doc-005".into(), "NEW".into()),
        ],
        "{}",
        quick.text
    );
    // Reading every file is an operator's; a viewer still gets the quick look.
    let viewer = mesh.create_token("viewer");
    for (path, want) in [
        ("/v1/documents?checksums=true", 403),
        ("/v1/documents/doc-002?checksums=true", 403),
        ("/v1/documents", 200),
    ] {
        let a = drmesh_tests::http("GET", &mesh.url(path), Some(&viewer), None);
        assert_eq!(a.status, want, "{path}: {}", a.text);
    }
    // With checksums, the runbook's step 2 names both, each with its restore.
    let failed = mesh.get("/v1/documents?status=failed&checksums=true");
    assert_eq!(failed.status, 200, "{}", failed.text);
    assert_eq!(
        by_id(&failed.body),
        [
            ("doc-002".into(), "FAILED".into()),
            ("doc-003".into(), "FAILED".into())
        ],
        "{}",
        failed.text
    );
    assert_eq!(failed.body["summary"]["FAILED"], 2, "{}", failed.text);
    let docs = failed.body["documents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        docs[0]["missing"],
        serde_json::json!(["documents/doc-002/original.pdf"])
    );
    assert_eq!(
        docs[1]["corrupted"],
        serde_json::json!(["documents/doc-003/original.pdf"])
    );
    for bad in ["/v1/documents?status=broken", "/v1/documents?color=red"] {
        assert_eq!(mesh.get(bad).status, 400, "{bad}");
    }
    let unknown = mesh.get("/v1/documents/doc-999");
    assert_eq!(unknown.status, 404, "{}", unknown.text);

    // The CLI says the same, with the command that restores each, and exits 1.
    let token = mesh.admin_token.clone();
    let (ok, out, err) = mesh.cli(
        &token,
        &["documents", "status", "--status", "failed", "--checksums"],
    );
    assert!(!ok, "FAILED documents make it exit 1: {out}");
    assert!(err.contains("2 document(s) FAILED"), "{err}");
    assert!(
        out.contains(&format!(
            "restore: drmesh documents restore {id} --path documents/doc-002 --target {}",
            uploads.display()
        )),
        "{out}"
    );
    let (ok, out, err) = mesh.cli(&token, &["documents", "backups", "--output", "json"]);
    assert!(ok, "{err}");
    assert!(out.contains(&id), "{out}");

    // The restores named bring them back — doc-002's through the API, doc-003's through
    // the CLI — and the runbook's step 4 then says OK.
    let restore = docs[0]["restore"].to_string();
    let r = mesh.post(&format!("{BASE}/backups/{id}/restore"), Some(&restore));
    assert_eq!(r.status, 202, "{restore}: {}", r.text);
    let outcome = restored(&mesh, &id);
    assert_eq!(outcome["status"], "COMPLETED", "{outcome}");
    let target = uploads.display().to_string();
    let (ok, out, err) = mesh.cli(
        &token,
        &[
            "documents",
            "restore",
            &id,
            "--path",
            "documents/doc-003",
            "--target",
            &target,
            "--wait",
        ],
    );
    assert!(ok, "{out}{err}");
    for doc in ["doc-002", "doc-003"] {
        let one = mesh.get(&format!("/v1/documents/{doc}?checksums=true"));
        assert_eq!(one.status, 200, "{}", one.text);
        assert_eq!(one.body["status"], "OK", "{}", one.text);
        assert_eq!(one.body["backupId"], id.as_str(), "{}", one.text);
    }
    let (ok, out, err) = mesh.cli(
        &token,
        &[
            "documents",
            "status",
            "doc-003",
            "--checksums",
            "--output",
            "json",
        ],
    );
    assert!(ok, "{out}{err}");
    let one: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    assert_eq!(one["status"], "OK", "{out}");

    // The next backup, from the CLI, takes doc-004's edit and doc-005: all OK again.
    let (ok, out, err) = mesh.cli(
        &token,
        &[
            "documents",
            "backup",
            "--tag",
            "reason=after-restore",
            "--wait",
            "--output",
            "json",
        ],
    );
    assert!(ok, "{out}{err}");
    let next: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    assert_eq!(next["status"], "COMPLETED", "{out}");
    assert_eq!(next["tags"]["reason"], "after-restore", "{out}");
    let all = mesh.get("/v1/documents");
    assert_eq!(all.body["backupId"], next["backupId"], "{}", all.text);
    assert_eq!(all.body["summary"]["OK"], 5, "{}", all.text);
    drop(agent);
}
