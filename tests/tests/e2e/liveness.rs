//! Agents come UP, go DOWN with a CRITICAL alert when killed, and come back.

use std::time::{Duration, Instant};

use drmesh_tests::{wait_for, Mesh};

#[test]
fn agents_up_killed_agent_down_with_alert_and_back() {
    let mesh = Mesh::start(500);
    let started = Instant::now();
    let _a1 = mesh.agent("a1", "us-west-2");
    let _a2 = mesh.agent("a2", "us-west-2");
    let mut a3 = mesh.agent("a3", "us-east-1");

    let all_up = wait_for(Duration::from_secs(5), || {
        let s = mesh.status();
        let agents: Vec<_> = s.regions.iter().flat_map(|r| &r.agents).collect();
        (agents.len() == 3 && agents.iter().all(|a| a.state.to_string() == "UP")).then_some(())
    });
    let up_after = started.elapsed();
    assert!(
        all_up.is_some(),
        "agents not UP: {:?}\n{}",
        mesh.status(),
        mesh.coordinator_log()
    );
    assert!(
        up_after <= Duration::from_secs(2),
        "all UP took {up_after:?}"
    );
    let status = mesh.status();
    assert_eq!(status.regions.len(), 2);

    // A command on a bidirectional stream.
    let ping = mesh.post("/v1/agents/a1/ping", None);
    assert_eq!(ping.status, 200, "{}", ping.text);
    assert_eq!(ping.body["ok"], true);

    // kill -9 one agent: DOWN and a CRITICAL alert within 3 intervals + 1 s.
    let killed = Instant::now();
    a3.kill9();
    let alert_id = wait_for(Duration::from_secs(5), || {
        if mesh.agent_state("a3").as_deref() != Some("DOWN") {
            return None;
        }
        let alerts = mesh.get("/v1/backup-recovery/monitoring/alerts?severity=CRITICAL");
        alerts.body["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["source"] == "a3" && a["status"] == "OPEN")
            .map(|a| a["id"].as_str().unwrap_or_default().to_string())
    })
    .unwrap_or_else(|| panic!("no DOWN + alert:\n{}", mesh.coordinator_log()));
    let detected = killed.elapsed();
    let limit = Duration::from_millis(3 * mesh.heartbeat_ms + 1000);
    assert!(
        detected <= limit,
        "DOWN + alert after {detected:?}, limit {limit:?}"
    );
    assert_eq!(mesh.agent_state("a1").as_deref(), Some("UP"));

    let dashboard = mesh.get("/v1/backup-recovery/monitoring/dashboard");
    assert_eq!(
        dashboard.body["alerts"]["critical"], 1,
        "{}",
        dashboard.text
    );
    assert_eq!(dashboard.body["systemHealth"]["status"], "CRITICAL");
    let metrics = mesh.get("/metrics");
    assert!(
        metrics.text.contains("drmesh_agents{state=\"DOWN\"} 1"),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("drmesh_alerts_open{severity=\"CRITICAL\"} 1"),
        "{}",
        metrics.text
    );

    // Restart it: UP again and the alert resolved by the system.
    let config = mesh.dir.path().join("agent-a3.toml");
    let _a3 = mesh.spawn_agent(&config);
    let resolved = wait_for(Duration::from_secs(10), || {
        let alert = mesh.get("/v1/backup-recovery/monitoring/alerts?status=RESOLVED");
        let up = mesh.agent_state("a3").as_deref() == Some("UP");
        let found = alert.body["alerts"]
            .as_array()?
            .iter()
            .any(|a| a["id"] == alert_id.as_str() && a["resolvedBy"] == "system");
        (up && found).then_some(())
    });
    assert!(
        resolved.is_some(),
        "not back UP/resolved:\n{}",
        mesh.coordinator_log()
    );
    let dashboard = mesh.get("/v1/backup-recovery/monitoring/dashboard");
    assert_eq!(dashboard.body["alerts"]["total"], 0, "{}", dashboard.text);
    assert_eq!(dashboard.body["systemHealth"]["status"], "HEALTHY");
}

#[test]
fn agents_reconnect_after_a_coordinator_crash() {
    let mut mesh = Mesh::start(200);
    let _a = mesh.agent("r1", "us-west-2");
    let _b = mesh.agent("r2", "eu-west-1");
    let up = |mesh: &Mesh| {
        wait_for(Duration::from_secs(10), || {
            let s = mesh.status();
            let agents: Vec<_> = s.regions.iter().flat_map(|r| &r.agents).collect();
            (agents.len() == 2 && agents.iter().all(|a| a.state.to_string() == "UP")).then_some(())
        })
    };
    assert!(up(&mesh).is_some(), "{}", mesh.coordinator_log());
    mesh.restart_coordinator();
    // Both agents are remembered from the store and reconnect on their own.
    assert!(
        up(&mesh).is_some(),
        "{}\nagent:\n{}",
        mesh.coordinator_log(),
        _a.log_text()
    );
    let dashboard = mesh.get("/v1/backup-recovery/monitoring/dashboard");
    assert_eq!(dashboard.body["alerts"]["total"], 0, "{}", dashboard.text);
}
