//! The fault-test infrastructure itself: regions as network namespaces (reachability,
//! partitions, clean-up), PostgreSQL clusters inside them replicating over the mesh
//! links, and the split-brain observers (Writer, Probe) on a hand-made failover.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drmesh_pg::local::{free_port, prepare_parent_dir, LocalCluster, PgBin};
use drmesh_tests::netns::{root_ip_forward, Topology};
use drmesh_tests::splitbrain::{missing_writes, Probe, Writer, SETUP_SQL};
use drmesh_tests::{processes_mentioning, wait_for};

/// How long a connection attempt that must fail is given.
const SHORT: Duration = Duration::from_millis(500);
/// How long a connection attempt that must succeed is given.
const LONG: Duration = Duration::from_secs(3);

/// Stops every cluster on drop, whatever the test did (before the topology goes).
struct Clusters(Vec<LocalCluster>);

impl Drop for Clusters {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = c.stop_immediate();
        }
    }
}

fn pg_bin() -> PgBin {
    PgBin::find().unwrap_or_else(|e| {
        panic!("{e}: install PostgreSQL (apt-get install -y postgresql), or set DRMESH_PG_BIN")
    })
}

/// A temporary directory the postgres OS user can reach, with `pg/` prepared.
fn pg_root() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root = tmp.path().join("pg");
    prepare_parent_dir(&root).expect("prepare pg dir");
    (tmp, root)
}

fn primary_in(topo: &Topology, region: &str, bin: &PgBin, root: &Path) -> LocalCluster {
    let c = LocalCluster::init_primary_on(
        bin,
        region,
        &root.join(region),
        free_port().expect("port"),
        &topo.pg_network(region),
    )
    .expect("initdb");
    c.start().expect("start primary in its namespace");
    c
}

fn addr(c: &LocalCluster) -> SocketAddr {
    SocketAddr::new(c.host(), c.port)
}

/// A listener on all of `region`'s addresses (or the root namespace's, for `None`).
fn listener(topo: &Topology, region: Option<&str>) -> TcpListener {
    let bind = || TcpListener::bind("0.0.0.0:0").expect("bind listener");
    match region {
        Some(r) => topo.in_ns(r, bind),
        None => bind(),
    }
}

#[test]
fn netns_topology_links_and_partitions() {
    let started = Instant::now();
    let topo = Topology::new(&["a", "b", "c"]);
    assert_eq!(root_ip_forward(), "0", "the root namespace must not route");
    let regions = ["a", "b", "c"];
    let listeners: Vec<(&str, TcpListener)> = regions
        .iter()
        .map(|r| (*r, listener(&topo, Some(r))))
        .collect();
    let port = |r: &str| {
        listeners
            .iter()
            .find(|(n, _)| *n == r)
            .map(|(_, l)| l.local_addr().expect("addr").port())
            .expect("listener")
    };
    let host = listener(&topo, None);
    let host_port = host.local_addr().expect("addr").port();
    let control = |r: &str| SocketAddr::new(topo.control_ip(r), port(r));
    let mesh = |r: &str| SocketAddr::new(topo.mesh_ip(r), port(r));
    let host_control = SocketAddr::new(topo.host_control_ip(), host_port);
    let reach = |from: Option<&str>, to: SocketAddr| topo.can_connect(from, to, LONG);
    let blocked = |from: Option<&str>, to: SocketAddr| !topo.can_connect(from, to, SHORT);

    // `command` runs in the namespace: `ip addr` there shows the region's addresses.
    let out = topo
        .command("b", "ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .expect("ip netns exec");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&topo.control_ip("b").to_string()), "{text}");
    assert!(text.contains(&topo.mesh_ip("b").to_string()), "{text}");
    assert!(!text.contains(&topo.mesh_ip("a").to_string()), "{text}");
    let routes = topo
        .command("b", "ip")
        .args(["-4", "route", "show"])
        .output()
        .expect("ip route");
    assert!(
        !String::from_utf8_lossy(&routes.stdout).contains("default"),
        "no default route in a region"
    );

    let everything_reachable = |what: &str| {
        for from in regions {
            assert!(reach(Some(from), host_control), "{what}: {from} -> host");
            for to in regions {
                assert!(
                    reach(Some(from), control(to)),
                    "{what}: {from} -> {to} control"
                );
                assert!(reach(Some(from), mesh(to)), "{what}: {from} -> {to} mesh");
            }
            assert!(reach(None, control(from)), "{what}: host -> {from} control");
        }
    };
    everything_reachable("at start");

    topo.cut_control("a");
    assert_eq!(topo.links_up("a"), (false, true));
    assert!(
        blocked(None, control("a")),
        "host -> a control after cut_control"
    );
    assert!(
        blocked(Some("a"), host_control),
        "a -> host after cut_control"
    );
    assert!(
        blocked(Some("b"), control("a")),
        "b -> a control after cut_control"
    );
    assert!(reach(Some("b"), mesh("a")), "b -> a mesh after cut_control");
    assert!(reach(Some("a"), mesh("c")), "a -> c mesh after cut_control");
    assert!(
        reach(None, control("b")),
        "host -> b control after cut_control(a)"
    );
    topo.heal("a");
    everything_reachable("after heal(a)");

    topo.cut("b");
    assert_eq!(topo.links_up("b"), (false, false));
    for other in ["a", "c"] {
        assert!(
            blocked(Some(other), control("b")),
            "{other} -> b control after cut"
        );
        assert!(
            blocked(Some(other), mesh("b")),
            "{other} -> b mesh after cut"
        );
        assert!(
            blocked(Some("b"), mesh(other)),
            "b -> {other} mesh after cut"
        );
    }
    assert!(blocked(None, control("b")), "host -> b after cut");
    assert!(blocked(Some("b"), host_control), "b -> host after cut");
    assert!(reach(Some("a"), mesh("c")), "a -> c while b is cut");
    topo.heal("b");
    everything_reachable("after heal(b)");
    assert_eq!(root_ip_forward(), "0");
    eprintln!("topology test took {:?}", started.elapsed());
}

#[test]
fn netns_postgres_sync_failover_loses_no_acknowledged_write() {
    let bin = pg_bin();
    let topo = Topology::new(&["a", "b"]);
    let (_tmp, root) = pg_root();
    let mut clusters = Clusters(Vec::new());

    let primary = primary_in(&topo, "a", &bin, &root);
    clusters.0.push(primary.clone());
    primary
        .psql(SETUP_SQL)
        .expect("create the observers' tables");
    let standby = LocalCluster::init_standby_from(
        &bin,
        "b",
        topo.mesh_ip("a"),
        primary.port,
        &root.join("b"),
        free_port().expect("port"),
        &topo.pg_network("b"),
    )
    .expect("pg_basebackup over the mesh");
    clusters.0.push(standby.clone());
    standby.start().expect("start standby in its namespace");
    // Streaming, from the standby's mesh address.
    let mesh_b = topo.mesh_ip("b").to_string();
    let streaming = wait_for(Duration::from_secs(30), || {
        let s = primary
            .psql("select host(client_addr) || ' ' || state from pg_stat_replication")
            .ok()?;
        (s == format!("{mesh_b} streaming")).then_some(())
    });
    assert!(
        streaming.is_some(),
        "the standby does not stream over the mesh: {:?}",
        primary.psql("select * from pg_stat_replication")
    );
    primary
        .set_synchronous_standby_names("*")
        .expect("synchronous standby");
    let sync = wait_for(Duration::from_secs(30), || {
        (primary
            .psql("select sync_state from pg_stat_replication")
            .ok()?
            == "sync")
            .then_some(())
    });
    assert!(sync.is_some(), "the standby did not become synchronous");

    let (pa, sa) = (addr(&primary), addr(&standby));
    let target = Arc::new(Mutex::new(Some(pa)));
    let t = target.clone();
    let writer = Writer::start(move || *t.lock().expect("target"), Duration::from_secs(60));
    let probe = Probe::start(vec![pa, sa], Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));

    // Crash the primary, promote the standby by hand, point the Writer at it.
    let pid = primary.postmaster_pid().expect("postmaster pid");
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the primary");
    std::thread::sleep(Duration::from_millis(500));
    standby.promote().expect("pg_ctl promote");
    let promoted_at = Instant::now();
    *target.lock().expect("target") = Some(sa);
    std::thread::sleep(Duration::from_secs(2));
    let writes = writer.stop();
    let probed = probe.stop();

    let overlaps = probed.overlaps();
    assert!(
        overlaps.is_empty(),
        "split brain: both accepted writes in {} rounds, first {:?}",
        overlaps.len(),
        overlaps.first()
    );
    assert!(
        probed.accepted_rounds(pa) > 5,
        "the probe saw the primary accept writes in only {} rounds",
        probed.accepted_rounds(pa)
    );
    assert!(
        probed.first_accepted(sa).is_some_and(|t| t >= killed_at),
        "the probe never saw the promoted standby accept writes (after the crash)"
    );
    assert!(probed.last_accepted(pa).is_some_and(|t| t <= promoted_at));
    let on_primary = writes.acknowledged_by(pa);
    let on_standby = writes.acknowledged_by(sa);
    assert!(
        on_primary.len() > 10 && !on_standby.is_empty(),
        "acknowledged: {} by the primary, {} by the new primary; errors {}: {:?}",
        on_primary.len(),
        on_standby.len(),
        writes.errors,
        writes.error_samples
    );
    let (first_new, server) = writes
        .first_ack_after(promoted_at)
        .expect("a write acknowledged after the promotion");
    assert_eq!(server, sa);
    eprintln!(
        "writes: {} acknowledged ({} old, {} new), {} errors; first new ack {:?} after promote",
        writes.acknowledged.len(),
        on_primary.len(),
        on_standby.len(),
        writes.errors,
        first_new - promoted_at
    );
    let missing = missing_writes(&writes, sa);
    assert!(
        missing.is_empty(),
        "acknowledged writes lost by the failover: {missing:?}"
    );
}

#[test]
fn netns_observers_detect_split_brain_and_loss() {
    let bin = pg_bin();
    let topo = Topology::new(&["a", "b"]);
    let (_tmp, root) = pg_root();
    let mut clusters = Clusters(Vec::new());
    let one = primary_in(&topo, "a", &bin, &root);
    clusters.0.push(one.clone());
    let two = primary_in(&topo, "b", &bin, &root);
    clusters.0.push(two.clone());
    for c in [&one, &two] {
        c.psql(SETUP_SQL).expect("create the observers' tables");
    }
    let (a1, a2) = (addr(&one), addr(&two));
    let writer = Writer::start(move || Some(a1), Duration::from_secs(30));
    let probe = Probe::start(vec![a1, a2], Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    let writes = writer.stop();
    let probed = probe.stop();
    assert!(
        !probed.overlaps().is_empty(),
        "two independent primaries, yet no overlap in {} rounds",
        probed.rounds.len()
    );
    assert!(
        !writes.acknowledged.is_empty(),
        "{:?}",
        writes.error_samples
    );
    assert!(missing_writes(&writes, a1).is_empty());
    let lost = missing_writes(&writes, a2);
    assert_eq!(
        lost,
        writes.acknowledged_by(a1),
        "every write to the first primary is missing on the second"
    );
}

#[test]
fn netns_drop_removes_namespaces_links_and_processes() {
    let bin = pg_bin();
    let (tmp, root) = pg_root();
    let topo = Topology::new(&["a", "b"]);
    let names: Vec<String> = ["a", "b"].iter().map(|r| topo.ns(r).to_string()).collect();
    let bridges = [topo.control_bridge(), topo.mesh_bridge()];
    let mut sleeper = topo.spawn(
        "a",
        "sleeper",
        Path::new("sleep"),
        &["300"],
        &tmp.path().join("sleeper.log"),
    );
    // Not stopped: the topology must kill it.
    let cluster = primary_in(&topo, "b", &bin, &root);
    let data_dir = cluster.data_dir.display().to_string();
    assert!(!processes_mentioning(&data_dir).is_empty());
    let in_b = std::process::Command::new("ip")
        .args(["netns", "pids", topo.ns("b")])
        .output()
        .expect("ip netns pids");
    let pids: Vec<u32> = String::from_utf8_lossy(&in_b.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(pids.len() >= 3, "postgres processes in b: {pids:?}");
    assert!(sleeper.is_running());

    drop(topo);

    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let list = String::from_utf8_lossy(&list.stdout);
    for n in &names {
        assert!(
            !list.lines().any(|l| l.split_whitespace().next() == Some(n)),
            "{n} left: {list}"
        );
    }
    for b in &bridges {
        assert!(!Path::new("/sys/class/net").join(b).exists(), "{b} left");
    }
    assert!(!sleeper.is_running(), "the sleeper survived");
    let gone = wait_for(Duration::from_secs(5), || {
        pids.iter()
            .all(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .map(|s| {
                        s.rsplit(')')
                            .next()
                            .unwrap_or("")
                            .trim_start()
                            .starts_with('Z')
                    })
                    .unwrap_or(true)
            })
            .then_some(())
    });
    assert!(gone.is_some(), "postgres processes of b survived: {pids:?}");
    assert!(processes_mentioning(&data_dir).is_empty());
}
