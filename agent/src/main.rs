use std::path::PathBuf;

use clap::Parser;
use drmesh_agent::config::AgentConfig;

/// The drmesh agent: heartbeats to the coordinator and runs its commands.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Path to agent.toml.
    #[arg(long, short, env = "DRMESH_AGENT_CONFIG")]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    drmesh_agent::bound_allocator_memory();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = AgentConfig::load(&args.config)?;
    drmesh_agent::init_logging(config.log_format);
    drmesh_agent::run(config).await
}
