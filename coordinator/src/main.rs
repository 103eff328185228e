use std::path::PathBuf;

use clap::{Parser, Subcommand};
use drmesh_coordinator::config::CoordinatorConfig;
use drmesh_protocol::api::Role;

/// The drmesh coordinator: agent registry, health, alerts and the REST API.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Path to coordinator.toml.
    #[arg(long, short, env = "DRMESH_COORDINATOR_CONFIG")]
    config: PathBuf,
    /// Write the bound addresses here (JSON) once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an API token directly in the state store (the coordinator must be stopped).
    CreateToken {
        #[arg(long)]
        role: Role,
        #[arg(long)]
        name: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = CoordinatorConfig::load(&args.config)?;
    drmesh_coordinator::init_logging(config.log_format);
    match args.command {
        Some(Cmd::CreateToken { role, name }) => {
            let store = drmesh_coordinator::store::open_for_tools(&config.store)?;
            let token = drmesh_coordinator::auth::create_token(store.as_ref(), role, name)?;
            println!("{}", token.token);
            Ok(())
        }
        None => actix_web::rt::System::new().block_on(drmesh_coordinator::server::run(
            config,
            args.ready_file.as_deref(),
        )),
    }
}
