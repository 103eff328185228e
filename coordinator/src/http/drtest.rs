//! DR test routes.

use actix_web::{web, HttpResponse};
use drmesh_protocol::api::Role;

use super::{Authenticated, Shared};
use crate::error::Error;
use crate::ops::drtest;
use crate::plans;

/// Starts a DR test of the plan on its first failover region's agent.
pub(super) async fn dr_test_start(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let accepted = drtest::start(&coord, &path, caller.label(), "manual")?;
    Ok(HttpResponse::Accepted().json(accepted))
}

/// The plan's newest DR test, running or finished.
pub(super) async fn dr_test_get(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let store = coord.store.as_ref();
    if plans::get(store, &path)?.is_none() {
        return Err(Error::NotFound(format!("no plan {path}")));
    }
    let test = drtest::latest_for(store, &path)?
        .ok_or_else(|| Error::NotFound(format!("plan {path} has not been tested")))?;
    Ok(HttpResponse::Ok().json(test))
}
