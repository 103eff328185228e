//! The audit log: every call that changes something, allowed or not, recorded after it ran (middleware), and read back.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::{web, HttpMessage, HttpResponse};
use chrono::Utc;
use drmesh_protocol::api::Role;
use serde::{Deserialize, Serialize};
use tracing::error;

use super::{Authenticated, Shared};
use crate::auth::Caller;
use crate::error::Error;
use crate::store::{Namespace, StoreExt};

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    limit: Option<usize>,
}

pub(super) async fn audit_list(
    caller: Authenticated,
    coord: Shared,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Admin)?;
    let mut records: Vec<AuditRecord> = coord.store.scan_json(Namespace::Audit, "")?;
    records.reverse();
    records.truncate(query.limit.unwrap_or(100).min(10_000));
    Ok(HttpResponse::Ok().json(serde_json::json!({ "records": records })))
}

/// One line of the audit log: every call that changes something, allowed or not.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub at: chrono::DateTime<Utc>,
    pub actor: String,
    pub role: Option<Role>,
    pub method: String,
    pub path: String,
    pub status: u16,
}

pub(super) fn audit_key() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or(0);
    format!(
        "{nanos:020}-{:06}",
        SEQ.fetch_add(1, Ordering::Relaxed) % 1_000_000
    )
}

pub(super) fn record_audit<B>(res: &ServiceResponse<B>) {
    let req = res.request();
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return;
    }
    let Some(coord) = req.app_data::<Shared>() else {
        return;
    };
    let caller = req.extensions().get::<Caller>().cloned();
    let record = AuditRecord {
        at: Utc::now(),
        actor: caller
            .as_ref()
            .map_or_else(|| "anonymous".to_string(), Caller::label),
        role: caller.map(|c| c.role),
        method: req.method().to_string(),
        path: req.path().to_string(),
        status: res.status().as_u16(),
    };
    if let Err(e) = coord
        .store
        .put_json(Namespace::Audit, &audit_key(), &record)
    {
        error!(error = %e, "write audit record");
    }
}

/// Middleware body: runs the request, then audits it.
pub async fn audited<B: MessageBody>(
    req: ServiceRequest,
    next: actix_web::middleware::Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let res = next.call(req).await?;
    record_audit(&res);
    Ok(res)
}
