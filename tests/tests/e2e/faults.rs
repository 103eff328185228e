//! Faults in a mesh whose regions are network namespaces (see `drmesh_tests::faults`):
//! a client writes through the DNS name every 50 ms and a probe asks every server every
//! 100 ms whether it takes writes, while a region is cut off, a primary crashes, the
//! coordinator loses the primary or goes away, or heartbeats keep dropping.

use std::time::{Duration, Instant};

use drmesh_tests::faults::{FaultMesh, FaultOptions};
use drmesh_tests::splitbrain::{missing_writes, Probe, ProbeReport, Writer};
use serde_json::Value;

const LEASE: Duration = Duration::from_secs(5);

fn assert_automatic_completion(done: &Value) {
    let run = &done["failover"];
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert!(
        run["requestedBy"]
            .as_str()
            .is_some_and(|r| r.starts_with("drmesh (automatic)")),
        "{run:#}"
    );
    for step in run["steps"].as_array().expect("steps") {
        let want = if step["number"] == 1 {
            "SKIPPED"
        } else {
            "DONE"
        };
        assert_eq!(step["status"], want, "{step:#}");
    }
}

/// The old primary acknowledged nothing after the fault but what was already in flight
/// (a link takes a few milliseconds to go down; a killed postmaster's backends a few
/// more to notice).
fn assert_only_in_flight_acks(
    writes: &drmesh_tests::splitbrain::WriterReport,
    old: std::net::SocketAddr,
    fault: Instant,
) {
    let late: Vec<u128> = writes
        .acknowledged
        .iter()
        .filter(|(_, at, s)| *s == old && *at > fault + Duration::from_millis(300))
        .map(|(_, at, _)| at.duration_since(fault).as_millis())
        .collect();
    assert!(
        late.is_empty(),
        "the old primary acknowledged writes {late:?} ms after the fault"
    );
}

/// The last moment `old` took a write comes before the first moment `new` did.
fn assert_one_writable_at_a_time(old: &ProbeReport, new: &ProbeReport, fm: &FaultMesh) {
    let last_old = old
        .last_accepted(fm.db(0))
        .expect("the old primary took writes before the fault");
    let first_new = new
        .first_accepted(fm.db(1))
        .expect("the new primary took writes");
    assert!(
        last_old < first_new,
        "two writable primaries: the old one took a write {} ms after the new one's first",
        last_old.duration_since(first_new).as_millis()
    );
    let overlaps: Vec<_> = old.overlaps().into_iter().chain(new.overlaps()).collect();
    assert!(
        overlaps.is_empty(),
        "two servers took writes in the same probe round: {overlaps:?}"
    );
}

#[test]
fn a_primary_region_cut_off_fences_itself_before_the_standby_is_promoted() {
    let fm = FaultMesh::start(FaultOptions::default());
    let (old, new) = (fm.db(0), fm.db(1));
    let limit = Duration::from_secs(120);
    let writer = Writer::start(fm.resolver(), limit);
    // The cut-off region's server is watched from inside its namespace: nothing else
    // can reach it once its links are down.
    let inside = fm
        .topo
        .in_ns(&fm.regions[0], || Probe::start(vec![old], limit));
    let outside = Probe::start(vec![new], limit);
    std::thread::sleep(Duration::from_millis(1500));

    let cut = Instant::now();
    fm.topo.cut(&fm.regions[0]);
    let done = fm.failover_finished(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let writes = writer.stop();
    let (inside, outside) = (inside.stop(), outside.stop());

    assert_automatic_completion(&done);
    assert_one_writable_at_a_time(&inside, &outside, &fm);
    let last_old = inside.last_accepted(old).expect("old took writes");
    assert!(
        last_old.duration_since(cut) < LEASE + Duration::from_millis(500),
        "the cut-off primary fenced itself {} ms after the cut (lease {} ms)",
        last_old.duration_since(cut).as_millis(),
        LEASE.as_millis()
    );
    assert!(drmesh_agent::failover::is_fenced(&fm.cluster(0).data_dir));
    let step2 = done["failover"]["steps"][1]["message"]
        .as_str()
        .unwrap_or("");
    assert!(step2.contains("fenced itself"), "{step2}");
    let first = writes
        .first_ack_by_after(new, cut)
        .expect("a write through the name on the new primary after the cut");
    assert_only_in_flight_acks(&writes, old, cut);
    eprintln!(
        "region cut: first write through the DNS name on the new primary {} ms after the cut",
        first.duration_since(cut).as_millis()
    );
    assert_eq!(fm.bind.answer(), vec![new.ip()]);
    let missing = missing_writes(&writes, new);
    assert!(
        missing.is_empty(),
        "acknowledged writes missing on the new primary: {missing:?}"
    );
}

/// Issue 19: the region holding the primary, the leading coordinator and one etcd member
/// is cut off. The other two coordinators (with the other two members, a quorum) elect a
/// leader, which waits out the primary's lease and fails over by itself; the old primary
/// fenced itself first, and no acknowledged write is lost (synchronous standby).
#[test]
fn the_region_of_the_primary_and_the_leader_cut_off_the_others_elect_and_fail_over() {
    let mut fm = FaultMesh::start(FaultOptions::three_regions_on_etcd());
    let leader = fm.mesh.get(drmesh_tests::regions::STATUS).body["coordinators"].clone();
    assert_eq!(leader["standing"], "LEADER", "{leader:#}");
    assert_eq!(leader["answeredBy"], "c0", "{leader:#}");
    let (old, new, third) = (fm.db(0), fm.db(1), fm.db(2));
    let limit = Duration::from_secs(120);
    let writer = Writer::start(fm.resolver(), limit);
    let inside = fm
        .topo
        .in_ns(&fm.regions[0], || Probe::start(vec![old], limit));
    let outside = Probe::start(vec![new, third], limit);
    std::thread::sleep(Duration::from_millis(1500));

    let cut = Instant::now();
    fm.topo.cut(&fm.regions[0]);
    // The test asks c1 from now on (a follower forwards what the leader holds).
    fm.mesh.talk_to_the_next_coordinator();
    let done = fm.failover_finished(Duration::from_secs(90));
    std::thread::sleep(Duration::from_millis(500));
    let writes = writer.stop();
    let (inside, outside) = (inside.stop(), outside.stop());

    assert_automatic_completion(&done);
    assert_one_writable_at_a_time(&inside, &outside, &fm);
    assert!(
        outside.overlaps().is_empty() && outside.first_accepted(third).is_none(),
        "only the failover's target took writes outside the cut region"
    );
    let c = &done["coordinators"];
    assert_ne!(c["leader"], "c0", "{c:#}");
    assert!(
        c["term"].as_i64() > leader["term"].as_i64(),
        "{c:#} after {leader:#}"
    );
    assert!(drmesh_agent::failover::is_fenced(&fm.cluster(0).data_dir));
    let first = writes
        .first_ack_by_after(new, cut)
        .expect("a write through the name on the new primary after the cut");
    assert_only_in_flight_acks(&writes, old, cut);
    eprintln!(
        "region of the primary and the leader cut: new leader {}, first write through the DNS \
         name on the new primary {} ms after the cut",
        c["leader"],
        first.duration_since(cut).as_millis()
    );
    assert_eq!(fm.bind.answer(), vec![new.ip()]);
    let missing = missing_writes(&writes, new);
    assert!(
        missing.is_empty(),
        "acknowledged writes missing on the new primary: {missing:?}"
    );
}

/// Issue 19: etcd loses its quorum (two of three members killed). Every coordinator is
/// cut off and decides nothing, and the primary keeps its lease through the mesh: it
/// takes writes all along, no failover starts, and decisions resume with the quorum.
#[test]
fn etcd_losing_its_quorum_leaves_the_primary_writable_through_the_mesh() {
    let mut fm = FaultMesh::start(FaultOptions::three_regions_on_etcd());
    let primary = fm.db(0);
    let limit = Duration::from_secs(90);
    let writer = Writer::start(fm.resolver(), limit);
    let probe = Probe::start(vec![primary, fm.db(1), fm.db(2)], limit);
    std::thread::sleep(Duration::from_millis(1500));

    let lost = Instant::now();
    let etcd = fm.etcd.as_mut().expect("an etcd cluster");
    etcd.kill(1);
    etcd.kill(2);
    let cut = drmesh_tests::wait_for(Duration::from_secs(20), || {
        let s = fm.mesh.get(drmesh_tests::regions::STATUS).body;
        (s["coordinators"]["standing"] == "CUT").then_some(())
    });
    assert!(
        cut.is_some(),
        "{}",
        fm.mesh.get(drmesh_tests::regions::STATUS).text
    );
    // Three leases with no coordinator deciding: the primary's lease holds by its peers.
    std::thread::sleep(LEASE * 3);
    let etcd = fm.etcd.as_mut().expect("an etcd cluster");
    etcd.start_member(1);
    etcd.start_member(2);
    // A leader again (c0, or another that c0 follows).
    let leads = drmesh_tests::wait_for(Duration::from_secs(30), || {
        let s = fm.mesh.get(drmesh_tests::regions::STATUS).body;
        let c = &s["coordinators"];
        (c["standing"] != "CUT" && c["leader"].is_string()).then_some(())
    });
    assert!(
        leads.is_some(),
        "{}",
        fm.mesh.get(drmesh_tests::regions::STATUS).text
    );
    std::thread::sleep(Duration::from_secs(2));
    let writes = writer.stop();
    let rounds = probe.stop();

    assert!(rounds.overlaps().is_empty(), "{:?}", rounds.overlaps());
    assert!(rounds.first_accepted(fm.db(1)).is_none() && rounds.first_accepted(fm.db(2)).is_none());
    let last = rounds
        .last_accepted(primary)
        .expect("the primary took writes");
    assert!(
        last > lost + LEASE * 3,
        "the primary stopped taking writes during the cut"
    );
    // No gap in its writes longer than a couple of seconds while etcd was gone.
    let acked: Vec<Instant> = writes
        .acknowledged
        .iter()
        .filter(|(_, _, s)| *s == primary)
        .map(|(_, at, _)| *at)
        .collect();
    let gap = acked
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    assert!(gap < Duration::from_secs(2), "writes paused {gap:?}");
    assert!(
        fm.failover_status().is_none(),
        "no failover while nothing could decide"
    );
    assert!(!drmesh_agent::failover::is_fenced(&fm.cluster(0).data_dir));
    eprintln!(
        "etcd quorum lost for {:?}: the primary took {} writes, longest pause {gap:?}",
        LEASE * 3,
        acked.len()
    );
}

#[test]
fn a_crashed_primary_postgres_fails_over_and_loses_no_acknowledged_write() {
    let fm = FaultMesh::start(FaultOptions::default());
    let (old, new) = (fm.db(0), fm.db(1));
    let limit = Duration::from_secs(90);
    let writer = Writer::start(fm.resolver(), limit);
    let probe = Probe::start(vec![old, new], limit);
    std::thread::sleep(Duration::from_millis(1500));

    let crash = Instant::now();
    fm.crash_postgres(0);
    let done = fm.failover_finished(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let writes = writer.stop();
    let probe = probe.stop();

    assert_automatic_completion(&done);
    assert!(
        probe.overlaps().is_empty(),
        "two servers took writes at once: {:?}",
        probe.overlaps()
    );
    let first = writes
        .first_ack_by_after(new, crash)
        .expect("a write through the name on the new primary after the crash");
    assert_only_in_flight_acks(&writes, old, crash);
    eprintln!(
        "primary crash: first write through the DNS name on the new primary {} ms after the crash",
        first.duration_since(crash).as_millis()
    );
    assert!(drmesh_agent::failover::is_fenced(&fm.cluster(0).data_dir));
    assert_eq!(fm.bind.answer(), vec![new.ip()]);
    let missing = missing_writes(&writes, new);
    assert!(
        missing.is_empty(),
        "acknowledged writes missing on the new primary: {missing:?}"
    );
}

/// Writes one row on region `i`'s server from region `from`'s namespace, over the mesh
/// network.
fn writable_over_the_mesh(fm: &FaultMesh, from: usize, i: usize) -> bool {
    let out = fm
        .topo
        .command(&fm.regions[from], "psql")
        .args([
            "-X",
            "-h",
            &fm.topo.mesh_ip(&fm.regions[i]).to_string(),
            "-p",
            &fm.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            "set synchronous_commit = local; insert into drmesh_probe values ('mesh', now())",
        ])
        .output()
        .expect("psql");
    out.status.success()
}

#[test]
fn a_coordinator_cut_from_the_primary_alone_starts_no_failover() {
    let fm = FaultMesh::start(FaultOptions::default());
    fm.topo.cut_control(&fm.regions[0]);
    // Three leases: heartbeats are missing for far longer than the lease, the
    // coordinator cannot reach the database, but the standby's agent can.
    std::thread::sleep(LEASE * 3);
    let health = fm.mesh.get(drmesh_tests::regions::STATUS).body["healthChecks"][0].clone();
    assert_eq!(fm.failover_status(), None, "no failover: {health:#}");
    assert_ne!(health["verdict"], "DOWN", "{health:#}");
    assert!(
        writable_over_the_mesh(&fm, 1, 0),
        "the primary still takes writes (the mesh reaches it)"
    );
    assert!(!drmesh_agent::failover::is_fenced(&fm.cluster(0).data_dir));
    fm.topo.heal(&fm.regions[0]);
    fm.wait_primary_up();
    assert_eq!(fm.failover_status(), None);
}

#[test]
fn a_coordinator_down_for_a_minute_starts_no_failover() {
    let secs: u64 = std::env::var("DRMESH_COORDINATOR_DOWN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut fm = FaultMesh::start(FaultOptions::default());
    let primary = fm.db(0);
    let down = Duration::from_secs(secs);
    let probe = Probe::start(vec![primary], down + Duration::from_secs(30));
    fm.mesh.coordinator.kill9();
    let killed = Instant::now();
    std::thread::sleep(down);
    let probe = probe.stop();
    // The primary took writes all along: in the last second as in the first.
    let last = probe
        .last_accepted(primary)
        .expect("the primary took writes");
    assert!(
        last.duration_since(killed) > down - Duration::from_secs(1),
        "the primary stopped taking writes {} ms after the coordinator went away",
        last.duration_since(killed).as_millis()
    );
    let rounds = probe.rounds.len();
    let accepted = probe.accepted_rounds(primary);
    assert!(
        accepted * 100 >= rounds * 95,
        "the primary took writes in only {accepted} of {rounds} probe rounds"
    );
    assert!(!drmesh_agent::failover::is_fenced(&fm.cluster(0).data_dir));
    fm.mesh.restart_coordinator();
    fm.wait_primary_up();
    assert_eq!(fm.failover_status(), None);
    assert!(fm.agent_log(0).contains("mesh view"), "{}", fm.agent_log(0));
}

#[test]
fn a_thousand_dropped_heartbeats_shorter_than_the_lease_start_no_failover() {
    let fm = FaultMesh::start(FaultOptions {
        heartbeat_ms: 50,
        ..FaultOptions::default()
    });
    let primary = fm.db(0);
    // 13 × 4 s of silence at a 50 ms heartbeat: 1,040 heartbeats dropped, each gap
    // shorter than the 5 s lease.
    let gap = Duration::from_secs(4);
    let cycles = 13;
    for _ in 0..cycles {
        fm.topo.cut_control(&fm.regions[0]);
        std::thread::sleep(gap);
        fm.topo.heal(&fm.regions[0]);
        std::thread::sleep(Duration::from_millis(500));
    }
    let dropped = cycles * (gap.as_millis() / 50) as usize;
    assert!(dropped >= 1000, "{dropped}");
    assert_eq!(
        fm.failover_status(),
        None,
        "no failover after {dropped} dropped heartbeats"
    );
    assert!(!drmesh_agent::failover::is_fenced(&fm.cluster(0).data_dir));
    fm.wait_primary_up();
    let probe = Probe::start(vec![primary], Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        probe.stop().accepted_rounds(primary) > 0,
        "the primary takes writes"
    );
}

#[test]
fn the_remaining_standby_follows_the_new_primary() {
    let fm = FaultMesh::start(FaultOptions {
        regions: vec!["us-west-2".into(), "us-east-1".into(), "eu-west-1".into()],
        synchronous: false,
        ..FaultOptions::default()
    });
    fm.crash_postgres(0);
    let done = fm.failover_finished(Duration::from_secs(90));
    assert_automatic_completion(&done);
    assert_eq!(done["failover"]["targetAgent"], "db-us-east-1", "{done:#}");
    let step6 = done["failover"]["steps"][5]["message"]
        .as_str()
        .unwrap_or("");
    assert!(
        step6.contains("re-pointed at") && step6.contains("db-eu-west-1"),
        "{step6}"
    );
    // eu-west-1's standby streams from the new primary and replays its writes.
    let sender = fm
        .cluster(2)
        .psql("select sender_host from pg_stat_wal_receiver")
        .expect("psql");
    assert_eq!(sender, fm.topo.mesh_ip("us-east-1").to_string());
    fm.cluster(1)
        .psql("insert into drmesh_writes (id) values (424242)")
        .expect("a write on the new primary");
    let replayed = drmesh_tests::wait_for(Duration::from_secs(20), || {
        (fm.cluster(2)
            .psql("select count(*) from drmesh_writes where id = 424242")
            .ok()?
            == "1")
            .then_some(())
    });
    assert!(
        replayed.is_some(),
        "the remaining standby did not replay the new primary's write"
    );
}

#[test]
fn a_coordinator_restarted_while_a_region_is_cut_off_still_waits_out_its_lease() {
    let mut fm = FaultMesh::start(FaultOptions::default());
    let cut = Instant::now();
    fm.topo.cut(&fm.regions[0]);
    // The new coordinator process has never heard the cut-off agent: it must count the
    // agent's lease from its own start, and its majority from the view size the store
    // kept.
    std::thread::sleep(Duration::from_secs(1));
    fm.mesh.restart_coordinator();
    let restarted = Instant::now();
    let done = fm.failover_finished(Duration::from_secs(60));
    assert_automatic_completion(&done);
    assert!(drmesh_agent::failover::is_fenced(&fm.cluster(0).data_dir));
    let promoted = done["failover"]["steps"][2]["endedAt"]
        .as_str()
        .unwrap_or("");
    let step2 = done["failover"]["steps"][1]["message"]
        .as_str()
        .unwrap_or("");
    assert!(step2.contains("fenced itself"), "{step2}");
    assert!(
        restarted.elapsed() > LEASE,
        "promoted ({promoted}) before a lease had passed since the restart"
    );
    eprintln!(
        "coordinator restarted during a region cut: failover done {} ms after the cut",
        cut.elapsed().as_millis()
    );
}

/// `autoRejoin`: a cut-off primary region fences itself and is failed over; once its
/// links are back, its fenced server rejoins the new primary as a standby by itself
/// (`pg_rewind`) and replays the new primary's writes.
#[test]
fn a_cut_off_old_primary_rejoins_by_itself_once_its_region_is_back() {
    let fm = FaultMesh::start(FaultOptions {
        auto_rejoin: true,
        ..FaultOptions::default()
    });
    fm.topo.cut(&fm.regions[0]);
    let done = fm.failover_finished(Duration::from_secs(60));
    assert_automatic_completion(&done);
    // Cut off, it stays fenced: nothing reaches it.
    std::thread::sleep(Duration::from_secs(2));
    assert!(drmesh_agent::failover::is_fenced(&fm.cluster(0).data_dir));

    let healed = Instant::now();
    fm.topo.heal(&fm.regions[0]);
    let standby = drmesh_tests::wait_for(Duration::from_secs(90), || {
        (fm.cluster(0)
            .psql("select status from pg_stat_wal_receiver")
            .ok()?
            == "streaming")
            .then_some(())
    });
    assert!(
        standby.is_some(),
        "the old primary did not rejoin by itself:\n{}",
        fm.mesh.coordinator_log()
    );
    eprintln!(
        "autoRejoin: the old primary streams from the new one {} ms after its region is back",
        healed.elapsed().as_millis()
    );
    fm.cluster(1)
        .psql("insert into drmesh_writes (id) values (515151)")
        .expect("a write on the new primary");
    let replayed = drmesh_tests::wait_for(Duration::from_secs(20), || {
        (fm.cluster(0)
            .psql("select count(*) from drmesh_writes where id = 515151")
            .ok()?
            == "1")
            .then_some(())
    });
    assert!(replayed.is_some(), "the rejoined server did not replay");
    let logged = drmesh_tests::wait_for(Duration::from_secs(20), || {
        fm.mesh
            .coordinator_log()
            .contains("rejoined by itself")
            .then_some(())
    });
    assert!(logged.is_some(), "{}", fm.mesh.coordinator_log());
}

/// Three regions, automatic failover, and DNS updates signed with a wrong TSIG key: a
/// crashed primary is failed over once — one promotion, the run FAILED at step 4 with a
/// CRITICAL alert, the plan (and its health checks) on the promoted server, the third
/// region untouched — and no second failover follows. With the key fixed, `retry`
/// completes the run and moves the name. A crash of the new primary then, within the
/// cool-down, is held, not failed over.
#[test]
fn a_wrong_tsig_key_fails_one_automatic_failover_which_a_retry_completes_and_no_second_follows() {
    let mut fm = FaultMesh::start(FaultOptions {
        regions: vec!["us-west-2".into(), "us-east-1".into(), "eu-west-1".into()],
        synchronous: false,
        wrong_tsig_key: true,
        ..FaultOptions::default()
    });
    fm.crash_postgres(0);
    let done = fm.failover_finished(Duration::from_secs(90));
    let run = done["failover"].clone();
    let id = run["failoverId"].as_str().unwrap().to_string();
    assert_eq!(run["status"], "FAILED", "{run:#}");
    assert_eq!(run["steps"][2]["status"], "DONE", "promoted: {run:#}");
    assert_eq!(run["steps"][3]["status"], "FAILED", "DNS refused: {run:#}");
    // The alert is raised just after the FAILED record is stored.
    let critical = drmesh_tests::wait_for(Duration::from_secs(10), || {
        let a = fm
            .mesh
            .get("/v1/backup-recovery/monitoring/alerts?severity=CRITICAL&status=OPEN");
        (a.text.contains("FAILOVER_FAILED") && a.text.contains(&id)).then_some(a)
    });
    assert!(critical.is_some(), "no FAILOVER_FAILED alert for {id}");

    // Three leases later: still this one failover, one promotion, the plan on it.
    std::thread::sleep(LEASE * 3);
    let status = fm
        .mesh
        .get("/v1/backup-recovery/disaster-recovery/status")
        .body;
    assert_eq!(status["failover"]["failoverId"], id.as_str(), "{status:#}");
    let in_recovery =
        |fm: &FaultMesh, i: usize| fm.cluster(i).psql("select pg_is_in_recovery()").ok();
    assert_eq!(
        in_recovery(&fm, 1).as_deref(),
        Some("f"),
        "us-east-1 promoted"
    );
    assert_eq!(
        in_recovery(&fm, 2).as_deref(),
        Some("t"),
        "eu-west-1 still a standby"
    );
    let plan = fm
        .mesh
        .get("/v1/backup-recovery/disaster-recovery/plans/production_dr_plan");
    assert_eq!(plan.body["activeRegion"], "us-east-1", "{}", plan.text);

    // The key fixed and the coordinator restarted (it reads the key at start): the
    // retry completes from step 4 and the name moves.
    std::fs::copy(fm.bind.secret_file(), fm.bind.wrong_secret_file()).unwrap();
    fm.mesh.restart_coordinator();
    let (ok, out, err) = fm
        .mesh
        .cli(&fm.mesh.admin_token, &["failover-retry", &id, "--wait"]);
    assert!(ok, "{out}\n{err}");
    let done = fm.failover_finished(Duration::from_secs(60));
    assert_eq!(done["failover"]["status"], "COMPLETED", "{done:#}");
    assert_eq!(fm.bind.answer(), vec![fm.db(1).ip()]);

    // Within the cool-down, a crash of the new primary is held, not failed over.
    fm.crash_postgres(1);
    let held = drmesh_tests::wait_for(Duration::from_secs(60), || {
        fm.mesh
            .get("/v1/backup-recovery/monitoring/alerts?status=OPEN")
            .text
            .contains("AUTOMATIC_FAILOVER_HELD")
            .then_some(())
    });
    assert!(held.is_some(), "{}", fm.mesh.coordinator_log());
    std::thread::sleep(LEASE);
    let status = fm
        .mesh
        .get("/v1/backup-recovery/disaster-recovery/status")
        .body;
    assert_eq!(
        status["failover"]["failoverId"],
        id.as_str(),
        "no second failover: {status:#}"
    );
    assert_eq!(
        in_recovery(&fm, 2).as_deref(),
        Some("t"),
        "eu-west-1 not promoted"
    );
}
