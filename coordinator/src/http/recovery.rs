//! Point-in-time recovery routes.

use actix_web::{web, HttpResponse};
use drmesh_protocol::api::{PitrRequest, Role};

use super::{required_json, Authenticated, Shared};
use crate::error::Error;
use crate::ops::recovery;

pub(super) async fn pitr_info(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(recovery::info(&coord, &path).await?))
}

pub(super) async fn pitr_start(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: PitrRequest = required_json(&body)?;
    let run = recovery::start(&coord, req, caller.label())?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "recoveryId": run.recovery_id,
        "status": "INITIATED",
        "targetTimestamp": run.target_timestamp,
        "targetEnvironment": run.target_environment,
        "backupId": run.backup_id,
        "agentId": run.agent_id,
        "startedAt": run.started_at,
    })))
}
