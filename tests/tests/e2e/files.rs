//! Files with secrets are made private (0600, directories 0700), and a program started
//! on one that others can read says so, naming the file and the cure.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use drmesh_tests::{wait_for, Mesh};

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn secrets_are_created_private_and_a_loose_one_is_named_at_start() {
    let mut mesh = Mesh::start(200);
    assert_eq!(mode(&mesh.dir.path().join("state.redb")), 0o600);
    assert_eq!(mode(&mesh.ca_dir().join("ca.key")), 0o600);
    assert_eq!(mode(&mesh.ca_dir().join("coordinator.key")), 0o600);
    assert!(
        !mesh.coordinator_log().contains("is not private"),
        "{}",
        mesh.coordinator_log()
    );

    mesh.restart_coordinator_with(|dir| {
        fs::set_permissions(dir.join("state.redb"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(
            dir.join("ca/coordinator.key"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
    });
    let log = mesh.coordinator_log();
    assert!(
        log.contains("state.redb has mode 644") && log.contains("chmod 600"),
        "{log}"
    );
    assert!(log.contains("coordinator.key has mode 640"), "{log}");

    // An agent's key.
    let files = mesh.issue_agent("files-a", "eu-west-1");
    assert_eq!(mode(&files.key), 0o600);
    fs::set_permissions(&files.key, fs::Permissions::from_mode(0o604)).unwrap();
    let config = mesh.agent_config("files-a", "eu-west-1", &files, "");
    let agent = mesh.spawn_agent(&config);
    let warned = wait_for(Duration::from_secs(10), || {
        agent
            .log_text()
            .contains(&format!("{} has mode 604", files.key.display()))
            .then_some(())
    });
    assert!(warned.is_some(), "{}", agent.log_text());
}
