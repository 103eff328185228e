//! Two regions on real PostgreSQL clusters for the failover tests: a primary in
//! us-west-2, its streaming standby in us-east-1, an agent next to each, and the
//! runbook's plan failing over to us-east-1.

use std::net::{IpAddr, TcpListener};
use std::time::Duration;

use drmesh_pg::local::{free_port, prepare_parent_dir, LocalCluster, PgBin, PgNetwork};
use serde_json::Value;

use crate::{wait_for, Mesh, Proc};

/// Stops every cluster on drop, whatever the test did.
pub struct Clusters(pub Vec<LocalCluster>);

impl Drop for Clusters {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = c.stop_immediate();
        }
    }
}

pub const FAILOVER: &str = "/v1/backup-recovery/disaster-recovery/failover";
pub const STATUS: &str = "/v1/backup-recovery/disaster-recovery/status";

/// A primary in us-west-2 and its standby in us-east-1, an agent next to each (both
/// seen UP with their roles), and the runbook's plan failing over to us-east-1.
pub struct TwoRegions {
    pub mesh: Mesh,
    pub primary: LocalCluster,
    pub standby: LocalCluster,
    pub epoch_before: u64,
    pub agents: Vec<Proc>,
    // Last: the clusters stop after the agents.
    pub clusters: Clusters,
}

pub fn two_regions() -> TwoRegions {
    two_regions_with(false)
}

pub fn two_regions_with(automatic: bool) -> TwoRegions {
    two_regions_opts(Options {
        automatic,
        ..Options::default()
    })
}

/// What [`two_regions_opts`] builds; the default is [`two_regions`]'s setup.
#[derive(Clone, Debug)]
pub struct Options {
    /// The plan's `automaticFailover`.
    pub automatic: bool,
    /// The plan's `rpo` (e.g. "1h", "1s").
    pub rpo: String,
    /// Heartbeat interval of the coordinator and the agents.
    pub heartbeat_ms: u64,
    /// Loopback addresses the primary and the standby listen on (both on one port, each
    /// in a directory of its own); `None`: both on 127.0.0.1, on two ports.
    pub addresses: Option<(IpAddr, IpAddr)>,
    /// More coordinator config after the `regions` key: top-level keys first, then tables
    /// such as `[dns]`.
    pub coordinator_extra: String,
    /// The primary's agent has a `[database]` section, so it can fence its server; without
    /// one it only watches it (`[postgres]`), and reports it cannot fence.
    pub primary_database: bool,
    /// Two coordinators on this etcd cluster (its endpoints) rather than one on redb:
    /// `c0` leads, `c1` follows ([`Mesh::start_etcd`], a 3 s leader lease).
    pub etcd: Option<Vec<String>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            automatic: false,
            rpo: "1h".into(),
            heartbeat_ms: 200,
            addresses: None,
            coordinator_extra: String::new(),
            primary_database: true,
            etcd: None,
        }
    }
}

/// A TCP port free on both `a` and `b` a moment ago.
pub fn port_free_on_both(a: IpAddr, b: IpAddr) -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind((a, 0)).expect("bind port 0");
        let port = first.local_addr().unwrap().port();
        if TcpListener::bind((b, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both {a} and {b}")
}

/// [`two_regions`] as `opts` says.
pub fn two_regions_opts(opts: Options) -> TwoRegions {
    let Options {
        automatic,
        rpo,
        heartbeat_ms,
        addresses,
        coordinator_extra,
        primary_database,
        etcd,
    } = opts;
    let pg = PgBin::find().unwrap_or_else(|e| {
        panic!("{e}: install PostgreSQL (apt-get install -y postgresql), or set DRMESH_PG_BIN")
    });
    let config =
        format!("regions = [\"us-west-2\", \"us-east-1\", \"eu-west-1\"]\n{coordinator_extra}");
    let mesh = match &etcd {
        None => Mesh::start_with(heartbeat_ms, &config),
        Some(endpoints) => Mesh::start_etcd(heartbeat_ms, &config, endpoints, 3, 2),
    };
    let root = mesh.dir.path().join("pg");
    std::fs::create_dir_all(&root).unwrap();
    prepare_parent_dir(&root).unwrap();
    // Each cluster in a directory of its own: a cluster's socket directory is named by
    // its port next to its data directory, and both may share a port.
    let (west_dir, east_dir) = match addresses {
        None => (root.clone(), root.clone()),
        Some(_) => (root.join("west"), root.join("east")),
    };
    prepare_parent_dir(&west_dir).unwrap();
    prepare_parent_dir(&east_dir).unwrap();
    let (primary_port, standby_port, primary_net, standby_net) = match addresses {
        None => (
            free_port().unwrap(),
            free_port().unwrap(),
            PgNetwork::default(),
            PgNetwork::default(),
        ),
        Some((p, s)) => {
            let port = port_free_on_both(p, s);
            let net = |ip: IpAddr| PgNetwork {
                listen_addresses: vec![ip],
                host: Some(ip),
                // Loopback clients may come from any 127/8 address.
                trust: vec!["127.0.0.0/8".into()],
                command_prefix: Vec::new(),
            };
            (port, port, net(p), net(s))
        }
    };
    let primary = LocalCluster::init_primary_on(
        &pg,
        "primary",
        &west_dir.join("primary"),
        primary_port,
        &primary_net,
    )
    .expect("initdb");
    let mut clusters = Clusters(vec![primary.clone()]);
    primary.start().expect("start primary");
    primary.wait_ready(Duration::from_secs(30)).expect("ready");
    primary
        .psql("create table orders (id int primary key); insert into orders values (1)")
        .expect("write");
    let standby = LocalCluster::init_standby_from(
        &pg,
        "standby",
        primary.host(),
        primary.port,
        &east_dir.join("standby"),
        standby_port,
        &standby_net,
    )
    .expect("pg_basebackup");
    clusters.0.push(standby.clone());
    standby.start().expect("start standby");
    let replayed = wait_for(Duration::from_secs(30), || {
        (standby.psql("select count(*) from orders").ok()?.trim() == "1").then_some(())
    });
    assert!(
        replayed.is_some(),
        "the standby did not replay the primary's writes"
    );

    let sections = |c: &LocalCluster| {
        format!(
            "[postgres]\nconninfo = \"{}\"\n[database]\ndata_dir = \"{}\"\nrepository = \"{}\"\n",
            c.conninfo(),
            c.data_dir.display(),
            root.join("repo").display()
        )
    };
    let files = mesh.issue_agent("db-west", "us-west-2");
    let west_sections = if primary_database {
        sections(&primary)
    } else {
        format!("[postgres]\nconninfo = \"{}\"\n", primary.conninfo())
    };
    let west = mesh.spawn_agent(&mesh.agent_config("db-west", "us-west-2", &files, &west_sections));
    let files = mesh.issue_agent("db-east", "us-east-1");
    let east =
        mesh.spawn_agent(&mesh.agent_config("db-east", "us-east-1", &files, &sections(&standby)));
    let epoch_before = wait_for(Duration::from_secs(20), || {
        let s = mesh.status();
        let role = |id: &str| {
            s.regions
                .iter()
                .flat_map(|r| &r.agents)
                .find(|a| a.agent_id.as_str() == id)
                .and_then(|a| a.role)
                .map(|r| r.to_string())
        };
        (role("db-west").as_deref() == Some("primary")
            && role("db-east").as_deref() == Some("standby"))
        .then_some(s.epoch)
    })
    .expect("both agents up, reporting primary and standby")
    .0;

    let plan = mesh.post(
        "/v1/backup-recovery/disaster-recovery/plans",
        Some(
            format!(
                r#"{{"id": "production_dr_plan", "name": "Production", "rpo": "{rpo}", "rto": "4h",
                    "failoverRegions": ["us-east-1", "eu-west-1"], "healthCheckInterval": 1000,
                    "automaticFailover": {automatic}}}"#
            )
            .as_str(),
        ),
    );
    assert_eq!(plan.status, 201, "{}", plan.text);
    TwoRegions {
        mesh,
        primary,
        standby,
        epoch_before,
        agents: vec![west, east],
        clusters,
    }
}

/// Waits for the newest failover to end; the DR status then.
pub fn finished(mesh: &Mesh) -> Value {
    wait_for(Duration::from_secs(60), || {
        let s = mesh.get(STATUS).body;
        let status = s["failover"]["status"].as_str()?.to_string();
        matches!(status.as_str(), "COMPLETED" | "FAILED").then_some(s)
    })
    .unwrap_or_else(|| panic!("the failover did not finish: {}", mesh.get(STATUS).text))
}
