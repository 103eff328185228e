//! Failover benchmark (issue 5): time from a fault to the first write accepted through
//! the database's DNS name on the new primary, for (a) the primary's PostgreSQL crashing
//! (`kill -9` of the postmaster, agent alive) and (b) the primary's region cut off (both
//! of its links down: database, agent and all), at a 500 ms heartbeat and a 5 s lease;
//! and (c, issue 19) the region holding the primary, the leading coordinator and one of
//! three etcd members cut off (three regions, a coordinator and an etcd member in each,
//! a 3 s leader lease).
//!
//! Each run builds a fresh mesh in network namespaces (`drmesh_tests::faults`), starts a
//! client that resolves the name at BIND and writes every 50 ms, waits 1.5 s, causes the
//! fault, and waits for the automatic failover to complete. Prints one line per run and a
//! markdown table with the median and the worst.
//!
//!   drmesh-failover-bench [--runs N] [--kinds crash,cut,cut-leader]
//!
//! Needs root (namespaces) and the workspace binaries (`cargo build --workspace --bins`).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use clap::Parser;
use drmesh_tests::faults::{FaultMesh, FaultOptions};
use drmesh_tests::splitbrain::{missing_writes, Writer};

#[derive(Parser)]
struct Args {
    /// Runs per fault kind.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Which faults: `crash`, `cut`, `cut-leader`.
    #[arg(long, value_delimiter = ',', default_value = "crash,cut")]
    kinds: Vec<String>,
}

struct Run {
    ms: u128,
    failover_ms: u128,
    lost: usize,
}

fn one(kind: &str) -> Run {
    let mut fm = FaultMesh::start(if kind == "cut-leader" {
        FaultOptions::three_regions_on_etcd()
    } else {
        FaultOptions::default()
    });
    let new = fm.db(1);
    let writer = Writer::start(fm.resolver(), Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(1500));
    let fault = Instant::now();
    match kind {
        "crash" => fm.crash_postgres(0),
        "cut" => fm.topo.cut(&fm.regions[0]),
        "cut-leader" => {
            fm.topo.cut(&fm.regions[0]);
            fm.mesh.talk_to_the_next_coordinator();
        }
        other => panic!("unknown fault kind {other}: crash, cut or cut-leader"),
    }
    let done = fm.failover_finished(Duration::from_secs(90));
    let failover_ms = fault.elapsed().as_millis();
    assert_eq!(done["failover"]["status"], "COMPLETED", "{done:#}");
    // Give the writer a second on the new primary.
    std::thread::sleep(Duration::from_secs(1));
    let writes = writer.stop();
    // A write already in flight when the fault hits may still be acknowledged by the
    // old primary; the measure is the first one on the new primary.
    let first = writes
        .first_ack_by_after(new, fault)
        .expect("a write through the name on the new primary after the fault");
    if first.duration_since(fault) > SLOW {
        keep_logs(&fm, kind);
    }
    Run {
        ms: first.duration_since(fault).as_millis(),
        failover_ms,
        lost: missing_writes(&writes, new).len(),
    }
}

/// A run slower than this keeps its coordinators' and agents' logs.
const SLOW: Duration = Duration::from_secs(20);

/// Copies the mesh directory's logs to `/tmp/drmesh-failover-bench-<kind>-<ms>/`.
fn keep_logs(fm: &FaultMesh, kind: &str) {
    let to = std::path::PathBuf::from(format!(
        "/tmp/drmesh-failover-bench-{kind}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    ));
    let _ = std::fs::create_dir_all(&to);
    for entry in std::fs::read_dir(fm.mesh.dir.path())
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log" || e == "toml") {
            let _ = std::fs::copy(&path, to.join(entry.file_name()));
        }
    }
    eprintln!("a slow run: its logs are in {}", to.display());
}

fn median(v: &mut [u128]) -> u128 {
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn main() {
    let args = Args::parse();
    let mut table = Vec::new();
    for kind in &args.kinds {
        let mut times = Vec::new();
        let mut lost = 0;
        for i in 0..args.runs {
            let r = one(kind);
            eprintln!(
                "{kind} run {}: first write on the new primary {} ms after the fault (failover record completed at {} ms); acknowledged writes lost: {}",
                i + 1,
                r.ms,
                r.failover_ms,
                r.lost
            );
            times.push(r.ms);
            lost += r.lost;
        }
        let worst = times.iter().copied().max().unwrap_or(0);
        let all = times
            .iter()
            .map(|t| format!("{:.2}", *t as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join(", ");
        let med = median(&mut times);
        table.push((kind.clone(), med, worst, lost, all));
    }
    println!("| fault | runs | median | worst | acknowledged writes lost | every run (s) |");
    println!("|---|---:|---:|---:|---:|---|");
    for (kind, med, worst, lost, all) in table {
        let name = match kind.as_str() {
            "crash" => "(a) primary PostgreSQL killed (kill -9), agent alive",
            "cut" => "(b) primary region cut off (both links down)",
            "cut-leader" => "(c) region of the primary, the leading coordinator and an etcd member cut off (3 coordinators on etcd)",
            k => k,
        };
        println!(
            "| {name} | {} | {:.2} s | {:.2} s | {lost} | {all} |",
            args.runs,
            med as f64 / 1000.0,
            worst as f64 / 1000.0
        );
    }
}
