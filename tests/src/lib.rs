//! Helpers shared by the end-to-end tests: start real coordinator and agent processes in
//! their own temporary directories on free ports, talk to them over HTTP and QUIC, and
//! clean up every process they started.

#![allow(clippy::unwrap_used)]

pub mod bind;
pub mod etcd;
pub mod faults;
pub mod ha;
pub mod hook;
pub mod netns;
pub mod objstore;
pub mod proxy;
pub mod regions;
pub mod splitbrain;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drmesh_protocol::api::DrStatus;
use drmesh_protocol::pki::{self, CertFiles, Validity};
use drmesh_protocol::{AgentId, RegionId};
use serde_json::Value;

/// Path of a workspace binary, built by `cargo build --workspace --bins` (the test command
/// does that first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>; a binary of this crate
    // (a benchmark) already runs from target/<profile>.
    let parent = exe.parent().expect("target directory");
    let dir = if parent.ends_with("deps") {
        parent.parent().expect("target directory")
    } else {
        parent
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (the README's test command does)",
        path.display()
    );
    path
}

/// Deterministic incompressible bytes (xorshift), for test files whose chunk
/// boundaries and content must not depend on a random seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every file (not directory) under `root`, in no particular order; a missing `root`
/// has none.
pub fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[&str], log: &Path) -> Proc {
        let out = fs::File::create(log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, the test's model of a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The fields `a` and `b` (as strings; "" when absent) of every object in the JSON
/// array `list`, e.g. each document's id and status.
pub fn field_pairs(list: &Value, a: &str, b: &str) -> Vec<(String, String)> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    list.as_array()
        .map(|items| items.iter().map(|o| (text(&o[a]), text(&o[b]))).collect())
        .unwrap_or_default()
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP answer: status code and JSON body (or `Value::Null`).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Answer {
    http_via(&agent_trusting(None), method, url, token, body)
}

/// `DIR/ca`: a test CA, and a coordinator certificate from it (`ca/coordinator.pem`,
/// `.key`) for `localhost` and 127.0.0.1.
pub fn test_ca(dir: &Path) -> PathBuf {
    let ca = dir.join("ca");
    pki::init_ca(&ca, "test CA").expect("init CA");
    let files = pki::coordinator_files(&ca);
    pki::issue_coordinator(
        &ca,
        &["localhost".into(), "127.0.0.1".into()],
        Validity::days(1),
        &files,
    )
    .expect("coordinator cert");
    ca
}

/// An HTTP client (15 s per request) that trusts the CA certificate at `ca` for
/// `https://` URLs (else the public CAs).
pub fn agent_trusting(ca: Option<&Path>) -> ureq::Agent {
    agent_trusting_within(ca, Duration::from_secs(15))
}

/// As [`agent_trusting`], with `timeout` per request.
pub fn agent_trusting_within(ca: Option<&Path>, timeout: Duration) -> ureq::Agent {
    let builder = ureq::AgentBuilder::new().timeout(timeout);
    match ca {
        Some(ca) => builder.tls_config(std::sync::Arc::new(
            drmesh_protocol::tls::https_client_config(ca).expect("the test CA"),
        )),
        None => builder,
    }
    .build()
}

/// As [`http`], through `agent`.
pub fn http_via(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut req = agent.request(method, url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let result = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, body, text }
}

/// A running coordinator in its own temporary directory, with a CA and an admin token.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub http: SocketAddr,
    /// The REST API's base URL (`https://…` with `http_tls = true`).
    pub api: String,
    pub quic: SocketAddr,
    pub admin_token: String,
    pub coordinator: Proc,
    pub heartbeat_ms: u64,
    /// With an etcd store: the other coordinators, followers at the start (see
    /// [`Mesh::start_etcd`]); agents are given all of them.
    pub next_coordinators: Vec<ha::Coord>,
}

impl Mesh {
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// An HTTP client that trusts the mesh's CA (for a coordinator on HTTPS).
    pub fn http_agent(&self) -> ureq::Agent {
        agent_trusting(Some(&self.ca_dir().join("ca.pem")))
    }

    /// Starts a coordinator on free ports with the given heartbeat interval.
    pub fn start(heartbeat_ms: u64) -> Mesh {
        Self::start_with(heartbeat_ms, "")
    }

    /// Like [`Mesh::start`], with `extra` in the coordinator's config before its `[tls]`
    /// table (top-level keys first, then tables such as `[notify.NAME]`).
    pub fn start_with(heartbeat_ms: u64, extra: &str) -> Mesh {
        Self::start_on(heartbeat_ms, extra, std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// Like [`Mesh::start_with`], with agents' QUIC on `quic_ip` (e.g. the host's
    /// address on a network-namespace bridge).
    pub fn start_on(heartbeat_ms: u64, extra: &str, quic_ip: std::net::IpAddr) -> Mesh {
        let localhost = std::net::Ipv4Addr::LOCALHOST.into();
        Self::start_store(heartbeat_ms, extra, (localhost, quic_ip), &[], None)
    }

    /// Like [`Mesh::start_with`], with `count` coordinators on one etcd cluster
    /// (`endpoints`, leader lease `ttl_s`): `c0` is started first and waited for as the
    /// leader; the others follow. Every coordinator gets the same `extra`.
    pub fn start_etcd(
        heartbeat_ms: u64,
        extra: &str,
        endpoints: &[String],
        ttl_s: u64,
        count: usize,
    ) -> Mesh {
        let localhost: std::net::IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
        let places = vec![(localhost, Vec::new()); count];
        Self::start_etcd_in(heartbeat_ms, extra, endpoints, ttl_s, &places)
    }

    /// As [`Mesh::start_etcd`], coordinator `i` listening (REST and QUIC) on
    /// `places[i].0` and run under `places[i].1` (e.g. `ip netns exec NS`).
    pub fn start_etcd_in(
        heartbeat_ms: u64,
        extra: &str,
        endpoints: &[String],
        ttl_s: u64,
        places: &[(std::net::IpAddr, Vec<String>)],
    ) -> Mesh {
        let table = |i: usize| ha::store_table(&format!("c{i}"), endpoints, ttl_s);
        let (ip0, prefix0) = &places[0];
        let mut mesh =
            Self::start_store(heartbeat_ms, extra, (*ip0, *ip0), prefix0, Some(table(0)));
        let leads = wait_for(Duration::from_secs(15), || {
            let s: Value = mesh
                .get("/v1/backup-recovery/disaster-recovery/status")
                .body;
            (s["coordinators"]["standing"] == "LEADER").then_some(())
        });
        assert!(leads.is_some(), "c0 never led:\n{}", mesh.coordinator_log());
        let base =
            fs::read_to_string(mesh.dir.path().join("coordinator.toml")).expect("read config");
        for (i, (ip, prefix)) in places.iter().enumerate().skip(1) {
            let config = mesh.dir.path().join(format!("c{i}.toml"));
            let text: String = base
                .replace(&table(0), &table(i))
                .lines()
                .map(|l| {
                    if l.starts_with("http_listen = ") {
                        let insecure = if ip.is_loopback() || base.contains("insecure_http") {
                            ""
                        } else {
                            "insecure_http = true\n"
                        };
                        format!("http_listen = \"{}\"\n{insecure}", SocketAddr::new(*ip, 0))
                    } else if l.starts_with("quic_listen = ") {
                        format!("quic_listen = \"{}\"\n", SocketAddr::new(*ip, 0))
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            fs::write(&config, text).expect("write config");
            let mut c = ha::Coord {
                name: format!("c{i}"),
                config,
                http: SocketAddr::from(([127, 0, 0, 1], 0)),
                quic: SocketAddr::from(([127, 0, 0, 1], 0)),
                proc: None,
                prefix: prefix.clone(),
            };
            ha::spawn_coordinator(mesh.dir.path(), &mut c);
            mesh.next_coordinators.push(c);
        }
        mesh
    }

    /// `kill -9` of the coordinator the mesh talks to (with [`Mesh::start_etcd`], the
    /// leader); from then on the mesh talks to the next one.
    pub fn kill_coordinator_for_the_next(&mut self) {
        self.coordinator.kill9();
        self.talk_to_the_next_coordinator();
    }

    /// From now on the mesh talks to the next coordinator; the one it talked to (still
    /// running, or not) goes to the end of the line.
    pub fn talk_to_the_next_coordinator(&mut self) {
        assert!(!self.next_coordinators.is_empty(), "no other coordinator");
        let mut next = self.next_coordinators.remove(0);
        let proc = next.proc.take().expect("the next coordinator runs");
        let old = std::mem::replace(&mut self.coordinator, proc);
        let (http, quic) = (self.http, self.quic);
        self.http = next.http;
        self.quic = next.quic;
        let scheme = self.api.split("://").next().unwrap_or("http").to_string();
        self.api = format!("{scheme}://{}", self.http);
        next.http = http;
        next.quic = quic;
        next.proc = Some(old);
        self.next_coordinators.push(next);
    }

    fn start_store(
        heartbeat_ms: u64,
        extra: &str,
        (http_ip, quic_ip): (std::net::IpAddr, std::net::IpAddr),
        prefix: &[String],
        store: Option<String>,
    ) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        test_ca(dir.path());
        let config = dir.path().join("coordinator.toml");
        // A namespace's address is no loopback: its tests' REST API is plain HTTP on a
        // network of their own.
        let insecure = if http_ip.is_loopback() {
            ""
        } else {
            "insecure_http = true\n"
        };
        fs::write(
            &config,
            format!(
                "http_listen = \"{}\"\n{insecure}quic_listen = \"{}\"\n{}heartbeat_interval = \"{heartbeat_ms}ms\"\n{extra}\n{}\n[tls]\nca_cert = \"ca/ca.pem\"\ncert = \"ca/coordinator.pem\"\nkey = \"ca/coordinator.key\"\n",
                SocketAddr::new(http_ip, 0),
                SocketAddr::new(quic_ip, 0),
                if store.is_some() { "" } else { "store_path = \"state.redb\"\n" },
                store.as_deref().unwrap_or("")
            ),
        )
        .expect("write config");
        let config_s = config.display().to_string();
        let admin_token = ha::create_token(&config);
        let ready = dir.path().join("ready.json");
        let coordinator = spawn_under(
            prefix,
            "coordinator",
            &bin("drmesh-coordinator"),
            &[
                "--config",
                &config_s,
                "--ready-file",
                &ready.display().to_string(),
            ],
            &dir.path().join("coordinator.log"),
        );
        let ready: Value = wait_for(Duration::from_secs(20), || {
            fs::read(&ready)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
        })
        .unwrap_or_else(|| panic!("coordinator not ready:\n{}", coordinator.log_text()));
        let http: SocketAddr = ready["http"].as_str().unwrap().parse().unwrap();
        Mesh {
            http,
            api: ready["api"]
                .as_str()
                .map_or_else(|| format!("http://{http}"), str::to_string),
            quic: ready["quic"].as_str().unwrap().parse().unwrap(),
            admin_token,
            coordinator,
            heartbeat_ms,
            dir,
            next_coordinators: Vec::new(),
        }
    }

    /// Issues an agent certificate from the mesh's CA.
    pub fn issue_agent(&self, id: &str, region: &str) -> CertFiles {
        let files = pki::agent_files(&self.dir.path().join("agents"), &AgentId::new(id).unwrap());
        pki::issue_agent(
            &self.ca_dir(),
            &AgentId::new(id).unwrap(),
            &RegionId::new(region).unwrap(),
            Validity::days(1),
            &files,
        )
        .expect("issue agent cert");
        files
    }

    /// Writes an agent config; `extra` is appended verbatim (e.g. a `[postgres]` table).
    pub fn agent_config(&self, id: &str, region: &str, files: &CertFiles, extra: &str) -> PathBuf {
        self.agent_config_with(id, region, files, "", extra)
    }

    /// Like [`Mesh::agent_config`], with `top` (top-level keys such as `mesh_listen`)
    /// before the tables.
    pub fn agent_config_with(
        &self,
        id: &str,
        region: &str,
        files: &CertFiles,
        top: &str,
        extra: &str,
    ) -> PathBuf {
        let path = self.dir.path().join(format!("agent-{id}.toml"));
        let others: Vec<String> = self
            .next_coordinators
            .iter()
            .map(|c| format!("\"{}\"", c.quic))
            .collect();
        let top = if others.is_empty() {
            top.to_string()
        } else {
            format!("{top}\ncoordinators = [{}]", others.join(", "))
        };
        fs::write(
            &path,
            format!(
                "{top}\nid = \"{id}\"\nregion = \"{region}\"\ncoordinator = \"{}\"\ncoordinator_name = \"localhost\"\nheartbeat_interval = \"{}ms\"\nreconnect_max_backoff = \"1s\"\n[tls]\nca_cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
                self.quic,
                self.heartbeat_ms,
                self.ca_dir().join("ca.pem").display(),
                files.cert.display(),
                files.key.display(),
            ),
        )
        .expect("write agent config");
        path
    }

    pub fn spawn_agent(&self, config: &Path) -> Proc {
        let name = config.file_stem().unwrap().to_string_lossy().to_string();
        Proc::spawn(
            &name,
            &bin("drmesh-agent"),
            &["--config", &config.display().to_string()],
            &self.dir.path().join(format!("{name}.log")),
        )
    }

    /// Issues a certificate, writes a config and starts the agent.
    pub fn agent(&self, id: &str, region: &str) -> Proc {
        let files = self.issue_agent(id, region);
        let config = self.agent_config(id, region, &files, "");
        self.spawn_agent(&config)
    }

    pub fn get(&self, path: &str) -> Answer {
        http_via(
            &self.http_agent(),
            "GET",
            &self.url(path),
            Some(&self.admin_token),
            None,
        )
    }

    pub fn post(&self, path: &str, body: Option<&str>) -> Answer {
        http_via(
            &self.http_agent(),
            "POST",
            &self.url(path),
            Some(&self.admin_token),
            body,
        )
    }

    pub fn status(&self) -> DrStatus {
        let a = self.get("/v1/backup-recovery/disaster-recovery/status");
        assert_eq!(a.status, 200, "{}", a.text);
        serde_json::from_value(a.body).expect("status body")
    }

    /// The state of one agent, if the coordinator knows it.
    pub fn agent_state(&self, id: &str) -> Option<String> {
        self.agent_status(id).map(|a| a.state.to_string())
    }

    /// One agent as the DR status shows it, if the coordinator knows it.
    pub fn agent_status(&self, id: &str) -> Option<drmesh_protocol::api::AgentStatus> {
        self.status()
            .regions
            .into_iter()
            .flat_map(|r| r.agents)
            .find(|a| a.agent_id.as_str() == id)
    }

    /// Starts a document backup (the runbook's POST, no body) and waits (≤ 90 s) until it
    /// leaves IN_PROGRESS; returns the backup as the API then shows it.
    pub fn document_backup(&self) -> Value {
        const DOCS: &str = "/v1/backup-recovery/documents";
        let accepted = self.post(&format!("{DOCS}/backup"), None);
        assert_eq!(accepted.status, 202, "{}", accepted.text);
        let id = accepted.body["backupId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        wait_for(Duration::from_secs(90), || {
            let a = self.get(&format!("{DOCS}/backups/{id}"));
            (a.body["status"] != "IN_PROGRESS").then_some(a.body)
        })
        .unwrap_or_else(|| panic!("backup {id} did not finish:\n{}", self.coordinator_log()))
    }

    pub fn create_token(&self, role: &str) -> String {
        let a = self.post("/v1/tokens", Some(&format!("{{\"role\":\"{role}\"}}")));
        assert_eq!(a.status, 201, "{}", a.text);
        a.body["token"].as_str().unwrap().to_string()
    }

    /// Runs `drmesh ARGS` against this coordinator with `token`: (success, stdout,
    /// stderr).
    pub fn cli(&self, token: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin("drmesh"))
            .args(args)
            .env("DRMESH_URL", &self.api)
            .env("DRMESH_CA_CERT", self.ca_dir().join("ca.pem"))
            .env("DRMESH_TOKEN", token)
            .output()
            .expect("run drmesh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    pub fn coordinator_log(&self) -> String {
        self.coordinator.log_text()
    }

    /// `kill -9` the coordinator and start it again on the same ports and store.
    pub fn restart_coordinator(&mut self) {
        self.restart_coordinator_with(|_| {})
    }

    /// As [`Mesh::restart_coordinator`], running `between` on the mesh's directory (where
    /// `state.redb` is) while the coordinator is down.
    pub fn restart_coordinator_with(&mut self, between: impl FnOnce(&Path)) {
        self.coordinator.kill9();
        between(self.dir.path());
        let config = self.dir.path().join("coordinator.toml");
        pin_listen_addresses(&config, self.http, self.quic);
        let ready = self.dir.path().join("ready.json");
        let _ = fs::remove_file(&ready);
        self.coordinator = Proc::spawn(
            "coordinator",
            &bin("drmesh-coordinator"),
            &[
                "--config",
                &config.display().to_string(),
                "--ready-file",
                &ready.display().to_string(),
            ],
            &self.dir.path().join("coordinator-restarted.log"),
        );
        let up = wait_for(Duration::from_secs(20), || fs::read(&ready).ok());
        assert!(
            up.is_some(),
            "coordinator did not restart:\n{}",
            self.coordinator.log_text()
        );
    }
}

/// Starts `program ARGS` as a [`Proc`], under `prefix` if any (e.g. `ip netns exec NS`,
/// which execs the program, so the child's pid is the program's).
pub fn spawn_under(
    prefix: &[String],
    name: &str,
    program: &Path,
    args: &[&str],
    log: &Path,
) -> Proc {
    match prefix.split_first() {
        None => Proc::spawn(name, program, args, log),
        Some((first, rest)) => {
            let program = program.to_str().expect("program path is UTF-8");
            let mut full: Vec<&str> = rest.iter().map(String::as_str).collect();
            full.push(program);
            full.extend_from_slice(args);
            Proc::spawn(name, Path::new(first), &full, log)
        }
    }
}

/// Rewrites a coordinator.toml's `http_listen` and `quic_listen` to the addresses it
/// bound before, so a restarted coordinator listens where it did.
pub fn pin_listen_addresses(config: &Path, http: SocketAddr, quic: SocketAddr) {
    let text: String = fs::read_to_string(config)
        .expect("read config")
        .lines()
        .map(|l| {
            if l.starts_with("http_listen = ") {
                format!("http_listen = \"{http}\"\n")
            } else if l.starts_with("quic_listen = ") {
                format!("quic_listen = \"{quic}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(config, text).expect("write config");
}

/// Connects to a coordinator with a raw QUIC client config and sends a Hello; returns
/// what happened (`Ok` with the coordinator's answer, or the error). Used to knock on the
/// door with credentials the real agent would never present.
pub fn knock(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    hello_id: &str,
    region: &str,
) -> Result<String, String> {
    use drmesh_protocol::codec::encode;
    use drmesh_protocol::{AgentMessage, AgentMessageV1, CoordinatorMessage, FrameDecoder, Hello};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let attempt = async {
            let conn = endpoint
                .connect(addr, "localhost")
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let hello = AgentMessage::V1(AgentMessageV1::Hello(Hello {
                agent_id: AgentId::new(hello_id).unwrap(),
                region: RegionId::new(region).unwrap(),
                version: "test".into(),
                capabilities: vec![],
                mesh_addr: None,
                postgres_addr: None,
                postgres_mesh_addr: None,
            }));
            send.write_all(&encode(&hello).unwrap())
                .await
                .map_err(|e| e.to_string())?;
            let mut dec = FrameDecoder::new();
            let mut buf = [0u8; 4096];
            loop {
                if let Some(m) = dec
                    .next_frame::<CoordinatorMessage>()
                    .map_err(|e| e.to_string())?
                {
                    return Ok(format!("{m:?}"));
                }
                match recv.read(&mut buf).await.map_err(|e| e.to_string())? {
                    Some(n) => dec.push(&buf[..n]),
                    None => return Err("stream ended".to_string()),
                }
            }
        };
        let r = tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        endpoint.close(0u32.into(), b"");
        r
    })
}

/// Every process whose command line mentions `needle` (used to prove nothing is left).
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}
