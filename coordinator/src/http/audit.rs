//! The audit middleware and `GET /v1/audit`: every mutating call an authenticated caller
//! makes, allowed or not, is recorded after it ran with its key parameters
//! ([`crate::audit`]); a call refused 401 is only counted
//! (`drmesh_api_unauthenticated_requests`), so anonymous traffic cannot grow the store.
//! The middleware also refuses a body over [`MAX_BODY`] with 413 before anything reads
//! it.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpMessage, HttpResponse};
use chrono::Utc;
use drmesh_protocol::api::Role;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::error;

use super::{Authenticated, Shared};
use crate::audit::{self, AuditRecord};
use crate::auth::Caller;
use crate::error::Error;
use crate::store::{Namespace, StoreExt};

/// The largest request body accepted: the API's JSON bodies are a few KiB.
pub const MAX_BODY: usize = 256 * 1024;

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    limit: Option<usize>,
    /// An RFC 3339 time or a record's `cursor`: the records after it, oldest first.
    since: Option<String>,
}

/// A record as listed, with the cursor that pages past it.
#[derive(Serialize)]
struct Listed {
    cursor: String,
    #[serde(flatten)]
    record: AuditRecord,
}

/// `GET /v1/audit?since=&limit=`: without `since`, the newest `limit` (default 100, at
/// most 10,000) records, newest first; with it, the records after it, oldest first, and
/// `next` (the cursor to pass as `since`) while there may be more.
pub(super) async fn audit_list(
    caller: Authenticated,
    coord: Shared,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Admin)?;
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let after = match query.since.as_deref() {
        None => None,
        Some(c) if audit::is_key(c) => Some(c.to_string()),
        Some(t) => match chrono::DateTime::parse_from_rfc3339(t) {
            Ok(t) => Some(audit::time_prefix(t.with_timezone(&Utc))),
            Err(_) => {
                return Err(Error::BadRequest(format!(
                    "since {t:?} is neither an RFC 3339 time nor a record's cursor"
                )))
            }
        },
    };
    let all = coord.store.scan(Namespace::Audit, "")?;
    let decode = |(k, v): (String, Vec<u8>)| {
        serde_json::from_slice::<AuditRecord>(&v)
            .ok()
            .map(|record| Listed { cursor: k, record })
    };
    let (records, next): (Vec<Listed>, Option<String>) = match after {
        None => (
            all.into_iter()
                .rev()
                .filter_map(decode)
                .take(limit)
                .collect(),
            None,
        ),
        Some(after) => {
            let page: Vec<Listed> = all
                .into_iter()
                .filter(|(k, _)| k.as_str() > after.as_str())
                .filter_map(decode)
                .take(limit)
                .collect();
            let next = (page.len() == limit).then(|| page[page.len() - 1].cursor.clone());
            (page, next)
        }
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({ "records": records, "next": next })))
}

fn mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// After the call: counts it if it was refused 401, else records it if it changed
/// something (or tried to) and this coordinator is in office (a follower forwards what
/// it does not serve; the leader records it).
fn record<B>(
    res: &ServiceResponse<B>,
    params: std::collections::BTreeMap<String, serde_json::Value>,
) {
    let req = res.request();
    let Some(coord) = req.app_data::<Shared>() else {
        return;
    };
    if res.status() == StatusCode::UNAUTHORIZED {
        coord.metrics.unauthenticated(req.method().as_str());
        return;
    }
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        // No token was looked at (an unknown route, a health check): nothing to record.
        return;
    };
    if !mutating(req.method()) || !coord.in_office() {
        return;
    }
    let at = Utc::now();
    let record = AuditRecord {
        at,
        actor: caller.label(),
        role: Some(caller.role),
        method: req.method().to_string(),
        path: req.path().to_string(),
        query: (!req.query_string().is_empty()).then(|| req.query_string().to_string()),
        params,
        status: res.status().as_u16(),
    };
    if let Err(e) = coord
        .store
        .put_json(Namespace::Audit, &audit::key(at), &record)
    {
        error!(error = %e, "write audit record");
    }
}

/// Middleware body: reads a mutating call's body (refusing one over [`MAX_BODY`]),
/// hands it on unchanged, runs the call, then records it.
pub async fn audited<B: MessageBody + 'static>(
    mut req: ServiceRequest,
    next: actix_web::middleware::Next<B>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let mut params = Default::default();
    if mutating(req.method()) {
        let mut payload = req.take_payload();
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk?;
            if body.len() + chunk.len() > MAX_BODY {
                let err = Error::PayloadTooLarge(format!(
                    "request body over {MAX_BODY} bytes; the API's bodies are small JSON documents"
                ));
                return Ok(req.error_response(err));
            }
            body.extend_from_slice(&chunk);
        }
        let body = body.freeze();
        params = audit::params_of(&body);
        req.set_payload(actix_web::dev::Payload::from(body));
    }
    let res = next.call(req).await?;
    record(&res, params);
    Ok(res.map_into_boxed_body())
}
