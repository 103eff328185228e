//! Document backup routes and the documents on disk against the newest backup.

use actix_web::{web, HttpResponse};
use drmesh_protocol::api::{
    valid_document_id, BackupRequest, DocumentBackup, DocumentReport, DocumentRestoreRequest,
    DocumentState, Role,
};
use serde::Deserialize;

use super::backups::BackupQuery;
use super::{optional_json, Authenticated, Shared};
use crate::error::Error;
use crate::ops::documents;
use crate::state::Coordinator;

pub(super) async fn documents_backup(
    caller: Authenticated,
    coord: Shared,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let caller = caller.require(Role::Operator)?;
    let req: BackupRequest = optional_json(&body)?;
    let accepted = documents::start_backup(&coord, req.tags, caller.label())?;
    Ok(HttpResponse::Accepted().json(accepted))
}

pub(super) async fn documents_list(
    caller: Authenticated,
    coord: Shared,
    query: web::Query<BackupQuery>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    let backups = documents::list(coord.store.as_ref(), query.status()?)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "backups": backups, "total": backups.len() })))
}

pub(super) fn document_backup(coord: &Coordinator, id: &str) -> Result<DocumentBackup, Error> {
    documents::get(coord.store.as_ref(), id)?
        .ok_or_else(|| Error::NotFound(format!("no document backup {id}")))
}

pub(super) async fn documents_get(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(document_backup(&coord, &path)?))
}

pub(super) async fn documents_verify(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Operator)?;
    let pending = documents::start_verify(&coord, &path)?;
    Ok(HttpResponse::Accepted().json(pending))
}

pub(super) async fn documents_verification(
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

pub(super) async fn documents_restore(
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

pub(super) async fn documents_statistics(
    caller: Authenticated,
    coord: Shared,
) -> Result<HttpResponse, Error> {
    caller.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(documents::statistics(coord.store.as_ref())?))
}

/// `GET /v1/documents?status=failed&checksums=true`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DocumentsQuery {
    /// `ok`, `modified`, `failed` or `new`: only the documents in that state.
    status: Option<String>,
    /// Compare contents too (reads every file), not only sizes and times.
    #[serde(default)]
    checksums: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DocumentQuery {
    #[serde(default)]
    checksums: bool,
}

/// A look at the documents is a viewer's; `checksums=true` reads every file on the
/// agent's disk, a load only an operator may cause.
fn checking_role(checksums: bool) -> Role {
    if checksums {
        Role::Operator
    } else {
        Role::Viewer
    }
}

/// The runbook's document routes: the documents on disk against the newest document
/// backup, to find what a storage failure took and check a restore brought it back.
pub(super) async fn documents_on_disk(
    caller: Authenticated,
    coord: Shared,
    query: web::Query<DocumentsQuery>,
) -> Result<HttpResponse, Error> {
    let q = query.into_inner();
    caller.require(checking_role(q.checksums))?;
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

pub(super) async fn document_get(
    caller: Authenticated,
    coord: Shared,
    path: web::Path<String>,
    query: web::Query<DocumentQuery>,
) -> Result<HttpResponse, Error> {
    caller.require(checking_role(query.checksums))?;
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
