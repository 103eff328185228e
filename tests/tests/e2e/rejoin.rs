//! `drmesh rejoin REGION` after a manual failover, on real PostgreSQL clusters: the
//! fenced old primary archives the WAL its archiver left behind, is rewound and streams
//! from the new primary; its data directory stays.

use std::path::Path;
use std::time::Duration;

use drmesh_tests::regions::{finished, two_regions_with, FAILOVER};
use drmesh_tests::wait_for;
use serde_json::Value;

/// The WAL files `archive_status` marks `.ready` (not yet archived).
fn ready_files(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("pg_wal/archive_status"))
        .expect("archive_status")
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".ready")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

fn role_of(mesh: &drmesh_tests::Mesh, id: &str) -> Option<(String, bool)> {
    mesh.status()
        .regions
        .iter()
        .flat_map(|r| &r.agents)
        .find(|a| a.agent_id.as_str() == id)
        .map(|a| (a.role.map(|r| r.to_string()).unwrap_or_default(), a.fenced))
}

#[test]
fn a_fenced_old_primary_rejoins_as_a_standby_of_the_new_primary() {
    let t = two_regions_with(false);
    let mesh = &t.mesh;

    // The old primary's archiver fails from now on, so finished segments stay `.ready`:
    // the WAL a primary had not archived yet when it was fenced.
    t.primary
        .psql("alter system set archive_mode = on")
        .expect("archive_mode");
    t.primary
        .psql("alter system set archive_command = 'false'")
        .expect("archive_command");
    t.primary.stop().expect("stop for archive_mode");
    t.primary.start().expect("start with archive_mode");
    for id in [2, 3] {
        t.primary
            .psql(&format!("insert into orders values ({id})"))
            .expect("write");
        t.primary.psql("select pg_switch_wal()").expect("switch");
    }
    let replayed = wait_for(Duration::from_secs(30), || {
        (t.standby.psql("select count(*) from orders").ok()?.trim() == "3").then_some(())
    });
    assert!(replayed.is_some(), "the standby replays the writes");
    wait_for(Duration::from_secs(20), || {
        (role_of(mesh, "db-west")?.0 == "primary").then_some(())
    })
    .expect("db-west reports its primary again");

    // The runbook's failover to us-east-1.
    let started = mesh.post(
        FAILOVER,
        Some(r#"{"planId": "production_dr_plan", "targetRegion": "us-east-1"}"#),
    );
    assert_eq!(started.status, 202, "{}", started.text);
    let done = finished(mesh);
    assert_eq!(done["failover"]["status"], "COMPLETED", "{done:#}");
    assert!(drmesh_agent::failover::is_fenced(&t.primary.data_dir));
    let leftover = ready_files(&t.primary.data_dir);
    assert!(
        !leftover.is_empty(),
        "the fenced old primary has unarchived WAL"
    );
    // The new primary takes writes the old one never saw.
    t.standby
        .psql("insert into orders values (10), (11)")
        .expect("write on the new primary");

    // The new primary's region has nothing fenced: refused, and nothing changes.
    let (ok, _, err) = mesh.cli(&mesh.admin_token, &["rejoin", "us-east-1"]);
    assert!(
        !ok && err.contains("400") && err.contains("no fenced server in us-east-1"),
        "{err}"
    );
    assert!(err.contains("db-east (primary)"), "{err}");
    assert_eq!(
        t.standby.psql("select pg_is_in_recovery()").unwrap().trim(),
        "f"
    );
    assert!(drmesh_agent::failover::is_fenced(&t.primary.data_dir));
    // An unknown region.
    let (ok, _, err) = mesh.cli(&mesh.admin_token, &["rejoin", "ap-south-1"]);
    assert!(!ok && err.contains("404"), "{err}");
    // A viewer may not.
    let viewer = mesh.create_token("viewer");
    let (ok, _, err) = mesh.cli(&viewer, &["rejoin", "us-west-2"]);
    assert!(!ok && err.contains("403"), "{err}");

    // The rejoin.
    let rejoin_started = std::time::Instant::now();
    let (ok, out, err) = mesh.cli(
        &mesh.admin_token,
        &["rejoin", "us-west-2", "--output", "json"],
    );
    assert!(ok, "drmesh rejoin failed: {err}\n{out}");
    eprintln!(
        "rejoin took {} ms: {out}",
        rejoin_started.elapsed().as_millis()
    );
    let answer: Value = serde_json::from_str(&out).expect("JSON answer");
    assert_eq!(answer["region"], "us-west-2", "{answer:#}");
    assert_eq!(answer["primaryAgentId"], "db-east", "{answer:#}");
    let rejoined = &answer["rejoined"][0];
    assert_eq!(rejoined["agentId"], "db-west", "{answer:#}");
    let outcome = &rejoined["outcome"];
    assert_eq!(outcome["streaming"], true, "{answer:#}");
    assert!(outcome["timeline"].as_u64().unwrap_or(0) >= 2, "{answer:#}");
    let archived: Vec<String> =
        serde_json::from_value(outcome["archivedSegments"].clone()).expect("archivedSegments");
    for name in &leftover {
        assert!(archived.contains(name), "{name} archived: {answer:#}");
    }

    // The old primary is a standby, streaming the new primary's writes.
    assert_eq!(
        t.primary.psql("select pg_is_in_recovery()").unwrap().trim(),
        "t"
    );
    let caught_up = wait_for(Duration::from_secs(30), || {
        (t.primary
            .psql("select count(*) from orders where id >= 10")
            .ok()?
            .trim()
            == "2")
            .then_some(())
    });
    assert!(
        caught_up.is_some(),
        "the rejoined standby has the new primary's rows"
    );
    let streaming = wait_for(Duration::from_secs(10), || {
        let n = t
            .standby
            .psql("select count(*) from pg_stat_replication where state = 'streaming'")
            .ok()?;
        (n.trim() == "1").then_some(())
    });
    assert!(streaming.is_some(), "the new primary lists its standby");
    let seen = wait_for(Duration::from_secs(20), || {
        let (role, fenced) = role_of(mesh, "db-west")?;
        (role == "standby" && !fenced).then_some(())
    });
    assert!(
        seen.is_some(),
        "the coordinator shows db-west as a standby: {:?}",
        role_of(mesh, "db-west")
    );

    // Nothing was deleted; the leftover WAL is archived and marked done.
    assert!(t.primary.data_dir.join("PG_VERSION").exists());
    let still_ready = ready_files(&t.primary.data_dir);
    let repo_wal = mesh.dir.path().join("pg/repo/wal/00000001");
    for name in &leftover {
        assert!(!still_ready.contains(name), "{name} is still .ready");
        assert!(repo_wal.join(name).exists(), "{name} in the repository");
    }

    // Once it runs it is not fenced: a second rejoin is refused, the standby untouched.
    let (ok, _, err) = mesh.cli(&mesh.admin_token, &["rejoin", "us-west-2"]);
    assert!(!ok && err.contains("400"), "{err}");
    assert_eq!(
        t.primary.psql("select pg_is_in_recovery()").unwrap().trim(),
        "t"
    );
}

#[test]
fn a_crashed_old_primary_with_writes_the_standby_never_saw_is_rewound() {
    let t = two_regions_with(false);
    let mesh = &t.mesh;
    // Cut the standby off, then write on the primary: WAL the standby never receives.
    t.standby
        .psql("alter system set primary_conninfo = 'host=127.0.0.1 port=1 user=postgres'")
        .expect("cut the stream");
    t.standby.psql("select pg_reload_conf()").expect("reload");
    let cut = wait_for(Duration::from_secs(30), || {
        (t.primary
            .psql("select count(*) from pg_stat_replication")
            .ok()?
            .trim()
            == "0")
            .then_some(())
    });
    assert!(cut.is_some(), "the standby stopped streaming");
    t.primary
        .psql("insert into orders values (100)")
        .expect("write");
    t.primary.psql("select pg_switch_wal()").expect("switch");
    t.primary
        .psql("insert into orders values (101)")
        .expect("write");
    // The primary crashes; the operator fails over.
    let pid = t.primary.postmaster_pid().expect("the primary runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the primary's postmaster");
    let started = mesh.post(
        FAILOVER,
        Some(r#"{"planId": "production_dr_plan", "targetRegion": "us-east-1"}"#),
    );
    assert_eq!(started.status, 202, "{}", started.text);
    let done = finished(mesh);
    assert_eq!(done["failover"]["status"], "COMPLETED", "{done:#}");
    assert!(drmesh_agent::failover::is_fenced(&t.primary.data_dir));
    t.standby
        .psql("insert into orders values (10)")
        .expect("write on the new primary");

    let (ok, out, err) = mesh.cli(
        &mesh.admin_token,
        &["rejoin", "us-west-2", "--output", "json"],
    );
    assert!(ok, "drmesh rejoin failed: {err}\n{out}");
    let answer: Value = serde_json::from_str(&out).expect("JSON answer");
    eprintln!("rejoin: {answer}");
    let outcome = &answer["rejoined"][0]["outcome"];
    assert_eq!(outcome["rewound"], true, "{answer:#}");
    assert_eq!(outcome["streaming"], true, "{answer:#}");

    // A standby of the new primary, on its own port (its configuration kept), with the
    // new primary's row and without the two the old timeline had.
    assert_eq!(
        t.primary.psql("select pg_is_in_recovery()").unwrap().trim(),
        "t"
    );
    let caught_up = wait_for(Duration::from_secs(30), || {
        (t.primary
            .psql("select string_agg(id::text, ',' order by id) from orders")
            .ok()?
            .trim()
            == "1,10")
            .then_some(())
    });
    assert!(
        caught_up.is_some(),
        "the rewound standby follows the new timeline: {:?}",
        t.primary
            .psql("select string_agg(id::text, ',' order by id) from orders")
    );
    assert!(t.primary.data_dir.join("standby.signal").exists());
    assert!(t.primary.data_dir.join("PG_VERSION").exists());
}
