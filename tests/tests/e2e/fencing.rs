//! Fencing is a capability, never an assumption (issue 18): a primary whose agent cannot
//! fence it is promoted past only once an operator says it was stopped by hand; and an
//! operator can abort a failover.

use std::time::Duration;

use drmesh_tests::regions::{finished, two_regions_opts, Options, TwoRegions, FAILOVER, STATUS};
use drmesh_tests::wait_for;
use serde_json::Value;

const BODY: &str = r#"{"planId": "production_dr_plan", "targetRegion": "us-east-1"}"#;

fn failover_path(id: &str, action: &str) -> String {
    format!("{FAILOVER}/{id}/{action}")
}

/// The DR status's failover once step 2's message contains `needle`.
fn step2_says(t: &TwoRegions, needle: &str) -> Value {
    wait_for(Duration::from_secs(40), || {
        let s = t.mesh.get(STATUS).body;
        let message = s["failover"]["steps"][1]["message"].as_str()?;
        message.contains(needle).then(|| s["failover"].clone())
    })
    .unwrap_or_else(|| panic!("step 2 never said {needle:?}: {}", t.mesh.get(STATUS).text))
}

fn in_recovery(t: &TwoRegions) -> String {
    t.standby
        .psql("select pg_is_in_recovery()")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_cut_off_primary_whose_agent_cannot_fence_is_not_promoted_past_until_an_operator_confirms() {
    let mut t = two_regions_opts(Options {
        primary_database: false,
        ..Options::default()
    });
    let mesh = &t.mesh;
    // The DR status says who can fence.
    let can_fence = wait_for(Duration::from_secs(10), || {
        let west = mesh.agent_status("db-west")?;
        let east = mesh.agent_status("db-east")?;
        (east.can_fence).then_some((west.can_fence, east.can_fence))
    });
    assert_eq!(can_fence, Some((false, true)), "{}", mesh.get(STATUS).text);
    assert!(mesh.get(STATUS).text.contains("\"canFence\""));

    // The primary's agent dies; its server keeps running, writable.
    t.agents[0].kill9();
    let killed = std::time::Instant::now();
    let started = t.mesh.post(FAILOVER, Some(BODY));
    assert_eq!(started.status, 202, "{}", started.text);
    let id = started.body["failoverId"].as_str().unwrap().to_string();

    // Step 2 waits for an operator and says exactly what to do.
    // (First, while its agent's last report is fresh, because that report says writable;
    // then, silent past its lease, because it cannot fence itself.)
    let run = step2_says(&t, "not heard from for");
    let message = run["steps"][1]["message"].as_str().unwrap().to_string();
    eprintln!(
        "step 2 waits for an operator {} ms after the agent died: {message}",
        killed.elapsed().as_millis()
    );
    assert!(
        killed.elapsed() > Duration::from_secs(5),
        "not before its lease (5 s) could have run out"
    );
    assert!(
        message.contains("it cannot fence itself")
            && message.contains("Stop PostgreSQL on db-west by hand")
            && message.contains(&format!("drmesh failover-confirm-fenced {id}"))
            && message.contains(&format!("failover/{id}/confirm-fenced")),
        "{message}"
    );
    assert_eq!(run["status"], "IN_PROGRESS", "{run:#}");
    assert_eq!(run["steps"][1]["status"], "RUNNING", "{run:#}");
    assert_eq!(run["awaitingConfirmation"][0], "db-west", "{run:#}");
    // It keeps waiting, past the lease, with nothing promoted.
    std::thread::sleep(Duration::from_secs(3));
    let still = t.mesh.get(STATUS).body;
    assert_eq!(still["failover"]["status"], "IN_PROGRESS", "{still:#}");
    assert_eq!(in_recovery(&t), "t", "nothing was promoted");
    let (ok, out, _) = t.mesh.cli(&t.mesh.admin_token, &["status"]);
    assert!(ok && out.contains("failover-confirm-fenced"), "{out}");
    // Whoever watches the alerts is told.
    let open_alerts = || {
        t.mesh
            .get("/v1/backup-recovery/monitoring/alerts?severity=CRITICAL&status=OPEN")
            .text
    };
    let alert = open_alerts();
    assert!(
        alert.contains("FAILOVER_NEEDS_OPERATOR") && alert.contains(&id),
        "{alert}"
    );

    // A reader may not confirm; an unknown failover is 404.
    let reader = t.mesh.create_token("viewer");
    let denied = drmesh_tests::http(
        "POST",
        &t.mesh.url(&failover_path(&id, "confirm-fenced")),
        Some(&reader),
        None,
    );
    assert_eq!(denied.status, 403, "{}", denied.text);
    let unknown = t
        .mesh
        .post(&failover_path("fo_1_nope", "confirm-fenced"), None);
    assert_eq!(unknown.status, 404, "{}", unknown.text);

    // The operator stops it by hand, then confirms.
    t.primary
        .stop_immediate()
        .expect("stop the old primary by hand");
    let (ok, out, err) = t.mesh.cli(
        &t.mesh.admin_token,
        &["failover-confirm-fenced", &id, "--wait"],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("db-west"), "{out}");
    let done = finished(&t.mesh);
    let run = &done["failover"];
    assert_eq!(run["failoverId"], id.as_str());
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    let step2 = run["steps"][1]["message"].as_str().unwrap();
    assert!(step2.contains("operator confirmed"), "{step2}");
    assert_eq!(run["fencedByOperator"][0]["agentId"], "db-west", "{run:#}");
    assert!(run.get("awaitingConfirmation").is_none(), "{run:#}");
    assert_eq!(in_recovery(&t), "f");
    t.standby
        .psql("insert into orders select coalesce(max(id), 0) + 1 from orders")
        .expect("the promoted server takes writes");
    // Recorded in the audit log; a completed run has nothing to confirm.
    let audit = t.mesh.get("/v1/audit?limit=50");
    assert!(
        audit.text.contains(&format!("{id}/confirm-fenced")),
        "{}",
        audit.text
    );
    let late = t.mesh.post(&failover_path(&id, "confirm-fenced"), None);
    assert_eq!(late.status, 409, "{}", late.text);
    assert!(
        !open_alerts().contains("FAILOVER_NEEDS_OPERATOR"),
        "{}",
        open_alerts()
    );
}

/// The DR status's failover once it ended: COMPLETED, FAILED or ABORTED.
fn ended(t: &TwoRegions) -> Value {
    wait_for(Duration::from_secs(60), || {
        let s = t.mesh.get(STATUS).body;
        let status = s["failover"]["status"].as_str()?.to_string();
        matches!(status.as_str(), "COMPLETED" | "FAILED" | "ABORTED").then(|| s["failover"].clone())
    })
    .unwrap_or_else(|| panic!("the failover did not end: {}", t.mesh.get(STATUS).text))
}

#[test]
fn a_failover_waiting_in_step_2_is_aborted_and_the_plan_is_free_again() {
    let mut t = two_regions_opts(Options {
        primary_database: false,
        ..Options::default()
    });
    t.agents[0].kill9();
    let started = t.mesh.post(FAILOVER, Some(BODY));
    assert_eq!(started.status, 202, "{}", started.text);
    let id = started.body["failoverId"].as_str().unwrap().to_string();
    step2_says(&t, "not heard from for");

    // A viewer may not abort; an unknown failover is 404.
    let reader = t.mesh.create_token("viewer");
    let denied = drmesh_tests::http(
        "POST",
        &t.mesh.url(&failover_path(&id, "abort")),
        Some(&reader),
        None,
    );
    assert_eq!(denied.status, 403, "{}", denied.text);
    let unknown = t.mesh.post(&failover_path("fo_1_nope", "abort"), None);
    assert_eq!(unknown.status, 404, "{}", unknown.text);

    let (ok, out, err) = t.mesh.cli(&t.mesh.admin_token, &["failover-abort", &id]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("before any promotion"), "{out}");
    let run = ended(&t);
    assert_eq!(run["failoverId"], id.as_str());
    assert_eq!(run["status"], "ABORTED", "{run:#}");
    assert_eq!(run["aborted"]["promoted"], false, "{run:#}");
    // The driver stops: step 2 ends (recorded as not finished), nothing after it runs.
    let step2 = wait_for(Duration::from_secs(10), || {
        let run = t.mesh.get(STATUS).body["failover"].clone();
        (run["steps"][1]["status"] == "SKIPPED").then_some(run)
    })
    .unwrap_or_else(|| panic!("step 2 did not stop: {}", t.mesh.get(STATUS).text));
    assert!(
        step2["steps"][1]["message"]
            .as_str()
            .unwrap()
            .contains("aborted"),
        "{step2:#}"
    );
    for n in 2..7 {
        assert_eq!(step2["steps"][n]["status"], "PENDING", "{step2:#}");
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(in_recovery(&t), "t", "nothing was promoted");
    assert_eq!(t.mesh.get(STATUS).body["failover"]["status"], "ABORTED");
    // Aborting again is a conflict.
    let again = t.mesh.post(&failover_path(&id, "abort"), None);
    assert_eq!(again.status, 409, "{}", again.text);

    // The plan is free: a new failover is admitted; this time the operator stops the old
    // primary and confirms, and it completes. A completed run is not aborted.
    let next = t.mesh.post(FAILOVER, Some(BODY));
    assert_eq!(next.status, 202, "{}", next.text);
    let next_id = next.body["failoverId"].as_str().unwrap().to_string();
    assert_ne!(next_id, id);
    step2_says(&t, "not heard from for");
    t.primary
        .stop_immediate()
        .expect("stop the old primary by hand");
    let confirmed = t.mesh.post(
        &failover_path(&next_id, "confirm-fenced"),
        Some(r#"{"agentId": "db-west"}"#),
    );
    assert_eq!(confirmed.status, 200, "{}", confirmed.text);
    let run = ended(&t);
    assert_eq!(run["failoverId"], next_id.as_str());
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    let late = t.mesh.post(&failover_path(&next_id, "abort"), None);
    assert_eq!(late.status, 409, "{}", late.text);
    assert!(late.text.contains("COMPLETED"), "{}", late.text);
}

#[test]
fn aborting_a_failover_that_failed_after_its_promotion_says_the_new_primary_stays() {
    use drmesh_tests::bind::Bind;
    let west: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let east: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let bind = Bind::start(
        "127.0.0.1".parse().unwrap(),
        "drmesh.test.",
        "db.drmesh.test.",
        west,
    );
    // Signed with a key BIND does not know: step 4 fails, after step 3 promoted.
    let t = two_regions_opts(Options {
        addresses: Some((west, east)),
        coordinator_extra: format!(
            "[dns]\nprovider = \"rfc2136\"\nrecord = \"db.drmesh.test.\"\nzone = \"drmesh.test.\"\nserver = \"{}\"\ntsig_key_name = \"{}\"\ntsig_secret_file = \"{}\"\n",
            bind.addr(),
            bind.key_name(),
            bind.wrong_secret_file().display()
        ),
        ..Options::default()
    });
    let started = t.mesh.post(FAILOVER, Some(BODY));
    assert_eq!(started.status, 202, "{}", started.text);
    let id = started.body["failoverId"].as_str().unwrap().to_string();
    let done = finished(&t.mesh);
    let run = &done["failover"];
    assert_eq!(run["status"], "FAILED", "{run:#}");
    assert_eq!(run["steps"][2]["status"], "DONE", "{run:#}");
    let open = || {
        t.mesh
            .get("/v1/backup-recovery/monitoring/alerts?severity=CRITICAL&status=OPEN")
            .text
    };
    assert!(open().contains(&id), "{}", open());

    let aborted = t.mesh.post(&failover_path(&id, "abort"), None);
    assert_eq!(aborted.status, 200, "{}", aborted.text);
    assert_eq!(aborted.body["status"], "ABORTED", "{}", aborted.text);
    assert_eq!(aborted.body["promoted"], true, "{}", aborted.text);
    let message = aborted.body["message"].as_str().unwrap();
    assert!(
        message.contains("STAYS THE PRIMARY") && message.contains("db-east"),
        "{message}"
    );
    let run = t.mesh.get(STATUS).body["failover"].clone();
    assert_eq!(run["status"], "ABORTED", "{run:#}");
    assert_eq!(run["aborted"]["message"], message, "{run:#}");
    // Its FAILOVER_FAILED alert is resolved; the promoted server stays writable and the
    // plan keeps watching it.
    assert!(!open().contains(&id), "{}", open());
    assert_eq!(in_recovery(&t), "f");
    let plan = t
        .mesh
        .get("/v1/backup-recovery/disaster-recovery/plans/production_dr_plan");
    assert_eq!(plan.body["activeRegion"], "us-east-1", "{}", plan.text);
    // An aborted run is not retried; a new failover is admitted.
    let retry = t.mesh.post(&failover_path(&id, "retry"), None);
    assert_eq!(retry.status, 409, "{}", retry.text);
    let next = t.mesh.post(
        FAILOVER,
        Some(r#"{"planId": "production_dr_plan", "targetRegion": "us-east-1"}"#),
    );
    assert_eq!(next.status, 202, "{}", next.text);
    let (ok, out, _) = t.mesh.cli(&t.mesh.admin_token, &["status"]);
    assert!(ok, "{out}");
    // (It fails in step 2: the server in us-east-1 is already the primary.)
    let run = ended(&t);
    assert_ne!(run["failoverId"], id.as_str());
}
