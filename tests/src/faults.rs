//! A DR mesh with its regions in network namespaces, for the fault tests and the
//! failover benchmark: in each region a PostgreSQL (the first region's the primary, the
//! others streaming standbys over the mesh network) and an agent; in the root namespace
//! the coordinator, a BIND 9 serving the database's name `db.drmesh.test.` (updated by
//! failover over RFC 2136 with TSIG), and the test's clients.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use drmesh_pg::local::{free_port, prepare_parent_dir, LocalCluster, PgBin};
use serde_json::Value;

use crate::bind::Bind;
use crate::netns::Topology;
use crate::regions::{Clusters, STATUS};
use crate::splitbrain::SETUP_SQL;
use crate::{bin, wait_for, Mesh, Proc};

pub const RECORD: &str = "db.drmesh.test.";
pub const ZONE: &str = "drmesh.test.";
pub const PLAN: &str = "production_dr_plan";

/// How to build a [`FaultMesh`].
#[derive(Clone, Debug)]
pub struct FaultOptions {
    /// Region names; the first holds the primary.
    pub regions: Vec<String>,
    pub heartbeat_ms: u64,
    /// The coordinator's `lease`.
    pub lease: String,
    /// The primary waits for one standby to confirm every commit.
    pub synchronous: bool,
    /// The plan fails over by itself.
    pub automatic: bool,
    /// The plan's fenced old primary rejoins by itself once its region is back.
    pub auto_rejoin: bool,
    /// The coordinator signs its DNS updates with a wrong TSIG secret (same key name):
    /// BIND refuses them until the key file is fixed and the coordinator restarted.
    pub wrong_tsig_key: bool,
    /// Every region configured alike, as the quickstart is: one encrypted database
    /// repository (`repo`, key `repo.key`) that every cluster archives into with the
    /// same `archive_command` (`drmesh repo wal-push`, `archive_timeout` 10 s), and a
    /// `staging` recovery environment on every agent. Otherwise each agent has a
    /// repository of its own and nothing is archived.
    pub archive: bool,
    /// Issue 19's layout: in each region's namespace an etcd member and a coordinator
    /// (all on one etcd cluster, a 3 s leader lease; the first region's leads at the
    /// start), rather than one coordinator in the root namespace. BIND listens on the
    /// root namespace's control address, where the coordinators reach it.
    pub coordinators_in_regions: bool,
}

impl Default for FaultOptions {
    fn default() -> Self {
        FaultOptions {
            regions: vec!["us-west-2".into(), "us-east-1".into()],
            heartbeat_ms: 500,
            lease: "5s".into(),
            synchronous: true,
            automatic: true,
            auto_rejoin: false,
            wrong_tsig_key: false,
            archive: false,
            coordinators_in_regions: false,
        }
    }
}

impl FaultOptions {
    /// Issue 19's layout with the defaults: three regions, each with an etcd member and a
    /// coordinator ([`FaultOptions::coordinators_in_regions`]).
    pub fn three_regions_on_etcd() -> Self {
        FaultOptions {
            regions: vec!["us-west-2".into(), "us-east-1".into(), "eu-west-1".into()],
            coordinators_in_regions: true,
            ..FaultOptions::default()
        }
    }
}

/// Everything of one fault mesh; dropping it stops it all (agents, then PostgreSQL,
/// then the namespaces, BIND and the coordinator).
pub struct FaultMesh {
    pub agents: Vec<Option<Proc>>,
    pub clusters: Clusters,
    pub topo: Topology,
    pub bind: Bind,
    pub mesh: Mesh,
    pub regions: Vec<String>,
    /// With [`FaultOptions::coordinators_in_regions`]: the etcd cluster, a member in
    /// each region.
    pub etcd: Option<crate::etcd::Etcd>,
    /// Every region's PostgreSQL listens on this port.
    pub port: u16,
    agent_configs: Vec<PathBuf>,
    _pg_dir: tempfile::TempDir,
}

impl FaultMesh {
    pub fn start(opts: FaultOptions) -> FaultMesh {
        let pg = PgBin::find().unwrap_or_else(|e| {
            panic!("{e}: install PostgreSQL (apt-get install -y postgresql), or set DRMESH_PG_BIN")
        });
        let names: Vec<&str> = opts.regions.iter().map(String::as_str).collect();
        let topo = Topology::new(&names);
        let primary_region = names[0];
        let bind = Bind::start(
            if opts.coordinators_in_regions {
                topo.host_control_ip()
            } else {
                IpAddr::from([127, 0, 0, 1])
            },
            ZONE,
            RECORD,
            topo.control_ip(primary_region),
        );
        let regions_list = names
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let extra = format!(
            "regions = [{regions_list}]\nlease = \"{}\"\n[dns]\nprovider = \"rfc2136\"\nrecord = \"{RECORD}\"\nzone = \"{ZONE}\"\nserver = \"{}\"\ntsig_key_name = \"{}\"\ntsig_secret_file = \"{}\"\n",
            opts.lease,
            bind.addr(),
            bind.key_name(),
            if opts.wrong_tsig_key {
                bind.wrong_secret_file()
            } else {
                bind.secret_file()
            }
            .display()
        );
        let (mesh, etcd) = if opts.coordinators_in_regions {
            let places: Vec<(IpAddr, Vec<String>)> = names
                .iter()
                .map(|r| (topo.control_ip(r), topo.exec_prefix(r)))
                .collect();
            let etcd = crate::etcd::Etcd::start_in(&places);
            let mesh =
                Mesh::start_etcd_in(opts.heartbeat_ms, &extra, &etcd.endpoints(), 3, &places);
            (mesh, Some(etcd))
        } else {
            let mesh = Mesh::start_on(opts.heartbeat_ms, &extra, topo.host_control_ip());
            (mesh, None)
        };

        let pg_dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(pg_dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let root = pg_dir.path().join("pg");
        prepare_parent_dir(&root).expect("prepare pg dir");
        let port = free_port().expect("port");
        let mut clusters = Clusters(Vec::new());
        // Each region's cluster in its own directory: its socket directory is named after
        // the port, which every region shares.
        let data_dir = |r: &str| {
            let dir = root.join(r);
            prepare_parent_dir(&dir).expect("prepare a region's pg dir");
            dir.join("data")
        };
        let primary = LocalCluster::init_primary_on(
            &pg,
            primary_region,
            &data_dir(primary_region),
            port,
            &topo.pg_network(primary_region),
        )
        .expect("initdb");
        clusters.0.push(primary.clone());
        primary.start().expect("start the primary in its namespace");
        primary
            .wait_ready(Duration::from_secs(30))
            .expect("primary ready");
        primary.psql(SETUP_SQL).expect("create the writer's tables");
        let repo = root.join("repo");
        let key = root.join("repo.key");
        if opts.archive {
            shared_archive(&primary, &repo, &key);
        }
        for r in &names[1..] {
            let standby = LocalCluster::init_standby_from(
                &pg,
                r,
                topo.mesh_ip(primary_region),
                port,
                &data_dir(r),
                port,
                &topo.pg_network(r),
            )
            .expect("pg_basebackup");
            clusters.0.push(standby.clone());
            standby.start().expect("start a standby in its namespace");
            standby
                .wait_ready(Duration::from_secs(30))
                .expect("standby ready");
        }
        if opts.synchronous {
            primary
                .set_synchronous_standby_names("*")
                .expect("synchronous standby");
        }

        let mut agents = Vec::new();
        let mut agent_configs = Vec::new();
        for (i, r) in names.iter().enumerate() {
            let c = &clusters.0[i];
            let id = format!("db-{r}");
            let files = mesh.issue_agent(&id, r);
            let database = if opts.archive {
                format!(
                    "repository = \"{}\"\nkey_file = \"{}\"\n[database.environments.staging]\ndata_dir = \"{}\"\nport = {}\n",
                    repo.display(),
                    key.display(),
                    root.join(r).join("staging").display(),
                    free_port().expect("port")
                )
            } else {
                format!(
                    "repository = \"{}\"\n",
                    root.join(format!("repo-{r}")).display()
                )
            };
            let config = mesh.agent_config_with(
                &id,
                r,
                &files,
                &format!("mesh_listen = \"{}:0\"", topo.mesh_ip(r)),
                &format!(
                    "[postgres]\nconninfo = \"{}\"\n[database]\ndata_dir = \"{}\"\n{database}",
                    c.conninfo(),
                    c.data_dir.display(),
                ),
            );
            let log = mesh.dir.path().join(format!("agent-{id}.log"));
            agents.push(Some(topo.spawn(
                r,
                &id,
                &bin("drmesh-agent"),
                &["--config", &config.display().to_string()],
                &log,
            )));
            agent_configs.push(config);
        }
        let fm = FaultMesh {
            agents,
            clusters,
            topo,
            bind,
            mesh,
            regions: opts.regions.clone(),
            etcd,
            port,
            agent_configs,
            _pg_dir: pg_dir,
        };
        fm.wait_roles();
        let failover_regions = names[1..]
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let plan = fm.mesh.post(
            "/v1/backup-recovery/disaster-recovery/plans",
            Some(
                format!(
                    r#"{{"id": "{PLAN}", "name": "Production", "rpo": "1h", "rto": "4h",
                        "failoverRegions": [{failover_regions}], "healthCheckInterval": 1000,
                        "automaticFailover": {}, "autoRejoin": {}}}"#,
                    opts.automatic, opts.auto_rejoin
                )
                .as_str(),
            ),
        );
        assert_eq!(plan.status, 201, "{}", plan.text);
        fm.wait_primary_up();
        fm
    }

    /// Where clients reach region `i`'s PostgreSQL.
    pub fn db(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.topo.control_ip(&self.regions[i]), self.port)
    }

    pub fn cluster(&self, i: usize) -> &LocalCluster {
        &self.clusters.0[i]
    }

    /// Asks BIND for the database's name; the address clients would connect to.
    pub fn resolver(&self) -> impl Fn() -> Option<SocketAddr> + Send + 'static {
        let server = self.bind.addr();
        let port = self.port;
        move || {
            let out = std::process::Command::new("dig")
                .args([
                    "+short",
                    "+time=1",
                    "+tries=1",
                    &format!("@{}", server.ip()),
                    "-p",
                    &server.port().to_string(),
                    RECORD,
                    "A",
                ])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let ip: IpAddr = text.lines().next()?.trim().parse().ok()?;
            Some(SocketAddr::new(ip, port))
        }
    }

    fn wait_roles(&self) {
        let want = |i: usize| if i == 0 { "primary" } else { "standby" };
        let up = wait_for(Duration::from_secs(40), || {
            let s = self.mesh.status();
            self.regions
                .iter()
                .enumerate()
                .all(|(i, r)| {
                    s.regions.iter().flat_map(|x| &x.agents).any(|a| {
                        a.agent_id.as_str() == format!("db-{r}")
                            && a.role.map(|r| r.to_string()).as_deref() == Some(want(i))
                    })
                })
                .then_some(())
        });
        assert!(
            up.is_some(),
            "agents did not report their roles: {}\n{}",
            self.mesh.get(STATUS).text,
            self.mesh.coordinator_log()
        );
    }

    /// Waits until the plan's health check sees the primary UP and every agent has its
    /// peers in view (a primary's lease is counted against its view: one that does not
    /// know its peers yet holds none).
    pub fn wait_primary_up(&self) {
        let peers = self.regions.len() as u32 - 1;
        let meshed = wait_for(Duration::from_secs(30), || {
            let s = self.mesh.status();
            let agents: Vec<_> = s.regions.iter().flat_map(|r| &r.agents).collect();
            (agents.len() == self.regions.len()
                && agents.iter().all(|a| a.mesh_peers == Some(peers)))
            .then_some(())
        });
        assert!(
            meshed.is_some(),
            "the agents do not all see their {peers} peers: {}",
            self.mesh.get(STATUS).text
        );
        let up = wait_for(Duration::from_secs(30), || {
            let s = self.mesh.get(STATUS).body;
            let verdict = s["healthChecks"]
                .as_array()?
                .iter()
                .find(|h| h["planId"] == PLAN)?["verdict"]
                .as_str()?
                .to_string();
            (verdict == "UP").then_some(())
        });
        assert!(
            up.is_some(),
            "the plan's primary is not UP: {}",
            self.mesh.get(STATUS).text
        );
    }

    /// The newest failover's record, once it has ended (bounded).
    pub fn failover_finished(&self, within: Duration) -> Value {
        wait_for(within, || {
            let s = self.mesh.get(STATUS).body;
            let status = s["failover"]["status"].as_str()?.to_string();
            matches!(status.as_str(), "COMPLETED" | "FAILED").then_some(s)
        })
        .unwrap_or_else(|| {
            panic!(
                "the failover did not finish: {}\n{}",
                self.mesh.get(STATUS).text,
                self.mesh.coordinator_log()
            )
        })
    }

    /// The newest failover's status, if any started.
    pub fn failover_status(&self) -> Option<String> {
        self.mesh.get(STATUS).body["failover"]["status"]
            .as_str()
            .map(str::to_string)
    }

    /// `kill -9` of region `i`'s postmaster: a crash of its PostgreSQL (its agent lives on).
    pub fn crash_postgres(&self, i: usize) {
        let pid = self.cluster(i).postmaster_pid().expect("the server runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9 the postmaster");
    }

    /// `kill -9` the agent of region `i`.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut a) = self.agents[i].take() {
            a.kill9();
        }
    }

    pub fn agent_log(&self, i: usize) -> String {
        self.agents[i]
            .as_ref()
            .map(|a| a.log_text())
            .unwrap_or_default()
    }

    pub fn agent_config(&self, i: usize) -> &PathBuf {
        &self.agent_configs[i]
    }
}

/// The quickstart's archiving on `primary`, before its standbys are made (they copy it):
/// an encrypted repository at `repo` with the key `key`, both the postgres user's, and
/// `drmesh repo wal-push` naming them as `archive_command` (restarts the primary).
fn shared_archive(primary: &LocalCluster, repo: &std::path::Path, key: &std::path::Path) {
    std::fs::write(
        key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .expect("write the repository key");
    let out = std::process::Command::new(bin("drmesh"))
        .args(["repo", "init", "--repo"])
        .arg(repo)
        .arg("--key-file")
        .arg(key)
        .output()
        .expect("drmesh repo init");
    assert!(
        out.status.success(),
        "drmesh repo init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drmesh_pg::local::hand_to_postgres(repo).expect("give the repository to postgres");
    drmesh_pg::local::hand_to_postgres(key).expect("give the key to postgres");
    let command = format!(
        "'{}' repo wal-push --repo '{}' --key-file '{}' %p",
        bin("drmesh").display(),
        repo.display(),
        key.display()
    );
    primary
        .psql(&format!(
            "alter system set archive_command = '{}'",
            command.replace('\'', "''")
        ))
        .expect("archive_command");
    primary
        .psql("alter system set archive_mode = 'on'")
        .expect("archive_mode");
    primary
        .psql("alter system set archive_timeout = '10s'")
        .expect("archive_timeout");
    primary.stop().expect("stop the primary");
    primary.start().expect("start the primary");
    primary
        .wait_ready(Duration::from_secs(30))
        .expect("primary ready");
}
