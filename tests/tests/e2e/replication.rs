//! Replication to every location: a documents agent backs up into a local directory and
//! copies to S3 (moto), Azure Blob (Azurite) and GCS (fake-gcs-server), each behind a TCP
//! proxy the test takes down. Down: backups still succeed (the primary holds them), the statistics and the
//! dashboard say which location is unreachable and why, and past `alert_after` a HIGH
//! `LOCATION_UNREACHABLE` alert is open. Back: the next round copies what was missed,
//! verifies it there, and resolves the alert by itself.

use std::path::Path;

use chrono::Datelike;
use std::time::Duration;

use drmesh_tests::objstore::{
    AzuriteServer, GcsServer, S3Server, AZURITE_ACCOUNT, AZURITE_KEY, S3_ACCESS_KEY, S3_REGION,
    S3_SECRET_KEY,
};
use drmesh_tests::proxy::Proxy;
use drmesh_tests::{field_pairs, wait_for, Mesh, Proc};
use serde_json::Value;

const BASE: &str = "/v1/backup-recovery/documents";

fn location_states(outcome: &Value) -> Vec<(String, String)> {
    field_pairs(&outcome["outcome"]["locations"], "name", "status")
}

/// The statistics' entry of a location, once `pred` holds for it.
fn wait_location(
    mesh: &Mesh,
    agent: &Proc,
    name: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    wait_for(Duration::from_secs(60), || {
        let stats = mesh.get(&format!("{BASE}/statistics"));
        last = stats.body.clone();
        stats.body["locations"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)
            .filter(|l| pred(l))
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "{name}: {what}; statistics: {last}\n{}\nagent:\n{}",
            mesh.coordinator_log(),
            agent.log_text()
        )
    })
}

fn open_alerts(mesh: &Mesh) -> Vec<Value> {
    let a = mesh.get("/v1/backup-recovery/monitoring/alerts");
    assert_eq!(a.status, 200, "{}", a.text);
    let list = a.body["alerts"]
        .as_array()
        .or_else(|| a.body.as_array())
        .cloned()
        .unwrap_or_default();
    list.into_iter()
        .filter(|x| x["type"] == "LOCATION_UNREACHABLE" || x["kind"] == "LOCATION_UNREACHABLE")
        .collect()
}

fn write(uploads: &Path, name: &str, text: &str) {
    let p = uploads.join(name);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    std::fs::write(&p, text.repeat(5000)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

#[test]
fn a_location_down_raises_an_alert_and_catches_up_and_verifies_when_back() {
    let mesh = Mesh::start_with(200, "[copies]\ninterval = \"1s\"\nalert_after = \"2s\"\n");
    let work = mesh.dir.path().join("work");
    let uploads = work.join("uploads");
    write(&uploads, "documents/doc-001/original.pdf", "%PDF-1.7 one ");
    let s3 = S3Server::start(&work);
    s3.create_bucket("propchain-backups");
    let azurite = AzuriteServer::start(&work);
    azurite.create_container("document-backups");
    let gcs = GcsServer::start(&work);
    gcs.create_bucket("propchain-dr");
    let s3_proxy = Proxy::start(s3.port);
    let az_proxy = Proxy::start(azurite.port);
    let gcs_proxy = Proxy::start(gcs.port);

    let files = mesh.issue_agent("docs-1", "us-west-2");
    let extra = format!(
        r#"
[documents]
source = "{uploads}"
keep_latest_archive = false
[[documents.locations]]
name = "local"
url = "{local}"
[[documents.locations]]
name = "azure"
url = "az://document-backups/{{yyyy}}/{{mm}}"
options = {{ account_name = "{account}", access_key = "{akey}", endpoint = "{aurl}/{account}", allow_http = "true" }}
[[documents.locations]]
name = "s3"
url = "s3://propchain-backups/document-backups"
quota = "1 GiB"
options = {{ endpoint = "{s3}", allow_http = "true", region = "{region}", access_key_id = "{ak}", secret_access_key = "{sk}" }}
[[documents.locations]]
name = "gcs"
url = "gs://propchain-dr/document-backups"
options = {{ endpoint = "{gcs}", allow_anonymous = "true" }}
"#,
        uploads = uploads.display(),
        local = work.join("repo-local").display(),
        account = AZURITE_ACCOUNT,
        akey = AZURITE_KEY,
        aurl = az_proxy.endpoint,
        s3 = s3_proxy.endpoint,
        gcs = gcs_proxy.endpoint,
        region = S3_REGION,
        ak = S3_ACCESS_KEY,
        sk = S3_SECRET_KEY,
    );
    let config = mesh.agent_config("docs-1", "us-west-2", &files, &extra);
    let agent = mesh.spawn_agent(&config);
    wait_for(Duration::from_secs(10), || {
        (mesh.agent_state("docs-1").as_deref() == Some("UP")).then_some(())
    })
    .unwrap_or_else(|| panic!("agent not UP:\n{}", agent.log_text()));

    let first = mesh.document_backup();
    assert_eq!(first["status"], "COMPLETED", "{first}");
    for (_, status) in location_states(&first) {
        assert_eq!(status, "COMPLETED", "{first}");
    }
    for name in ["s3", "azure", "gcs"] {
        let l = wait_location(&mesh, &agent, name, "in sync", |l| {
            l["replication"]["state"] == "IN_SYNC"
        });
        assert_eq!(l["replication"]["lagSeconds"], 0.0, "{l}");
        assert_eq!(l["replication"]["agentId"], "docs-1", "{l}");
    }
    let s3_stats = wait_location(&mesh, &agent, "s3", "usage measured", |l| {
        l["replication"]["bytesUsed"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });
    assert_eq!(
        s3_stats["replication"]["quotaBytes"],
        1024u64 * 1024 * 1024,
        "{s3_stats}"
    );

    // The object stores go away; a backup still completes in the primary location.
    s3_proxy.set_down(true);
    az_proxy.set_down(true);
    gcs_proxy.set_down(true);
    write(&uploads, "documents/doc-002/original.pdf", "%PDF-1.7 two ");
    let second = mesh.document_backup();
    assert_eq!(second["status"], "COMPLETED", "{second}");
    let states = location_states(&second);
    assert!(
        states.contains(&("local".into(), "COMPLETED".into()))
            && states.contains(&("s3".into(), "FAILED".into()))
            && states.contains(&("azure".into(), "FAILED".into()))
            && states.contains(&("gcs".into(), "FAILED".into())),
        "{second}"
    );
    let second_id = second["backupId"].as_str().unwrap_or_default().to_string();
    for name in ["s3", "azure", "gcs"] {
        let l = wait_location(&mesh, &agent, name, "reported unreachable", |l| {
            l["replication"]["state"] == "UNREACHABLE"
                && l["replication"]["unreachableSince"].is_string()
        });
        assert!(
            l["replication"]["lastError"]
                .as_str()
                .is_some_and(|e| !e.is_empty()),
            "{l}"
        );
    }
    let alerts = wait_for(Duration::from_secs(60), || {
        let a = open_alerts(&mesh);
        (a.iter().filter(|x| x["status"] != "RESOLVED").count() == 3).then_some(a)
    })
    .unwrap_or_else(|| {
        panic!(
            "no LOCATION_UNREACHABLE alerts:\n{}",
            mesh.coordinator_log()
        )
    });
    for a in &alerts {
        assert_eq!(a["severity"], "HIGH", "{a}");
        let text = a["message"].as_str().unwrap_or_default();
        assert!(
            text.contains("unreachable") && text.contains("catches up"),
            "{a}"
        );
    }
    let dash = mesh.get("/v1/backup-recovery/monitoring/dashboard");
    assert_eq!(dash.status, 200, "{}", dash.text);
    let rows = dash.body["replication"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rows.len(), 3, "{}", dash.text);
    assert!(
        rows.iter().all(|r| r["state"] == "UNREACHABLE"),
        "{}",
        dash.text
    );

    // Back: caught up by itself, verified there, the alerts resolved.
    s3_proxy.set_down(false);
    az_proxy.set_down(false);
    gcs_proxy.set_down(false);
    for name in ["s3", "azure", "gcs"] {
        let l = wait_location(&mesh, &agent, name, "caught up", |l| {
            l["replication"]["state"] == "IN_SYNC"
        });
        assert_eq!(l["lastStatus"], "COMPLETED", "{l}");
        assert!(l["replication"]["unreachableSince"].is_null(), "{l}");
    }
    wait_for(Duration::from_secs(30), || {
        open_alerts(&mesh)
            .iter()
            .all(|x| x["status"] == "RESOLVED")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("alerts not resolved: {:?}", open_alerts(&mesh)));
    let v = mesh.post(&format!("{BASE}/backups/{second_id}/verify"), None);
    assert_eq!(v.status, 202, "{}", v.text);
    let verification = wait_for(Duration::from_secs(60), || {
        let a = mesh.get(&format!("{BASE}/backups/{second_id}"));
        let v = a.body["verification"].clone();
        (v.is_object() && v["status"] != "IN_PROGRESS").then_some(v)
    })
    .unwrap_or_else(|| panic!("verification did not finish"));
    let locations = verification["locations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for name in ["local", "s3", "azure", "gcs"] {
        let l = locations
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("{name} not verified: {verification}"));
        assert_eq!(l["status"], "PASSED", "{name}: {verification}");
    }
    // Each month's repository of the templated location holds that month's backups
    // only: this month's has both, the month before (probed by every round) none.
    let azure_snapshots = |month: chrono::DateTime<chrono::Utc>| {
        let out = std::process::Command::new(drmesh_tests::bin("drmesh"))
            .args(["repo", "snapshots", "--output", "json", "--repo"])
            .arg(format!("az://document-backups/{}", month.format("%Y/%m")))
            .args(["--repo-option", &format!("account_name={AZURITE_ACCOUNT}")])
            .args(["--repo-option", &format!("access_key={AZURITE_KEY}")])
            .args([
                "--repo-option",
                &format!("endpoint={}", azurite.account_url()),
            ])
            .args(["--repo-option", "allow_http=true"])
            .output()
            .unwrap_or_else(|e| panic!("run drmesh: {e}"));
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        listed.as_array().map_or(0, Vec::len)
    };
    let now = chrono::Utc::now();
    let first_id = first["backupId"].as_str().unwrap_or_default();
    let month_of = |id: &str| {
        let ms: i64 = id
            .split('_')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        chrono::DateTime::from_timestamp_millis(ms).unwrap_or(now)
    };
    if month_of(first_id).format("%Y%m").to_string()
        == month_of(&second_id).format("%Y%m").to_string()
    {
        assert_eq!(azure_snapshots(month_of(&second_id)), 2);
        let before = month_of(&second_id)
            .with_day(1)
            .map(|d| d - chrono::Duration::days(1))
            .unwrap_or(now);
        assert_eq!(azure_snapshots(before), 0, "the month before got snapshots");
    }
    drop(agent);
}

/// Object keys under `prefix` in `bucket` of a moto server.
fn s3_keys(s3: &S3Server, bucket: &str, prefix: &str) -> Vec<String> {
    s3.objects(bucket, prefix)
        .into_iter()
        .map(|(key, _, _)| key)
        .collect()
}

#[test]
fn database_replicas_get_every_base_backup_and_wal_segment_verified() {
    use super::database::{agent_and_full_backup, database_sections, wait_backup, Fixture, DB};
    let fx = Fixture::new("5s");
    fx.pgbench(&["-i", "-s", "2", "-q"]);
    let mesh = Mesh::start_with(200, "[replication]\ninterval = \"1s\"\n");
    let s3 = S3Server::start(&fx.root);
    s3.create_bucket("db-replica");
    let sections = format!(
        "{}[[database.replicas]]\nname = \"s3\"\nurl = \"s3://db-replica/database\"\n\
         options = {{ endpoint = \"{}\", allow_http = \"true\", region = \"{S3_REGION}\", \
         access_key_id = \"{S3_ACCESS_KEY}\", secret_access_key = \"{S3_SECRET_KEY}\" }}\n",
        database_sections(&fx.root, &fx.primary, "5s"),
        s3.endpoint
    );
    let (agent, _, id, _) = agent_and_full_backup(&fx, &mesh, &sections, None);
    let done = wait_backup(&mesh, &id);
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", agent.log_text());

    // The backup's details say it is at the replica, once a round has copied it.
    let mut last = Value::Null;
    let location = wait_for(Duration::from_secs(60), || {
        let a = mesh.get(&format!("{DB}/backups/{id}"));
        last = a.body.clone();
        a.body["locations"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == "s3" && l["replicated"] == true)
            .cloned()
    })
    .unwrap_or_else(|| panic!("not replicated: {last}\n{}", agent.log_text()));
    assert_eq!(location["state"], "IN_SYNC", "{location}");
    assert_eq!(location["url"], "s3://db-replica/database", "{location}");

    // There: the manifest, the packs and the WAL, and the snapshot verifies reading
    // every chunk back.
    let keys = s3_keys(&s3, "db-replica", "database/");
    assert!(
        keys.iter().any(|k| k.ends_with(&format!("snapshots/{id}"))),
        "{keys:?}"
    );
    let wal: Vec<&String> = keys.iter().filter(|k| k.contains("/wal/")).collect();
    assert!(!wal.is_empty(), "no WAL at the replica: {keys:?}");
    let verify = std::process::Command::new(drmesh_tests::bin("drmesh"))
        .args([
            "repo",
            "verify",
            &id,
            "--read-data",
            "--repo",
            "s3://db-replica/database",
        ])
        .args(["--repo-option", &format!("endpoint={}", s3.endpoint)])
        .args(["--repo-option", "allow_http=true"])
        .args(["--repo-option", &format!("region={S3_REGION}")])
        .args(["--repo-option", &format!("access_key_id={S3_ACCESS_KEY}")])
        .args([
            "--repo-option",
            &format!("secret_access_key={S3_SECRET_KEY}"),
        ])
        .output()
        .unwrap_or_else(|e| panic!("run drmesh: {e}"));
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // The dashboard row: nothing missing.
    let dash = mesh.get("/v1/backup-recovery/monitoring/dashboard");
    let row = dash.body["replication"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["repository"] == "database").cloned())
        .unwrap_or_else(|| panic!("no database row: {}", dash.text));
    assert_eq!(row["missingWal"], 0, "{row}");
    assert_eq!(row["missingSnapshotCount"], 0, "{row}");
    drop(agent);
}
