//! Database backup routes: start (full, incremental, logical), list, details.

use actix_web::{web, HttpResponse};
use drmesh_protocol::api::{BackupRequest, BackupStatus, Role};
use serde::Deserialize;

use super::{optional_json, Authenticated, Shared};
use crate::error::Error;
use crate::ops::database;

#[derive(Deserialize)]
pub(super) struct BackupQuery {
    status: Option<String>,
}

impl BackupQuery {
    pub(super) fn status(&self) -> Result<Option<BackupStatus>, Error> {
        self.status
            .as_deref()
            .map(str::parse::<BackupStatus>)
            .transpose()
            .map_err(Error::BadRequest)
    }
}

pub(super) async fn database_backup(
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

pub(super) async fn database_list(
    caller: Authenticated,
    coord: Shared,
    query: web::Query<BackupQuery>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let backups = database::list(coord.store.as_ref(), query.status()?)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "backups": backups, "total": backups.len() })))
}

pub(super) async fn database_get(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let rec = database::get(coord.store.as_ref(), &path)?
        .ok_or_else(|| Error::NotFound(format!("no database backup {path}")))?;
    // Each `[[database.replicas]]` of the agent that took it: copied there or not yet.
    let locations: Vec<_> = match rec.completed_at {
        Some(done) => crate::ops::copies::statuses_of(coord.store.as_ref(), "database")
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
