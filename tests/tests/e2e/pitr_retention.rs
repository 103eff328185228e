//! Point-in-time recovery after retention enforcement (issue 7), on real clusters: base
//! backups with marker rows written between them, the policies enforced as of an
//! injected instant (`?now=`) so that the oldest backups expire and their WAL goes, then
//! a recovery to the oldest retained point works and one before it is refused naming the
//! earliest recoverable time — on one timeline, and after a failover switched to the
//! next.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use drmesh_pg::local::{free_port, prepare_parent_dir, LocalCluster, PgBin};
use drmesh_tests::regions::{finished, two_regions_opts, Options, FAILOVER};
use drmesh_tests::{bin, wait_for, walk_files, Mesh};
use serde_json::Value;

use super::database::{agent_and_full_backup, database_sections, wait_backup, Fixture, DB};

const RETENTION: &str = "/v1/backup-recovery/retention";
const PITR_INFO: &str = "/v1/backup-recovery/recovery/point-in-time";

/// Database backups are kept 90 seconds (no calendar tier); never enforced by the
/// schedule during a test.
const POLICY: &str = "[retention]\nschedule = \"off\"\n[retention.database]\nfull = \"90s\"\nincremental = \"90s\"\nweekly = 0\nmonthly = 0\nyearly = 0\n";

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn instant(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("not an instant: {v}"))
        .with_timezone(&Utc)
}

/// A base backup as its manifest summary tells it.
#[derive(Clone, Debug)]
struct Base {
    finished: DateTime<Utc>,
    stopped: DateTime<Utc>,
    timeline: u64,
    start_wal: String,
}

/// The repository's base backups by id (`drmesh repo snapshots`).
fn bases(repo: &Path) -> BTreeMap<String, Base> {
    let out = Command::new(bin("drmesh"))
        .args(["repo", "snapshots", "--output", "json", "--repo"])
        .arg(repo)
        .env_remove("DRMESH_REPO_KEY_FILE")
        .env_remove("DRMESH_REPO_PASSPHRASE")
        .output()
        .expect("run drmesh repo snapshots");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("json");
    list.as_array()
        .unwrap()
        .iter()
        .filter(|s| s["postgres"].is_object())
        .map(|s| {
            let pg = &s["postgres"];
            (
                s["id"].as_str().unwrap().to_string(),
                Base {
                    finished: instant(&s["finishedAt"]),
                    stopped: instant(&pg["stoppedAt"]),
                    timeline: pg["timeline"].as_u64().unwrap(),
                    start_wal: pg["startWal"].as_str().unwrap().to_string(),
                },
            )
        })
        .collect()
}

/// The archived WAL files, as `timeline/name` (the timeline in decimal, as the reports
/// name them).
fn wal_files(repo: &Path) -> Vec<String> {
    let wal = repo.join("wal");
    let mut out: Vec<String> = walk_files(&wal)
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&wal).ok()?.to_str()?.to_string();
            let (tl, name) = rel.split_once('/')?;
            Some(format!("{}/{name}", u32::from_str_radix(tl, 16).ok()?))
        })
        .collect();
    out.sort();
    out
}

/// Whether `timeline/name` is a WAL segment (not a history, backup label or partial
/// file) of `timeline` at or after `from`.
fn segment_from(entry: &str, timeline: u64, from: &str) -> bool {
    let (tl, name) = entry.split_once('/').unwrap();
    tl.parse::<u64>().ok() == Some(timeline)
        && name.len() == 24
        && name.chars().all(|c| c.is_ascii_hexdigit())
        && name >= from
}

/// A marker row, stamped with the server's clock.
fn marker(c: &LocalCluster, note: &str) {
    c.psql(&format!("insert into markers (note) values ('{note}')"))
        .expect("marker");
}

/// Switches to a new WAL segment and waits until `c`'s archiver has pushed the old one.
fn archive_current_wal(c: &LocalCluster) {
    let last = c
        .psql("select pg_walfile_name(pg_switch_wal())")
        .expect("switch wal");
    let archived = wait_for(Duration::from_secs(60), || {
        let done = c
            .psql("select coalesce(last_archived_wal, '') from pg_stat_archiver")
            .ok()?;
        (done >= last).then_some(())
    });
    assert!(archived.is_some(), "segment {last} was not archived");
}

/// Starts a full backup through the API (503 until an agent has reported its primary)
/// and waits until it completed.
fn full_backup(mesh: &Mesh) -> String {
    let a = wait_for(Duration::from_secs(60), || {
        let a = mesh.post(&format!("{DB}/backup/full"), None);
        (a.status != 503).then_some(a)
    })
    .expect("a backup accepted");
    assert_eq!(a.status, 202, "{}", a.text);
    let id = a.body["backupId"].as_str().unwrap().to_string();
    let done = wait_backup(mesh, &id);
    assert_eq!(done["status"], "COMPLETED", "{done}");
    id
}

/// The policies enforced as of `now`; the report of the one database repository.
fn enforce(mesh: &Mesh, now: DateTime<Utc>, dry_run: bool) -> Value {
    let a = mesh.post(
        &format!(
            "{RETENTION}/enforce-policies?dryRun={dry_run}&now={}",
            rfc3339(now)
        ),
        None,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let reports: Vec<&Value> = a.body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|x| x["repositories"].as_array().unwrap())
        .filter(|r| r["repository"] == "database")
        .collect();
    // Each agent with a [database] section enforces on its repository, and both agents
    // of a failover pair share one: what they did together.
    let done: Vec<&Value> = reports
        .iter()
        .map(|r| &r["report"])
        .filter(|r| r.is_object())
        .collect();
    assert!(!done.is_empty(), "{}", a.text);
    let union = |field: &str| {
        let all: std::collections::BTreeSet<&str> = done
            .iter()
            .flat_map(|r| r[field].as_array().unwrap())
            .map(|v| v.as_str().unwrap())
            .collect();
        serde_json::json!(all)
    };
    serde_json::json!({"deleted": union("deleted"), "walDeleted": union("walDeleted")})
}

/// When the policies expire `older` but keep `oldest_kept` (both finished, 90 s kept):
/// halfway between the two ends, 90 s on.
fn expiry_between(older: &Base, oldest_kept: &Base) -> DateTime<Utc> {
    let gap = oldest_kept.finished - older.finished;
    assert!(gap > chrono::Duration::zero());
    oldest_kept.finished + chrono::Duration::seconds(90) - gap / 2
}

/// `GET …/recovery/point-in-time/T`.
fn pitr_info(mesh: &Mesh, t: DateTime<Utc>) -> Value {
    let a = mesh.get(&format!("{PITR_INFO}/{}", rfc3339(t)));
    assert_eq!(a.status, 200, "{}", a.text);
    a.body
}

/// Checks that a recovery to `earliest` (the oldest retained backup's end) is possible
/// and one to `before` is refused, naming `earliest`; through the API and the CLI.
fn assert_window_starts_at(
    mesh: &Mesh,
    oldest: &str,
    earliest: DateTime<Utc>,
    before: DateTime<Utc>,
) {
    let ok = pitr_info(mesh, earliest);
    assert_eq!(ok["recoverable"], true, "{ok}");
    assert_eq!(ok["backupId"], oldest, "{ok}");
    assert_eq!(instant(&ok["earliestRecoverableTime"]), earliest, "{ok}");

    let refused = pitr_info(mesh, before);
    assert_eq!(refused["recoverable"], false, "{refused}");
    assert!(refused["backupId"].is_null(), "{refused}");
    let reason = refused["reason"].as_str().unwrap_or_default();
    let named = reason
        .split_once("the earliest recoverable time is ")
        .map(|(_, t)| instant(&Value::String(t.to_string())));
    assert_eq!(named, Some(earliest), "{reason}");

    let (ok, out, err) = mesh.cli(&mesh.admin_token, &["pitr", "info", &rfc3339(before)]);
    assert!(ok, "{err}");
    assert!(
        out.contains("NOT recoverable") && out.contains("the earliest recoverable time is"),
        "{out}"
    );
}

/// `drmesh pitr restore --time T --environment staging --wait`: (success, stdout, stderr).
fn pitr_restore(mesh: &Mesh, t: DateTime<Utc>) -> (bool, String, String) {
    mesh.cli(
        &mesh.admin_token,
        &[
            "pitr",
            "restore",
            "--time",
            &rfc3339(t),
            "--environment",
            "staging",
            "--wait",
        ],
    )
}

/// The staging server a recovery left running; stopped on drop.
struct Staging(LocalCluster);

impl Staging {
    fn open(dir: &Path, port: u16) -> Staging {
        let pg = PgBin::find().unwrap_or_else(|e| {
            panic!("{e}: install PostgreSQL (apt-get install -y postgresql), or set DRMESH_PG_BIN")
        });
        Staging(LocalCluster::open(&pg, "staging", dir, port).expect("open staging"))
    }

    fn markers(&self) -> String {
        self.0
            .psql("select string_agg(note, ',' order by at) from markers")
            .expect("markers")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = self.0.stop_immediate();
    }
}

/// The refusal of a recovery before the window, then the recovery to its start, into
/// staging; the markers staging holds then.
fn recover_to_the_window_start(
    mesh: &Mesh,
    earliest: DateTime<Utc>,
    before: DateTime<Utc>,
    staging: (&Path, u16),
) -> Staging {
    let (ok, out, err) = pitr_restore(mesh, before);
    assert!(!ok, "a recovery before the window was not refused: {out}");
    assert!(
        err.contains("the earliest recoverable time is"),
        "the refusal names no earliest time: {err}"
    );
    let (ok, out, err) = pitr_restore(mesh, earliest);
    assert!(
        ok,
        "the recovery to the oldest retained point failed: {out}{err}"
    );
    let s = Staging::open(staging.0, staging.1);
    assert_eq!(s.0.psql("select pg_is_in_recovery()").unwrap(), "f");
    s
}

#[test]
fn pitr_to_the_oldest_retained_point_works_after_enforcement_and_before_it_is_refused() {
    let fx = Fixture::new("5s");
    fx.pgbench(&["-i", "-s", "1", "-q"]);
    fx.primary
        .psql("create table markers (note text primary key, at timestamptz not null default clock_timestamp())")
        .expect("markers");
    let mesh = Mesh::start_with(200, POLICY);
    let staging = fx.root.join("staging");
    prepare_parent_dir(&fx.root).unwrap();
    let staging_port = free_port().unwrap();
    let sections = format!(
        "{}[database.environments.staging]\ndata_dir = \"{}\"\nport = {staging_port}\n",
        database_sections(&fx.root, &fx.primary, "5s"),
        staging.display()
    );
    let repo = fx.root.join("repo");

    // Three backups, with writes and a marker before each.
    marker(&fx.primary, "1-before-first");
    let (agent, _, first, _) = agent_and_full_backup(&fx, &mesh, &sections, None);
    let done = wait_backup(&mesh, &first);
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", agent.log_text());
    fx.pgbench(&["-T", "1"]);
    marker(&fx.primary, "2-before-second");
    archive_current_wal(&fx.primary);
    let second = full_backup(&mesh);
    fx.pgbench(&["-T", "1"]);
    marker(&fx.primary, "3-before-third");
    let third = full_backup(&mesh);
    marker(&fx.primary, "4-after-third");
    archive_current_wal(&fx.primary);
    let b = bases(&repo);
    let (b1, b2) = (b[&first].clone(), b[&second].clone());
    // Between the first backup's end and the second's: recoverable now, from the first.
    let between = b1.stopped + (b2.stopped - b1.stopped) / 2;
    let info = pitr_info(&mesh, between);
    assert_eq!(info["recoverable"], true, "{info}");
    assert_eq!(info["backupId"], first.as_str(), "{info}");

    // Enforced as of an instant at which the first has expired and the second not.
    let now = expiry_between(&b1, &b2);
    let operator = mesh.create_token("operator");
    let url = mesh.url(&format!(
        "{RETENTION}/enforce-policies?now={}",
        rfc3339(now)
    ));
    let denied = drmesh_tests::http("POST", &url, Some(&operator), None);
    assert_eq!(
        denied.status, 403,
        "a real run as of another instant is an admin's: {}",
        denied.text
    );
    let bad = mesh.post(&format!("{RETENTION}/enforce-policies?now=soon"), None);
    assert_eq!(bad.status, 400, "{}", bad.text);
    let wal_before = wal_files(&repo);
    let dry = enforce(&mesh, now, true);
    assert_eq!(dry["deleted"], serde_json::json!([first]), "{dry}");
    assert_eq!(wal_files(&repo), wal_before, "a dry run deletes nothing");
    let report = enforce(&mesh, now, false);
    assert_eq!(report["deleted"], serde_json::json!([first]), "{report}");
    assert_eq!(report["walDeleted"], dry["walDeleted"], "{report}");
    assert!(
        !report["walDeleted"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let rec = mesh.get(&format!("{DB}/backups/{first}"));
    assert_eq!(rec.body["status"], "EXPIRED", "{}", rec.text);
    let kept: Vec<String> = bases(&repo).into_keys().collect();
    assert_eq!(kept, [second.clone(), third.clone()]);
    // Exactly the WAL before the second backup went: all from its start on is there.
    let wal_after = wal_files(&repo);
    for gone in report["walDeleted"].as_array().unwrap() {
        let gone = gone.as_str().unwrap();
        assert!(!segment_from(gone, b2.timeline, &b2.start_wal), "{gone}");
        assert!(!wal_after.contains(&gone.to_string()), "{gone}");
    }
    let from_second: Vec<&String> = wal_before
        .iter()
        .filter(|w| segment_from(w, b2.timeline, &b2.start_wal))
        .collect();
    assert!(!from_second.is_empty());
    for w in from_second {
        assert!(wal_after.contains(w), "{w} deleted");
    }

    // The window now starts at the second backup's end.
    assert_window_starts_at(&mesh, &second, b2.stopped, between);
    let s = recover_to_the_window_start(&mesh, b2.stopped, between, (&staging, staging_port));
    assert_eq!(s.markers(), "1-before-first,2-before-second");
    drop(agent);
}

#[test]
fn pitr_to_the_oldest_retained_point_on_the_new_timeline_works_after_a_failover() {
    let mut t = two_regions_opts(Options {
        coordinator_extra: POLICY.into(),
        ..Options::default()
    });
    // Both servers archive into the repository both agents share (the standby once it
    // is promoted); the standby's agent has a staging environment.
    let root = t.mesh.dir.path().join("pg");
    let repo = root.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    prepare_parent_dir(&repo).unwrap();
    let staging = root.join("staging");
    let staging_port = free_port().unwrap();
    for (c, agent) in [(&t.primary, "db-west"), (&t.standby, "db-east")] {
        c.append_config(
            "postgresql.conf",
            &format!(
                "archive_mode = on\narchive_command = '{} --config {} wal-push %p'\n",
                bin("drmesh-agent").display(),
                t.mesh
                    .dir
                    .path()
                    .join(format!("agent-{agent}.toml"))
                    .display()
            ),
        )
        .expect("archive settings");
        c.stop().expect("stop");
        c.start().expect("start");
        c.wait_ready(Duration::from_secs(30)).expect("ready");
    }
    let east_config = t.mesh.dir.path().join("agent-db-east.toml");
    let mut text = std::fs::read_to_string(&east_config).unwrap();
    text.push_str(&format!(
        "[database.environments.staging]\ndata_dir = \"{}\"\nport = {staging_port}\n",
        staging.display()
    ));
    std::fs::write(&east_config, text).unwrap();
    t.agents[1].kill9();
    t.agents[1] = t.mesh.spawn_agent(&east_config);
    let streaming = wait_for(Duration::from_secs(30), || {
        let r = t
            .primary
            .psql("select count(*) from pg_stat_replication where state = 'streaming'")
            .ok()?;
        (r == "1").then_some(())
    });
    assert!(streaming.is_some(), "the standby streams again");
    let mesh = &t.mesh;

    // A backup on timeline 1.
    t.primary
        .psql("create table markers (note text primary key, at timestamptz not null default clock_timestamp())")
        .expect("markers");
    marker(&t.primary, "1-before-first");
    let first = full_backup(mesh);
    marker(&t.primary, "2-after-first");
    // An instant on timeline 1 after the first backup: recoverable until it expires.
    let between = Utc::now();
    archive_current_wal(&t.primary);
    let replayed = wait_for(Duration::from_secs(30), || {
        (t.standby.psql("select count(*) from markers").ok()? == "2").then_some(())
    });
    assert!(replayed.is_some(), "the standby replays the markers");

    // The failover: the standby is promoted onto timeline 2.
    let started = mesh.post(
        FAILOVER,
        Some(r#"{"planId": "production_dr_plan", "targetRegion": "us-east-1"}"#),
    );
    assert_eq!(started.status, 202, "{}", started.text);
    let done = finished(mesh);
    assert_eq!(done["failover"]["status"], "COMPLETED", "{done:#}");

    // An instant past the switch, before any backup on timeline 2.
    marker(&t.standby, "3-before-second");
    let after_switch = Utc::now();
    archive_current_wal(&t.standby);
    // Two backups on the new primary, with markers around them.
    let second = full_backup(mesh);
    marker(&t.standby, "4-before-third");
    archive_current_wal(&t.standby);
    let third = full_backup(mesh);
    marker(&t.standby, "5-after-third");
    archive_current_wal(&t.standby);
    let b = bases(&repo);
    let (b1, b2) = (b[&first].clone(), b[&second].clone());
    assert_eq!((b1.timeline, b2.timeline, b[&third].timeline), (1, 2, 2));
    let info = pitr_info(mesh, between);
    assert_eq!(info["recoverable"], true, "{info}");
    assert_eq!(info["backupId"], first.as_str(), "{info}");
    // Past the switch, from the timeline-1 backup (the newest that ends before it): the
    // WAL chain follows timeline 2 from its history file, as PostgreSQL's 'latest' does.
    let info = pitr_info(mesh, after_switch);
    assert_eq!(info["recoverable"], true, "{info}");
    assert_eq!(info["backupId"], first.as_str(), "{info}");
    assert!(
        info["walEnd"]
            .as_str()
            .is_some_and(|w| w.starts_with("00000002")),
        "{info}"
    );
    let (ok, out, err) = pitr_restore(mesh, after_switch);
    assert!(ok, "the recovery past the switch failed: {out}{err}");
    {
        let s = Staging::open(&staging, staging_port);
        assert_eq!(
            s.markers(),
            "1-before-first,2-after-first,3-before-second",
            "{out}"
        );
    }

    // Enforced so that only the timeline-2 backups are kept.
    let now = expiry_between(&b1, &b2);
    let wal_before = wal_files(&repo);
    let report = enforce(mesh, now, false);
    assert_eq!(report["deleted"], serde_json::json!([first]), "{report}");
    let kept: Vec<String> = bases(&repo).into_keys().collect();
    assert_eq!(kept, [second.clone(), third.clone()]);
    // Timeline 2's WAL from the second backup's start on stays, and its history file.
    let wal_after = wal_files(&repo);
    assert!(
        wal_after.contains(&"2/00000002.history".to_string()),
        "{wal_after:?}"
    );
    let needed: Vec<&String> = wal_before
        .iter()
        .filter(|w| segment_from(w, 2, &b2.start_wal))
        .collect();
    assert!(!needed.is_empty(), "{wal_before:?}");
    for w in needed {
        assert!(wal_after.contains(w), "{w} deleted: {report}");
    }
    assert!(
        !wal_after.iter().any(|w| segment_from(w, 1, "")),
        "timeline 1's segments are needed by no kept backup: {wal_after:?}"
    );

    assert_window_starts_at(mesh, &second, b2.stopped, between);
    let s = recover_to_the_window_start(mesh, b2.stopped, between, (&staging, staging_port));
    assert_eq!(s.markers(), "1-before-first,2-after-first,3-before-second");
}
