//! Prometheus metrics. Counters and the latency histogram live for the process; gauges
//! (agents by state, heartbeat age, open alerts) are computed at scrape time.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use drmesh_protocol::api::{AgentStatus, AlertCounts};

type Labels = Vec<(String, String)>;

/// Process-lifetime metrics, updated on the hot paths.
#[derive(Clone)]
pub struct Metrics {
    /// Seconds from a heartbeat datagram's arrival to the registry's update.
    pub heartbeat_update_seconds: Histogram,
    /// How late the QUIC runtime wakes a timer: the time a heartbeat waits before its
    /// connection is even looked at (`transport::watch_lag`).
    pub quic_runtime_lag_seconds: Histogram,
    pub heartbeats: Counter,
    pub bad_frames: Counter,
    /// Bytes waiting unread in the QUIC socket, sampled on every liveness tick.
    pub quic_receive_queue_bytes: Gauge,
    /// Connections refused, by reason.
    pub refused_connections: Family<Labels, Counter>,
    /// Agent state changes, by the state entered.
    pub transitions: Family<Labels, Counter>,
    /// REST requests refused 401 (no token, a bad one, an expired or revoked one), by
    /// method: counted here, never written to the store.
    pub unauthenticated_requests: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            // 1 µs .. ~0.5 s
            heartbeat_update_seconds: Histogram::new(exponential_buckets(1e-6, 2.0, 20)),
            // 100 µs .. ~3 s
            quic_runtime_lag_seconds: Histogram::new(exponential_buckets(1e-4, 2.0, 16)),
            heartbeats: Counter::default(),
            bad_frames: Counter::default(),
            quic_receive_queue_bytes: Gauge::default(),
            refused_connections: Family::default(),
            transitions: Family::default(),
            unauthenticated_requests: Family::default(),
        }
    }
}

impl Metrics {
    pub fn refused(&self, reason: &str) {
        self.refused_connections
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    pub fn unauthenticated(&self, method: &str) {
        self.unauthenticated_requests
            .get_or_create(&vec![("method".to_string(), method.to_string())])
            .inc();
    }

    pub fn transition(&self, to: &str) {
        self.transitions
            .get_or_create(&vec![("to".to_string(), to.to_string())])
            .inc();
    }

    /// Renders everything in the Prometheus text format.
    pub fn render(
        &self,
        agents: &[AgentStatus],
        alerts: &AlertCounts,
    ) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register(
            "drmesh_heartbeat_update_seconds",
            "Time from a heartbeat's arrival to the registry's update",
            self.heartbeat_update_seconds.clone(),
        );
        registry.register(
            "drmesh_quic_runtime_lag_seconds",
            "How late the QUIC runtime wakes a timer (heartbeats wait as long)",
            self.quic_runtime_lag_seconds.clone(),
        );
        registry.register(
            "drmesh_quic_receive_queue_bytes",
            "Bytes waiting unread in the QUIC socket (over 2 MiB: agents are not newly SUSPECT)",
            self.quic_receive_queue_bytes.clone(),
        );
        registry.register(
            "drmesh_heartbeats",
            "Heartbeats accepted",
            self.heartbeats.clone(),
        );
        registry.register(
            "drmesh_bad_frames",
            "Undecodable frames received from agents",
            self.bad_frames.clone(),
        );
        for state in ["UP", "SUSPECT", "DOWN"] {
            let _ = self
                .transitions
                .get_or_create(&vec![("to".into(), state.into())]);
        }
        registry.register(
            "drmesh_agent_transitions",
            "Agent state changes, by the state entered",
            self.transitions.clone(),
        );
        registry.register(
            "drmesh_api_unauthenticated_requests",
            "REST requests refused 401, by method (never written to the store)",
            self.unauthenticated_requests.clone(),
        );
        registry.register(
            "drmesh_refused_connections",
            "Agent connections refused, by reason",
            self.refused_connections.clone(),
        );

        let by_state = Family::<Labels, Gauge>::default();
        for state in ["UP", "SUSPECT", "DOWN"] {
            by_state
                .get_or_create(&vec![("state".into(), state.into())])
                .set(0);
        }
        let age = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for a in agents {
            by_state
                .get_or_create(&vec![("state".into(), a.state.as_str().into())])
                .inc();
            if let Some(ms) = a.last_heartbeat_age_ms {
                age.get_or_create(&vec![
                    ("agent".into(), a.agent_id.to_string()),
                    ("region".into(), a.region.to_string()),
                ])
                .set(ms as f64 / 1000.0);
            }
        }
        registry.register("drmesh_agents", "Agents by liveness state", by_state);
        registry.register(
            "drmesh_agent_heartbeat_age_seconds",
            "Seconds since each agent's last heartbeat",
            age,
        );

        let open = Family::<Labels, Gauge>::default();
        for (sev, n) in [
            ("CRITICAL", alerts.critical),
            ("HIGH", alerts.high),
            ("MEDIUM", alerts.medium),
            ("LOW", alerts.low),
        ] {
            open.get_or_create(&vec![("severity".into(), sev.into())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        registry.register("drmesh_alerts_open", "Open alerts by severity", open);

        let mut out = String::new();
        encode(&mut out, &registry)?;
        Ok(out)
    }
}
