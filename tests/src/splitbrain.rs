//! Observers for the failover fault tests: a [`Writer`] that keeps writing to whatever
//! server is the primary now, and a [`Probe`] that asks every server, several times a
//! second, whether it accepts writes. Each runs on its own thread with its own
//! single-threaded tokio runtime, and stops on `stop()`, on drop, or after the maximum
//! duration given at start, whichever comes first.
//!
//! The test's set-up creates the tables on the first primary (before its standbys are
//! made, so they have them too) with [`SETUP_SQL`]: `drmesh_writes` (the Writer's rows)
//! and `drmesh_probe` (the Probe's).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

/// The tables the observers write to; run on the primary before making standbys.
pub const SETUP_SQL: &str = "create table if not exists drmesh_writes (id bigint primary key, at timestamptz default now()); \
create table if not exists drmesh_probe (server text not null, at timestamptz not null default now())";

/// At most this many error messages are kept in a report (the count is complete).
const KEPT_ERRORS: usize = 20;

/// An open connection and the task driving it (aborted when the connection is dropped,
/// so a request stuck on a dead or partitioned server does not linger).
struct Conn {
    client: Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Connects as `postgres` to database `postgres` at `addr` (trust authentication), the
/// whole handshake within `timeout`.
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(timeout);
    let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| format!("connect {addr}: timed out after {timeout:?}"))?
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Conn { client, driver })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A background observer thread: a stop flag and the handle that returns its report.
struct Observer<R> {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<R>>,
}

impl<R: Send + 'static> Observer<R> {
    fn start(name: &str, body: impl FnOnce(Arc<AtomicBool>) -> R + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(flag))
            .expect("start observer thread");
        Observer {
            stop,
            handle: Some(handle),
        }
    }

    fn stop(&mut self) -> R {
        self.stop.store(true, Ordering::SeqCst);
        let handle = self.handle.take().expect("observer stopped once");
        handle
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl<R> Drop for Observer<R> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Timing of a [`Writer`].
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Time between two write attempts.
    pub interval: Duration,
    /// Connection handshake limit.
    pub connect_timeout: Duration,
    /// How long one insert (including a synchronous commit's wait for the standby) may
    /// take before the Writer gives up on it and drops the connection. Measured by the
    /// client, not `statement_timeout`: a server-side cancel during a synchronous
    /// commit's wait reports success for a commit the standby may not have.
    pub statement_timeout: Duration,
    /// The Writer stops by itself after this long.
    pub max_duration: Duration,
}

impl WriterConfig {
    pub fn new(max_duration: Duration) -> Self {
        WriterConfig {
            interval: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(2),
            max_duration,
        }
    }
}

/// What a [`Writer`] saw.
#[derive(Clone, Debug, Default)]
pub struct WriterReport {
    /// Every acknowledged insert: id, when the acknowledgement arrived, which server.
    pub acknowledged: Vec<(u64, Instant, SocketAddr)>,
    /// Attempts that failed (no address, connect, insert or timeout).
    pub errors: usize,
    /// Attempts in all (ids 1..=attempts were tried).
    pub attempts: u64,
    /// The first few error messages, for failure messages.
    pub error_samples: Vec<String>,
}

impl WriterReport {
    /// The first acknowledgement at or after `t`.
    pub fn first_ack_after(&self, t: Instant) -> Option<(Instant, SocketAddr)> {
        self.acknowledged
            .iter()
            .find(|(_, at, _)| *at >= t)
            .map(|(_, at, s)| (*at, *s))
    }

    /// The first acknowledgement by `server` at or after `t`.
    pub fn first_ack_by_after(&self, server: SocketAddr, t: Instant) -> Option<Instant> {
        self.acknowledged
            .iter()
            .find(|(_, at, s)| *at >= t && *s == server)
            .map(|(_, at, _)| *at)
    }

    /// The last acknowledgement before `t`.
    pub fn last_ack_before(&self, t: Instant) -> Option<(Instant, SocketAddr)> {
        self.acknowledged
            .iter()
            .rev()
            .find(|(_, at, _)| *at < t)
            .map(|(_, at, s)| (*at, *s))
    }

    /// Ids acknowledged by `server`.
    pub fn acknowledged_by(&self, server: SocketAddr) -> Vec<u64> {
        self.acknowledged
            .iter()
            .filter(|(_, _, s)| *s == server)
            .map(|(id, _, _)| *id)
            .collect()
    }

    /// Servers that acknowledged at least one write, in order of their first.
    pub fn servers(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for (_, _, s) in &self.acknowledged {
            if !out.contains(s) {
                out.push(*s);
            }
        }
        out
    }
}

/// Inserts one row into `drmesh_writes` every `interval`, with increasing ids, at the
/// address `resolve` returns at that moment (connections are reused while the address is
/// unchanged), and records every acknowledged id.
pub struct Writer {
    observer: Observer<WriterReport>,
}

impl Writer {
    /// Starts with the default timing ([`WriterConfig::new`]).
    pub fn start(
        resolve: impl Fn() -> Option<SocketAddr> + Send + 'static,
        max_duration: Duration,
    ) -> Writer {
        Self::start_with(resolve, WriterConfig::new(max_duration))
    }

    pub fn start_with(
        resolve: impl Fn() -> Option<SocketAddr> + Send + 'static,
        config: WriterConfig,
    ) -> Writer {
        let observer = Observer::start("drmesh-writer", move |stop| {
            runtime().block_on(write_loop(resolve, config, stop))
        });
        Writer { observer }
    }

    /// Stops the Writer and returns what it saw.
    pub fn stop(mut self) -> WriterReport {
        self.observer.stop()
    }
}

async fn write_loop(
    resolve: impl Fn() -> Option<SocketAddr>,
    config: WriterConfig,
    stop: Arc<AtomicBool>,
) -> WriterReport {
    let mut report = WriterReport::default();
    let mut conn: Option<(SocketAddr, Conn)> = None;
    let started = Instant::now();
    let mut next = started;
    let note = |report: &mut WriterReport, e: String| {
        report.errors += 1;
        if report.error_samples.len() < KEPT_ERRORS {
            report.error_samples.push(e);
        }
    };
    while !stop.load(Ordering::SeqCst) && started.elapsed() < config.max_duration {
        let now = Instant::now();
        if next > now {
            tokio::time::sleep(next - now).await;
        }
        // After a slow attempt, carry on at the normal pace rather than catch up.
        next = Instant::now().max(next) + config.interval;
        report.attempts += 1;
        let id = report.attempts;
        let Some(addr) = resolve() else {
            note(&mut report, format!("write {id}: no address"));
            continue;
        };
        if conn.as_ref().map(|(a, _)| *a) != Some(addr) {
            conn = None;
            match connect(addr, config.connect_timeout).await {
                Ok(c) => conn = Some((addr, c)),
                Err(e) => {
                    note(&mut report, format!("write {id}: {e}"));
                    continue;
                }
            }
        }
        let Some((_, c)) = conn.as_ref() else {
            continue;
        };
        let id_sql = i64::try_from(id).expect("id fits i64");
        let params: [&(dyn ToSql + Sync); 1] = [&id_sql];
        let insert = c
            .client
            .execute("insert into drmesh_writes (id) values ($1)", &params);
        match tokio::time::timeout(config.statement_timeout, insert).await {
            Ok(Ok(_)) => report.acknowledged.push((id, Instant::now(), addr)),
            Ok(Err(e)) => {
                note(&mut report, format!("write {id} to {addr}: {e}"));
                conn = None;
            }
            Err(_) => {
                note(
                    &mut report,
                    format!(
                        "write {id} to {addr}: no answer within {:?}",
                        config.statement_timeout
                    ),
                );
                conn = None;
            }
        }
    }
    report
}

/// Timing of a [`Probe`].
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Time between the starts of two rounds.
    pub interval: Duration,
    /// Connection handshake limit (≤ 300 ms: a partitioned server must not stall rounds).
    pub connect_timeout: Duration,
    /// Limit for one server's write transaction.
    pub statement_timeout: Duration,
    /// The Probe stops by itself after this long.
    pub max_duration: Duration,
}

impl ProbeConfig {
    pub fn new(max_duration: Duration) -> Self {
        ProbeConfig {
            interval: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(300),
            statement_timeout: Duration::from_millis(500),
            max_duration,
        }
    }
}

/// One probe round: all servers asked at once.
#[derive(Clone, Debug)]
pub struct ProbeRound {
    pub start: Instant,
    pub end: Instant,
    /// The servers that committed a write in this round.
    pub accepted: Vec<SocketAddr>,
}

/// What a [`Probe`] saw.
#[derive(Clone, Debug, Default)]
pub struct ProbeReport {
    pub servers: Vec<SocketAddr>,
    pub rounds: Vec<ProbeRound>,
}

impl ProbeReport {
    /// Rounds in which two or more servers accepted writes: a split brain.
    pub fn overlaps(&self) -> Vec<ProbeRound> {
        self.rounds
            .iter()
            .filter(|r| r.accepted.len() >= 2)
            .cloned()
            .collect()
    }

    /// The start of the first round in which `server` accepted a write.
    pub fn first_accepted(&self, server: SocketAddr) -> Option<Instant> {
        self.rounds
            .iter()
            .find(|r| r.accepted.contains(&server))
            .map(|r| r.start)
    }

    /// The end of the last round in which `server` accepted a write.
    pub fn last_accepted(&self, server: SocketAddr) -> Option<Instant> {
        self.rounds
            .iter()
            .rev()
            .find(|r| r.accepted.contains(&server))
            .map(|r| r.end)
    }

    /// How many rounds `server` accepted writes in.
    pub fn accepted_rounds(&self, server: SocketAddr) -> usize {
        self.rounds
            .iter()
            .filter(|r| r.accepted.contains(&server))
            .count()
    }
}

/// Every `interval`, asks every server at once whether it accepts writes: a transaction
/// with `SET LOCAL synchronous_commit = local` (so a primary that lost its synchronous
/// standby still answers) that inserts into `drmesh_probe` and commits.
pub struct Probe {
    observer: Observer<ProbeReport>,
}

impl Probe {
    /// Starts with the default timing ([`ProbeConfig::new`]).
    pub fn start(servers: Vec<SocketAddr>, max_duration: Duration) -> Probe {
        Self::start_with(servers, ProbeConfig::new(max_duration))
    }

    pub fn start_with(servers: Vec<SocketAddr>, config: ProbeConfig) -> Probe {
        let observer = Observer::start("drmesh-probe", move |stop| {
            runtime().block_on(probe_loop(servers, config, stop))
        });
        Probe { observer }
    }

    /// Stops the Probe and returns what it saw.
    pub fn stop(mut self) -> ProbeReport {
        self.observer.stop()
    }
}

/// Whether `server` commits a write now; keeps the connection if it did.
async fn accepts_write(server: SocketAddr, conn: &mut Option<Conn>, config: &ProbeConfig) -> bool {
    if conn.is_none() {
        match connect(server, config.connect_timeout).await {
            Ok(c) => *conn = Some(c),
            Err(_) => return false,
        }
    }
    let Some(c) = conn.as_ref() else {
        return false;
    };
    let sql = format!(
        "begin; set local synchronous_commit = local; insert into drmesh_probe (server) values ('{server}'); commit"
    );
    let ok = matches!(
        tokio::time::timeout(config.statement_timeout, c.client.batch_execute(&sql)).await,
        Ok(Ok(()))
    );
    if !ok {
        // An aborted transaction block, a dead server or a stuck request: start afresh.
        *conn = None;
    }
    ok
}

async fn probe_loop(
    servers: Vec<SocketAddr>,
    config: ProbeConfig,
    stop: Arc<AtomicBool>,
) -> ProbeReport {
    let mut report = ProbeReport {
        servers: servers.clone(),
        rounds: Vec::new(),
    };
    let mut conns: Vec<Option<Conn>> = servers.iter().map(|_| None).collect();
    let started = Instant::now();
    let mut next = started;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < config.max_duration {
        let now = Instant::now();
        if next > now {
            tokio::time::sleep(next - now).await;
        }
        next = Instant::now().max(next) + config.interval;
        let start = Instant::now();
        let answers = futures::future::join_all(
            servers
                .iter()
                .zip(conns.iter_mut())
                .map(|(s, c)| accepts_write(*s, c, &config)),
        )
        .await;
        let accepted = servers
            .iter()
            .zip(answers)
            .filter(|(_, ok)| *ok)
            .map(|(s, _)| *s)
            .collect();
        report.rounds.push(ProbeRound {
            start,
            end: Instant::now(),
            accepted,
        });
    }
    report
}

/// Ids the Writer had acknowledged (by any server) that `server` does not have. Panics
/// if `server` cannot be queried.
pub fn missing_writes(report: &WriterReport, server: SocketAddr) -> Vec<u64> {
    let ids: Vec<i64> = report
        .acknowledged
        .iter()
        .map(|(id, _, _)| i64::try_from(*id).expect("id fits i64"))
        .collect();
    let present: Vec<i64> = runtime().block_on(async {
        let conn = connect(server, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("check writes on {server}: {e}"));
        let rows = tokio::time::timeout(
            Duration::from_secs(30),
            conn.client
                .query("select id from drmesh_writes where id = any($1)", &[&ids]),
        )
        .await
        .unwrap_or_else(|_| panic!("check writes on {server}: timed out"))
        .unwrap_or_else(|e| panic!("check writes on {server}: {e}"));
        rows.iter().map(|r| r.get::<_, i64>(0)).collect()
    });
    let present: std::collections::HashSet<i64> = present.into_iter().collect();
    ids.into_iter()
        .filter(|id| !present.contains(id))
        .map(|id| id as u64)
        .collect()
}
