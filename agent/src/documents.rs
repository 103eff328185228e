//! Document backups: the uploads directory into the primary location, then copied to
//! every other location, and (by default) kept as the runbook's plain
//! `docs_<id>.tar.gz` / `docs_latest.tar.gz` with `MANIFEST.json`.
//!
//! Each location is its own repository (created on first use). `{yyyy}` / `{mm}` in a
//! location URL are filled in from the backup id's timestamp, so a backup is always
//! found again at the URL it was written to. Retention applies the policy to such a
//! location's months as one history (see [`months`]).

mod check;
mod months;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use drmesh_protocol::api::{
    BackupStatus, DamagedFile, DocumentBackupOutcome, DocumentRestoreOutcome, DocumentVerification,
    LocationStatus, LocationVerification, Verdict,
};
use sha2::{Digest, Sha256};
use tracing::{info, warn, Instrument};

use crate::config::{DocumentLocation, DocumentsConfig};
use drmesh_repo::{
    write_durably, ArchiveManifest, BackupRequest, KeySource, Location, Progress, RepoError,
    RepoOptions, Repository, RestoreRequest, Snapshot,
};

/// The snapshot kind of document backups.
pub const KIND: &str = "documents";
/// Directory inside the plain archives that holds the documents.
pub const ARCHIVE_ROOT: &str = "docs_backup";

#[derive(Debug, thiserror::Error)]
pub enum DocumentsError {
    #[error("{0}")]
    Repo(#[from] RepoError),
    #[error("backup id {0:?} is not a document backup id (docs_<epoch-ms>_<suffix>)")]
    BadId(String),
    #[error("backup {0} is in no configured location")]
    NotFound(String),
    #[error("no location named {0:?}")]
    UnknownLocation(String),
}

pub use crate::progress::ProgressFn;

pub struct Documents {
    config: DocumentsConfig,
    /// One document operation at a time on this host; others wait their turn.
    busy: tokio::sync::Mutex<()>,
    /// When a replication round last went through every month a templated location may
    /// hold (see [`Self::replicate`]), and whether the last round left a location behind.
    deep_round: std::sync::Mutex<(Option<std::time::Instant>, bool)>,
}

/// How often a replication round goes through every month of a templated location
/// rather than this one and the one before.
const DEEP_ROUND_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// The instant encoded in `docs_<epoch-ms>_<suffix>`.
pub fn backup_time(id: &str) -> Result<DateTime<Utc>, DocumentsError> {
    let bad = || DocumentsError::BadId(id.to_string());
    let mut parts = id.splitn(3, '_');
    if parts.next() != Some("docs") {
        return Err(bad());
    }
    let ms: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let suffix = parts.next().ok_or_else(bad)?;
    if suffix.is_empty() || !suffix.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(bad());
    }
    Utc.timestamp_millis_opt(ms).single().ok_or_else(bad)
}

fn resolve(url: &str, at: DateTime<Utc>) -> String {
    url.replace("{yyyy}", &at.format("%Y").to_string())
        .replace("{mm}", &at.format("%m").to_string())
}

fn verdict(passed: bool) -> Verdict {
    if passed {
        Verdict::Passed
    } else {
        Verdict::Failed
    }
}

impl Documents {
    pub fn new(config: DocumentsConfig) -> Self {
        Self {
            config,
            busy: tokio::sync::Mutex::new(()),
            deep_round: std::sync::Mutex::new((None, false)),
        }
    }

    fn key(&self) -> KeySource {
        match &self.config.key_file {
            Some(p) => KeySource::KeyFile(p.clone()),
            None => KeySource::None,
        }
    }

    fn options(&self, loc: &DocumentLocation, at: DateTime<Utc>) -> RepoOptions {
        RepoOptions {
            location: Location {
                url: resolve(&loc.url, at),
                options: loc.options.clone(),
            },
            key: self.key(),
        }
    }

    async fn open_or_init(
        &self,
        loc: &DocumentLocation,
        at: DateTime<Utc>,
    ) -> Result<Repository, RepoError> {
        let opts = self.options(loc, at);
        match Repository::open(&opts).await {
            Err(RepoError::NotFound(_)) => {
                info!(location = %loc.name, url = %opts.location.url, "creating repository");
                Repository::init(&opts).await
            }
            other => other,
        }
    }

    /// Backs up the uploads directory; fails only when the primary location fails (the
    /// others' failures are reported per location).
    pub async fn backup(
        &self,
        backup_id: &str,
        tags: BTreeMap<String, String>,
        progress: ProgressFn,
    ) -> Result<DocumentBackupOutcome, DocumentsError> {
        let at = backup_time(backup_id)?;
        let _turn = self.busy.lock().await;
        let span = tracing::info_span!("documents_backup", backup_id = %backup_id);
        async {
            let primary_loc = &self.config.locations[0];
            progress(1.0, format!("opening {}", primary_loc.name));
            let primary = self.open_or_init(primary_loc, at).await?;
            let parent = primary.latest(KIND, &self.config.source).await?;
            let mut req = BackupRequest::new(backup_id, KIND, self.config.source.clone());
            req.parent = parent;
            req.tags = tags;
            let watcher = watch(req.progress.clone(), progress.clone(), 80.0);
            let result = primary.backup(req).await;
            watcher.abort();
            let snap = result?;
            let mut locations = vec![LocationStatus {
                name: primary_loc.name.clone(),
                url: primary.backend().describe().to_string(),
                status: BackupStatus::Completed,
                bytes_stored: snap.stats.bytes_stored,
                error: None,
            }];
            let others = &self.config.locations[1..];
            for (i, loc) in others.iter().enumerate() {
                progress(
                    80.0 + 15.0 * i as f32 / others.len() as f32,
                    format!("copying to {}", loc.name),
                );
                let url = resolve(&loc.url, at);
                // Within the probe time: a location that does not answer is caught up
                // later by the replication rounds instead of holding up the backup.
                let copied = match crate::copies::open_or_init(&self.options(loc, at)).await {
                    Ok(dest) => primary.copy_snapshot(backup_id, &dest).await,
                    Err(e) => Err(e),
                };
                locations.push(match copied {
                    Ok(r) => LocationStatus {
                        name: loc.name.clone(),
                        url,
                        status: BackupStatus::Completed,
                        bytes_stored: r.bytes_stored,
                        error: None,
                    },
                    Err(e) => {
                        warn!(location = %loc.name, error = %e, "copy to location failed");
                        LocationStatus {
                            name: loc.name.clone(),
                            url,
                            status: BackupStatus::Failed,
                            bytes_stored: 0,
                            error: Some(e.to_string()),
                        }
                    }
                });
            }
            let (mut archive, mut manifest) = (None, None);
            if self.config.keep_latest_archive {
                progress(96.0, "writing the plain archive".into());
                match self.keep_archive(&primary, backup_id).await {
                    Ok((a, m)) => {
                        archive = Some(a.display().to_string());
                        manifest = Some(m.display().to_string());
                    }
                    Err(e) => {
                        warn!(error = %e, "writing the plain archive failed");
                        locations.push(LocationStatus {
                            name: "archive".into(),
                            url: self.config.archive_dir.display().to_string(),
                            status: BackupStatus::Failed,
                            bytes_stored: 0,
                            error: Some(e.to_string()),
                        });
                    }
                }
            }
            progress(100.0, "done".into());
            Ok(DocumentBackupOutcome {
                backup_id: snap.id.clone(),
                parent_id: snap.parent.clone(),
                files: snap.stats.files,
                bytes: snap.stats.bytes,
                files_read: snap.stats.files_read,
                bytes_read: snap.stats.bytes_read,
                bytes_new: snap.stats.bytes_new,
                bytes_stored: snap.stats.bytes_stored,
                started_at: snap.started_at,
                finished_at: Utc::now(),
                locations,
                archive,
                manifest,
            })
        }
        .instrument(span)
        .await
    }

    /// Writes `docs_<id>.tar.gz`, `docs_<id>/MANIFEST.json` and `docs_latest.tar.gz`,
    /// and removes the previous backup's archive (older ones stay in the repository and
    /// `drmesh export` makes them again).
    async fn keep_archive(
        &self,
        repo: &Repository,
        id: &str,
    ) -> Result<(PathBuf, PathBuf), RepoError> {
        let dir = &self.config.archive_dir;
        let archive = dir.join(format!("{id}.tar.gz"));
        let manifest = repo.export_archive(id, &archive, ARCHIVE_ROOT).await?;
        let manifest_dir = dir.join(id);
        let manifest_path = manifest_dir.join("MANIFEST.json");
        let json =
            serde_json::to_vec_pretty(&manifest).map_err(|e| RepoError::Io(e.to_string()))?;
        let (archive2, dir2, mpath2, id2) = (
            archive.clone(),
            dir.clone(),
            manifest_path.clone(),
            id.to_string(),
        );
        tokio::task::spawn_blocking(move || -> Result<(), RepoError> {
            let io = |what: &str, p: &Path, e: std::io::Error| {
                RepoError::local(format!("{what} {}", p.display()), e)
            };
            std::fs::create_dir_all(&manifest_dir).map_err(|e| io("create", &manifest_dir, e))?;
            write_durably(&mpath2, &json)?;
            // `docs_latest` is a second name for the archive just written (synced by the
            // export), not a second copy of it; a filesystem without hard links gets a copy.
            let latest = dir2.join("docs_latest.tar.gz");
            let tmp = dir2.join(".docs_latest.tar.gz.tmp");
            let _ = std::fs::remove_file(&tmp);
            if std::fs::hard_link(&archive2, &tmp).is_err() {
                std::fs::copy(&archive2, &tmp).map_err(|e| io("copy to", &tmp, e))?;
                std::fs::File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io("sync", &tmp, e))?;
            }
            std::fs::rename(&tmp, &latest).map_err(|e| io("rename to", &latest, e))?;
            std::fs::File::open(&dir2)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("sync", &dir2, e))?;
            // Older archives go; the repository keeps every snapshot.
            if let Ok(rd) = std::fs::read_dir(&dir2) {
                for entry in rd.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let stem = name.strip_suffix(".tar.gz").unwrap_or(&name);
                    if stem.starts_with("docs_")
                        && stem != "docs_latest"
                        && stem != id2
                        && backup_time(stem).is_ok()
                    {
                        let p = entry.path();
                        let _ = if p.is_dir() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| RepoError::local("archive task", e))??;
        Ok((archive, manifest_path))
    }

    /// Verifies a backup in every location with a full read of its data, and its plain
    /// archive when one is kept.
    pub async fn verify(
        &self,
        backup_id: &str,
        progress: ProgressFn,
    ) -> Result<DocumentVerification, DocumentsError> {
        let at = backup_time(backup_id)?;
        let _turn = self.busy.lock().await;
        let started_at = Utc::now();
        let mut locations = Vec::new();
        let mut damaged_files = Vec::new();
        let (mut manifest_ok, mut files_ok, mut data_ok, mut integrity_ok) =
            (true, true, true, true);
        let mut found = false;
        let n = self.config.locations.len() as f32;
        for (i, loc) in self.config.locations.iter().enumerate() {
            progress(
                100.0 * i as f32 / (n + 1.0),
                format!("verifying in {}", loc.name),
            );
            let opts = self.options(loc, at);
            let url = opts.location.url.clone();
            let report = match Repository::open(&opts).await {
                Ok(repo) => repo.verify(backup_id, true).await,
                Err(e) => Err(e),
            };
            match report {
                Ok(r) => {
                    found = true;
                    let passed = r.passed();
                    manifest_ok &= r.manifest.passed;
                    data_ok &= r.objects.passed;
                    files_ok &= r.file_checksums.as_ref().is_some_and(|c| c.passed);
                    integrity_ok &= r.data.as_ref().is_some_and(|c| c.passed);
                    for d in &r.damaged {
                        damaged_files.push(DamagedFile {
                            location: loc.name.clone(),
                            path: d.path.clone(),
                            reason: d.reason.clone(),
                        });
                    }
                    let detail = if passed {
                        format!(
                            "{} files, {} bytes read back",
                            r.files_checked, r.bytes_checked
                        )
                    } else {
                        [
                            Some(&r.manifest),
                            Some(&r.objects),
                            r.data.as_ref(),
                            r.file_checksums.as_ref(),
                        ]
                        .into_iter()
                        .flatten()
                        .filter(|c| !c.passed)
                        .map(|c| c.detail.clone())
                        .collect::<Vec<_>>()
                        .join("; ")
                    };
                    locations.push(LocationVerification {
                        name: loc.name.clone(),
                        url,
                        status: verdict(passed),
                        detail,
                        files_checked: r.files_checked,
                        bytes_checked: r.bytes_checked,
                    });
                }
                Err(e) => {
                    data_ok = false;
                    let detail = match &e {
                        RepoError::NotFound(_) => format!("backup not in this location: {e}"),
                        _ => e.to_string(),
                    };
                    locations.push(LocationVerification {
                        name: loc.name.clone(),
                        url,
                        status: Verdict::Failed,
                        detail,
                        files_checked: 0,
                        bytes_checked: 0,
                    });
                }
            }
        }
        if !found {
            return Err(DocumentsError::NotFound(backup_id.to_string()));
        }
        // The plain archive, when this backup's is kept.
        let archive = self.config.archive_dir.join(format!("{backup_id}.tar.gz"));
        if self.config.keep_latest_archive && archive.exists() {
            progress(100.0 * n / (n + 1.0), "verifying the plain archive".into());
            let path = archive.clone();
            let checked = tokio::task::spawn_blocking(move || check_archive(&path))
                .await
                .map_err(|e| RepoError::local("archive check task", e))?;
            let (status, detail) = match checked {
                Ok(n) => (Verdict::Passed, format!("{n} files match MANIFEST.json")),
                Err(why) => {
                    integrity_ok = false;
                    damaged_files.push(DamagedFile {
                        location: "archive".into(),
                        path: archive.display().to_string(),
                        reason: why.clone(),
                    });
                    (Verdict::Failed, why)
                }
            };
            locations.push(LocationVerification {
                name: "archive".into(),
                url: archive.display().to_string(),
                status,
                detail,
                files_checked: 0,
                bytes_checked: 0,
            });
        }
        let finished_at = Utc::now();
        let all = manifest_ok && files_ok && data_ok && integrity_ok;
        progress(100.0, "done".into());
        Ok(DocumentVerification {
            backup_id: backup_id.to_string(),
            status: verdict(all),
            archive_integrity: verdict(integrity_ok),
            manifest_validity: verdict(manifest_ok),
            file_checksums: verdict(files_ok),
            data_accessible: verdict(data_ok),
            locations,
            damaged_files,
            started_at,
            finished_at: Some(finished_at),
            duration_ms: Some((finished_at - started_at).num_milliseconds().max(0) as u64),
            error: None,
        })
    }

    /// One replication round: each location after the first brought up to date with the
    /// first (see `crate::copies`), after any backup in progress.
    pub async fn replicate(
        &self,
        now: DateTime<Utc>,
    ) -> Vec<drmesh_protocol::copies::LocationCopy> {
        use crate::copies::{merge, months, options_of, sync_location};
        let _turn = self.busy.lock().await;
        let Some((primary_loc, others)) = self.config.locations.split_first() else {
            return Vec::new();
        };
        // A templated location is caught up for this month and the last; once a day, and
        // after a round that left a location behind (back from an outage), for every
        // month retention may still keep.
        let deep = {
            let state = self.deep_round.lock().unwrap_or_else(|e| e.into_inner());
            state.1 || state.0.is_none_or(|t| t.elapsed() >= DEEP_ROUND_EVERY)
        };
        let all_months = || {
            let policy = self.config.retention.clone().unwrap_or_default();
            self::months::months(&policy, now)
        };
        let templated = |l: &DocumentLocation| l.url.contains("{yyyy}") || l.url.contains("{mm}");
        let rounds = others.iter().map(|loc| async move {
            let instants = match (templated(primary_loc) || templated(loc), deep) {
                (false, _) => vec![now],
                (true, false) => months(now),
                (true, true) => all_months(),
            };
            let mut parts = Vec::new();
            for at in instants {
                let dest = options_of(loc, resolve(&loc.url, at), &self.key());
                let primary = match Repository::open(&self.options(primary_loc, at)).await {
                    Ok(p) => p,
                    // Nothing backed up in that month (or ever): nothing to copy.
                    Err(RepoError::NotFound(_)) => continue,
                    Err(e) => {
                        warn!(location = %primary_loc.name, error = %e, "open the primary location");
                        parts.push(crate::copies::primary_failed(KIND, loc, &dest, now, e));
                        continue;
                    }
                };
                // A month's repository takes the backups of that month only.
                let month = resolve(&loc.url, at);
                let belongs = |id: &str| {
                    backup_time(id).is_ok_and(|t| resolve(&loc.url, t) == month)
                };
                let part =
                    sync_location(KIND, loc, &primary, dest, false, now, &belongs).await;
                let down = part.state == drmesh_protocol::copies::CopyState::Unreachable;
                parts.push(part);
                // A location that does not answer is not asked about every other month.
                if down {
                    break;
                }
            }
            match merge(parts) {
                Some(merged) => merged,
                // Nothing to copy anywhere: the location is still probed.
                None => {
                    let dest = options_of(loc, resolve(&loc.url, now), &self.key());
                    match crate::copies::probe(&dest).await {
                        Ok(()) => crate::copies::in_sync(KIND, loc, resolve(&loc.url, now), now),
                        Err(e) => crate::copies::unreachable(KIND, loc, &dest, now, e),
                    }
                }
            }
        });
        // Every location at once: one that does not answer holds up no other.
        let out = futures::future::join_all(rounds).await;
        let behind = out
            .iter()
            .any(|l| l.state != drmesh_protocol::copies::CopyState::InSync);
        let mut state = self.deep_round.lock().unwrap_or_else(|e| e.into_inner());
        if deep && !behind {
            state.0 = Some(std::time::Instant::now());
        }
        state.1 = behind;
        out
    }

    /// Applies the documents policy to each location's repository, after any backup in
    /// progress. A location whose URL holds a date template (`{yyyy}`, `{mm}`: one
    /// repository per month) is enforced as one history over its month repositories
    /// ([`Self::enforce_months`]), in one report.
    pub async fn enforce_retention(
        &self,
        policies: &drmesh_protocol::retention::RetentionPolicies,
        now: DateTime<Utc>,
        dry_run: bool,
        archive: Option<&crate::config::ArchiveConfig>,
    ) -> Vec<drmesh_protocol::retention::RepositoryRetention> {
        use drmesh_protocol::retention::RepositoryRetention;
        let _turn = self.busy.lock().await;
        // `[archive]`, keyed (unless it names its own key) like the document locations.
        let archive = match archive {
            None => None,
            Some(a) => {
                let mut options = a.archive_options();
                if a.key_file.is_none() {
                    options.key = self.key();
                }
                match drmesh_repo::ColdArchive::open(&options).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        warn!(error = %e, "the cold archive cannot be opened");
                        return self
                            .config
                            .locations
                            .iter()
                            .map(|loc| RepositoryRetention {
                                repository: loc.name.clone(),
                                policy: self.config.retention.clone(),
                                report: None,
                                error: Some(format!("the cold archive: {e}")),
                            })
                            .collect();
                    }
                }
            }
        };
        // `[documents] retention` replaces the coordinator's documents policy.
        let mut own = policies.clone();
        if let Some(p) = &self.config.retention {
            own.documents = p.clone();
        }
        let policies = &own;
        let mut out = Vec::new();
        for (i, loc) in self.config.locations.iter().enumerate() {
            // The primary location's picks go to the one cold copy; the other locations
            // keep theirs while a tier picks them.
            let archive = archive.as_ref().filter(|_| i == 0);
            let (report, error) = if months::templated(&loc.url) {
                self.enforce_months(loc, policies, now, dry_run, archive)
                    .await
            } else {
                let enforced = match Repository::open(&self.options(loc, now)).await {
                    Ok(repo) => {
                        repo.enforce_with_archive(policies, now, dry_run, archive)
                            .await
                    }
                    Err(e) => Err(e),
                };
                match enforced {
                    Ok(report) => (Some(report), None),
                    Err(e) => (None, Some(e.to_string())),
                }
            };
            if let Some(error) = &error {
                warn!(location = %loc.name, %error, "retention not enforced");
            }
            out.push(RepositoryRetention {
                repository: loc.name.clone(),
                policy: self.config.retention.clone(),
                report,
                error,
            });
        }
        out
    }

    /// A templated location's month repositories (those [`months::months`] names that
    /// exist) enforced as one history (`enforce_history`): one report for them all,
    /// naming them in `months`, and what failed, per month (a month that fails stops no
    /// other). A month emptied by the policy keeps its (empty) repository: its packs are
    /// collected, and a backup or replication round that opens it meanwhile finds a
    /// repository rather than a half-removed one.
    async fn enforce_months(
        &self,
        loc: &DocumentLocation,
        policies: &drmesh_protocol::retention::RetentionPolicies,
        now: DateTime<Utc>,
        dry_run: bool,
        archive: Option<&drmesh_repo::ColdArchive>,
    ) -> (
        Option<drmesh_protocol::retention::EnforceReport>,
        Option<String>,
    ) {
        use drmesh_repo::{empty_report, enforce_history, merge_report};
        use futures::StreamExt;
        // A `{yyyy}`-only template has one repository a year: each is looked at once.
        let mut urls: Vec<(String, DateTime<Utc>)> = Vec::new();
        for at in months::months(&policies.documents, now) {
            let url = resolve(&loc.url, at);
            if !urls.iter().any(|(u, _)| *u == url) {
                urls.push((url, at));
            }
        }
        let probes: Vec<(String, Result<Option<Repository>, RepoError>)> =
            futures::stream::iter(urls)
                .map(|(url, at)| async move { (url, self.open_existing(loc, at).await) })
                .buffered(8)
                .collect()
                .await;
        let mut errors = Vec::new();
        let (mut names, mut parts) = (Vec::new(), Vec::new());
        for (url, probe) in probes {
            match probe {
                Ok(Some(repo)) => {
                    names.push(url);
                    parts.push(repo);
                }
                Ok(None) => {}
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        let mut total = empty_report(dry_run, now);
        match enforce_history(&parts, policies, now, dry_run, archive).await {
            Ok(reports) => {
                for (name, report) in names.iter().zip(reports) {
                    match report {
                        Ok(r) => merge_report(&mut total, name, r),
                        Err(e) => errors.push(format!("{name}: {e}")),
                    }
                }
            }
            // Nothing changed: the snapshots or the archive could not be listed.
            Err(e) => return (None, Some(format!("{}: {e}", loc.name))),
        }
        total.months = names;
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        (Some(total), error)
    }

    /// The repository of `loc` for the month of `at`, when there is one; never creates
    /// one (a local directory is not even made).
    async fn open_existing(
        &self,
        loc: &DocumentLocation,
        at: DateTime<Utc>,
    ) -> Result<Option<Repository>, RepoError> {
        let opts = self.options(loc, at);
        let url = &opts.location.url;
        let local = url.strip_prefix("file://").unwrap_or(url);
        if !url.contains("://") || url.starts_with("file://") {
            let config = Path::new(local).join("config");
            // An error looking is left to the opening below to report.
            if let Ok(false) = tokio::fs::try_exists(&config).await {
                return Ok(None);
            }
        }
        match Repository::open(&opts).await {
            Ok(repo) => Ok(Some(repo)),
            Err(RepoError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Restores a backup (or chosen paths) from the first location that has it, or from
    /// the named one.
    pub async fn restore(
        &self,
        backup_id: &str,
        paths: Vec<String>,
        target: Option<String>,
        location: Option<String>,
        progress: ProgressFn,
    ) -> Result<DocumentRestoreOutcome, DocumentsError> {
        backup_time(backup_id)?;
        let _turn = self.busy.lock().await;
        let started_at = Utc::now();
        let target = match target {
            Some(t) => {
                let p = PathBuf::from(&t);
                if !p.is_absolute() {
                    return Err(RepoError::Config(format!(
                        "target directory {t:?} must be absolute"
                    ))
                    .into());
                }
                p
            }
            None => self.config.restore_dir.join(backup_id),
        };
        let (loc, repo, _) = self.holder(backup_id, location.as_deref()).await?;
        let mut req = RestoreRequest::new(backup_id, target.clone());
        req.paths = paths;
        let watcher = watch(req.progress.clone(), progress, 100.0);
        let result = repo.restore(req).await;
        watcher.abort();
        let report = result?;
        Ok(DocumentRestoreOutcome {
            backup_id: backup_id.to_string(),
            status: BackupStatus::Completed,
            location: Some(loc.name.clone()),
            target_directory: target.display().to_string(),
            files: report.files,
            bytes: report.bytes,
            started_at,
            finished_at: Some(Utc::now()),
            error: None,
        })
    }

    /// The location that holds backup `backup_id` — the named one, or else the first of
    /// them that does — with its repository open and the backup's manifest.
    async fn holder(
        &self,
        backup_id: &str,
        location: Option<&str>,
    ) -> Result<(&DocumentLocation, Repository, Snapshot), DocumentsError> {
        let at = backup_time(backup_id)?;
        let candidates: Vec<&DocumentLocation> = match location {
            Some(name) => vec![self
                .config
                .locations
                .iter()
                .find(|l| l.name == name)
                .ok_or_else(|| DocumentsError::UnknownLocation(name.to_string()))?],
            None => self.config.locations.iter().collect(),
        };
        let mut last_err = None;
        for loc in candidates {
            let found = async {
                let repo = Repository::open(&self.options(loc, at)).await?;
                let snap = repo.snapshot(backup_id).await?;
                Ok::<_, RepoError>((repo, snap))
            };
            match found.await {
                Ok((repo, snap)) => return Ok((loc, repo, snap)),
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e @ RepoError::NotFound(_)) | Some(e @ RepoError::Key(_))
                if location.is_some() =>
            {
                Err(e.into())
            }
            Some(RepoError::NotFound(_)) | None => {
                Err(DocumentsError::NotFound(backup_id.to_string()))
            }
            Some(e) => Err(e.into()),
        }
    }
}

/// Forwards a repository operation's counters to `progress`, scaled to `0..=scale`.
fn watch(counters: Arc<Progress>, progress: ProgressFn, scale: f32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let pct = counters.percent() as f32 * scale / 100.0;
            progress(
                pct,
                format!(
                    "{} of {} files",
                    counters.files_done.load(Relaxed),
                    counters.files_total.load(Relaxed)
                ),
            );
        }
    })
}

/// Reads a plain archive end to end: gzip and tar framing intact, `MANIFEST.json` there,
/// every listed file present with its size and SHA-256. Returns the number of files.
pub fn check_archive(path: &Path) -> Result<u64, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut manifest: Option<ArchiveManifest> = None;
    let mut seen: HashMap<String, (u64, String)> = HashMap::new();
    let entries = tar.entries().map_err(|e| format!("read archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("read archive: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("archive entry name: {e}"))?
            .to_string_lossy()
            .into_owned();
        if name == "MANIFEST.json" {
            let mut buf = Vec::new();
            entry
                .read_to_end(&mut buf)
                .map_err(|e| format!("read MANIFEST.json: {e}"))?;
            manifest =
                Some(serde_json::from_slice(&buf).map_err(|e| format!("MANIFEST.json: {e}"))?);
            continue;
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| format!("read {name}: {e}"))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        seen.insert(name, (size, hex::encode(hasher.finalize())));
    }
    let manifest = manifest.ok_or("MANIFEST.json is missing")?;
    for f in &manifest.files {
        let key = format!("{}/{}", manifest.root, f.path);
        match seen.get(&key) {
            None => {
                return Err(format!(
                    "{} is listed in MANIFEST.json but not in the archive",
                    f.path
                ))
            }
            Some((size, sha)) if *size != f.size || *sha != f.sha256 => {
                return Err(format!("{} does not match MANIFEST.json", f.path))
            }
            Some(_) => {}
        }
    }
    Ok(manifest.files.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_carry_their_time() {
        let t = backup_time("docs_1705329600000_abc123").expect("valid");
        assert_eq!(t.to_rfc3339(), "2024-01-15T14:40:00+00:00");
        assert_eq!(
            resolve("s3://b/document-backups/{yyyy}/{mm}", t),
            "s3://b/document-backups/2024/01"
        );
        for bad in [
            "full_1705329600000_abc123",
            "docs_x_abc",
            "docs_1705329600000_",
            "docs_1_a/b",
        ] {
            assert!(backup_time(bad).is_err(), "{bad}");
        }
    }
}
