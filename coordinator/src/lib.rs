//! The drmesh coordinator: agent sessions over QUIC, the agent registry, alerts, the REST
//! API and the state store. See ARCHITECTURE.md for the map.

pub mod admin;
pub mod alerts;
pub mod audit;
pub mod auth;
pub mod config;
pub mod dns;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod plans;
pub mod rules;
pub mod runtime;
pub mod server;
pub mod state;
pub mod store;
pub mod transport;
pub mod udp;
pub mod views;

/// Sets up logging: text or JSON lines on stderr, filtered by `RUST_LOG` (default info).
pub fn init_logging(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}
