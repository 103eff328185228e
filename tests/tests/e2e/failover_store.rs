//! The coordinator's store fails inside a failover (issue 18, item 4): the run ends
//! FAILED with the error rather than staying IN_PROGRESS with nobody driving it, and once
//! the store works again a later failover is admitted.
//!
//! The fault is a full disk as the coordinator process sees it: every `pwrite64` it makes
//! (redb's writes) fails with ENOSPC, injected by `strace` into the running process, from
//! the moment step 3 runs until the test lifts it. (Filling a small filesystem under the
//! store is not a reliable trigger: redb writes copy-on-write into pages it freed earlier,
//! which the filesystem already backs, so a given commit may need no new space at all.)

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drmesh_tests::regions::{finished, two_regions, FAILOVER, STATUS};
use drmesh_tests::wait_for;

const BODY: &str = r#"{"planId": "production_dr_plan", "targetRegion": "us-east-1"}"#;

/// ENOSPC on every `pwrite64` of a process (all its threads, and new ones) while this
/// lives.
struct DiskFull(Child);

impl DiskFull {
    fn inject(pid: u32) -> DiskFull {
        let mut child = Command::new("strace")
            .args([
                "-f",
                "-o",
                "/dev/null",
                "-e",
                "trace=pwrite64",
                "-e",
                "inject=pwrite64:error=ENOSPC",
                "-p",
                &pid.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run strace (apt-get install strace)");
        // "Process N attached with M threads": only then is the fault on.
        let stderr = child.stderr.take().expect("strace's stderr");
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("attached") => break,
                Some(Ok(l)) if l.contains("ptrace") => panic!("strace cannot attach: {l}"),
                Some(Ok(_)) => {}
                _ => panic!("strace stopped before attaching"),
            }
        }
        // Keep draining (it reports new threads) so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        DiskFull(child)
    }
}

impl Drop for DiskFull {
    /// SIGTERM: strace detaches and the process runs on, its writes working again.
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

#[test]
fn the_coordinators_store_failing_during_step_3_ends_the_run_failed_and_a_later_failover_is_admitted(
) {
    let t = two_regions();
    let mesh = &t.mesh;
    let started = mesh.post(FAILOVER, Some(BODY));
    assert_eq!(started.status, 202, "{}", started.text);
    let id = started.body["failoverId"].as_str().unwrap().to_string();

    // Step 3 runs (the promotion takes a few hundred milliseconds): the disk fills.
    let seen = wait_for(Duration::from_secs(60), || {
        let s = mesh.get(STATUS).body;
        (s["failover"]["steps"][2]["status"] == "RUNNING").then_some(())
    });
    assert!(
        seen.is_some(),
        "step 3 never ran: {}",
        mesh.get(STATUS).text
    );
    let full = DiskFull::inject(mesh.coordinator.pid());
    let filled = Instant::now();

    // The driver retries for about 30 s, then gives up on the step and keeps trying to
    // record the run FAILED.
    let gave_up = wait_for(Duration::from_secs(60), || {
        let log = mesh.coordinator_log();
        (log.contains("giving up") && log.contains("the failover ends FAILED")).then_some(())
    });
    assert!(
        gave_up.is_some(),
        "the driver did not give up:\n{}",
        mesh.coordinator_log()
    );
    let waited = filled.elapsed();
    assert!(
        waited > Duration::from_secs(25),
        "it retried for {} ms only",
        waited.as_millis()
    );
    assert!(
        mesh.coordinator_log().contains("No space left on device"),
        "{}",
        mesh.coordinator_log()
    );
    std::thread::sleep(Duration::from_secs(2));

    // Space is freed: the store reopens, FAILED is recorded with the error.
    drop(full);
    let done = finished(mesh);
    let run = &done["failover"];
    assert_eq!(run["failoverId"], id.as_str(), "{run:#}");
    assert_eq!(run["status"], "FAILED", "{run:#}");
    let error = run["error"].as_str().unwrap_or("");
    assert!(
        error.contains("state store failed 6 times") && error.contains("No space left on device"),
        "{error}"
    );
    eprintln!("the run ended: {error}");
    // The fault came while step 3 ran; whatever it did is reported as it is (a write
    // that could not be made from step 4 on means step 4 is the one named).
    assert!(
        error.starts_with("step 3 (") || error.starts_with("step 4 ("),
        "{error}"
    );
    assert!(
        mesh.coordinator_log().contains("state store reopened"),
        "{}",
        mesh.coordinator_log()
    );
    let alerts = wait_for(Duration::from_secs(10), || {
        let a = mesh.get("/v1/backup-recovery/monitoring/alerts?severity=CRITICAL&status=OPEN");
        (a.text.contains("FAILOVER_FAILED") && a.text.contains(&id)).then_some(a.text)
    });
    assert!(alerts.is_some(), "no FAILOVER_FAILED alert");

    // The plan is free: a later failover is admitted (its store write works again).
    let next = mesh.post(FAILOVER, Some(BODY));
    assert_eq!(next.status, 202, "{}", next.text);
    let next_id = next.body["failoverId"].as_str().unwrap().to_string();
    assert_ne!(next_id, id);
    let done = finished(mesh);
    assert_eq!(done["failover"]["failoverId"], next_id.as_str());
}
