//! Retention routes: the policies in force and their enforcement.

use actix_web::{web, HttpResponse};
use chrono::Utc;
use drmesh_protocol::api::Role;
use serde::Deserialize;

use super::{Authenticated, Shared};
use crate::error::Error;
use crate::ops::retention;

/// `?dryRun=true`: say what would go, change nothing. `?now=T` (RFC 3339): apply the
/// policies as of T instead of now, as `drmesh repo retention --now` does; a real run so
/// is an administrator's (a later T removes backups early).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct EnforceQuery {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    now: Option<String>,
}

pub(super) async fn retention_policies(
    caller: Authenticated,
    coord: Shared,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(&coord.config.retention))
}

pub(super) async fn retention_enforce(
    caller: Authenticated,
    coord: Shared,
    query: web::Query<EnforceQuery>,
) -> Result<HttpResponse, Error> {
    caller.require(match (&query.now, query.dry_run) {
        (Some(_), false) => Role::Admin,
        _ => Role::Operator,
    })?;
    let now = match &query.now {
        Some(t) => drmesh_protocol::instant::parse_instant(t)
            .map_err(|e| Error::BadRequest(e.to_string()))?,
        None => Utc::now(),
    };
    let done = retention::enforce(&coord, query.dry_run, now)
        .await
        .ok_or_else(|| {
            Error::Unavailable("no agent with a [database] or [documents] repository is UP".into())
        })?;
    Ok(HttpResponse::Ok().json(done))
}
