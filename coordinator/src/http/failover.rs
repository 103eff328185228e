//! Failover and rejoin routes.

use actix_web::{web, HttpResponse};
use drmesh_protocol::api::Role;

use super::{optional_json, required_json, Authenticated, Shared};
use crate::error::Error;
use crate::ops::failover;
use crate::ops::rejoin;

pub(super) async fn failover_start(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: drmesh_protocol::api::FailoverRequest = required_json(&body)?;
    let accepted = failover::start(&coord, req, caller.label())?;
    Ok(HttpResponse::Accepted().json(accepted))
}

/// `POST …/disaster-recovery/switchover`: a planned switchover, with no data loss.
pub(super) async fn switchover_start(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: drmesh_protocol::api::SwitchoverRequest = required_json(&body)?;
    let accepted = failover::switchover::start(&coord, req, caller.label())?;
    Ok(HttpResponse::Accepted().json(accepted))
}

/// `POST …/failover/:id/retry`: a FAILED failover runs again from its failed step.
pub(super) async fn failover_retry(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let accepted = failover::retry(&coord, &path, &caller.label())?;
    Ok(HttpResponse::Accepted().json(accepted))
}

/// `POST …/failover/:id/confirm-fenced`: an operator stopped a server by hand that its
/// agent cannot fence; body optional, `{"agentId": "…"}` (without it: every server
/// step 2 waits on).
pub(super) async fn failover_confirm_fenced(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: drmesh_protocol::api::ConfirmFencedRequest = optional_json(&body)?;
    let confirmed = failover::confirm_fenced(&coord, &path, req.agent_id, &caller.label())?;
    Ok(HttpResponse::Ok().json(confirmed))
}

/// `POST …/failover/:id/abort`: a running or FAILED failover stops at its next step
/// boundary; a promotion already done stays (the answer says so).
pub(super) async fn failover_abort(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let aborted = failover::abort(&coord, &path, &caller.label())?;
    Ok(HttpResponse::Ok().json(aborted))
}

/// Makes the region's fenced old primary a standby of the current primary; answers
/// once it streams.
pub(super) async fn rejoin_region(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Operator)?;
    let req: drmesh_protocol::api::RejoinRequest = required_json(&body)?;
    let answer = rejoin::rejoin(&coord, &req.region).await?;
    Ok(HttpResponse::Ok().json(answer))
}
