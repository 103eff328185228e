//! The REST API (actix-web): the runbook's routes under `/v1/backup-recovery`, tokens,
//! audit, health and metrics.
//!
//! - this file: the route table ([`configure`]) and the JSON body readers;
//! - [`auth`]: the bearer-token extractor and roles;
//! - [`audit`]: the audit middleware and log;
//! - [`paths`]: the runbook's unversioned paths, JSON 404s;
//! - [`forward`]: a follower forwards writes and live reads to the leader;
//! - `error`: [`crate::error::Error`] as HTTP, in one place;
//! - one file of handlers per noun: `status`, `plans`, `failover`, `drtest`, `alerts`,
//!   `tokens`, `backups`, `recovery`, `verification`, `documents`, `retention`.

mod alerts;
pub mod audit;
pub mod auth;
mod backups;
mod documents;
mod drtest;
mod error;
mod failover;
pub mod forward;
pub mod paths;
mod plans;
mod recovery;
mod retention;
mod status;
mod tokens;
mod verification;

use std::sync::Arc;

use actix_web::web;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::state::Coordinator;

pub use audit::audited;
pub use auth::Authenticated;
pub use forward::forwarded;
pub use paths::unversioned;

pub type Shared = web::Data<Arc<Coordinator>>;

/// Parses an optional JSON body: empty means the default, anything else must be valid.
pub(crate) fn optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("malformed JSON body: {e}")))
}

pub(crate) fn required_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::BadRequest("a JSON body is required".into()));
    }
    serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("malformed JSON body: {e}")))
}

/// Routes and error handlers; used by the server and by in-process tests.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let json_errors = web::JsonConfig::default()
        .content_type(|_| true)
        .error_handler(|err, _| Error::BadRequest(format!("malformed JSON body: {err}")).into());
    let query_errors = web::QueryConfig::default()
        .error_handler(|err, _| Error::BadRequest(format!("bad query string: {err}")).into());
    let path_errors = web::PathConfig::default()
        .error_handler(|err, _| Error::BadRequest(format!("bad path: {err}")).into());
    let base = "/v1/backup-recovery";
    cfg.app_data(json_errors)
        .app_data(query_errors)
        .app_data(path_errors)
        .route("/healthz", web::get().to(status::healthz))
        .route("/metrics", web::get().to(status::metrics))
        .route(
            &format!("{base}/disaster-recovery/status"),
            web::get().to(status::dr_status),
        )
        .route(
            &format!("{base}/disaster-recovery/plans"),
            web::post().to(plans::plan_create),
        )
        .route(
            &format!("{base}/disaster-recovery/plans"),
            web::get().to(plans::plan_list),
        )
        .route(
            &format!("{base}/disaster-recovery/plans/{{planId}}"),
            web::get().to(plans::plan_get),
        )
        .route(
            &format!("{base}/disaster-recovery/plans/{{planId}}"),
            web::put().to(plans::plan_replace),
        )
        .route(
            &format!("{base}/disaster-recovery/plans/{{planId}}"),
            web::delete().to(plans::plan_delete),
        )
        .route(
            &format!("{base}/disaster-recovery/plans/{{planId}}/maintenance"),
            web::post().to(plans::maintenance_start),
        )
        .route(
            &format!("{base}/disaster-recovery/plans/{{planId}}/maintenance"),
            web::delete().to(plans::maintenance_end),
        )
        .route(
            &format!("{base}/monitoring/dashboard"),
            web::get().to(status::dashboard),
        )
        .route(
            &format!("{base}/monitoring/alerts"),
            web::get().to(alerts::alerts_list),
        )
        .route(
            &format!("{base}/monitoring/alerts/{{alertId}}/acknowledge"),
            web::post().to(alerts::alert_acknowledge),
        )
        .route(
            &format!("{base}/monitoring/alerts/{{alertId}}/resolve"),
            web::post().to(alerts::alert_resolve),
        )
        .route(
            &format!("{base}/database/backup/{{type}}"),
            web::post().to(backups::database_backup),
        )
        .route(
            &format!("{base}/recovery/point-in-time/{{timestamp}}"),
            web::get().to(recovery::pitr_info),
        )
        .route(
            &format!("{base}/disaster-recovery/point-in-time-recovery"),
            web::post().to(recovery::pitr_start),
        )
        .route(
            &format!("{base}/database/backups"),
            web::get().to(backups::database_list),
        )
        .route(
            &format!("{base}/database/backups/{{backupId}}"),
            web::get().to(backups::database_get),
        )
        .route(
            &format!("{base}/verification/verify/{{backupId}}"),
            web::post().to(verification::verification_start),
        )
        // Before `verification/{backupId}`, which would take these names as backup ids.
        .route(
            &format!("{base}/verification/verify-all"),
            web::post().to(verification::verify_all_start),
        )
        .route(
            &format!("{base}/verification/verify-all"),
            web::get().to(verification::verify_all_newest),
        )
        .route(
            &format!("{base}/verification/verify-all/{{runId}}"),
            web::get().to(verification::verify_all_get),
        )
        .route(
            &format!("{base}/verification/lifecycle-stats"),
            web::get().to(verification::lifecycle_stats),
        )
        .route(
            &format!("{base}/verification/{{backupId}}"),
            web::get().to(verification::verification_get),
        )
        .route(
            &format!("{base}/documents/backup"),
            web::post().to(documents::documents_backup),
        )
        .route(
            &format!("{base}/documents/backups"),
            web::get().to(documents::documents_list),
        )
        .route(
            &format!("{base}/documents/backups/{{backupId}}"),
            web::get().to(documents::documents_get),
        )
        .route(
            &format!("{base}/documents/backups/{{backupId}}/verify"),
            web::post().to(documents::documents_verify),
        )
        .route(
            &format!("{base}/documents/backups/{{backupId}}/verify"),
            web::get().to(documents::documents_verification),
        )
        .route(
            &format!("{base}/documents/backups/{{backupId}}/restore"),
            web::post().to(documents::documents_restore),
        )
        .route(
            &format!("{base}/documents/statistics"),
            web::get().to(documents::documents_statistics),
        )
        .route(
            &format!("{base}/disaster-recovery/failover"),
            web::post().to(failover::failover_start),
        )
        .route(
            &format!("{base}/disaster-recovery/switchover"),
            web::post().to(failover::switchover_start),
        )
        .route(
            &format!("{base}/disaster-recovery/failover/{{failoverId}}/retry"),
            web::post().to(failover::failover_retry),
        )
        .route(
            &format!("{base}/disaster-recovery/failover/{{failoverId}}/confirm-fenced"),
            web::post().to(failover::failover_confirm_fenced),
        )
        .route(
            &format!("{base}/disaster-recovery/failover/{{failoverId}}/abort"),
            web::post().to(failover::failover_abort),
        )
        .route(
            &format!("{base}/disaster-recovery/rejoin"),
            web::post().to(failover::rejoin_region),
        )
        .route(
            &format!("{base}/disaster-recovery/test/{{planId}}"),
            web::post().to(drtest::dr_test_start),
        )
        .route(
            &format!("{base}/disaster-recovery/test/{{planId}}"),
            web::get().to(drtest::dr_test_get),
        )
        .route(
            &format!("{base}/retention/policies"),
            web::get().to(retention::retention_policies),
        )
        .route(
            &format!("{base}/retention/enforce-policies"),
            web::post().to(retention::retention_enforce),
        )
        .route(
            &format!("{base}/notifications/test"),
            web::post().to(status::notify_test),
        )
        .route("/v1/documents", web::get().to(documents::documents_on_disk))
        .route(
            "/v1/documents/{documentId}",
            web::get().to(documents::document_get),
        )
        .route("/v1/tokens", web::post().to(tokens::token_create))
        .route("/v1/tokens", web::get().to(tokens::token_list))
        .route(
            "/v1/tokens/{tokenId}/revoke",
            web::post().to(tokens::token_revoke),
        )
        .route("/v1/audit", web::get().to(audit::audit_list))
        .route(
            "/v1/agents/{agentId}/ping",
            web::post().to(status::agent_ping),
        )
        .default_service(web::to(paths::not_found));
}
