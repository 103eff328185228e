//! The REST API (actix-web): the runbook's routes under `/v1/backup-recovery`, tokens,
//! audit, health and metrics. Errors become JSON in one place ([`Error`]).

use std::future::{ready, Ready};
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use chrono::Utc;
use drmesh_protocol::api::{
    valid_document_id, AcknowledgeRequest, AlertStatus, BackupRequest, BackupStatus,
    CreateTokenRequest, DocumentBackup, DocumentReport, DocumentRestoreRequest, DocumentState,
    ErrorBody, PitrRequest, PlanSpec, ResolveRequest, Role, Severity,
};
use drmesh_protocol::{AgentId, CommandKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::error;

use crate::alerts::{self, AlertFilter};
use crate::auth::{self, Caller};
use crate::error::Error;
use crate::notify;
use crate::ops::database::{self};
use crate::ops::documents::{self};
use crate::ops::drtest::{self};
use crate::ops::failover::{self};
use crate::ops::recovery::{self};
use crate::ops::rejoin::{self};
use crate::ops::retention;
use crate::ops::verification::{self};
use crate::plans::{self};
use crate::state::Coordinator;
use crate::store::{Namespace, StoreExt};
use crate::transport::{self, TransportError};

/// The one place errors become HTTP: a status, a stable code and a JSON body.
impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::BadRequest(_) | Error::Invalid { .. } => StatusCode::BAD_REQUEST,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::AgentFailed(_) => StatusCode::BAD_GATEWAY,
            Error::Store(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut resp = HttpResponse::build(status);
        if status == StatusCode::UNAUTHORIZED {
            resp.insert_header(("WWW-Authenticate", "Bearer"));
        }
        let message = match self {
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

pub type Shared = web::Data<Arc<Coordinator>>;

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

fn authenticate(req: &HttpRequest) -> Result<Authenticated, Error> {
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
    let caller = auth::authenticate(coord.store.as_ref(), secret)?
        .ok_or_else(|| Error::Unauthorized("unknown or revoked token".into()))?;
    req.extensions_mut().insert(caller.clone());
    Ok(Authenticated(caller))
}

/// Parses an optional JSON body: empty means the default, anything else must be valid.
fn optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("malformed JSON body: {e}")))
}

fn required_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::BadRequest("a JSON body is required".into()));
    }
    serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("malformed JSON body: {e}")))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn dr_status(caller: Authenticated, coord: Shared) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(crate::views::dr_status(&coord)))
}

/// A plan body: 400 naming the field serde stopped at (an unknown field, a wrong type).
fn plan_spec(body: &[u8]) -> Result<PlanSpec, Error> {
    required_json(body)
}

async fn plan_create(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Operator)?;
    let known = coord.plan_vocabulary();
    let plan = plans::check(plan_spec(&body)?, &known, None)?;
    plans::create(coord.store.as_ref(), &plan)?;
    Ok(HttpResponse::Created().json(plan))
}

async fn plan_list(caller: Authenticated, coord: Shared) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let plans = plans::list(coord.store.as_ref())?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "total": plans.len(), "plans": plans })))
}

async fn plan_get(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let plan = plans::get(coord.store.as_ref(), &path)?
        .ok_or_else(|| Error::NotFound(format!("no plan {path}")))?;
    Ok(HttpResponse::Ok().json(plan))
}

async fn plan_replace(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Operator)?;
    if plans::get(coord.store.as_ref(), &path)?.is_none() {
        return Err(Error::NotFound(format!("no plan {path}")));
    }
    let known = coord.plan_vocabulary();
    let plan = plans::check(plan_spec(&body)?, &known, Some(&path))?;
    Ok(HttpResponse::Ok().json(plans::replace(coord.store.as_ref(), plan)?))
}

async fn plan_delete(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Operator)?;
    plans::delete(coord.store.as_ref(), &path)?;
    Ok(HttpResponse::NoContent().finish())
}

async fn failover_start(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: drmesh_protocol::api::FailoverRequest = required_json(&body)?;
    let accepted = failover::start(&coord, req, caller.label())?;
    Ok(HttpResponse::Accepted().json(accepted))
}

/// Starts a DR test of the plan on its first failover region's agent.
async fn dr_test_start(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let accepted = drtest::start(&coord, &path, caller.label(), "manual")?;
    Ok(HttpResponse::Accepted().json(accepted))
}

/// The plan's newest DR test, running or finished.
async fn dr_test_get(
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

/// Makes the region's fenced old primary a standby of the current primary; answers
/// once it streams.
async fn rejoin_region(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Operator)?;
    let req: drmesh_protocol::api::RejoinRequest = required_json(&body)?;
    let answer = rejoin::rejoin(&coord, &req.region).await?;
    Ok(HttpResponse::Ok().json(answer))
}

#[derive(Deserialize)]
struct NotifyTest {
    channel: String,
}

/// Sends a test notification to one configured channel, with the usual retries, and
/// says whether it got through.
async fn notify_test(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: NotifyTest = required_json(&body)?;
    let event = notify::Event::new(
        "test",
        Severity::Low,
        "drmesh test notification".into(),
        format!(
            "A test of notification channel {} asked for by {}.",
            req.channel,
            caller.label()
        ),
    );
    let coord: &Arc<crate::state::Coordinator> = &coord;
    match notify::Notifier::send(coord, &req.channel, &event).await {
        Ok(()) => Ok(HttpResponse::Ok()
            .json(serde_json::json!({ "channel": req.channel, "delivered": true }))),
        Err(e @ notify::NotifyError::UnknownChannel(_)) => Err(Error::NotFound(e.to_string())),
        Err(e) => Err(Error::Unavailable(e.to_string())),
    }
}

async fn dashboard(caller: Authenticated, coord: Shared) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(crate::views::dashboard(&coord)?))
}

#[derive(Deserialize)]
struct AlertQuery {
    severity: Option<String>,
    status: Option<String>,
}

async fn alerts_list(
    caller: Authenticated,
    coord: Shared,
    query: web::Query<AlertQuery>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let filter = AlertFilter {
        severity: query
            .severity
            .as_deref()
            .map(str::parse::<Severity>)
            .transpose()
            .map_err(Error::BadRequest)?,
        status: query
            .status
            .as_deref()
            .map(str::parse::<AlertStatus>)
            .transpose()
            .map_err(Error::BadRequest)?,
    };
    let alerts = alerts::list(coord.store.as_ref(), &filter)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "alerts": alerts, "total": alerts.len() })))
}

async fn alert_acknowledge(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: AcknowledgeRequest = required_json(&body)?;
    if req.acknowledged_by.trim().is_empty() {
        return Err(Error::BadRequest("acknowledgedBy must not be empty".into()));
    }
    let _ = caller;
    let alert = alerts::acknowledge(coord.store.as_ref(), &path, &req.acknowledged_by)?;
    Ok(HttpResponse::Ok().json(alert))
}

async fn alert_resolve(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: ResolveRequest = optional_json(&body)?;
    let by = req.resolved_by.unwrap_or_else(|| caller.label());
    let alert = alerts::resolve(coord.store.as_ref(), &path, &by)?;
    Ok(HttpResponse::Ok().json(alert))
}

async fn token_create(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Admin)?;
    let req: CreateTokenRequest = required_json(&body)?;
    let created = auth::create_token(coord.store.as_ref(), req.role, req.name)?;
    Ok(HttpResponse::Created().json(created))
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit_list(
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

async fn agent_ping(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Operator)?;
    let agent: AgentId = path
        .parse()
        .map_err(|e| Error::BadRequest(format!("{e}")))?;
    let started = std::time::Instant::now();
    match transport::send_command(&coord, &agent, CommandKind::Ping, Duration::from_secs(10)).await
    {
        Ok(result) => Ok(HttpResponse::Ok().json(serde_json::json!({
            "agentId": agent,
            "ok": result.ok,
            "message": result.message,
            "roundTripMs": started.elapsed().as_secs_f64() * 1000.0,
        }))),
        Err(TransportError::NotConnected(a)) => {
            Err(Error::NotFound(format!("agent {a} is not connected")))
        }
        Err(e) => Err(Error::Unavailable(format!("ping {agent}: {e}"))),
    }
}

async fn documents_backup(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: BackupRequest = optional_json(&body)?;
    let accepted = documents::start_backup(&coord, req.tags, caller.label())?;
    Ok(HttpResponse::Accepted().json(accepted))
}

#[derive(Deserialize)]
struct BackupQuery {
    status: Option<String>,
}

impl BackupQuery {
    fn status(&self) -> Result<Option<BackupStatus>, Error> {
        self.status
            .as_deref()
            .map(str::parse::<BackupStatus>)
            .transpose()
            .map_err(Error::BadRequest)
    }
}

async fn database_backup(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: BackupRequest = optional_json(&body)?;
    let backup_type = match (path.as_str(), req.backup_type.as_deref()) {
        ("full", None | Some("physical" | "full")) => database::BackupType::Full,
        ("full", Some("logical")) => database::BackupType::Logical,
        ("incremental", None | Some("physical" | "incremental")) => {
            database::BackupType::Incremental
        }
        ("full" | "incremental", Some(other)) => {
            return Err(Error::BadRequest(format!(
                "type {other:?}: \"physical\" (the default) or, for a full backup, \"logical\""
            )))
        }
        (other, _) => {
            return Err(Error::NotFound(format!(
                "no backup type {other:?}: full or incremental"
            )))
        }
    };
    let accepted = database::start_backup(&coord, backup_type, req.tags, caller.label())?;
    Ok(HttpResponse::Accepted().json(accepted))
}

async fn pitr_info(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(recovery::info(&coord, &path).await?))
}

async fn pitr_start(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: PitrRequest = required_json(&body)?;
    let run = recovery::start(&coord, req, caller.label())?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "recoveryId": run.recovery_id,
        "status": "INITIATED",
        "targetTimestamp": run.target_timestamp,
        "targetEnvironment": run.target_environment,
        "backupId": run.backup_id,
        "agentId": run.agent_id,
        "startedAt": run.started_at,
    })))
}

async fn database_list(
    caller: Authenticated,
    coord: Shared,
    query: web::Query<BackupQuery>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let backups = database::list(coord.store.as_ref(), query.status()?)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "backups": backups, "total": backups.len() })))
}

async fn database_get(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let rec = database::get(coord.store.as_ref(), &path)?
        .ok_or_else(|| Error::NotFound(format!("no database backup {path}")))?;
    // Each `[[database.replicas]]` of the agent that took it: copied there or not yet.
    let locations: Vec<_> = match rec.completed_at {
        Some(done) => crate::ops::replication::statuses_of(coord.store.as_ref(), "database")
            .into_iter()
            .filter(|s| s.agent_id == rec.agent_id.as_str())
            .map(|s| s.backup(&rec.backup_id, done))
            .collect(),
        None => Vec::new(),
    };
    let mut body = serde_json::to_value(&rec)
        .map_err(|e| Error::Internal(format!("encode the backup: {e}")))?;
    body["locations"] = serde_json::json!(locations);
    Ok(HttpResponse::Ok().json(body))
}

async fn verification_start(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let accepted = verification::start(&coord, &path, caller.label())?;
    Ok(HttpResponse::Accepted().json(accepted))
}

async fn verify_all_start(caller: Authenticated, coord: Shared) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let accepted = verification::all::start(&coord, caller.label())?;
    Ok(if accepted.queued.is_empty() {
        HttpResponse::Ok().json(accepted)
    } else {
        HttpResponse::Accepted().json(accepted)
    })
}

async fn verify_all_newest(caller: Authenticated, coord: Shared) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let run = verification::all::newest(coord.store.as_ref())?
        .ok_or_else(|| Error::NotFound("no verify-all run yet".into()))?;
    Ok(HttpResponse::Ok().json(run))
}

async fn verify_all_get(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let run = verification::all::get(coord.store.as_ref(), &path)?
        .ok_or_else(|| Error::NotFound(format!("no verify-all run {path}")))?;
    Ok(HttpResponse::Ok().json(run))
}

async fn lifecycle_stats(caller: Authenticated, coord: Shared) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let stats = verification::lifecycle::stats(coord.store.as_ref(), Utc::now())?;
    Ok(HttpResponse::Ok().json(stats))
}

async fn verification_get(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let store = coord.store.as_ref();
    if database::get(store, &path)?.is_none() {
        return Err(Error::NotFound(format!("no database backup {path}")));
    }
    let rec = verification::latest(store, &path)?
        .ok_or_else(|| Error::NotFound(format!("backup {path} has not been verified")))?;
    Ok(HttpResponse::Ok().json(rec))
}

async fn documents_list(
    caller: Authenticated,
    coord: Shared,
    query: web::Query<BackupQuery>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let backups = documents::list(coord.store.as_ref(), query.status()?)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "backups": backups, "total": backups.len() })))
}

fn document_backup(coord: &Coordinator, id: &str) -> Result<DocumentBackup, Error> {
    documents::get(coord.store.as_ref(), id)?
        .ok_or_else(|| Error::NotFound(format!("no document backup {id}")))
}

async fn documents_get(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(document_backup(&coord, &path)?))
}

async fn documents_verify(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Operator)?;
    let pending = documents::start_verify(&coord, &path)?;
    Ok(HttpResponse::Accepted().json(pending))
}

async fn documents_verification(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let rec = document_backup(&coord, &path)?;
    let v = rec.verification.ok_or_else(|| {
        Error::NotFound(format!(
            "backup {} has not been verified; POST to this path starts a verification",
            rec.backup_id
        ))
    })?;
    Ok(HttpResponse::Ok().json(v))
}

async fn documents_restore(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Operator)?;
    let req: DocumentRestoreRequest = optional_json(&body)?;
    if let Some(t) = &req.target_directory {
        if !t.starts_with('/') {
            return Err(Error::BadRequest(format!(
                "targetDirectory {t:?} must be an absolute path"
            )));
        }
    }
    let pending = documents::start_restore(&coord, &path, req)?;
    Ok(HttpResponse::Accepted().json(pending))
}

async fn documents_statistics(caller: Authenticated, coord: Shared) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(documents::statistics(coord.store.as_ref())?))
}

/// `GET /v1/documents?status=failed&checksums=true`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DocumentsQuery {
    /// `ok`, `modified`, `failed` or `new`: only the documents in that state.
    status: Option<String>,
    /// Compare contents too (reads every file), not only sizes and times.
    #[serde(default)]
    checksums: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DocumentQuery {
    #[serde(default)]
    checksums: bool,
}

/// The runbook's document routes: the documents on disk against the newest document
/// backup, to find what a storage failure took and check a restore brought it back.
async fn documents_on_disk(
    caller: Authenticated,
    coord: Shared,
    query: web::Query<DocumentsQuery>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let q = query.into_inner();
    let wanted = match q.status.as_deref() {
        None | Some("all") => None,
        Some(s) => Some(DocumentState::parse(s).ok_or_else(|| {
            Error::BadRequest(format!(
                "status {s:?}: one of ok, modified, failed, new, all"
            ))
        })?),
    };
    let mut report = documents::check(&coord, None, q.checksums).await?;
    if let Some(state) = wanted {
        report.documents.retain(|d| d.status == state);
    }
    Ok(HttpResponse::Ok().json(report))
}

async fn document_get(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
    query: web::Query<DocumentQuery>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let id = path.into_inner();
    if !valid_document_id(&id) {
        return Err(Error::BadRequest(format!(
            "document id {id:?}: one directory name"
        )));
    }
    let report = documents::check(&coord, Some(id.clone()), query.checksums).await?;
    let Some(doc) = report.documents.into_iter().next() else {
        return Err(Error::NotFound(format!(
            "no document {id}: neither on disk under documents/{id}/ nor in backup {}",
            report.backup_id
        )));
    };
    Ok(HttpResponse::Ok().json(DocumentReport {
        document: doc,
        backup_id: report.backup_id,
        backup_finished_at: report.backup_finished_at,
        checked_at: report.checked_at,
        checksums: report.checksums,
    }))
}

/// `?dryRun=true`: say what would go, change nothing. `?now=T` (RFC 3339): apply the
/// policies as of T instead of now, as `drmesh repo retention --now` does; a real run so
/// is an administrator's (a later T removes backups early).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnforceQuery {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    now: Option<String>,
}

async fn retention_policies(caller: Authenticated, coord: Shared) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(&coord.config.retention))
}

async fn retention_enforce(
    caller: Authenticated,
    coord: Shared,
    query: web::Query<EnforceQuery>,
) -> Result<HttpResponse, Error> {
    caller.require(match (&query.now, query.dry_run) {
        (Some(_), false) => Role::Admin,
        _ => Role::Operator,
    })?;
    let now = match &query.now {
        Some(t) => drmesh_protocol::instant::parse_instant(t)
            .map_err(|e| Error::BadRequest(e.to_string()))?,
        None => Utc::now(),
    };
    let done = retention::enforce(&coord, query.dry_run, now)
        .await
        .ok_or_else(|| {
            Error::Unavailable("no agent with a [database] or [documents] repository is UP".into())
        })?;
    Ok(HttpResponse::Ok().json(done))
}

async fn metrics(caller: Authenticated, coord: Shared) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let agents = coord.agent_statuses();
    let alerts = alerts::counts(coord.store.as_ref())?;
    let text = coord
        .metrics
        .render(&agents, &alerts)
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, Error> {
    Err(Error::NotFound(format!(
        "no route {} {}",
        req.method(),
        req.path()
    )))
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

fn audit_key() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or(0);
    format!(
        "{nanos:020}-{:06}",
        SEQ.fetch_add(1, Ordering::Relaxed) % 1_000_000
    )
}

fn record_audit<B>(res: &ServiceResponse<B>) {
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
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics))
        .route(
            &format!("{base}/disaster-recovery/status"),
            web::get().to(dr_status),
        )
        .route(
            &format!("{base}/disaster-recovery/plans"),
            web::post().to(plan_create),
        )
        .route(
            &format!("{base}/disaster-recovery/plans"),
            web::get().to(plan_list),
        )
        .route(
            &format!("{base}/disaster-recovery/plans/{{planId}}"),
            web::get().to(plan_get),
        )
        .route(
            &format!("{base}/disaster-recovery/plans/{{planId}}"),
            web::put().to(plan_replace),
        )
        .route(
            &format!("{base}/disaster-recovery/plans/{{planId}}"),
            web::delete().to(plan_delete),
        )
        .route(
            &format!("{base}/monitoring/dashboard"),
            web::get().to(dashboard),
        )
        .route(
            &format!("{base}/monitoring/alerts"),
            web::get().to(alerts_list),
        )
        .route(
            &format!("{base}/monitoring/alerts/{{alertId}}/acknowledge"),
            web::post().to(alert_acknowledge),
        )
        .route(
            &format!("{base}/monitoring/alerts/{{alertId}}/resolve"),
            web::post().to(alert_resolve),
        )
        .route(
            &format!("{base}/database/backup/{{type}}"),
            web::post().to(database_backup),
        )
        .route(
            &format!("{base}/recovery/point-in-time/{{timestamp}}"),
            web::get().to(pitr_info),
        )
        .route(
            &format!("{base}/disaster-recovery/point-in-time-recovery"),
            web::post().to(pitr_start),
        )
        .route(
            &format!("{base}/database/backups"),
            web::get().to(database_list),
        )
        .route(
            &format!("{base}/database/backups/{{backupId}}"),
            web::get().to(database_get),
        )
        .route(
            &format!("{base}/verification/verify/{{backupId}}"),
            web::post().to(verification_start),
        )
        // Before `verification/{backupId}`, which would take these names as backup ids.
        .route(
            &format!("{base}/verification/verify-all"),
            web::post().to(verify_all_start),
        )
        .route(
            &format!("{base}/verification/verify-all"),
            web::get().to(verify_all_newest),
        )
        .route(
            &format!("{base}/verification/verify-all/{{runId}}"),
            web::get().to(verify_all_get),
        )
        .route(
            &format!("{base}/verification/lifecycle-stats"),
            web::get().to(lifecycle_stats),
        )
        .route(
            &format!("{base}/verification/{{backupId}}"),
            web::get().to(verification_get),
        )
        .route(
            &format!("{base}/documents/backup"),
            web::post().to(documents_backup),
        )
        .route(
            &format!("{base}/documents/backups"),
            web::get().to(documents_list),
        )
        .route(
            &format!("{base}/documents/backups/{{backupId}}"),
            web::get().to(documents_get),
        )
        .route(
            &format!("{base}/documents/backups/{{backupId}}/verify"),
            web::post().to(documents_verify),
        )
        .route(
            &format!("{base}/documents/backups/{{backupId}}/verify"),
            web::get().to(documents_verification),
        )
        .route(
            &format!("{base}/documents/backups/{{backupId}}/restore"),
            web::post().to(documents_restore),
        )
        .route(
            &format!("{base}/documents/statistics"),
            web::get().to(documents_statistics),
        )
        .route(
            &format!("{base}/disaster-recovery/failover"),
            web::post().to(failover_start),
        )
        .route(
            &format!("{base}/disaster-recovery/rejoin"),
            web::post().to(rejoin_region),
        )
        .route(
            &format!("{base}/disaster-recovery/test/{{planId}}"),
            web::post().to(dr_test_start),
        )
        .route(
            &format!("{base}/disaster-recovery/test/{{planId}}"),
            web::get().to(dr_test_get),
        )
        .route(
            &format!("{base}/retention/policies"),
            web::get().to(retention_policies),
        )
        .route(
            &format!("{base}/retention/enforce-policies"),
            web::post().to(retention_enforce),
        )
        .route(
            &format!("{base}/notifications/test"),
            web::post().to(notify_test),
        )
        .route("/v1/documents", web::get().to(documents_on_disk))
        .route("/v1/documents/{documentId}", web::get().to(document_get))
        .route("/v1/tokens", web::post().to(token_create))
        .route("/v1/audit", web::get().to(audit_list))
        .route("/v1/agents/{agentId}/ping", web::post().to(agent_ping))
        .default_service(web::to(not_found));
}

/// The runbook writes some paths without the version (`/backup-recovery/...`, as in its
/// quick reference): they are the `/v1/backup-recovery/...` routes.
const UNVERSIONED: &str = "/backup-recovery";

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

/// Middleware body: runs the request, then audits it.
pub async fn audited<B: MessageBody>(
    req: ServiceRequest,
    next: actix_web::middleware::Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let res = next.call(req).await?;
    record_audit(&res);
    Ok(res)
}
