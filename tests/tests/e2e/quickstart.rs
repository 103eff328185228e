//! `drmesh quickstart` brings up three regions with real PostgreSQL (one primary, two
//! streaming standbys), `drmesh status` shows them, and Ctrl-C leaves nothing behind.

use std::fs;
use std::os::unix::fs::PermissionsExt;
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

#[test]
fn quickstart_runs_a_three_region_mesh_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("mesh");
    let port = free_port();
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
        &tmp.path().join("quickstart.log"),
    );
    let env = wait_for(Duration::from_secs(120), || {
        assert!(qs.is_running(), "quickstart exited:\n{}", qs.log_text());
        qs.log_text()
            .contains("Press Ctrl-C")
            .then(|| fs::read_to_string(dir.join("drmesh.env")).ok())
            .flatten()
    })
    .unwrap_or_else(|| panic!("quickstart not up:\n{}", qs.log_text()));
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap()
            .to_string()
    };
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

    // Ctrl-C stops everything: coordinator, agents and all three postmasters.
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
