use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use drmesh_agent::config::{AgentConfig, DatabaseConfig};
use drmesh_agent::database::{self, basebackup, recovery};

/// The drmesh agent: heartbeats to the coordinator and runs its commands. With a
/// subcommand it runs one job on this host and exits, without the coordinator.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Path to agent.toml.
    #[arg(long, short, env = "DRMESH_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// For `archive_command`: archive one WAL file (`wal-push %p`). Exits 0 only once it
    /// is durably in the repository.
    WalPush {
        /// The file, as PostgreSQL's `%p`.
        path: PathBuf,
    },
    /// For `restore_command`: fetch one archived WAL file (`wal-fetch %f %p`). Exits 1
    /// when it is not archived.
    WalFetch {
        /// The file name, as PostgreSQL's `%f`.
        name: String,
        /// Where to write it, as PostgreSQL's `%p`.
        dest: PathBuf,
    },
    /// Report gaps in the WAL archive; exits 1 when there are any.
    WalCheck,
    /// Archive the WAL a stopped server's archiver left behind (`pg_wal/archive_status/
    /// *.ready`), marking each `.done`; run by `drmesh rejoin` before `pg_rewind`.
    ArchiveReady {
        /// Print the outcome as one JSON line (for the agent that runs this).
        #[arg(long)]
        report_json: bool,
    },
    /// Take a base backup of the configured cluster now.
    Backup {
        #[arg(value_enum)]
        kind: Kind,
        /// A tag, as key=value (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The backup id (default: a new `full_…` / `incr_…` id).
        #[arg(long)]
        id: Option<String>,
        /// Report progress and the outcome as JSON lines on stdout, and stop when the
        /// parent process (the agent) dies: how the agent runs coordinator-requested
        /// backups.
        #[arg(long, hide = true)]
        report_json: bool,
    },
    /// Restore a base backup into a new directory, set up to recover from the archive;
    /// or, with --environment, recover into that environment and start it.
    Restore {
        /// The new data directory. `--to` is an old name for it.
        #[arg(
            long,
            alias = "to",
            required_unless_present = "environment",
            conflicts_with = "environment"
        )]
        target: Option<PathBuf>,
        /// A `[database.environments.<name>]`: its directory is replaced, PostgreSQL is
        /// started there, and the command returns once recovery is over and it accepts
        /// writes. Needs --time.
        #[arg(long, requires = "time")]
        environment: Option<String>,
        /// Report the outcome as a JSON line (how the agent runs it).
        #[arg(long, hide = true)]
        report_json: bool,
        /// Recover up to this instant (RFC 3339, e.g. 2026-11-25T10:00:00Z).
        #[arg(long)]
        time: Option<String>,
        /// The base backup (default: the newest that can reach --time); `latest` is the
        /// newest base backup.
        #[arg(long)]
        backup: Option<String>,
        /// The port the restored server will listen on.
        #[arg(long)]
        port: Option<u16>,
        /// Recover only to the backup's stop point (its first consistent state).
        #[arg(long, conflicts_with_all = ["time", "environment"])]
        immediate: bool,
    },
    /// Verify a base backup: every chunk re-hashed, every pack and WAL segment read
    /// back, and a restorability test in DIR (an empty directory, removed afterwards).
    Verify {
        /// The base backup.
        #[arg(long)]
        backup: String,
        /// The throw-away directory (created when missing; removed at the end).
        #[arg(long)]
        dir: PathBuf,
        /// Report progress and the outcome as JSON lines (how the agent runs it); when
        /// the agent dies, the server is stopped and the directory removed.
        #[arg(long, hide = true)]
        report_json: bool,
    },
    /// A DR test of a base backup: the runbook's five steps (environment, restore,
    /// smoke tests, data consistency, cleanup) in DIR, each timed.
    DrTest {
        /// The base backup.
        #[arg(long)]
        backup: String,
        /// The throw-away directory (created when missing; removed at the end).
        #[arg(long)]
        dir: PathBuf,
        /// Report progress and the outcome as JSON lines (how the agent runs it); when
        /// the agent dies, the server is stopped and the directory removed.
        #[arg(long, hide = true)]
        report_json: bool,
    },
    /// Copy the base backups and WAL each `[[database.replicas]]` lacks, verify them
    /// there, and report each replica's state.
    Replicate {
        /// Report the outcome as a JSON line (how the agent runs it).
        #[arg(long, hide = true)]
        report_json: bool,
    },
    /// List the base backups in the repository.
    Backups {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Apply the retention policies to the database repository: base backups no tier
    /// keeps and the WAL no kept backup needs are removed; with `[archive]`, the monthly
    /// and yearly picks move to the cold archive.
    Retention {
        /// The policies as JSON (`{"database": {...}, "documents": {...}}`; missing keys
        /// take the runbook's defaults).
        #[arg(long, default_value = "{}")]
        policies: String,
        /// Say what would go, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply as of this instant (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<chrono::DateTime<chrono::Utc>>,
        /// Report the outcome as a JSON line (how the agent runs it).
        #[arg(long, hide = true)]
        report_json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Full,
    Incr,
    /// `pg_dump -Fc` into the repository, as `<id>.dump`.
    Logical,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    drmesh_repo::bound_allocator_memory();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("drmesh-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            // Exit 1, never a signal or > 125: PostgreSQL's archiver retries on 1 but
            // restarts itself on those.
            eprintln!("drmesh-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = args
        .config
        .context("--config (or DRMESH_AGENT_CONFIG) is required")?;
    let config = AgentConfig::load(&path)?;
    let command = args.command.unwrap_or(Command::Run);
    // WAL commands run once per segment and log into PostgreSQL's log: warnings only.
    let quiet = matches!(command, Command::WalPush { .. } | Command::WalFetch { .. });
    drmesh_agent::init_logging_with(config.log_format, if quiet { "warn" } else { "info" });
    let db = || -> anyhow::Result<&DatabaseConfig> {
        config
            .database
            .as_ref()
            .context("this command needs a [database] section in the agent configuration")
    };
    let dr_test = matches!(command, Command::DrTest { .. });
    match command {
        Command::Run => {
            drmesh_agent::run(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::WalPush { path } => {
            let repo = database::open_repository(db()?).await?;
            repo.push_wal_file(&path)
                .await
                .with_context(|| format!("wal-push {}", path.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::WalFetch { name, dest } => {
            let repo = database::open_repository(db()?).await?;
            if repo
                .fetch_wal_file(&name, &dest)
                .await
                .with_context(|| format!("wal-fetch {name}"))?
            {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
        Command::ArchiveReady { report_json } => {
            let db = db()?;
            let repo = database::open_repository(db).await?;
            let archived = repo
                .archive_ready(&db.data_dir)
                .await
                .context("archive leftover WAL")?;
            if report_json {
                database::child::report(&database::child::ChildLine::Outcome(
                    serde_json::to_value(&archived)?,
                ));
            } else {
                println!("{} WAL files archived", archived.len());
                for name in &archived {
                    println!("  {name}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::WalCheck => {
            let db = db()?;
            let repo = database::open_repository(db).await?;
            let files = repo.wal_files().await?;
            let size = basebackup::latest(&repo)
                .await?
                .and_then(|s| s.postgres.map(|p| p.wal_segment_size))
                .unwrap_or(16 << 20);
            let gaps = drmesh_pg::gaps(&files, size);
            if gaps.is_empty() {
                println!("WAL archive: {} files, no gaps", files.len());
                Ok(ExitCode::SUCCESS)
            } else {
                for g in &gaps {
                    println!("missing {g}");
                }
                eprintln!(
                    "drmesh-agent: {} WAL segments missing from the archive",
                    gaps.len()
                );
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Backup {
            kind,
            tags,
            id,
            report_json,
        } => {
            let db = db()?;
            let conninfo = &config
                .postgres
                .as_ref()
                .context("backups need a [postgres] section with conninfo")?
                .conninfo;
            let repo = database::open_repository(db).await?;
            let backup_type = match kind {
                Kind::Full | Kind::Logical => basebackup::BackupType::Full,
                Kind::Incr => basebackup::BackupType::Incremental,
            };
            let mut tag_map = drmesh_repo::Tags::new();
            for t in tags {
                let (k, v) = t
                    .split_once('=')
                    .with_context(|| format!("tag {t:?}: use key=value"))?;
                tag_map.insert(k.to_string(), v.to_string());
            }
            let req = basebackup::BaseBackup {
                id: id.unwrap_or_else(|| drmesh_protocol::ids::runbook_id(backup_type.id_prefix())),
                backup_type,
                tags: tag_map,
                progress: Default::default(),
                cancel: Default::default(),
            };
            if let Kind::Logical = kind {
                let snap =
                    database::logical::run(&repo, db, conninfo, &req.id, req.tags.clone()).await?;
                if report_json {
                    database::child::report(&database::child::ChildLine::Outcome(
                        serde_json::to_value(basebackup::outcome(&snap, &db.repository))?,
                    ));
                } else {
                    println!(
                        "logical backup {} completed: {:.1} MiB dump, {:.1} MiB stored",
                        snap.id,
                        snap.stats.bytes as f64 / 1048576.0,
                        snap.stats.bytes_stored as f64 / 1048576.0
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            if report_json {
                let reporter = tokio::spawn(report_progress(
                    Some(req.progress.clone()),
                    req.cancel.clone(),
                ));
                let result = basebackup::run(&repo, db, conninfo, req).await;
                reporter.abort();
                let snap = result?;
                database::child::report(&database::child::ChildLine::Outcome(
                    serde_json::to_value(basebackup::outcome(&snap, &db.repository))?,
                ));
                return Ok(ExitCode::SUCCESS);
            }
            let bar = drmesh_repo::terminal_bar(req.progress.clone(), &req.id);
            let result = basebackup::run(&repo, db, conninfo, req).await;
            drop(bar);
            let snap = result?;
            let pg = snap.postgres.as_ref();
            println!(
                "backup {} completed: {} files, {:.1} MiB, {:.1} MiB new, {:.1} MiB stored, WAL {} to {}",
                snap.id,
                snap.stats.files,
                snap.stats.bytes as f64 / 1048576.0,
                snap.stats.bytes_new as f64 / 1048576.0,
                snap.stats.bytes_stored as f64 / 1048576.0,
                pg.map(|p| p.start_wal.as_str()).unwrap_or("?"),
                pg.map(|p| p.stop_wal.as_str()).unwrap_or("?"),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            target,
            environment,
            report_json,
            time,
            backup,
            port,
            immediate,
        } => {
            let db = db()?;
            let repo = database::open_repository(db).await?;
            let backup = match backup {
                Some(b) => Some(repo.resolve(&b, Some(basebackup::KIND)).await?),
                None => None,
            };
            let time = time
                .map(|t| {
                    chrono::DateTime::parse_from_rfc3339(&t)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .with_context(|| {
                            format!("--time {t:?}: use RFC 3339, e.g. 2026-11-25T10:00:00Z")
                        })
                })
                .transpose()?;
            let agent_config = std::fs::canonicalize(&path).unwrap_or(path);
            let agent = std::env::current_exe().context("where is this program")?;
            let restore_command = recovery::agent_restore_command(&agent, &agent_config)?;
            if let (Some(env), Some(t)) = (environment, time) {
                let watch = tokio::spawn(report_progress(None, Default::default()));
                let conninfo = config.postgres.as_ref().map(|p| p.conninfo.as_str());
                let result =
                    recovery::recover_into(&repo, db, conninfo, &env, backup, t, restore_command)
                        .await;
                watch.abort();
                let outcome = result?;
                if report_json {
                    database::child::report(&database::child::ChildLine::Outcome(
                        serde_json::to_value(&outcome)?,
                    ));
                } else {
                    println!(
                        "recovered {} into {} (port {}), replayed up to {}",
                        outcome.backup_id,
                        outcome.data_directory,
                        outcome.port,
                        outcome
                            .recovered_to
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "the backup's end".into())
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let Some(target) = target else {
                anyhow::bail!("--target or --environment is required");
            };
            let progress = std::sync::Arc::new(drmesh_repo::Progress::default());
            let bar = drmesh_repo::terminal_bar(progress.clone(), "restore");
            let restored = repo
                .restore_for_recovery(&drmesh_repo::RecoveryRequest {
                    backup,
                    target,
                    time,
                    immediate,
                    lsn: None,
                    port,
                    restore_command,
                    progress,
                    check_data: false,
                    durable: true,
                })
                .await;
            drop(bar);
            let restored = restored?;
            println!(
                "restored {} into {} ({} files, {:.1} MiB); start PostgreSQL there to recover",
                restored.backup,
                restored.target.display(),
                restored.files,
                restored.bytes as f64 / 1048576.0
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            backup,
            dir,
            report_json,
        }
        | Command::DrTest {
            backup,
            dir,
            report_json,
        } => {
            let db = db()?;
            let repo = database::open_existing(db).await?;
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            // Stops the throw-away server and removes the directory on every return, and
            // after the verdict is out (the DR test removes both itself, in its step 5).
            let scratch = database::verify::Scratch { dir: dir.clone() };
            let agent_config = std::fs::canonicalize(&path).unwrap_or(path);
            let agent = std::env::current_exe().context("where is this program")?;
            let restore_command = recovery::agent_restore_command(&agent, &agent_config)?;
            let watch = report_json.then(|| tokio::spawn(clean_when_orphaned(dir.clone())));
            let conninfo = config.postgres.as_ref().map(|p| p.conninfo.as_str());
            let progress = move |percent: f32, message: String| {
                if report_json {
                    database::child::report(&database::child::ChildLine::Progress {
                        percent,
                        message,
                    });
                } else {
                    eprintln!("{percent:>3.0}% {message}");
                }
            };
            // The verification's restorability test, or the DR test's five steps: both
            // in a throw-away directory, both reporting JSON to the daemon.
            let result = if dr_test {
                with_verdict(
                    database::drtest::run(
                        &repo,
                        db,
                        conninfo,
                        &backup,
                        &dir,
                        restore_command,
                        &progress,
                    )
                    .await,
                    |r| r.passed(),
                )
            } else {
                with_verdict(
                    database::verify::run(
                        &repo,
                        db,
                        conninfo,
                        &backup,
                        &dir,
                        restore_command,
                        &progress,
                    )
                    .await,
                    |r| r.passed(),
                )
            };
            if let Some(w) = watch {
                w.abort();
            }
            let (report, passed) = result?;
            if report_json {
                database::child::report(&database::child::ChildLine::Outcome(report));
            } else {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            drop(scratch);
            // A test that ran reports its verdicts; the exit code says whether they pass
            // only to a person at a terminal.
            Ok(if report_json || passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Retention {
            policies,
            dry_run,
            now,
            report_json,
        } => {
            let policies: drmesh_repo::Policies =
                serde_json::from_str(&policies).context("--policies")?;
            policies.validate()?;
            let repo = database::open_existing(db()?).await?;
            // With `[archive]`, the monthly and yearly picks move there.
            let archive = match &config.archive {
                Some(a) => Some(drmesh_repo::ColdArchive::open(&a.archive_options()).await?),
                None => None,
            };
            let report = repo
                .enforce_with_archive(
                    &policies,
                    now.unwrap_or_else(chrono::Utc::now),
                    dry_run,
                    archive.as_ref(),
                )
                .await?;
            if report_json {
                database::child::report(&database::child::ChildLine::Outcome(
                    serde_json::to_value(&report)?,
                ));
            } else {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replicate { report_json } => {
            let locations =
                drmesh_agent::copies::replicate_database(db()?, chrono::Utc::now()).await?;
            let outcome = drmesh_protocol::copies::CopiesOutcome { locations };
            if report_json {
                database::child::report(&database::child::ChildLine::Outcome(
                    serde_json::to_value(&outcome)?,
                ));
            } else {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backups { output } => {
            let repo = database::open_repository(db()?).await?;
            // Sorted by when they finished.
            let list: Vec<_> = repo
                .snapshots()
                .await?
                .into_iter()
                .filter(|s| s.kind == basebackup::KIND || s.kind == database::logical::KIND)
                .collect();
            if output == Output::Json {
                let summaries: Vec<serde_json::Value> = list
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "backupId": s.id,
                            "parent": s.parent,
                            "startedAt": s.started_at,
                            "finishedAt": s.finished_at,
                            "stats": s.stats,
                            "postgres": s.postgres,
                            "tags": s.tags,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&summaries)?);
            } else {
                for s in &list {
                    let pg = s.postgres.as_ref();
                    println!(
                        "{}  {}  {:>10.1} MiB  parent {}  WAL {}..{}",
                        s.id,
                        s.finished_at.format("%Y-%m-%d %H:%M:%S"),
                        s.stats.bytes as f64 / 1048576.0,
                        s.parent.as_deref().unwrap_or("-"),
                        pg.map(|p| p.start_lsn.as_str()).unwrap_or("?"),
                        pg.map(|p| p.stop_lsn.as_str()).unwrap_or("?"),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// For a verification run by the agent: when the agent is gone, its throw-away server is
/// stopped and its directory removed before this process ends.
async fn clean_when_orphaned(dir: PathBuf) {
    let parent = nix::unistd::getppid();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if nix::unistd::getppid() != parent {
            eprintln!(
                "drmesh-agent: the agent that started this is gone; cleaning up and stopping"
            );
            let _ =
                tokio::task::spawn_blocking(move || database::verify::remove_scratch(&dir)).await;
            std::process::exit(1);
        }
    }
}

/// For `--report-json` runs: a progress line every second (when there is a progress
/// counter), and `cancel` set — so a backup leaves no snapshot — or the process ended as
/// soon as the agent that started it is gone.
async fn report_progress(
    progress: Option<std::sync::Arc<drmesh_repo::Progress>>,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let parent = nix::unistd::getppid();
    let mut ticks = 0u32;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if nix::unistd::getppid() != parent {
            if progress.is_none() {
                eprintln!("drmesh-agent: the agent that started this is gone; stopping");
                std::process::exit(1);
            }
            cancel.store(true, Relaxed);
            return;
        }
        ticks += 1;
        let Some(progress) = progress.as_ref().filter(|_| ticks.is_multiple_of(5)) else {
            continue;
        };
        database::child::report(&database::child::ChildLine::Progress {
            percent: progress.percent() as f32,
            message: format!(
                "{} of {} files, {:.0} of {:.0} MiB",
                progress.files_done.load(Relaxed),
                progress.files_total.load(Relaxed),
                progress.bytes_done.load(Relaxed) as f64 / 1048576.0,
                progress.bytes_total.load(Relaxed) as f64 / 1048576.0
            ),
        });
    }
}

/// A test's report as JSON, with whether its verdicts pass.
fn with_verdict<R: serde::Serialize>(
    report: Result<R, database::DatabaseError>,
    passed: impl Fn(&R) -> bool,
) -> anyhow::Result<(serde_json::Value, bool)> {
    let report = report?;
    Ok((serde_json::to_value(&report)?, passed(&report)))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Args, Command};

    #[test]
    fn restore_takes_target_and_still_the_old_to() {
        Args::command().debug_assert();
        for flag in ["--target", "--to"] {
            let args = Args::try_parse_from([
                "drmesh-agent",
                "restore",
                flag,
                "/pg",
                "--backup",
                "latest",
            ])
            .expect("parses");
            let Some(Command::Restore { target, backup, .. }) = args.command else {
                panic!("not a restore");
            };
            assert_eq!(target, Some(std::path::PathBuf::from("/pg")));
            assert_eq!(backup.as_deref(), Some("latest"));
        }
        let help = Args::command()
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
}
