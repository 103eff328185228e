//! `drmesh backup`, `drmesh backups`, `drmesh pitr`: database backups and point-in-time
//! recovery through the coordinator's REST API.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use drmesh_protocol::api::{BackupAccepted, DatabaseBackup, DrStatus, PitrInfo};
use serde_json::json;

use crate::client::Client;
use crate::{fmt_bytes, print_json, Output};

const DB: &str = "/v1/backup-recovery/database";

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackupKind {
    Full,
    Incr,
    /// `pg_dump -Fc` into the repository.
    Logical,
}

#[derive(Args)]
pub struct BackupArgs {
    #[arg(value_enum)]
    kind: BackupKind,
    #[command(flatten)]
    opts: BackupOpts,
}

/// What starting a backup takes besides its kind (database and document backups alike).
#[derive(Args)]
pub struct BackupOpts {
    /// A tag, as key=value (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Wait until the backup has finished (exit 1 if it failed).
    #[arg(long)]
    pub wait: bool,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Subcommand)]
pub enum BackupsCmd {
    /// Database backups, newest first.
    List {
        /// IN_PROGRESS, COMPLETED, FAILED or VERIFIED.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// One backup: status, progress, LSNs, sizes.
    Show {
        id: String,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Subcommand)]
pub enum PitrCmd {
    /// Whether an instant can be recovered, from which backup and WAL.
    Info {
        /// RFC 3339, e.g. 2024-01-15T14:30:00Z.
        timestamp: String,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Recover into a target environment (e.g. staging, forensics) of an agent.
    Restore {
        /// RFC 3339, e.g. 2024-01-15T14:30:00Z.
        #[arg(long)]
        time: String,
        #[arg(long)]
        environment: String,
        /// The base backup (default: the newest that ended before --time).
        #[arg(long)]
        backup: Option<String>,
        /// Wait until the server there accepts connections.
        #[arg(long)]
        wait: bool,
    },
}

pub(crate) fn tags(list: &[String]) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut map = serde_json::Map::new();
    for t in list {
        let (k, v) = t
            .split_once('=')
            .with_context(|| format!("tag {t:?}: use key=value"))?;
        map.insert(k.to_string(), json!(v));
    }
    Ok(map)
}

/// Polls `fetch` until `done` says so, with a spinner on a terminal.
pub(crate) fn poll<T>(
    what: &str,
    mut fetch: impl FnMut() -> anyhow::Result<T>,
    done: impl Fn(&T) -> Option<String>,
    progress: impl Fn(&T) -> (f32, String),
) -> anyhow::Result<T> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}% {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    });
    let started = Instant::now();
    loop {
        let current = fetch()?;
        if done(&current).is_some() {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            return Ok(current);
        }
        if let Some(b) = &bar {
            let (pct, message) = progress(&current);
            b.set_position(pct as u64);
            b.set_message(format!("{what}: {message}"));
        }
        if started.elapsed() > Duration::from_secs(24 * 3600) {
            bail!("{what}: still running after a day; stopped waiting");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn print_backup(b: &DatabaseBackup) {
    println!("{}  {:?}  {}", b.backup_id, b.status, b.backup_type);
    println!("  agent        {} ({})", b.agent_id, b.region);
    println!("  started      {}", b.timestamp.to_rfc3339());
    if let Some(d) = b.duration_ms {
        println!("  duration     {:.1} s", d as f64 / 1000.0);
    }
    if b.status == drmesh_protocol::api::BackupStatus::InProgress {
        println!("  progress     {:.0}% {}", b.progress, b.progress_message);
    }
    if let (Some(start), Some(stop)) = (&b.start_lsn, &b.stop_lsn) {
        println!(
            "  WAL          {start} .. {stop} on timeline {}",
            b.timeline.unwrap_or(0)
        );
    }
    if let (Some(read), Some(stored)) = (b.bytes_read, b.bytes_stored) {
        println!("  read/stored  {} / {}", fmt_bytes(read), fmt_bytes(stored));
    }
    if let Some(e) = &b.error {
        println!("  error        {e}");
    }
}

pub fn backup(client: &Client, args: BackupArgs) -> anyhow::Result<()> {
    let BackupArgs { kind, opts: args } = args;
    let (path, body) = match kind {
        BackupKind::Full => ("full", json!({ "tags": tags(&args.tags)? })),
        BackupKind::Incr => ("incremental", json!({ "tags": tags(&args.tags)? })),
        BackupKind::Logical => (
            "full",
            json!({ "tags": tags(&args.tags)?, "type": "logical" }),
        ),
    };
    let accepted: BackupAccepted = client.post(&format!("{DB}/backup/{path}"), &body)?;
    if !args.wait {
        match args.output {
            Output::Json => print_json(&accepted)?,
            Output::Text => println!(
                "{} accepted on {} (about {})",
                accepted.backup_id, accepted.agent_id, accepted.estimated_duration
            ),
        }
        return Ok(());
    }
    let id = accepted.backup_id.clone();
    let done = poll(
        &id,
        || client.get::<DatabaseBackup>(&format!("{DB}/backups/{id}")),
        |b| (b.status != drmesh_protocol::api::BackupStatus::InProgress).then(String::new),
        |b| (b.progress, b.progress_message.clone()),
    )?;
    match args.output {
        Output::Json => print_json(&done)?,
        Output::Text => print_backup(&done),
    }
    if done.status == drmesh_protocol::api::BackupStatus::Failed {
        bail!("backup {id} failed");
    }
    Ok(())
}

pub fn backups(client: &Client, cmd: BackupsCmd) -> anyhow::Result<()> {
    match cmd {
        BackupsCmd::List { status, output } => {
            let path = match &status {
                Some(s) => format!("{DB}/backups?status={s}"),
                None => format!("{DB}/backups"),
            };
            let body: serde_json::Value = client.get(&path)?;
            if output == Output::Json {
                return print_json(&body);
            }
            let list: Vec<DatabaseBackup> =
                serde_json::from_value(body["backups"].clone()).context("read backups")?;
            println!(
                "{:<28} {:<8} {:<12} {:<20} {:>10} {:>10}",
                "BACKUP", "TYPE", "STATUS", "STARTED", "READ", "STORED"
            );
            for b in list {
                println!(
                    "{:<28} {:<8} {:<12} {:<20} {:>10} {:>10}",
                    b.backup_id,
                    b.backup_type,
                    format!("{:?}", b.status).to_uppercase(),
                    b.timestamp.format("%Y-%m-%d %H:%M:%S"),
                    b.bytes_read.map(fmt_bytes).unwrap_or_default(),
                    b.bytes_stored.map(fmt_bytes).unwrap_or_default(),
                );
            }
        }
        BackupsCmd::Show { id, output } => {
            let b: DatabaseBackup = client.get(&format!("{DB}/backups/{id}"))?;
            match output {
                Output::Json => print_json(&b)?,
                Output::Text => print_backup(&b),
            }
        }
    }
    Ok(())
}

pub fn pitr(client: &Client, cmd: PitrCmd) -> anyhow::Result<()> {
    match cmd {
        PitrCmd::Info { timestamp, output } => {
            let info: PitrInfo = client.get(&format!(
                "/v1/backup-recovery/recovery/point-in-time/{}",
                timestamp.replace(' ', "%20").replace('+', "%2B")
            ))?;
            if output == Output::Json {
                return print_json(&info);
            }
            println!(
                "{}: {}",
                info.target_timestamp.to_rfc3339(),
                if info.recoverable {
                    "recoverable"
                } else {
                    "NOT recoverable"
                }
            );
            if let Some(r) = &info.reason {
                println!("  why          {r}");
            }
            if let Some(b) = &info.backup_id {
                println!("  base backup  {b}");
            }
            if let (Some(a), Some(b)) = (&info.wal_start, &info.wal_end) {
                println!("  WAL          {a} .. {b} ({} segments)", info.wal_segments);
            }
            let window = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
            };
            println!(
                "  window       {} .. {}",
                window(info.earliest_recoverable_time),
                window(info.latest_recoverable_time)
            );
            if info.recoverable {
                println!("  estimate     {}", info.estimated_duration);
            }
        }
        PitrCmd::Restore {
            time,
            environment,
            backup,
            wait,
        } => {
            let body = json!({
                "targetTimestamp": time,
                "targetEnvironment": environment,
                "backupId": backup,
            });
            let started: serde_json::Value = client.post(
                "/v1/backup-recovery/disaster-recovery/point-in-time-recovery",
                &body,
            )?;
            let id = started["recoveryId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            println!("{id} initiated on {}", started["agentId"]);
            if !wait {
                return Ok(());
            }
            let status = poll(
                &id,
                || client.get::<DrStatus>("/v1/backup-recovery/disaster-recovery/status"),
                |s| {
                    s.point_in_time_recovery
                        .as_ref()
                        .filter(|r| {
                            r.recovery_id == id
                                && r.status != drmesh_protocol::api::BackupStatus::InProgress
                        })
                        .map(|_| String::new())
                },
                |s| {
                    s.point_in_time_recovery
                        .as_ref()
                        .map(|r| (r.progress, r.progress_message.clone()))
                        .unwrap_or_default()
                },
            )?;
            let Some(run) = status.point_in_time_recovery else {
                bail!("the recovery disappeared from the status");
            };
            match (&run.outcome, &run.error) {
                (Some(o), _) => println!(
                    "{id} completed: {} on port {} from {}, replayed up to {}",
                    o.data_directory,
                    o.port,
                    o.backup_id,
                    o.recovered_to
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "the backup's end".into())
                ),
                (None, e) => bail!("{id} failed: {}", e.as_deref().unwrap_or("no reason given")),
            }
        }
    }
    Ok(())
}
