//! `drmesh quickstart` brings up three regions with real PostgreSQL (one primary, two
//! streaming standbys), `drmesh status` shows them, the runbook's DR plan exists, the
//! database's DNS name answers the primary's address, Ctrl-C leaves nothing behind, and
//! a second run on the same directory keeps the plan.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use drmesh_tests::{bin, processes_mentioning, wait_for, Proc};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `drmesh quickstart` on `dir` and waits until it is up; its `drmesh.env`.
fn start(dir: &Path, port: u16, log: &Path) -> (Proc, String) {
    let mut qs = Proc::spawn(
        "quickstart",
        &bin("drmesh"),
        &[
            "quickstart",
            "--dir",
            &dir.display().to_string(),
            "--http-port",
            &port.to_string(),
        ],
        log,
    );
    let env = wait_for(Duration::from_secs(120), || {
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
fn stop(qs: &mut Proc, dir: &Path) {
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
    let (mut qs, env) = start(&dir, port, &tmp.path().join("quickstart.log"));
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

    let (mut again, env) = start(&dir, port, &tmp.path().join("quickstart-2.log"));
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
