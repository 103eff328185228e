//! Notification channels against real receivers: mail to an `aiosmtpd` SMTP server, a
//! Slack-style webhook and a signed generic webhook to small HTTP receivers in the test.

use std::process::Command;
use std::time::Duration;

use drmesh_tests::hook::receiver;
use drmesh_tests::objstore::free_port;
use drmesh_tests::{wait_for, Mesh, Proc};

fn smtp_server(dir: &std::path::Path) -> (u16, Proc) {
    let ok = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 cannot import aiosmtpd: run `bash scripts/install-deps.sh` (pip install aiosmtpd)"
    );
    let port = free_port();
    let server = Proc::spawn(
        "aiosmtpd",
        std::path::Path::new("python3"),
        &[
            "-u",
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Debugging",
        ],
        &dir.join("aiosmtpd.log"),
    );
    let up = wait_for(Duration::from_secs(15), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    assert!(
        up.is_some(),
        "aiosmtpd did not start:\n{}",
        server.log_text()
    );
    (port, server)
}

#[test]
fn channels_deliver_mail_and_signed_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let (smtp_port, smtp) = smtp_server(dir.path());
    let (slack_url, slack) = receiver(200, 1);
    let (hook_url, hook) = receiver(200, 1);
    // A webhook that always fails: tried, retried, then reported.
    let (broken_url, broken) = receiver(500, 10);
    let secret = dir.path().join("webhook-secret");
    std::fs::write(&secret, "s3cret-key\n").unwrap();
    let config = format!(
        r#"[notify.email]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
from = "drmesh@example.test"
to = ["oncall@example.test", "dba@example.test"]
[notify.slack]
type = "slack"
url = "{slack_url}"
[notify.ops]
type = "webhook"
url = "{hook_url}"
secret_file = "{}"
[notify.broken]
type = "webhook"
url = "{broken_url}/T000/B000/PATH-SECRET"
"#,
        secret.display()
    );
    let mesh = Mesh::start_with(500, &config);
    let drmesh = |args: &[&str]| mesh.cli(&mesh.admin_token, args);

    // Email: the SMTP server receives it, to both addresses.
    let (ok, out, err) = drmesh(&["notify", "test", "email"]);
    assert!(ok, "{out}{err}");
    let mail = wait_for(Duration::from_secs(10), || {
        let log = smtp.log_text();
        log.contains("drmesh test notification").then_some(log)
    })
    .unwrap_or_else(|| panic!("no mail at aiosmtpd:\n{}", smtp.log_text()));
    assert!(
        mail.contains("oncall@example.test") && mail.contains("dba@example.test"),
        "{mail}"
    );

    // Slack: {"text": ...}.
    let (ok, _, err) = drmesh(&["notify", "test", "slack"]);
    assert!(ok, "{err}");
    let got = slack.recv_timeout(Duration::from_secs(10)).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("drmesh test notification"),
        "{body}"
    );

    // Generic webhook: the event as JSON, HMAC-SHA256 of the body under the secret.
    let (ok, _, err) = drmesh(&["notify", "test", "ops"]);
    assert!(ok, "{err}");
    let got = hook.recv_timeout(Duration::from_secs(10)).unwrap();
    let event: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(event["kind"], "test");
    assert_eq!(got.header("x-drmesh-event"), Some("test"));
    assert_eq!(
        got.header("x-drmesh-signature").unwrap(),
        drmesh_coordinator::notify::signature(b"s3cret-key", &got.body)
    );
    assert_ne!(
        got.header("x-drmesh-signature").unwrap(),
        drmesh_coordinator::notify::signature(b"another-key", &got.body)
    );

    // A failing channel: retried, then an error naming it; unknown channels are 404.
    let (ok, _, err) = drmesh(&["notify", "test", "broken"]);
    assert!(!ok);
    assert!(err.contains("broken") && err.contains("500"), "{err}");
    // The URL (a webhook's secret may be its path) is said as far as its host.
    assert!(!err.contains("PATH-SECRET"), "{err}");
    assert_eq!(broken.try_iter().count(), 4, "four tries");
    let (ok, _, err) = drmesh(&["notify", "test", "pager"]);
    assert!(!ok && err.contains("404"), "{err}");
    assert!(
        !mesh.coordinator_log().contains("s3cret-key"),
        "the webhook secret is never logged"
    );
    assert!(
        !mesh.coordinator_log().contains("PATH-SECRET"),
        "a webhook URL's path is never logged"
    );
    let alerts = mesh.get("/v1/backup-recovery/monitoring/alerts");
    assert!(!alerts.text.contains("PATH-SECRET"), "{}", alerts.text);
}
