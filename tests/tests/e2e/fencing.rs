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
}
