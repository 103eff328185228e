//! `drmesh retention show|enforce`: the policies in force and their enforcement through
//! the coordinator.

use clap::Subcommand;
use drmesh_protocol::retention::{RetentionEnforcement, RetentionPolicies, RetentionPolicy};

use crate::client::Client;
use crate::{print_json, Output};

const BASE: &str = "/v1/backup-recovery/retention";

#[derive(Subcommand)]
pub enum RetentionCmd {
    /// The retention policies in force.
    Show {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Apply the retention policies on every agent's repositories: the snapshots no tier
    /// keeps and the WAL no kept base backup needs are removed.
    Enforce {
        /// Say what would go, change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
}

pub fn run(client: &Client, cmd: RetentionCmd) -> anyhow::Result<()> {
    match cmd {
        RetentionCmd::Show { output } => {
            let p: RetentionPolicies = client.get(&format!("{BASE}/policies"))?;
            match output {
                Output::Json => print_json(&p)?,
                Output::Text => {
                    print_policy("database", &p.database);
                    print_policy("documents", &p.documents);
                    println!("enforced  {} (cron, UTC)", p.schedule);
                }
            }
        }
        RetentionCmd::Enforce { dry_run, output } => {
            let path = format!("{BASE}/enforce-policies?dryRun={dry_run}");
            let e: RetentionEnforcement = client.post(&path, &serde_json::json!({}))?;
            match output {
                Output::Json => print_json(&e)?,
                Output::Text => print_enforcement(&e),
            }
            let failed: Vec<String> = e
                .agents
                .iter()
                .flat_map(|a| {
                    let repos = a.repositories.iter().filter_map(move |r| {
                        r.error
                            .as_ref()
                            .map(|e| format!("{} {}: {e}", a.agent_id, r.repository))
                    });
                    a.error
                        .iter()
                        .map(move |e| format!("{}: {e}", a.agent_id))
                        .chain(repos)
                })
                .collect();
            if !failed.is_empty() {
                anyhow::bail!("not enforced everywhere: {}", failed.join("; "));
            }
        }
    }
    Ok(())
}

fn print_policy(kind: &str, p: &RetentionPolicy) {
    println!(
        "{kind:<10} full backups {}, incrementals {}, the newest of each of the last {} weeks; \
         archived: the newest of each of the last {} months and {} years",
        humantime::format_duration(p.full),
        humantime::format_duration(p.incremental),
        p.weekly,
        p.monthly,
        p.yearly
    );
}

fn print_enforcement(e: &RetentionEnforcement) {
    let will = if e.dry_run { "would be " } else { "" };
    for a in &e.agents {
        if let Some(err) = &a.error {
            println!("{}: FAILED: {err}", a.agent_id);
        }
        for r in &a.repositories {
            match (&r.report, &r.error) {
                (Some(rep), _) => {
                    println!(
                        "{} {}: {} kept, {} {will}archived, {} awaiting the archive, {} snapshots and {} WAL segments {will}deleted, {} {will}deleted from the archive{}",
                        a.agent_id,
                        r.repository,
                        rep.kept.len(),
                        rep.archived.len(),
                        rep.awaiting_archive.len(),
                        rep.deleted.len(),
                        rep.wal_deleted.len(),
                        rep.archive_deleted.len(),
                        if r.policy.is_some() { " (the repository's own policy)" } else { "" }
                    );
                    for err in &rep.archive_errors {
                        println!("  not archived: {err}");
                    }
                    let l = &rep.locked;
                    if !l.is_empty() {
                        println!(
                            "  write-once: {} snapshots, {} archived snapshots, {} WAL segments and {} packs stay locked{}",
                            l.snapshots.len(),
                            l.archived.len(),
                            l.wal_segments,
                            l.packs,
                            l.locked_until
                                .map(|t| format!(" until {}", t.to_rfc3339()))
                                .unwrap_or_default()
                        );
                    }
                }
                (None, Some(err)) => println!("{} {}: FAILED: {err}", a.agent_id, r.repository),
                (None, None) => {}
            }
        }
    }
    println!(
        "in all: {} snapshots and {} WAL segments {will}deleted, {} {will}archived, {} awaiting the archive, {} freed",
        e.deleted,
        e.wal_deleted,
        e.archived,
        e.awaiting_archive,
        crate::fmt_bytes(e.bytes_freed)
    );
}
