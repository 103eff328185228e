//! The fault campaign (issue 18): N seeded iterations of each fault kind against a mesh
//! whose regions are network namespaces (`drmesh_tests::faults`: two regions, a 500 ms
//! heartbeat, a 5 s lease, BIND 9 moved by RFC 2136, automatic failover on), each with a
//! client writing through the database's DNS name every 50 ms and write probes every
//! 100 ms — one inside the primary's namespace (it reaches the old primary whatever is
//! cut), one outside for the standby. Iterations alternate a synchronous and an
//! asynchronous standby. Fault times are drawn from the iteration's seed.
//!
//! | kind | fault |
//! |---|---|
//! | `crash` | `kill -9` of the primary's postmaster |
//! | `cut` | the primary's region cut off (both links down) |
//! | `asymmetric` | the coordinator ↔ primary link only, for three leases |
//! | `coordinator` | the primary's postmaster killed, then the coordinator `kill -9`ed during the failover and started again |
//! | `frozen` | the primary's agent `SIGSTOP`ed for twice the lease, then `SIGCONT` |
//! | `flapping` | the primary's region cut and healed every 1–4 s for 30 s |
//!
//! Per kind it reports failovers started and completed, moments with two writable
//! primaries (probe rounds in which the old primary took a write after the new one had
//! taken its first), acknowledged writes missing on the final primary (synchronous and
//! asynchronous standby apart), the time from the fault to the first write through the
//! name on the new primary (when the name moved), and the longest stretch without an
//! acknowledged write after the fault (median, p95, worst). The client sits in the root
//! namespace beside the coordinator: an asymmetric cut takes the primary from it too.
//!
//!   drmesh-fault-campaign [--iterations N] [--kinds crash,cut,…] [--seed S]
//!
//! Needs root (namespaces) and the workspace binaries (`cargo build --workspace --bins`).
//! Every loop is bounded: an iteration gives up after a few minutes and is reported as
//! failed, and the campaign goes on.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use drmesh_tests::faults::{FaultMesh, FaultOptions};
use drmesh_tests::splitbrain::{missing_writes, Probe, ProbeReport, Writer, WriterReport};

const KINDS: [&str; 6] = [
    "crash",
    "cut",
    "asymmetric",
    "coordinator",
    "frozen",
    "flapping",
];

/// The mesh's lease (FaultOptions' default).
const LEASE: Duration = Duration::from_secs(5);

#[derive(Parser)]
struct Args {
    /// Iterations per fault kind.
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Which kinds, comma-separated (default: all six).
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// The campaign's seed (default: from the clock); each iteration's is derived from
    /// it, the kind and the iteration's number, and printed.
    #[arg(long)]
    seed: Option<u64>,
}

/// SplitMix64: a small, seedable generator (fault times only; nothing cryptographic).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration drawn uniformly from `lo..hi`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi - lo).as_millis().max(1) as u64;
        lo + Duration::from_millis(self.next() % span)
    }
}

/// What one iteration saw.
#[derive(Default)]
struct Outcome {
    started: usize,
    completed: usize,
    two_writable: usize,
    lost: usize,
    /// From the fault to the first write through the name on the new primary, when the
    /// name moved to it.
    first_on_new: Option<Duration>,
    /// The longest stretch without an acknowledged write, from the fault on.
    gap: Duration,
    note: String,
}

/// Polls the DR status (never panicking: the coordinator may be down) and remembers
/// every failover id and its last status.
struct Watcher {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<String, String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(url: String, token: String) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let (s, m) = (stop.clone(), seen.clone());
        let handle = std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(2))
                .build();
            let started = Instant::now();
            while !s.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(600) {
                let answer = agent
                    .get(&url)
                    .set("Authorization", &format!("Bearer {token}"))
                    .call()
                    .ok()
                    .and_then(|r| r.into_json::<serde_json::Value>().ok());
                if let Some(v) = answer {
                    if let (Some(id), Some(status)) = (
                        v["failover"]["failoverId"].as_str(),
                        v["failover"]["status"].as_str(),
                    ) {
                        m.lock().unwrap().insert(id.to_string(), status.to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Watcher {
            stop,
            seen,
            handle: Some(handle),
        }
    }

    fn running(&self) -> bool {
        self.seen
            .lock()
            .unwrap()
            .values()
            .any(|s| s == "INITIATED" || s == "IN_PROGRESS")
    }

    fn any(&self) -> bool {
        !self.seen.lock().unwrap().is_empty()
    }

    fn stop(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let seen = self.seen.lock().unwrap();
        (
            seen.len(),
            seen.values().filter(|s| *s == "COMPLETED").count(),
        )
    }
}

/// Waits (bounded) until no failover runs, once one has been seen or `grace` passed.
fn settle(w: &Watcher, grace: Duration, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if (w.any() || start.elapsed() > grace) && !w.running() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Probe rounds in which `old` took a write after `new` had taken its first: both were
/// writable then.
fn two_writable(
    inside: &ProbeReport,
    outside: &ProbeReport,
    old: SocketAddr,
    new: SocketAddr,
) -> usize {
    let overlaps = inside.overlaps().len() + outside.overlaps().len();
    let Some(first_new) = outside.first_accepted(new) else {
        return overlaps;
    };
    overlaps
        + inside
            .rounds
            .iter()
            .filter(|r| r.accepted.contains(&old) && r.end > first_new)
            .count()
}

/// The longest stretch without an acknowledged write, from the fault to `end`.
fn longest_gap(writes: &WriterReport, fault: Instant, end: Instant) -> Duration {
    let mut acks: Vec<Instant> = writes
        .acknowledged
        .iter()
        .map(|(_, at, _)| *at)
        .filter(|at| *at >= fault)
        .collect();
    acks.sort();
    let mut prev = fault;
    let mut worst = Duration::ZERO;
    for at in acks.iter().copied().chain(std::iter::once(end)) {
        worst = worst.max(at.saturating_duration_since(prev));
        prev = at;
    }
    worst
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

fn one(kind: &str, synchronous: bool, rng: &mut Rng) -> Outcome {
    let mut fm = FaultMesh::start(FaultOptions {
        synchronous,
        ..FaultOptions::default()
    });
    let (old, new) = (fm.db(0), fm.db(1));
    let limit = Duration::from_secs(240);
    let writer = Writer::start(fm.resolver(), limit);
    let inside = fm
        .topo
        .in_ns(&fm.regions[0], || Probe::start(vec![old], limit));
    let outside = Probe::start(vec![new], limit);
    let watcher = Watcher::start(
        fm.mesh.url("/v1/backup-recovery/disaster-recovery/status"),
        fm.mesh.admin_token.clone(),
    );
    std::thread::sleep(rng.between(Duration::from_secs(1), Duration::from_secs(4)));
    let fault = Instant::now();
    let mut note = String::new();
    let region = fm.regions[0].clone();
    match kind {
        "crash" => {
            fm.crash_postgres(0);
            settle(&watcher, Duration::from_secs(30), Duration::from_secs(120));
        }
        "cut" => {
            fm.topo.cut(&region);
            settle(&watcher, Duration::from_secs(30), Duration::from_secs(120));
        }
        "asymmetric" => {
            fm.topo.cut_control(&region);
            std::thread::sleep(LEASE * 3);
            fm.topo.heal(&region);
            settle(&watcher, Duration::from_secs(5), Duration::from_secs(120));
        }
        "coordinator" => {
            fm.crash_postgres(0);
            // Into the failover, then a kill -9 and a restart after a random pause.
            let begun = Instant::now();
            while !watcher.running() && begun.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(rng.between(Duration::ZERO, Duration::from_millis(1500)));
            let down = rng.between(Duration::ZERO, Duration::from_secs(3));
            note = format!("coordinator down {} ms", down.as_millis());
            fm.mesh
                .restart_coordinator_with(|_| std::thread::sleep(down));
            settle(&watcher, Duration::from_secs(30), Duration::from_secs(150));
        }
        "frozen" => {
            let pid = fm.agents[0].as_ref().expect("the primary's agent").pid();
            signal(pid, nix::sys::signal::Signal::SIGSTOP);
            std::thread::sleep(LEASE * 2);
            signal(pid, nix::sys::signal::Signal::SIGCONT);
            settle(&watcher, Duration::from_secs(10), Duration::from_secs(120));
        }
        "flapping" => {
            let until = Instant::now() + Duration::from_secs(30);
            let mut flaps = 0;
            while Instant::now() < until {
                fm.topo.cut(&region);
                std::thread::sleep(rng.between(Duration::from_secs(1), Duration::from_secs(4)));
                fm.topo.heal(&region);
                flaps += 1;
                std::thread::sleep(rng.between(Duration::from_secs(1), Duration::from_secs(4)));
            }
            note = format!("{flaps} cuts");
            settle(&watcher, Duration::from_secs(10), Duration::from_secs(120));
        }
        other => panic!("unknown fault kind {other}"),
    }
    // A few more seconds of writes wherever the name points now.
    std::thread::sleep(Duration::from_secs(2));
    let end = Instant::now();
    let writes = writer.stop();
    let (inside, outside) = (inside.stop(), outside.stop());
    let (started, completed) = watcher.stop();
    // The final primary: where the name points.
    let answer = fm.bind.answer();
    let last = if answer.contains(&new.ip()) { new } else { old };
    let lost = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        missing_writes(&writes, last).len()
    }))
    .unwrap_or_else(|_| {
        note.push_str("; the final primary could not be read");
        usize::MAX
    });
    Outcome {
        started,
        completed,
        two_writable: two_writable(&inside, &outside, old, new),
        lost,
        first_on_new: (last == new)
            .then(|| writes.first_ack_by_after(new, fault))
            .flatten()
            .map(|at| at.duration_since(fault)),
        gap: longest_gap(&writes, fault, end),
        note,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() {
    let args = Args::parse();
    let kinds: Vec<String> = if args.kinds.is_empty() {
        KINDS.iter().map(|k| k.to_string()).collect()
    } else {
        args.kinds.clone()
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!("campaign seed {seed}: --seed {seed} repeats these fault times");
    let mut rows = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        let mut outcomes: Vec<(bool, Outcome)> = Vec::new();
        let mut failed = 0;
        for i in 0..args.iterations {
            let iteration_seed = seed ^ ((k as u64 + 1) << 32) ^ i as u64;
            let mut rng = Rng(iteration_seed);
            let synchronous = i % 2 == 0;
            let began = Instant::now();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                one(kind, synchronous, &mut rng)
            }));
            match result {
                Ok(o) => {
                    eprintln!(
                        "{kind} #{} seed {iteration_seed} {} standby: failovers {} started / {} completed, two writable {}, lost {}, first write on the new primary {}, longest write gap {} ms{} ({:.0} s)",
                        i + 1,
                        if synchronous { "sync" } else { "async" },
                        o.started,
                        o.completed,
                        o.two_writable,
                        if o.lost == usize::MAX { "?".to_string() } else { o.lost.to_string() },
                        o.first_on_new.map_or("-".to_string(), |d| format!("{} ms", d.as_millis())),
                        o.gap.as_millis(),
                        if o.note.is_empty() { String::new() } else { format!(" ({})", o.note) },
                        began.elapsed().as_secs_f64()
                    );
                    outcomes.push((synchronous, o));
                }
                Err(_) => {
                    failed += 1;
                    eprintln!(
                        "{kind} #{} seed {iteration_seed}: the iteration failed (see above)",
                        i + 1
                    );
                }
            }
        }
        let sum = |f: &dyn Fn(&Outcome) -> usize| outcomes.iter().map(|(_, o)| f(o)).sum::<usize>();
        let lost = |sync: bool| {
            let v: Vec<usize> = outcomes
                .iter()
                .filter(|(s, _)| *s == sync)
                .map(|(_, o)| o.lost)
                .collect();
            if v.contains(&usize::MAX) {
                format!(
                    "{}+?",
                    v.iter().filter(|l| **l != usize::MAX).sum::<usize>()
                )
            } else {
                v.iter().sum::<usize>().to_string()
            }
        };
        let spread = |mut v: Vec<Duration>| {
            v.sort();
            if v.is_empty() {
                return "-".to_string();
            }
            format!(
                "{} / {} / {}",
                secs(percentile(&v, 0.5)),
                secs(percentile(&v, 0.95)),
                secs(v.last().copied().unwrap_or_default())
            )
        };
        let firsts: Vec<Duration> = outcomes
            .iter()
            .filter_map(|(_, o)| o.first_on_new)
            .collect();
        let gaps: Vec<Duration> = outcomes.iter().map(|(_, o)| o.gap).collect();
        rows.push(format!(
            "| {kind} | {} | {} | {} / {} | {} | {} | {} | {} ({} runs) | {} |",
            outcomes.len(),
            failed,
            sum(&|o| o.started),
            sum(&|o| o.completed),
            sum(&|o| o.two_writable),
            lost(true),
            lost(false),
            spread(firsts.clone()),
            firsts.len(),
            spread(gaps),
        ));
    }
    println!(
        "campaign seed {seed}, {} iterations per kind",
        args.iterations
    );
    println!();
    println!("| fault | iterations | failed to run | failovers started / completed | two writable (probe rounds) | acked writes lost, sync standby | acked writes lost, async standby | fault → first write on the new primary (median / p95 / worst) | longest write gap (median / p95 / worst) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
}
