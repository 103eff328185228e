//! `POST /v1/tokens`: an admin makes a token.

use actix_web::{web, HttpResponse};
use drmesh_protocol::api::{CreateTokenRequest, Role};

use super::{required_json, Authenticated, Shared};
use crate::auth;
use crate::error::Error;

pub(super) async fn token_create(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Admin)?;
    let req: CreateTokenRequest = required_json(&body)?;
    let created = auth::create_token(coord.store.as_ref(), req.role, req.name)?;
    Ok(HttpResponse::Created().json(created))
}
