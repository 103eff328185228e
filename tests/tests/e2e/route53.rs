//! The Route 53 provider against a real `moto_server` (moto's Route 53 REST API): the
//! change batch (DELETE of the record as held + CREATE), the read-first prerequisite,
//! idempotence, confirmation through the API, and refused credentials.
//!
//! moto does not check SigV4 signatures unless started with
//! `INITIAL_NO_AUTH_ACTION_COUNT`; then it refuses an access key it does not know
//! (`InvalidClientTokenId`, HTTP 403), which is what the credentials test uses. A wrong
//! secret for a known key (`SignatureDoesNotMatch`) is not exercised: that would need an
//! IAM user created in moto first; its mapping to `Refused` is unit-tested in coordinator/src/dns/route53.rs.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use drmesh_coordinator::config::CoordinatorConfigFile;
use drmesh_coordinator::dns::{
    self, AwsCredentials, DnsError, DnsProvider, RecordSet, Route53, Route53Settings,
};
use drmesh_coordinator::store::{RedbStore, Store};
use drmesh_tests::objstore::{free_port, S3Server};
use drmesh_tests::{wait_for, Proc};

const RECORD: &str = "db.drmesh.test.";
const ZONE: &str = "drmesh.test.";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An unsigned-but-scoped request: moto picks the service from the Authorization
/// header's credential scope and (by default) does not check the signature.
fn raw(endpoint: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(15))
        .build();
    let req = agent
        .request(method, &format!("{endpoint}/2013-04-01/{path}"))
        .set(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/route53/aws4_request, SignedHeaders=host, Signature=00",
        );
    let answer = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    match answer {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// Creates hosted zone `drmesh.test.` and returns its id (without `/hostedzone/`).
fn create_zone(endpoint: &str) -> String {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CreateHostedZoneRequest xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Name>{ZONE}</Name><CallerReference>drmesh-{}</CallerReference></CreateHostedZoneRequest>",
        free_port()
    );
    let (status, text) = raw(endpoint, "POST", "hostedzone", Some(&body));
    assert_eq!(status, 201, "CreateHostedZone: {text}");
    let start = text.find("<Id>/hostedzone/").expect("zone id") + "<Id>/hostedzone/".len();
    let end = start + text[start..].find("</Id>").expect("end of id");
    text[start..end].to_string()
}

/// Creates the A record with `ttl` directly through the API (not through drmesh).
fn create_record(endpoint: &str, zone: &str, addr: &str, ttl: u32) {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ChangeResourceRecordSetsRequest xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><ChangeBatch><Changes><Change><Action>CREATE</Action><ResourceRecordSet><Name>{RECORD}</Name><Type>A</Type><TTL>{ttl}</TTL><ResourceRecords><ResourceRecord><Value>{addr}</Value></ResourceRecord></ResourceRecords></ResourceRecordSet></Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>"
    );
    let (status, text) = raw(
        endpoint,
        "POST",
        &format!("hostedzone/{zone}/rrset/"),
        Some(&body),
    );
    assert_eq!(status, 200, "ChangeResourceRecordSets: {text}");
}

fn provider(endpoint: &str, zone: &str, credentials: AwsCredentials) -> Route53 {
    Route53::new(
        RECORD,
        60,
        Route53Settings {
            hosted_zone_id: zone.to_string(),
            endpoint: endpoint.to_string(),
            region: "us-east-1".into(),
            credentials,
            authoritative: vec![],
        },
    )
    .unwrap()
}

fn testing() -> AwsCredentials {
    AwsCredentials::new("testing", "testing", None)
}

fn a_record(ttl: u32, addr: &str) -> Vec<RecordSet> {
    vec![RecordSet {
        name: RECORD.into(),
        rtype: "A".into(),
        ttl: Some(ttl),
        values: vec![addr.into()],
        special: false,
    }]
}

#[tokio::test]
async fn route53_update_replaces_exactly_the_old_record_and_is_confirmed_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let moto = S3Server::start(dir.path());
    let zone = create_zone(&moto.endpoint);
    // The old record has TTL 300: the DELETE must name it as held, not drmesh's 60.
    create_record(&moto.endpoint, &zone, "198.18.0.11", 300);
    let p = provider(&moto.endpoint, &zone, testing());
    assert_eq!(p.record_sets().await.unwrap(), a_record(300, "198.18.0.11"));

    p.update(Some(ip("198.18.0.11")), ip("198.18.0.12"))
        .await
        .unwrap_or_else(|e| panic!("{e}\nmoto log:\n{}", moto.proc.log_text()));
    assert_eq!(p.record_sets().await.unwrap(), a_record(60, "198.18.0.12"));
    let lines = dns::confirm(&p, ip("198.18.0.12"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].ends_with("API answers 198.18.0.12"), "{lines:?}");

    // A stale coordinator (expects an answer that is no longer there) changes nothing.
    let err = p
        .update(Some(ip("198.18.0.99")), ip("198.18.0.13"))
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Stale { .. }), "{err}");
    assert!(err.is_permanent());
    assert!(
        err.to_string()
            .contains("no longer holds 198.18.0.99 (it holds 198.18.0.12)"),
        "{err}"
    );
    let err = p.update(None, ip("198.18.0.13")).await.unwrap_err();
    assert!(matches!(err, DnsError::Stale { .. }), "{err}");
    assert_eq!(p.record_sets().await.unwrap(), a_record(60, "198.18.0.12"));

    // Repeating the change that was made is Ok and changes nothing.
    p.update(Some(ip("198.18.0.11")), ip("198.18.0.12"))
        .await
        .unwrap();
    assert_eq!(p.record_sets().await.unwrap(), a_record(60, "198.18.0.12"));

    // Confirming an address the API does not hold fails, saying what it holds.
    let err = dns::confirm(&p, ip("198.18.0.13"), Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::NotConfirmed { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("API answers 198.18.0.12 instead of 198.18.0.13"),
        "{err}"
    );

    // A move to IPv6 deletes the A record and creates an AAAA record, in one batch.
    p.update(Some(ip("198.18.0.12")), ip("2001:db8::12"))
        .await
        .unwrap();
    let sets = p.record_sets().await.unwrap();
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!((sets[0].rtype.as_str(), sets[0].ttl), ("AAAA", Some(60)));
    assert_eq!(sets[0].values, vec!["2001:db8::12"]);
}

#[tokio::test]
async fn route53_from_config_creates_the_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let moto = S3Server::start(dir.path());
    let zone = create_zone(&moto.endpoint);
    std::fs::write(dir.path().join("aws.secret"), "testing\n").unwrap();
    let text = format!(
        "[tls]\nca_cert = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n[dns]\nprovider = \"route53\"\nrecord = \"{RECORD}\"\nhosted_zone_id = \"/hostedzone/{zone}\"\nendpoint = \"{}\"\naccess_key_id = \"testing\"\nsecret_access_key_file = \"aws.secret\"\n",
        moto.endpoint
    );
    let cfg = CoordinatorConfigFile::parse(&text, Path::new("c.toml"))
        .unwrap()
        .validate(dir.path())
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    let p = dns::from_config(cfg.dns.as_ref().unwrap(), store)
        .await
        .unwrap();
    assert!(
        p.describe().starts_with("route53 hosted zone"),
        "{}",
        p.describe()
    );
    assert!(p.authoritative().is_empty());
    // None: only a CREATE, since there is nothing to replace.
    p.update(None, ip("198.18.0.21")).await.unwrap();
    dns::confirm(p.as_ref(), ip("198.18.0.21"), Duration::from_secs(5))
        .await
        .unwrap();
}

/// A `moto_server` that checks credentials from its first request on: it knows no
/// access key, so every request is refused with `InvalidClientTokenId`.
fn start_checking_moto(dir: &Path) -> (Proc, String) {
    let program = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("moto_server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("pip install 'moto[server]' (or run scripts/install-deps.sh)"));
    for _ in 0..3 {
        let port = free_port();
        let log = dir.join("moto_server_auth.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "0")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut proc = Proc {
            name: "moto_server".into(),
            child,
            log,
        };
        let up = wait_for(Duration::from_secs(30), || {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                Some(true)
            } else if !proc.is_running() {
                Some(false)
            } else {
                None
            }
        });
        if up == Some(true) {
            return (proc, format!("http://127.0.0.1:{port}"));
        }
    }
    panic!("moto_server (with INITIAL_NO_AUTH_ACTION_COUNT=0) did not start");
}

#[tokio::test]
async fn route53_refused_credentials_are_a_permanent_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, endpoint) = start_checking_moto(dir.path());
    let p = provider(
        &endpoint,
        "Z0000000000000",
        AwsCredentials::new("AKIDUNKNOWN", "wrong-secret", None),
    );
    let err = p
        .update(Some(ip("198.18.0.11")), ip("198.18.0.12"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, DnsError::Refused { .. }),
        "{text}\nmoto log:\n{}",
        moto.log_text()
    );
    assert!(err.is_permanent());
    assert!(text.contains("403 InvalidClientTokenId"), "{text}");
    assert!(text.contains("the access key id is unknown"), "{text}");
    assert!(!text.contains("wrong-secret"), "{text}");
}
