//! DR tests (the runbook's "Automated DR Testing") on two regions of real clusters: the
//! five steps on the agent of the plan's first failover region, the measured RTO against
//! the plan's, production untouched (its replication and its WAL archive), nothing left
//! behind, and the HIGH alert when the plan's RTO cannot be met.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use drmesh_pg::local::prepare_parent_dir;
use drmesh_tests::regions::{two_regions_opts, Options, STATUS};
use drmesh_tests::{bin, wait_for, Mesh};
use serde_json::Value;

use super::database::{wait_backup, DB};

const TEST: &str = "/v1/backup-recovery/disaster-recovery/test";

/// Every file under the repository's `wal/`, relative to it.
fn archived(repo: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else if let Ok(rel) = p.strip_prefix(base) {
                out.insert(rel.display().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&repo.join("wal"), &repo.join("wal"), &mut out);
    out
}

fn wait_test(mesh: &Mesh, plan: &str) -> Value {
    wait_for(Duration::from_secs(240), || {
        let a = mesh.get(&format!("{TEST}/{plan}"));
        assert_eq!(a.status, 200, "{}", a.text);
        (a.body["status"] != "IN_PROGRESS").then_some(a.body)
    })
    .unwrap_or_else(|| panic!("the DR test of {plan} did not finish"))
}

#[test]
fn drtest_restores_on_the_failover_region_without_touching_production() {
    let mut t = two_regions_opts(Options::default());
    // The failover region's agent runs an application smoke test that takes over a second,
    // so the 1 s RTO below cannot be met however fast the restore is.
    let east_config = t.mesh.dir.path().join("agent-db-east.toml");
    let mut text = std::fs::read_to_string(&east_config).expect("east config");
    text.push_str(
        "[[database.smoke_checks]]\nsql = \"select count(*) from dr_items, pg_sleep(1.2)\"\nexpect = \"500\"\n",
    );
    std::fs::write(&east_config, text).expect("east config");
    t.agents[1].kill9();
    t.agents[1] = t.mesh.spawn_agent(&east_config);
    let mesh = &t.mesh;
    // Production archives its WAL into the repository both agents share.
    let repo = mesh.dir.path().join("pg").join("repo");
    std::fs::create_dir_all(&repo).expect("repo dir");
    prepare_parent_dir(&repo).expect("repo owned by postgres");
    t.primary
        .append_config(
            "postgresql.conf",
            &format!(
                "archive_mode = on\narchive_command = '{} --config {} wal-push %p'\n",
                bin("drmesh-agent").display(),
                mesh.dir.path().join("agent-db-west.toml").display()
            ),
        )
        .expect("archive settings");
    t.primary.stop().expect("stop primary");
    t.primary.start().expect("start primary");
    t.primary
        .wait_ready(Duration::from_secs(30))
        .expect("primary ready");
    t.primary
        .psql("create table dr_items (id int primary key, note text); insert into dr_items select g, 'n' || g from generate_series(1, 500) g")
        .expect("data");
    let replication = || {
        t.primary
            .psql("select coalesce(string_agg(application_name || ':' || state, ',' order by application_name), '') from pg_stat_replication")
            .expect("pg_stat_replication")
    };
    let streaming = wait_for(Duration::from_secs(30), || {
        let r = replication();
        r.ends_with(":streaming").then_some(r)
    });
    assert!(
        streaming.is_some(),
        "the standby streams again: {}",
        replication()
    );

    // No backup yet: nothing to restore.
    let none = mesh.post(&format!("{TEST}/production_dr_plan"), None);
    assert_eq!(none.status, 503, "{}", none.text);
    assert_eq!(mesh.post(&format!("{TEST}/no_such_plan"), None).status, 404);

    let accepted = wait_for(Duration::from_secs(30), || {
        let a = mesh.post(&format!("{DB}/backup/full"), None);
        (a.status != 503).then_some(a)
    })
    .expect("a backup accepted");
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    let backup = accepted.body["backupId"].as_str().expect("id").to_string();
    let done = wait_backup(mesh, &backup);
    assert_eq!(done["status"], "COMPLETED", "{done}");

    let repl_before = replication();
    let wal_before = archived(&repo);
    let archiver = || {
        t.primary
            .psql("select archived_count || ' ' || failed_count from pg_stat_archiver")
            .expect("pg_stat_archiver")
    };
    let archiver_before = archiver();

    let a = mesh.post(&format!("{TEST}/production_dr_plan"), None);
    assert_eq!(a.status, 202, "{}", a.text);
    assert_eq!(a.body["status"], "IN_PROGRESS", "{}", a.text);
    assert_eq!(a.body["planId"], "production_dr_plan");
    assert_eq!(a.body["targetRegion"], "us-east-1", "{}", a.text);
    assert_eq!(a.body["agentId"], "db-east", "{}", a.text);
    assert_eq!(a.body["backupId"], backup.as_str(), "{}", a.text);
    let id = a.body["testId"].as_str().expect("testId").to_string();
    let again = mesh.post(&format!("{TEST}/production_dr_plan"), None);
    assert_eq!(again.status, 409, "one at a time per plan: {}", again.text);
    let shown = mesh.get(STATUS).body;
    assert_eq!(shown["drTest"]["testId"], id.as_str(), "{shown}");

    let r = wait_test(mesh, "production_dr_plan");
    assert_eq!(r["testId"], id.as_str());
    assert_eq!(r["status"], "COMPLETED", "{r}\n{}", mesh.coordinator_log());
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 5, "{r}");
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s["number"], i + 1, "{r}");
        assert_eq!(s["status"], "DONE", "{r}");
        for field in ["startedAt", "endedAt", "durationMs"] {
            assert!(!s[field].is_null(), "{field} of step {} in {r}", i + 1);
        }
    }
    let rto = r["measuredRtoMs"].as_u64().expect("measured RTO");
    assert!(rto > 0 && rto < 4 * 3600 * 1000, "{r}");
    assert_eq!(r["planRtoSeconds"], 4 * 3600);
    assert_eq!(r["rtoMet"], true, "{r}");
    let smoke = r["smokeChecks"].as_array().expect("smokeChecks");
    assert!(
        smoke.iter().any(
            |c| c["name"].as_str().is_some_and(|n| n.contains("dr_items")) && c["passed"] == true
        ),
        "{r}"
    );
    // The RTO ends with the smoke tests: after step 2, before step 4 ends.
    let consistency = &steps[3]["message"];
    assert!(
        consistency
            .as_str()
            .is_some_and(|m| m.contains("row counts")),
        "{r}"
    );
    let status = mesh.get(STATUS).body;
    assert_eq!(status["drTest"]["testId"], id.as_str(), "{status}");
    assert_eq!(status["drTest"]["status"], "COMPLETED", "{status}");
    // lifecycle-stats shows the plan's last DR test with its per-step timings and its
    // measured RTO against the plan's.
    let stats = mesh.get("/v1/backup-recovery/verification/lifecycle-stats");
    assert_eq!(stats.status, 200, "{}", stats.text);
    let last = stats.body["lastDrTests"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["planId"] == "production_dr_plan"))
        .unwrap_or_else(|| panic!("no last DR test in {}", stats.text))
        .clone();
    assert_eq!(last["testId"], id.as_str(), "{last}");
    assert_eq!(last["withinRto"], true, "{last}");
    assert!(last["measuredRtoSeconds"].as_f64().is_some(), "{last}");
    let timed = last["steps"]
        .as_array()
        .map_or(0, |s| s.iter().filter(|s| s["durationMs"].is_u64()).count());
    assert_eq!(timed, 5, "per-step timings: {last}");

    // Production untouched: the same replication, no WAL but production's own timeline
    // archived meanwhile (the copy took a new timeline and would have archived it), no
    // archiving failure.
    assert_eq!(replication(), repl_before);
    let wal_after = archived(&repo);
    assert!(wal_after.is_superset(&wal_before), "archive lost files");
    let new: Vec<&String> = wal_after.difference(&wal_before).collect();
    assert!(
        new.iter()
            .all(|f| f.starts_with("00000001/") && !f.contains(".history")),
        "files archived by the DR test: {new:?}"
    );
    let (count_before, failed_before) = archiver_before.split_once(' ').expect("two");
    let after = archiver();
    let (count_after, failed_after) = after.split_once(' ').expect("two");
    assert_eq!(failed_after, failed_before, "archiving failures");
    assert!(
        count_after.parse::<u64>().expect("n") - count_before.parse::<u64>().expect("n")
            <= new.len() as u64,
        "{archiver_before} -> {after}, new {new:?}"
    );
    assert!(
        !wal_after
            .iter()
            .any(|f| !f.starts_with("00000001/") && f.contains('/')),
        "another timeline archived: {wal_after:?}"
    );
    // Nothing left behind: no throw-away directory, no server.
    let scratch = mesh.dir.path().join("verify");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    let servers = drmesh_tests::processes_mentioning(&scratch.display().to_string());
    assert!(servers.is_empty(), "servers left: {servers:?}");

    // A plan whose RTO no restore can meet: the test passes its steps, the RTO does not.
    let plan = mesh.post(
        "/v1/backup-recovery/disaster-recovery/plans",
        Some(
            r#"{"id": "fast_rto_plan", "name": "Fast", "rpo": "1h", "rto": "1s",
                "failoverRegions": ["us-east-1"]}"#,
        ),
    );
    assert_eq!(plan.status, 201, "{}", plan.text);
    let (ok, out, err) = mesh.cli(&mesh.admin_token, &["drtest", "fast_rto_plan", "--wait"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("EXCEEDS plan RTO 1 s"), "{out}");
    for step in [
        "1. Create isolated test environment",
        "5. Cleanup test environment",
    ] {
        assert!(out.contains(step), "{out}");
    }
    let r = wait_test(mesh, "fast_rto_plan");
    assert_eq!(r["status"], "COMPLETED", "{r}");
    assert_eq!(r["rtoMet"], false, "{r}");
    let alerts = mesh.get("/v1/backup-recovery/monitoring/alerts?severity=HIGH");
    let alert = alerts.body["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "DR_TEST_RTO_EXCEEDED")
        .unwrap_or_else(|| panic!("no DR_TEST_RTO_EXCEEDED alert: {}", alerts.text));
    assert_eq!(alert["source"], "fast_rto_plan", "{alert}");
    assert!(
        alert["message"]
            .as_str()
            .is_some_and(|m| m.contains("fast_rto_plan")),
        "{alert}"
    );
    let (ok, out, err) = mesh.cli(&mesh.admin_token, &["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("DR test drtest_"), "{out}");
    assert!(out.contains("fast_rto_plan"), "{out}");
}
