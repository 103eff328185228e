//! Failover through the runbook's curl call, on real PostgreSQL clusters: a primary in
//! one region, its streaming standby in another, an agent next to each. The standby is
//! promoted only after the old primary's agent fenced it (stopped, `standby.signal`).

use std::time::Duration;

use drmesh_tests::regions::{
    finished, two_regions, two_regions_with, TwoRegions, FAILOVER, STATUS,
};
use serde_json::Value;

/// `kill -9` of the primary's postmaster.
fn crash_primary(t: &TwoRegions) {
    let pid = t.primary.postmaster_pid().expect("the primary runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the primary's postmaster");
}

/// The run was started by the health checks, not by an operator.
fn assert_automatic(run: &Value) {
    assert!(
        run["requestedBy"]
            .as_str()
            .is_some_and(|r| r.starts_with("drmesh (automatic)")),
        "{run:#}"
    );
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
    // `drmesh failover` speaks the same route: a region outside the plan (neither a
    // failover region nor its home, us-west-2, where a failback may go) is refused.
    let (ok, _, err) = mesh.cli(
        &mesh.admin_token,
        &[
            "failover",
            "production_dr_plan",
            "--to",
            "ap-south-1",
            "--wait",
        ],
    );
    assert!(
        !ok && err.contains("400") && err.contains("failoverRegions"),
        "{err}"
    );
}

#[test]
fn ten_concurrent_failover_requests_over_two_clients_admit_exactly_one() {
    let t = two_regions();
    let mesh = &t.mesh;
    const BODY: &str = r#"{"planId": "production_dr_plan", "targetRegion": "us-east-1"}"#;
    // Five through the HTTP API, five through `drmesh failover`, all released at once.
    let barrier = std::sync::Barrier::new(10);
    let (http, cli): (Vec<_>, Vec<_>) = std::thread::scope(|s| {
        let http: Vec<_> = (0..5)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let a = mesh.post(FAILOVER, Some(BODY));
                    (
                        a.status,
                        a.body["failoverId"].as_str().map(String::from),
                        a.text,
                    )
                })
            })
            .collect();
        let cli: Vec<_> = (0..5)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    mesh.cli(
                        &mesh.admin_token,
                        &["failover", "production_dr_plan", "--to", "us-east-1"],
                    )
                })
            })
            .collect();
        (
            http.into_iter().map(|h| h.join().unwrap()).collect(),
            cli.into_iter().map(|h| h.join().unwrap()).collect(),
        )
    });
    let mut admitted: Vec<String> = http.iter().filter_map(|(_, id, _)| id.clone()).collect();
    admitted.extend(
        cli.iter()
            .filter(|(ok, _, _)| *ok)
            .filter_map(|(_, out, _)| out.split_whitespace().nth(1).map(String::from)),
    );
    assert_eq!(admitted.len(), 1, "exactly one admitted: {http:?} {cli:?}");
    let id = &admitted[0];
    // Every other request was refused with 409, naming the admitted failover.
    for (status, fid, text) in &http {
        if fid.is_none() {
            assert_eq!(*status, 409, "{text}");
            assert!(text.contains(id.as_str()), "{text}");
        }
    }
    for (ok, _, err) in &cli {
        if !ok {
            assert!(err.contains("409") && err.contains(id.as_str()), "{err}");
        }
    }
    let done = finished(mesh);
    assert_eq!(done["failover"]["failoverId"], id.as_str(), "{done:#}");
    assert_completed(&t, &done);
}

#[test]
fn a_coordinator_restored_from_before_a_failover_cannot_make_the_agents_act() {
    const BODY: &str = r#"{"planId": "production_dr_plan", "targetRegion": "us-east-1"}"#;
    let mut t = two_regions();
    // A copy of the coordinator's state from before the failover, as a backup holds it.
    t.mesh.restart_coordinator_with(|dir| {
        std::fs::copy(dir.join("state.redb"), dir.join("state-before.redb")).unwrap();
    });
    let started = t.mesh.post(FAILOVER, Some(BODY));
    assert_eq!(started.status, 202, "{}", started.text);
    let done = finished(&t.mesh);
    assert_completed(&t, &done);
    let first = done["failover"]["failoverId"].as_str().unwrap().to_string();
    let epoch = t.epoch_before + 1;

    // The new primary's agent is killed and started again: it remembers the epoch and
    // the failover it belongs to.
    t.agents[1].kill9();
    t.agents[1] = t
        .mesh
        .spawn_agent(&t.mesh.dir.path().join("agent-db-east.toml"));
    let seen: Value = serde_json::from_slice(
        &std::fs::read(t.mesh.dir.path().join("epoch-db-east.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(seen["epoch"].as_u64(), Some(epoch), "{seen}");
    assert_eq!(seen["failover"], first.as_str(), "{seen}");

    // The old primary's agent restarts too: it saw the epoch when it fenced its server.
    t.agents[0].kill9();
    t.agents[0] = t
        .mesh
        .spawn_agent(&t.mesh.dir.path().join("agent-db-west.toml"));

    // The coordinator comes back from the copy: it has forgotten the failover and holds
    // the older epoch. Whatever it asks is refused — here, to bring the fenced old
    // primary back (as a standby) — and the server stays fenced.
    t.mesh.restart_coordinator_with(|dir| {
        std::fs::copy(dir.join("state-before.redb"), dir.join("state.redb")).unwrap();
    });
    // Both agents back, and reporting what a rejoin looks for: the old primary fenced,
    // the new one primary (so what is refused below is the epoch, nothing else).
    drmesh_tests::wait_for(Duration::from_secs(30), || {
        let west = t.mesh.agent_status("db-west")?;
        let east = t.mesh.agent_status("db-east")?;
        (west.state.to_string() == "UP"
            && west.fenced
            && east.state.to_string() == "UP"
            && east.role.map(|r| r.to_string()).as_deref() == Some("primary"))
        .then_some(())
    })
    .expect("both agents reconnect, the old primary fenced and the new one primary");
    assert_eq!(
        t.mesh.status().epoch.0,
        t.epoch_before,
        "the restored coordinator's epoch"
    );
    let refused = t.mesh.post(
        "/v1/backup-recovery/disaster-recovery/rejoin",
        Some(r#"{"region": "us-west-2"}"#),
    );
    assert_eq!(refused.status, 502, "{}", refused.text);
    assert!(
        refused
            .text
            .contains(&format!("is older than epoch {epoch}")),
        "{}",
        refused.text
    );
    assert!(drmesh_agent::failover::is_fenced(&t.primary.data_dir));
    // The server promoted by the first failover still takes writes.
    t.standby
        .psql("insert into orders select coalesce(max(id), 0) + 1 from orders")
        .expect("the promoted server takes writes");
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
    let crashed = std::time::Instant::now();
    crash_primary(&t);
    let done = finished(&t.mesh);
    let run = &done["failover"];
    assert_automatic(run);
    assert_completed(&t, &done);
    eprintln!(
        "automatic failover completed {} ms after the crash",
        crashed.elapsed().as_millis()
    );
    let health = &done["healthChecks"][0];
    assert_eq!(health["planId"], "production_dr_plan", "{done:#}");
    // `drmesh status` shows the plan's health check, and the old primary fenced.
    let shown = drmesh_tests::wait_for(Duration::from_secs(10), || {
        let (ok, out, _) = t.mesh.cli(&t.mesh.admin_token, &["status"]);
        (ok && out.contains("plan production_dr_plan: primary") && out.contains("fenced"))
            .then_some(out)
    });
    assert!(
        shown.is_some(),
        "{}",
        t.mesh.cli(&t.mesh.admin_token, &["status"]).1
    );
}

#[test]
fn maintenance_mode_holds_automatic_failover_until_it_is_resumed() {
    const PLAN: &str = "/v1/backup-recovery/disaster-recovery/plans/production_dr_plan";
    let t = two_regions_with(true);
    let mesh = &t.mesh;
    let (ok, out, err) = mesh.cli(
        &mesh.admin_token,
        &[
            "plans",
            "pause",
            "production_dr_plan",
            "--reason",
            "kernel upgrade",
        ],
    );
    assert!(ok && out.contains("maintenance mode"), "{out}{err}");
    let plan = mesh.get(PLAN);
    assert_eq!(plan.body["status"], "MAINTENANCE", "{}", plan.text);
    assert_eq!(
        plan.body["maintenance"]["reason"], "kernel upgrade",
        "{}",
        plan.text
    );
    let (ok, out, _) = mesh.cli(&mesh.admin_token, &["plans", "show", "production_dr_plan"]);
    assert!(
        ok && out.contains("maintenance") && out.contains("kernel upgrade"),
        "{out}"
    );

    // The primary crashes: the health check finds it DOWN and says why nothing happens.
    crash_primary(&t);
    let held = drmesh_tests::wait_for(Duration::from_secs(60), || {
        let s = mesh.get(STATUS).body;
        let h = &s["healthChecks"][0];
        (h["verdict"] == "DOWN" && h["automaticFailover"]["state"] == "PAUSED").then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "no DOWN verdict held by maintenance: {}",
            mesh.get(STATUS).text
        )
    });
    assert!(held["failover"].is_null(), "{held:#}");
    let alert = drmesh_tests::wait_for(Duration::from_secs(30), || {
        let a = mesh.get("/v1/backup-recovery/monitoring/alerts?severity=CRITICAL");
        a.text.contains("AUTOMATIC_FAILOVER_HELD").then_some(a.text)
    })
    .unwrap_or_else(|| {
        panic!(
            "no held alert: {}",
            mesh.get("/v1/backup-recovery/monitoring/alerts").text
        )
    });
    assert!(alert.contains("maintenance mode"), "{alert}");
    // Several health checks later, still no failover.
    std::thread::sleep(Duration::from_secs(3));
    let s = mesh.get(STATUS).body;
    assert!(s["failover"].is_null(), "{s:#}");
    let (ok, out, _) = mesh.cli(&mesh.admin_token, &["status"]);
    assert!(ok && out.contains("automatic failover: PAUSED"), "{out}");

    // Resumed: the DOWN primary is failed over by itself, and the plan cools down.
    let (ok, out, err) = mesh.cli(
        &mesh.admin_token,
        &["plans", "resume", "production_dr_plan"],
    );
    assert!(ok && out.contains("armed"), "{out}{err}");
    let done = finished(mesh);
    let run = &done["failover"];
    assert_automatic(run);
    assert_completed(&t, &done);
    let cooling = &mesh.get(STATUS).body["healthChecks"][0]["automaticFailover"];
    assert_eq!(cooling["state"], "COOLING_DOWN", "{cooling}");
    assert_eq!(cooling["afterFailover"], run["failoverId"], "{cooling}");
    assert_eq!(mesh.get(PLAN).body["status"], "ACTIVE");
}

/// Does to the stored failover what a coordinator killed at that point leaves: with the
/// coordinator down, `edit` changes the record; then the coordinator starts again.
fn interrupt(t: &mut TwoRegions, edit: impl FnOnce(&mut Option<FailoverRun>)) {
    use drmesh_coordinator::store::{Namespace, RedbStore, StoreExt};
    t.mesh.coordinator.kill9();
    {
        let store = RedbStore::open(&t.mesh.dir.path().join("state.redb")).expect("open store");
        let mut run: Option<FailoverRun> =
            drmesh_coordinator::ops::failover::latest(&store).expect("read failovers");
        edit(&mut run);
        let run = run.expect("a failover record");
        store
            .put_json(Namespace::Failovers, &run.failover_id, &run)
            .expect("write the failover");
    }
    t.mesh.restart_coordinator();
}

use drmesh_protocol::api::{FailoverRun, FailoverStatus, FailoverStep, StepStatus};

/// Steps 1 and 7 last microseconds (a background notification, one store write), so a
/// kill cannot be timed into them; the record a kill there leaves is written instead.
#[test]
fn a_coordinator_killed_in_step_1_or_7_resumes_and_finishes_once() {
    // Step 1: stored RUNNING, nothing done yet.
    let mut t = two_regions();
    interrupt(&mut t, |run| {
        let now = chrono::Utc::now();
        *run = Some(FailoverRun {
            failover_id: "fo_1_interrupted_in_step_1".into(),
            plan_id: "production_dr_plan".into(),
            status: FailoverStatus::InProgress,
            target_region: drmesh_protocol::RegionId::new("us-east-1").unwrap(),
            target_agent: None,
            from_region: None,
            from_agent: None,
            epoch: None,
            allow_data_loss: false,
            requested_by: "test".into(),
            failover_start_time: now,
            estimated_completion_time: now + chrono::Duration::minutes(5),
            completed_at: None,
            timeline: None,
            current_step: Some(1),
            steps: drmesh_coordinator::ops::failover::STEPS
                .iter()
                .enumerate()
                .map(|(i, name)| FailoverStep {
                    number: i as u8 + 1,
                    name: (*name).to_string(),
                    status: if i == 0 {
                        StepStatus::Running
                    } else {
                        StepStatus::Pending
                    },
                    started_at: (i == 0).then_some(now),
                    ended_at: None,
                    message: String::new(),
                })
                .collect(),
            error: None,
            kind: Default::default(),
            switchover: None,
            awaiting_confirmation: Vec::new(),
            fenced_by_operator: Vec::new(),
            aborted: None,
        });
    });
    let done = finished(&t.mesh);
    assert_completed(&t, &done);
    assert!(t.mesh.coordinator_log().contains("resum"));

    // Step 7: everything else done, the confirmation stored RUNNING.
    let mut t = two_regions();
    let started = t.mesh.post(
        FAILOVER,
        Some(r#"{"planId": "production_dr_plan", "targetRegion": "us-east-1"}"#),
    );
    assert_eq!(started.status, 202, "{}", started.text);
    assert_completed(&t, &finished(&t.mesh));
    interrupt(&mut t, |run| {
        let r = run.as_mut().expect("the failover");
        r.status = FailoverStatus::InProgress;
        r.completed_at = None;
        r.current_step = Some(7);
        r.steps[6].status = StepStatus::Running;
        r.steps[6].ended_at = None;
    });
    let done = finished(&t.mesh);
    // The epoch rose once, by the first coordinator; the resumed one confirmed.
    assert_completed(&t, &done);
    let logs = t.mesh.coordinator_log();
    assert!(logs.contains("resum"), "{logs}");
}
