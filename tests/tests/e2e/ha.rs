//! Several coordinators on a real etcd cluster (issue 19): the store's transactions, the
//! election, a leader's crash, a leader cut off from etcd, and a migration there and
//! back.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use drmesh_coordinator::store::settings::{StoreConfig, StoreSection};
use drmesh_coordinator::store::{open_for_tools, Namespace, StoreError, StoreExt};
use drmesh_protocol::api::Standing;
use drmesh_tests::etcd::Etcd;
use drmesh_tests::ha::Ha;
use drmesh_tests::{http, wait_for, Mesh};

const TTL_S: u64 = 3;

fn etcd_config(etcd: &Etcd) -> StoreConfig {
    StoreSection {
        backend: Some("etcd".into()),
        name: Some("test".into()),
        endpoints: Some(etcd.endpoints()),
        ..StoreSection::default()
    }
    .validate(None, std::path::Path::new("/"))
    .expect("valid [store]")
}

#[derive(Debug, PartialEq)]
enum Claim {
    Won,
    Taken(String),
    Store(String),
}

impl From<StoreError> for Claim {
    fn from(e: StoreError) -> Self {
        Claim::Store(e.to_string())
    }
}

#[test]
fn two_coordinators_stores_racing_on_etcd_admit_exactly_one_claim_and_scan_every_page() {
    let etcd = Etcd::start(1);
    let config = etcd_config(&etcd);
    let stores: Vec<_> = (0..2)
        .map(|_| open_for_tools(&config).expect("connect"))
        .collect();
    // 16 threads over two independent clients: exactly one claim wins, and every loser
    // names the winner.
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let store = stores[i % 2].clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                store.atomically(|tx| {
                    if let Some(h) = tx.get_json::<String>(Namespace::Meta, "slot")? {
                        return Err(Claim::Taken(h));
                    }
                    tx.put_json(Namespace::Meta, "slot", &format!("t{i}"))?;
                    Ok(Claim::Won)
                })
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let won = results
        .iter()
        .filter(|r| matches!(r, Ok(Claim::Won)))
        .count();
    assert_eq!(won, 1, "{results:?}");
    let holder: String = stores[0]
        .get_json(Namespace::Meta, "slot")
        .unwrap()
        .unwrap();
    for r in &results {
        match r {
            Ok(Claim::Won) => {}
            Err(Claim::Taken(h)) => assert_eq!(*h, holder),
            other => panic!("{other:?}"),
        }
    }
    // A refused body keeps nothing; reads inside see the body's own writes.
    let r: Result<(), Claim> = stores[1].atomically(|tx| {
        tx.put(Namespace::Meta, "half", b"x")?;
        assert_eq!(tx.get(Namespace::Meta, "half")?, Some(b"x".to_vec()));
        Err(Claim::Taken("no".into()))
    });
    assert!(r.is_err());
    assert_eq!(stores[0].get(Namespace::Meta, "half").unwrap(), None);
    // Scans cross pages (256 records per request) in key order, and see deletes.
    for i in 0..600 {
        stores[i % 2]
            .put(Namespace::Audit, &format!("a{i:05}"), b"{}")
            .unwrap();
    }
    let keys: Vec<String> = stores[1]
        .scan(Namespace::Audit, "a")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys.len(), 600);
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    assert!(stores[0].delete(Namespace::Audit, "a00007").unwrap());
    assert!(!stores[1].delete(Namespace::Audit, "a00007").unwrap());
    assert_eq!(stores[1].scan(Namespace::Audit, "a0000").unwrap().len(), 9);
}

#[test]
fn the_leader_killed_a_follower_leads_within_the_lease_and_takes_writes() {
    let (_etcd, mut ha, leader) = three_coordinators("");
    // Every coordinator agrees on the leader and the term, and lists all three.
    let statuses: Vec<_> = (0..3)
        .map(|i| ha.status(i).unwrap().coordinators.unwrap())
        .collect();
    let term = statuses[leader].term;
    assert!(term.is_some());
    for (i, s) in statuses.iter().enumerate() {
        assert_eq!(
            s.leader.as_deref(),
            Some(ha.coords[leader].name.as_str()),
            "{s:?}"
        );
        assert_eq!(s.term, term, "{s:?}");
        let want = if i == leader {
            Standing::Leader
        } else {
            Standing::Follower
        };
        assert_eq!(s.standing, want);
    }
    let members = wait_for(Duration::from_secs(5), || {
        let s = ha.status(leader)?.coordinators?;
        (s.members.len() == 3).then_some(s.members)
    });
    assert!(members.is_some(), "{:?}", ha.status(leader));

    ha.kill(leader);
    let t0 = Instant::now();
    let (next, took) = ha
        .wait_leader(Duration::from_secs(TTL_S + 10), &[leader])
        .expect("a new leader");
    let took = took.max(t0.elapsed().min(took));
    assert!(
        took <= Duration::from_secs(TTL_S + 2),
        "a new leader after {took:?} (lease {TTL_S}s)"
    );
    let new_term = ha.status(next).unwrap().coordinators.unwrap().term;
    assert!(new_term > term, "{new_term:?} after {term:?}");
    // Writes succeed on the new leader: a token, then a plan.
    let created = http(
        "POST",
        &ha.url(next, "/v1/tokens"),
        Some(&ha.admin_token),
        Some(r#"{"role": "viewer", "name": "after-the-crash"}"#),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    eprintln!("leader {leader} killed; {next} leads after {took:?}");
}

#[test]
fn an_agent_is_sent_to_the_leader_and_follows_it_to_the_next_one() {
    let (_etcd, mut ha, leader) = three_coordinators("");
    let follower = (leader + 1) % 3;
    // The agent tries a follower first: it is sent on to the leader.
    let order = [follower, (leader + 2) % 3, leader];
    let mut agent = ha.agent("db-1", "eu-west-1", &order);
    let up = wait_for(Duration::from_secs(10), || {
        ha.agent_up(leader, "db-1").then_some(())
    });
    assert!(up.is_some(), "{}", agent.log_text());
    // A follower's status shows the leader's agents (forwarded), and says who answered.
    let via = ha.status(follower).expect("the follower's status");
    assert_eq!(via.coordinators.unwrap().standing, Standing::Follower);
    assert!(ha.agent_up(follower, "db-1"));

    ha.kill(leader);
    // While the dead leader's key lasts, the follower cannot forward its status: it
    // answers with its own view, which lists the agents the store remembers (the
    // follower started before the agent was first seen), none connected, and says why.
    let own = ha.status(follower).expect("the follower's own status");
    let coordinators = own.coordinators.clone().unwrap();
    let db1 = own
        .regions
        .iter()
        .flat_map(|r| &r.agents)
        .find(|a| a.agent_id.as_str() == "db-1");
    let db1 = db1.unwrap_or_else(|| panic!("db-1 not in the follower's own view: {own:?}"));
    if coordinators.standing == Standing::Follower {
        assert!(coordinators.error.is_some(), "{coordinators:?}");
        assert!(!db1.connected, "{db1:?}");
        // A write it cannot deliver did nothing: `not_leader`, so a client asks another.
        let write = http(
            "POST",
            &ha.url(follower, "/v1/tokens"),
            Some(&ha.admin_token),
            Some(r#"{"role": "viewer", "name": "during-the-election"}"#),
        );
        if write.status != 201 {
            assert_eq!(write.status, 503, "{}", write.text);
            assert!(write.text.contains("not_leader"), "{}", write.text);
        }
    }
    let (next, _) = ha
        .wait_leader(Duration::from_secs(TTL_S + 10), &[leader])
        .expect("a new leader");
    let t0 = Instant::now();
    let up = wait_for(Duration::from_secs(10), || {
        ha.agent_up(next, "db-1").then(|| t0.elapsed())
    });
    let took = up.unwrap_or_else(|| panic!("agent never reached c{next}:\n{}", agent.log_text()));
    assert!(
        took <= Duration::from_secs(2),
        "the agent reached the new leader {took:?} after it led"
    );
    assert!(agent.is_running());
    eprintln!("agent reconnected to the new leader {took:?} after it led");
}

const PLANS: &str = "/v1/backup-recovery/disaster-recovery/plans";

fn plan(id: &str) -> String {
    format!(
        r#"{{"id": "{id}", "name": "{id}", "rpo": "1h", "rto": "4h",
            "failoverRegions": ["us-east-1", "eu-west-1"], "automaticFailover": false,
            "notificationChannels": []}}"#
    )
}

/// Three coordinators on one three-member etcd cluster (each given every member), with
/// `extra` configuration; the leader once one leads.
fn three_coordinators(extra: &str) -> (Etcd, Ha, usize) {
    let etcd = Etcd::start(3);
    let eps = etcd.endpoints();
    let ha = Ha::start_with(&[eps.clone(), eps.clone(), eps], 200, TTL_S, extra);
    let (leader, _) = ha
        .wait_leader(Duration::from_secs(10), &[])
        .expect("a leader");
    (etcd, ha, leader)
}

/// Creates plan `id` through coordinator `i`.
fn create_plan(ha: &Ha, i: usize, id: &str) {
    let created = http(
        "POST",
        &ha.url(i, PLANS),
        Some(&ha.admin_token),
        Some(&plan(id)),
    );
    assert_eq!(created.status, 201, "{}", created.text);
}

/// `drmesh` with `DRMESH_URL` = `urls` joined by commas.
fn cli(urls: &[String], token: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(drmesh_tests::bin("drmesh"))
        .args(args)
        .env("DRMESH_URL", urls.join(","))
        .env("DRMESH_TOKEN", token)
        .output()
        .expect("run drmesh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn any_coordinator_takes_writes_for_the_leader_and_the_cli_follows_the_leader() {
    let (_etcd, mut ha, leader) = three_coordinators("");
    let (f1, f2) = ((leader + 1) % 3, (leader + 2) % 3);
    // A write to a follower is forwarded: the leader's answer, naming the leader.
    let resp = ureq::post(&ha.url(f1, PLANS))
        .set("Authorization", &format!("Bearer {}", ha.admin_token))
        .set("Content-Type", "application/json")
        .send_string(&plan("via-follower"))
        .expect("create a plan through a follower");
    assert_eq!(resp.status(), 201);
    assert_eq!(
        resp.header("Drmesh-Leader"),
        Some(ha.coords[leader].name.as_str())
    );
    // The other follower reads it from the store.
    let got = http(
        "GET",
        &ha.url(f2, &format!("{PLANS}/via-follower")),
        Some(&ha.admin_token),
        None,
    );
    assert_eq!(got.status, 200, "{}", got.text);
    // The token is checked by the leader: a bad one is refused through a follower too.
    let refused = http("POST", &ha.url(f1, PLANS), Some("nope"), Some(&plan("x")));
    assert_eq!(refused.status, 401, "{}", refused.text);
    // A bad body is the leader's 400, unchanged, and changes nothing.
    let bad = http("POST", &ha.url(f2, PLANS), Some(&ha.admin_token), Some("{"));
    assert_eq!(bad.status, 400, "{}", bad.text);
    // The audit holds each request once, recorded by the leader.
    let audit = http("GET", &ha.url(f2, "/v1/audit"), Some(&ha.admin_token), None);
    let records = audit.body["records"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let statuses: Vec<_> = records
        .iter()
        .filter(|r| r["path"] == PLANS)
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{}",
        audit.text
    );
    // The 401 is counted, not written; the 201 and the 400 are recorded.
    assert_eq!(statuses.len(), 2, "{}", audit.text);

    // The CLI with a dead URL first, then the coordinators.
    let mut urls = vec!["http://127.0.0.1:1".to_string()];
    urls.extend((0..3).map(|i| ha.url(i, "")));
    let (ok, out) = cli(
        &urls,
        &ha.admin_token,
        &["plans", "pause", "via-follower", "--reason", "ha test"],
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &urls,
        &ha.admin_token,
        &["plans", "show", "via-follower", "--output", "json"],
    );
    assert!(ok && out.contains("MAINTENANCE"), "{out}");

    // The leader killed: the CLI gets through once another leads, through any URL.
    ha.kill(leader);
    let t0 = Instant::now();
    let resumed = wait_for(Duration::from_secs(TTL_S + 10), || {
        let (ok, out) = cli(&urls, &ha.admin_token, &["plans", "resume", "via-follower"]);
        ok.then_some(out)
    });
    assert!(
        resumed.is_some(),
        "{:?}",
        cli(&urls, &ha.admin_token, &["plans", "resume", "via-follower"])
    );
    eprintln!(
        "the CLI wrote through the new leader {:?} after the kill",
        t0.elapsed()
    );
    let (ok, out) = cli(
        &urls,
        &ha.admin_token,
        &["plans", "show", "via-follower", "--output", "json"],
    );
    assert!(ok && out.contains("ACTIVE"), "{out}");
}

#[test]
fn failover_requests_sent_at_once_to_two_coordinators_admit_exactly_one() {
    let (_etcd, ha, leader) = three_coordinators("");
    create_plan(&ha, leader, "race");
    // Ten requests, five to the leader and five to a follower (which forwards them),
    // all released at once.
    let targets = [leader, (leader + 1) % 3];
    let barrier = Arc::new(Barrier::new(10));
    let threads: Vec<_> = (0..10)
        .map(|k| {
            let url = ha.url(
                targets[k % 2],
                "/v1/backup-recovery/disaster-recovery/failover",
            );
            let token = ha.admin_token.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                http(
                    "POST",
                    &url,
                    Some(&token),
                    Some(r#"{"planId": "race", "targetRegion": "us-east-1"}"#),
                )
            })
        })
        .collect();
    let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let accepted: Vec<_> = answers.iter().filter(|a| a.status == 202).collect();
    assert_eq!(
        accepted.len(),
        1,
        "{:?}",
        answers.iter().map(|a| &a.text).collect::<Vec<_>>()
    );
    let id = accepted[0].body["failoverId"]
        .as_str()
        .expect("failoverId")
        .to_string();
    for a in answers.iter().filter(|a| a.status != 202) {
        assert_eq!(a.status, 409, "{}", a.text);
        assert!(
            a.text.contains(&id),
            "the 409 names the admitted failover: {}",
            a.text
        );
    }
}

#[test]
fn etcd_losing_its_quorum_stops_every_decision_says_why_and_decisions_resume_with_it() {
    let (hook, heard) = drmesh_tests::hook::receiver(200, 50);
    let extra = format!("[notify.ops]\ntype = \"webhook\"\nurl = \"{hook}\"\n");
    let (mut etcd, ha, leader) = three_coordinators(&extra);
    create_plan(&ha, leader, "q");
    for i in 0..3 {
        assert!(ha.status(i).is_some());
    }

    // Two of three members gone: no quorum.
    etcd.kill(1);
    etcd.kill(2);
    let t0 = Instant::now();
    let all_cut = wait_for(Duration::from_secs(TTL_S + 15), || {
        (0..3)
            .all(|i| ha.standing(i) == Some(Standing::Cut))
            .then(|| t0.elapsed())
    });
    assert!(
        all_cut.is_some(),
        "{:?}",
        (0..3).map(|i| ha.standing(i)).collect::<Vec<_>>()
    );
    eprintln!(
        "every coordinator cut off {:?} after the quorum was lost",
        all_cut.unwrap()
    );
    // No decision: a failover is refused, through any coordinator.
    for i in 0..3 {
        let refused = http(
            "POST",
            &ha.url(i, "/v1/backup-recovery/disaster-recovery/failover"),
            Some(&ha.admin_token),
            Some(r#"{"planId": "q", "targetRegion": "us-east-1"}"#),
        );
        assert_eq!(refused.status, 503, "{}", refused.text);
    }
    // The status says why, and every channel is told, by each coordinator.
    let c = ha
        .status(leader)
        .and_then(|s| s.coordinators)
        .expect("status");
    assert_eq!(c.standing, Standing::Cut);
    assert!(c.error.is_some(), "{c:?}");
    let mut told = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(TTL_S + 15);
    while told.len() < 3 && Instant::now() < deadline {
        if let Ok(r) = heard.recv_timeout(Duration::from_millis(500)) {
            let event: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            if event["kind"] == "store.unreachable" {
                assert_eq!(event["severity"], "CRITICAL", "{event}");
                told.insert(event["title"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    assert_eq!(told.len(), 3, "{told:?}");

    // The quorum back: a leader again, and writes and decisions resume.
    etcd.start_member(1);
    etcd.start_member(2);
    let t1 = Instant::now();
    let (next, _) = ha
        .wait_leader(Duration::from_secs(TTL_S + 30), &[])
        .expect("a leader once the quorum is back");
    eprintln!("a leader {:?} after the quorum came back", t1.elapsed());
    let written = wait_for(Duration::from_secs(10), || {
        let a = http(
            "POST",
            &ha.url(next, "/v1/tokens"),
            Some(&ha.admin_token),
            Some(r#"{"role": "viewer"}"#),
        );
        (a.status == 201).then_some(())
    });
    assert!(written.is_some());
    let restored = wait_for(Duration::from_secs(15), || {
        let r = heard.recv_timeout(Duration::from_millis(500)).ok()?;
        let event: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        (event["kind"] == "store.restored").then_some(event)
    });
    assert!(
        restored.is_some(),
        "the channels hear that decisions resume"
    );
    // The leader's own cut is kept in the alert history, resolved.
    let kept = wait_for(Duration::from_secs(10), || {
        let a = http(
            "GET",
            &ha.url(
                next,
                "/v1/backup-recovery/monitoring/alerts?status=RESOLVED",
            ),
            Some(&ha.admin_token),
            None,
        );
        a.text.contains("STORE_UNREACHABLE").then_some(a.text)
    });
    assert!(kept.is_some());
}

#[test]
fn a_leader_cut_off_from_etcd_stops_acting_and_its_writes_are_refused() {
    let mut etcd = Etcd::start(3);
    let eps = etcd.endpoints();
    // c0 reaches etcd only through member 0, which the test kills: the cluster keeps its
    // quorum (members 1 and 2, which c1 and c2 use), and c0 is cut off from it.
    let mut ha = Ha::start(&[vec![eps[0].clone()]], 200, TTL_S);
    let (first, _) = ha
        .wait_leader(Duration::from_secs(10), &[])
        .expect("leader");
    assert_eq!(first, 0);
    let in_office = wait_for(Duration::from_secs(10), || {
        ha.log(0).contains("in office").then_some(())
    });
    assert!(in_office.is_some(), "{}", ha.log(0));
    ha.add(&eps[1..]);
    ha.add(&eps[1..]);
    assert_eq!(ha.standing(1), Some(Standing::Follower));
    assert_eq!(ha.standing(2), Some(Standing::Follower));

    etcd.kill(0);
    let t0 = Instant::now();
    // c0 leaves office by itself: it can no longer prove its lease.
    let left = wait_for(Duration::from_secs(TTL_S + 5), || {
        ha.log(0).contains("leaving office").then(|| t0.elapsed())
    })
    .expect("the cut-off leader stops leading");
    assert!(left < Duration::from_secs(TTL_S), "left after {left:?}");
    let (next, _) = ha
        .wait_leader(Duration::from_secs(TTL_S + 10), &[0])
        .expect("another leader");
    let elected = t0.elapsed();
    assert!(
        elected > left,
        "elected at {elected:?}, old leader left at {left:?}"
    );
    // It answers at once, saying why it decides nothing: its status (a read by a token it
    // checked lately) says it is cut off; a read of records needs etcd and is refused.
    let t1 = Instant::now();
    let status = ha.status(0).expect("the cut-off coordinator's status");
    let c = status.coordinators.expect("coordinators");
    assert_eq!(c.standing, Standing::Cut, "{c:?}");
    assert!(c.error.is_some(), "{c:?}");
    let cut = http("GET", &ha.url(0, PLANS), Some(&ha.admin_token), None);
    assert_eq!(cut.status, 503, "{}", cut.text);
    assert!(cut.text.contains("cut off from etcd"), "{}", cut.text);
    assert!(t1.elapsed() < Duration::from_secs(1), "{:?}", t1.elapsed());
    // Its writes are refused; the new leader's are not.
    let refused = http(
        "POST",
        &ha.url(0, "/v1/tokens"),
        Some(&ha.admin_token),
        Some(r#"{"role": "viewer"}"#),
    );
    assert_eq!(refused.status, 503, "{}", refused.text);
    let ok = http(
        "POST",
        &ha.url(next, "/v1/tokens"),
        Some(&ha.admin_token),
        Some(r#"{"role": "viewer"}"#),
    );
    assert_eq!(ok.status, 201, "{}", ok.text);
    let log = ha.log(0);
    assert!(log.contains("leaving office"), "{log}");
    // Back in touch, it follows.
    etcd.start_member(0);
    let follows = wait_for(Duration::from_secs(20), || {
        (ha.standing(0) == Some(Standing::Follower)).then_some(())
    });
    assert!(follows.is_some(), "{:?}", ha.status(0));
    eprintln!("cut-off leader left office after {left:?}; c{next} elected after {elected:?}");
}

#[test]
fn a_redb_state_migrated_to_etcd_and_back_loses_nothing() {
    let mut mesh = Mesh::start_with(200, "regions = [\"us-east-1\", \"eu-west-1\"]");
    let plan = r#"{"id": "production_dr_plan", "name": "p", "rpo": "1h", "rto": "4h", "failoverRegions": ["us-east-1", "eu-west-1"], "automaticFailover": false}"#;
    let created = mesh.post("/v1/backup-recovery/disaster-recovery/plans", Some(plan));
    assert!(created.status < 300, "{}", created.text);
    for i in 0..5 {
        let t = http(
            "POST",
            &mesh.url("/v1/tokens"),
            Some(&mesh.admin_token),
            Some(&format!(r#"{{"role": "viewer", "name": "t{i}"}}"#)),
        );
        assert_eq!(t.status, 201, "{}", t.text);
    }
    mesh.coordinator.kill9();
    let redb = mesh.dir.path().join("state.redb");
    let etcd = Etcd::start(1);
    let to = format!("etcd:{}", etcd.endpoints().join(","));
    let there = migrate(&format!("redb:{}", redb.display()), &to);
    let back_path = mesh.dir.path().join("back.redb");
    let back = migrate(&to, &format!("redb:{}", back_path.display()));
    assert_eq!(there, back);
    assert!(there["tokens"].as_u64().unwrap() >= 6, "{there}");
    assert_eq!(there["plans"], 1);
    // Into a store that holds records: refused.
    let (ok, _, err) = run_cli(&[
        "store",
        "migrate",
        "--from",
        &format!("redb:{}", redb.display()),
        "--to",
        &to,
    ]);
    assert!(!ok && err.contains("empty store"), "{err}");
    // Every record is the same, byte for byte.
    let a = open_for_tools(&StoreConfig::Redb { path: redb }).unwrap();
    let b = open_for_tools(&StoreConfig::Redb { path: back_path }).unwrap();
    for ns in Namespace::ALL {
        assert_eq!(
            a.scan(ns, "").unwrap(),
            b.scan(ns, "").unwrap(),
            "{}",
            ns.name()
        );
    }
    drop((a, b));
    // A coordinator on the etcd store serves the plan to the old token.
    let ha_etcd = etcd.endpoints();
    let ha = Ha::start(&[ha_etcd], 200, TTL_S);
    ha.wait_leader(Duration::from_secs(10), &[])
        .expect("leader");
    let plans = http(
        "GET",
        &ha.url(0, "/v1/backup-recovery/disaster-recovery/plans"),
        Some(&mesh.admin_token),
        None,
    );
    assert_eq!(plans.status, 200, "{}", plans.text);
    assert!(plans.text.contains("production_dr_plan"), "{}", plans.text);
    // `config:PATH` names the store of a coordinator.toml (with its TLS and user): the
    // same etcd store, where c0 leads now: refused.
    let config = format!("config:{}", ha.coords[0].config.display());
    let (ok, _, err) = run_cli(&[
        "store",
        "migrate",
        "--from",
        &format!("redb:{}", mesh.dir.path().join("back.redb").display()),
        "--to",
        &config,
    ]);
    assert!(!ok && err.contains("c0 leads"), "{err}");
    let (ok, _, err) = run_cli(&[
        "store",
        "migrate",
        "--from",
        "config:/nonexistent.toml",
        "--to",
        &to,
    ]);
    assert!(!ok && err.contains("nonexistent"), "{err}");
}

fn run_cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(drmesh_tests::bin("drmesh"))
        .args(args)
        .output()
        .expect("run drmesh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn migrate(from: &str, to: &str) -> serde_json::Value {
    let (ok, out, err) = run_cli(&[
        "store", "migrate", "--from", from, "--to", to, "--output", "json",
    ]);
    assert!(ok, "migrate {from} -> {to}: {err}");
    serde_json::from_str::<serde_json::Value>(&out).expect("json")["records"].clone()
}
