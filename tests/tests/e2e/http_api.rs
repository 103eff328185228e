//! Every HTTP error case of the API, each with a JSON body carrying a message, and the
//! audit log of mutating calls.

use drmesh_tests::{http, Mesh};

fn assert_error(a: &drmesh_tests::Answer, status: u16) {
    assert_eq!(a.status, status, "{}", a.text);
    assert_eq!(a.body["status"], status, "{}", a.text);
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.text
    );
    assert!(a.body["error"].as_str().is_some(), "{}", a.text);
}

#[test]
fn http_errors_are_json_with_a_message() {
    let mesh = Mesh::start(500);
    let status = "/v1/backup-recovery/disaster-recovery/status";

    // 401: no token, wrong token, malformed header.
    assert_error(&http("GET", &mesh.url(status), None, None), 401);
    assert_error(&http("GET", &mesh.url(status), Some("drm_0000"), None), 401);
    assert_error(
        &http("GET", &mesh.url(status), Some("not-a-token"), None),
        401,
    );

    let viewer = mesh.create_token("viewer");
    let operator = mesh.create_token("operator");
    assert_eq!(
        http("GET", &mesh.url(status), Some(&viewer), None).status,
        200
    );
    assert_eq!(
        http("GET", &mesh.url("/metrics"), Some(&viewer), None).status,
        200
    );
    assert_eq!(http("GET", &mesh.url("/healthz"), None, None).status, 200);
    // The runbook's unversioned paths are the same routes, query and auth included.
    let unversioned = http(
        "GET",
        &mesh.url("/backup-recovery/monitoring/alerts?severity=CRITICAL"),
        Some(&viewer),
        None,
    );
    assert_eq!(unversioned.status, 200, "{}", unversioned.text);
    assert_error(
        &http(
            "GET",
            &mesh.url("/backup-recovery/disaster-recovery/status"),
            None,
            None,
        ),
        401,
    );
    assert_error(
        &http(
            "POST",
            &mesh.url("/backup-recovery/retention/enforce-policies"),
            Some(&viewer),
            None,
        ),
        403,
    );
    assert_error(
        &http(
            "GET",
            &mesh.url("/backup-recoveryx/status"),
            Some(&viewer),
            None,
        ),
        404,
    );

    // 403: too low a role.
    let ack = "/v1/backup-recovery/monitoring/alerts/alert_1_abcdef/acknowledge";
    assert_error(
        &http(
            "POST",
            &mesh.url(ack),
            Some(&viewer),
            Some(r#"{"acknowledgedBy":"x"}"#),
        ),
        403,
    );
    assert_error(
        &http(
            "POST",
            &mesh.url("/v1/tokens"),
            Some(&operator),
            Some(r#"{"role":"admin"}"#),
        ),
        403,
    );

    // 404: unknown route, unknown alert.
    assert_error(
        &http(
            "GET",
            &mesh.url("/v1/backup-recovery/nope"),
            Some(&viewer),
            None,
        ),
        404,
    );
    assert_error(&http("GET", &mesh.url("/nope"), None, None), 404);
    assert_error(
        &http(
            "POST",
            &mesh.url(ack),
            Some(&operator),
            Some(r#"{"acknowledgedBy":"x"}"#),
        ),
        404,
    );

    // 400: malformed JSON, wrong fields, bad query values.
    assert_error(
        &http("POST", &mesh.url(ack), Some(&operator), Some("{not json")),
        400,
    );
    assert_error(
        &http(
            "POST",
            &mesh.url(ack),
            Some(&operator),
            Some(r#"{"who":"x"}"#),
        ),
        400,
    );
    // No body is no mistake (who acknowledges is the token's): the alert is unknown.
    assert_error(&http("POST", &mesh.url(ack), Some(&operator), None), 404);
    assert_error(
        &http(
            "POST",
            &mesh.url("/v1/tokens"),
            Some(&mesh.admin_token),
            Some(r#"{"role":"god"}"#),
        ),
        400,
    );
    assert_error(
        &http(
            "GET",
            &mesh.url("/v1/backup-recovery/monitoring/alerts?severity=URGENT"),
            Some(&viewer),
            None,
        ),
        400,
    );

    // The runbook's shapes.
    let alerts = http(
        "GET",
        &mesh.url("/v1/backup-recovery/monitoring/alerts?severity=CRITICAL"),
        Some(&viewer),
        None,
    );
    assert_eq!(alerts.status, 200);
    assert!(alerts.body["alerts"].is_array());
    let dash = http(
        "GET",
        &mesh.url("/v1/backup-recovery/monitoring/dashboard"),
        Some(&viewer),
        None,
    );
    assert_eq!(dash.status, 200);
    for key in ["critical", "high", "total"] {
        assert!(dash.body["alerts"][key].is_u64(), "{}", dash.text);
    }
    assert!(dash.body["recentBackups"].is_array());
    assert!(dash.body["systemHealth"]["status"].is_string());

    // Every mutating call is audited, refused ones included.
    let audit = mesh.get("/v1/audit?limit=1000");
    assert_eq!(audit.status, 200, "{}", audit.text);
    let records = audit.body["records"].as_array().unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["status"] == 403 && r["path"] == ack),
        "{}",
        audit.text
    );
    assert!(
        records
            .iter()
            .any(|r| r["status"] == 201 && r["path"] == "/v1/tokens"),
        "{}",
        audit.text
    );
    assert!(records.iter().all(|r| r["method"] != "GET"));
    assert_error(
        &http("GET", &mesh.url("/v1/audit"), Some(&operator), None),
        403,
    );
}

/// Expensive calls are limited per token (`[limits] expensive_per_minute`): past it,
/// 429 with `Retry-After` and what to do; another token is not held back. A body nested
/// too deep is a clear 400.
#[test]
fn expensive_calls_are_limited_per_token_and_deep_bodies_refused() {
    let mesh = Mesh::start_with(200, "[limits]\nexpensive_per_minute = 3\n");
    let backup = mesh.url("/v1/backup-recovery/database/backup/full");
    for _ in 0..3 {
        // No agent: refused 503, but counted.
        let a = http("POST", &backup, Some(&mesh.admin_token), None);
        assert_eq!(a.status, 503, "{}", a.text);
    }
    let agent = ureq::AgentBuilder::new().build();
    let limited = agent
        .post(&backup)
        .set("Authorization", &format!("Bearer {}", mesh.admin_token))
        .call();
    let Err(ureq::Error::Status(429, resp)) = limited else {
        panic!("not limited: {limited:?}");
    };
    let retry: u64 = resp.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=21).contains(&retry), "{retry}");
    let body: serde_json::Value = resp.into_json().unwrap();
    assert_eq!(body["error"], "too_many_requests", "{body}");
    let audit = mesh.get("/v1/audit?limit=10");
    assert!(
        audit.body["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["status"] == 429),
        "a refused expensive call is audited: {}",
        audit.text
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("expensive_per_minute"),
        "{body}"
    );
    // Another kind and another token are not held back.
    let other = mesh.create_token("operator");
    let a = http("POST", &backup, Some(&other), None);
    assert_eq!(a.status, 503, "{}", a.text);
    let a = http(
        "POST",
        &mesh.url("/v1/backup-recovery/documents/backups/nope/restore"),
        Some(&mesh.admin_token),
        Some("{}"),
    );
    assert_ne!(a.status, 429, "{}", a.text);

    // JSON nested 5,000 deep (past serde's 128): 400 with a message, and the
    // coordinator (which reads every mutating body for its audit line) answers on.
    for deep in [
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
        format!("{}1{}", r#"{"a":"#.repeat(5000), "}".repeat(5000)),
    ] {
        let a = http(
            "POST",
            &mesh.url("/v1/backup-recovery/disaster-recovery/plans"),
            Some(&mesh.admin_token),
            Some(&deep),
        );
        assert_eq!(a.status, 400, "{}", a.text);
        assert!(a.body["message"].is_string(), "{}", a.text);
    }
    assert_eq!(
        mesh.get("/v1/backup-recovery/disaster-recovery/plans")
            .status,
        200
    );
}
