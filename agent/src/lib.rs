//! The drmesh agent: runs on every database and documents host. It keeps a QUIC link to
//! the coordinator ([`link`]: heartbeats, commands), probes its PostgreSQL ([`postgres`])
//! and its peers ([`mesh`], which also holds the primary's lease), and runs the work the
//! coordinator sends: database backups, WAL archiving, recovery, verification and DR
//! tests ([`database`]), document backups ([`documents`]), copies to other locations
//! ([`copies`]), promote, fence, rejoin ([`failover`]). The repository itself is the
//! `drmesh-repo` crate; PostgreSQL knowledge without I/O is `drmesh-pg`.

pub mod config;
pub mod copies;
pub mod database;
pub mod documents;
pub mod epoch;
pub mod failover;
pub mod link;
pub mod mesh;
pub mod observed;
pub mod postgres;
pub mod progress;

use std::sync::Arc;

use tracing::info;

use crate::config::AgentConfig;
use crate::link::Link;
use crate::observed::Observed;

/// Sets up logging: text or JSON lines on stderr, filtered by `RUST_LOG` (default info).
pub fn init_logging(format: config::LogFormat) {
    init_logging_with(format, "info")
}

/// As [`init_logging`], with `default` as the filter when `RUST_LOG` is not set.
pub fn init_logging_with(format: config::LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    use tracing::Instrument;
    let span = tracing::info_span!("agent", agent_id = %config.id, region = %config.region);
    async move {
        for file in config.secret_files() {
            if let Some(why) = drmesh_protocol::files::loose_mode(&file) {
                tracing::warn!(file = %file.display(), "a file with secrets is not private: {why}");
            }
        }
        if config.database.is_some() {
            let data_dir = config.data_dir.clone();
            // Verifications a kill left behind: their servers stopped, directories gone.
            let _ =
                tokio::task::spawn_blocking(move || database::verify::clean_leftovers(&data_dir))
                    .await;
        }
        let observed = Arc::new(Observed::default());
        if let Some(pg) = &config.postgres {
            let prober = postgres::Prober::new(pg.clone());
            // Twice per heartbeat, so a heartbeat carries a state at most half an
            // interval old.
            tokio::spawn(link::probe_postgres(
                prober,
                (config.heartbeat_interval / 2).max(std::time::Duration::from_millis(50)),
                observed.clone(),
            ));
        }
        let mesh = mesh::Mesh::new(&config, observed.clone());
        let bound = mesh
            .start(config.mesh_listen)
            .await
            .with_context(|| format!("bind the mesh socket {}", config.mesh_listen))?;
        let mesh_addr = std::net::SocketAddr::new(config.mesh_ip, bound.port());
        info!(%mesh_addr, "mesh probes answered");
        let link = Link::new(config.clone(), observed, mesh, mesh_addr)
            .context("set up the coordinator link")?;
        info!(coordinator = %config.coordinator, "agent starting");
        let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
        tokio::select! {
            _ = link.run() => {}
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = int.recv() => info!("SIGINT: stopping"),
        }
        Ok(())
    }
    .instrument(span)
    .await
}
