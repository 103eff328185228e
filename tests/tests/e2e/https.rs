//! The REST API on HTTPS (`http_tls = true`): the CLI trusts the mesh's CA and no other,
//! a follower forwards to a leader on HTTPS, and plain HTTP off loopback does not start.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use drmesh_protocol::pki::{self, Validity};
use drmesh_tests::etcd::Etcd;
use drmesh_tests::ha::{Coord, Ha};
use drmesh_tests::{bin, http_via, Mesh, Proc};

const STATUS: &str = "/v1/backup-recovery/disaster-recovery/status";

/// `drmesh ARGS` with `env`: (success, stdout + stderr).
fn drmesh(env: &[(&str, String)], args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(bin("drmesh"));
    cmd.args(args).env_remove("DRMESH_CA_CERT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run drmesh");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Starts the coordinator of `config` (its log and ready file in `dir`) and waits until
/// it listens: its REST API's base URL, and its process.
fn coordinator(dir: &Path, name: &str, config: PathBuf) -> (String, Proc) {
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut c = Coord {
        name: name.to_string(),
        config,
        http: nowhere,
        quic: nowhere,
        proc: None,
        prefix: Vec::new(),
    };
    drmesh_tests::ha::spawn_coordinator(dir, &mut c);
    let ready: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join(format!("{name}.ready"))).unwrap()).unwrap();
    let api = ready["api"].as_str().unwrap().to_string();
    (api, c.proc.take().unwrap())
}

#[test]
fn the_rest_api_on_https_serves_a_cli_trusting_the_mesh_ca_and_no_other() {
    let mesh = Mesh::start_with(200, "http_tls = true\n");
    assert!(mesh.api.starts_with("https://127.0.0.1:"), "{}", mesh.api);
    let ca = mesh.ca_dir().join("ca.pem");

    // A client trusting the mesh's CA: answers, and a missing token is still 401 JSON.
    let status = mesh.get(STATUS);
    assert_eq!(status.status, 200, "{}", status.text);
    let anonymous = http_via(&mesh.http_agent(), "GET", &mesh.url(STATUS), None, None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.text);
    assert!(anonymous.body["message"].is_string(), "{}", anonymous.text);

    // Plain HTTP to the same port is no answer at all.
    let plain = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build()
        .get(&format!("http://{}{STATUS}", mesh.http))
        .set("Authorization", &format!("Bearer {}", mesh.admin_token))
        .call();
    assert!(
        matches!(plain, Err(ureq::Error::Transport(_))),
        "plain HTTP was answered: {plain:?}"
    );

    // The CLI with the mesh's CA, by environment and by flag.
    let base = vec![
        ("DRMESH_URL", mesh.api.clone()),
        ("DRMESH_TOKEN", mesh.admin_token.clone()),
    ];
    let mut with_ca = base.clone();
    with_ca.push(("DRMESH_CA_CERT", ca.display().to_string()));
    let (ok, out) = drmesh(&with_ca, &["status"]);
    assert!(ok, "{out}");
    let (ok, out) = drmesh(&base, &["--ca-cert", &ca.display().to_string(), "status"]);
    assert!(ok, "{out}");

    // Another CA's certificate: the server is refused, and said why.
    let other = tempfile::tempdir().unwrap();
    pki::init_ca(other.path(), "another CA").unwrap();
    let mut with_other = base.clone();
    with_other.push((
        "DRMESH_CA_CERT",
        other.path().join("ca.pem").display().to_string(),
    ));
    let (ok, out) = drmesh(&with_other, &["status"]);
    assert!(!ok, "a server certified by another CA was accepted: {out}");
    assert!(
        out.to_lowercase().contains("certificate") || out.contains("UnknownIssuer"),
        "{out}"
    );
    // No CA: the public ones do not know the mesh's.
    let (ok, out) = drmesh(&base, &["status"]);
    assert!(!ok, "accepted without the mesh's CA: {out}");
    // A CA file that cannot be read is named.
    let mut missing = base.clone();
    missing.push(("DRMESH_CA_CERT", "/nonexistent/ca.pem".into()));
    let (ok, out) = drmesh(&missing, &["status"]);
    assert!(
        !ok && out.contains("--ca-cert /nonexistent/ca.pem"),
        "{out}"
    );
    // A certificate valid for another host: issued for db.example only.
    let wrong_host = mesh.dir.path().join("wrong-host");
    let files = pki::coordinator_files(&wrong_host);
    pki::issue_coordinator(
        &mesh.ca_dir(),
        &["db.example".into()],
        Validity::days(1),
        &files,
    )
    .unwrap();
    let config = mesh.dir.path().join("wrong-host.toml");
    fs::write(
        &config,
        format!(
            "http_listen = \"127.0.0.1:0\"\nhttp_tls = true\nquic_listen = \"127.0.0.1:0\"\nstore_path = \"wrong-host.redb\"\n[tls]\nca_cert = \"ca/ca.pem\"\ncert = \"{}\"\nkey = \"{}\"\n",
            files.cert.display(),
            files.key.display()
        ),
    )
    .unwrap();
    let (api, mut proc) = coordinator(mesh.dir.path(), "wrong-host", config);
    let (ok, out) = drmesh(
        &[
            ("DRMESH_URL", api),
            ("DRMESH_TOKEN", mesh.admin_token.clone()),
            ("DRMESH_CA_CERT", ca.display().to_string()),
        ],
        &["status"],
    );
    assert!(!ok, "a certificate for another host was accepted: {out}");
    assert!(out.to_lowercase().contains("certificate"), "{out}");
    proc.kill9();
}

#[test]
fn plain_http_off_loopback_does_not_start_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    drmesh_tests::test_ca(dir.path());
    let config = |extra: &str| {
        let path = dir.path().join("coordinator.toml");
        fs::write(
            &path,
            format!(
                "http_listen = \"0.0.0.0:0\"\nquic_listen = \"127.0.0.1:0\"\nstore_path = \"state.redb\"\n{extra}[tls]\nca_cert = \"ca/ca.pem\"\ncert = \"ca/coordinator.pem\"\nkey = \"ca/coordinator.key\"\n"
            ),
        )
        .unwrap();
        path
    };
    let refused = Command::new(bin("drmesh-coordinator"))
        .args(["--config", &config("").display().to_string()])
        .output()
        .expect("run the coordinator");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "started: {stderr}");
    assert!(
        stderr.contains("0.0.0.0:0") && stderr.contains("http_tls = true"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("state.redb").exists(),
        "a refused start made the store"
    );

    // Asked for: it starts, plain, on every address.
    let (api, mut proc) = coordinator(dir.path(), "coordinator", config("insecure_http = true\n"));
    assert!(api.starts_with("http://0.0.0.0:"), "{api}");
    proc.kill9();
}

#[test]
fn a_follower_forwards_to_a_leader_on_https_and_the_cli_follows_it() {
    let etcd = Etcd::start(1);
    let eps = etcd.endpoints();
    let ha = Ha::start_https(&[eps.clone(), eps], 200, 3);
    let (leader, _) = ha
        .wait_leader(Duration::from_secs(10), &[])
        .expect("a leader");
    let follower = 1 - leader;
    let agent = drmesh_tests::agent_trusting(Some(&ha.ca_cert()));
    let created = http_via(
        &agent,
        "POST",
        &ha.url(follower, "/v1/tokens"),
        Some(&ha.admin_token),
        Some(r#"{"role":"viewer","name":"through-the-follower"}"#),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    // The CLI given both coordinators and the CA.
    let urls = format!("{},{}", ha.url(follower, ""), ha.url(leader, ""));
    let (ok, out) = drmesh(
        &[
            ("DRMESH_URL", urls),
            ("DRMESH_TOKEN", ha.admin_token.clone()),
            ("DRMESH_CA_CERT", ha.ca_cert().display().to_string()),
        ],
        &[
            "token",
            "create",
            "--role",
            "viewer",
            "--name",
            "by-the-cli",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.trim().len() > 20, "no token printed: {out}");
}
