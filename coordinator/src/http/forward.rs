//! Operators reach any coordinator: a follower forwards what only the leader can do to
//! it, and returns the leader's answer.
//!
//! - Writes (every method but GET and HEAD) are forwarded, so that a token check, an
//!   admission and the audit record happen once, on the leader, in its term.
//! - Reads of records are served by the follower itself, from the shared store.
//! - Reads of what only the leader holds (the agents' links, health verdicts, commands
//!   to agents: the status, the dashboard, point-in-time lookups, documents on disk)
//!   are forwarded. The status keeps the follower's own `coordinators` block, so it
//!   says who answered; if the leader does not answer, the follower shows its own view
//!   with the reason.
//! - A forwarded request carries [`FORWARDED_BY`]; a coordinator that receives one and
//!   does not lead answers 503 `not_leader` rather than forwarding it again.
//! - A request the follower could not deliver (no connection to the leader it knows, as
//!   while a dead leader's key lasts) is answered 503 `not_leader` too: nothing was
//!   done, so the caller may ask another coordinator. One that may have reached the
//!   leader is answered 503 `unavailable`, and is not to be sent again blindly.
//!
//! Forwarding is chosen over a redirect: curl and most HTTP clients drop the bearer
//! token when a redirect changes host or port, and a redirected POST may be replayed as
//! a GET.

use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpResponse};
use futures::StreamExt;
use tracing::{debug, warn};

use crate::error::Error;
use crate::http::Shared;
use crate::leader::{Announcement, Leadership};

/// Set on a request one coordinator forwards to another: the forwarder's name.
pub const FORWARDED_BY: &str = "Drmesh-Forwarded-By";
/// Set on an answer a follower got from the leader: the leader's name.
pub const ANSWERED_BY: &str = "Drmesh-Leader";

/// The largest request body forwarded.
const MAX_BODY: usize = 16 << 20;
/// How long the leader may take to answer a forwarded request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const STATUS: &str = "/v1/backup-recovery/disaster-recovery/status";

/// GETs only the leader can answer: it holds the agents' links and health verdicts.
fn live_read(path: &str) -> bool {
    path == STATUS
        || path == "/v1/backup-recovery/monitoring/dashboard"
        || path.starts_with("/v1/backup-recovery/recovery/point-in-time/")
        || path == "/v1/documents"
        || path.starts_with("/v1/documents/")
}

/// What a coordinator does with a request, by its standing.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// Answer it here.
    Here,
    /// Forward it to the leader.
    Leader,
}

fn route(method: &Method, path: &str, follower: bool) -> Route {
    if !follower || path == "/healthz" || path == "/metrics" {
        return Route::Here;
    }
    let read = method == Method::GET || method == Method::HEAD;
    if read && !live_read(path) {
        Route::Here
    } else {
        Route::Leader
    }
}

/// Middleware body: see the module documentation.
pub async fn forwarded<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: actix_web::middleware::Next<B>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(coord) = req.app_data::<Shared>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let Leadership::Follower { leader, .. } = coord.leadership() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    if route(req.method(), req.path(), true) == Route::Here {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let me = coord.name();
    // The leader checks the token; checking it here too keeps the caller in this
    // coordinator's recent callers, so its status still answers them if etcd goes.
    let _ = super::auth::authenticate(req.request());
    if let Some(by) = req.headers().get(FORWARDED_BY) {
        // Sent here by a coordinator that took this one for the leader: it no longer is.
        let by = by.to_str().unwrap_or("?").to_string();
        let err = Error::Store(crate::store::StoreError::NotLeader(format!(
            "{me} does not lead (a request forwarded by {by}); retry"
        )));
        return Ok(req.error_response(err));
    }
    let Some(leader) = leader else {
        if req.path() == STATUS {
            return Ok(next.call(req).await?.map_into_boxed_body());
        }
        let err = Error::Store(crate::store::StoreError::NotLeader(
            "no coordinator leads yet (an election is under way); retry in a few seconds".into(),
        ));
        return Ok(req.error_response(err));
    };
    let (http, mut payload) = req.into_parts();
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > MAX_BODY {
            let err = Error::BadRequest(format!("request body over {MAX_BODY} bytes"));
            return Ok(ServiceResponse::new(http, HttpResponse::from_error(err)));
        }
        body.extend_from_slice(&chunk);
    }
    let forward = Forward {
        method: http.method().as_str().to_string(),
        url: format!(
            "{}{}",
            leader.api.trim_end_matches('/'),
            http.uri()
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/")
        ),
        headers: ["authorization", "content-type", "accept"]
            .iter()
            .filter_map(|h| {
                let v = http.headers().get(*h)?.to_str().ok()?;
                Some((h.to_string(), v.to_string()))
            })
            .collect(),
        body: body.freeze().to_vec(),
        by: me.clone(),
    };
    debug!(leader = %leader.name, method = %forward.method, url = %forward.url, "forward to the leader");
    let is_status = http.path() == STATUS;
    let agent = forward_agent(&coord);
    let answer = web::block(move || forward.send(agent?))
        .await
        .map_err(ForwardError::from)
        .and_then(|r| r);
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            warn!(leader = %leader.name, error = %e, "the leader did not answer a forwarded request");
            if is_status {
                // The follower's own view, saying why it is partial.
                let mut status = crate::views::dr_status(&coord);
                if let Some(c) = status.coordinators.as_mut() {
                    c.error = Some(unreachable(&leader, &e));
                }
                return Ok(ServiceResponse::new(http, HttpResponse::Ok().json(status)));
            }
            let err = match e {
                // Nothing was done: the caller may ask another coordinator (the CLI
                // passes over a `not_leader` answer).
                ForwardError::NotDelivered(_) => Error::Store(crate::store::StoreError::NotLeader(
                    unreachable(&leader, &e),
                )),
                _ => Error::Unavailable(unreachable(&leader, &e)),
            };
            return Ok(ServiceResponse::new(http, HttpResponse::from_error(err)));
        }
    };
    let mut body = answer.body;
    if is_status && answer.status == 200 {
        // The leader's regions and verdicts, with who answered as this coordinator.
        if let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&body) {
            if let (Some(obj), Ok(mine)) = (
                value.as_object_mut(),
                serde_json::to_value(crate::views::coordinators(&coord)),
            ) {
                obj.insert("coordinators".into(), mine);
                body = serde_json::to_vec(&value).unwrap_or(body);
            }
        }
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = HttpResponse::build(status);
    resp.insert_header((ANSWERED_BY, leader.name.clone()));
    if let Some(ct) = answer.content_type {
        resp.insert_header(("content-type", ct));
    }
    if let Some(auth) = answer.www_authenticate {
        resp.insert_header(("www-authenticate", auth));
    }
    Ok(ServiceResponse::new(http, resp.body(body)))
}

fn unreachable(leader: &Announcement, e: &ForwardError) -> String {
    format!(
        "the leader {} at {} does not answer: {e}; retry, or wait for the next leader",
        leader.name, leader.api
    )
}

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    /// No connection to the leader: the request surely did nothing.
    #[error("{0}")]
    NotDelivered(String),
    /// The request may have reached the leader.
    #[error("{0}")]
    Transport(String),
    #[error("read the leader's answer: {0}")]
    Read(std::io::Error),
    #[error("the forwarding thread failed")]
    Blocking,
}

impl From<actix_web::error::BlockingError> for ForwardError {
    fn from(_: actix_web::error::BlockingError) -> Self {
        ForwardError::Blocking
    }
}

struct Forward {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    by: String,
}

struct Answer {
    status: u16,
    content_type: Option<String>,
    www_authenticate: Option<String>,
    body: Vec<u8>,
}

/// The client forwards go through, made once: it trusts the `[tls]` CA for a leader whose
/// API is on HTTPS, and keeps no idle connection (one to a leader that died would fail
/// a write that may then not be retried elsewhere). A CA that cannot be read delivers
/// nothing, and is tried again on the next forward.
fn forward_agent(coord: &crate::state::Coordinator) -> Result<ureq::Agent, ForwardError> {
    if let Some(agent) = coord.forward_agent.get() {
        return Ok(agent.clone());
    }
    let tls = drmesh_protocol::tls::https_client_config(&coord.config.tls.ca_cert)
        .map_err(|e| ForwardError::NotDelivered(format!("the [tls] CA: {e}")))?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout(ANSWER_TIMEOUT)
        .redirects(0)
        .max_idle_connections(0)
        .tls_config(std::sync::Arc::new(tls))
        .build();
    Ok(coord.forward_agent.get_or_init(|| agent).clone())
}

impl Forward {
    /// Sends the request to the leader and reads its whole answer (blocking: run it on
    /// actix's blocking pool).
    fn send(self, agent: ureq::Agent) -> Result<Answer, ForwardError> {
        let mut req = agent
            .request(&self.method, &self.url)
            .set(FORWARDED_BY, &self.by);
        for (k, v) in &self.headers {
            req = req.set(k, v);
        }
        let resp = match req.send_bytes(&self.body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t))
                if matches!(
                    t.kind(),
                    ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns
                ) =>
            {
                return Err(ForwardError::NotDelivered(t.to_string()))
            }
            Err(ureq::Error::Transport(t)) => return Err(ForwardError::Transport(t.to_string())),
        };
        let status = resp.status();
        let content_type = resp.header("content-type").map(str::to_string);
        let www_authenticate = resp.header("www-authenticate").map(str::to_string);
        let mut body = Vec::new();
        use std::io::Read;
        resp.into_reader()
            .take(MAX_BODY as u64 * 4)
            .read_to_end(&mut body)
            .map_err(ForwardError::Read)?;
        Ok(Answer {
            status,
            content_type,
            www_authenticate,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_answers_record_reads_and_forwards_writes_and_live_reads() {
        let get = Method::GET;
        let post = Method::POST;
        for path in [
            "/v1/backup-recovery/disaster-recovery/plans",
            "/v1/backup-recovery/database/backups/db-20261207-000000-ab",
            "/v1/backup-recovery/monitoring/alerts",
            "/v1/audit",
            "/healthz",
            "/metrics",
        ] {
            assert_eq!(route(&get, path, true), Route::Here, "{path}");
        }
        for path in [
            STATUS,
            "/v1/backup-recovery/monitoring/dashboard",
            "/v1/backup-recovery/recovery/point-in-time/2026-12-07T10:00:00Z",
            "/v1/documents",
            "/v1/documents/doc-1",
        ] {
            assert_eq!(route(&get, path, true), Route::Leader, "{path}");
        }
        for path in [
            "/v1/backup-recovery/disaster-recovery/failover",
            "/v1/tokens",
            "/v1/backup-recovery/monitoring/alerts/a-1/acknowledge",
        ] {
            assert_eq!(route(&post, path, true), Route::Leader, "{path}");
            assert_eq!(route(&Method::DELETE, path, true), Route::Leader, "{path}");
        }
        // The leader, or a sole coordinator, answers everything itself.
        assert_eq!(route(&post, "/v1/tokens", false), Route::Here);
        assert_eq!(route(&get, STATUS, false), Route::Here);
    }
}
