//! A planned switchover in a mesh whose regions are network namespaces, with an
//! asynchronous standby, while a client writes through the DNS name every 50 ms and a
//! probe asks both servers every 100 ms whether they take writes: no acknowledged write
//! is lost, the two servers are never writable at once, the LSNs are reported, and the
//! old primary follows the new one as a standby. Then back again.

use std::time::{Duration, Instant};

use drmesh_tests::faults::{FaultMesh, FaultOptions};
use drmesh_tests::splitbrain::{missing_writes, Probe, Writer};
use serde_json::Value;

const SWITCHOVER: &str = "/v1/backup-recovery/disaster-recovery/switchover";

/// Asks for a switchover of the plan to `region` and waits until it has ended.
fn switchover(fm: &FaultMesh, region: &str) -> Value {
    let body = serde_json::json!({ "planId": "production_dr_plan", "targetRegion": region });
    let accepted = fm.mesh.post(SWITCHOVER, Some(&body.to_string()));
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    assert_eq!(accepted.body["kind"], "SWITCHOVER", "{}", accepted.text);
    let id = accepted.body["failoverId"].as_str().unwrap().to_string();
    assert!(id.starts_with("so_"), "{id}");
    let done = fm.failover_finished(Duration::from_secs(120));
    assert_eq!(done["failover"]["failoverId"], id.as_str(), "{done:#}");
    done["failover"].clone()
}

fn assert_switched(run: &Value, from: &str, to: &str) {
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(run["kind"], "SWITCHOVER", "{run:#}");
    assert_eq!(run["fromAgent"], format!("db-{from}"), "{run:#}");
    assert_eq!(run["targetAgent"], format!("db-{to}"), "{run:#}");
    // The LSNs: where the old primary stopped, and the target past it.
    let lsns = &run["switchover"];
    assert!(
        lsns["finalLsn"].as_str().is_some_and(|l| l.contains('/')),
        "{run:#}"
    );
    assert!(
        lsns["targetReplayedLsn"]
            .as_str()
            .is_some_and(|l| l.contains('/')),
        "{run:#}"
    );
    let step2 = run["steps"][1]["message"].as_str().unwrap_or("");
    assert!(
        step2.contains("stopped cleanly") && step2.contains("replayed past it"),
        "{step2}"
    );
    let step6 = run["steps"][5]["message"].as_str().unwrap_or("");
    assert!(step6.contains("rejoined as a standby"), "{step6}");
}

#[test]
fn a_switchover_under_writes_to_an_asynchronous_standby_loses_no_acknowledged_write() {
    let fm = FaultMesh::start(FaultOptions {
        synchronous: false,
        automatic: false,
        ..FaultOptions::default()
    });
    let (west, east) = (fm.db(0), fm.db(1));

    // No switchover without a live standby where it is asked to go: 409 saying why, and
    // nothing changes.
    let body = serde_json::json!({ "planId": "production_dr_plan", "targetRegion": "us-west-2" });
    let refused = fm.mesh.post(SWITCHOVER, Some(&body.to_string()));
    assert_eq!(refused.status, 409, "{}", refused.text);
    assert!(refused.text.contains("standby"), "{}", refused.text);
    assert_eq!(fm.failover_status(), None);

    for (from, to, old, new) in [
        ("us-west-2", "us-east-1", west, east),
        ("us-east-1", "us-west-2", east, west),
    ] {
        // Each Writer counts its ids from 1.
        let old_index = if old == west { 0 } else { 1 };
        fm.cluster(old_index)
            .psql("truncate drmesh_writes")
            .expect("truncate on the primary");
        let limit = Duration::from_secs(120);
        let writer = Writer::start(fm.resolver(), limit);
        let probe = Probe::start(vec![old, new], limit);
        std::thread::sleep(Duration::from_millis(1500));
        let asked = Instant::now();
        let run = switchover(&fm, to);
        std::thread::sleep(Duration::from_millis(1000));
        let writes = writer.stop();
        let probe = probe.stop();

        assert_switched(&run, from, to);
        assert!(
            probe.overlaps().is_empty(),
            "two servers took writes at once: {:?}",
            probe.overlaps()
        );
        // Every write either server acknowledged is on the new primary.
        let missing = missing_writes(&writes, new);
        assert!(
            missing.is_empty(),
            "acknowledged writes missing on the new primary: {missing:?}"
        );
        let first_new = writes.first_ack_by_after(new, asked).unwrap_or_else(|| {
            panic!(
                "no write through the name on the new primary: {} errors, e.g. {:?}",
                writes.errors, writes.error_samples
            )
        });
        let last_on_old = writes
            .acknowledged
            .iter()
            .filter(|(_, _, s)| *s == old)
            .map(|(_, at, _)| *at)
            .max();
        assert!(last_on_old.is_some(), "the old primary took no write");
        eprintln!(
            "switchover {from} -> {to}: {} writes acknowledged; writes paused {} ms (last on the \
             old primary to first on the new)",
            writes.acknowledged.len(),
            first_new
                .saturating_duration_since(last_on_old.unwrap_or(asked))
                .as_millis()
        );
        // The old primary follows the new one as a standby.
        let standby = drmesh_tests::wait_for(Duration::from_secs(30), || {
            (fm.cluster(old_index)
                .psql("select pg_is_in_recovery()")
                .ok()?
                == "t")
                .then_some(())
        });
        assert!(standby.is_some(), "the old primary is not a standby");
        assert_eq!(fm.bind.answer(), vec![new.ip()]);
    }
}
