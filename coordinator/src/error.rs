//! The coordinator's one error type. Every operation an operator can ask for (REST
//! handlers, the drivers they call) fails with an [`Error`]; it becomes an HTTP response
//! in one place (`impl ResponseError` in `crate::api`), with a stable code, and keeps
//! its source error when it has one.

use drmesh_protocol::api::{FieldError, Role};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No token, or one that is not known: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// The token's role is below what the call needs: 403.
    #[error("this call needs the {need} role; the token has {have}")]
    Forbidden { need: Role, have: Role },
    /// What the call names does not exist: 404.
    #[error("{0}")]
    NotFound(String),
    /// A bad request, said in words: 400.
    #[error("{0}")]
    BadRequest(String),
    /// A body with bad fields, each named: 400.
    #[error("{message}")]
    Invalid {
        message: String,
        fields: Vec<FieldError>,
    },
    /// It clashes with what runs or exists: 409.
    #[error("{0}")]
    Conflict(String),
    /// The request's body is larger than any the API takes: 413.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The token made too many expensive calls of this kind lately: 429, with when to
    /// retry.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// No agent that could do it is connected and UP, or it could not be asked: 503.
    #[error("{0}")]
    Unavailable(String),
    /// An agent was asked and failed, or answered what could not be read: 502.
    #[error("{0}")]
    AgentFailed(String),
    /// The state store failed: 500.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else that should not happen: 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A stable code for clients, beside the HTTP status.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden { .. } => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::BadRequest(_) | Error::Invalid { .. } => "bad_request",
            Error::Conflict(_) => "conflict",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::TooManyRequests { .. } => "too_many_requests",
            Error::Unavailable(_) => "unavailable",
            Error::AgentFailed(_) => "agent_failed",
            Error::Store(StoreError::NotLeader(_)) => "not_leader",
            Error::Store(StoreError::Unavailable(_)) => "unavailable",
            Error::Store(_) | Error::Internal(_) => "internal",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
