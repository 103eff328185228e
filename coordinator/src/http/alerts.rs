//! Alert routes: list (with filters), acknowledge, resolve.

use actix_web::{web, HttpResponse};
use drmesh_protocol::api::{AcknowledgeRequest, AlertStatus, ResolveRequest, Role, Severity};
use serde::Deserialize;

use super::{optional_json, required_json, Authenticated, Shared};
use crate::alerts::{self, AlertFilter};
use crate::error::Error;

#[derive(Deserialize)]
pub(super) struct AlertQuery {
    severity: Option<String>,
    status: Option<String>,
}

pub(super) async fn alerts_list(
    caller: Authenticated,
    coord: Shared,
    query: web::Query<AlertQuery>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let filter = AlertFilter {
        severity: query
            .severity
            .as_deref()
            .map(str::parse::<Severity>)
            .transpose()
            .map_err(Error::BadRequest)?,
        status: query
            .status
            .as_deref()
            .map(str::parse::<AlertStatus>)
            .transpose()
            .map_err(Error::BadRequest)?,
    };
    let alerts = alerts::list(coord.store.as_ref(), &filter)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "alerts": alerts, "total": alerts.len() })))
}

pub(super) async fn alert_acknowledge(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: AcknowledgeRequest = required_json(&body)?;
    if req.acknowledged_by.trim().is_empty() {
        return Err(Error::BadRequest("acknowledgedBy must not be empty".into()));
    }
    let _ = caller;
    let alert = alerts::acknowledge(coord.store.as_ref(), &path, &req.acknowledged_by)?;
    Ok(HttpResponse::Ok().json(alert))
}

pub(super) async fn alert_resolve(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: ResolveRequest = optional_json(&body)?;
    let by = req.resolved_by.unwrap_or_else(|| caller.label());
    let alert = alerts::resolve(coord.store.as_ref(), &path, &by)?;
    Ok(HttpResponse::Ok().json(alert))
}
