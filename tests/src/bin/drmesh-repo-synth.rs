//! Makes a synthetic repository for the retention benchmark: `--snapshots` snapshots, one
//! every `--every` up to now, each storing `--new-chunks` chunks of its own (in packs of
//! its own) and sharing `--shared-chunks` with the one before it. Prints what it wrote
//! as JSON.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use drmesh_repo::{synth::SynthSpec, KeySource, Location, RepoOptions, Repository};

#[derive(Parser)]
struct Args {
    /// A new repository directory.
    #[arg(long)]
    repo: PathBuf,
    #[arg(long, default_value_t = 1000)]
    snapshots: usize,
    #[arg(long, default_value_t = 1000)]
    new_chunks: usize,
    #[arg(long, default_value_t = 500)]
    shared_chunks: usize,
    #[arg(long, default_value_t = 10)]
    chunks_per_file: usize,
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    every: Duration,
    #[arg(long, default_value = "documents")]
    kind: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let repo = Repository::init(&RepoOptions {
        location: Location::new(args.repo.to_string_lossy()),
        key: KeySource::None,
    })
    .await?;
    let made = repo
        .write_synthetic(&SynthSpec {
            snapshots: args.snapshots,
            new_chunks: args.new_chunks,
            shared_chunks: args.shared_chunks,
            chunks_per_file: args.chunks_per_file,
            newest: chrono::Utc::now(),
            every: args.every,
            kind: args.kind,
        })
        .await?;
    println!("{}", serde_json::to_string(&made)?);
    Ok(())
}
