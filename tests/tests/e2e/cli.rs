//! The `drmesh` CLI against a running coordinator: status, alerts, tokens, `--output json`.

use std::process::Command;
use std::time::Duration;

use drmesh_tests::{bin, wait_for, Mesh};

fn drmesh(mesh: &Mesh, token: &str, args: &[&str]) -> (bool, String, String) {
    mesh.cli(token, args)
}

#[test]
fn cli_reads_status_and_manages_alerts_and_tokens() {
    let mesh = Mesh::start(200);
    let mut agent = mesh.agent("cli-a", "eu-west-1");
    let up = wait_for(Duration::from_secs(5), || {
        (mesh.agent_state("cli-a").as_deref() == Some("UP")).then_some(())
    });
    assert!(up.is_some());

    let (ok, out, err) = drmesh(&mesh, &mesh.admin_token, &["status", "--output", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["regions"][0]["name"], "eu-west-1");
    let (ok, out, _) = drmesh(&mesh, &mesh.admin_token, &["status"]);
    assert!(ok && out.contains("cli-a") && out.contains("UP"), "{out}");

    agent.kill9();
    let alert = wait_for(Duration::from_secs(5), || {
        let (_, out, _) = drmesh(
            &mesh,
            &mesh.admin_token,
            &[
                "alerts",
                "list",
                "--severity",
                "CRITICAL",
                "--output",
                "json",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["alerts"]
            .as_array()?
            .first()
            .map(|a| a["id"].as_str().unwrap_or_default().to_string())
    })
    .expect("alert raised");
    let (ok, out, err) = drmesh(
        &mesh,
        &mesh.admin_token,
        &["alerts", "ack", &alert, "--by", "admin@propchain.local"],
    );
    assert!(ok, "{out}{err}");
    let (ok, out, _) = drmesh(
        &mesh,
        &mesh.admin_token,
        &["alerts", "list", "--status", "ACKNOWLEDGED"],
    );
    assert!(ok && out.contains(&alert), "{out}");
    let (ok, _, err) = drmesh(&mesh, &mesh.admin_token, &["alerts", "resolve", &alert]);
    assert!(ok, "{err}");

    let (ok, viewer, err) = drmesh(
        &mesh,
        &mesh.admin_token,
        &["token", "create", "--role", "viewer"],
    );
    assert!(ok, "{err}");
    let viewer = viewer.trim().to_string();
    let (ok, _, err) = drmesh(&mesh, &viewer, &["alerts", "resolve", &alert]);
    assert!(!ok && err.contains("403"), "{err}");
    let (ok, _, err) = drmesh(&mesh, "drm_wrong", &["status"]);
    assert!(!ok && err.contains("401"), "{err}");
}

#[test]
fn ca_commands_make_a_working_pki() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let run = |args: &[&str]| {
        let out = Command::new(bin("drmesh")).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["ca", "init", "--dir", &d]);
    run(&[
        "ca",
        "issue",
        "coordinator",
        "--host",
        "localhost",
        "--host",
        "127.0.0.1",
        "--dir",
        &d,
    ]);
    run(&[
        "ca",
        "issue",
        "agent",
        "--id",
        "db-1",
        "--region",
        "us-west-2",
        "--dir",
        &d,
    ]);
    for f in [
        "ca.pem",
        "ca.key",
        "coordinator.pem",
        "coordinator.key",
        "agent-db-1.pem",
        "agent-db-1.key",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let out = Command::new(bin("drmesh"))
        .args(["ca", "init", "--dir", &d])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a second init must not overwrite the CA"
    );
}
