//! A real etcd cluster for the tests: `n` members (`etcd` from Debian's `etcd-server`) on
//! free loopback ports, each with its data directory and log in one temporary directory.
//! Members are killed on drop; one can be killed (`kill -9`) or started again.
//!
//! `bash scripts/install-deps.sh` installs etcd. A missing etcd is a test failure,
//! never a skip.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{wait_for, Proc};

const HINT: &str =
    "etcd is missing: apt-get install -y etcd-server etcd-client (or run scripts/install-deps.sh)";

pub struct Member {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub proc: Option<Proc>,
    /// What it runs under, e.g. `ip netns exec NS` (empty: the test's namespace).
    pub prefix: Vec<String>,
}

pub struct Etcd {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
}

fn program() -> PathBuf {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{HINT}"))
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

impl Etcd {
    /// Starts an `n`-member cluster and waits until it answers.
    pub fn start(n: usize) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_addr(),
                peer: free_addr(),
                proc: None,
                prefix: Vec::new(),
            })
            .collect();
        Self::start_members(dir, members)
    }

    /// Starts one member per entry of `places`: at that address (the default ports,
    /// 2379 for clients and 2380 for peers: each address is a namespace's own), run
    /// under that prefix (e.g. [`crate::netns::Topology::exec_prefix`]).
    pub fn start_in(places: &[(std::net::IpAddr, Vec<String>)]) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let members = places
            .iter()
            .enumerate()
            .map(|(i, (ip, prefix))| Member {
                name: format!("m{i}"),
                client: SocketAddr::new(*ip, 2379),
                peer: SocketAddr::new(*ip, 2380),
                proc: None,
                prefix: prefix.clone(),
            })
            .collect();
        Self::start_members(dir, members)
    }

    fn start_members(dir: tempfile::TempDir, members: Vec<Member>) -> Etcd {
        let n = members.len();
        let mut etcd = Etcd { dir, members };
        for i in 0..n {
            etcd.start_member(i);
        }
        etcd.wait_healthy(Duration::from_secs(30));
        etcd
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` (again, after a kill: its data directory is kept).
    pub fn start_member(&mut self, i: usize) {
        let cluster = self.initial_cluster();
        let dir = self.dir.path().to_path_buf();
        let m = &mut self.members[i];
        let data = dir.join(format!("{}.etcd", m.name));
        let log = dir.join(format!("{}.log", m.name));
        let client = format!("http://{}", m.client);
        let peer = format!("http://{}", m.peer);
        let args = [
            "--name",
            &m.name,
            "--data-dir",
            &data.display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "drmesh-test",
            // Fast elections, as on a LAN: a lost member is noticed within a second.
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
            "--logger",
            "zap",
            "--log-outputs",
            &log.display().to_string(),
        ]
        .map(str::to_string);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        m.proc = Some(crate::spawn_under(
            &m.prefix,
            &m.name.clone(),
            &program(),
            &args,
            &dir.join(format!("{}.out", m.name)),
        ));
    }

    /// `kill -9` of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill9();
        }
    }

    /// The client URLs, as `[store] endpoints` takes them.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.client))
            .collect()
    }

    /// `endpoints = [...]` for a coordinator.toml.
    pub fn endpoints_toml(&self) -> String {
        let quoted: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!("[{}]", quoted.join(", "))
    }

    /// Waits until a quorum answers a linearizable read (a `endpoint health` through
    /// `etcdctl`, when installed; otherwise a TCP connect to every member).
    pub fn wait_healthy(&self, timeout: Duration) {
        let endpoints = self.endpoints().join(",");
        let ok = wait_for(timeout, || {
            let out = std::process::Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &endpoints, "endpoint", "health"])
                .output()
                .ok()?;
            out.status.success().then_some(())
        });
        if ok.is_none() {
            let logs: String = self
                .members
                .iter()
                .map(|m| {
                    let p = self.dir.path().join(format!("{}.log", m.name));
                    format!("--- {}\n{}", m.name, tail(&p))
                })
                .collect();
            panic!("etcd did not become healthy within {timeout:?} ({HINT})\n{logs}");
        }
    }

    /// Runs `etcdctl` against the cluster; its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints().join(",")])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run etcdctl: {e}; {HINT}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn tail(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
