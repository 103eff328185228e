//! `drmesh documents`: document backups, the documents on disk against the newest one (the
//! runbook's "identify affected documents"), and restores, through the coordinator's REST
//! API.

use anyhow::bail;
use clap::Subcommand;
use drmesh_protocol::api::{
    BackupAccepted, BackupStatus, DocumentBackup, DocumentReport, DocumentRestoreRequest,
    DocumentState, DocumentStatus, DocumentsReport,
};
use serde_json::json;

use crate::client::Client;
use crate::database::{poll, tags, BackupOpts};
use crate::{fmt_bytes, print_json, Output};

const DOCS: &str = "/v1/backup-recovery/documents";

#[derive(Subcommand)]
pub enum DocumentsCmd {
    /// Back up the documents now, into every location.
    Backup(BackupOpts),
    /// Document backups, newest first.
    Backups {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// The documents on disk against the newest document backup: OK, MODIFIED, FAILED
    /// (a file missing, unreadable or damaged) with the restore that brings it back, NEW.
    /// Exits 1 when a document is FAILED.
    Status {
        /// One document (its directory under documents/); default: every one.
        document: Option<String>,
        /// Only the documents in this state: ok, modified, failed, new.
        #[arg(long)]
        status: Option<String>,
        /// Compare contents too (reads every file), not only sizes and times.
        #[arg(long)]
        checksums: bool,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Restore a document backup (all of it, or --path) on the documents agent.
    Restore {
        /// The document backup, e.g. docs_1705329600000_abc123.
        backup: String,
        /// A file or directory inside the backup, e.g. documents/doc-002 (repeatable).
        #[arg(long = "path")]
        paths: Vec<String>,
        /// An absolute directory on the agent's host (default: its restore directory).
        #[arg(long)]
        target: Option<String>,
        /// Wait until the restore has finished (exit 1 if it failed).
        #[arg(long)]
        wait: bool,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
}

pub fn run(client: &Client, cmd: DocumentsCmd) -> anyhow::Result<()> {
    match cmd {
        DocumentsCmd::Backup(BackupOpts {
            tags: t,
            wait,
            output,
        }) => {
            let accepted: BackupAccepted =
                client.post(&format!("{DOCS}/backup"), &json!({ "tags": tags(&t)? }))?;
            if !wait {
                return match output {
                    Output::Json => print_json(&accepted),
                    Output::Text => {
                        println!("{} accepted on {}", accepted.backup_id, accepted.agent_id);
                        Ok(())
                    }
                };
            }
            let id = accepted.backup_id;
            let done = poll(
                &id,
                || client.get::<DocumentBackup>(&format!("{DOCS}/backups/{id}")),
                |b| (b.status != BackupStatus::InProgress).then(String::new),
                |b| (b.progress, b.progress_message.clone()),
            )?;
            match output {
                Output::Json => print_json(&done)?,
                Output::Text => print_backup(&done),
            }
            if done.status == BackupStatus::Failed {
                bail!("backup {id} failed");
            }
        }
        DocumentsCmd::Backups { output } => {
            let body: serde_json::Value = client.get(&format!("{DOCS}/backups"))?;
            if output == Output::Json {
                return print_json(&body);
            }
            let list: Vec<DocumentBackup> = serde_json::from_value(body["backups"].clone())?;
            for b in &list {
                print_backup(b);
            }
        }
        DocumentsCmd::Status {
            document,
            status,
            checksums,
            output,
        } => {
            let (backup, docs) = match &document {
                Some(id) => {
                    let one: DocumentReport =
                        client.get(&format!("/v1/documents/{id}?checksums={checksums}"))?;
                    if output == Output::Json {
                        print_json(&one)?;
                    }
                    (one.backup_id, vec![one.document])
                }
                None => {
                    let mut path = format!("/v1/documents?checksums={checksums}");
                    if let Some(s) = &status {
                        path.push_str(&format!("&status={s}"));
                    }
                    let report: DocumentsReport = client.get(&path)?;
                    if output == Output::Json {
                        print_json(&report)?;
                    } else {
                        println!(
                            "against {} (finished {})",
                            report.backup_id,
                            report.backup_finished_at.to_rfc3339()
                        );
                    }
                    (report.backup_id, report.documents)
                }
            };
            if output == Output::Text {
                print_documents(&backup, &docs);
            }
            let failed = docs
                .iter()
                .filter(|d| d.status == DocumentState::Failed)
                .count();
            if failed > 0 {
                bail!("{failed} document(s) FAILED: restore them as shown");
            }
        }
        DocumentsCmd::Restore {
            backup,
            paths,
            target,
            wait,
            output,
        } => {
            let body = DocumentRestoreRequest {
                paths,
                target_directory: target,
                location: None,
            };
            let accepted: serde_json::Value = client.post(
                &format!("{DOCS}/backups/{backup}/restore"),
                &serde_json::to_value(&body)?,
            )?;
            if !wait {
                return match output {
                    Output::Json => print_json(&accepted),
                    Output::Text => {
                        println!("restore of {backup} accepted");
                        Ok(())
                    }
                };
            }
            let done = poll(
                &backup,
                || client.get::<DocumentBackup>(&format!("{DOCS}/backups/{backup}")),
                |b| {
                    b.last_restore
                        .as_ref()
                        .filter(|r| r.status != BackupStatus::InProgress)
                        .map(|_| String::new())
                },
                |_| (0.0, "restoring".into()),
            )?;
            let Some(restore) = done.last_restore else {
                bail!("restore of {backup}: no outcome");
            };
            match output {
                Output::Json => print_json(&restore)?,
                Output::Text => println!(
                    "{backup}: {:?}, {} files, {} into {}",
                    restore.status,
                    restore.files,
                    fmt_bytes(restore.bytes),
                    restore.target_directory
                ),
            }
            if restore.status == BackupStatus::Failed {
                bail!(
                    "restore of {backup} failed: {}",
                    restore.error.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

fn print_backup(b: &DocumentBackup) {
    let size = b
        .outcome
        .as_ref()
        .map(|o| format!("{} files, {}", o.files, fmt_bytes(o.bytes)))
        .unwrap_or_default();
    println!(
        "{:<28} {:<12} {:<20} {size}",
        b.backup_id,
        format!("{:?}", b.status).to_uppercase(),
        b.timestamp.format("%Y-%m-%d %H:%M:%S"),
    );
    if let Some(e) = &b.error {
        println!("  error: {e}");
    }
}

fn print_documents(backup: &str, docs: &[DocumentStatus]) {
    println!(
        "{:<24} {:<9} {:>6} {:>6}  what",
        "DOCUMENT", "STATUS", "BACKED", "NOW"
    );
    for d in docs {
        let mut what: Vec<String> = Vec::new();
        for (label, list) in [
            ("missing", &d.missing),
            ("unreadable", &d.unreadable),
            ("corrupted", &d.corrupted),
            ("modified", &d.modified),
            ("added", &d.added),
        ] {
            if !list.is_empty() {
                what.push(format!("{label}: {}", list.join(", ")));
            }
        }
        println!(
            "{:<24} {:<9} {:>6} {:>6}  {}",
            d.document_id,
            d.status.as_str(),
            d.files_in_backup,
            d.files_on_disk,
            what.join("; ")
        );
        if let Some(r) = &d.restore {
            println!(
                "  restore: drmesh documents restore {backup} --path {} --target {} --wait",
                r.paths.join(" --path "),
                r.target_directory.as_deref().unwrap_or("DIR")
            );
        }
    }
}
