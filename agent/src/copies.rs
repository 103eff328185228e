//! Copies: every snapshot and WAL segment of a primary location copied to each
//! secondary one — the other `[[documents.locations]]`, the `[[database.replicas]]` —
//! and verified there. The coordinator asks for a round every `[copies] interval`
//! (`CommandKind::Copy`); each round copies only what a location lacks, so a
//! location that was down catches up by itself once it answers again, and an
//! interrupted round is finished by the next. A location that cannot even be opened
//! within [`PROBE_TIMEOUT`] is reported `UNREACHABLE` (the coordinator alerts when that
//! lasts); one that fails part-way is `BEHIND` with the error.
//!
//! Document locations with a date template (`{yyyy}/{mm}`: one repository per month)
//! are replicated month by month, for the current and the previous month.

use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use drmesh_protocol::copies::{CopyState, LocationCopy, MAX_MISSING_LISTED};
use tracing::{warn, Instrument};

use crate::config::DocumentLocation;
use drmesh_repo::{Location, RepoError, RepoOptions, Repository};

/// How long opening a secondary location may take before it counts as unreachable
/// (object stores retry a refused connection for minutes otherwise).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a repository, creating it the first time; `UNREACHABLE` within the timeout.
pub async fn open_or_init(options: &RepoOptions) -> Result<Repository, RepoError> {
    drmesh_repo::within(
        &options.location.url,
        PROBE_TIMEOUT,
        Repository::open_or_init(options),
    )
    .await
}

/// Whether a location answers (without creating anything there).
pub async fn probe(options: &RepoOptions) -> Result<(), RepoError> {
    drmesh_repo::within(&options.location.url, PROBE_TIMEOUT, async {
        let backend = drmesh_repo::Backend::open(&options.location).await?;
        backend.size("config").await.map(|_| ())
    })
    .await
}

/// The options of a secondary location (same key as the primary).
pub fn options_of(
    loc: &DocumentLocation,
    url: String,
    key: &drmesh_repo::KeySource,
) -> RepoOptions {
    RepoOptions {
        location: Location {
            url,
            options: loc.options.clone(),
        },
        key: key.clone(),
    }
}

/// Brings one secondary location up to date with `source`, for the snapshots `belongs`
/// says go there; never fails, the outcome says how it went.
pub async fn sync_location(
    repository: &str,
    loc: &DocumentLocation,
    source: &Repository,
    dest: RepoOptions,
    wal: bool,
    now: DateTime<Utc>,
    belongs: &(dyn Fn(&str) -> bool + Sync),
) -> LocationCopy {
    let span = tracing::info_span!("replicate", repository, location = %loc.name);
    async {
        let mut out = in_sync(repository, loc, dest.location.url.clone(), now);
        let dest = match open_or_init(&dest).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "location unreachable");
                return unreachable(repository, loc, &dest, now, e);
            }
        };
        out.url = dest.backend().describe().to_string();
        match source.sync_some_to(&dest, wal, belongs).await {
            Ok(report) => {
                out.snapshots_copied = report.snapshots_copied;
                out.wal_copied = report.wal_copied;
                out.bytes_copied = report.bytes_copied;
                out.missing_snapshot_count = report.missing.len() as u64;
                out.missing_snapshots = report
                    .missing
                    .iter()
                    .take(MAX_MISSING_LISTED)
                    .map(|(id, _)| id.clone())
                    .collect();
                out.missing_wal = report.missing_wal.len() as u64;
                out.lag_seconds = report.lag(now).as_secs_f64();
                if let Some(e) = report.error {
                    out.state = if report.unreachable {
                        CopyState::Unreachable
                    } else {
                        CopyState::Behind
                    };
                    out.last_error = Some(e);
                }
            }
            Err(e) => {
                out.state = match e {
                    RepoError::Backend(_) => CopyState::Unreachable,
                    _ => CopyState::Behind,
                };
                out.last_error = Some(e.to_string());
            }
        }
        if loc.quota.is_some() {
            match dest.backend().list("").await {
                Ok(objects) => out.bytes_used = Some(objects.iter().map(|(_, n)| n).sum()),
                Err(e) => warn!(error = %e, "measure the location's usage"),
            }
        }
        out
    }
    .instrument(span)
    .await
}

/// One replication round of the database repository: every `[[database.replicas]]`
/// brought up to date, base backups and WAL.
pub async fn replicate_database(
    cfg: &crate::config::DatabaseConfig,
    now: DateTime<Utc>,
) -> Result<Vec<LocationCopy>, crate::database::DatabaseError> {
    let source = crate::database::open_repository(cfg).await?;
    let key = match &cfg.key_file {
        Some(f) => drmesh_repo::KeySource::KeyFile(f.clone()),
        None => drmesh_repo::KeySource::None,
    };
    let mut out = Vec::new();
    for loc in &cfg.replicas {
        let dest = options_of(loc, loc.url.clone(), &key);
        out.push(sync_location("database", loc, &source, dest, true, now, &|_| true).await);
    }
    Ok(out)
}

/// A location with nothing to copy (yet).
pub fn in_sync(
    repository: &str,
    loc: &DocumentLocation,
    url: String,
    now: DateTime<Utc>,
) -> LocationCopy {
    LocationCopy {
        quota_bytes: loc.quota,
        ..LocationCopy::in_sync(repository, &loc.name, url, now)
    }
}

/// A location that could not be opened.
pub fn unreachable(
    repository: &str,
    loc: &DocumentLocation,
    dest: &RepoOptions,
    now: DateTime<Utc>,
    error: RepoError,
) -> LocationCopy {
    LocationCopy {
        state: CopyState::Unreachable,
        last_error: Some(error.to_string()),
        ..in_sync(repository, loc, dest.location.url.clone(), now)
    }
}

/// The primary location itself could not be read: nothing is known of the secondary.
pub fn primary_failed(
    repository: &str,
    loc: &DocumentLocation,
    dest: &RepoOptions,
    now: DateTime<Utc>,
    error: impl std::fmt::Display,
) -> LocationCopy {
    LocationCopy {
        state: CopyState::Behind,
        last_error: Some(format!("the primary location: {error}")),
        ..in_sync(repository, loc, dest.location.url.clone(), now)
    }
}

/// Merges the results of one location over several repositories (the months of a
/// templated location): the worst state, every count added up, the largest lag.
pub fn merge(parts: Vec<LocationCopy>) -> Option<LocationCopy> {
    let rank = |s: CopyState| match s {
        CopyState::InSync => 0,
        CopyState::Behind => 1,
        CopyState::Unreachable => 2,
    };
    let mut iter = parts.into_iter();
    let mut acc = iter.next()?;
    for p in iter {
        if rank(p.state) > rank(acc.state) {
            acc.state = p.state;
            acc.last_error = p.last_error.clone();
        }
        acc.snapshots_copied += p.snapshots_copied;
        acc.wal_copied += p.wal_copied;
        acc.bytes_copied += p.bytes_copied;
        acc.missing_snapshot_count += p.missing_snapshot_count;
        acc.missing_snapshots.extend(p.missing_snapshots);
        acc.missing_snapshots.truncate(MAX_MISSING_LISTED);
        acc.missing_wal += p.missing_wal;
        acc.lag_seconds = acc.lag_seconds.max(p.lag_seconds);
        acc.bytes_used = match (acc.bytes_used, p.bytes_used) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
    Some(acc)
}

/// The months a templated location is replicated for at `now`: this one and the one
/// before, as instants inside them.
pub fn months(now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let first = now.with_day(1).unwrap_or(now);
    let previous = first - chrono::Duration::days(1);
    vec![previous, now]
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn part(state: CopyState, copied: u64, lag: f64) -> LocationCopy {
        LocationCopy {
            state,
            snapshots_copied: copied,
            bytes_copied: copied * 10,
            lag_seconds: lag,
            last_error: (state != CopyState::InSync).then(|| "down".to_string()),
            bytes_used: Some(5),
            ..LocationCopy::in_sync("documents", "s3", "s3://b/2026/11".into(), Utc::now())
        }
    }

    #[test]
    fn months_of_a_templated_location_are_this_one_and_the_one_before() {
        let now = Utc.with_ymd_and_hms(2026, 1, 15, 3, 0, 0).single();
        let Some(now) = now else {
            panic!("a valid date")
        };
        let m: Vec<String> = months(now)
            .iter()
            .map(|t| t.format("%Y/%m").to_string())
            .collect();
        assert_eq!(m, ["2025/12", "2026/01"]);
    }

    #[test]
    fn merged_months_take_the_worst_state_and_add_up() {
        let m = merge(vec![
            part(CopyState::InSync, 2, 0.0),
            part(CopyState::Behind, 1, 30.0),
        ]);
        let Some(m) = m else {
            panic!("two parts merge")
        };
        assert_eq!(m.state, CopyState::Behind);
        assert_eq!(m.last_error.as_deref(), Some("down"));
        assert_eq!((m.snapshots_copied, m.bytes_copied), (3, 30));
        assert_eq!(m.lag_seconds, 30.0);
        assert_eq!(m.bytes_used, Some(10));
        assert!(merge(vec![]).is_none());
    }
}
