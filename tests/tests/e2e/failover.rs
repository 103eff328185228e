//! Failover through the runbook's curl call, on real PostgreSQL clusters: a primary in
//! one region, its streaming standby in another, an agent next to each. The standby is
//! promoted only after the old primary's agent fenced it (stopped, `standby.signal`).

use std::time::Duration;

use drmesh_agent::postgres::local::{free_port, prepare_parent_dir, LocalCluster, PgBin};
use drmesh_tests::{wait_for, Mesh};
use serde_json::Value;

/// Stops every cluster on drop, whatever the test did.
struct Clusters(Vec<LocalCluster>);

impl Drop for Clusters {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = c.stop_immediate();
        }
    }
}

const FAILOVER: &str = "/v1/backup-recovery/disaster-recovery/failover";
const STATUS: &str = "/v1/backup-recovery/disaster-recovery/status";

/// A primary in us-west-2 and its standby in us-east-1, an agent next to each (both
/// seen UP with their roles), and the runbook's plan failing over to us-east-1.
struct TwoRegions {
    mesh: Mesh,
    primary: LocalCluster,
    standby: LocalCluster,
    epoch_before: u64,
    _agents: Vec<drmesh_tests::Proc>,
    // Last: the clusters stop after the agents.
    _clusters: Clusters,
}

fn two_regions() -> TwoRegions {
    two_regions_with(false)
}

fn two_regions_with(automatic: bool) -> TwoRegions {
    let pg = PgBin::find().unwrap_or_else(|e| {
        panic!("{e}: install PostgreSQL (apt-get install -y postgresql), or set DRMESH_PG_BIN")
    });
    let mesh = Mesh::start_with(200, r#"regions = ["us-west-2", "us-east-1", "eu-west-1"]"#);
    let root = mesh.dir.path().join("pg");
    std::fs::create_dir_all(&root).unwrap();
    prepare_parent_dir(&root).unwrap();
    let primary =
        LocalCluster::init_primary(&pg, "primary", &root.join("primary"), free_port().unwrap())
            .expect("initdb");
    let mut clusters = Clusters(vec![primary.clone()]);
    primary.start().expect("start primary");
    primary.wait_ready(Duration::from_secs(30)).expect("ready");
    primary
        .psql("create table orders (id int primary key); insert into orders values (1)")
        .expect("write");
    let standby = LocalCluster::init_standby(
        &pg,
        "standby",
        &primary,
        &root.join("standby"),
        free_port().unwrap(),
    )
    .expect("pg_basebackup");
    clusters.0.push(standby.clone());
    standby.start().expect("start standby");
    let replayed = wait_for(Duration::from_secs(30), || {
        (standby.psql("select count(*) from orders").ok()?.trim() == "1").then_some(())
    });
    assert!(
        replayed.is_some(),
        "the standby did not replay the primary's writes"
    );

    let sections = |c: &LocalCluster| {
        format!(
            "[postgres]\nconninfo = \"{}\"\n[database]\ndata_dir = \"{}\"\nrepository = \"{}\"\n",
            c.conninfo(),
            c.data_dir.display(),
            root.join("repo").display()
        )
    };
    let files = mesh.issue_agent("db-west", "us-west-2");
    let west =
        mesh.spawn_agent(&mesh.agent_config("db-west", "us-west-2", &files, &sections(&primary)));
    let files = mesh.issue_agent("db-east", "us-east-1");
    let east =
        mesh.spawn_agent(&mesh.agent_config("db-east", "us-east-1", &files, &sections(&standby)));
    let epoch_before = wait_for(Duration::from_secs(20), || {
        let s = mesh.status();
        let role = |id: &str| {
            s.regions
                .iter()
                .flat_map(|r| &r.agents)
                .find(|a| a.agent_id.as_str() == id)
                .and_then(|a| a.role)
                .map(|r| r.to_string())
        };
        (role("db-west").as_deref() == Some("primary")
            && role("db-east").as_deref() == Some("standby"))
        .then_some(s.epoch)
    })
    .expect("both agents up, reporting primary and standby")
    .0;

    let plan = mesh.post(
        "/v1/backup-recovery/disaster-recovery/plans",
        Some(
            format!(
                r#"{{"id": "production_dr_plan", "name": "Production", "rpo": "1h", "rto": "4h",
                    "failoverRegions": ["us-east-1", "eu-west-1"], "healthCheckInterval": 1000,
                    "automaticFailover": {automatic}}}"#
            )
            .as_str(),
        ),
    );
    assert_eq!(plan.status, 201, "{}", plan.text);
    TwoRegions {
        mesh,
        primary,
        standby,
        epoch_before,
        _agents: vec![west, east],
        _clusters: clusters,
    }
}

/// Waits for the newest failover to end; the DR status then.
fn finished(mesh: &Mesh) -> Value {
    wait_for(Duration::from_secs(60), || {
        let s = mesh.get(STATUS).body;
        let status = s["failover"]["status"].as_str()?.to_string();
        matches!(status.as_str(), "COMPLETED" | "FAILED").then_some(s)
    })
    .unwrap_or_else(|| panic!("the failover did not finish: {}", mesh.get(STATUS).text))
}

/// What every completed failover shows: steps, epoch one higher, the old primary fenced,
/// the new one writable, the plan's active region moved.
fn assert_completed(t: &TwoRegions, done: &Value) {
    let run = &done["failover"];
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    let steps: Vec<(String, String)> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["number"].to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(steps.len(), 7);
    for (n, status) in &steps {
        let want = match n.as_str() {
            "1" => "SKIPPED", // the plan names no channel
            "4" => "SKIPPED", // no DNS provider configured yet
            _ => "DONE",
        };
        assert_eq!(status, want, "step {n}: {run:#}");
    }
    assert_eq!(run["fromAgent"], "db-west");
    assert_eq!(run["targetAgent"], "db-east");
    assert_eq!(
        done["epoch"].as_u64(),
        Some(t.epoch_before + 1),
        "the epoch rose once"
    );
    assert_eq!(run["epoch"].as_u64(), Some(t.epoch_before + 1));
    assert!(run["timeline"].as_u64().unwrap_or(0) >= 2, "{run:#}");
    // The old primary is stopped and cannot come back writable; the new one takes writes.
    assert!(drmesh_agent::failover::is_fenced(&t.primary.data_dir));
    t.standby
        .psql("insert into orders select coalesce(max(id), 0) + 1 from orders")
        .expect("the promoted server takes writes");
    assert_eq!(
        t.standby.psql("select pg_is_in_recovery()").unwrap().trim(),
        "f"
    );
    let plan = t
        .mesh
        .get("/v1/backup-recovery/disaster-recovery/plans/production_dr_plan");
    assert_eq!(plan.body["activeRegion"], "us-east-1", "{}", plan.text);
}

#[test]
fn a_manual_failover_fences_the_old_primary_then_promotes_the_replica() {
    let t = two_regions();
    let mesh = &t.mesh;
    // Not a region of the plan; no such plan.
    let wrong = mesh.post(
        FAILOVER,
        Some(r#"{"planId": "production_dr_plan", "targetRegion": "us-west-2"}"#),
    );
    assert_eq!(wrong.status, 400, "{}", wrong.text);
    let none = mesh.post(
        FAILOVER,
        Some(r#"{"planId": "nope", "targetRegion": "us-east-1"}"#),
    );
    assert_eq!(none.status, 404, "{}", none.text);

    // The runbook's call.
    let started = mesh.post(
        FAILOVER,
        Some(r#"{"planId": "production_dr_plan", "targetRegion": "us-east-1"}"#),
    );
    assert_eq!(started.status, 202, "{}", started.text);
    assert_eq!(started.body["status"], "INITIATED");
    assert!(
        started.body["failoverStartTime"].as_str().is_some(),
        "{}",
        started.text
    );
    assert!(
        started.body["estimatedCompletionTime"].as_str().is_some(),
        "{}",
        started.text
    );
    // One failover at a time.
    let second = mesh.post(
        FAILOVER,
        Some(r#"{"planId": "production_dr_plan", "targetRegion": "eu-west-1"}"#),
    );
    assert_eq!(second.status, 409, "{}", second.text);

    assert_completed(&t, &finished(mesh));
    // `drmesh status` shows the steps.
    let (ok, out, err) = mesh.cli(&mesh.admin_token, &["status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Promote read replica to primary") && out.contains("COMPLETED"),
        "{out}"
    );
    // `drmesh failover` speaks the same route: a region outside the plan is refused.
    let (ok, _, err) = mesh.cli(
        &mesh.admin_token,
        &[
            "failover",
            "production_dr_plan",
            "--to",
            "us-west-2",
            "--wait",
        ],
    );
    assert!(
        !ok && err.contains("400") && err.contains("failoverRegions"),
        "{err}"
    );
}

#[test]
fn a_coordinator_killed_during_a_failover_resumes_it_and_finishes_once() {
    let mut t = two_regions();
    let started = t.mesh.post(
        FAILOVER,
        Some(r#"{"planId": "production_dr_plan", "targetRegion": "us-east-1"}"#),
    );
    assert_eq!(started.status, 202, "{}", started.text);
    // kill -9 while the steps run (fencing alone takes longer than this).
    std::thread::sleep(Duration::from_millis(100));
    t.mesh.restart_coordinator();
    let done = finished(&t.mesh);
    assert_completed(&t, &done);
    assert!(
        t.mesh.coordinator_log().contains("resum"),
        "the restarted coordinator resumed the failover:\n{}",
        t.mesh.coordinator_log()
    );
}

#[test]
fn a_crashed_primary_fails_over_by_itself() {
    let t = two_regions_with(true);
    let pid = t.primary.postmaster_pid().expect("the primary runs");
    let crashed = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the primary's postmaster");
    let done = finished(&t.mesh);
    let run = &done["failover"];
    assert!(
        run["requestedBy"]
            .as_str()
            .is_some_and(|r| r.starts_with("drmesh (automatic)")),
        "{run:#}"
    );
    assert_completed(&t, &done);
    eprintln!(
        "automatic failover completed {} ms after the crash",
        crashed.elapsed().as_millis()
    );
    let health = &done["healthChecks"][0];
    assert_eq!(health["planId"], "production_dr_plan", "{done:#}");
}
