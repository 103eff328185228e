//! Token lifecycle through the CLI and the API: a name, a role, an expiry, a last use;
//! an expired or revoked token is refused 401 and says so; alerts record who acted by
//! the token, not by what the body claims.

use std::time::Duration;

use drmesh_tests::{http, wait_for, Mesh};

const STATUS: &str = "/v1/backup-recovery/disaster-recovery/status";

fn tokens(mesh: &Mesh) -> Vec<serde_json::Value> {
    let (ok, out, err) = mesh.cli(&mesh.admin_token, &["token", "list", "--output", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["tokens"].as_array().unwrap().clone()
}

fn by_name<'a>(all: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    all.iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no token {name}: {all:?}"))
}

#[test]
fn tokens_are_listed_expire_and_are_revoked_and_alerts_record_the_caller() {
    let mesh = Mesh::start(200);
    let create = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["token", "create", "--output", "json"];
        all.extend_from_slice(args);
        let (ok, out, err) = mesh.cli(&mesh.admin_token, &all);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let alice = create(&["--role", "operator", "--name", "ops-alice", "--ttl", "4s"]);
    assert!(alice["expiresAt"].is_string(), "{alice}");
    let alice_secret = alice["token"].as_str().unwrap().to_string();
    let bot = create(&["--role", "viewer", "--name", "ci-bot"]);
    assert!(bot.get("expiresAt").is_none(), "{bot}");
    let bot_secret = bot["token"].as_str().unwrap().to_string();

    // Both work; the list shows them active, with the last use, and never a secret.
    assert_eq!(
        http("GET", &mesh.url(STATUS), Some(&alice_secret), None).status,
        200
    );
    assert_eq!(
        http("GET", &mesh.url(STATUS), Some(&bot_secret), None).status,
        200
    );
    let all = tokens(&mesh);
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains(&alice_secret) && !text.contains(&bot_secret));
    assert_eq!(by_name(&all, "ops-alice")["state"], "ACTIVE");
    assert_eq!(by_name(&all, "ops-alice")["role"], "operator");
    assert!(
        by_name(&all, "ops-alice")["lastUsedAt"].is_string(),
        "{text}"
    );
    assert_eq!(by_name(&all, "ci-bot")["state"], "ACTIVE");
    let (ok, out, _) = mesh.cli(&mesh.admin_token, &["token", "list"]);
    assert!(
        ok && out.contains("ops-alice") && out.contains("ACTIVE"),
        "{out}"
    );

    // Listing and revoking are an admin's.
    for (method, path) in [
        ("GET", "/v1/tokens".to_string()),
        (
            "POST",
            format!("/v1/tokens/{}/revoke", bot["id"].as_str().unwrap()),
        ),
    ] {
        let a = http(method, &mesh.url(&path), Some(&alice_secret), None);
        assert_eq!(a.status, 403, "{method} {path}: {}", a.text);
    }

    // A bad ttl is refused and makes nothing.
    let before = tokens(&mesh).len();
    for ttl in ["0s", "soon", "20y"] {
        let a = mesh.post(
            "/v1/tokens",
            Some(&format!(r#"{{"role":"viewer","ttl":"{ttl}"}}"#)),
        );
        assert_eq!(a.status, 400, "{ttl}: {}", a.text);
        assert!(
            a.body["message"].as_str().unwrap().contains("ttl"),
            "{}",
            a.text
        );
    }
    assert_eq!(tokens(&mesh).len(), before);

    // Alerts record the token's name, whatever the body says.
    let mut agent = mesh.agent("tok-a", "eu-west-1");
    wait_for(Duration::from_secs(10), || {
        (mesh.agent_state("tok-a").as_deref() == Some("UP")).then_some(())
    })
    .expect("agent up");
    agent.kill9();
    let alert = wait_for(Duration::from_secs(10), || {
        let a = mesh.get("/v1/backup-recovery/monitoring/alerts?status=OPEN");
        a.body["alerts"].as_array()?.first()?["id"]
            .as_str()
            .map(str::to_string)
    })
    .expect("an alert for the dead agent");
    let acked = http(
        "POST",
        &mesh.url(&format!(
            "/v1/backup-recovery/monitoring/alerts/{alert}/acknowledge"
        )),
        Some(&alice_secret),
        Some(r#"{"acknowledgedBy":"mallory@example.com"}"#),
    );
    assert_eq!(acked.status, 200, "{}", acked.text);
    assert_eq!(acked.body["acknowledgedBy"], "ops-alice", "{}", acked.text);
    let resolved = http(
        "POST",
        &mesh.url(&format!(
            "/v1/backup-recovery/monitoring/alerts/{alert}/resolve"
        )),
        Some(&alice_secret),
        Some(r#"{"resolvedBy":"mallory@example.com"}"#),
    );
    assert_eq!(resolved.status, 200, "{}", resolved.text);
    assert_eq!(
        resolved.body["resolvedBy"], "ops-alice",
        "{}",
        resolved.text
    );

    // Revoked: refused at once, saying so; revoking again changes nothing; an unknown
    // id is 404.
    let bot_id = bot["id"].as_str().unwrap();
    let (ok, out, err) = mesh.cli(&mesh.admin_token, &["token", "revoke", bot_id]);
    assert!(ok && out.contains("revoked"), "{out}{err}");
    let refused = http("GET", &mesh.url(STATUS), Some(&bot_secret), None);
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{}",
        refused.text
    );
    let first = by_name(&tokens(&mesh), "ci-bot")["revokedAt"].clone();
    let again = mesh.post(&format!("/v1/tokens/{bot_id}/revoke"), None);
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["revokedAt"], first);
    assert_eq!(
        mesh.post("/v1/tokens/tok_000000000000/revoke", None).status,
        404
    );
    assert_eq!(mesh.post("/v1/tokens/nonsense/revoke", None).status, 404);

    // Expired: refused once its ttl has passed, saying so.
    let expired = wait_for(Duration::from_secs(10), || {
        let a = http("GET", &mesh.url(STATUS), Some(&alice_secret), None);
        (a.status == 401).then_some(a)
    })
    .expect("the 4 s token expires");
    assert!(
        expired.body["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{}",
        expired.text
    );
    let all = tokens(&mesh);
    assert_eq!(by_name(&all, "ops-alice")["state"], "EXPIRED");
    assert_eq!(by_name(&all, "ci-bot")["state"], "REVOKED");
    assert!(by_name(&all, "ci-bot")["revokedBy"].is_string());
}
