//! Several coordinators on one etcd store ([`crate::etcd::Etcd`]): each its own process,
//! config, free ports and log, sharing one CA and one admin token. Processes are killed
//! on drop.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use drmesh_protocol::api::{DrStatus, Standing};
use drmesh_protocol::pki::{self, Validity};
use serde_json::Value;

use crate::{bin, wait_for, Proc};

pub struct Coord {
    pub name: String,
    pub config: PathBuf,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub proc: Option<Proc>,
    /// What it runs under, e.g. `ip netns exec NS` (empty: the test's namespace).
    pub prefix: Vec<String>,
}

pub struct Ha {
    pub dir: tempfile::TempDir,
    pub coords: Vec<Coord>,
    pub admin_token: String,
    heartbeat_ms: u64,
    ttl_s: u64,
    /// More configuration after the `[tls]` table, the same for every coordinator.
    extra: String,
    /// The REST APIs on HTTPS (`http_tls = true`).
    https: bool,
}

/// `[store]` naming `endpoints` for coordinator `name`, with a `ttl_s` leader lease.
pub fn store_table(name: &str, endpoints: &[String], ttl_s: u64) -> String {
    let quoted: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[store]\nbackend = \"etcd\"\nname = \"{name}\"\nendpoints = [{}]\nleader_ttl = \"{ttl_s}s\"\ntimeout = \"2s\"\n",
        quoted.join(", ")
    )
}

impl Ha {
    /// Starts one coordinator per entry of `endpoints` (the etcd URLs it is given),
    /// `c0`, `c1`, …, in that order, each after the previous is ready.
    pub fn start(endpoints: &[Vec<String>], heartbeat_ms: u64, ttl_s: u64) -> Ha {
        Self::start_with(endpoints, heartbeat_ms, ttl_s, "")
    }

    /// As [`Ha::start`], with `extra` configuration (tables such as `[notify.x]`)
    /// given to every coordinator.
    pub fn start_with(endpoints: &[Vec<String>], heartbeat_ms: u64, ttl_s: u64, extra: &str) -> Ha {
        Self::start_all(endpoints, heartbeat_ms, ttl_s, extra, false)
    }

    /// As [`Ha::start`], every REST API on HTTPS with the coordinator certificate (for
    /// `localhost` and 127.0.0.1).
    pub fn start_https(endpoints: &[Vec<String>], heartbeat_ms: u64, ttl_s: u64) -> Ha {
        Self::start_all(endpoints, heartbeat_ms, ttl_s, "", true)
    }

    fn start_all(
        endpoints: &[Vec<String>],
        heartbeat_ms: u64,
        ttl_s: u64,
        extra: &str,
        https: bool,
    ) -> Ha {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::test_ca(dir.path());
        let mut ha = Ha {
            dir,
            coords: Vec::new(),
            admin_token: String::new(),
            heartbeat_ms,
            ttl_s,
            extra: extra.to_string(),
            https,
        };
        for eps in endpoints {
            ha.add(eps);
        }
        ha
    }

    /// Adds and starts one more coordinator on `endpoints`; the first also makes the
    /// admin token.
    pub fn add(&mut self, endpoints: &[String]) -> usize {
        let i = self.coords.len();
        let name = format!("c{i}");
        let config = self.dir.path().join(format!("{name}.toml"));
        fs::write(
            &config,
            format!(
                "regions = [\"eu-west-1\", \"us-east-1\", \"us-west-2\"]\nhttp_listen = \"127.0.0.1:0\"\nhttp_tls = {}\nquic_listen = \"127.0.0.1:0\"\nheartbeat_interval = \"{}ms\"\n\n{}\n[tls]\nca_cert = \"ca/ca.pem\"\ncert = \"ca/coordinator.pem\"\nkey = \"ca/coordinator.key\"\n{}\n",
                self.https,
                self.heartbeat_ms,
                store_table(&name, endpoints, self.ttl_s),
                self.extra
            ),
        )
        .expect("write config");
        if i == 0 {
            self.admin_token = create_token(&config);
        }
        self.coords.push(Coord {
            name,
            config,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            quic: SocketAddr::from(([127, 0, 0, 1], 0)),
            proc: None,
            prefix: Vec::new(),
        });
        self.spawn(i);
        i
    }

    /// Starts coordinator `i` (again: on the ports it had) and waits until it listens.
    pub fn spawn(&mut self, i: usize) {
        spawn_coordinator(self.dir.path(), &mut self.coords[i]);
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.coords[i].http)
    }

    /// The CA certificate the coordinators' certificates chain to.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca/ca.pem")
    }

    /// The DR status as coordinator `i` answers it, or `None` if it does not answer.
    pub fn status(&self, i: usize) -> Option<DrStatus> {
        let resp = crate::agent_trusting_within(Some(&self.ca_cert()), Duration::from_secs(3))
            .get(&self.url(i, "/v1/backup-recovery/disaster-recovery/status"))
            .set("Authorization", &format!("Bearer {}", self.admin_token))
            .call()
            .ok()?;
        resp.into_json().ok()
    }

    pub fn standing(&self, i: usize) -> Option<Standing> {
        Some(self.status(i)?.coordinators?.standing)
    }

    /// The one coordinator (not in `except`) that says it leads, within `timeout`.
    pub fn wait_leader(&self, timeout: Duration, except: &[usize]) -> Option<(usize, Duration)> {
        let t0 = Instant::now();
        wait_for(timeout, || {
            (0..self.coords.len())
                .filter(|i| !except.contains(i))
                .find(|&i| self.standing(i) == Some(Standing::Leader))
        })
        .map(|i| (i, t0.elapsed()))
    }

    /// Issues a certificate for agent `id` in `region` and starts it with
    /// `coordinators` = the QUIC addresses of `order` (indexes into `coords`).
    pub fn agent(&self, id: &str, region: &str, order: &[usize]) -> Proc {
        let ca = self.dir.path().join("ca");
        let agent = drmesh_protocol::AgentId::new(id).unwrap();
        let files = pki::agent_files(&self.dir.path().join("agents"), &agent);
        pki::issue_agent(
            &ca,
            &agent,
            &drmesh_protocol::RegionId::new(region).unwrap(),
            Validity::days(1),
            &files,
        )
        .expect("issue agent cert");
        let list: Vec<String> = order
            .iter()
            .map(|&i| format!("\"{}\"", self.coords[i].quic))
            .collect();
        let config = self.dir.path().join(format!("agent-{id}.toml"));
        fs::write(
            &config,
            format!(
                "id = \"{id}\"\nregion = \"{region}\"\ncoordinators = [{}]\ncoordinator_name = \"localhost\"\nheartbeat_interval = \"200ms\"\nreconnect_max_backoff = \"1s\"\ndata_dir = \"{}\"\n[tls]\nca_cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                list.join(", "),
                self.dir.path().display(),
                ca.join("ca.pem").display(),
                files.cert.display(),
                files.key.display(),
            ),
        )
        .expect("write agent config");
        Proc::spawn(
            id,
            &bin("drmesh-agent"),
            &["--config", &config.display().to_string()],
            &self.dir.path().join(format!("agent-{id}.log")),
        )
    }

    /// Whether coordinator `i` has agent `id` connected and UP.
    pub fn agent_up(&self, i: usize, id: &str) -> bool {
        self.status(i).is_some_and(|s| {
            s.regions.iter().flat_map(|r| &r.agents).any(|a| {
                a.agent_id.as_str() == id
                    && a.connected
                    && a.state == drmesh_protocol::api::AgentState::Up
            })
        })
    }

    /// `kill -9` of coordinator `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.coords[i].proc.take() {
            p.kill9();
        }
    }

    pub fn log(&self, i: usize) -> String {
        let mut out = String::new();
        let mut logs: Vec<_> = fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("{}-", self.coords[i].name)) && n.ends_with(".log")
                })
            })
            .collect();
        logs.sort();
        for l in logs {
            out.push_str(&fs::read_to_string(l).unwrap_or_default());
        }
        out
    }
}

/// Starts coordinator `c` (again: on the ports it had), its log and ready file in `dir`,
/// and waits until it listens.
pub fn spawn_coordinator(dir: &std::path::Path, c: &mut Coord) {
    if c.http.port() != 0 {
        crate::pin_listen_addresses(&c.config, c.http, c.quic);
    }
    let ready = dir.join(format!("{}.ready", c.name));
    let _ = fs::remove_file(&ready);
    let n = fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let proc = crate::spawn_under(
        &c.prefix,
        &c.name,
        &bin("drmesh-coordinator"),
        &[
            "--config",
            &c.config.display().to_string(),
            "--ready-file",
            &ready.display().to_string(),
        ],
        &dir.join(format!("{}-{n}.log", c.name)),
    );
    let ready: Value = wait_for(Duration::from_secs(20), || {
        fs::read(&ready)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    })
    .unwrap_or_else(|| panic!("coordinator {} not ready:\n{}", c.name, proc.log_text()));
    c.http = ready["http"].as_str().unwrap().parse().unwrap();
    c.quic = ready["quic"].as_str().unwrap().parse().unwrap();
    c.proc = Some(proc);
}

/// `drmesh-coordinator create-token` against `config`'s store.
pub fn create_token(config: &std::path::Path) -> String {
    let out = Command::new(bin("drmesh-coordinator"))
        .args([
            "--config",
            &config.display().to_string(),
            "create-token",
            "--role",
            "admin",
            "--name",
            "test",
        ])
        .output()
        .expect("run create-token");
    assert!(
        out.status.success(),
        "create-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
