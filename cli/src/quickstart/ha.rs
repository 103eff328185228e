//! `drmesh quickstart --ha`: one etcd member and one coordinator per region, as
//! `deploy/three-regions.md` lays out, on this machine. The three members are one etcd
//! cluster holding every coordinator's state; the coordinators elect a leader through an
//! etcd lease, and any of them answers the API.
//!
//! Ports are picked on the first run and kept in `quickstart.json`: an etcd member's
//! data directory remembers its peers' URLs, so a second run must use the same ones.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use drmesh_protocol::api::{CreatedToken, DrStatus, Role, Standing};
use serde::{Deserialize, Serialize};

use super::{check_children, tail, Mesh, REGIONS, RESTART_DELAY};
use crate::client::Client;

const INSTALL_HINT: &str = "install etcd-server (apt-get install etcd-server)";

/// How long the etcd members have to form a cluster and take the admin token.
const ETCD_READY: Duration = Duration::from_secs(30);

/// `[store] leader_ttl`'s range, as the coordinator checks it.
const LEADER_TTL_RANGE: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(300));

/// One etcd member's ports on 127.0.0.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct EtcdPorts {
    pub client: u16,
    pub peer: u16,
}

/// The `--ha` part of `quickstart.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct HaState {
    /// Each region's etcd member, in [`REGIONS`] order.
    pub etcd: Vec<EtcdPorts>,
    /// The REST API ports of the second and third coordinators (the first's is
    /// `--http-port`).
    pub http_ports: Vec<u16>,
}

impl HaState {
    /// The remembered ports, or new ones for what is missing; none of `taken` (ports
    /// the quickstart already uses) and none twice.
    pub fn complete(previous: Option<HaState>, taken: &[u16]) -> anyhow::Result<HaState> {
        let mut state = previous.unwrap_or_default();
        let mut taken: Vec<u16> = taken.to_vec();
        if state.etcd.len() != REGIONS.len() {
            let ports = free_ports(2 * REGIONS.len(), &taken)?;
            state.etcd = ports
                .chunks(2)
                .map(|p| EtcdPorts {
                    client: p[0],
                    peer: p[1],
                })
                .collect();
        }
        taken.extend(state.etcd.iter().flat_map(|m| [m.client, m.peer]));
        let others = REGIONS.len() - 1;
        if state.http_ports.len() != others || state.http_ports.iter().any(|p| taken.contains(p)) {
            state.http_ports = free_ports(others, &taken)?;
        }
        Ok(state)
    }

    /// The members' client URLs, as `[store] endpoints` takes them.
    pub fn endpoints(&self) -> Vec<String> {
        self.etcd
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }
}

/// `n` distinct free TCP ports on 127.0.0.1, none of `taken`: every listener is held
/// until all are picked, so the kernel cannot hand out one twice.
fn free_ports(n: usize, taken: &[u16]) -> anyhow::Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..n * 4 + 8 {
        if ports.len() == n {
            return Ok(ports);
        }
        let listener = TcpListener::bind("127.0.0.1:0").context("pick a free port")?;
        let port = listener.local_addr()?.port();
        if !taken.contains(&port) && !ports.contains(&port) {
            ports.push(port);
        }
        held.push(listener);
    }
    if ports.len() == n {
        return Ok(ports);
    }
    bail!("found {} free ports of the {n} needed", ports.len())
}

/// The `etcd` program: on PATH, else Debian's `/usr/bin/etcd`.
pub(super) fn etcd_program() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"))
        .find(|c| c.is_file());
    let debian = PathBuf::from("/usr/bin/etcd");
    match on_path {
        Some(p) => Ok(p),
        None if debian.is_file() => Ok(debian),
        None => {
            bail!("--ha needs etcd, found neither on PATH nor at /usr/bin/etcd: {INSTALL_HINT}")
        }
    }
}

/// `--leader-ttl` within what the coordinators accept.
pub(super) fn check_leader_ttl(ttl: Duration) -> anyhow::Result<()> {
    let (min, max) = LEADER_TTL_RANGE;
    if ttl < min || ttl > max {
        bail!(
            "--leader-ttl {} is outside {}..{}",
            humantime::format_duration(ttl),
            humantime::format_duration(min),
            humantime::format_duration(max)
        );
    }
    Ok(())
}

/// Member `i`'s command line: its name is its region, its data in `DIR/etcd/<region>`.
fn member_args(dir: &Path, state: &HaState, i: usize) -> Vec<String> {
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let cluster: Vec<String> = REGIONS
        .iter()
        .zip(&state.etcd)
        .map(|(r, m)| format!("{r}={}", url(m.peer)))
        .collect();
    let me = state.etcd[i];
    [
        "--name",
        REGIONS[i],
        "--data-dir",
        &dir.join("etcd").join(REGIONS[i]).display().to_string(),
        "--listen-client-urls",
        &url(me.client),
        "--advertise-client-urls",
        &url(me.client),
        "--listen-peer-urls",
        &url(me.peer),
        "--initial-advertise-peer-urls",
        &url(me.peer),
        "--initial-cluster",
        &cluster.join(","),
        // Ignored once the data directory exists: a second run rejoins the same cluster.
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        "drmesh-quickstart",
        // Fast elections, as on a LAN.
        "--heartbeat-interval",
        "100",
        "--election-timeout",
        "1000",
        "--logger",
        "zap",
        "--log-outputs",
        "stderr",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// Starts the three members as parts of the mesh, each logging to
/// `DIR/logs/etcd-<region>.log`.
pub(super) fn start_etcd(
    mesh: &mut Mesh,
    dir: &Path,
    program: &Path,
    state: &HaState,
) -> anyhow::Result<()> {
    let data = dir.join("etcd");
    std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
    for (i, region) in REGIONS.iter().enumerate() {
        let args = member_args(dir, state, i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        println!(
            "etcd {region} on 127.0.0.1:{} (peers :{})",
            state.etcd[i].client, state.etcd[i].peer
        );
        mesh.start(
            &format!("etcd {region}"),
            program,
            &args,
            &dir.join(format!("logs/etcd-{region}.log")),
            RESTART_DELAY,
        )?;
    }
    Ok(())
}

/// Writes a fresh admin token into etcd, waiting (at most [`ETCD_READY`]) for the
/// members to form a cluster first.
pub(super) fn create_token(
    mesh: &mut Mesh,
    dir: &Path,
    state: &HaState,
    leader_ttl: Duration,
) -> anyhow::Result<CreatedToken> {
    let endpoints = state.endpoints();
    let deadline = Instant::now() + ETCD_READY;
    loop {
        check_children(mesh)?;
        let error = match drmesh_coordinator::admin::create_token_in_etcd(
            &endpoints,
            leader_ttl,
            Role::Admin,
            Some("quickstart".into()),
        ) {
            Ok(token) => return Ok(token),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!(
                "etcd did not take the admin token within {} s: {error}\n{}",
                ETCD_READY.as_secs(),
                tail(&dir.join(format!("logs/etcd-{}.log", REGIONS[0])))
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The `[store]` table of region `region`'s coordinator.
pub(super) fn store_table(state: &HaState, region: &str, leader_ttl: Duration) -> String {
    let endpoints: Vec<String> = state
        .endpoints()
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    format!(
        "\n[store]\nbackend = \"etcd\"\nname = \"{region}\"\nendpoints = [{}]\nleader_ttl = \"{}\"\n",
        endpoints.join(", "),
        humantime::format_duration(leader_ttl)
    )
}

/// Where region `i`'s coordinator listens for its REST API.
pub(super) fn http_addr(state: &HaState, http_port: u16, i: usize) -> SocketAddr {
    let port = match i {
        0 => http_port,
        _ => state.http_ports[i - 1],
    };
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// The agent's `coordinators` list: its own region's first, then the others in region
/// order.
pub(super) fn agent_coordinators(quic: &[SocketAddr], own: usize) -> String {
    let order = std::iter::once(own).chain((0..quic.len()).filter(|&j| j != own));
    let quoted: Vec<String> = order.map(|j| format!("\"{}\"", quic[j])).collect();
    format!("coordinators = [{}]", quoted.join(", "))
}

/// Each coordinator's own answer to "who are you": its standing, and the leader's
/// name and term as it sees them. `None` for one that does not answer.
/// `ca_cert`: the CA of coordinators on HTTPS.
pub(super) fn standings(
    urls: &[String],
    token: &str,
    ca_cert: Option<&Path>,
) -> Vec<Option<(Standing, String, i64)>> {
    urls.iter()
        .map(|url| {
            let status: DrStatus = Client::new(url, Some(token.to_string()), ca_cert)
                .ok()?
                .get("/v1/backup-recovery/disaster-recovery/status")
                .ok()?;
            let c = status.coordinators?;
            Some((
                c.standing,
                c.leader.unwrap_or_default(),
                c.term.unwrap_or(0),
            ))
        })
        .collect()
}

/// The summary's lines about the coordinators and etcd.
pub(super) fn summary(
    urls: &[String],
    token: &str,
    state: &HaState,
    dns: &[SocketAddr],
    dir: &Path,
    ca_cert: Option<&Path>,
) -> Vec<String> {
    let answers = standings(urls, token, ca_cert);
    let leader = answers
        .iter()
        .flatten()
        .find(|(s, _, _)| *s == Standing::Leader)
        .map(|(_, name, term)| format!("{name} leads (term {term})"))
        .unwrap_or_else(|| "none leads yet".into());
    let mut lines = vec![format!(
        "Coordinators, one per region on a three-member etcd cluster: {leader}. DRMESH_URL names all three; the CLI passes over one that is down:"
    )];
    for (i, region) in REGIONS.iter().enumerate() {
        let standing = match &answers[i] {
            Some((s, _, _)) => format!("{s:?}").to_uppercase(),
            None => "NOT ANSWERING".into(),
        };
        lines.push(format!(
            "  {region:<10} {:<24} {standing:<9} DNS {}",
            urls[i], dns[i]
        ));
    }
    lines.push(format!(
        "  etcd: {} (data in {})",
        state.endpoints().join(", "),
        dir.join("etcd").display()
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_ports_are_kept_and_missing_ones_picked() {
        let first = HaState::complete(None, &[]).expect("ports");
        assert_eq!(first.etcd.len(), 3);
        assert_eq!(first.http_ports.len(), 2);
        let mut all: Vec<u16> = first
            .etcd
            .iter()
            .flat_map(|m| [m.client, m.peer])
            .chain(first.http_ports.iter().copied())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 8, "{first:?}");
        let again = HaState::complete(Some(first.clone()), &[]).expect("ports");
        assert_eq!(again, first);
        // A coordinator port now taken (--http-port changed to it) is picked again.
        let moved = HaState::complete(Some(first.clone()), &[first.http_ports[0]]).expect("ports");
        assert_eq!(moved.etcd, first.etcd);
        assert!(
            !moved.http_ports.contains(&first.http_ports[0]),
            "{moved:?}"
        );
    }

    #[test]
    fn an_agent_tries_its_own_region_first() {
        let quic: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.2:2", "127.0.0.3:3"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        assert_eq!(
            agent_coordinators(&quic, 1),
            "coordinators = [\"127.0.0.2:2\", \"127.0.0.1:1\", \"127.0.0.3:3\"]"
        );
    }

    #[test]
    fn each_member_names_the_whole_cluster() {
        let state = HaState {
            etcd: vec![
                EtcdPorts { client: 1, peer: 2 },
                EtcdPorts { client: 3, peer: 4 },
                EtcdPorts { client: 5, peer: 6 },
            ],
            http_ports: vec![7, 8],
        };
        let args = member_args(Path::new("/d"), &state, 2);
        let at = |flag: &str| {
            let i = args.iter().position(|a| a == flag).expect(flag);
            args[i + 1].clone()
        };
        assert_eq!(at("--name"), "eu-west-1");
        assert_eq!(at("--data-dir"), "/d/etcd/eu-west-1");
        assert_eq!(at("--listen-client-urls"), "http://127.0.0.1:5");
        assert_eq!(
            at("--initial-cluster"),
            "us-west-2=http://127.0.0.1:2,us-east-1=http://127.0.0.1:4,eu-west-1=http://127.0.0.1:6"
        );
        assert!(store_table(&state, "us-east-1", Duration::from_secs(5)).contains(
            "name = \"us-east-1\"\nendpoints = [\"http://127.0.0.1:1\", \"http://127.0.0.1:3\", \"http://127.0.0.1:5\"]\nleader_ttl = \"5s\""
        ));
    }
}
