//! `drmesh`: the operator's command line over the coordinator's REST API, plus the local
//! commands that need no coordinator (`ca`, `quickstart`).

mod archive;
mod ca;
mod client;
mod database;
mod documents;
mod plans;
mod quickstart;
mod repo;
mod retention;
mod verify;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use drmesh_protocol::api::{Alert, CreatedToken, DrStatus, Role};
use serde_json::json;

use crate::client::Client;

#[derive(Parser)]
#[command(version, about = "drmesh: backup and disaster recovery mesh")]
struct Cli {
    /// Coordinator REST URL; several, comma-separated, are tried in turn (any
    /// coordinator answers: a follower forwards writes to the leader).
    #[arg(
        long,
        global = true,
        env = "DRMESH_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    url: String,
    /// API bearer token.
    #[arg(long, global = true, env = "DRMESH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA certificate (PEM) an `https://` coordinator's certificate must chain to
    /// (the mesh's `ca.pem`); without it, the public CAs.
    #[arg(long, global = true, env = "DRMESH_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Copy every record of one state store into another, empty one, and compare
    /// (redb to etcd to move to several coordinators, and back). Stop every coordinator
    /// first.
    Migrate {
        /// `redb:PATH`, `etcd:URL[,URL…]`, or `config:PATH` (the `[store]` of that
        /// coordinator.toml, with its TLS and user).
        #[arg(long)]
        from: String,
        /// `redb:PATH`, `etcd:URL[,URL…]`, or `config:PATH`.
        #[arg(long)]
        to: String,
        /// The etcd key prefix (`[store] prefix`). Default `/drmesh/`.
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Regions, agents, roles, heartbeat ages and replication lag.
    Status {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// List, acknowledge and resolve alerts.
    #[command(subcommand)]
    Alerts(AlertsCmd),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Certificate authority for agents and coordinator.
    #[command(subcommand)]
    Ca(ca::CaCmd),
    /// The coordinators' state store, offline.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Run a whole local mesh in the foreground: CA, coordinator, three regions with
    /// PostgreSQL (one primary, two streaming standbys) and their agents.
    Quickstart(quickstart::Opts),
    /// The backup repository, offline: init, backup, snapshots, restore, verify, export.
    #[command(subcommand)]
    Repo(repo::RepoCmd),
    /// Write a snapshot as a plain tar.gz with MANIFEST.json (same as `repo export`).
    Export(repo::ExportArgs),
    /// The cold archive, offline: list, restore, verify archived snapshots.
    #[command(subcommand)]
    Archive(archive::ArchiveCmd),
    /// Take a database backup now (full, incr or logical) on the primary's agent.
    Backup(database::BackupArgs),
    /// Document backups, the documents on disk against the newest one, restores.
    #[command(subcommand)]
    Documents(documents::DocumentsCmd),
    /// Database backups: list, show.
    #[command(subcommand)]
    Backups(database::BackupsCmd),
    /// Point-in-time recovery: info for an instant, restore into an environment.
    #[command(subcommand)]
    Pitr(database::PitrCmd),
    /// Disaster-recovery plans: create, update, list, show, delete.
    #[command(subcommand)]
    Plans(plans::PlansCmd),
    /// Fail a DR plan's database over to one of its regions (the runbook's seven steps).
    Failover {
        /// The DR plan, e.g. production_dr_plan.
        plan: String,
        /// The region to move the primary to.
        #[arg(long)]
        to: String,
        /// Go ahead even if the replica there is further behind than the plan's RPO.
        #[arg(long)]
        allow_data_loss: bool,
        /// Follow the steps until the failover ends (exit 1 if it failed).
        #[arg(long)]
        wait: bool,
    },
    /// Move a DR plan's primary to one of its regions with no data loss (planned): the
    /// primary stops cleanly, the standby there replays its last WAL and is promoted, and
    /// the old primary rejoins as a standby. Needs both servers up.
    Switchover {
        /// The DR plan, e.g. production_dr_plan.
        plan: String,
        /// The region to move the primary to.
        #[arg(long)]
        to: String,
        /// Follow the steps until the switchover ends (exit 1 if it failed).
        #[arg(long)]
        wait: bool,
    },
    /// Run a FAILED failover again from the step that failed (once its cause is fixed);
    /// what was done stays done.
    FailoverRetry {
        /// The failover, e.g. fo_1705329600000_abc123.
        id: String,
        /// Follow the steps until the failover ends (exit 1 if it failed).
        #[arg(long)]
        wait: bool,
    },
    /// Say that a server a failover waits on was stopped by hand (its agent cannot fence
    /// it): step 2 goes on. Without --agent, every server the failover waits on.
    FailoverConfirmFenced {
        /// The failover, e.g. fo_1705329600000_abc123.
        id: String,
        /// The agent next to the server stopped by hand.
        #[arg(long)]
        agent: Option<String>,
        /// Follow the steps until the failover ends (exit 1 if it failed).
        #[arg(long)]
        wait: bool,
    },
    /// Abort a running or FAILED failover: it stops at its next step boundary. A server
    /// already promoted stays the primary.
    FailoverAbort {
        /// The failover, e.g. fo_1705329600000_abc123.
        id: String,
    },
    /// Verify a database backup: checksums, file accessibility and a restorability test
    /// on its agent (the runbook's "Verify Database Backup Integrity").
    Verify {
        /// The database backup, e.g. full_1705329600000_abc123.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        backup: Option<String>,
        /// Verify every database backup not verified since it completed,
        /// `verify_concurrency` at a time, and print the summary.
        #[arg(long)]
        all: bool,
        /// Wait until the verification ends and print its verdicts (exit 1 if it failed).
        #[arg(long)]
        wait: bool,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Run a DR test of a plan (the runbook's "Automated DR Testing"): the newest backup
    /// restored on its first failover region's agent, isolated from production, smoke
    /// tests, data consistency, cleanup; the measured RTO against the plan's.
    Drtest {
        /// The DR plan, e.g. production_dr_plan.
        plan: String,
        /// Follow the steps until the test ends (exit 1 if it failed).
        #[arg(long)]
        wait: bool,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Make a region's fenced old primary a standby of the current primary (after a
    /// failover): its leftover WAL archived, `pg_rewind`, then streaming. Its data
    /// directory is kept.
    Rejoin {
        /// The region of the fenced old primary, e.g. us-west-2.
        region: String,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Notification channels: send a test message.
    #[command(subcommand)]
    Notify(NotifyCmd),
    /// Retention policies: show the ones in force, or enforce them on every agent.
    #[command(subcommand)]
    Retention(retention::RetentionCmd),
    /// Backup lifecycle statistics: backups by status, verification pass rates, restore
    /// times, each plan's last DR test against its RTO and newest verified backup
    /// against its RPO.
    Stats {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum NotifyCmd {
    /// Send a test notification to a configured channel ([notify.NAME]).
    Test { channel: String },
}

#[derive(Subcommand)]
enum AlertsCmd {
    List {
        /// CRITICAL, HIGH, MEDIUM or LOW.
        #[arg(long)]
        severity: Option<String>,
        /// OPEN, ACKNOWLEDGED or RESOLVED.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Acknowledge an alert: it records the name of the token used (else its id).
    Ack {
        id: String,
        /// Accepted for older scripts and ignored: the token's name is recorded.
        #[arg(long = "by", hide = true)]
        by: Option<String>,
    },
    /// Resolve an alert: it records the name of the token used (else its id).
    Resolve {
        id: String,
        /// Accepted for older scripts and ignored.
        #[arg(long = "by", hide = true)]
        by: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token; the secret is printed once.
    Create {
        #[arg(long)]
        role: Role,
        #[arg(long)]
        name: Option<String>,
        /// Write straight into a stopped coordinator's state store instead of calling the
        /// API (how the first admin token is made).
        #[arg(long)]
        store: Option<PathBuf>,
        /// How long it is accepted (`90d`, `12h`; 1s to 10 years); default: until revoked.
        #[arg(long, conflicts_with = "store")]
        ttl: Option<String>,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Every token: id, name, role, state, created, expires, last used (never a secret).
    List {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Revoke a token by id (`tok_…`): from then on it is refused (401).
    Revoke { id: String },
}

fn print_tokens(tokens: &[drmesh_protocol::api::TokenInfo]) {
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("-".into(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
    };
    println!(
        "{:<17} {:<20} {:<8} {:<8} {:<20} {:<20} LAST USED",
        "ID", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES"
    );
    for t in tokens {
        println!(
            "{:<17} {:<20} {:<8} {:<8} {:<20} {:<20} {}",
            t.id,
            t.name.as_deref().unwrap_or("-"),
            t.role,
            format!("{:?}", t.state).to_uppercase(),
            when(Some(t.created_at)),
            when(t.expires_at),
            when(t.last_used_at)
        );
    }
}

fn print_verification(v: &drmesh_protocol::api::DatabaseVerification) {
    let show = |x: Option<String>| x.unwrap_or_else(|| "-".into());
    let r = &v.report;
    println!("{}  {}  {:?}", v.backup_id, v.verification_id, v.status);
    println!(
        "  checksum verification  {}",
        show(
            r.checksum_verification
                .map(|x| format!("{x:?}").to_uppercase())
        )
    );
    println!(
        "  file accessibility     {}",
        show(r.file_accessibility.map(|x| format!("{x:?}")))
    );
    println!(
        "  restorability test     {}",
        show(r.restorability_test.map(|x| format!("{x:?}")))
    );
    if let Some(ms) = v.duration_ms {
        println!(
            "  duration               {:.1} s (checksums {} ms, restore {} ms, recovery {} ms, checks {} ms)",
            ms as f64 / 1000.0,
            r.timings.checksum_ms,
            r.timings.restore_ms,
            r.timings.recovery_ms,
            r.timings.checks_ms
        );
    }
    for c in &r.smoke_checks {
        println!(
            "  {} {}: {}",
            if c.passed { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    for d in &r.details {
        println!("  [{}] {}: {}", d.check, d.object, d.reason);
    }
    if let Some(e) = &v.error {
        println!("  error: {e}");
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Follows failover `id` until it ends; prints it, and exits 1 if it failed.
fn wait_for_failover(c: &client::Client, id: &str) -> anyhow::Result<()> {
    use drmesh_protocol::api::FailoverStatus;
    let status: DrStatus = database::poll(
        "failover",
        || c.get("/v1/backup-recovery/disaster-recovery/status"),
        |s: &DrStatus| {
            s.failover
                .as_ref()
                .filter(|f| f.failover_id == id)
                .filter(|f| {
                    matches!(
                        f.status,
                        FailoverStatus::Completed
                            | FailoverStatus::Failed
                            | FailoverStatus::Aborted
                    )
                })
                .map(|f| f.failover_id.clone())
        },
        |s: &DrStatus| {
            let step = s
                .failover
                .as_ref()
                .and_then(|f| f.current_step)
                .unwrap_or(0);
            (f32::from(step) * 100.0 / 7.0, format!("step {step} of 7"))
        },
    )?;
    if let Some(f) = &status.failover {
        print_failover(f);
        if matches!(f.status, FailoverStatus::Failed | FailoverStatus::Aborted) {
            std::process::exit(1);
        }
    }
    Ok(())
}

fn print_status(s: &DrStatus) {
    println!(
        "status: {:?}   primary region: {}   epoch: {}",
        s.status,
        s.primary_region
            .as_ref()
            .map_or("-".to_string(), |r| r.to_string()),
        s.epoch
    );
    println!(
        "{:<14} {:<10} {:<22} {:<8} {:<11} {:>10} {:>4} {:>12} {:>9}",
        "REGION", "HEALTH", "AGENT", "STATE", "ROLE", "HEARTBEAT", "TL", "LAG", "LAG(s)"
    );
    for r in &s.regions {
        for a in &r.agents {
            println!(
                "{:<14} {:<10} {:<22} {:<8} {:<11} {:>10} {:>4} {:>12} {:>9}",
                r.name.to_string(),
                format!("{:?}", r.status).to_uppercase(),
                a.agent_id.to_string(),
                a.state.to_string(),
                if a.fenced {
                    "fenced".to_string()
                } else {
                    a.role.map_or("-".to_string(), |r| r.to_string())
                },
                a.last_heartbeat_age_ms
                    .map_or("-".to_string(), |ms| format!("{ms} ms")),
                a.timeline.map_or("-".to_string(), |t| t.to_string()),
                a.replication_lag_bytes.map_or("-".to_string(), fmt_bytes),
                a.replication_lag_seconds
                    .map_or("-".to_string(), |s| format!("{s:.1}")),
            );
        }
    }
    for h in &s.health_checks {
        println!(
            "\nplan {}: primary {} ({}) {:?}, checked {}",
            h.plan_id,
            h.primary_region
                .as_ref()
                .map_or("-".to_string(), |r| r.to_string()),
            h.primary_agent
                .as_ref()
                .map_or("-".to_string(), |a| a.to_string()),
            h.verdict,
            h.checked_at.format("%H:%M:%S")
        );
        for c in &h.checks {
            println!("  {c}");
        }
        if let Some(a) = &h.automatic_failover {
            println!("  automatic failover: {}", plans::describe_automatic(a));
        }
    }
    if let Some(f) = &s.failover {
        print_failover(f);
    }
    if let Some(t) = &s.dr_test {
        println!();
        print_dr_test(t);
    }
}

/// One line for the test, then one per step.
fn print_dr_test(t: &drmesh_protocol::api::DrTest) {
    let rto = match (t.measured_rto_seconds, t.rto_met) {
        (Some(s), Some(met)) => format!(
            "measured RTO {s:.1} s {} plan RTO {} s",
            if met { "within" } else { "EXCEEDS" },
            t.plan_rto_seconds
        ),
        _ => format!("no measured RTO (plan RTO {} s)", t.plan_rto_seconds),
    };
    println!(
        "DR test {} of {}: {:?} on {} ({}), backup {}, {rto}",
        t.test_id, t.plan_id, t.status, t.agent_id, t.target_region, t.backup_id
    );
    for s in &t.steps {
        println!(
            "  {}. {:<34} {:<8} {:>8}  {}",
            s.number,
            s.name,
            format!("{:?}", s.status).to_uppercase(),
            s.duration_ms
                .map_or("-".to_string(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
            s.message
        );
    }
    if let Some(e) = &t.error {
        println!("  error: {e}");
    }
}

fn print_rejoin(a: &drmesh_protocol::api::RejoinAnswer) {
    for r in &a.rejoined {
        let o = &r.outcome;
        println!(
            "{} in {} is a standby of {} ({}) again, in {:.1} s",
            r.agent_id,
            a.region,
            a.primary_agent_id,
            a.primary_address,
            o.duration_ms as f64 / 1000.0
        );
        println!(
            "  leftover WAL archived: {} segment(s){}",
            o.archived_segments.len(),
            if o.archived_segments.is_empty() {
                String::new()
            } else {
                format!(" ({})", o.archived_segments.join(", "))
            }
        );
        println!(
            "  pg_rewind: {} ({})",
            if o.rewound {
                "rewound"
            } else {
                "nothing to rewind"
            },
            o.rewind_message
        );
        println!(
            "  streaming: {}, timeline {}",
            if o.streaming { "yes" } else { "no" },
            o.timeline.map_or("?".to_string(), |t| t.to_string())
        );
        println!("  server log: {}", o.log_file);
    }
}

fn print_failover(f: &drmesh_protocol::api::FailoverRun) {
    println!(
        "\n{} {} (plan {}) to {}: {}, epoch {}",
        match f.kind {
            drmesh_protocol::api::FailoverKind::Failover => "failover",
            drmesh_protocol::api::FailoverKind::Switchover => "switchover",
        },
        f.failover_id,
        f.plan_id,
        f.target_region,
        serde_json::to_value(f.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        f.epoch.map_or("-".to_string(), |e| e.to_string())
    );
    for step in &f.steps {
        let took = match (step.started_at, step.ended_at) {
            (Some(a), Some(b)) => format!("{:.1} s", (b - a).num_milliseconds() as f64 / 1000.0),
            _ => String::new(),
        };
        println!(
            "  {}. {:<40} {:<8} {:>8}  {}",
            step.number,
            step.name,
            format!("{:?}", step.status).to_uppercase(),
            took,
            step.message
        );
    }
    for c in &f.fenced_by_operator {
        println!(
            "  stopped by hand: {} (confirmed by {} at {})",
            c.agent_id,
            c.by,
            c.at.format("%H:%M:%S")
        );
    }
    if !f.awaiting_confirmation.is_empty() {
        let names: Vec<String> = f
            .awaiting_confirmation
            .iter()
            .map(ToString::to_string)
            .collect();
        println!(
            "  waiting for an operator: stop PostgreSQL on {} by hand, then `drmesh failover-confirm-fenced {}`",
            names.join(", "),
            f.failover_id
        );
    }
    if let Some(lsns) = &f.switchover {
        println!(
            "  old primary stopped at {} (timeline {}); the target replayed up to {}",
            lsns.final_lsn,
            lsns.final_timeline,
            lsns.target_replayed_lsn.as_deref().unwrap_or("-")
        );
    }
    if let Some(e) = &f.error {
        println!("  error: {e}");
    }
    if let Some(a) = &f.aborted {
        println!("  ABORTED: {}", a.message);
    }
}

fn print_alerts(alerts: &[Alert]) {
    println!(
        "{:<28} {:<9} {:<13} {:<13} {:<20} MESSAGE",
        "ID", "SEVERITY", "STATUS", "TYPE", "CREATED"
    );
    for a in alerts {
        println!(
            "{:<28} {:<9} {:<13} {:<13} {:<20} {}",
            a.id,
            format!("{:?}", a.severity).to_uppercase(),
            format!("{:?}", a.status).to_uppercase(),
            a.kind,
            a.created_at.format("%Y-%m-%d %H:%M:%S"),
            a.message
        );
    }
}

/// `drmesh … | head` should end quietly when the reader goes away, as other command-line
/// tools do, not panic on the failed write: take SIGPIPE's default action again (Rust
/// ignores it at start).
#[allow(unsafe_code)]
fn default_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installs the default disposition, no handler code; runs before any thread.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn main() -> anyhow::Result<()> {
    drmesh_repo::bound_allocator_memory();
    default_sigpipe();
    let cli = Cli::parse();
    let client = || Client::new(&cli.url, cli.token.clone(), cli.ca_cert.as_deref());
    match cli.cmd {
        Cmd::Status { output } => {
            let status: DrStatus = client()?.get("/v1/backup-recovery/disaster-recovery/status")?;
            match output {
                Output::Json => print_json(&status)?,
                Output::Text => print_status(&status),
            }
        }
        Cmd::Alerts(AlertsCmd::List {
            severity,
            status,
            output,
        }) => {
            let mut query = Vec::new();
            if let Some(s) = &severity {
                query.push(format!("severity={s}"));
            }
            if let Some(s) = &status {
                query.push(format!("status={s}"));
            }
            let path = format!(
                "/v1/backup-recovery/monitoring/alerts{}{}",
                if query.is_empty() { "" } else { "?" },
                query.join("&")
            );
            let body: serde_json::Value = client()?.get(&path)?;
            match output {
                Output::Json => print_json(&body)?,
                Output::Text => {
                    let alerts: Vec<Alert> =
                        serde_json::from_value(body["alerts"].clone()).context("read alerts")?;
                    print_alerts(&alerts);
                }
            }
        }
        Cmd::Alerts(AlertsCmd::Ack { id, by: _ }) => {
            let alert: Alert = client()?.post(
                &format!("/v1/backup-recovery/monitoring/alerts/{id}/acknowledge"),
                &json!({}),
            )?;
            println!(
                "{} acknowledged by {}",
                alert.id,
                alert.acknowledged_by.as_deref().unwrap_or("?")
            );
        }
        Cmd::Alerts(AlertsCmd::Resolve { id, by: _ }) => {
            let alert: Alert = client()?.post(
                &format!("/v1/backup-recovery/monitoring/alerts/{id}/resolve"),
                &json!({}),
            )?;
            println!(
                "{} resolved by {}",
                alert.id,
                alert.resolved_by.as_deref().unwrap_or("?")
            );
        }
        Cmd::Token(TokenCmd::Create {
            role,
            name,
            store,
            ttl,
            output,
        }) => {
            let created: CreatedToken = match store {
                Some(path) => drmesh_coordinator::admin::create_token(&path, role, name)
                    .with_context(|| {
                        format!("open {} (is the coordinator stopped?)", path.display())
                    })?,
                None => client()?.post(
                    "/v1/tokens",
                    &json!({ "role": role, "name": name, "ttl": ttl }),
                )?,
            };
            match output {
                Output::Json => print_json(&created)?,
                Output::Text => println!("{}", created.token),
            }
        }
        Cmd::Token(TokenCmd::List { output }) => {
            let list: drmesh_protocol::api::TokenList = client()?.get("/v1/tokens")?;
            match output {
                Output::Json => print_json(&list)?,
                Output::Text => print_tokens(&list.tokens),
            }
        }
        Cmd::Token(TokenCmd::Revoke { id }) => {
            let t: drmesh_protocol::api::TokenInfo =
                client()?.post(&format!("/v1/tokens/{id}/revoke"), &json!({}))?;
            println!(
                "{} revoked at {} by {}",
                t.id,
                t.revoked_at.map_or("?".into(), |at| at.to_rfc3339()),
                t.revoked_by.as_deref().unwrap_or("?")
            );
        }
        Cmd::Ca(cmd) => ca::run(cmd)?,
        Cmd::Store(StoreCmd::Migrate {
            from,
            to,
            prefix,
            output,
        }) => {
            let done = drmesh_coordinator::admin::migrate_store(&from, &to, prefix.as_deref())
                .map_err(|e| anyhow::anyhow!("store migrate: {e}"))?;
            match output {
                Output::Json => print_json(&done)?,
                Output::Text => {
                    for (ns, n) in &done.records {
                        println!("{ns:<14} {n:>8}");
                    }
                    println!(
                        "{} records copied from {from} to {to} and compared",
                        done.total()
                    );
                }
            }
        }
        Cmd::Quickstart(opts) => quickstart::run(opts)?,
        Cmd::Repo(cmd) => repo::run(cmd)?,
        Cmd::Export(args) => repo::run_export(args)?,
        Cmd::Archive(cmd) => archive::run(cmd)?,
        Cmd::Backup(args) => database::backup(&client()?, args)?,
        Cmd::Backups(cmd) => database::backups(&client()?, cmd)?,
        Cmd::Documents(cmd) => documents::run(&client()?, cmd)?,
        Cmd::Pitr(cmd) => database::pitr(&client()?, cmd)?,
        Cmd::Plans(cmd) => plans::run(&client()?, cmd)?,
        Cmd::Failover {
            plan,
            to,
            allow_data_loss,
            wait,
        } => {
            let c = client()?;
            let accepted: serde_json::Value = c.post(
                "/v1/backup-recovery/disaster-recovery/failover",
                &json!({ "planId": plan, "targetRegion": to, "allowDataLoss": allow_data_loss }),
            )?;
            let id = accepted["failoverId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            println!("failover {id} initiated: {plan} -> {to}");
            if wait {
                wait_for_failover(&c, &id)?;
            }
        }
        Cmd::Switchover { plan, to, wait } => {
            let c = client()?;
            let accepted: serde_json::Value = c.post(
                "/v1/backup-recovery/disaster-recovery/switchover",
                &json!({ "planId": plan, "targetRegion": to }),
            )?;
            let id = accepted["failoverId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            println!("switchover {id} initiated: {plan} -> {to}");
            if wait {
                wait_for_failover(&c, &id)?;
            }
        }
        Cmd::FailoverRetry { id, wait } => {
            let c = client()?;
            let _: serde_json::Value = c.post(
                &format!("/v1/backup-recovery/disaster-recovery/failover/{id}/retry"),
                &json!({}),
            )?;
            println!("failover {id} retried from its failed step");
            if wait {
                wait_for_failover(&c, &id)?;
            }
        }
        Cmd::FailoverAbort { id } => {
            let aborted: drmesh_protocol::api::FailoverAborted = client()?.post(
                &format!("/v1/backup-recovery/disaster-recovery/failover/{id}/abort"),
                &json!({}),
            )?;
            println!("{}", aborted.message);
        }
        Cmd::FailoverConfirmFenced { id, agent, wait } => {
            let c = client()?;
            let body = match &agent {
                Some(a) => json!({ "agentId": a }),
                None => json!({}),
            };
            let confirmed: drmesh_protocol::api::FenceConfirmed = c.post(
                &format!("/v1/backup-recovery/disaster-recovery/failover/{id}/confirm-fenced"),
                &body,
            )?;
            println!("failover {id}: {}", confirmed.message);
            if wait {
                wait_for_failover(&c, &id)?;
            }
        }
        Cmd::Verify {
            all: true,
            wait,
            output,
            ..
        } => verify::all(&client()?, wait, output)?,
        Cmd::Verify {
            backup,
            wait,
            output,
            ..
        } => {
            let backup = backup.unwrap_or_default();
            use drmesh_protocol::api::{BackupStatus, DatabaseVerification, VerificationAccepted};
            let c = client()?;
            let accepted: VerificationAccepted = c.post(
                &format!("/v1/backup-recovery/verification/verify/{backup}"),
                &json!({}),
            )?;
            if !wait {
                match output {
                    Output::Json => print_json(&accepted)?,
                    Output::Text => println!(
                        "verification {} of {backup} started on {}",
                        accepted.verification_id, accepted.agent_id
                    ),
                }
                return Ok(());
            }
            let v: DatabaseVerification = database::poll(
                "verification",
                || c.get(&format!("/v1/backup-recovery/verification/{backup}")),
                |v: &DatabaseVerification| {
                    (v.verification_id == accepted.verification_id
                        && v.status != BackupStatus::InProgress)
                        .then(|| v.verification_id.clone())
                },
                |v: &DatabaseVerification| (v.progress, v.progress_message.clone()),
            )?;
            match output {
                Output::Json => print_json(&v)?,
                Output::Text => print_verification(&v),
            }
            if v.status != BackupStatus::Completed {
                std::process::exit(1);
            }
        }
        Cmd::Drtest { plan, wait, output } => {
            use drmesh_protocol::api::{DrTest, DrTestAccepted, DrTestStatus};
            let c = client()?;
            let accepted: DrTestAccepted = c.post(
                &format!("/v1/backup-recovery/disaster-recovery/test/{plan}"),
                &json!({}),
            )?;
            if !wait {
                match output {
                    Output::Json => print_json(&accepted)?,
                    Output::Text => println!(
                        "DR test {} of {plan} started on {} in {} ({}), restoring {}",
                        accepted.test_id,
                        accepted.agent_id,
                        accepted.target_region,
                        accepted.target_reason,
                        accepted.backup_id
                    ),
                }
                return Ok(());
            }
            let t: DrTest = database::poll(
                "DR test",
                || {
                    c.get(&format!(
                        "/v1/backup-recovery/disaster-recovery/test/{plan}"
                    ))
                },
                |t: &DrTest| {
                    (t.test_id == accepted.test_id && t.status != DrTestStatus::InProgress)
                        .then(|| t.test_id.clone())
                },
                |t: &DrTest| (t.progress, t.progress_message.clone()),
            )?;
            match output {
                Output::Json => print_json(&t)?,
                Output::Text => print_dr_test(&t),
            }
            if t.status != DrTestStatus::Completed {
                std::process::exit(1);
            }
        }
        Cmd::Rejoin { region, output } => {
            // pg_rewind and the wait for streaming take longer than other calls.
            let answer: drmesh_protocol::api::RejoinAnswer = client()?
                .with_timeout(std::time::Duration::from_secs(15 * 60))
                .post(
                    "/v1/backup-recovery/disaster-recovery/rejoin",
                    &json!({ "region": region }),
                )?;
            match output {
                Output::Json => print_json(&answer)?,
                Output::Text => print_rejoin(&answer),
            }
        }
        Cmd::Stats { output } => verify::stats(&client()?, output)?,
        Cmd::Retention(cmd) => retention::run(&client()?, cmd)?,
        Cmd::Notify(NotifyCmd::Test { channel }) => {
            let _: serde_json::Value = client()?.post(
                "/v1/backup-recovery/notifications/test",
                &json!({ "channel": channel }),
            )?;
            println!("test notification delivered to {channel}");
        }
    }
    Ok(())
}
