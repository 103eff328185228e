//! Alert routes: list (with filters), acknowledge, resolve.

use actix_web::{web, HttpResponse};
use drmesh_protocol::api::{AcknowledgeRequest, AlertStatus, ResolveRequest, Role, Severity};
use serde::Deserialize;

use super::{optional_json, Authenticated, Shared};
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
    // The body is checked, but who acknowledged is the token's, not what it says.
    let _: AcknowledgeRequest = optional_json(&body)?;
    let alert = alerts::acknowledge(coord.store.as_ref(), &path, &caller.who())?;
    Ok(HttpResponse::Ok().json(alert))
}

pub(super) async fn alert_resolve(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let _: ResolveRequest = optional_json(&body)?;
    let alert = alerts::resolve(coord.store.as_ref(), &path, &caller.who())?;
    Ok(HttpResponse::Ok().json(alert))
}
