//! The bearer-token extractor: a handler that takes an [`Authenticated`] requires a token, and `require` checks its role.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use drmesh_protocol::api::Role;

use super::Shared;
use crate::auth::{self, Authentication, Caller};
use crate::error::Error;
use crate::rules::limits::{Bucket, Expensive};
use crate::store::StoreError;

/// The authenticated caller; extracting it is what makes a route require a token.
pub struct Authenticated(pub Caller);

impl Authenticated {
    pub fn require(&self, need: Role) -> Result<&Caller, Error> {
        if self.0.role >= need {
            Ok(&self.0)
        } else {
            Err(Error::Forbidden {
                need,
                have: self.0.role,
            })
        }
    }
}

impl FromRequest for Authenticated {
    type Error = Error;
    type Future = Ready<Result<Self, Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

pub(super) fn authenticate(req: &HttpRequest) -> Result<Authenticated, Error> {
    let coord = req
        .app_data::<Shared>()
        .ok_or_else(|| Error::Internal("application state missing".into()))?;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            Error::Unauthorized("missing Authorization: Bearer <token> header".into())
        })?;
    let value = header
        .to_str()
        .map_err(|_| Error::Unauthorized("Authorization header is not text".into()))?;
    let secret = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| Error::Unauthorized("Authorization must be `Bearer <token>`".into()))?
        .trim();
    let now = std::time::Instant::now();
    let wall = chrono::Utc::now();
    let refused = |why: String| {
        coord.recent_callers.forget(secret);
        Err(Error::Unauthorized(why))
    };
    let caller = match auth::authenticate(coord.store.as_ref(), secret, wall) {
        Ok(Authentication::Known {
            caller,
            last_used_at,
        }) => {
            coord.recent_callers.remember(secret, &caller, now);
            // Only the coordinator in office writes; at most once a minute a token.
            if coord.in_office()
                && last_used_at.is_none_or(|t| wall - t >= auth::LAST_USED_RESOLUTION)
            {
                if let Err(e) = auth::note_use(coord.store.as_ref(), secret, wall) {
                    tracing::debug!(token = %caller.token_id, error = %e, "last use not recorded");
                }
            }
            caller
        }
        Ok(Authentication::Unknown) => return refused("unknown token".into()),
        Ok(Authentication::Revoked { id, at }) => {
            return refused(format!("token {id} was revoked at {}", at.to_rfc3339()))
        }
        Ok(Authentication::Expired { id, at }) => {
            return refused(format!("token {id} expired at {}", at.to_rfc3339()))
        }
        // The store does not answer: a read by a caller seen lately is answered (the
        // status says why nothing is decided); nothing else is.
        Err(e @ StoreError::Unavailable(_)) => match coord.recent_callers.recall(secret, now) {
            Some(caller) if req.method() == actix_web::http::Method::GET => caller,
            _ => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    // Known before the limit is applied, so a call refused 429 is audited too.
    req.extensions_mut().insert(caller.clone());
    if req.method() == actix_web::http::Method::POST {
        if let Some(kind) = Expensive::of(req.path()) {
            take_one(coord, &caller, kind, now)?;
        }
    }
    Ok(Authenticated(caller))
}

/// The most buckets kept: past it, the full ones (tokens idle for a minute) go.
const MAX_BUCKETS: usize = 10_000;

/// One expensive call of `kind` by `caller`'s token, or 429 with when to retry.
fn take_one(
    coord: &Shared,
    caller: &Caller,
    kind: Expensive,
    now: std::time::Instant,
) -> Result<(), Error> {
    let per_minute = coord.config.expensive_per_minute;
    let mut buckets = coord.buckets.lock();
    if buckets.len() >= MAX_BUCKETS {
        buckets.retain(|_, b| {
            now.saturating_duration_since(b.at) < std::time::Duration::from_secs(60)
        });
    }
    let key = (caller.token_id.clone(), kind);
    let bucket = buckets
        .get(&key)
        .copied()
        .unwrap_or_else(|| Bucket::full(per_minute, now));
    match bucket.take(now, per_minute) {
        Ok(next) => {
            buckets.insert(key, next);
            Ok(())
        }
        Err(wait) => {
            let secs = wait.as_secs() + 1;
            Err(Error::TooManyRequests {
                message: format!(
                    "token {} made its {per_minute} {} calls of the last minute \
                     ([limits] expensive_per_minute); retry in {secs} s",
                    caller.token_id,
                    kind.name()
                ),
                retry_after_secs: secs,
            })
        }
    }
}
