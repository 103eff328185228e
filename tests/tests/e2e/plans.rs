//! DR plans through the runbook's curl calls and the CLI: create, list, get, replace,
//! delete; every bad field named in a 400; plans survive a coordinator restart.

use drmesh_tests::{http, Mesh};
use serde_json::json;

const PLANS: &str = "/v1/backup-recovery/disaster-recovery/plans";

const CONFIG: &str = r#"regions = ["us-west-2", "us-east-1", "eu-west-1"]
[notify.slack]
type = "slack"
url = "http://127.0.0.1:9/hook"
[notify.email]
type = "email"
smtp_host = "127.0.0.1"
from = "drmesh@example.test"
to = ["oncall@example.test"]
"#;

/// The runbook's body, word for word.
const RUNBOOK_PLAN: &str = r#"{
    "id": "production_dr_plan",
    "name": "Production Disaster Recovery Plan",
    "rpo": "1h",
    "rto": "4h",
    "failoverRegions": ["us-east-1", "eu-west-1"],
    "healthCheckInterval": 300000,
    "automaticFailover": false,
    "notificationChannels": ["slack", "email"],
    "testInterval": 604800000
  }"#;

fn bad_fields(a: &drmesh_tests::Answer) -> Vec<String> {
    assert_eq!(a.status, 400, "{}", a.text);
    a.body["fields"]
        .as_array()
        .map(|f| {
            f.iter()
                .map(|f| f["field"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn plans_are_created_checked_replaced_and_deleted() {
    let mut mesh = Mesh::start_with(500, CONFIG);
    let created = mesh.post(PLANS, Some(RUNBOOK_PLAN));
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["id"], "production_dr_plan");
    assert_eq!(created.body["rpoSeconds"], 3600);
    assert_eq!(created.body["rtoSeconds"], 14_400);
    assert_eq!(
        created.body["failoverRegions"],
        json!(["us-east-1", "eu-west-1"])
    );
    assert_eq!(created.body["status"], "ACTIVE");
    // The same id again: 409, the plan unchanged.
    assert_eq!(mesh.post(PLANS, Some(RUNBOOK_PLAN)).status, 409);

    // Every bad field at once, each named; nothing stored.
    let bad = mesh.post(
        PLANS,
        Some(
            r#"{"id": "second", "name": "", "rpo": "soon", "rto": "4h",
                "failoverRegions": ["us-east-1", "atlantis-1", "us-east-1"],
                "healthCheckInterval": 5, "testInterval": 10,
                "notificationChannels": ["pager"]}"#,
        ),
    );
    assert_eq!(
        bad_fields(&bad),
        [
            "name",
            "rpo",
            "failoverRegions[1]",
            "failoverRegions[2]",
            "healthCheckInterval",
            "testInterval",
            "notificationChannels[0]"
        ]
    );
    assert!(
        bad.body["message"].as_str().unwrap().contains("atlantis-1"),
        "{}",
        bad.text
    );
    let empty = mesh.post(
        PLANS,
        Some(r#"{"name": "x", "rpo": "1h", "rto": "1h", "failoverRegions": []}"#),
    );
    assert_eq!(bad_fields(&empty), ["failoverRegions"]);
    let typo = mesh.post(PLANS, Some(r#"{"name": "x", "rpoo": "1h"}"#));
    assert_eq!(typo.status, 400, "{}", typo.text);
    assert!(typo.text.contains("rpoo"), "{}", typo.text);
    assert_eq!(mesh.post(PLANS, Some("not json")).status, 400);

    let list = mesh.get(PLANS);
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.body["total"], 1, "{}", list.text);

    // Roles: a viewer reads, only an operator writes.
    let viewer = mesh.create_token("viewer");
    let url = mesh.url(&format!("{PLANS}/production_dr_plan"));
    assert_eq!(http("GET", &url, Some(&viewer), None).status, 200);
    assert_eq!(http("DELETE", &url, Some(&viewer), None).status, 403);
    assert_eq!(http("DELETE", &url, None, None).status, 401);

    // Replace: new objectives, same creation time.
    let replaced = http(
        "PUT",
        &url,
        Some(&mesh.admin_token),
        Some(
            &RUNBOOK_PLAN
                .replace("\"1h\"", "\"15m\"")
                .replace("false", "true"),
        ),
    );
    assert_eq!(replaced.status, 200, "{}", replaced.text);
    assert_eq!(replaced.body["rpoSeconds"], 900);
    assert_eq!(replaced.body["automaticFailover"], true);
    assert_eq!(replaced.body["createdAt"], created.body["createdAt"]);
    let renamed = http(
        "PUT",
        &url,
        Some(&mesh.admin_token),
        Some(&RUNBOOK_PLAN.replace("production_dr_plan", "other")),
    );
    assert_eq!(bad_fields(&renamed), ["id"]);
    assert_eq!(
        http(
            "PUT",
            &mesh.url(&format!("{PLANS}/nope")),
            Some(&mesh.admin_token),
            Some(RUNBOOK_PLAN)
        )
        .status,
        404
    );

    // Durable: a coordinator killed and restarted still has it.
    mesh.restart_coordinator();
    let kept = mesh.get(&format!("{PLANS}/production_dr_plan"));
    assert_eq!(kept.status, 200, "{}", kept.text);
    assert_eq!(kept.body["rpoSeconds"], 900);

    assert_eq!(
        http("DELETE", &url, Some(&mesh.admin_token), None).status,
        204
    );
    assert_eq!(mesh.get(&format!("{PLANS}/production_dr_plan")).status, 404);
    assert_eq!(
        http("DELETE", &url, Some(&mesh.admin_token), None).status,
        404
    );
}

#[test]
fn the_cli_manages_plans() {
    let mesh = Mesh::start_with(500, CONFIG);
    let drmesh = |args: &[&str]| mesh.cli(&mesh.admin_token, args);
    let file = mesh.dir.path().join("plan.json");
    std::fs::write(&file, RUNBOOK_PLAN).unwrap();
    let (ok, out, err) = drmesh(&["plans", "create", "--file", &file.display().to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains("production_dr_plan"), "{out}");
    let (ok, _, err) = drmesh(&[
        "plans",
        "create",
        "--id",
        "eu_only",
        "--name",
        "EU only",
        "--rpo",
        "5m",
        "--rto",
        "30m",
        "--regions",
        "eu-west-1",
        "--automatic",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = drmesh(&[
        "plans",
        "create",
        "--name",
        "bad",
        "--rpo",
        "1h",
        "--rto",
        "1h",
        "--regions",
        "mars-1",
    ]);
    assert!(!ok);
    assert!(
        err.contains("failoverRegions[0]") && err.contains("mars-1"),
        "{err}"
    );

    let (ok, out, err) = drmesh(&["plans", "list", "-o", "json"]);
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["total"], 2, "{out}");
    let (ok, out, _) = drmesh(&["plans", "show", "eu_only"]);
    assert!(ok);
    assert!(
        out.contains("automatic") && out.contains("eu-west-1"),
        "{out}"
    );
    let (ok, out, _) = drmesh(&["plans", "list"]);
    assert!(ok);
    assert!(
        out.contains("production_dr_plan") && out.contains("eu_only"),
        "{out}"
    );
    let (ok, _, err) = drmesh(&["plans", "delete", "eu_only"]);
    assert!(ok, "{err}");
    let (ok, _, err) = drmesh(&["plans", "show", "eu_only"]);
    assert!(!ok && err.contains("404"), "{err}");
}
