//! Paths: the runbook's unversioned `/backup-recovery/...` served as `/v1/...`, and JSON 404s for the rest.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{HttpRequest, HttpResponse};

use crate::error::Error;

pub(super) async fn not_found(req: HttpRequest) -> Result<HttpResponse, Error> {
    Err(Error::NotFound(format!(
        "no route {} {}",
        req.method(),
        req.path()
    )))
}

/// The runbook writes some paths without the version (`/backup-recovery/...`, as in its
/// quick reference): they are the `/v1/backup-recovery/...` routes.
pub(super) const UNVERSIONED: &str = "/backup-recovery";

/// Middleware body: a request for an unversioned runbook path (see [`UNVERSIONED`]) is
/// routed as the same path under `/v1`.
pub async fn unversioned<B: MessageBody>(
    mut req: ServiceRequest,
    next: actix_web::middleware::Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let path = req.path();
    let unversioned = path == UNVERSIONED
        || path
            .strip_prefix(UNVERSIONED)
            .is_some_and(|rest| rest.starts_with('/'));
    if unversioned {
        let mut parts = req.head().uri.clone().into_parts();
        let versioned = parts
            .path_and_query
            .as_ref()
            .and_then(|pq| format!("/v1{pq}").parse().ok());
        if versioned.is_some() {
            parts.path_and_query = versioned;
            if let Ok(uri) = actix_web::http::Uri::from_parts(parts) {
                req.match_info_mut().get_mut().update(&uri);
                req.head_mut().uri = uri;
            }
        }
    }
    next.call(req).await
}
