//! Status routes: liveness, the DR status, the dashboard, metrics, an agent ping and a test notification.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use drmesh_protocol::api::{Role, Severity};
use drmesh_protocol::{AgentId, CommandKind};
use serde::Deserialize;

use super::{required_json, Authenticated, Shared};
use crate::alerts;
use crate::error::Error;
use crate::notify;
use crate::transport::{self, TransportError};

pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

pub(super) async fn dr_status(caller: Authenticated, coord: Shared) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(crate::views::dr_status(&coord)))
}

#[derive(Deserialize)]
pub(super) struct NotifyTest {
    channel: String,
}

/// Sends a test notification to one configured channel, with the usual retries, and
/// says whether it got through.
pub(super) async fn notify_test(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: NotifyTest = required_json(&body)?;
    let event = notify::Event::new(
        "test",
        Severity::Low,
        "drmesh test notification".into(),
        format!(
            "A test of notification channel {} asked for by {}.",
            req.channel,
            caller.label()
        ),
    );
    let coord: &Arc<crate::state::Coordinator> = &coord;
    match notify::Notifier::send(coord, &req.channel, &event).await {
        Ok(()) => Ok(HttpResponse::Ok()
            .json(serde_json::json!({ "channel": req.channel, "delivered": true }))),
        Err(e @ notify::NotifyError::UnknownChannel(_)) => Err(Error::NotFound(e.to_string())),
        Err(e) => Err(Error::Unavailable(e.to_string())),
    }
}

pub(super) async fn dashboard(caller: Authenticated, coord: Shared) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(crate::views::dashboard(&coord)?))
}

pub(super) async fn agent_ping(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Operator)?;
    let agent: AgentId = path
        .parse()
        .map_err(|e| Error::BadRequest(format!("{e}")))?;
    let started = std::time::Instant::now();
    match transport::send_command(&coord, &agent, CommandKind::Ping, Duration::from_secs(10)).await
    {
        Ok(result) => Ok(HttpResponse::Ok().json(serde_json::json!({
            "agentId": agent,
            "ok": result.ok,
            "message": result.message,
            "roundTripMs": started.elapsed().as_secs_f64() * 1000.0,
        }))),
        Err(TransportError::NotConnected(a)) => {
            Err(Error::NotFound(format!("agent {a} is not connected")))
        }
        Err(e) => Err(Error::Unavailable(format!("ping {agent}: {e}"))),
    }
}

pub(super) async fn metrics(caller: Authenticated, coord: Shared) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let agents = coord.agent_statuses();
    let alerts = alerts::counts(coord.store.as_ref())?;
    let text = coord
        .metrics
        .render(&agents, &alerts)
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text))
}
