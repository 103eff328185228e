//! `drmesh repo …`: the backup repository without any coordinator or agent — only its
//! URL and key. What an operator uses when the whole mesh is gone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use drmesh_repo::{
    BackupRequest, KeySource, Location, Policies, Progress, RepoOptions, Repository,
    RestoreRequest, VerifyReport, KIND_POSTGRES,
};

use crate::{fmt_bytes, print_json, Output};

/// How long a copy's destination may take to open (or be created).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the repository is and how to unlock it.
#[derive(Args, Clone, Debug)]
pub struct RepoArgs {
    /// Repository URL: an absolute path, file://, s3://bucket/prefix, az://container/prefix
    /// or gs://bucket/prefix.
    #[arg(long, env = "DRMESH_REPO")]
    repo: String,
    /// Object-store option KEY=VALUE, repeatable (endpoint, region, allow_http,
    /// access_key_id, secret_access_key, account_name, access_key, use_emulator, ...).
    #[arg(long = "repo-option", value_name = "KEY=VALUE")]
    repo_options: Vec<String>,
    /// File holding the repository key (at least 16 bytes, e.g. 32 random bytes in hex).
    /// A passphrase is read from DRMESH_REPO_PASSPHRASE instead, never from the command line.
    #[arg(long, env = "DRMESH_REPO_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// The repository is not encrypted: use no key, whatever DRMESH_REPO_KEY_FILE or
    /// DRMESH_REPO_PASSPHRASE say (what a `restore_command` written for a plain
    /// repository says, so the environment PostgreSQL runs in cannot change it).
    #[arg(long, conflicts_with = "key_file")]
    unencrypted: bool,
}

impl RepoArgs {
    fn options(&self) -> anyhow::Result<RepoOptions> {
        let mut location = Location::new(self.repo.clone());
        for kv in &self.repo_options {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--repo-option {kv:?} is not KEY=VALUE"))?;
            location.options.insert(k.to_string(), v.to_string());
        }
        if self.unencrypted {
            return Ok(RepoOptions {
                location,
                key: KeySource::None,
            });
        }
        let passphrase = std::env::var("DRMESH_REPO_PASSPHRASE")
            .ok()
            .filter(|p| !p.is_empty());
        let key = match (&self.key_file, passphrase) {
            (Some(_), Some(_)) => {
                bail!("give either a key file or DRMESH_REPO_PASSPHRASE, not both")
            }
            (Some(f), None) => KeySource::KeyFile(f.clone()),
            (None, Some(p)) => KeySource::Passphrase(p),
            (None, None) => KeySource::None,
        };
        Ok(RepoOptions { location, key })
    }

    /// `restore_command` for a server recovering from this repository without an agent:
    /// `drmesh repo wal-fetch --repo … %f %p`. It names everything it needs (the key
    /// file, or `--unencrypted`), so the environment PostgreSQL starts in cannot change
    /// which repository or key it uses.
    fn wal_fetch_command(&self) -> anyhow::Result<String> {
        use drmesh_repo::shell_quote;
        if std::env::var_os("DRMESH_REPO_PASSPHRASE").is_some() && self.key_file.is_none() {
            bail!(
                "a passphrase cannot be handed to PostgreSQL's restore_command: \
                 restore with --key-file (a passphrase-encrypted repository can be copied \
                 to a key-file one with `drmesh repo` replication)"
            );
        }
        let exe = std::env::current_exe().context("where is this program")?;
        let mut cmd = format!(
            "{} repo wal-fetch --repo {}",
            shell_quote(&exe.to_string_lossy())?,
            shell_quote(&self.repo)?
        );
        for kv in &self.repo_options {
            cmd += &format!(" --repo-option {}", shell_quote(kv)?);
        }
        match &self.key_file {
            Some(k) if !self.unencrypted => {
                let k = std::fs::canonicalize(k).unwrap_or_else(|_| k.clone());
                cmd += &format!(" --key-file {}", shell_quote(&k.to_string_lossy())?);
            }
            _ => cmd += " --unencrypted",
        }
        Ok(cmd + " %f %p")
    }
}

#[derive(Subcommand)]
pub enum RepoCmd {
    /// Create a repository (encrypted when a key file or passphrase is given).
    Init {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Back up a directory.
    Backup {
        #[command(flatten)]
        repo: RepoArgs,
        /// Absolute directory to back up.
        source: PathBuf,
        /// Snapshot id (default: `<prefix>_<epoch-ms>_<6 chars>`).
        #[arg(long)]
        id: Option<String>,
        /// What is backed up: `files` or `documents`.
        #[arg(long, default_value = "files")]
        kind: String,
        /// Tag KEY=VALUE, repeatable.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Parent snapshot (default: the newest of the same kind and source); `latest`
        /// is the newest of --kind, whatever its source.
        #[arg(long, conflicts_with = "full")]
        parent: Option<String>,
        /// Read every file, reusing nothing from a parent.
        #[arg(long)]
        full: bool,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// List snapshots, oldest first.
    Snapshots {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Restore a snapshot, or chosen paths of it, into a directory. With --time, restore
    /// the PostgreSQL base backup that can reach that instant and set the directory up to
    /// recover to it from the archive (start PostgreSQL there to run the recovery).
    Restore {
        #[command(flatten)]
        repo: RepoArgs,
        /// The snapshot id, or `latest` for the newest snapshot. With --time: a base
        /// backup, by default the newest that ended before it; `latest` is the newest
        /// base backup.
        #[arg(required_unless_present = "time")]
        snapshot: Option<String>,
        /// The directory to restore into (new or empty). `--to` is an old name for it.
        #[arg(long, alias = "to")]
        target: PathBuf,
        /// Point-in-time recovery target (RFC 3339, e.g. 2024-01-15T14:30:00Z).
        #[arg(long, conflicts_with = "paths")]
        time: Option<String>,
        /// With --time: the port the restored server listens on.
        #[arg(long, requires = "time")]
        port: Option<u16>,
        /// Restore only this path (file or directory inside the snapshot), repeatable.
        #[arg(long = "path")]
        paths: Vec<String>,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Check a snapshot, or with no snapshot every snapshot in the repository (as
    /// `restic check` does); exits 1 naming each damaged snapshot when anything is
    /// damaged or missing.
    Verify {
        #[command(flatten)]
        repo: RepoArgs,
        /// The snapshot id, or `latest` for the newest (default: every snapshot).
        snapshot: Option<String>,
        /// Also read back and check every chunk and every file's SHA-256.
        #[arg(long)]
        read_data: bool,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Apply the retention policies: remove the snapshots no tier keeps and the WAL no
    /// kept base backup needs; list what is kept and why. With --archive, the monthly
    /// and yearly picks move to the cold archive (encrypted with the repository's key
    /// unless --archive-key-file says otherwise).
    Retention {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        archive: crate::archive::ArchiveArgs,
        /// Say what would go, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// A TOML file with `[database]` and `[documents]` policies (default: the
        /// runbook's: full 30d, incremental 7d, weekly 12, monthly 12, yearly 7).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Apply as of this instant (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<String>,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Bring another repository up to date with this one (what replication rounds do):
    /// every snapshot, WAL and history file it lacks is copied, re-sealed for its key,
    /// and each snapshot verified there. Only what is missing moves; run it again to
    /// finish an interrupted copy.
    Copy {
        #[command(flatten)]
        repo: RepoArgs,
        /// The destination repository's URL (created when missing).
        #[arg(long)]
        to: String,
        /// Object-store option of the destination, KEY=VALUE, repeatable.
        #[arg(long = "to-option", value_name = "KEY=VALUE")]
        to_options: Vec<String>,
        /// The destination's key file (default: the source's key).
        #[arg(long)]
        to_key_file: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Write a snapshot as a plain tar.gz with MANIFEST.json.
    Export(ExportArgs),
    /// For `archive_command`: archive the WAL or history file at PATH (`%p`); exits 0
    /// only once it is durably in the repository. The same command on every host of a
    /// plan archives into the one repository, whichever server is primary.
    WalPush {
        #[command(flatten)]
        repo: RepoArgs,
        path: PathBuf,
    },
    /// For `restore_command`: write archived WAL file NAME (`%f`) to DEST (`%p`); exits
    /// 1 when it is not archived.
    WalFetch {
        #[command(flatten)]
        repo: RepoArgs,
        name: String,
        dest: PathBuf,
    },
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// The snapshot id, or `latest` for the newest.
    snapshot: String,
    /// Output file (default: `<snapshot>.tar.gz` in the current directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory inside the archive that holds the files.
    #[arg(long, default_value = "docs_backup")]
    root: String,
    /// Also write `<out dir>/<snapshot>/MANIFEST.json` beside the archive.
    #[arg(long)]
    manifest_beside: bool,
}

fn parse_tags(tags: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    tags.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--tag {kv:?} is not KEY=VALUE"))
        })
        .collect()
}

/// A progress bar on stderr while `work` runs, when stderr is a terminal.
async fn with_progress<T>(
    progress: Arc<Progress>,
    what: &str,
    work: impl std::future::Future<Output = T>,
) -> T {
    let _bar = drmesh_repo::terminal_bar(progress, what);
    work.await
}

/// One snapshot's verdicts, and each damaged file and missing object.
fn print_verify(report: &VerifyReport) {
    let verdict = |c: &drmesh_repo::Check| {
        format!(
            "{} ({})",
            if c.passed { "PASSED" } else { "FAILED" },
            c.detail
        )
    };
    println!("snapshot {}", report.snapshot);
    println!("  manifest:        {}", verdict(&report.manifest));
    println!("  objects:         {}", verdict(&report.objects));
    if let Some(c) = &report.data {
        println!("  data:            {}", verdict(c));
    }
    if let Some(c) = &report.file_checksums {
        println!("  file checksums:  {}", verdict(c));
    }
    for d in &report.damaged {
        println!("  DAMAGED {}: {}", d.path, d.reason);
    }
    for m in &report.missing_objects {
        println!("  MISSING {m}");
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

pub fn run(cmd: RepoCmd) -> anyhow::Result<()> {
    runtime()?.block_on(run_async(cmd))
}

pub fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    runtime()?.block_on(export(args))
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let repo = Repository::open(&args.repo.options()?).await?;
    let snapshot = repo.resolve(&args.snapshot, None).await?;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{snapshot}.tar.gz")));
    let manifest = repo.export_archive(&snapshot, &out, &args.root).await?;
    if args.manifest_beside {
        let dir = out
            .parent()
            .map(|p| p.join(&snapshot))
            .unwrap_or_else(|| PathBuf::from(&snapshot));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join("MANIFEST.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    println!(
        "{}: {} files, {} → {}",
        snapshot,
        manifest.file_count,
        fmt_bytes(manifest.total_bytes),
        out.display()
    );
    Ok(())
}

async fn run_async(cmd: RepoCmd) -> anyhow::Result<()> {
    match cmd {
        RepoCmd::Init { repo } => {
            let opts = repo.options()?;
            let r = Repository::init(&opts).await?;
            println!(
                "created repository {} at {}{}",
                r.config().id,
                r.backend().describe(),
                if r.is_encrypted() { " (encrypted)" } else { "" }
            );
        }
        RepoCmd::Backup {
            repo,
            source,
            id,
            kind,
            tags,
            parent,
            full,
            output,
        } => {
            let source = std::path::absolute(&source)
                .with_context(|| format!("resolve {}", source.display()))?;
            let r = Repository::open(&repo.options()?).await?;
            let prefix = if kind == "documents" { "docs" } else { "snap" };
            let id = id.unwrap_or_else(|| drmesh_protocol::ids::runbook_id(prefix));
            let mut req = BackupRequest::new(id, kind.clone(), source.clone());
            req.tags = parse_tags(&tags)?;
            req.parent = match (parent, full) {
                (Some(p), _) => Some(r.snapshot(&r.resolve(&p, Some(&kind)).await?).await?),
                (None, true) => None,
                (None, false) => r.latest(&kind, &source).await?,
            };
            let progress = req.progress.clone();
            let snap = with_progress(progress, "backup", r.backup(req)).await?;
            match output {
                Output::Json => print_json(&snap.summary())?,
                Output::Text => println!(
                    "snapshot {} saved: {} files ({}), {} read, {} new, {} stored, parent {}",
                    snap.id,
                    snap.stats.files,
                    fmt_bytes(snap.stats.bytes),
                    fmt_bytes(snap.stats.bytes_read),
                    fmt_bytes(snap.stats.bytes_new),
                    fmt_bytes(snap.stats.bytes_stored),
                    snap.parent.as_deref().unwrap_or("none"),
                ),
            }
        }
        RepoCmd::Snapshots { repo, output } => {
            let r = Repository::open(&repo.options()?).await?;
            let snaps = r.snapshots().await?;
            match output {
                Output::Json => print_json(&snaps)?,
                Output::Text => {
                    println!(
                        "{:<32} {:<10} {:<20} {:>8} {:>11}  SOURCE",
                        "ID", "KIND", "FINISHED", "FILES", "SIZE"
                    );
                    for s in snaps {
                        println!(
                            "{:<32} {:<10} {:<20} {:>8} {:>11}  {}",
                            s.id,
                            s.kind,
                            s.finished_at.format("%Y-%m-%d %H:%M:%S"),
                            s.stats.files,
                            fmt_bytes(s.stats.bytes),
                            s.source.display()
                        );
                    }
                }
            }
        }
        RepoCmd::Restore {
            repo,
            snapshot,
            target,
            time: Some(time),
            port,
            paths: _,
            output,
        } => {
            let r = Repository::open(&repo.options()?).await?;
            let time = drmesh_protocol::instant::parse_instant(&time)?;
            let snapshot = match snapshot {
                Some(s) => Some(r.resolve(&s, Some(KIND_POSTGRES)).await?),
                None => None,
            };
            let progress = Arc::new(Progress::default());
            let bar = drmesh_repo::terminal_bar(progress.clone(), "restore");
            let restored = r
                .restore_for_recovery(&drmesh_repo::RecoveryRequest {
                    backup: snapshot,
                    target,
                    time: Some(time),
                    immediate: false,
                    lsn: None,
                    port,
                    restore_command: repo.wal_fetch_command()?,
                    progress: progress.clone(),
                    check_data: false,
                    durable: true,
                })
                .await;
            drop(bar);
            let restored = restored?;
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "backupId": restored.backup,
                    "target": restored.target,
                    "files": restored.files,
                    "bytes": restored.bytes,
                    "recoveryTargetTime": time,
                }))?,
                Output::Text => println!(
                    "restored base backup {} into {} ({} files, {}), set to recover to {}: \
                     start PostgreSQL there",
                    restored.backup,
                    restored.target.display(),
                    restored.files,
                    fmt_bytes(restored.bytes),
                    time.to_rfc3339()
                ),
            }
        }
        RepoCmd::WalPush { repo, path } => {
            let r = Repository::open(&repo.options()?).await?;
            r.push_wal_file(&path)
                .await
                .with_context(|| format!("wal-push {}", path.display()))?;
        }
        RepoCmd::WalFetch { repo, name, dest } => {
            let r = Repository::open(&repo.options()?).await?;
            if !r.fetch_wal_file(&name, &dest).await? {
                eprintln!("drmesh: {name} is not in the archive");
                std::process::exit(1);
            }
        }
        RepoCmd::Restore {
            repo,
            snapshot,
            target,
            time: None,
            port: _,
            paths,
            output,
        } => {
            let r = Repository::open(&repo.options()?).await?;
            let snapshot = snapshot.context("which snapshot? (or --time for a point in time)")?;
            let snapshot = r.resolve(&snapshot, None).await?;
            let mut req = RestoreRequest::new(snapshot, target);
            req.paths = paths;
            let progress = req.progress.clone();
            let report = with_progress(progress, "restore", r.restore(req)).await?;
            match output {
                Output::Json => print_json(&report)?,
                Output::Text => println!(
                    "restored {} files ({}), {} directories, {} symlinks into {} in {}",
                    report.files,
                    fmt_bytes(report.bytes),
                    report.dirs,
                    report.symlinks,
                    report.target.display(),
                    humantime::format_duration(Duration::from_millis(
                        report.duration.as_millis() as u64
                    )),
                ),
            }
        }
        RepoCmd::Verify {
            repo,
            snapshot: Some(snapshot),
            read_data,
            output,
        } => {
            let r = Repository::open(&repo.options()?).await?;
            let snapshot = r.resolve(&snapshot, None).await?;
            let report = r.verify(&snapshot, read_data).await?;
            match output {
                Output::Json => print_json(&report)?,
                Output::Text => print_verify(&report),
            }
            if !report.passed() {
                bail!("verification of {snapshot} FAILED");
            }
        }
        RepoCmd::Verify {
            repo,
            snapshot: None,
            read_data,
            output,
        } => {
            let r = Repository::open(&repo.options()?).await?;
            let all = r.verify_all(read_data).await?;
            match output {
                Output::Json => print_json(&all)?,
                Output::Text => {
                    for report in &all.snapshots {
                        print_verify(report);
                    }
                    println!(
                        "{} snapshots checked{} in {}: {} damaged",
                        all.snapshots.len(),
                        if read_data { " with their data" } else { "" },
                        humantime::format_duration(Duration::from_millis(
                            all.duration.as_millis() as u64
                        )),
                        all.damaged.len()
                    );
                }
            }
            if !all.passed() {
                bail!(
                    "verification FAILED: {} damaged snapshot(s): {}",
                    all.damaged.len(),
                    all.damaged.join(", ")
                );
            }
        }
        RepoCmd::Retention {
            repo,
            archive,
            dry_run,
            policy,
            now,
            output,
        } => {
            let policies: Policies = match &policy {
                None => Policies::default(),
                Some(f) => {
                    let text = std::fs::read_to_string(f)
                        .with_context(|| format!("read {}", f.display()))?;
                    toml::from_str(&text).with_context(|| format!("{}", f.display()))?
                }
            };
            policies.validate()?;
            let now = match &now {
                Some(t) => drmesh_protocol::instant::parse_instant(t)?,
                None => chrono::Utc::now(),
            };
            let opts = repo.options()?;
            let archive = match archive.options(opts.key.clone())? {
                Some(a) => Some(drmesh_repo::ColdArchive::open(&a).await?),
                None => None,
            };
            let r = Repository::open(&opts).await?;
            let report = r
                .enforce_with_archive(&policies, now, dry_run, archive.as_ref())
                .await?;
            match output {
                Output::Json => print_json(&report)?,
                Output::Text => {
                    let reasons = |k: &drmesh_repo::Kept| {
                        serde_json::to_value(&k.reasons)
                            .map(|v| v.to_string())
                            .unwrap_or_default()
                    };
                    let will = if dry_run { "would be " } else { "" };
                    for k in &report.kept {
                        println!("keep     {}  {}", k.snapshot_id, reasons(k));
                    }
                    for k in &report.awaiting_archive {
                        println!(
                            "archive  {}  {} (kept here until the cold archive takes it)",
                            k.snapshot_id,
                            reasons(k)
                        );
                    }
                    for k in &report.archived {
                        println!("archived {}  {}", k.snapshot_id, reasons(k));
                    }
                    for e in &report.archive_errors {
                        println!("NOT ARCHIVED {e}");
                    }
                    for id in &report.archive_deleted {
                        println!("unarchive {id}  (no tier keeps it any more)");
                    }
                    for id in &report.deleted {
                        println!("delete   {id}");
                    }
                    let until = |t: &Option<chrono::DateTime<chrono::Utc>>| match t {
                        Some(t) => format!("locked until {}", t.to_rfc3339()),
                        None => "locked: the location refused to delete it".into(),
                    };
                    for l in &report.locked.snapshots {
                        println!(
                            "KEEP     {}  {} (write-once location)",
                            l.snapshot_id,
                            until(&l.locked_until)
                        );
                    }
                    for l in &report.locked.archived {
                        println!(
                            "KEEP ARCHIVED {}  {}",
                            l.snapshot_id,
                            until(&l.locked_until)
                        );
                    }
                    if !report.locked.is_empty() {
                        println!(
                            "write-once location: {} snapshots, {} archived snapshots, {} WAL segments and {} packs stay until their locks end ({}); run again after that",
                            report.locked.snapshots.len(),
                            report.locked.archived.len(),
                            report.locked.wal_segments,
                            report.locked.packs,
                            until(&report.locked.locked_until)
                        );
                    }
                    println!(
                        "{} kept, {} {will}archived, {} {will}deleted from the archive, {} waiting for the archive, {} snapshots and {} WAL segments {will}deleted",
                        report.kept.len(),
                        report.archived.len(),
                        report.archive_deleted.len(),
                        report.awaiting_archive.len(),
                        report.deleted.len(),
                        report.wal_deleted.len()
                    );
                }
            }
        }
        RepoCmd::Copy {
            repo,
            to,
            to_options,
            to_key_file,
            output,
        } => {
            let source_options = repo.options()?;
            let source = Repository::open(&source_options).await?;
            let mut location = Location::new(to);
            for kv in &to_options {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--to-option {kv:?} is not KEY=VALUE"))?;
                location.options.insert(k.to_string(), v.to_string());
            }
            let key = match to_key_file {
                Some(f) => KeySource::KeyFile(f),
                None => source_options.key,
            };
            let url = location.url.clone();
            let dest = drmesh_repo::within(
                &url,
                OPEN_TIMEOUT,
                Repository::open_or_init(&RepoOptions { location, key }),
            )
            .await?;
            let started = std::time::Instant::now();
            let report = source.sync_to(&dest, true).await?;
            let seconds = started.elapsed().as_secs_f64();
            let json = serde_json::json!({
                "destination": dest.backend().describe(),
                "snapshotsCopied": report.snapshots_copied,
                "walCopied": report.wal_copied,
                "bytesCopied": report.bytes_copied,
                "seconds": seconds,
                "missingSnapshots": report.missing.iter().map(|(id, _)| id).collect::<Vec<_>>(),
                "missingWal": report.missing_wal.len(),
                "error": report.error,
            });
            match output {
                Output::Json => print_json(&json)?,
                Output::Text => println!(
                    "{}: {} snapshots, {} WAL files, {} copied in {seconds:.1} s",
                    dest.backend().describe(),
                    report.snapshots_copied,
                    report.wal_copied,
                    fmt_bytes(report.bytes_copied)
                ),
            }
            if let Some(e) = report.error {
                bail!("the copy stopped: {e} (run it again to finish)");
            }
        }
        RepoCmd::Export(args) => export(args).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::RepoCmd;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: RepoCmd,
    }

    fn parse(args: &[&str]) -> RepoCmd {
        let mut all = vec!["repo"];
        all.extend(args);
        all.extend(["--repo", "/r"]);
        Cli::try_parse_from(all).expect("parses").cmd
    }

    #[test]
    fn restore_takes_target_and_still_the_old_to() {
        Cli::command().debug_assert();
        for flag in ["--target", "--to"] {
            let RepoCmd::Restore {
                snapshot, target, ..
            } = parse(&["restore", "latest", flag, "/out"])
            else {
                panic!("not a restore");
            };
            assert_eq!(snapshot.as_deref(), Some("latest"));
            assert_eq!(target, std::path::PathBuf::from("/out"));
        }
        let RepoCmd::Restore { snapshot, time, .. } =
            parse(&["restore", "--time", "2026-01-01T00:00:00Z", "--to", "/pg"])
        else {
            panic!("not a restore");
        };
        assert_eq!((snapshot, time.is_some()), (None, true));
        let help = Cli::command()
            .find_subcommand_mut("restore")
            .expect("restore")
            .render_long_help()
            .to_string();
        assert!(help.contains("--target"), "{help}");
        assert!(
            !help.contains("--to <"),
            "the old name stays out of the help: {help}"
        );
    }

    #[test]
    fn verify_takes_no_snapshot_for_the_whole_repository() {
        let RepoCmd::Verify { snapshot, .. } = parse(&["verify"]) else {
            panic!("not a verify");
        };
        assert_eq!(snapshot, None);
        let RepoCmd::Verify { snapshot, .. } = parse(&["verify", "latest", "--read-data"]) else {
            panic!("not a verify");
        };
        assert_eq!(snapshot.as_deref(), Some("latest"));
    }
}
