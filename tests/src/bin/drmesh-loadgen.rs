//! Heartbeat load generator for the coordinator-scale benchmark.
//!
//! Opens N agent connections, each with its own certificate issued from the mesh's CA,
//! heartbeats every `--interval` on each, holds for `--hold`, and reports what the
//! coordinator did meanwhile: agents wrongly marked SUSPECT/DOWN, its CPU and RSS (from
//! /proc), and the p99 heartbeat-arrival-to-registry-update time (from /metrics).
//!
//! It also reports how many of its own agents sent late during the hold: a gap of two
//! intervals or more between two heartbeats of one agent (the coordinator's default
//! `suspect_after`), which is the load generator starving on the shared cores, not the
//! coordinator. An agent wrongly SUSPECT that did not send late was the coordinator's.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use drmesh_protocol::codec::encode;
use drmesh_protocol::pki::{self, Validity};
use drmesh_protocol::tls::{client_config, TlsFiles};
use drmesh_protocol::{
    AgentId, AgentMessage, AgentMessageV1, CoordinatorMessage, CoordinatorMessageV1, FrameDecoder,
    Heartbeat, Hello, Lsn, PgRole, PgStatus, RegionId,
};

#[derive(Parser)]
struct Args {
    /// Number of agent connections.
    #[arg(long)]
    agents: usize,
    /// Coordinator QUIC address.
    #[arg(long)]
    quic: std::net::SocketAddr,
    /// CA directory (ca.pem, ca.key) used to issue the agents' certificates.
    #[arg(long)]
    ca_dir: PathBuf,
    /// Where the agent certificates go (reused between runs).
    #[arg(long)]
    cert_dir: PathBuf,
    /// Coordinator REST base URL and an admin token, to read /metrics.
    #[arg(long)]
    url: String,
    #[arg(long, env = "DRMESH_TOKEN", hide_env_values = true)]
    token: String,
    /// The coordinator's PID, to read its CPU time and RSS.
    #[arg(long)]
    coordinator_pid: u32,
    #[arg(long, default_value = "500ms")]
    interval: humantime::Duration,
    #[arg(long, default_value = "60s")]
    hold: humantime::Duration,
    /// Handshakes in flight at once while ramping up.
    #[arg(long, default_value_t = 64)]
    ramp_concurrency: usize,
    /// An etcd member's metrics URL (`http://HOST:PORT/metrics`): its committed writes
    /// (`etcd_mvcc_put_total` + `etcd_mvcc_txn_total`) over the hold are reported.
    #[arg(long)]
    etcd_metrics: Option<String>,
    /// Freezes this whole process (SIGSTOP, then SIGCONT from a child) this many times
    /// during the hold, evenly spaced: every simulated agent falls silent at once, as
    /// when a network blip cuts the coordinator off for a moment, and then all answer
    /// together. Reported as `freezes` and, like any stall, in `lateWakeups`.
    #[arg(long, default_value_t = 0)]
    freezes: u32,
    /// How long each freeze lasts; keep it under `suspect_after` minus one interval,
    /// or the agents are rightly SUSPECT.
    #[arg(long, default_value = "300ms")]
    freeze_for: humantime::Duration,
}

/// Stops this process for `for_` and lets a child resume it (we cannot while stopped).
fn freeze(for_: Duration) -> anyhow::Result<()> {
    let pid = std::process::id();
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "kill -STOP {pid}; sleep {:.3}; kill -CONT {pid}",
            for_.as_secs_f64()
        ))
        .spawn()
        .context("start the freezing shell")?;
    Ok(())
}

/// etcd's committed writes so far, from its metrics.
fn etcd_writes(url: &str) -> anyhow::Result<f64> {
    let text = ureq::get(url).call()?.into_string()?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(name, _)| *name == "etcd_mvcc_put_total" || *name == "etcd_mvcc_txn_total")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct ProcSample {
    cpu_ticks: u64,
    rss_kib: u64,
    at: Instant,
}

fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is [0]; utime is [11], stime [12].
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok(ProcSample {
        cpu_ticks: utime + stime,
        rss_kib,
        at: Instant::now(),
    })
}

/// The UDP sockets bound to `port` (the coordinator's QUIC socket), from /proc/net/udp
/// and udp6: the bytes queued in their receive buffers now (`rx_queue`, counted as the
/// kernel charges them against the buffer), and the datagrams dropped so far because
/// the buffer was full.
#[derive(Default, Clone, Copy)]
struct UdpSocketState {
    rx_queue: u64,
    drops: u64,
}

fn udp_socket(port: u16) -> UdpSocketState {
    drmesh_coordinator::udp::udp_sockets()
        .iter()
        .filter(|s| s.local_port == port)
        .fold(UdpSocketState::default(), |acc, s| UdpSocketState {
            rx_queue: acc.rx_queue + s.rx_queue,
            drops: acc.drops + s.drops,
        })
}

/// Time the hypervisor took from this machine's CPUs so far (steal, /proc/stat), in ms.
fn steal_ms() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            line.split_whitespace().nth(8)?.parse::<u64>().ok()
        })
        .map_or(0, |ticks| ticks * 10)
}

/// What a thread of its own saw every [`WATCH_EVERY`] during the hold: the coordinator's
/// socket (its fullest receive queue, and each moment datagrams were dropped), and
/// moments this process was not scheduled (the thread woke late), with the hypervisor's
/// steal meanwhile. A drop at a moment the queue was near the buffer's size is a burst
/// the coordinator could not read in time; a late wake-up with steal is the machine.
#[derive(Default)]
struct Watch {
    peak_rx_queue: u64,
    drop_events: Vec<serde_json::Value>,
    late_wakeups: Vec<serde_json::Value>,
    steal_ms: u64,
}

const WATCH_EVERY: Duration = Duration::from_millis(10);
/// A wake-up this late is reported.
const LATE_WAKEUP: Duration = Duration::from_millis(50);

fn watch(port: u16, holding: &AtomicBool, done: &AtomicBool) -> Watch {
    let mut w = Watch::default();
    let start = Instant::now();
    let steal_start = steal_ms();
    let mut last = udp_socket(port);
    let mut last_steal = steal_start;
    let mut expected = Instant::now() + WATCH_EVERY;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(WATCH_EVERY);
        let now = Instant::now();
        let late = now.saturating_duration_since(expected);
        expected = now + WATCH_EVERY;
        if !holding.load(Ordering::Relaxed) {
            continue;
        }
        let at = (now - start).as_secs_f64();
        let steal = steal_ms();
        if late >= LATE_WAKEUP {
            w.late_wakeups.push(serde_json::json!({
                "atS": (at * 100.0).round() / 100.0,
                "lateMs": late.as_millis() as u64,
                "stealMs": steal - last_steal,
            }));
        }
        last_steal = steal;
        let s = udp_socket(port);
        w.peak_rx_queue = w.peak_rx_queue.max(s.rx_queue);
        if s.drops > last.drops {
            w.drop_events.push(serde_json::json!({
                "atS": (at * 100.0).round() / 100.0,
                "drops": s.drops - last.drops,
                "rxQueueBytes": s.rx_queue.max(last.rx_queue),
            }));
        }
        last = s;
    }
    w.steal_ms = steal_ms() - steal_start;
    w
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Counter values and histogram buckets read from /metrics.
#[derive(Default, Debug)]
struct Scrape {
    suspect: f64,
    down: f64,
    heartbeats: f64,
    buckets: Vec<(f64, f64)>,
}

/// Reads the coordinator's `/metrics` (on HTTPS too: the CA in `ca_dir` is trusted).
fn scrape(url: &str, token: &str, ca_dir: &std::path::Path) -> anyhow::Result<Scrape> {
    let text = drmesh_tests::agent_trusting(Some(&ca_dir.join("ca.pem")))
        .get(&format!("{url}/metrics"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()?
        .into_string()?;
    let mut s = Scrape::default();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if name == "drmesh_agent_transitions_total{to=\"SUSPECT\"}" {
            s.suspect = v;
        } else if name == "drmesh_agent_transitions_total{to=\"DOWN\"}" {
            s.down = v;
        } else if name == "drmesh_heartbeats_total" {
            s.heartbeats = v;
        } else if let Some(rest) = name.strip_prefix("drmesh_heartbeat_update_seconds_bucket{le=\"")
        {
            let le = rest.trim_end_matches("\"}");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            s.buckets.push((le, v));
        }
    }
    Ok(s)
}

/// Upper bound of the bucket holding the q-quantile of the observations between scrapes.
fn quantile(before: &Scrape, after: &Scrape, q: f64) -> f64 {
    let deltas: Vec<(f64, f64)> = after
        .buckets
        .iter()
        .map(|(le, n)| {
            let old = before
                .buckets
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, n)| *n);
            (*le, n - old)
        })
        .collect();
    let total = deltas.last().map_or(0.0, |(_, n)| *n);
    deltas
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(f64::NAN, |(le, _)| *le)
}

/// What every simulated agent shares.
struct Shared {
    quic: std::net::SocketAddr,
    region: RegionId,
    interval: Duration,
    connected: AtomicU64,
    failures: AtomicU64,
    stop: tokio::sync::Notify,
    ramp: tokio::sync::Semaphore,
    /// Set during the hold window.
    holding: AtomicBool,
    /// Agents that sent late at least once during the hold (see the module docs).
    late_agents: AtomicU64,
    /// The longest gap between two heartbeats of one agent during the hold, in ms.
    longest_gap_ms: AtomicU64,
    /// Heartbeats handed to QUIC during the hold.
    sent_in_hold: AtomicU64,
    /// Connection attempts repeated during the ramp.
    reconnects: AtomicU64,
    /// Every agent's connection, for its QUIC statistics around the hold.
    connections: std::sync::Mutex<Vec<quinn::Connection>>,
}

/// The agents' QUIC statistics, summed: what left on the wire and what QUIC's loss
/// recovery did. A heartbeat handed to QUIC on time can still leave late (held by the
/// congestion window after losses); these tell that apart from a late sender.
#[derive(Default, Clone, Copy)]
struct QuicTotals {
    datagrams_sent: u64,
    datagrams_received: u64,
    pings_sent: u64,
    lost_packets: u64,
    congestion_events: u64,
    min_cwnd: u64,
}

impl QuicTotals {
    fn of(connections: &[quinn::Connection]) -> Self {
        let mut t = QuicTotals {
            min_cwnd: u64::MAX,
            ..Default::default()
        };
        for c in connections {
            let s = c.stats();
            t.datagrams_sent += s.frame_tx.datagram;
            t.datagrams_received += s.frame_rx.datagram;
            t.pings_sent += s.frame_tx.ping;
            t.lost_packets += s.path.lost_packets;
            t.congestion_events += s.path.congestion_events;
            t.min_cwnd = t.min_cwnd.min(s.path.cwnd);
        }
        t
    }
}

const JOIN_ATTEMPTS: u32 = 5;

/// A client endpoint on loopback with the coordinator's wide socket buffers.
fn client_endpoint() -> anyhow::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    drmesh_coordinator::transport::widen_buffers(&socket);
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// Connects, says hello and waits for the welcome.
async fn join(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    quic: std::net::SocketAddr,
    id: &AgentId,
    region: &RegionId,
) -> anyhow::Result<quinn::Connection> {
    let conn = endpoint
        .connect_with(config.clone(), quic, "localhost")?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = AgentMessage::V1(AgentMessageV1::Hello(Hello {
        agent_id: id.clone(),
        region: region.clone(),
        version: "loadgen".into(),
        capabilities: vec!["heartbeat".into()],
        mesh_addr: None,
        postgres_addr: None,
        postgres_mesh_addr: None,
    }));
    send.write_all(&encode(&hello)?).await?;
    let mut dec = FrameDecoder::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(m) = dec.next_frame::<CoordinatorMessage>()? {
            match m {
                CoordinatorMessage::V1(CoordinatorMessageV1::Welcome(_)) => return Ok(conn),
                other => bail!("{id}: unexpected {other:?}"),
            }
        }
        match recv.read(&mut buf).await? {
            Some(n) => dec.push(&buf[..n]),
            None => bail!("{id}: no welcome"),
        }
    }
}

async fn run_agent(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    id: AgentId,
) -> anyhow::Result<()> {
    let Shared { quic, interval, .. } = *shared;
    let region = shared.region.clone();
    let (connected, stop, ramp) = (&shared.connected, &shared.stop, &shared.ramp);
    let permit = ramp.acquire().await?;
    // As a real agent does, one that is refused or times out during the ramp tries again
    // after a second (counted: `reconnects`).
    let mut attempt = 1;
    let conn = loop {
        match join(&endpoint, &config, quic, &id, &region).await {
            Ok(conn) => break conn,
            Err(e) if attempt < JOIN_ATTEMPTS => {
                eprintln!("{id}: attempt {attempt}: {e:#}");
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    drop(permit);
    if let Ok(mut all) = shared.connections.lock() {
        all.push(conn.clone());
    }
    connected.fetch_add(1, Ordering::SeqCst);
    // Spread the agents' ticks over the interval, as real agents started at random times.
    let offset = Duration::from_millis(rand_offset(&id, interval));
    tokio::time::sleep(offset).await;
    let mut ticker = tokio::time::interval(interval);
    let mut seq = 0;
    let mut last_sent: Option<Instant> = None;
    let mut was_late = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.notified() => break,
            e = conn.closed() => bail!("{id}: connection closed: {e}"),
        }
        let now = Instant::now();
        if let (Some(last), true) = (last_sent, shared.holding.load(Ordering::Relaxed)) {
            let gap = now.duration_since(last);
            shared
                .longest_gap_ms
                .fetch_max(gap.as_millis() as u64, Ordering::Relaxed);
            if gap >= interval * 2 && !was_late {
                was_late = true;
                shared.late_agents.fetch_add(1, Ordering::Relaxed);
            }
        }
        last_sent = Some(now);
        if shared.holding.load(Ordering::Relaxed) {
            shared.sent_in_hold.fetch_add(1, Ordering::Relaxed);
        }
        seq += 1;
        let hb = AgentMessage::V1(AgentMessageV1::Heartbeat(Heartbeat {
            seq,
            sent_at_ms: unix_ms(),
            postgres: Some(PgStatus {
                role: PgRole::Standby,
                timeline: Some(1),
                lsn: Some(Lsn(seq * 8192)),
                receive_lsn: Some(Lsn(seq * 8192)),
                lag_seconds: Some(0.0),
                server_version: Some(150000),
                error: None,
            }),
            disk_free_bytes: Some(1 << 40),
            last_backup_ids: vec![],
            mesh: None,
            storage: Vec::new(),
        }));
        conn.send_datagram(encode(&hb)?.into())?;
    }
    conn.close(0u32.into(), b"loadgen done");
    Ok(())
}

fn rand_offset(id: &AgentId, interval: Duration) -> u64 {
    let h = id
        .as_str()
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    h % (interval.as_millis() as u64).max(1)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.cert_dir)?;
    let region = RegionId::new("bench-1")?;
    let ca_cert = args.ca_dir.join("ca.pem");
    let mut configs = Vec::with_capacity(args.agents);
    // The QUIC transport of a real agent (agent/src/link.rs): idle timeout and keep-alive.
    let transport = {
        let mut t = quinn::TransportConfig::default();
        let idle = (*args.interval * 20).max(Duration::from_secs(10));
        t.max_idle_timeout(idle.try_into().ok());
        t.keep_alive_interval(Some((*args.interval).max(Duration::from_secs(1))));
        Arc::new(t)
    };
    let t = Instant::now();
    for i in 0..args.agents {
        let id = AgentId::new(format!("load-{i:05}"))?;
        let files = pki::agent_files(&args.cert_dir, &id);
        if !files.cert.exists() {
            pki::issue_agent(&args.ca_dir, &id, &region, Validity::days(7), &files)?;
        }
        let tls = client_config(&TlsFiles {
            ca_cert: ca_cert.clone(),
            cert: files.cert,
            key: files.key,
        })?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(transport.clone());
        configs.push((id, client));
    }
    eprintln!("{} certificates ready in {:?}", args.agents, t.elapsed());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Several client sockets with wide buffers: a real agent has a socket to itself,
        // here 625 share one, and a burst of acknowledgements must not overflow it.
        let endpoints: Vec<quinn::Endpoint> = (0..8)
            .map(|_| client_endpoint())
            .collect::<anyhow::Result<_>>()?;
        let shared = Arc::new(Shared {
            quic: args.quic,
            region: region.clone(),
            interval: *args.interval,
            connected: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            stop: tokio::sync::Notify::new(),
            ramp: tokio::sync::Semaphore::new(args.ramp_concurrency),
            holding: AtomicBool::new(false),
            late_agents: AtomicU64::new(0),
            longest_gap_ms: AtomicU64::new(0),
            sent_in_hold: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            connections: std::sync::Mutex::new(Vec::new()),
        });
        let ramp_start = Instant::now();
        let mut tasks = Vec::new();
        for (i, (id, config)) in configs.into_iter().enumerate() {
            let endpoint = endpoints[i % endpoints.len()].clone();
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = run_agent(shared.clone(), endpoint, config, id).await {
                    shared.failures.fetch_add(1, Ordering::SeqCst);
                    eprintln!("{e:#}");
                }
            }));
        }
        let (connected, failures, stop) = (&shared.connected, &shared.failures, &shared.stop);
        while connected.load(Ordering::SeqCst) + failures.load(Ordering::SeqCst)
            < args.agents as u64
        {
            if ramp_start.elapsed() > Duration::from_secs(600) {
                bail!("ramp-up did not finish in 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ramp_time = ramp_start.elapsed();
        eprintln!(
            "{} connected in {:?} ({} failed)",
            connected.load(Ordering::SeqCst),
            ramp_time,
            failures.load(Ordering::SeqCst)
        );
        // Let the ramp's transitions settle, then measure the hold window.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let url = args.url.clone();
        let token = args.token.clone();
        let ca_dir = args.ca_dir.clone();
        let before = tokio::task::spawn_blocking({
            let (u, t, c) = (url.clone(), token.clone(), ca_dir.clone());
            move || scrape(&u, &t, &c)
        })
        .await??;
        let etcd_url = args.etcd_metrics.clone();
        let etcd_before = match etcd_url.clone() {
            Some(u) => Some(tokio::task::spawn_blocking(move || etcd_writes(&u)).await??),
            None => None,
        };
        let quic_totals = || {
            shared
                .connections
                .lock()
                .map(|all| QuicTotals::of(&all))
                .unwrap_or_default()
        };
        let quic_before = quic_totals();
        let drops_before = udp_socket(args.quic.port()).drops;
        let done = Arc::new(AtomicBool::new(false));
        let watcher = std::thread::spawn({
            let (shared, done, port) = (shared.clone(), done.clone(), args.quic.port());
            move || watch(port, &shared.holding, &done)
        });
        let cpu_before = sample(args.coordinator_pid)?;
        let mut max_rss = cpu_before.rss_kib;
        let hold_end = Instant::now() + *args.hold;
        shared.holding.store(true, Ordering::Relaxed);
        let freeze_every = (args.freezes > 0).then(|| *args.hold / (args.freezes + 1));
        let mut next_freeze = freeze_every.map(|e| Instant::now() + e);
        let mut freezes = 0;
        while Instant::now() < hold_end {
            tokio::time::sleep(Duration::from_secs(1)).await;
            max_rss = max_rss.max(sample(args.coordinator_pid)?.rss_kib);
            if let (Some(at), Some(every)) = (next_freeze, freeze_every) {
                if Instant::now() >= at && freezes < args.freezes {
                    freeze(*args.freeze_for)?;
                    freezes += 1;
                    next_freeze = Some(at + every);
                }
            }
        }
        shared.holding.store(false, Ordering::Relaxed);
        let quic_after = quic_totals();
        let drops_after = udp_socket(args.quic.port()).drops;
        done.store(true, Ordering::Relaxed);
        let watched = watcher.join().unwrap_or_default();
        let cpu_after = sample(args.coordinator_pid)?;
        let etcd_after = match etcd_url {
            Some(u) => Some(tokio::task::spawn_blocking(move || etcd_writes(&u)).await??),
            None => None,
        };
        let after = tokio::task::spawn_blocking(move || scrape(&url, &token, &ca_dir)).await??;
        // `notify_waiters` reaches only the agents waiting at that instant; the rest are
        // stopped outright (the measures are taken).
        stop.notify_waiters();
        tokio::time::sleep(Duration::from_millis(200)).await;
        for t in &tasks {
            t.abort();
        }
        let ticks_per_sec = 100.0; // Linux USER_HZ
        let seconds = cpu_after.at.duration_since(cpu_before.at).as_secs_f64();
        let cores = (cpu_after.cpu_ticks - cpu_before.cpu_ticks) as f64 / ticks_per_sec / seconds;
        let rate = (after.heartbeats - before.heartbeats) / seconds;
        let p99 = quantile(&before, &after, 0.99);
        let p50 = quantile(&before, &after, 0.50);
        let report = serde_json::json!({
            "agents": args.agents,
            "connected": connected.load(Ordering::SeqCst),
            "failed": failures.load(Ordering::SeqCst),
            "rampSeconds": ramp_time.as_secs_f64(),
            "rampReconnects": shared.reconnects.load(Ordering::Relaxed),
            "holdSeconds": seconds,
            "wronglySuspect": after.suspect - before.suspect,
            "wronglyDown": after.down - before.down,
            "etcdWritesPerSecond": etcd_before.zip(etcd_after).map(|(b, a)| (a - b) / seconds),
            "loadgenLateAgents": shared.late_agents.load(Ordering::Relaxed),
            "loadgenLongestGapMs": shared.longest_gap_ms.load(Ordering::Relaxed),
            "coordinatorSocketDrops": drops_after - drops_before,
            "coordinatorPeakRxQueueBytes": watched.peak_rx_queue,
            "coordinatorDropEvents": watched.drop_events,
            "lateWakeups": watched.late_wakeups,
            "stealMsInHold": watched.steal_ms,
            "freezes": freezes,
            "freezeMs": args.freeze_for.as_millis() as u64,
            "loadgenHeartbeatsSent": shared.sent_in_hold.load(Ordering::Relaxed),
            "loadgenDatagramsOnWire": quic_after.datagrams_sent - quic_before.datagrams_sent,
            "loadgenAcksReceived": quic_after.datagrams_received - quic_before.datagrams_received,
            "loadgenPingsSent": quic_after.pings_sent - quic_before.pings_sent,
            "loadgenLostPackets": quic_after.lost_packets - quic_before.lost_packets,
            "loadgenCongestionEvents": quic_after.congestion_events - quic_before.congestion_events,
            "loadgenMinCwnd": quic_after.min_cwnd,
            "heartbeatsPerSecond": rate,
            "coordinatorCpuCores": cores,
            "coordinatorRssMiB": max_rss as f64 / 1024.0,
            "coordinatorPeakRssMiB": peak_rss_kib(args.coordinator_pid) as f64 / 1024.0,
            "updateP50Seconds": p50,
            "updateP99Seconds": p99,
        });
        println!("{report}");
        Ok(())
    })
}
