//! Backups follow the primary, in namespaces: every region configured alike (one
//! encrypted repository, the same `archive_command`, a `staging` environment on every
//! agent — `FaultOptions::archive`), then failover → backup → point-in-time recovery to
//! a marker → failover back → backup → recovery to a marker. Each backup runs next to the
//! primary of the moment and each recovery lands exactly on its marker, across the
//! timelines both failovers made.

use std::time::Duration;

use drmesh_tests::faults::{FaultMesh, FaultOptions};
use drmesh_tests::wait_for;
use serde_json::Value;

use super::quickstart::{expected, marker, markers};

const BASE: &str = "/v1/backup-recovery";

fn failover(fm: &FaultMesh, region: &str) {
    // The standby there has caught up (right after a backup's WAL switch its lag in time
    // cannot be measured, and the RPO check would refuse it).
    let caught_up = wait_for(Duration::from_secs(30), || {
        let s = fm
            .mesh
            .get(&format!("{BASE}/disaster-recovery/status"))
            .body;
        s["regions"]
            .as_array()?
            .iter()
            .flat_map(|r| r["agents"].as_array().cloned().unwrap_or_default())
            .any(|a| {
                a["agentId"] == format!("db-{region}")
                    && a["role"] == "standby"
                    && a["replicationLagBytes"] == 0
            })
            .then_some(())
    });
    assert!(
        caught_up.is_some(),
        "the standby in {region} did not catch up"
    );
    let body = serde_json::json!({ "planId": "production_dr_plan", "targetRegion": region });
    let a = fm.mesh.post(
        &format!("{BASE}/disaster-recovery/failover"),
        Some(&body.to_string()),
    );
    assert_eq!(a.status, 202, "{}", a.text);
    let done = fm.failover_finished(Duration::from_secs(90));
    assert_eq!(done["failover"]["status"], "COMPLETED", "{done:#}");
    assert_eq!(done["primaryRegion"], region, "{done:#}");
    // Step 7 saw the new primary's WAL reach the repository.
    let step7 = done["failover"]["steps"][6]["message"]
        .as_str()
        .unwrap_or("");
    assert!(step7.contains("archiving confirmed"), "{step7}");
}

fn backup_next_to(fm: &FaultMesh, region: &str) {
    let a = fm
        .mesh
        .post(&format!("{BASE}/database/backup/full"), Some("{}"));
    assert_eq!(a.status, 202, "{}", a.text);
    let id = a.body["backupId"].as_str().unwrap().to_string();
    let done = wait_for(Duration::from_secs(120), || {
        let b = fm.mesh.get(&format!("{BASE}/database/backups/{id}")).body;
        (b["status"] != "IN_PROGRESS").then_some(b)
    })
    .unwrap_or_else(|| panic!("backup {id} did not finish"));
    assert_eq!(done["status"], "COMPLETED", "{done:#}");
    assert_eq!(done["agentId"], format!("db-{region}"), "{done:#}");
}

/// The runbook's recovery into `staging`; the markers of the recovered server, read in
/// the namespace of the agent that recovered it.
fn pitr(fm: &FaultMesh, instant: &str) -> Vec<String> {
    let body = serde_json::json!({ "targetTimestamp": instant, "targetEnvironment": "staging" });
    let a = fm.mesh.post(
        &format!("{BASE}/disaster-recovery/point-in-time-recovery"),
        Some(&body.to_string()),
    );
    assert_eq!(a.status / 100, 2, "{}", a.text);
    let id = a.body["recoveryId"].as_str().unwrap().to_string();
    let run: Value = wait_for(Duration::from_secs(180), || {
        let s = fm
            .mesh
            .get(&format!("{BASE}/disaster-recovery/status"))
            .body;
        let run = s["pointInTimeRecovery"].clone();
        (run["recoveryId"] == id.as_str()
            && !["INITIATED", "IN_PROGRESS"].contains(&run["status"].as_str().unwrap_or("")))
        .then_some(run)
    })
    .unwrap_or_else(|| {
        let logs: Vec<String> = (0..2)
            .map(|i| {
                let dir = fm.cluster(i).data_dir.parent().unwrap().to_path_buf();
                format!(
                    "{}: {}\n{}",
                    dir.display(),
                    std::fs::read_to_string(dir.join("staging.log")).unwrap_or_default(),
                    fm.agent_log(i)
                        .lines()
                        .filter(|l| l.contains("recover") || l.contains("pitr"))
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })
            .collect();
        panic!("recovery {id} did not finish:\n{}", logs.join("\n"))
    });
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    let agent = run["agentId"].as_str().unwrap();
    let region = agent.strip_prefix("db-").unwrap();
    let recovered = drmesh_pg::local::LocalCluster::open(
        &drmesh_pg::local::PgBin::find().unwrap(),
        "staging",
        std::path::Path::new(run["outcome"]["dataDirectory"].as_str().unwrap()),
        run["outcome"]["port"].as_u64().unwrap() as u16,
    )
    .unwrap();
    let labels = fm.topo.in_ns(region, || markers(&recovered));
    fm.topo
        .in_ns(region, || recovered.stop_immediate().unwrap());
    labels
}

#[test]
fn backups_and_recoveries_follow_the_primary_through_a_failover_and_back() {
    let fm = FaultMesh::start(FaultOptions {
        archive: true,
        automatic: false,
        synchronous: false,
        ..FaultOptions::default()
    });
    let (west, east) = (fm.cluster(0), fm.cluster(1));
    backup_next_to(&fm, "us-west-2");

    failover(&fm, "us-east-1");
    backup_next_to(&fm, "us-east-1");
    let t1 = marker(east, "one");
    assert_eq!(pitr(&fm, &t1), expected(&["one"]));

    let (ok, out, err) = fm.mesh.cli(&fm.mesh.admin_token, &["rejoin", "us-west-2"]);
    assert!(ok, "{out}\n{err}");
    failover(&fm, "us-west-2");
    backup_next_to(&fm, "us-west-2");
    let t2 = marker(west, "two");
    assert_eq!(pitr(&fm, &t2), expected(&["one", "two"]));
}
