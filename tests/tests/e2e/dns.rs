//! The RFC 2136 provider against a real BIND 9: updates signed with TSIG, the
//! prerequisite on the old address, idempotence, and confirmation by querying.

use std::net::IpAddr;
use std::time::Duration;

use drmesh_coordinator::dns::{self, DnsError, DnsProvider, Rfc2136, TsigKey};
use drmesh_tests::bind::Bind;

const ZONE: &str = "drmesh.test";
const RECORD: &str = "db.drmesh.test";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn start(initial: &str) -> Bind {
    Bind::start(ip("127.0.0.1"), ZONE, RECORD, ip(initial))
}

/// The provider as the coordinator would build it, with the key read from `secret_file`.
fn provider(bind: &Bind, secret_file: &std::path::Path) -> Rfc2136 {
    let key = TsigKey::load(secret_file, bind.key_name(), None).unwrap();
    Rfc2136::new(bind.addr(), ZONE, RECORD, 60, key, vec![]).unwrap()
}

#[tokio::test]
async fn dns_update_with_the_right_key_is_confirmed_at_every_authoritative_server() {
    let bind = start("198.18.0.11");
    let p = provider(&bind, &bind.secret_file());
    assert_eq!(p.describe(), format!("rfc2136 at {}", bind.addr()));
    assert_eq!(p.record(), "db.drmesh.test.");

    p.update(Some(ip("198.18.0.11")), ip("198.18.0.12"))
        .await
        .unwrap_or_else(|e| panic!("{e}\nnamed log:\n{}", bind.log()));
    let lines = dns::confirm(&p, ip("198.18.0.12"), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(lines, vec![format!("{} answers 198.18.0.12", bind.addr())]);
    assert_eq!(bind.answer_with_ttl(), vec![(60, ip("198.18.0.12"))]);
    assert_eq!(
        dns::query(bind.addr(), RECORD, Duration::from_secs(2))
            .await
            .unwrap(),
        vec![ip("198.18.0.12")]
    );

    // Confirming an address the server does not answer fails, naming the server and
    // what it answers.
    let err = dns::confirm(&p, ip("198.18.0.13"), Duration::from_millis(500))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DnsError::NotConfirmed { .. }), "{text}");
    assert!(
        text.contains(&format!(
            "{} answers 198.18.0.12 instead of 198.18.0.13",
            bind.addr()
        )),
        "{text}"
    );

    // A move to IPv6 replaces the A record with an AAAA record.
    p.update(Some(ip("198.18.0.12")), ip("2001:db8::12"))
        .await
        .unwrap();
    assert_eq!(bind.answer(), vec![ip("2001:db8::12")]);
}

#[tokio::test]
async fn dns_update_with_a_wrong_tsig_key_is_refused_and_changes_nothing() {
    let bind = start("198.18.0.11");
    let p = provider(&bind, &bind.wrong_secret_file());
    let err = p
        .update(Some(ip("198.18.0.11")), ip("198.18.0.12"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DnsError::Refused { .. }), "{text}");
    assert!(err.is_permanent());
    assert!(
        text.contains("refused the update of db.drmesh.test."),
        "{text}"
    );
    assert!(text.contains("NOTAUTH"), "{text}");
    assert!(
        text.contains("NOTAUTH (TSIG key drmesh-key rejected, BADSIG"),
        "{text}"
    );
    assert_eq!(bind.answer(), vec![ip("198.18.0.11")]);
    // Nothing half-done is reported as success: confirmation of the new address fails.
    assert!(
        dns::confirm(&p, ip("198.18.0.12"), Duration::from_millis(500))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn dns_update_with_a_key_the_server_does_not_know_is_refused() {
    let bind = start("198.18.0.11");
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.key");
    let text = std::fs::read_to_string(bind.secret_file())
        .unwrap()
        .replace("drmesh-key", "other-key");
    std::fs::write(&other, text).unwrap();
    let key = TsigKey::load(&other, "other-key", None).unwrap();
    let p = Rfc2136::new(bind.addr(), ZONE, RECORD, 60, key, vec![]).unwrap();
    let err = p
        .update(Some(ip("198.18.0.11")), ip("198.18.0.12"))
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("BADKEY"), "{err}");
    assert_eq!(bind.answer(), vec![ip("198.18.0.11")]);
}

#[tokio::test]
async fn dns_confirm_names_the_authoritative_server_that_lags() {
    let primary = start("198.18.0.11");
    // A second authoritative server that never got the change (a broken transfer).
    let lagging = start("198.18.0.11");
    let key = TsigKey::load(&primary.secret_file(), primary.key_name(), None).unwrap();
    let p = Rfc2136::new(
        primary.addr(),
        ZONE,
        RECORD,
        60,
        key,
        vec![primary.addr(), lagging.addr()],
    )
    .unwrap();
    p.update(Some(ip("198.18.0.11")), ip("198.18.0.12"))
        .await
        .unwrap();
    let err = dns::confirm(&p, ip("198.18.0.12"), Duration::from_secs(1))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "{} answers 198.18.0.11 instead of 198.18.0.12",
            lagging.addr()
        )),
        "{text}"
    );
    assert!(!text.contains(&primary.addr().to_string()), "{text}");
}

#[tokio::test]
async fn dns_update_with_a_stale_prerequisite_is_refused_and_changes_nothing() {
    let bind = start("198.18.0.11");
    let p = provider(&bind, &bind.secret_file());

    // Another coordinator already moved the record away from .10.
    let err = p
        .update(Some(ip("198.18.0.10")), ip("198.18.0.12"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DnsError::Stale { .. }), "{text}");
    assert!(
        text.contains("the record db.drmesh.test. no longer holds 198.18.0.10 (it holds 198.18.0.11) (prerequisite failed, NXRRSET)"),
        "{text}"
    );
    assert!(text.contains("not overwriting"), "{text}");
    assert_eq!(bind.answer(), vec![ip("198.18.0.11")]);

    // "No address expected" while there is one fails the same way.
    let err = p.update(None, ip("198.18.0.12")).await.unwrap_err();
    assert!(matches!(err, DnsError::Stale { .. }), "{err}");
    assert!(err.to_string().contains("YXRRSET"), "{err}");
    assert_eq!(bind.answer(), vec![ip("198.18.0.11")]);
}

#[tokio::test]
async fn dns_update_to_the_address_already_held_is_ok() {
    let bind = start("198.18.0.11");
    let p = provider(&bind, &bind.secret_file());
    p.update(Some(ip("198.18.0.11")), ip("198.18.0.12"))
        .await
        .unwrap();
    // The same change again (a retried failover step): the prerequisite fails, but the
    // record already holds the new address, so it is success without a change.
    p.update(Some(ip("198.18.0.11")), ip("198.18.0.12"))
        .await
        .unwrap();
    // And an update whose prerequisite is the new address itself.
    p.update(Some(ip("198.18.0.12")), ip("198.18.0.12"))
        .await
        .unwrap();
    assert_eq!(bind.answer_with_ttl(), vec![(60, ip("198.18.0.12"))]);
}

#[tokio::test]
async fn dns_provider_from_config_uses_the_bind_key_file() {
    use drmesh_coordinator::config::CoordinatorConfigFile;
    use drmesh_coordinator::store::{RedbStore, Store};
    use std::sync::Arc;

    let bind = start("198.18.0.11");
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[tls]\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n[dns]\nprovider = \"rfc2136\"\nrecord = \"{RECORD}\"\nzone = \"{ZONE}\"\nserver = \"{}\"\ntsig_key_name = \"{}\"\ntsig_secret_file = \"{}\"\n",
        bind.addr(),
        bind.key_name(),
        bind.secret_file().display()
    );
    let cfg = CoordinatorConfigFile::parse(&text, std::path::Path::new("c.toml"))
        .unwrap()
        .validate(dir.path())
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    let p = dns::from_config(cfg.dns.as_ref().unwrap(), store)
        .await
        .unwrap();
    assert_eq!(p.ttl(), 60);
    assert_eq!(p.authoritative(), vec![bind.addr()]);
    p.update(Some(ip("198.18.0.11")), ip("198.18.0.14"))
        .await
        .unwrap();
    dns::confirm(p.as_ref(), ip("198.18.0.14"), Duration::from_secs(10))
        .await
        .unwrap();
}
