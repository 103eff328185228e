//! Backup verification routes, `verify-all` and the lifecycle statistics.

use actix_web::{web, HttpResponse};
use chrono::Utc;
use drmesh_protocol::api::Role;

use super::{Authenticated, Shared};
use crate::error::Error;
use crate::ops::database;
use crate::ops::verification;

pub(super) async fn verification_start(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let accepted = verification::start(&coord, &path, caller.label())?;
    Ok(HttpResponse::Accepted().json(accepted))
}

pub(super) async fn verify_all_start(
    caller: Authenticated,
    coord: Shared,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let accepted = verification::all::start(&coord, caller.label())?;
    Ok(if accepted.queued.is_empty() {
        HttpResponse::Ok().json(accepted)
    } else {
        HttpResponse::Accepted().json(accepted)
    })
}

pub(super) async fn verify_all_newest(
    caller: Authenticated,
    coord: Shared,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let run = verification::all::newest(coord.store.as_ref())?
        .ok_or_else(|| Error::NotFound("no verify-all run yet".into()))?;
    Ok(HttpResponse::Ok().json(run))
}

pub(super) async fn verify_all_get(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let run = verification::all::get(coord.store.as_ref(), &path)?
        .ok_or_else(|| Error::NotFound(format!("no verify-all run {path}")))?;
    Ok(HttpResponse::Ok().json(run))
}

pub(super) async fn lifecycle_stats(
    caller: Authenticated,
    coord: Shared,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let stats = verification::lifecycle::stats(coord.store.as_ref(), Utc::now())?;
    Ok(HttpResponse::Ok().json(stats))
}

pub(super) async fn verification_get(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let store = coord.store.as_ref();
    if database::get(store, &path)?.is_none() {
        return Err(Error::NotFound(format!("no database backup {path}")));
    }
    let rec = verification::latest(store, &path)?
        .ok_or_else(|| Error::NotFound(format!("backup {path} has not been verified")))?;
    Ok(HttpResponse::Ok().json(rec))
}
