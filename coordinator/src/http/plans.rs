//! `/v1/backup-recovery/disaster-recovery/plans`: DR plans created, read, replaced and deleted.

use actix_web::{web, HttpResponse};
use drmesh_protocol::api::{MaintenanceRequest, PlanSpec, Role};
use drmesh_protocol::retention::PlanRetention;

use super::{optional_json, required_json, Authenticated, Shared};
use crate::error::Error;
use crate::plans;

/// A plan body: 400 naming the field serde stopped at (an unknown field, a wrong type).
pub(super) fn plan_spec(body: &[u8]) -> Result<PlanSpec, Error> {
    required_json(body)
}

/// A plan's own retention replaces the coordinator's for its regions, so setting,
/// changing or removing it can delete backups at the next enforcement: an
/// administrator's call, whoever may edit the rest of the plan.
fn retention_change_allowed(
    caller: &Authenticated,
    before: Option<&PlanRetention>,
    after: Option<&PlanRetention>,
) -> Result<(), Error> {
    if before != after {
        caller.require(Role::Admin)?;
    }
    Ok(())
}

pub(super) async fn plan_create(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Operator)?;
    let known = coord.plan_vocabulary();
    let plan = plans::check(plan_spec(&body)?, &known, None)?;
    retention_change_allowed(&caller, None, plan.retention.as_ref())?;
    plans::create(coord.store.as_ref(), &plan)?;
    Ok(HttpResponse::Created().json(plan))
}

pub(super) async fn plan_list(caller: Authenticated, coord: Shared) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let plans = plans::list(coord.store.as_ref())?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "total": plans.len(), "plans": plans })))
}

pub(super) async fn plan_get(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let plan = plans::get(coord.store.as_ref(), &path)?
        .ok_or_else(|| Error::NotFound(format!("no plan {path}")))?;
    Ok(HttpResponse::Ok().json(plan))
}

pub(super) async fn plan_replace(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Operator)?;
    let Some(before) = plans::get(coord.store.as_ref(), &path)? else {
        return Err(Error::NotFound(format!("no plan {path}")));
    };
    let known = coord.plan_vocabulary();
    let plan = plans::check(plan_spec(&body)?, &known, Some(&path))?;
    retention_change_allowed(&caller, before.retention.as_ref(), plan.retention.as_ref())?;
    Ok(HttpResponse::Ok().json(plans::replace(coord.store.as_ref(), plan)?))
}

/// `POST …/plans/:planId/maintenance` `{"reason"?}`: automatic failover paused.
pub(super) async fn maintenance_start(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let who = caller.require(Role::Operator)?.label();
    let req: MaintenanceRequest = optional_json(&body)?;
    let reason = req
        .reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    let plan = plans::pause(
        coord.store.as_ref(),
        &path,
        &who,
        reason,
        chrono::Utc::now(),
    )?;
    tracing::warn!(plan = %plan.id, by = %who, "maintenance mode: automatic failover paused");
    Ok(HttpResponse::Ok().json(plan))
}

/// `DELETE …/plans/:planId/maintenance`: automatic failover armed again.
pub(super) async fn maintenance_end(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let who = caller.require(Role::Operator)?.label();
    let plan = plans::resume(coord.store.as_ref(), &path, chrono::Utc::now())?;
    tracing::info!(plan = %plan.id, by = %who, "maintenance mode ended: automatic failover armed");
    Ok(HttpResponse::Ok().json(plan))
}

pub(super) async fn plan_delete(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Operator)?;
    if let Some(before) = plans::get(coord.store.as_ref(), &path)? {
        retention_change_allowed(&caller, before.retention.as_ref(), None)?;
    }
    plans::delete(coord.store.as_ref(), &path)?;
    Ok(HttpResponse::NoContent().finish())
}
