//! `drmesh archive …`: the cold archive, offline — only its URL and key. Each archived
//! snapshot is one `.tar.zst` (`.tar.zst.enc` when encrypted) that `drmesh archive
//! restore` checks file by file; an unencrypted one also opens with `tar --zstd -xf`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use drmesh_repo::{ArchiveOptions, ColdArchive, KeySource, Location};

use crate::{fmt_bytes, print_json, Output};

/// Where the cold archive is and how its objects are sealed.
#[derive(Args, Clone, Debug)]
pub struct ArchiveArgs {
    /// Cold archive URL: an absolute path, file://, s3://bucket/prefix,
    /// az://container/prefix or gs://bucket/prefix.
    #[arg(long = "archive", env = "DRMESH_ARCHIVE", value_name = "URL")]
    pub archive_url: Option<String>,
    /// Object-store option KEY=VALUE for the archive, repeatable (endpoint, region,
    /// allow_http, access_key_id, secret_access_key, ...).
    #[arg(long = "archive-option", value_name = "KEY=VALUE")]
    pub archive_options: Vec<String>,
    /// File holding the archive's key. A passphrase is read from
    /// DRMESH_ARCHIVE_PASSPHRASE instead. With `repo retention`, default: the
    /// repository's key, so an encrypted repository is archived encrypted.
    #[arg(long = "archive-key-file", env = "DRMESH_ARCHIVE_KEY_FILE")]
    pub archive_key_file: Option<PathBuf>,
    /// Storage class of new archived objects, e.g. DEEP_ARCHIVE, GLACIER_IR or
    /// STANDARD_IA (S3), Cool or Archive (Azure), ARCHIVE (GCS). Default: the bucket's.
    #[arg(long = "archive-storage-class")]
    pub archive_storage_class: Option<String>,
}

impl ArchiveArgs {
    /// The archive's options, or `None` when no URL is given; `default_key` is used when
    /// neither a key file nor a passphrase is.
    pub fn options(&self, default_key: KeySource) -> anyhow::Result<Option<ArchiveOptions>> {
        let Some(url) = &self.archive_url else {
            if self.archive_key_file.is_some()
                || !self.archive_options.is_empty()
                || self.archive_storage_class.is_some()
            {
                bail!("--archive-option, --archive-key-file and --archive-storage-class need --archive URL");
            }
            return Ok(None);
        };
        let mut location = Location::new(url.clone());
        for kv in &self.archive_options {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--archive-option {kv:?} is not KEY=VALUE"))?;
            location.options.insert(k.to_string(), v.to_string());
        }
        let passphrase = std::env::var("DRMESH_ARCHIVE_PASSPHRASE")
            .ok()
            .filter(|p| !p.is_empty());
        let key = match (&self.archive_key_file, passphrase) {
            (Some(_), Some(_)) => {
                bail!("give either an archive key file or DRMESH_ARCHIVE_PASSPHRASE, not both")
            }
            (Some(f), None) => KeySource::KeyFile(f.clone()),
            (None, Some(p)) => KeySource::Passphrase(p),
            (None, None) => default_key,
        };
        Ok(Some(ArchiveOptions {
            location,
            key,
            storage_class: self.archive_storage_class.clone(),
        }))
    }

    async fn open(&self) -> anyhow::Result<ColdArchive> {
        let options = self
            .options(KeySource::None)?
            .context("which archive? give --archive URL (or DRMESH_ARCHIVE)")?;
        Ok(ColdArchive::open(&options).await?)
    }
}

#[derive(Subcommand)]
pub enum ArchiveCmd {
    /// List the archived snapshots, oldest first.
    List {
        #[command(flatten)]
        archive: ArchiveArgs,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Restore an archived snapshot into a new or empty directory, checking every
    /// file's SHA-256 against the archived manifest. A database base backup comes out
    /// as a data directory PostgreSQL starts from (its WAL is in pg_wal/); set
    /// archive_mode = off there first.
    Restore {
        #[command(flatten)]
        archive: ArchiveArgs,
        /// The snapshot id, e.g. full_1705329600000_abc123, or `latest` for the newest
        /// archived snapshot.
        snapshot: String,
        /// Absolute directory to restore into (created when missing).
        target: PathBuf,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Read an archived snapshot whole and check it as a restore would, writing
    /// nothing; exits 1 when anything is damaged.
    Verify {
        #[command(flatten)]
        archive: ArchiveArgs,
        /// The snapshot id, or `latest` for the newest archived snapshot.
        snapshot: String,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
}

pub fn run(cmd: ArchiveCmd) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?
        .block_on(run_async(cmd))
}

async fn run_async(cmd: ArchiveCmd) -> anyhow::Result<()> {
    match cmd {
        ArchiveCmd::List { archive, output } => {
            let list = archive.open().await?.list().await?;
            match output {
                Output::Json => print_json(&list)?,
                Output::Text => {
                    println!(
                        "{:<32} {:<10} {:<20} {:>8} {:>11} {:>11}  OBJECT",
                        "ID", "KIND", "FINISHED", "FILES", "SIZE", "STORED"
                    );
                    for a in list {
                        println!(
                            "{:<32} {:<10} {:<20} {:>8} {:>11} {:>11}  {}{}",
                            a.snapshot_id,
                            a.kind,
                            a.finished_at.format("%Y-%m-%d %H:%M:%S"),
                            a.files,
                            fmt_bytes(a.bytes),
                            fmt_bytes(a.size),
                            a.object,
                            if a.encrypted { " (encrypted)" } else { "" }
                        );
                    }
                }
            }
        }
        ArchiveCmd::Restore {
            archive,
            snapshot,
            target,
            output,
        } => {
            let target = std::path::absolute(&target)
                .with_context(|| format!("resolve {}", target.display()))?;
            let archive = archive.open().await?;
            let snapshot = archive.resolve(&snapshot, None).await?;
            let report = archive.restore(&snapshot, &target).await?;
            match output {
                Output::Json => print_json(&report)?,
                Output::Text => println!(
                    "restored {} from the archive into {}: {} files ({}), {} directories, \
                     {} symlinks, {} WAL files; every SHA-256 checked",
                    report.snapshot_id,
                    target.display(),
                    report.files,
                    fmt_bytes(report.bytes),
                    report.dirs,
                    report.symlinks,
                    report.wal_files
                ),
            }
        }
        ArchiveCmd::Verify {
            archive,
            snapshot,
            output,
        } => {
            let archive = archive.open().await?;
            let snapshot = archive.resolve(&snapshot, None).await?;
            let report = archive.verify(&snapshot).await?;
            match output {
                Output::Json => print_json(&report)?,
                Output::Text => println!(
                    "archived snapshot {} PASSED: {} files ({}), {} WAL files, object {} \
                     SHA-256 {}",
                    report.snapshot_id,
                    report.files,
                    fmt_bytes(report.bytes),
                    report.wal_files,
                    fmt_bytes(report.object_bytes),
                    report.object_sha256
                ),
            }
        }
    }
    Ok(())
}
