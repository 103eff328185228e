//! The audit log: an authenticated caller's every mutating call is recorded with its key
//! parameters and pages by `since`; anonymous calls are counted in /metrics and never
//! written, however many; a body over the limit is refused 413.

use std::sync::Arc;
use std::time::Duration;

use drmesh_tests::{http, http_via, Mesh};

fn audit(mesh: &Mesh, query: &str) -> serde_json::Value {
    let a = mesh.get(&format!("/v1/audit{query}"));
    assert_eq!(a.status, 200, "{}", a.text);
    a.body
}

fn audit_count(mesh: &Mesh) -> usize {
    audit(mesh, "?limit=10000")["records"]
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn calls_are_audited_with_their_parameters_and_anonymous_ones_only_counted() {
    let mesh = Mesh::start(200);
    let t0 = chrono::Utc::now().to_rfc3339();

    // Key parameters: a created token's role and name; the query string.
    let created = mesh.post("/v1/tokens", Some(r#"{"role":"viewer","name":"audited"}"#));
    assert_eq!(created.status, 201, "{}", created.text);
    let nope = mesh.post(
        "/v1/backup-recovery/monitoring/alerts/alert_1_abcdef/acknowledge?via=test",
        None,
    );
    assert_eq!(nope.status, 404, "{}", nope.text);
    let records = audit(&mesh, &format!("?since={}", urlish(&t0)))["records"].clone();
    let records = records.as_array().unwrap();
    let token = records
        .iter()
        .find(|r| r["path"] == "/v1/tokens")
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(token["status"], 201);
    assert_eq!(token["params"]["role"], "viewer");
    assert_eq!(token["params"]["name"], "audited");
    assert_eq!(token["role"], "admin");
    assert!(
        !token.to_string().contains("drm_"),
        "a secret in the audit: {token}"
    );
    let ack = records
        .iter()
        .find(|r| r["path"].as_str().unwrap().ends_with("/acknowledge"))
        .unwrap();
    assert_eq!(
        (ack["status"].as_u64(), ack["query"].as_str()),
        (Some(404), Some("via=test"))
    );

    // Paging: 25 more calls, read 10 at a time after t0, each once, oldest first.
    for i in 0..25 {
        let a = mesh.post(
            "/v1/tokens",
            Some(&format!(r#"{{"role":"viewer","name":"page-{i}"}}"#)),
        );
        assert_eq!(a.status, 201);
    }
    let mut seen = Vec::new();
    let mut since = t0.clone();
    for _ in 0..10 {
        let page = audit(&mesh, &format!("?since={}&limit=10", urlish(&since)));
        for r in page["records"].as_array().unwrap() {
            seen.push(r["cursor"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => since = next.to_string(),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "pages out of order or repeated");
    assert_eq!(seen.len(), 27, "{seen:?}");
    let bad = mesh.get("/v1/audit?since=yesterday");
    assert_eq!(bad.status, 400, "{}", bad.text);

    // 10,000 anonymous POSTs (no token, a wrong one) change nothing stored.
    let before = audit_count(&mesh);
    let store = mesh.dir.path().join("state.redb");
    let size_before = std::fs::metadata(&store).unwrap().len();
    let url = Arc::new(mesh.url("/v1/backup-recovery/disaster-recovery/failover"));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(10))
                    .build();
                for i in 0..1250 {
                    let token = if (w + i) % 2 == 0 {
                        None
                    } else {
                        Some("drm_wrong")
                    };
                    let a = http_via(&agent, "POST", &url, token, Some(r#"{"targetRegion":"x"}"#));
                    assert_eq!(a.status, 401, "{}", a.text);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(audit_count(&mesh), before, "anonymous calls were written");
    let size_after = std::fs::metadata(&store).unwrap().len();
    assert!(
        size_after <= size_before,
        "the store grew from {size_before} to {size_after} bytes"
    );
    let metrics = http("GET", &mesh.url("/metrics"), Some(&mesh.admin_token), None).text;
    let counted: f64 = metrics
        .lines()
        .find(|l| l.starts_with("drmesh_api_unauthenticated_requests_total{method=\"POST\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("not counted:\n{metrics}"));
    assert!(counted >= 10_000.0, "{counted}");

    // A body over the limit: 413, with a message.
    let big = format!(r#"{{"role":"viewer","name":"{}"}}"#, "x".repeat(300 * 1024));
    let a = mesh.post("/v1/tokens", Some(&big));
    assert_eq!(a.status, 413, "{}", a.text);
    assert!(
        a.body["message"].as_str().unwrap().contains("body"),
        "{}",
        a.text
    );
}

/// `since` as a query value: an RFC 3339 time's `+` must be escaped.
fn urlish(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}
