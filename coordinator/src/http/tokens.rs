//! Tokens: `POST /v1/tokens` (an admin makes one, with an optional `ttl`),
//! `GET /v1/tokens` (every token, never a secret) and `POST /v1/tokens/:id/revoke`.

use actix_web::{web, HttpResponse};
use drmesh_protocol::api::{CreateTokenRequest, Role, TokenList};

use super::{required_json, Authenticated, Shared};
use crate::auth::{self, Revoked};
use crate::error::Error;

pub(super) async fn token_create(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Admin)?;
    let req: CreateTokenRequest = required_json(&body)?;
    if let Some(name) = &req.name {
        if name.trim().is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(Error::BadRequest(
                "name must be 1 to 128 characters, none of them control characters".into(),
            ));
        }
    }
    let expires_at = match &req.ttl {
        Some(ttl) => {
            let ttl = auth::parse_ttl(ttl).map_err(Error::BadRequest)?;
            let ttl = chrono::TimeDelta::from_std(ttl)
                .map_err(|e| Error::BadRequest(format!("ttl: {e}")))?;
            Some(chrono::Utc::now() + ttl)
        }
        None => None,
    };
    let created =
        auth::create_expiring_token(coord.store.as_ref(), req.role, req.name, expires_at)?;
    Ok(HttpResponse::Created().json(created))
}

pub(super) async fn token_list(
    caller: Authenticated,
    coord: Shared,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Admin)?;
    let now = chrono::Utc::now();
    let tokens = auth::list_tokens(coord.store.as_ref())?
        .iter()
        .map(|r| r.info(now))
        .collect();
    Ok(HttpResponse::Ok().json(TokenList { tokens }))
}

pub(super) async fn token_revoke(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let by = caller.require(Role::Admin)?.who();
    let id = path.into_inner();
    let now = chrono::Utc::now();
    match auth::revoke_token(coord.store.as_ref(), &id, &by, now)? {
        Revoked::Done(record) => Ok(HttpResponse::Ok().json(record.info(now))),
        Revoked::NotFound => Err(Error::NotFound(format!("no token {id}"))),
    }
}
