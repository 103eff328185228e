//! The coordinator accepts only agents with a certificate from its CA and takes their
//! identity from it; each refusal is logged.

use std::time::Duration;

use drmesh_protocol::pki::{self, Validity};
use drmesh_protocol::tls::{anonymous_client_config, client_config, TlsFiles};
use drmesh_protocol::{AgentId, RegionId};
use drmesh_tests::{bin, knock, wait_for, Mesh};

fn refused_count(mesh: &Mesh) -> usize {
    mesh.coordinator_log()
        .matches("refused agent connection")
        .count()
}

fn wait_refusals(mesh: &Mesh, at_least: usize) {
    let seen = wait_for(Duration::from_secs(10), || {
        (refused_count(mesh) >= at_least).then_some(())
    });
    assert!(
        seen.is_some(),
        "expected {at_least} refusals in the log:\n{}",
        mesh.coordinator_log()
    );
}

#[test]
fn no_certificate_is_refused() {
    let mesh = Mesh::start(500);
    let tls = anonymous_client_config(&mesh.ca_dir().join("ca.pem")).unwrap();
    let r = knock(mesh.quic, tls, "anon", "us-west-2");
    assert!(r.is_err(), "anonymous client got in: {r:?}");
    wait_refusals(&mesh, 1);
    assert!(mesh.status().regions.is_empty());
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let mesh = Mesh::start(500);
    let other = mesh.dir.path().join("other-ca");
    pki::init_ca(&other, "rogue CA").unwrap();
    let id = AgentId::new("rogue").unwrap();
    let files = pki::agent_files(&other, &id);
    pki::issue_agent(
        &other,
        &id,
        &RegionId::new("us-west-2").unwrap(),
        Validity::days(1),
        &files,
    )
    .unwrap();
    // The real agent binary, trusting the right CA but presenting the rogue certificate.
    let config = mesh.agent_config("rogue", "us-west-2", &files, "");
    let mut agent = mesh.spawn_agent(&config);
    wait_refusals(&mesh, 1);
    std::thread::sleep(Duration::from_millis(500));
    assert!(mesh.agent_state("rogue").is_none(), "{:?}", mesh.status());
    assert!(agent.is_running(), "the agent keeps retrying with backoff");
    assert!(
        mesh.coordinator_log().contains("UnknownIssuer")
            || mesh.coordinator_log().contains("unknown issuer"),
        "{}",
        mesh.coordinator_log()
    );
}

#[test]
fn expired_certificate_is_refused() {
    let mesh = Mesh::start(500);
    // Issued with the CLI, as an operator would.
    let out = std::process::Command::new(bin("drmesh"))
        .args([
            "ca",
            "issue",
            "agent",
            "--id",
            "old",
            "--region",
            "us-west-2",
            "--dir",
            &mesh.ca_dir().display().to_string(),
            "--out",
            &mesh.dir.path().join("expired").display().to_string(),
            "--not-after",
            "2021-01-01T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = pki::agent_files(
        &mesh.dir.path().join("expired"),
        &AgentId::new("old").unwrap(),
    );
    let tls = client_config(&TlsFiles {
        ca_cert: mesh.ca_dir().join("ca.pem"),
        cert: files.cert.clone(),
        key: files.key.clone(),
    })
    .unwrap();
    let r = knock(mesh.quic, tls, "old", "us-west-2");
    assert!(r.is_err(), "expired certificate got in: {r:?}");
    wait_refusals(&mesh, 1);
    assert!(
        mesh.coordinator_log().to_lowercase().contains("expired"),
        "{}",
        mesh.coordinator_log()
    );
    assert!(mesh.agent_state("old").is_none());
}

#[test]
fn agent_claiming_another_id_is_refused() {
    let mesh = Mesh::start(500);
    let files = mesh.issue_agent("honest", "us-west-2");
    // The config claims another id than the certificate.
    let config = mesh.agent_config("imposter", "us-west-2", &files, "");
    let agent = mesh.spawn_agent(&config);
    wait_refusals(&mesh, 1);
    let log = mesh.coordinator_log();
    assert!(log.contains("claims id imposter"), "{log}");
    assert!(mesh.agent_state("imposter").is_none());
    assert!(mesh.agent_state("honest").is_none());
    let agent_log = wait_for(Duration::from_secs(5), || {
        let l = agent.log_text();
        l.contains("identity_mismatch").then_some(l)
    });
    assert!(agent_log.is_some(), "agent log: {}", agent.log_text());

    // A region claim differing from the certificate is refused the same way.
    let tls = client_config(&TlsFiles {
        ca_cert: mesh.ca_dir().join("ca.pem"),
        cert: files.cert.clone(),
        key: files.key.clone(),
    })
    .unwrap();
    let r = knock(mesh.quic, tls, "honest", "eu-west-1").unwrap_or_default();
    assert!(r.contains("identity_mismatch"), "{r}");
    assert!(mesh.agent_state("honest").is_none());
}
