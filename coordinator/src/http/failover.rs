//! Failover and rejoin routes.

use actix_web::{web, HttpResponse};
use drmesh_protocol::api::Role;

use super::{required_json, Authenticated, Shared};
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
