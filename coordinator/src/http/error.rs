//! The one place errors become HTTP: a status, a stable code and a JSON body.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use drmesh_protocol::api::ErrorBody;
use tracing::error;

use crate::error::Error;
use crate::store::StoreError;

/// The one place errors become HTTP: a status, a stable code and a JSON body.
impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::BadRequest(_) | Error::Invalid { .. } => StatusCode::BAD_REQUEST,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::AgentFailed(_) => StatusCode::BAD_GATEWAY,
            Error::Store(StoreError::NotLeader(_) | StoreError::Unavailable(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Store(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut resp = HttpResponse::build(status);
        if status == StatusCode::UNAUTHORIZED {
            resp.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if let Error::TooManyRequests {
            retry_after_secs, ..
        } = self
        {
            resp.insert_header(("Retry-After", retry_after_secs.to_string()));
        }
        let message = match self {
            Error::Store(e @ (StoreError::NotLeader(_) | StoreError::Unavailable(_))) => {
                e.to_string()
            }
            Error::Store(e) => {
                error!(error = %e, "state store");
                format!("internal error: {e}")
            }
            other => other.to_string(),
        };
        resp.json(ErrorBody {
            status: status.as_u16(),
            error: self.code().to_string(),
            message,
            fields: match self {
                Error::Invalid { fields, .. } => fields.clone(),
                _ => Vec::new(),
            },
        })
    }
}
