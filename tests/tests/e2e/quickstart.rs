//! `drmesh quickstart` brings up three regions with real PostgreSQL (one primary, two
//! streaming standbys), `drmesh status` shows them, the runbook's DR plan exists, the
//! database's DNS name answers the primary's address, Ctrl-C leaves nothing behind, and
//! a second run on the same directory keeps the plan. With `--ha` it runs three
//! coordinators on a three-member etcd cluster, and survives the leader's death.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drmesh_tests::{bin, processes_mentioning, wait_for, Proc};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running quickstart. Dropped (a test that failed half-way), it is asked to stop as
/// Ctrl-C would, so it stops everything it started: a `kill -9` would leave its
/// coordinator, agents and PostgreSQL servers running.
struct Quickstart(Proc);

impl std::ops::Deref for Quickstart {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.0
    }
}

impl std::ops::DerefMut for Quickstart {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.0
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        if !self.0.is_running() {
            return;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.pid() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = wait_for(Duration::from_secs(60), || {
            (!self.0.is_running()).then_some(())
        });
    }
}

/// Starts `drmesh quickstart` on `dir` with `extra` arguments and waits until it is up;
/// its `drmesh.env`.
fn start(dir: &Path, port: u16, log: &Path, extra: &[&str]) -> (Quickstart, String) {
    let dir_arg = dir.display().to_string();
    let port_arg = port.to_string();
    let mut args = vec!["quickstart", "--dir", &dir_arg, "--http-port", &port_arg];
    args.extend_from_slice(extra);
    let mut qs = Quickstart(Proc::spawn("quickstart", &bin("drmesh"), &args, log));
    let env = wait_for(Duration::from_secs(180), || {
        assert!(qs.is_running(), "quickstart exited:\n{}", qs.log_text());
        qs.log_text()
            .contains("Press Ctrl-C")
            .then(|| fs::read_to_string(dir.join("drmesh.env")).ok())
            .flatten()
    })
    .unwrap_or_else(|| panic!("quickstart not up:\n{}", qs.log_text()));
    (qs, env)
}

/// Ctrl-C stops everything: coordinator, agents and all three postmasters.
fn stop(qs: &mut Quickstart, dir: &Path) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qs.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let exited = wait_for(Duration::from_secs(60), || (!qs.is_running()).then_some(()));
    assert!(
        exited.is_some(),
        "quickstart did not stop:\n{}",
        qs.log_text()
    );
    let needle = dir.display().to_string();
    let left = wait_for(Duration::from_secs(5), || {
        processes_mentioning(&needle).is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "left behind: {:?}",
        processes_mentioning(&needle)
    );
}

/// `dig +short` of the database's name at the quickstart's embedded DNS server.
fn dig(server_ip: &str, server_port: &str) -> String {
    let out = Command::new("dig")
        .args([
            "+short",
            "+time=2",
            "+tries=2",
            &format!("@{server_ip}"),
            "-p",
            server_port,
            "db.drmesh.local",
            "A",
        ])
        .output()
        .expect("run dig (bind9-dnsutils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn env_var(env: &str, name: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("export {name}=")))
        .unwrap_or_else(|| panic!("no {name} in drmesh.env:\n{env}"))
        .to_string()
}

const PLAN_URL: &str = "/v1/backup-recovery/disaster-recovery/plans/production_dr_plan";

#[test]
fn quickstart_runs_a_three_region_mesh_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("mesh");
    let port = free_port();
    let (mut qs, env) = start(&dir, port, &tmp.path().join("quickstart.log"), &[]);
    let var = |name: &str| env_var(&env, name);
    let (url, token) = (var("DRMESH_URL"), var("DRMESH_TOKEN"));
    assert_eq!(url, format!("http://127.0.0.1:{port}"));

    // Lag is reported once the standbys have streamed; poll briefly.
    let status = wait_for(Duration::from_secs(20), || {
        let out = Command::new(bin("drmesh"))
            .args(["status", "--output", "json"])
            .env("DRMESH_URL", &url)
            .env("DRMESH_TOKEN", &token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let agents: Vec<serde_json::Value> = v["regions"]
            .as_array()?
            .iter()
            .flat_map(|r| r["agents"].as_array().cloned().unwrap_or_default())
            .collect();
        let lag_known = agents
            .iter()
            .filter(|a| a["role"] == "standby")
            .all(|a| a["replicationLagBytes"].is_u64() && a["replicationLagSeconds"].is_number());
        lag_known.then_some(v)
    })
    .unwrap_or_else(|| panic!("no lag reported:\n{}", qs.log_text()));
    let regions = status["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 3, "{status}");
    let role_of = |name: &str| {
        regions
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["role"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(role_of("us-west-2").as_deref(), Some("primary"));
    assert_eq!(role_of("us-east-1").as_deref(), Some("standby"));
    assert_eq!(role_of("eu-west-1").as_deref(), Some("standby"));
    assert_eq!(status["primaryRegion"], "us-west-2");
    assert_eq!(status["status"], "HEALTHY", "{status}");

    // The text form names all three regions.
    let out = Command::new(bin("drmesh"))
        .arg("status")
        .env("DRMESH_URL", &url)
        .env("DRMESH_TOKEN", &token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for r in ["us-west-2", "us-east-1", "eu-west-1", "primary", "standby"] {
        assert!(text.contains(r), "{text}");
    }

    // The runbook's DR plan ("Create Disaster Recovery Plan") was created with its values.
    let plan = drmesh_tests::http("GET", &format!("{url}{PLAN_URL}"), Some(&token), None);
    assert_eq!(plan.status, 200, "{}\n{}", plan.text, qs.log_text());
    let expected = serde_json::json!({
        "id": "production_dr_plan",
        "name": "Production Disaster Recovery Plan",
        "rpo": "1h",
        "rto": "4h",
        "failoverRegions": ["us-east-1", "eu-west-1"],
        "healthCheckInterval": 300000,
        "automaticFailover": false,
        "notificationChannels": ["slack", "email"],
        "testInterval": 604800000u64
    });
    for (field, value) in expected.as_object().unwrap() {
        assert_eq!(&plan.body[field], value, "{field}: {}", plan.text);
    }
    assert!(
        qs.log_text().contains("DR plan production_dr_plan"),
        "{}",
        qs.log_text()
    );

    // The database's name is served by the coordinator's embedded DNS server, named in
    // the summary, and answers the primary's (us-west-2's) address. Each region's
    // PostgreSQL has an address of its own, which its agent advertises, so a failover
    // changes the answer.
    assert_eq!(var("DRMESH_DB_NAME"), "db.drmesh.local");
    let (dns_ip, dns_port) = (var("DRMESH_DNS_SERVER"), var("DRMESH_DNS_PORT"));
    let command = format!("dig @{dns_ip} -p {dns_port} db.drmesh.local");
    assert!(qs.log_text().contains(&command), "{}", qs.log_text());
    let address_of = |name: &str| {
        regions
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["agents"][0]["postgresAddress"].as_str())
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip().to_string())
    };
    assert_eq!(
        address_of("us-west-2").as_deref(),
        Some("127.0.0.1"),
        "{status}"
    );
    assert_eq!(
        address_of("us-east-1").as_deref(),
        Some("127.0.0.2"),
        "{status}"
    );
    assert_eq!(
        address_of("eu-west-1").as_deref(),
        Some("127.0.0.3"),
        "{status}"
    );
    assert_eq!(dig(&dns_ip, &dns_port), "127.0.0.1", "{}", qs.log_text());

    // The uploads are backed up through the runbook's endpoint, and kept as a plain
    // archive in `backups/documents/snapshots/`.
    let base = format!("{url}/v1/backup-recovery/documents");
    let accepted = drmesh_tests::http("POST", &format!("{base}/backup"), Some(&token), None);
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    let id = accepted.body["backupId"].as_str().unwrap().to_string();
    let done = wait_for(Duration::from_secs(30), || {
        let a = drmesh_tests::http("GET", &format!("{base}/backups/{id}"), Some(&token), None);
        (a.body["status"] != "IN_PROGRESS").then_some(a.body)
    })
    .unwrap_or_else(|| panic!("document backup did not finish:\n{}", qs.log_text()));
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert!(dir
        .join("backups/documents/snapshots/docs_latest.tar.gz")
        .exists());

    // The primary archives its WAL and the quickstart took a first full backup.
    let backups = drmesh_tests::http(
        "GET",
        &format!("{url}/v1/backup-recovery/database/backups?status=COMPLETED"),
        Some(&token),
        None,
    );
    assert_eq!(backups.status, 200, "{}", backups.text);
    assert!(
        backups.body["total"].as_u64().unwrap_or(0) >= 1,
        "no completed database backup: {}\n{}",
        backups.text,
        qs.log_text()
    );
    assert!(dir.join("backups/database/wal/00000001").is_dir());

    // An operator's change to the plan survives a second run on the same directory, which
    // reopens every cluster at its own address and serves the name again.
    let mut changed = expected.clone();
    changed["rto"] = "2h".into();
    let put = drmesh_tests::http(
        "PUT",
        &format!("{url}{PLAN_URL}"),
        Some(&token),
        Some(&changed.to_string()),
    );
    assert_eq!(put.status, 200, "{}", put.text);

    stop(&mut qs, &dir);

    let (mut again, env) = start(&dir, port, &tmp.path().join("quickstart-2.log"), &[]);
    assert!(
        again
            .log_text()
            .contains("DR plan production_dr_plan exists; left as it is"),
        "{}",
        again.log_text()
    );
    let token = env_var(&env, "DRMESH_TOKEN");
    let plan = drmesh_tests::http("GET", &format!("{url}{PLAN_URL}"), Some(&token), None);
    assert_eq!(plan.status, 200, "{}", plan.text);
    assert_eq!(plan.body["rto"], "2h", "{}", plan.text);
    let answer = dig(
        &env_var(&env, "DRMESH_DNS_SERVER"),
        &env_var(&env, "DRMESH_DNS_PORT"),
    );
    assert_eq!(answer, "127.0.0.1", "{}", again.log_text());
    stop(&mut again, &dir);
}

/// The quickstart's operator shell: `drmesh` with `drmesh.env`'s variables.
struct Shell {
    vars: Vec<(String, String)>,
}

impl Shell {
    fn new(env: &str) -> Shell {
        let mut vars: Vec<(String, String)> = Vec::new();
        for line in env.lines() {
            let Some((name, value)) = line.strip_prefix("export ").and_then(|l| l.split_once('='))
            else {
                continue;
            };
            // `DRMESH_REPO="$DRMESH_DOCUMENTS_REPO"`, as a shell expands it.
            let value = value.trim_matches('"');
            let value = match value.strip_prefix('$') {
                Some(other) => vars
                    .iter()
                    .find(|(n, _)| n == other)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| panic!("{name} names unset {other}")),
                None => value.to_string(),
            };
            vars.push((name.to_string(), value));
        }
        Shell { vars }
    }

    fn var(&self, name: &str) -> &str {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} in drmesh.env"))
    }

    /// The first of `DRMESH_URL`'s coordinators (with `--ha` there are three; any of
    /// them answers).
    fn url(&self) -> &str {
        self.var("DRMESH_URL").split(',').next().unwrap_or("")
    }

    /// Runs `drmesh ARGS`; its stdout, or a panic with its output.
    fn drmesh(&self, args: &[&str]) -> String {
        let out = Command::new(bin("drmesh"))
            .args(args)
            .envs(self.vars.iter().map(|(n, v)| (n, v)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "drmesh {args:?}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let a = drmesh_tests::http(
            "GET",
            &format!("{}{path}", self.url()),
            Some(self.var("DRMESH_TOKEN")),
            None,
        );
        assert_eq!(a.status, 200, "GET {path}: {}", a.text);
        a.body
    }

    fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let a = drmesh_tests::http(
            "POST",
            &format!("{}{path}", self.url()),
            Some(self.var("DRMESH_TOKEN")),
            Some(&body.to_string()),
        );
        assert!(a.status / 100 == 2, "POST {path}: {} {}", a.status, a.text);
        a.body
    }
}

/// The quickstart's cluster of `region`, reached as the quickstart reaches it.
fn cluster(dir: &Path, region: &str) -> drmesh_pg::local::LocalCluster {
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("quickstart.json")).unwrap()).unwrap();
    let i = ["us-west-2", "us-east-1", "eu-west-1"]
        .iter()
        .position(|r| *r == region)
        .unwrap();
    let port = state["pg_ports"][i].as_u64().unwrap() as u16;
    let bin = drmesh_pg::local::PgBin::find().unwrap();
    drmesh_pg::local::LocalCluster::open(&bin, region, &dir.join("pg").join(region), port).unwrap()
}

/// Writes `{label}-before`, takes the instant after it, writes `{label}-after`, and
/// waits until the segment holding both is archived: a point-in-time recovery to the
/// instant must hold the first and not the second.
pub(super) fn marker(primary: &drmesh_pg::local::LocalCluster, label: &str) -> String {
    primary
        .psql("create table if not exists markers (label text primary key)")
        .unwrap();
    primary
        .psql(&format!("insert into markers values ('{label}-before')"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let instant = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::thread::sleep(Duration::from_millis(1100));
    primary
        .psql(&format!("insert into markers values ('{label}-after')"))
        .unwrap();
    let segment = primary
        .psql("select pg_walfile_name(pg_switch_wal())")
        .unwrap();
    wait_for(Duration::from_secs(60), || {
        let archived = primary
            .psql("select coalesce(last_archived_wal, '') from pg_stat_archiver")
            .ok()?;
        (archived.as_str() >= segment.as_str()).then_some(())
    })
    .unwrap_or_else(|| panic!("{segment} not archived"));
    instant
}

/// The markers a recovered server holds, sorted.
pub(super) fn markers(cluster: &drmesh_pg::local::LocalCluster) -> Vec<String> {
    let text = cluster
        .psql("select string_agg(label, ',' order by label) from markers")
        .unwrap();
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

pub(super) fn expected(labels: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = labels.iter().map(|l| format!("{l}-before")).collect();
    for l in &labels[..labels.len() - 1] {
        v.push(format!("{l}-after"));
    }
    v.sort();
    v
}

const BASE: &str = "/v1/backup-recovery";

/// The runbook's failover to `region`, followed to its end: COMPLETED.
fn failover(sh: &Shell, region: &str) {
    let out = sh.drmesh(&["failover", "production_dr_plan", "--to", region, "--wait"]);
    assert!(out.contains("COMPLETED"), "{out}");
    assert!(out.contains("archiving confirmed"), "{out}");
    let status = sh.get(&format!("{BASE}/disaster-recovery/status"));
    assert_eq!(status["primaryRegion"], region, "{status:#}");
}

/// A full backup through the API, taken next to the primary in `region`.
fn backup_in(sh: &Shell, region: &str) {
    let accepted = sh.post(
        &format!("{BASE}/database/backup/full"),
        serde_json::json!({}),
    );
    let id = accepted["backupId"].as_str().unwrap().to_string();
    let done = wait_for(Duration::from_secs(120), || {
        let b = sh.get(&format!("{BASE}/database/backups/{id}"));
        (b["status"] != "IN_PROGRESS").then_some(b)
    })
    .unwrap_or_else(|| panic!("backup {id} did not finish"));
    assert_eq!(done["status"], "COMPLETED", "{done:#}");
    assert_eq!(
        done["agentId"],
        format!("pg-{region}"),
        "the backup ran next to the primary: {done:#}"
    );
}

/// The runbook's point-in-time recovery into `env`, followed to its end; the recovered
/// server's markers.
fn pitr(sh: &Shell, dir: &Path, instant: &str, env: &str) -> Vec<String> {
    let accepted = sh.post(
        &format!("{BASE}/disaster-recovery/point-in-time-recovery"),
        serde_json::json!({ "targetTimestamp": instant, "targetEnvironment": env }),
    );
    let id = accepted["recoveryId"].as_str().unwrap().to_string();
    let run = wait_for(Duration::from_secs(180), || {
        let s = sh.get(&format!("{BASE}/disaster-recovery/status"));
        let run = s["pointInTimeRecovery"].clone();
        (run["recoveryId"] == id.as_str()
            && !["INITIATED", "IN_PROGRESS"].contains(&run["status"].as_str().unwrap_or("")))
        .then_some(run)
    })
    .unwrap_or_else(|| panic!("recovery {id} did not finish"));
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    let outcome = &run["outcome"];
    let recovered = drmesh_pg::local::LocalCluster::open(
        &drmesh_pg::local::PgBin::find().unwrap(),
        env,
        Path::new(outcome["dataDirectory"].as_str().unwrap()),
        outcome["port"].as_u64().unwrap() as u16,
    )
    .unwrap();
    assert!(
        recovered.data_dir.starts_with(dir.join("environments")),
        "{run:#}"
    );
    markers(&recovered)
}

/// The quickstart is a small production: every region archives, backs up and recovers
/// once it holds the primary. Failover, a backup there and an exact point-in-time
/// recovery to a marker, then a failback home and the same again; the runbook's DR test
/// and its `staging` recovery work as written; an offline restore from the operator's
/// shell recovers across both failovers with a `restore_command` nothing in its
/// environment changes; and a killed agent or coordinator is started again while the
/// rest runs on.
#[test]
fn quickstart_regions_back_up_and_recover_wherever_the_primary_is() {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("mesh");
    let port = free_port();
    let (mut qs, env) = start(&dir, port, &tmp.path().join("quickstart.log"), &[]);
    let sh = Shell::new(&env);
    assert_eq!(
        sh.var("DRMESH_DATABASE_REPO"),
        dir.join("backups/database").display().to_string()
    );
    assert_eq!(sh.var("DRMESH_REPO"), sh.var("DRMESH_DOCUMENTS_REPO"));

    // The runbook's DR test of its plan works on the quickstart as written.
    let test = sh.post(
        &format!("{BASE}/disaster-recovery/test/production_dr_plan"),
        serde_json::json!({}),
    );
    let test_id = test["testId"].as_str().unwrap().to_string();
    let test = wait_for(Duration::from_secs(120), || {
        let t = sh.get(&format!("{BASE}/disaster-recovery/test/production_dr_plan"));
        (t["testId"] == test_id.as_str() && t["status"] != "IN_PROGRESS").then_some(t)
    })
    .unwrap_or_else(|| panic!("the DR test did not finish:\n{}", qs.log_text()));
    assert_eq!(test["status"], "COMPLETED", "{test:#}");

    // Home: a marker, and the runbook's recovery into `staging` lands exactly on it.
    let west = cluster(&dir, "us-west-2");
    let t1 = marker(&west, "one");
    assert_eq!(pitr(&sh, &dir, &t1, "staging"), expected(&["one"]));

    // Failover to us-east-1: it archives (its timeline's history too), backs up and
    // recovers there.
    failover(&sh, "us-east-1");
    backup_in(&sh, "us-east-1");
    let east = cluster(&dir, "us-east-1");
    let t2 = marker(&east, "two");
    assert_eq!(pitr(&sh, &dir, &t2, "staging"), expected(&["one", "two"]));
    assert!(dir
        .join("backups/database/wal/00000002/00000002.history")
        .exists());

    // A killed agent and a killed coordinator are started again; the mesh runs on.
    for needle in [
        format!(
            "--config {}",
            dir.join("agents/pg-eu-west-1.toml").display()
        ),
        format!(
            "--config {}",
            dir.join("coordinator/coordinator.toml").display()
        ),
    ] {
        let (pid, _) = processes_mentioning(&needle)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no process with {needle}"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let restarted = wait_for(Duration::from_secs(30), || {
            processes_mentioning(&needle)
                .into_iter()
                .any(|(p, _)| p != pid)
                .then_some(())
        });
        assert!(restarted.is_some(), "not restarted:\n{}", qs.log_text());
        assert!(qs.is_running(), "{}", qs.log_text());
    }
    let all_up = wait_for(Duration::from_secs(60), || {
        // The restarted coordinator may not listen yet: not an error here.
        let out = Command::new(bin("drmesh"))
            .args(["status", "--output", "json"])
            .envs(sh.vars.iter().map(|(n, v)| (n, v)))
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let agents: Vec<&serde_json::Value> = s["regions"]
            .as_array()?
            .iter()
            .flat_map(|r| r["agents"].as_array().into_iter().flatten())
            .collect();
        (agents.len() == 3 && agents.iter().all(|a| a["state"] == "UP")).then_some(())
    });
    assert!(all_up.is_some(), "{}", qs.log_text());
    assert!(
        qs.log_text().contains("restarted agent pg-eu-west-1"),
        "{}",
        qs.log_text()
    );

    // Failback: the fenced old primary rejoins, and the plan goes home to it.
    sh.drmesh(&["rejoin", "us-west-2"]);
    failover(&sh, "us-west-2");
    backup_in(&sh, "us-west-2");
    let t3 = marker(&west, "three");
    assert_eq!(
        pitr(&sh, &dir, &t3, "forensics"),
        expected(&["one", "two", "three"])
    );

    // Offline, from the operator's shell: the first base backup (timeline 1) recovered
    // across both failovers to the last marker. The restore_command names its
    // repository and key, so a server started with another key in its environment
    // recovers all the same.
    let first = sh.drmesh(&["backups", "list", "--output", "json"]);
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let oldest = first["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["backupId"].as_str())
        .min_by_key(|id| id.split('_').nth(1).and_then(|ms| ms.parse::<u64>().ok()))
        .unwrap()
        .to_string();
    let target = tmp.path().join("offline/data");
    let pg_port = free_port();
    sh.drmesh(&[
        "repo",
        "restore",
        &oldest,
        "--repo",
        sh.var("DRMESH_DATABASE_REPO"),
        "--time",
        &t3,
        "--target",
        &target.display().to_string(),
        "--port",
        &pg_port.to_string(),
    ]);
    let conf = fs::read_to_string(target.join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("--key-file"), "{conf}");
    let bin = drmesh_pg::local::PgBin::find().unwrap();
    // Its directory (and the log beside it) belongs to the user PostgreSQL runs as.
    drmesh_pg::local::hand_to_postgres(&tmp.path().join("offline")).unwrap();
    let offline = drmesh_pg::local::LocalCluster::open(&bin, "offline", &target, pg_port).unwrap();
    let mut pg_ctl = Command::new(bin.dir().join("pg_ctl"));
    pg_ctl
        .args(["-D", &target.display().to_string(), "-l"])
        .arg(offline.log_path())
        .args(["-w", "-t", "120", "start"])
        .current_dir("/")
        .env("DRMESH_REPO_KEY_FILE", tmp.path().join("no-such.key"))
        .env("DRMESH_REPO", tmp.path().join("no-such-repo"));
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::process::CommandExt;
        let pg = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("a postgres user");
        pg_ctl.uid(pg.uid.as_raw()).gid(pg.gid.as_raw());
    }
    let started = pg_ctl.status().unwrap();
    assert!(
        started.success(),
        "{}",
        fs::read_to_string(offline.log_path()).unwrap_or_default()
    );
    let recovered = wait_for(Duration::from_secs(60), || {
        offline
            .psql("select not pg_is_in_recovery()")
            .ok()
            .filter(|v| v == "t")
    });
    assert!(
        recovered.is_some(),
        "{}",
        fs::read_to_string(offline.log_path()).unwrap_or_default()
    );
    assert_eq!(markers(&offline), expected(&["one", "two", "three"]));
    offline.stop_immediate().unwrap();

    stop(&mut qs, &dir);
}

/// The DR status as the coordinator at `url` answers it (a follower keeps its own
/// `coordinators` block); `None` when it does not answer.
fn status_at(url: &str, token: &str) -> Option<serde_json::Value> {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(3))
        .build()
        .get(&format!("{url}{BASE}/disaster-recovery/status"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .ok()?
        .into_json()
        .ok()
}

/// `--ha`: three etcd members and three coordinators, one leading. The leader is
/// `kill -9`'d: another leads within a lease or so, `drmesh` with drmesh.env's URLs
/// reads and writes on, every agent follows the new leader, and the killed coordinator
/// comes back as a follower. Ctrl-C leaves no etcd, coordinator or agent behind.
#[test]
fn quickstart_ha_runs_three_coordinators_on_etcd_and_survives_the_leader() {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("mesh");
    let port = free_port();
    let t0 = Instant::now();
    let (mut qs, env) = start(&dir, port, &tmp.path().join("quickstart.log"), &["--ha"]);
    println!("quickstart --ha up in {:.1} s", t0.elapsed().as_secs_f64());
    let sh = Shell::new(&env);
    let token = sh.var("DRMESH_TOKEN").to_string();
    let urls: Vec<String> = sh
        .var("DRMESH_URL")
        .split(',')
        .map(str::to_string)
        .collect();
    assert_eq!(urls.len(), 3, "{env}");
    assert_eq!(urls[0], format!("http://127.0.0.1:{port}"));
    let regions = ["us-west-2", "us-east-1", "eu-west-1"];
    for region in regions {
        assert!(
            dir.join("etcd").join(region).is_dir(),
            "no etcd data for {region}"
        );
    }

    // Each coordinator answers for itself: three members, one LEADER, two FOLLOWERs,
    // all naming the same leader.
    let leader = wait_for(Duration::from_secs(30), || {
        let views: Vec<serde_json::Value> = urls
            .iter()
            .map(|u| status_at(u, &token).map(|s| s["coordinators"].clone()))
            .collect::<Option<_>>()?;
        let leading: Vec<&serde_json::Value> =
            views.iter().filter(|c| c["standing"] == "LEADER").collect();
        let agreed = views.iter().all(|c| c["leader"] == views[0]["leader"]);
        let all_members = views
            .iter()
            .all(|c| c["members"].as_array().map_or(0, Vec::len) == 3);
        (leading.len() == 1
            && views.iter().filter(|c| c["standing"] == "FOLLOWER").count() == 2
            && agreed
            && all_members)
            .then(|| leading[0]["answeredBy"].as_str().unwrap_or("").to_string())
    })
    .unwrap_or_else(|| {
        let views: Vec<_> = urls.iter().map(|u| status_at(u, &token)).collect();
        panic!(
            "no single leader among three: {views:#?}\n{}",
            qs.log_text()
        )
    });
    let killed = regions
        .iter()
        .position(|r| *r == leader)
        .unwrap_or_else(|| panic!("the leader {leader} is no region"));
    let log = qs.log_text();
    assert!(log.contains(&format!("{leader} leads (term ")), "{log}");
    for url in &urls {
        assert!(
            log.contains(url.as_str()),
            "{url} not in the summary:\n{log}"
        );
    }
    let out = sh.drmesh(&["status"]);
    assert!(out.contains("primary"), "{out}");

    // Every coordinator's DNS server answers the primary's address.
    let ready = |region: &str| -> serde_json::Value {
        let path = dir.join("coordinator").join(region).join("ready.json");
        serde_json::from_slice(&fs::read(&path).unwrap()).unwrap()
    };
    for region in regions {
        let dns: std::net::SocketAddr = ready(region)["dns"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            dig(&dns.ip().to_string(), &dns.port().to_string()),
            "127.0.0.1",
            "{region}"
        );
    }

    // kill -9 of the leading coordinator.
    let pid = ready(&leader)["pid"].as_u64().unwrap() as u32;
    let config = dir
        .join("coordinator")
        .join(&leader)
        .join("coordinator.toml");
    assert!(
        processes_mentioning(&config.display().to_string())
            .iter()
            .any(|(p, _)| *p == pid),
        "pid {pid} is not the coordinator of {leader}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed_at = Instant::now();
    let (successor, successor_url) = wait_for(Duration::from_secs(15), || {
        urls.iter()
            .enumerate()
            .filter(|(i, _)| *i != killed)
            .find_map(|(_, u)| {
                let c = status_at(u, &token)?["coordinators"].clone();
                (c["standing"] == "LEADER").then(|| {
                    (
                        c["answeredBy"].as_str().unwrap_or("").to_string(),
                        u.clone(),
                    )
                })
            })
    })
    .unwrap_or_else(|| {
        panic!(
            "no other coordinator leads 15 s after the leader died:\n{}",
            qs.log_text()
        )
    });
    println!(
        "{successor} leads {:.1} s after {leader} was killed",
        killed_at.elapsed().as_secs_f64()
    );
    assert_ne!(successor, leader);

    // The operator's shell reads and writes on (its URL list passes over the dead one).
    let out = sh.drmesh(&["status"]);
    for r in regions {
        assert!(out.contains(r), "{out}");
    }
    let out = sh.drmesh(&["plans", "pause", "production_dr_plan", "--reason", "t"]);
    assert!(out.contains("maintenance mode"), "{out}");
    let out = sh.drmesh(&["plans", "resume", "production_dr_plan"]);
    assert!(out.contains("maintenance mode ended"), "{out}");
    println!(
        "status, pause and resume through DRMESH_URL done {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );

    // Every agent is connected to the new leader, and UP.
    let followed = wait_for(Duration::from_secs(15), || {
        let s = status_at(&successor_url, &token)?;
        let agents: Vec<&serde_json::Value> = s["regions"]
            .as_array()?
            .iter()
            .flat_map(|r| r["agents"].as_array().into_iter().flatten())
            .collect();
        (agents.len() == 3
            && agents
                .iter()
                .all(|a| a["connected"] == true && a["state"] == "UP"))
        .then_some(())
    });
    assert!(
        followed.is_some(),
        "the agents did not follow {successor}: {:#?}\n{}",
        status_at(&successor_url, &token),
        qs.log_text()
    );
    println!(
        "all three agents connected to {successor} {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );

    // The killed coordinator is started again after the election, as a follower.
    let back = wait_for(Duration::from_secs(30), || {
        let c = status_at(&urls[killed], &token)?["coordinators"].clone();
        (c["standing"] == "FOLLOWER" && c["leader"] == successor.as_str()).then_some(())
    });
    if back.is_none() {
        let log = dir.join(format!("logs/coordinator-{leader}.log"));
        let text = fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        panic!(
            "{leader} did not come back; the coordinators say {:#?}\n{}\nthe last of {}:\n{}",
            urls.iter()
                .map(|u| status_at(u, &token).map(|s| s["coordinators"].clone()))
                .collect::<Vec<_>>(),
            qs.log_text(),
            log.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    println!(
        "{leader} is back as a follower {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );

    // The new leader's failover moves the database's name, and every coordinator's DNS
    // server answers the new primary: the followers re-read the answer from etcd.
    failover(&sh, "us-east-1");
    let moved = Instant::now();
    for region in regions {
        let dns: std::net::SocketAddr = ready(region)["dns"].as_str().unwrap().parse().unwrap();
        let answer = wait_for(Duration::from_secs(5), || {
            let a = dig(&dns.ip().to_string(), &dns.port().to_string());
            (a == "127.0.0.2").then_some(a)
        });
        assert!(
            answer.is_some(),
            "{region}'s DNS server at {dns} still answers {}",
            dig(&dns.ip().to_string(), &dns.port().to_string())
        );
    }
    println!(
        "every coordinator's DNS answers the new primary {:.1} s after the failover completed",
        moved.elapsed().as_secs_f64()
    );

    stop(&mut qs, &dir);

    // A second run on the same directory rejoins the same etcd cluster on the same ports.
    let state = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&fs::read(dir.join("quickstart.json")).unwrap()).unwrap()
    };
    let before = state(&dir)["ha"].clone();
    assert_eq!(before["etcd"].as_array().map(Vec::len), Some(3), "{before}");
    let t1 = Instant::now();
    let (mut again, env) = start(&dir, port, &tmp.path().join("quickstart-2.log"), &["--ha"]);
    println!("second run up in {:.1} s", t1.elapsed().as_secs_f64());
    assert_eq!(state(&dir)["ha"], before);
    assert_eq!(env_var(&env, "DRMESH_URL"), urls.join(","));
    assert!(
        again
            .log_text()
            .contains("DR plan production_dr_plan exists; left as it is"),
        "{}",
        again.log_text()
    );
    stop(&mut again, &dir);
}

/// `--tls`: the REST API on HTTPS with the quickstart CA's certificate, and the CA in
/// drmesh.env, so the CLI as the operator runs it works; a client without the CA is
/// refused.
#[test]
fn quickstart_tls_serves_the_api_on_https_to_the_cli_in_its_env() {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("mesh");
    let port = free_port();
    let (mut qs, env) = start(&dir, port, &tmp.path().join("quickstart.log"), &["--tls"]);
    let sh = Shell::new(&env);
    assert_eq!(sh.var("DRMESH_URL"), format!("https://127.0.0.1:{port}"));
    assert!(Path::new(sh.var("DRMESH_CA_CERT")).is_file(), "{env}");
    let out = sh.drmesh(&["status"]);
    assert!(out.contains("primary"), "{out}");
    assert!(
        qs.log_text().contains("curl --cacert \"$DRMESH_CA_CERT\""),
        "{}",
        qs.log_text()
    );
    let refused = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build()
        .get(&format!("{}{BASE}/disaster-recovery/status", sh.url()))
        .set(
            "Authorization",
            &format!("Bearer {}", sh.var("DRMESH_TOKEN")),
        )
        .call();
    assert!(
        matches!(refused, Err(ureq::Error::Transport(_))),
        "answered without the CA: {refused:?}"
    );
    stop(&mut qs, &dir);
}
