//! Starts everything the coordinator runs: store, registry, QUIC endpoint, liveness
//! watcher, REST server; and stops it on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use serde::Serialize;
use tracing::info;

use crate::config::CoordinatorConfig;
use crate::leader::{Announcement, Leadership};
use crate::state::Coordinator;
use crate::store::settings::StoreConfig;
use crate::store::{EtcdStore, RedbStore, Store};
use crate::{http, transport};

/// Written to `--ready-file` once both listeners are bound, so callers that asked for
/// port 0 learn the real ports.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    pub http: SocketAddr,
    /// The REST API's base URL on `http`: `http://…`, or `https://…` with `http_tls`.
    pub api: String,
    pub quic: SocketAddr,
    pub pid: u32,
    /// The first authoritative server of the database's DNS name, when `[dns]` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<SocketAddr>,
}

pub async fn run(config: CoordinatorConfig, ready_file: Option<&Path>) -> anyhow::Result<()> {
    for file in config.secret_files() {
        if let Some(why) = drmesh_protocol::files::loose_mode(&file) {
            tracing::warn!(file = %file.display(), "a file with secrets is not private: {why}");
        }
    }
    let (store, etcd): (Arc<dyn Store>, Option<Arc<EtcdStore>>) = match &config.store {
        StoreConfig::Redb { path } => (
            Arc::new(
                RedbStore::open(path)
                    .with_context(|| format!("open state store {}", path.display()))?,
            ),
            None,
        ),
        StoreConfig::Etcd(settings) => {
            let etcd = Arc::new(EtcdStore::connect(settings).with_context(|| {
                format!("connect to etcd at {}", settings.endpoints.join(", "))
            })?);
            (etcd.clone(), Some(etcd))
        }
    };
    let initial = if etcd.is_some() {
        Leadership::Follower {
            leader: None,
            term: None,
            members: Vec::new(),
        }
    } else {
        Leadership::Sole
    };
    let (standing, leadership) = tokio::sync::watch::channel(initial);
    let proof = Arc::new(if etcd.is_some() {
        crate::leader::Proof::none()
    } else {
        crate::leader::Proof::always()
    });
    let (coord, queues) = Coordinator::new(config.clone(), store, leadership, proof.clone())?;
    if let Some(dns) = &config.dns {
        let provider = crate::dns::from_config(dns, coord.store.clone())
            .await
            .context("start the DNS provider ([dns])")?;
        info!(provider = %provider.describe(), record = %provider.record(), "DNS provider ready");
        let _ = coord.dns.set(provider);
    }
    // Apart from everything else the coordinator runs: thousands of agents' heartbeats
    // arrive as one stream on one socket, and on a runtime shared with other work any
    // slow task there delays all of them (see `transport::immediate_acks`).
    let quic_runtime = crate::runtime::OwnRuntime::new("quic", config.quic_threads)
        .context("start the QUIC runtime")?;
    let quic_handle = quic_runtime.handle();
    let endpoint = {
        let _inside = quic_handle.enter();
        transport::endpoint(&coord)?
    };
    let quic = endpoint.local_addr().context("read QUIC address")?;

    if etcd.is_none() {
        // Alone: in office from the start, resuming what the last run left.
        crate::ops::office::take(&coord, std::time::Instant::now())
            .context("resume the stored work")?;
    }
    // The heartbeats and the liveness that judges them, on the QUIC runtime.
    quic_handle.spawn(transport::serve(endpoint.clone(), coord.clone()));
    quic_handle.spawn(coord.clone().watch_liveness());
    quic_handle.spawn(transport::watch_lag(coord.clone()));
    tokio::spawn(crate::ops::health::watch(coord.clone()));
    tokio::spawn(crate::ops::rejoin::watch_auto(coord.clone()));
    tokio::spawn(crate::ops::drtest::schedule(coord.clone()));
    tokio::spawn(crate::ops::retention::schedule(coord.clone()));
    tokio::spawn(crate::ops::storage::watch(coord.clone()));
    tokio::spawn(crate::ops::audit::keep(coord.clone()));
    tokio::spawn(crate::ops::copies::schedule(coord.clone()));
    {
        let (c1, c2) = (coord.clone(), coord.clone());
        let crate::state::Queues {
            transitions,
            agent_records,
        } = queues;
        std::thread::Builder::new()
            .name("transitions".into())
            .spawn(move || c1.apply_transitions(transitions))
            .context("start the transitions thread")?;
        std::thread::Builder::new()
            .name("agent-records".into())
            .spawn(move || c2.keep_agent_records(agent_records))
            .context("start the agent records thread")?;
    }

    let data = web::Data::new(coord.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(from_fn(http::audited))
            .wrap(from_fn(http::forwarded))
            .wrap(from_fn(http::unversioned))
            .configure(http::configure)
    })
    .workers(config.http_workers)
    .disable_signals();
    let server = if config.http_tls {
        let tls = drmesh_protocol::tls::https_server_config(&config.tls.cert, &config.tls.key)
            .context("the REST API's TLS (http_tls = true: the [tls] cert and key)")?;
        server.bind_rustls_0_23(config.http_listen, tls)
    } else {
        server.bind(config.http_listen)
    }
    .with_context(|| format!("bind REST API on {}", config.http_listen))?;
    let scheme = if config.http_tls { "https" } else { "http" };
    info!(address = %config.http_listen, scheme, "REST API");
    let http = server
        .addrs()
        .first()
        .copied()
        .context("REST listener has no address")?;
    let server = server.run();
    let handle = server.handle();
    let server_task = tokio::spawn(server);

    if let (Some(etcd), StoreConfig::Etcd(settings)) = (&etcd, &config.store) {
        let me = Announcement {
            name: settings.name.clone(),
            api: config
                .http_advertise
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{}", advertised(http))),
            quic: config
                .quic_advertise
                .clone()
                .unwrap_or_else(|| advertised(quic)),
        };
        info!(name = %me.name, api = %me.api, quic = %me.quic, "campaigning for leadership");
        etcd.handle().spawn(crate::leader::campaign(
            etcd.clone(),
            me,
            settings.leader_ttl,
            standing,
            proof.clone(),
        ));
        tokio::spawn(crate::ops::quorum::watch(
            coord.clone(),
            settings.leader_ttl,
        ));
    } else {
        drop(standing);
    }
    tokio::spawn(crate::ops::office::follow(coord.clone()));
    info!(%http, %quic, epoch = %coord.epoch(), "coordinator ready");
    if let Some(path) = ready_file {
        let ready = Ready {
            http,
            api: format!("{scheme}://{http}"),
            quic,
            pid: std::process::id(),
            dns: coord
                .dns
                .get()
                .and_then(|d| d.authoritative().first().copied()),
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&ready)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    }

    shutdown_signal().await?;
    info!("shutting down");
    if let Some(etcd) = &etcd {
        // Hand the leadership over at once rather than after the lease.
        let (etcd2, proof) = (etcd.clone(), proof.clone());
        let _ = etcd
            .handle()
            .spawn(async move { crate::leader::resign(&etcd2, &proof).await })
            .await;
        coord.end_term();
    }
    endpoint.close(
        drmesh_protocol::close_code::SHUTDOWN.into(),
        b"coordinator shutting down",
    );
    handle.stop(true).await;
    let _ = server_task.await;
    endpoint.wait_idle().await;
    drop(quic_runtime);
    Ok(())
}

/// `addr` as others reach it: a wildcard address is replaced by the host name.
fn advertised(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}:{}", addr.port())
    } else {
        addr.to_string()
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
