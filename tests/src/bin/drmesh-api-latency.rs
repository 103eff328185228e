//! REST API latency at a fixed request rate (issue 20's benchmark): GETs of one route
//! at `--rate` requests per second for `--duration`, open loop — each request has its
//! send time fixed in advance, and its latency counts from then, so a slow answer that
//! delays the next ones is charged to them too (no coordinated omission). Requests go
//! out on `--connections` kept-alive connections. Prints one JSON line.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The coordinator's base URL (`http://…` or `https://…`).
    #[arg(long)]
    url: String,
    /// The route, e.g. `/v1/backup-recovery/disaster-recovery/status`.
    #[arg(long)]
    path: String,
    #[arg(long, env = "DRMESH_TOKEN", hide_env_values = true)]
    token: String,
    /// The CA certificate an `https://` coordinator's must chain to.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    rate: u32,
    #[arg(long, default_value = "60s")]
    duration: humantime::Duration,
    /// Connections (each a thread sending one request at a time).
    #[arg(long, default_value_t = 16)]
    connections: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let total = (args.rate as f64 * args.duration.as_secs_f64()).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let url = format!("{}{}", args.url.trim_end_matches('/'), args.path);
    let agent = drmesh_tests::agent_trusting(args.ca_cert.as_deref());
    // One warm-up request per connection: handshakes are not what is measured.
    for _ in 0..args.connections {
        agent
            .get(&url)
            .set("Authorization", &format!("Bearer {}", args.token))
            .call()?;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now() + Duration::from_millis(100);
    let workers: Vec<_> = (0..args.connections)
        .map(|_| {
            let (next, latencies, errors) = (next.clone(), latencies.clone(), errors.clone());
            let (agent, url, token) = (agent.clone(), url.clone(), args.token.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    return;
                }
                let due = start + interval * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let answer = agent
                    .get(&url)
                    .set("Authorization", &format!("Bearer {token}"))
                    .call()
                    .map(|r| r.into_string());
                let took = due.elapsed().as_secs_f64();
                match answer {
                    Ok(Ok(_)) => latencies.lock().unwrap().push(took),
                    _ => {
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let ms = |x: f64| (x * 1e5).round() / 100.0;
    let line = serde_json::json!({
        "url": args.url,
        "path": args.path,
        "rate": args.rate,
        "seconds": (elapsed * 10.0).round() / 10.0,
        "requests": l.len(),
        "errors": errors.load(Ordering::SeqCst),
        "achievedRate": (l.len() as f64 / elapsed * 10.0).round() / 10.0,
        "p50Ms": ms(percentile(&l, 0.50)),
        "p90Ms": ms(percentile(&l, 0.90)),
        "p99Ms": ms(percentile(&l, 0.99)),
        "maxMs": ms(l.last().copied().unwrap_or(f64::NAN)),
    });
    println!("{line}");
    Ok(())
}
