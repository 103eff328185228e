//! Retention through the runbook's endpoints: a real coordinator whose `[retention]`
//! policy keeps document snapshots for one second and no calendar tier, and a real
//! documents agent backing up into a local repository.

use std::time::Duration;

use drmesh_tests::{noise, wait_for, walk_files, Mesh};
use serde_json::Value;

const DOCS: &str = "/v1/backup-recovery/documents";
const RETENTION: &str = "/v1/backup-recovery/retention";

pub(crate) fn backup(mesh: &Mesh) -> String {
    let a = mesh.post(&format!("{DOCS}/backup"), None);
    assert_eq!(a.status, 202, "{}", a.text);
    let id = a.body["backupId"].as_str().unwrap().to_string();
    let done = wait_for(Duration::from_secs(60), || {
        let b = mesh.get(&format!("{DOCS}/backups/{id}"));
        (b.body["status"] != "IN_PROGRESS").then_some(b.body)
    })
    .expect("backup ends");
    assert_eq!(done["status"], "COMPLETED", "{done}");
    id
}

/// The snapshot ids in a local repository, sorted (none when it has no `snapshots/`).
pub(crate) fn snapshots(repo: &std::path::Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(repo.join("snapshots")) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = dir
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

/// A documents agent backing up `uploads` into the local repository `repo` of `mesh`'s
/// work directory, UP.
fn documents_agent(mesh: &Mesh) -> (std::path::PathBuf, std::path::PathBuf, drmesh_tests::Proc) {
    documents_agent_with(mesh, "", "")
}

/// As [`documents_agent`], the location's URL being `repo` followed by `url_suffix`
/// (e.g. `/{yyyy}/{mm}`), with `extra_documents` at the end of the agent's `[documents]`.
pub(crate) fn documents_agent_with(
    mesh: &Mesh,
    url_suffix: &str,
    extra_documents: &str,
) -> (std::path::PathBuf, std::path::PathBuf, drmesh_tests::Proc) {
    let work = mesh.dir.path().join("work");
    let uploads = work.join("uploads");
    std::fs::create_dir_all(uploads.join("documents/1")).unwrap();
    std::fs::write(uploads.join("documents/1/deed.pdf"), noise(3, 300_000)).unwrap();
    let repo = work.join("repo");
    let files = mesh.issue_agent("docs-1", "us-west-2");
    let extra = format!(
        "\n[documents]\nsource = \"{}\"\nkeep_latest_archive = false\n[[documents.locations]]\nname = \"local\"\nurl = \"{}{url_suffix}\"\n{extra_documents}",
        uploads.display(),
        repo.display()
    );
    let config = mesh.agent_config("docs-1", "us-west-2", &files, &extra);
    let agent = mesh.spawn_agent(&config);
    let up = wait_for(Duration::from_secs(15), || {
        (mesh.agent_state("docs-1").as_deref() == Some("UP")).then_some(())
    });
    assert!(up.is_some(), "agent not UP:\n{}", agent.log_text());
    (uploads, repo, agent)
}

/// Keeps document snapshots one second, no calendar tier.
const ONE_SECOND: &str = "[retention.documents]\nfull = \"1s\"\nincremental = \"1s\"\nweekly = 0\nmonthly = 0\nyearly = 0\n";

#[test]
fn enforce_policies_removes_what_no_tier_keeps_frees_its_packs_and_keeps_the_newest() {
    // No scheduled run in the middle of the test (at 01:00 UTC).
    let mesh = Mesh::start_with(
        200,
        &format!("[retention]\nschedule = \"off\"\n{ONE_SECOND}"),
    );
    let (uploads, repo, _agent) = documents_agent(&mesh);

    // The policy in force.
    let p = mesh.get(&format!("{RETENTION}/policies"));
    assert_eq!(p.status, 200, "{}", p.text);
    assert_eq!(p.body["documents"]["full"], "1s", "{}", p.text);
    assert_eq!(p.body["database"]["full"], "30days", "{}", p.text);
    assert_eq!(p.body["database"]["yearly"], 7, "{}", p.text);

    // Three snapshots; a 16 MiB scan is in the first only, so its packs are the first's.
    std::fs::write(uploads.join("documents/1/scan.tiff"), noise(9, 16 << 20)).unwrap();
    let first = backup(&mesh);
    std::fs::remove_file(uploads.join("documents/1/scan.tiff")).unwrap();
    let second = backup(&mesh);
    std::fs::write(uploads.join("documents/1/note.txt"), b"third").unwrap();
    let third = backup(&mesh);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        snapshots(&repo),
        [first.clone(), second.clone(), third.clone()]
    );

    // A viewer may look at the policy, not enforce it.
    let viewer = mesh.create_token("viewer");
    let denied = drmesh_tests::http(
        "POST",
        &mesh.url(&format!("{RETENTION}/enforce-policies")),
        Some(&viewer),
        None,
    );
    assert_eq!(denied.status, 403, "{}", denied.text);
    let bad = mesh.post(&format!("{RETENTION}/enforce-policies?dryRun=maybe"), None);
    assert_eq!(bad.status, 400, "{}", bad.text);

    // A dry run says what would go and changes nothing.
    let dry = mesh.post(&format!("{RETENTION}/enforce-policies?dryRun=true"), None);
    assert_eq!(dry.status, 200, "{}", dry.text);
    assert_eq!(dry.body["dryRun"], true);
    assert_eq!(dry.body["deleted"], 2, "{}", dry.text);
    let local: &Value = &dry.body["agents"][0]["repositories"][0];
    assert_eq!(local["repository"], "local", "{}", dry.text);
    assert_eq!(
        local["report"]["deleted"],
        serde_json::json!([first, second]),
        "{}",
        dry.text
    );
    assert_eq!(local["report"]["kept"][0]["snapshotId"], third.as_str());
    assert_eq!(
        local["report"]["kept"][0]["reasons"],
        serde_json::json!(["latest"])
    );
    assert_eq!(snapshots(&repo).len(), 3);
    let packs_before = walk_files(&repo.join("data")).len();

    // The CLI's dry run agrees.
    let token = mesh.create_token("operator");
    let (ok, out, err) = mesh.cli(&token, &["retention", "enforce", "--dry-run"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("2 snapshots and 0 WAL segments would be deleted"),
        "{out}"
    );

    // The real run: the two go, their records say EXPIRED, the scan's packs are freed.
    let done = mesh.post(&format!("{RETENTION}/enforce-policies"), None);
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.body["deleted"], 2, "{}", done.text);
    assert_eq!(snapshots(&repo), std::slice::from_ref(&third));
    let freed = done.body["bytesFreed"].as_u64().unwrap();
    assert!(freed >= 16 << 20, "{}", done.text);
    assert!(walk_files(&repo.join("data")).len() < packs_before);
    for id in [&first, &second] {
        let rec = mesh.get(&format!("{DOCS}/backups/{id}"));
        assert_eq!(rec.body["status"], "EXPIRED", "{}", rec.text);
    }
    // What is left verifies and restores whole.
    let v = mesh.post(&format!("{DOCS}/backups/{third}/verify"), None);
    assert!(v.status == 202 || v.status == 200, "{}", v.text);
    let verdict = wait_for(Duration::from_secs(60), || {
        let b = mesh.get(&format!("{DOCS}/backups/{third}"));
        let v = &b.body["verification"];
        (v.is_object() && v["status"] != "IN_PROGRESS").then(|| v.clone())
    })
    .expect("verification ends");
    assert_eq!(verdict["status"], "PASSED", "{verdict}");

    // Idempotent.
    let again = mesh.post(&format!("{RETENTION}/enforce-policies"), None);
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["deleted"], 0, "{}", again.text);
    let (ok, out, err) = mesh.cli(&token, &["retention", "show"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("documents  full backups 1s"), "{out}");
}

#[test]
fn the_schedule_enforces_the_policies_by_itself() {
    let mesh = Mesh::start_with(
        200,
        &format!("[retention]\nschedule = \"* * * * *\"\n{ONE_SECOND}"),
    );
    let (_uploads, repo, _agent) = documents_agent(&mesh);
    let p = mesh.get(&format!("{RETENTION}/policies"));
    assert_eq!(p.body["schedule"], "* * * * *", "{}", p.text);
    let first = backup(&mesh);
    let second = backup(&mesh);
    // The next minute's run (the scheduler looks every 20 s) removes the older one; its
    // record says so once every agent has answered.
    let done = wait_for(Duration::from_secs(110), || {
        let rec = mesh.get(&format!("{DOCS}/backups/{first}"));
        (snapshots(&repo) == std::slice::from_ref(&second)
            && rec.body["status"] == "EXPIRED"
            && mesh
                .coordinator_log()
                .contains("scheduled retention enforcement done"))
        .then_some(())
    });
    assert!(done.is_some(), "not enforced:\n{}", mesh.coordinator_log());
}

#[test]
fn a_database_backup_running_while_enforcement_and_gc_run_both_finish_and_everything_verifies() {
    use super::database::{agent_and_full_backup, database_sections, wait_backup, Fixture, DB};
    let fx = Fixture::new("5s");
    fx.pgbench(&["-i", "-s", "10", "-q"]);
    let policy = "[retention]\nschedule = \"off\"\n[retention.database]\nfull = \"1s\"\nincremental = \"1s\"\nweekly = 0\nmonthly = 0\nyearly = 0\n";
    let mesh = Mesh::start_with(200, policy);
    let sections = database_sections(&fx.root, &fx.primary, "5s");
    let (agent, _, first, _) = agent_and_full_backup(&fx, &mesh, &sections, None);
    let done = wait_backup(&mesh, &first);
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", agent.log_text());
    fx.pgbench(&["-T", "1"]);
    let start = |mesh: &Mesh| {
        let a = mesh.post(&format!("{DB}/backup/full"), None);
        assert_eq!(a.status, 202, "{}", a.text);
        a.body["backupId"].as_str().unwrap().to_string()
    };
    let second = start(&mesh);
    assert_eq!(wait_backup(&mesh, &second)["status"], "COMPLETED");
    fx.pgbench(&["-T", "1"]);
    std::thread::sleep(Duration::from_millis(1100));

    // A third backup runs while the policies are enforced and garbage is collected.
    let third = start(&mesh);
    let enforced = mesh.post(&format!("{RETENTION}/enforce-policies"), None);
    assert_eq!(enforced.status, 200, "{}", enforced.text);
    let report = &enforced.body["agents"][0]["repositories"][0];
    assert_eq!(report["repository"], "database", "{}", enforced.text);
    assert_eq!(
        report["report"]["deleted"],
        serde_json::json!([first]),
        "{}",
        enforced.text
    );
    assert!(report["report"]["gcError"].is_null(), "{}", enforced.text);
    let done = wait_backup(&mesh, &third);
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", agent.log_text());

    // Again, with the third done: the second goes too; then every snapshot left
    // verifies, reading all its data and WAL.
    let again = mesh.post(&format!("{RETENTION}/enforce-policies"), None);
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(
        again.body["agents"][0]["repositories"][0]["report"]["deleted"],
        serde_json::json!([second]),
        "{}",
        again.text
    );
    let repo = fx.root.join("repo");
    assert_eq!(snapshots(&repo), std::slice::from_ref(&third));
    let out = std::process::Command::new(drmesh_tests::bin("drmesh"))
        .args(["repo", "verify", &third, "--read-data", "--output", "json"])
        .arg("--repo")
        .arg(&repo)
        .env_remove("DRMESH_REPO_KEY_FILE")
        .env_remove("DRMESH_REPO_PASSPHRASE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for id in [&first, &second] {
        let rec = mesh.get(&format!("{DB}/backups/{id}"));
        assert_eq!(rec.body["status"], "EXPIRED", "{}", rec.text);
    }
    // The third's own WAL is still archived: a verification restores and recovers it.
    let v = mesh.post(
        &format!("/v1/backup-recovery/verification/verify/{third}"),
        None,
    );
    assert_eq!(v.status, 202, "{}", v.text);
    let verdict = wait_for(Duration::from_secs(180), || {
        let a = mesh.get(&format!("/v1/backup-recovery/verification/{third}"));
        (a.status == 200 && a.body["status"] != "IN_PROGRESS").then_some(a.body)
    })
    .expect("verification ends");
    assert_eq!(verdict["status"], "COMPLETED", "{verdict}");
    assert_eq!(verdict["restorabilityTest"], "Restorable", "{verdict}");
}

#[test]
fn a_repository_filesystem_past_the_threshold_raises_storage_full_naming_the_cure() {
    // Any real filesystem is at least 1% full.
    let mut mesh = Mesh::start_with(200, "storage_full_percent = 1\n");
    let (_uploads, _repo, _agent) = documents_agent(&mesh);
    let alerts = "/v1/backup-recovery/monitoring/alerts?severity=CRITICAL";
    let raised = wait_for(Duration::from_secs(30), || {
        let a = mesh.get(alerts);
        a.body["alerts"]
            .as_array()?
            .iter()
            .find(|x| x["type"] == "STORAGE_FULL")
            .cloned()
    })
    .unwrap_or_else(|| panic!("no STORAGE_FULL alert: {}", mesh.get(alerts).text));
    assert_eq!(raised["source"], "docs-1/local", "{raised}");
    assert_eq!(raised["region"], "us-west-2", "{raised}");
    let message = raised["message"].as_str().unwrap();
    assert!(
        message.starts_with("Storage Full: the local repository of agent docs-1"),
        "{message}"
    );
    assert!(message.contains("retention/enforce-policies"), "{message}");

    // With the threshold at 100% it is resolved by the system.
    let config = mesh.dir.path().join("coordinator.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("storage_full_percent = 1\n", "storage_full_percent = 100\n"),
    )
    .unwrap();
    mesh.restart_coordinator();
    let resolved = wait_for(Duration::from_secs(30), || {
        let a = mesh.get("/v1/backup-recovery/monitoring/alerts");
        let open = a.body["alerts"]
            .as_array()?
            .iter()
            .any(|x| x["type"] == "STORAGE_FULL" && x["status"] != "RESOLVED");
        (!open).then_some(())
    });
    assert!(
        resolved.is_some(),
        "{}",
        mesh.get("/v1/backup-recovery/monitoring/alerts").text
    );
}

#[test]
fn a_repository_s_own_policy_replaces_the_coordinator_s_for_it() {
    let mesh = Mesh::start_with(
        200,
        &format!("[retention]\nschedule = \"off\"\n{ONE_SECOND}"),
    );
    // The agent keeps its document snapshots a day, whatever the coordinator says.
    let (_uploads, repo, agent) = documents_agent_with(
        &mesh,
        "",
        "[documents.retention]\nfull = \"1d\"\nincremental = \"1d\"\n",
    );
    let first = backup(&mesh);
    let second = backup(&mesh);
    std::thread::sleep(Duration::from_millis(1500));
    let enforced = mesh.post(&format!("{RETENTION}/enforce-policies"), None);
    assert_eq!(enforced.status, 200, "{}", enforced.text);
    let r = &enforced.body["agents"][0]["repositories"][0];
    assert_eq!(r["policy"]["full"], "1day", "{}", enforced.text);
    assert_eq!(
        r["report"]["deleted"],
        serde_json::json!([]),
        "{}",
        enforced.text
    );
    assert_eq!(snapshots(&repo), [first, second], "{}", agent.log_text());
}

#[test]
fn a_plan_s_own_policy_replaces_the_coordinator_s_for_the_agents_of_its_regions() {
    let mesh = Mesh::start_with(
        200,
        &format!("[retention]\nschedule = \"off\"\n{ONE_SECOND}"),
    );
    let (_uploads, repo, agent) = documents_agent(&mesh);
    let plan = mesh.post(
        "/v1/backup-recovery/disaster-recovery/plans",
        Some(
            r#"{"id": "docs_plan", "name": "Documents", "rpo": "1h", "rto": "4h",
                "failoverRegions": ["us-west-2"],
                "retention": {"documents": {"full": "1d", "incremental": "1d"}}}"#,
        ),
    );
    assert_eq!(plan.status, 201, "{}", plan.text);
    assert_eq!(
        plan.body["retention"]["documents"]["full"], "1day",
        "{}",
        plan.text
    );
    let first = backup(&mesh);
    let second = backup(&mesh);
    std::thread::sleep(Duration::from_millis(1500));
    let enforced = mesh.post(&format!("{RETENTION}/enforce-policies"), None);
    assert_eq!(enforced.status, 200, "{}", enforced.text);
    let a = &enforced.body["agents"][0];
    assert_eq!(a["planId"], "docs_plan", "{}", enforced.text);
    assert_eq!(
        a["repositories"][0]["report"]["deleted"],
        serde_json::json!([]),
        "{}",
        enforced.text
    );
    assert_eq!(snapshots(&repo), [first, second], "{}", agent.log_text());
}

/// A plan's retention can delete backups, so only an administrator sets, changes or
/// removes it; an operator still edits the rest of such a plan.
#[test]
fn an_operator_cannot_set_change_or_drop_a_plan_s_retention() {
    let mesh = Mesh::start_with(200, "regions = [\"us-west-2\"]\n");
    let operator = mesh.create_token("operator");
    let plans = "/v1/backup-recovery/disaster-recovery/plans";
    let body = |rto: &str, full: Option<&str>| {
        let retention = full.map_or(String::new(), |f| {
            format!(r#", "retention": {{"documents": {{"full": "{f}", "incremental": "{f}"}}}}"#)
        });
        format!(
            r#"{{"id": "kept", "name": "Kept", "rpo": "1h", "rto": "{rto}", "failoverRegions": ["us-west-2"]{retention}}}"#
        )
    };
    let as_operator = |method: &str, path: &str, b: Option<&str>| {
        drmesh_tests::http(method, &mesh.url(path), Some(&operator), b)
    };
    let refused = as_operator("POST", plans, Some(&body("4h", Some("1s"))));
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(
        mesh.get(&format!("{plans}/kept")).status,
        404,
        "a refused plan was made"
    );

    let made = mesh.post(plans, Some(&body("4h", Some("30d"))));
    assert_eq!(made.status, 201, "{}", made.text);
    let path = format!("{plans}/kept");
    // The same policy with another RTO: the operator's to change.
    let edited = as_operator("PUT", &path, Some(&body("2h", Some("30d"))));
    assert_eq!(edited.status, 200, "{}", edited.text);
    for (what, b) in [
        ("shortened", body("2h", Some("1s"))),
        ("dropped", body("2h", None)),
    ] {
        let a = as_operator("PUT", &path, Some(&b));
        assert_eq!(a.status, 403, "{what}: {}", a.text);
    }
    let a = as_operator("DELETE", &path, None);
    assert_eq!(a.status, 403, "{}", a.text);
    let kept = mesh.get(&path);
    assert_eq!(
        kept.body["retention"]["documents"]["full"], "30days",
        "{}",
        kept.text
    );
    assert_eq!(kept.body["rto"], "2h", "{}", kept.text);
}
