//! The failover issue's acceptance checks, on real PostgreSQL clusters and a real BIND 9:
//! the runbook's curl body moving the database's DNS name to the new primary; a refused
//! or stale DNS update failing the failover without reporting success; a replica lagging
//! beyond the RPO refused unless `allowDataLoss`; a coordinator killed (`kill -9`) in
//! each step resuming the failover and finishing it once, the epoch raised once.
//!
//! The primary listens on 127.0.0.2 and the standby on 127.0.0.3 (one port), so the DNS
//! name's answer tells them apart; each agent advertises its server's address, taken
//! from its conninfo's host.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drmesh_pg::local::PgBin;
use drmesh_tests::bind::Bind;
use drmesh_tests::regions::{finished, two_regions_opts, Options, TwoRegions, FAILOVER, STATUS};
use drmesh_tests::wait_for;
use serde_json::Value;

const ZONE: &str = "drmesh.test.";
const RECORD: &str = "db.drmesh.test.";
/// The runbook's curl body.
const RUNBOOK: &str = r#"{"planId": "production_dr_plan", "targetRegion": "us-east-1"}"#;
const PLAN: &str = "/v1/backup-recovery/disaster-recovery/plans/production_dr_plan";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The old primary's address (us-west-2).
fn west() -> IpAddr {
    ip("127.0.0.2")
}

/// The standby's address (us-east-1).
fn east() -> IpAddr {
    ip("127.0.0.3")
}

/// A BIND of its own, serving `db.drmesh.test.` = `initial`.
fn bind_with(initial: IpAddr) -> Bind {
    Bind::start(ip("127.0.0.1"), ZONE, RECORD, initial)
}

/// `[dns]` for the rfc2136 provider at `bind`, signing with the key in `secret`.
fn dns_section(bind: &Bind, secret: &Path) -> String {
    format!(
        "[dns]\nprovider = \"rfc2136\"\nrecord = \"{RECORD}\"\nzone = \"{ZONE}\"\nserver = \"{}\"\ntsig_key_name = \"{}\"\ntsig_secret_file = \"{}\"\n",
        bind.addr(),
        bind.key_name(),
        secret.display()
    )
}

/// Two regions, the primary on 127.0.0.2 and the standby on 127.0.0.3, and the
/// coordinator changing `db.drmesh.test.` at `bind` with the key in `secret`.
/// `top_level` is more top-level coordinator config (before `[dns]`).
fn two_regions_with_dns(bind: &Bind, secret: &Path, top_level: &str) -> TwoRegions {
    two_regions_with_dns_on(bind, secret, top_level, None)
}

/// As [`two_regions_with_dns`]; with `etcd`, two coordinators on that etcd cluster.
fn two_regions_with_dns_on(
    bind: &Bind,
    secret: &Path,
    top_level: &str,
    etcd: Option<Vec<String>>,
) -> TwoRegions {
    let t = two_regions_opts(Options {
        addresses: Some((west(), east())),
        coordinator_extra: format!("{top_level}\n{}", dns_section(bind, secret)),
        etcd,
        ..Options::default()
    });
    assert_eq!(t.primary.host(), west());
    assert_eq!(t.standby.host(), east());
    assert_eq!(t.primary.port, t.standby.port, "one port for both servers");
    // Each agent advertises its server's address (from its conninfo), which the DNS step
    // needs.
    let status = t.mesh.get(STATUS).body;
    let advertised = |id: &str| -> Option<String> {
        status["regions"]
            .as_array()?
            .iter()
            .flat_map(|r| r["agents"].as_array().cloned().unwrap_or_default())
            .find(|a| a["agentId"] == id)?["postgresAddress"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(
        advertised("db-west"),
        Some(SocketAddr::new(west(), t.primary.port).to_string()),
        "{status:#}"
    );
    assert_eq!(
        advertised("db-east"),
        Some(SocketAddr::new(east(), t.standby.port).to_string()),
        "{status:#}"
    );
    t
}

fn post_runbook(t: &TwoRegions, body: &str) -> String {
    let started = t.mesh.post(FAILOVER, Some(body));
    assert_eq!(started.status, 202, "{}", started.text);
    assert_eq!(started.body["status"], "INITIATED", "{}", started.text);
    started.body["failoverId"]
        .as_str()
        .expect("failoverId")
        .to_string()
}

/// The newest failover once it ended, checked to be the one `id` names.
fn finished_run(t: &TwoRegions, id: &str) -> Value {
    let done = finished(&t.mesh);
    assert_eq!(done["failover"]["failoverId"], id, "{done:#}");
    done
}

/// Step `n` (1-based) of a failover record.
fn step(run: &Value, n: usize) -> &Value {
    let s = &run["steps"][n - 1];
    assert_eq!(s["number"].as_u64(), Some(n as u64), "{run:#}");
    s
}

fn step_status(run: &Value, n: usize) -> String {
    step(run, n)["status"].as_str().unwrap_or("").to_string()
}

fn step_message(run: &Value, n: usize) -> String {
    step(run, n)["message"].as_str().unwrap_or("").to_string()
}

/// A completed failover with the DNS step: steps, epoch one higher, the old primary
/// fenced, the new one writable, the plan's active region moved.
fn assert_completed_with_dns(t: &TwoRegions, done: &Value) {
    let run = &done["failover"];
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(run["steps"].as_array().map(Vec::len), Some(7), "{run:#}");
    for n in 1..=7 {
        let want = if n == 1 { "SKIPPED" } else { "DONE" }; // the plan names no channel
        assert_eq!(step_status(run, n), want, "step {n}: {run:#}");
    }
    assert!(
        step_message(run, 1).contains("no notification channel"),
        "{run:#}"
    );
    assert_eq!(run["fromAgent"], "db-west", "{run:#}");
    assert_eq!(run["targetAgent"], "db-east", "{run:#}");
    assert_eq!(
        done["epoch"].as_u64(),
        Some(t.epoch_before + 1),
        "the epoch rose once: {done:#}"
    );
    assert_eq!(run["epoch"].as_u64(), Some(t.epoch_before + 1), "{run:#}");
    assert!(run["timeline"].as_u64().unwrap_or(0) >= 2, "{run:#}");
    assert!(
        drmesh_agent::failover::is_fenced(&t.primary.data_dir),
        "the old primary is stopped with standby.signal"
    );
    assert!(
        t.primary.psql("select 1").is_err(),
        "the old primary is down"
    );
    assert_eq!(
        t.standby.psql("select pg_is_in_recovery()").unwrap().trim(),
        "f"
    );
    t.standby
        .psql("insert into orders select coalesce(max(id), 0) + 1 from orders")
        .expect("the promoted server takes writes");
    let plan = t.mesh.get(PLAN);
    assert_eq!(plan.body["activeRegion"], "us-east-1", "{}", plan.text);
}

/// What `dig` answers for the record at `bind` (an A record, `+short`).
fn dig_a(bind: &Bind) -> Vec<IpAddr> {
    let out = Command::new("dig")
        .arg(format!("@{}", bind.addr().ip()))
        .args(["-p", &bind.addr().port().to_string()])
        .args(["+time=2", "+tries=2", "+norecurse", "+short", RECORD, "A"])
        .output()
        .expect("run dig");
    assert!(out.status.success(), "dig: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `psql` as a client would run it: to `host:port`, over TCP.
fn psql_at(host: IpAddr, port: u16, sql: &str) -> Result<String, String> {
    let pg = PgBin::find().expect("PostgreSQL binaries");
    let out = Command::new(pg.dir().join("psql"))
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &host.to_string(), "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// A failover that failed at step `n`: the failover FAILED with its error naming step
/// `n`, every later step left undone, a CRITICAL alert naming it, and the plan's active
/// region moved only if step 3 promoted the target (the new primary is the truth).
fn assert_failed_at(t: &TwoRegions, done: &Value, n: usize) {
    let run = &done["failover"];
    assert_eq!(run["status"], "FAILED", "{run:#}");
    assert_eq!(step_status(run, n), "FAILED", "{run:#}");
    assert!(
        run["error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("step {n} "))),
        "{run:#}"
    );
    for later in n + 1..=7 {
        assert_eq!(
            step_status(run, later),
            "PENDING",
            "step {later} after the failed step {n}: {run:#}"
        );
    }
    assert!(run["completedAt"].as_str().is_some(), "{run:#}");
    let plan = t.mesh.get(PLAN);
    if n > 3 {
        assert_eq!(
            plan.body["activeRegion"], "us-east-1",
            "the promotion did not move the plan: {}",
            plan.text
        );
    } else {
        assert_ne!(
            plan.body["activeRegion"], "us-east-1",
            "a failover that promoted nothing moved the plan: {}",
            plan.text
        );
    }
    let alerts = t
        .mesh
        .get("/v1/backup-recovery/monitoring/alerts?severity=CRITICAL");
    let id = run["failoverId"].as_str().unwrap_or_default();
    assert!(
        alerts.text.contains("FAILOVER_FAILED") && alerts.text.contains(id),
        "{}",
        alerts.text
    );
}

// ---------------------------------------------------------------------------------------
// 1. The runbook's call with DNS.

#[test]
fn the_runbooks_failover_moves_the_dns_name_to_the_new_primary() {
    let bind = bind_with(west());
    let t = two_regions_with_dns(&bind, &bind.secret_file(), "");
    assert_eq!(bind.answer(), vec![west()]);
    let began = Instant::now();
    let id = post_runbook(&t, RUNBOOK);
    let done = finished_run(&t, &id);
    eprintln!("failover with DNS took {} ms", began.elapsed().as_millis());
    assert_completed_with_dns(&t, &done);
    let run = &done["failover"];

    // Step 4 names the record, the new address, and the confirmation.
    let dns = step_message(run, 4);
    assert!(dns.contains(RECORD), "{dns}");
    assert!(dns.contains(&east().to_string()), "{dns}");
    assert!(dns.contains("TTL 60"), "{dns}");
    assert!(dns.contains("confirmed"), "{dns}");
    assert!(dns.contains(&bind.addr().to_string()), "{dns}");
    // Step 5 wrote through the name.
    let validate = step_message(run, 5);
    assert!(
        validate.contains(RECORD)
            && validate.contains(&SocketAddr::new(east(), t.standby.port).to_string()),
        "{validate}"
    );

    // The authoritative server answers the new primary, TTL 60.
    assert_eq!(bind.answer(), vec![east()]);
    assert_eq!(bind.answer_with_ttl(), vec![(60, east())]);

    // A client resolves the name at BIND and writes through it.
    let resolved = dig_a(&bind);
    assert_eq!(resolved, vec![east()]);
    let port = t.standby.port;
    assert_eq!(
        psql_at(resolved[0], port, "select pg_is_in_recovery()").unwrap(),
        "f"
    );
    let id_written = psql_at(
        resolved[0],
        port,
        "insert into orders select coalesce(max(id), 0) + 1 from orders returning id",
    )
    .expect("a write through the DNS name succeeds");
    assert_eq!(
        t.standby
            .psql(&format!(
                "select count(*) from orders where id = {id_written}"
            ))
            .unwrap(),
        "1",
        "the row written through the name is on the new primary"
    );
    // The old address no longer takes anything.
    assert!(psql_at(west(), port, "select 1").is_err());
}

// ---------------------------------------------------------------------------------------
// 2. DNS updates refused or stale.

#[test]
fn a_dns_update_signed_with_a_wrong_tsig_key_fails_the_failover_and_a_retry_finishes_it() {
    let bind = bind_with(west());
    let mut t = two_regions_with_dns(&bind, &bind.wrong_secret_file(), "");
    let id = post_runbook(&t, RUNBOOK);
    let done = finished_run(&t, &id);
    assert_failed_at(&t, &done, 4);
    let run = &done["failover"];
    let msg = step_message(run, 4);
    let lower = msg.to_lowercase();
    assert!(
        lower.contains("refused")
            || lower.contains("badsig")
            || lower.contains("notauth")
            || lower.contains("rejected"),
        "step 4 says why: {msg}"
    );
    assert!(msg.contains(RECORD), "{msg}");
    // BIND still answers the old primary.
    assert_eq!(bind.answer(), vec![west()]);
    // What happened before the DNS step is reported as it is: fenced and promoted.
    assert_eq!(step_status(run, 2), "DONE", "{run:#}");
    assert_eq!(step_status(run, 3), "DONE", "{run:#}");
    eprintln!("wrong TSIG key: {}", run["error"]);

    // The key is fixed (the coordinator reads it at start); the run is retried from
    // step 4: it completes, the promotion is not repeated, the epoch is the run's.
    let promoted = step(run, 3).clone();
    let epoch = run["epoch"].clone();
    std::fs::copy(bind.secret_file(), bind.wrong_secret_file()).unwrap();
    t.mesh.restart_coordinator();
    let (ok, out, err) = t
        .mesh
        .cli(&t.mesh.admin_token, &["failover-retry", &id, "--wait"]);
    assert!(ok, "{out}\n{err}");
    let done = finished_run(&t, &id);
    let run = &done["failover"];
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(step(run, 3), &promoted, "step 3 was not run again: {run:#}");
    assert_eq!(run["epoch"], epoch, "{run:#}");
    assert_eq!(step_status(run, 4), "DONE", "{run:#}");
    assert_eq!(bind.answer(), vec![east()]);
    // The alert its failure raised is resolved.
    let open = t
        .mesh
        .get("/v1/backup-recovery/monitoring/alerts?severity=CRITICAL&status=OPEN");
    assert!(!open.text.contains(&id), "{}", open.text);
    // Only a FAILED failover is retried.
    let again = t.mesh.post(
        &format!("/v1/backup-recovery/disaster-recovery/failover/{id}/retry"),
        None,
    );
    assert_eq!(again.status, 409, "{}", again.text);
    assert!(again.text.contains("COMPLETED"), "{}", again.text);
    let unknown = t.mesh.post(
        "/v1/backup-recovery/disaster-recovery/failover/fo_1_abcdef/retry",
        None,
    );
    assert_eq!(unknown.status, 404, "{}", unknown.text);
}

#[test]
fn a_dns_record_changed_by_someone_else_is_not_overwritten() {
    let other = ip("127.0.0.9");
    let bind = bind_with(other);
    let t = two_regions_with_dns(&bind, &bind.secret_file(), "");
    let id = post_runbook(&t, RUNBOOK);
    let done = finished_run(&t, &id);
    assert_failed_at(&t, &done, 4);
    let run = &done["failover"];
    let msg = step_message(run, 4);
    assert!(
        msg.contains("prerequisite") && msg.contains("no longer holds"),
        "step 4 says the record changed: {msg}"
    );
    assert!(msg.contains(&west().to_string()), "{msg}");
    assert_eq!(
        bind.answer(),
        vec![other],
        "BIND's answer was not overwritten"
    );
    eprintln!("stale record: {}", run["error"]);
}

// ---------------------------------------------------------------------------------------
// 3. Replica lag beyond the RPO.

#[test]
fn a_replica_behind_the_rpo_is_refused_unless_data_loss_is_allowed() {
    let t = two_regions_opts(Options {
        rpo: "1s".into(), // the smallest objective plans accept
        ..Options::default()
    });
    let mesh = &t.mesh;
    // A transaction replayed since the standby started (its replay timestamp is what the
    // lag is measured from).
    t.primary.psql("insert into orders values (2)").unwrap();
    wait_for(Duration::from_secs(20), || {
        (t.standby.psql("select count(*) from orders").ok()? == "2").then_some(())
    })
    .expect("the standby replays");
    t.standby.psql("select pg_wal_replay_pause()").unwrap();
    t.primary.psql("insert into orders values (3)").unwrap();
    let lag_of_east = || -> Option<f64> {
        mesh.status()
            .regions
            .iter()
            .flat_map(|r| &r.agents)
            .find(|a| a.agent_id.as_str() == "db-east")?
            .replication_lag_seconds
    };
    let lag = wait_for(Duration::from_secs(20), || {
        lag_of_east().filter(|l| *l > 2.0)
    })
    .unwrap_or_else(|| {
        panic!(
            "the standby's lag never went beyond the RPO: {:?}\n{}",
            lag_of_east(),
            mesh.get(STATUS).text
        )
    });
    eprintln!("standby lag before the failover: {lag:.1} s");

    let id = post_runbook(&t, RUNBOOK);
    let done = finished_run(&t, &id);
    assert_failed_at(&t, &done, 2);
    let run = &done["failover"];
    let msg = step_message(run, 2);
    assert!(
        msg.contains("s behind")
            && msg.contains("more than the plan's RPO")
            && msg.contains("allowDataLoss"),
        "step 2 says why: {msg}"
    );
    // "… is N s behind …": N is beyond the RPO.
    let behind: f64 = msg
        .split(" s behind")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lag in {msg}"));
    assert!(behind > 1.0, "{msg}");
    // Nothing was done: the epoch did not rise, the old primary was not fenced and takes
    // writes, the standby is still a standby.
    assert_eq!(done["epoch"].as_u64(), Some(t.epoch_before), "{done:#}");
    assert!(run["epoch"].is_null(), "{run:#}");
    assert!(!drmesh_agent::failover::is_fenced(&t.primary.data_dir));
    t.primary
        .psql("insert into orders values (4)")
        .expect("the old primary still takes writes");
    assert_eq!(t.standby.psql("select pg_is_in_recovery()").unwrap(), "t");
    assert!(
        mesh.get(PLAN).body["activeRegion"] != "us-east-1",
        "{}",
        mesh.get(PLAN).text
    );

    // With allowDataLoss the same failover goes through. Replay stays paused: PostgreSQL
    // (12 and later) ends the pause when promoted.
    let id = post_runbook(
        &t,
        r#"{"planId": "production_dr_plan", "targetRegion": "us-east-1", "allowDataLoss": true}"#,
    );
    let done = finished_run(&t, &id);
    let run = &done["failover"];
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(run["allowDataLoss"], true, "{run:#}");
    for n in 2..=7 {
        let want = if n == 4 { "SKIPPED" } else { "DONE" }; // no [dns] here
        assert_eq!(step_status(run, n), want, "step {n}: {run:#}");
    }
    assert_eq!(done["epoch"].as_u64(), Some(t.epoch_before + 1), "{done:#}");
    assert!(drmesh_agent::failover::is_fenced(&t.primary.data_dir));
    assert_eq!(t.standby.psql("select pg_is_in_recovery()").unwrap(), "f");
    t.standby
        .psql("insert into orders values (100)")
        .expect("the promoted server takes writes");
    eprintln!(
        "rows on the promoted server (1, 2 replayed; 3 and 4 written after the pause): {}",
        t.standby
            .psql("select string_agg(id::text, ',' order by id) from orders")
            .unwrap()
    );
    assert_eq!(
        mesh.get(PLAN).body["activeRegion"],
        "us-east-1",
        "{}",
        mesh.get(PLAN).text
    );
}

// ---------------------------------------------------------------------------------------
// 4. The coordinator killed (kill -9) in each step.

/// The "failover step" events of a coordinator's JSON log: the steps it ran, in order.
fn steps_run(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["message"] == "failover step")
        .filter_map(|e| e["step"].as_u64())
        .collect()
}

fn count_messages(log: &str, message: &str) -> usize {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["message"] == message)
        .count()
}

/// Starts the runbook's failover (with DNS), kills the coordinator with `kill -9` once
/// the status shows step `n` running (or, if step `n` went by between two polls, the
/// first later step seen), starts it again, and checks that the failover completes once
/// with the epoch one higher. Returns the step the restarted coordinator resumed in, or
/// `None` if the failover had ended before the kill.
fn kill_the_coordinator_in_step(n: u64) -> Option<u64> {
    kill_in_step(n, false)
}

/// As [`kill_the_coordinator_in_step`]; with `leader`, two coordinators on a three-member
/// etcd cluster, and the killed leader is not restarted: the other one is elected and
/// finishes the failover.
fn kill_in_step(n: u64, leader: bool) -> Option<u64> {
    let began = Instant::now();
    let bind = bind_with(west());
    let etcd = leader.then(|| drmesh_tests::etcd::Etcd::start(3));
    let mut t = two_regions_with_dns_on(
        &bind,
        &bind.secret_file(),
        "log_format = \"json\"",
        etcd.as_ref().map(|e| e.endpoints()),
    );
    let id = post_runbook(&t, RUNBOOK);
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let s = t.mesh.get(STATUS).body;
        let run = &s["failover"];
        if run["failoverId"] == id.as_str() {
            let status = run["status"].as_str().unwrap_or("");
            assert_ne!(status, "FAILED", "{run:#}");
            let current = run["currentStep"].as_u64().unwrap_or(0);
            if status == "COMPLETED" {
                break None;
            }
            if current > n || (current == n && step_status(run, n as usize) == "RUNNING") {
                break Some(current);
            }
        }
        assert!(
            Instant::now() < deadline,
            "step {n} never ran: {}",
            t.mesh.get(STATUS).text
        );
        // Steps 4 and 5 take milliseconds: poll as fast as the API answers for them.
        std::thread::sleep(Duration::from_millis(if (4..=5).contains(&n) {
            1
        } else {
            20
        }));
    };
    let killed = Instant::now();
    if leader {
        t.mesh.kill_coordinator_for_the_next();
    } else {
        t.mesh.restart_coordinator();
    }
    let done = finished_run(&t, &id);
    if leader {
        eprintln!(
            "the leader killed in step {n}: the failover completed {} ms later by the next leader",
            killed.elapsed().as_millis()
        );
    }
    let first = std::fs::read_to_string(t.mesh.dir.path().join("coordinator.log")).unwrap();
    let second = t.mesh.coordinator_log();
    if done["failover"]["status"] != "COMPLETED" {
        eprintln!(
            "kill -9 aimed at step {n} (seen {seen:?}): the restarted coordinator's log:\n{second}"
        );
    }
    assert_completed_with_dns(&t, &done);
    assert_eq!(bind.answer(), vec![east()]);
    let before = steps_run(&first);
    let after = steps_run(&second);
    let resumed = after.first().copied();
    eprintln!(
        "kill -9 aimed at step {n}: seen {seen:?}; steps run before the kill {before:?}, \
         after the restart {after:?} ({} ms in all)",
        began.elapsed().as_millis()
    );
    // Each step ran once, except the one the kill interrupted, which ran again; nothing
    // before it was done twice.
    if let Some(r) = resumed {
        assert!(
            second.contains("resuming an interrupted failover"),
            "{second}"
        );
        assert_eq!(after, (r..=7).collect::<Vec<_>>(), "{second}");
        let upto = if before.last() == Some(&r) { r } else { r - 1 };
        assert_eq!(before, (1..=upto).collect::<Vec<_>>(), "{first}");
    } else {
        assert_eq!(before, (1..=7).collect::<Vec<_>>(), "{first}");
    }
    assert_eq!(
        count_messages(&first, "failover completed")
            + count_messages(&second, "failover completed"),
        1,
        "the failover completed once"
    );
    resumed
}

#[test]
fn a_coordinator_killed_in_step_2_resumes_and_completes_once() {
    assert_eq!(kill_the_coordinator_in_step(2), Some(2));
}

#[test]
fn a_coordinator_killed_in_step_3_resumes_and_completes_once() {
    assert_eq!(kill_the_coordinator_in_step(3), Some(3));
}

/// Issue 19: the leader of two coordinators on etcd is killed while step 3 promotes; the
/// follower is elected, resumes the failover from the store and completes it once, the
/// epoch one higher.
#[test]
fn the_leader_killed_in_step_3_its_successor_completes_the_failover_once() {
    assert_eq!(kill_in_step(3, true), Some(3));
}

#[test]
fn a_coordinator_killed_in_step_4_resumes_and_completes_once() {
    // The DNS update and its confirmation take milliseconds: the kill may land later.
    let landed = kill_the_coordinator_in_step(4);
    eprintln!("kill aimed at step 4 landed in {landed:?}");
    assert!(landed.is_none_or(|s| s >= 4), "{landed:?}");
}

#[test]
fn a_coordinator_killed_in_step_5_resumes_and_completes_once() {
    // One connection and a write: the kill may land later.
    let landed = kill_the_coordinator_in_step(5);
    eprintln!("kill aimed at step 5 landed in {landed:?}");
    assert!(landed.is_none_or(|s| s >= 5), "{landed:?}");
}

#[test]
fn a_coordinator_killed_in_step_6_resumes_and_completes_once() {
    assert_eq!(kill_the_coordinator_in_step(6), Some(6));
}

/// A standby that received WAL it has not replayed, and has replayed no transaction since
/// it started: its lag in seconds cannot be measured (`pg_last_xact_replay_timestamp()`
/// is NULL, so the heartbeat carries no `replicationLagSeconds`) although it is behind.
/// Unknown is not "within the RPO": the failover must be refused without allowDataLoss.
#[test]
fn a_replica_whose_lag_cannot_be_measured_is_not_taken_as_within_the_rpo() {
    let t = two_regions_opts(Options {
        rpo: "1s".into(),
        ..Options::default()
    });
    let mesh = &t.mesh;
    t.standby.psql("select pg_wal_replay_pause()").unwrap();
    t.primary.psql("insert into orders values (3)").unwrap();
    // The standby received the write and did not replay it.
    let east = wait_for(Duration::from_secs(20), || {
        let s = mesh.status();
        let a = s
            .regions
            .iter()
            .flat_map(|r| &r.agents)
            .find(|a| a.agent_id.as_str() == "db-east")?
            .clone();
        a.replication_lag_bytes.filter(|b| *b > 0).map(|_| a)
    })
    .unwrap_or_else(|| panic!("the standby never lagged: {}", mesh.get(STATUS).text));
    eprintln!(
        "standby behind by {:?} bytes, lag in seconds {:?}",
        east.replication_lag_bytes, east.replication_lag_seconds
    );
    std::thread::sleep(Duration::from_secs(2)); // beyond the RPO of 1 s
    let id = post_runbook(&t, RUNBOOK);
    let done = finished_run(&t, &id);
    let run = &done["failover"];
    assert_eq!(
        run["status"],
        "FAILED",
        "a standby of unknown lag, {:?} bytes behind for more than the RPO, was promoted: \
         step 2 said {:?}",
        east.replication_lag_bytes,
        step_message(run, 2)
    );
    assert_failed_at(&t, &done, 2);
    assert!(step_message(run, 2).contains("allowDataLoss"), "{run:#}");
    assert!(!drmesh_agent::failover::is_fenced(&t.primary.data_dir));
}
