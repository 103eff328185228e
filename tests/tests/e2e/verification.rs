//! Database backup verification through the runbook's endpoints, on real clusters: the
//! three verdicts, the restorability test's throw-away server and directory, damage
//! named, alerts, and cleanup after a `kill -9`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drmesh_tests::{wait_for, Mesh};
use serde_json::Value;

use super::database::{agent_and_full_backup, database_sections, drmesh, wait_backup, Fixture, DB};

const VERIFY: &str = "/v1/backup-recovery/verification";

/// Polls the newest verification of `backup` until it leaves IN_PROGRESS.
fn wait_verification(mesh: &Mesh, backup: &str) -> Value {
    wait_for(Duration::from_secs(240), || {
        let a = mesh.get(&format!("{VERIFY}/{backup}"));
        assert_eq!(a.status, 200, "{}", a.text);
        (a.body["status"] != "IN_PROGRESS").then_some(a.body)
    })
    .unwrap_or_else(|| panic!("verification of {backup} did not finish"))
}

fn start_verification(mesh: &Mesh, backup: &str) -> String {
    let a = mesh.post(&format!("{VERIFY}/verify/{backup}"), None);
    assert_eq!(a.status, 202, "{}", a.text);
    assert_eq!(a.body["status"], "IN_PROGRESS", "{}", a.text);
    assert_eq!(a.body["backupId"], backup, "{}", a.text);
    a.body["verificationId"]
        .as_str()
        .expect("verificationId")
        .to_string()
}

/// Whether `pid` is a live PostgreSQL process.
fn is_postgres(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("postgres"))
        .unwrap_or(false)
}

/// PostgreSQL processes whose command line or data directory is under `dir`.
fn servers_under(dir: &Path) -> Vec<(u32, String)> {
    drmesh_tests::processes_mentioning(&dir.display().to_string())
}

fn largest_pack(repo: &Path) -> PathBuf {
    let mut packs: Vec<(u64, PathBuf)> = Vec::new();
    for sub in std::fs::read_dir(repo.join("data"))
        .expect("data dir")
        .flatten()
    {
        for p in std::fs::read_dir(sub.path()).expect("pack dir").flatten() {
            packs.push((p.metadata().expect("meta").len(), p.path()));
        }
    }
    packs.sort();
    packs.pop().expect("a pack").1
}

fn critical_alerts(mesh: &Mesh) -> String {
    mesh.get("/v1/backup-recovery/monitoring/alerts?severity=CRITICAL")
        .text
}

fn smoke_check_sections(fx: &Fixture, extra: &str) -> String {
    format!(
        "{}[[database.smoke_checks]]\nsql = \"select count(*) from pgbench_branches\"\nexpect = \"1\"\n{extra}",
        database_sections(&fx.root, &fx.primary, "10s")
    )
}

#[test]
fn verification_passes_a_healthy_backup_and_names_a_flipped_byte_and_a_missing_segment() {
    let fx = Fixture::new("10s");
    fx.pgbench(&["-i", "-s", "1", "-q"]);
    fx.primary
        .psql("create table verify_notes (id serial primary key, note text); insert into verify_notes (note) select 'n' || g from generate_series(1, 250) g")
        .expect("table");
    let mesh = Mesh::start(200);
    let (mut agent, _, id, _) =
        agent_and_full_backup(&fx, &mesh, &smoke_check_sections(&fx, ""), None);
    let done = wait_backup(&mesh, &id);
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", agent.log_text());

    assert_eq!(
        mesh.post(&format!("{VERIFY}/verify/full_0_nope"), None)
            .status,
        404
    );
    assert_eq!(mesh.get(&format!("{VERIFY}/{id}")).status, 404);

    // Healthy: three verdicts pass, VERIFIED, and nothing left behind.
    let vid = start_verification(&mesh, &id);
    assert_eq!(
        mesh.post(&format!("{VERIFY}/verify/{id}"), None).status,
        409,
        "a second verification while one runs"
    );
    let v = wait_verification(&mesh, &id);
    assert_eq!(v["verificationId"], vid.as_str());
    assert_eq!(v["status"], "COMPLETED", "{v}\n{}", agent.log_text());
    assert_eq!(v["checksumVerification"], "PASSED", "{v}");
    assert_eq!(v["fileAccessibility"], "Accessible", "{v}");
    assert_eq!(v["restorabilityTest"], "Restorable", "{v}");
    for field in ["startedAt", "completedAt", "durationMs"] {
        assert!(!v[field].is_null(), "{field} in {v}");
    }
    for phase in ["checksumMs", "restoreMs", "recoveryMs", "checksMs"] {
        assert!(v["timings"][phase].is_u64(), "{phase} in {v}");
    }
    let checks = v["smokeChecks"].as_array().expect("smokeChecks");
    let named = |n: &str| {
        checks
            .iter()
            .find(|c| c["name"].as_str().is_some_and(|s| s.starts_with(n)))
            .unwrap_or_else(|| panic!("no {n} check in {v}"))
    };
    assert_eq!(
        named("sql: select count(*) from pgbench_branches")["passed"],
        true,
        "{v}"
    );
    let counts = named("row counts");
    assert_eq!(counts["passed"], true, "{v}");
    assert!(
        counts["detail"]
            .as_str()
            .unwrap_or("")
            .contains("tables match"),
        "{v}"
    );
    assert_eq!(named("amcheck")["passed"], true, "{v}");
    assert_eq!(
        mesh.get(&format!("{DB}/backups/{id}")).body["status"],
        "VERIFIED"
    );
    let scratch = fx.root.join("verify");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        servers_under(&scratch).is_empty(),
        "a throw-away server still runs: {:?}",
        servers_under(&scratch)
    );

    // One flipped byte in a stored pack: checksum FAILED naming the file, an alert.
    let repo = fx.root.join("repo");
    let pack = largest_pack(&repo);
    let original = std::fs::read(&pack).expect("read pack");
    let mut damaged = original.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x01;
    std::fs::write(&pack, &damaged).expect("damage pack");
    start_verification(&mesh, &id);
    let v = wait_verification(&mesh, &id);
    assert_eq!(v["status"], "FAILED", "{v}");
    assert_eq!(v["checksumVerification"], "FAILED", "{v}");
    let details = v["details"].to_string();
    let pack_name = pack.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        v["details"].as_array().is_some_and(|d| d.iter().any(
            |x| x["check"] == "checksum" && x["object"].as_str().is_some_and(|o| !o.is_empty())
        )),
        "{v}"
    );
    assert!(details.contains(&pack_name), "the pack is named: {v}");
    assert_eq!(
        mesh.get(&format!("{DB}/backups/{id}")).body["status"],
        "COMPLETED",
        "a failed verification takes VERIFIED back"
    );
    let alerts = critical_alerts(&mesh);
    assert!(
        alerts.contains("VERIFICATION_FAILED") && alerts.contains(&id),
        "{alerts}"
    );
    std::fs::write(&pack, &original).expect("repair pack");
    assert!(
        std::fs::read_dir(&scratch)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "the throw-away directory is gone after a failure too"
    );

    // A WAL segment needed for consistency deleted: named, and an alert.
    let a = mesh.post(&format!("{DB}/backup/full"), None);
    assert_eq!(a.status, 202, "{}", a.text);
    let second = a.body["backupId"].as_str().expect("id").to_string();
    let done = wait_backup(&mesh, &second);
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let segment = done["outcome"]["startWal"]
        .as_str()
        .expect("startWal")
        .to_string();
    let wal = repo.join("wal/00000001").join(&segment);
    assert!(wal.exists(), "{} is archived", wal.display());
    std::fs::remove_file(&wal).expect("delete segment");
    start_verification(&mesh, &second);
    let v = wait_verification(&mesh, &second);
    assert_eq!(v["status"], "FAILED", "{v}");
    assert_eq!(v["fileAccessibility"], "Inaccessible", "{v}");
    assert_eq!(v["restorabilityTest"], "NotRestorable", "{v}");
    assert!(v["details"].to_string().contains(&segment), "{v}");
    let alerts = critical_alerts(&mesh);
    assert!(alerts.contains(&second), "{alerts}");
    assert!(servers_under(&scratch).is_empty());
    agent.kill9();
}

#[test]
fn verification_interrupted_by_kill_9_is_cleaned_up_when_the_agent_restarts() {
    let fx = Fixture::new("10s");
    fx.pgbench(&["-i", "-s", "1", "-q"]);
    let mesh = Mesh::start(200);
    // A smoke check that holds the throw-away server up long enough to kill the agent.
    let slow = "[[database.smoke_checks]]\nsql = \"select pg_sleep(60)\"\nexpect = \"\"\n";
    let (mut agent, config, id, _) =
        agent_and_full_backup(&fx, &mesh, &smoke_check_sections(&fx, slow), None);
    assert_eq!(wait_backup(&mesh, &id)["status"], "COMPLETED");
    let vid = start_verification(&mesh, &id);
    let dir = fx.root.join("verify").join(&vid);
    let pid_file = dir.join("pgdata/postmaster.pid");
    let pid = wait_for(Duration::from_secs(120), || {
        let text = std::fs::read_to_string(&pid_file).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        let v = mesh.get(&format!("{VERIFY}/{id}")).body;
        (is_postgres(pid) && v["progressMessage"] == "smoke checks").then_some(pid)
    })
    .unwrap_or_else(|| {
        panic!(
            "the throw-away server did not come up:\n{}",
            agent.log_text()
        )
    });

    // The agent and its verification process die together.
    let children: Vec<u32> = drmesh_tests::processes_mentioning(&vid)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("drmesh-agent"))
        .map(|(p, _)| p)
        .collect();
    assert!(!children.is_empty(), "no verification process");
    agent.kill9();
    for p in children {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(dir.exists(), "the directory is left behind by the kill");
    assert!(is_postgres(pid), "the server is left running by the kill");

    // On restart the agent stops the server and removes the directory.
    let agent = mesh.spawn_agent(&config);
    // The log line comes just after the removal: waited for too.
    let cleaned = wait_for(Duration::from_secs(30), || {
        (!dir.exists()
            && !is_postgres(pid)
            && agent.log_text().contains("leftover verification directory"))
        .then_some(())
    });
    assert!(
        cleaned.is_some(),
        "leftover not cleaned up, or not logged (dir there: {}, server running: {}):\n{}",
        dir.exists(),
        is_postgres(pid),
        agent.log_text()
    );
    let v = wait_verification(&mesh, &id);
    assert_eq!(v["status"], "FAILED", "{v}");
}

#[test]
fn verification_verify_all_verifies_each_backup_once_and_lifecycle_stats_sum_up() {
    let fx = Fixture::new("10s");
    fx.pgbench(&["-i", "-s", "1", "-q"]);
    let mesh = Mesh::start(200);
    let (mut agent, _, first, _) =
        agent_and_full_backup(&fx, &mesh, &smoke_check_sections(&fx, ""), None);
    let done = wait_backup(&mesh, &first);
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", agent.log_text());
    let a = mesh.post(&format!("{DB}/backup/full"), None);
    assert_eq!(a.status, 202, "{}", a.text);
    let second = a.body["backupId"].as_str().expect("id").to_string();
    let done = wait_backup(&mesh, &second);
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", agent.log_text());
    assert_eq!(mesh.get(&format!("{VERIFY}/verify-all")).status, 404);

    // Both queued, newest first, one at a time (verify_concurrency's default).
    let a = mesh.post(&format!("{VERIFY}/verify-all"), None);
    assert_eq!(a.status, 202, "{}", a.text);
    assert_eq!(a.body["status"], "IN_PROGRESS", "{}", a.text);
    assert_eq!(
        a.body["queued"],
        serde_json::json!([second, first]),
        "{}",
        a.text
    );
    assert_eq!(a.body["skipped"], serde_json::json!([]), "{}", a.text);
    assert_eq!(a.body["concurrency"], 1, "{}", a.text);
    let run_id = a.body["runId"].as_str().expect("runId").to_string();
    let again = mesh.post(&format!("{VERIFY}/verify-all"), None);
    assert_eq!(
        again.status, 409,
        "a second run while one runs: {}",
        again.text
    );
    let run = wait_for(Duration::from_secs(480), || {
        let r = mesh.get(&format!("{VERIFY}/verify-all/{run_id}"));
        assert_eq!(r.status, 200, "{}", r.text);
        let t = &r.body["totals"];
        let started = t["running"].as_u64().unwrap_or(0) - t["waiting"].as_u64().unwrap_or(0);
        assert!(started <= 1, "more than one at a time: {}", r.text);
        (r.body["status"] == "COMPLETED").then_some(r.body)
    })
    .unwrap_or_else(|| panic!("verify-all did not finish:\n{}", agent.log_text()));
    let totals = &run["totals"];
    for (k, n) in [
        ("queued", 2),
        ("passed", 2),
        ("failed", 0),
        ("running", 0),
        ("skipped", 0),
    ] {
        assert_eq!(totals[k], n, "{k} in {run}");
    }
    assert!(!run["completedAt"].is_null(), "{run}");
    for r in run["results"].as_array().expect("results") {
        assert_eq!(r["status"], "COMPLETED", "{run}");
        assert_eq!(r["checksumVerification"], "PASSED", "{run}");
        assert_eq!(r["fileAccessibility"], "Accessible", "{run}");
        assert_eq!(r["restorabilityTest"], "Restorable", "{run}");
    }
    for id in [&first, &second] {
        assert_eq!(
            mesh.get(&format!("{DB}/backups/{id}")).body["status"],
            "VERIFIED"
        );
    }
    assert_eq!(
        mesh.get(&format!("{VERIFY}/verify-all")).body["runId"],
        run_id.as_str()
    );

    // Nothing changed since: both skipped as already verified, nothing to wait for.
    let a = mesh.post(&format!("{VERIFY}/verify-all"), None);
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "COMPLETED", "{}", a.text);
    assert_eq!(a.body["queued"], serde_json::json!([]), "{}", a.text);
    let skipped = a.body["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 2, "{}", a.text);
    for s in skipped {
        assert!(
            s["reason"]
                .as_str()
                .is_some_and(|r| r.contains("already verified")),
            "{}",
            a.text
        );
    }
    let (ok, out, err) = drmesh(&mesh, &["verify", "--all", "--wait", "--output", "json"]);
    assert!(ok, "{out}{err}");
    let cli_run: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(cli_run["totals"]["skipped"], 2, "{out}");
    assert_eq!(cli_run["status"], "COMPLETED", "{out}");

    // Lifecycle statistics.
    let s = mesh.get(&format!("{VERIFY}/lifecycle-stats"));
    assert_eq!(s.status, 200, "{}", s.text);
    let b = &s.body["backupsByStatus"];
    assert_eq!(
        (b["VERIFIED"].as_u64(), b["COMPLETED"].as_u64()),
        (Some(2), Some(0)),
        "{}",
        s.text
    );
    let week = &s.body["verificationPassRate7d"];
    assert_eq!(week["rate"], 1.0, "{}", s.text);
    assert_eq!(
        (week["passed"].as_u64(), week["finished"].as_u64()),
        (Some(2), Some(2)),
        "{}",
        s.text
    );
    assert_eq!(s.body["verificationPassRate30d"]["rate"], 1.0, "{}", s.text);
    let restore = &s.body["restoreTime"];
    assert_eq!(restore["samples"], 2, "{}", s.text);
    let mean = restore["meanMs"].as_u64().expect("meanMs");
    let max = restore["maxMs"].as_u64().expect("maxMs");
    assert!(mean > 0 && max >= mean, "{}", s.text);
    assert!(s.body["lastDrTests"].is_array(), "{}", s.text);
    assert!(s.body["rpo"].is_array(), "{}", s.text);
    let (ok, out, err) = drmesh(&mesh, &["stats", "--output", "json"]);
    assert!(ok, "{out}{err}");
    let cli_stats: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(cli_stats["backupsByStatus"]["VERIFIED"], 2, "{out}");
    let (ok, out, err) = drmesh(&mesh, &["stats"]);
    assert!(ok && out.contains("pass rate"), "{out}{err}");
    agent.kill9();
}
