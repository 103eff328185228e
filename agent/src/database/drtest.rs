//! A DR test (the runbook's "Automated DR Testing"): the five steps, each timed, run in
//! a throw-away directory with the restorability machinery of [`super::verify`]:
//!
//! 1. create the isolated test environment — the directory (made by the daemon), a free
//!    port, a Unix socket inside the directory, an `hba` file of its own;
//! 2. restore the backup and recover it (to its row counts' LSN, else its consistent
//!    point) on a server that listens on no TCP address, archives nothing, streams from
//!    nowhere and holds no replication slot;
//! 3. run the configured smoke checks (`[[database.smoke_checks]]`; `select 1` when none
//!    is configured) — the measured RTO ends when they pass;
//! 4. validate data consistency: every table's row count against the one the backup
//!    recorded, `amcheck` on every B-tree index;
//! 5. stop the server and remove the directory (also when a step failed; the guard and
//!    the agent's start-up cleanup catch what a kill leaves).
//!
//! Each step's start and end go out as progress lines (`[n/5] name: started|done|failed`)
//! and into the report.

use std::path::Path;
use std::time::Instant;

use chrono::Utc;
use drmesh_protocol::api::{DrTestReport, DrTestStep, StepStatus};
use tracing::warn;

use super::verify::{self, Findings, Report, Scratch, PGDATA};
use super::DatabaseError;
use crate::config::DatabaseConfig;
use drmesh_repo::RecoveryRequest;
use drmesh_repo::Repository;

/// The steps as they run.
struct Steps {
    steps: Vec<DrTestStep>,
    started: Vec<Option<Instant>>,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            steps: DrTestStep::pending(),
            started: vec![None; 5],
        }
    }

    fn start(&mut self, n: usize, progress: Report<'_>) {
        let s = &mut self.steps[n - 1];
        s.status = StepStatus::Running;
        s.started_at = Some(Utc::now());
        self.started[n - 1] = Some(Instant::now());
        progress(percent(n, false), format!("[{n}/5] {}: started", s.name));
    }

    fn end(&mut self, n: usize, result: Result<String, String>, progress: Report<'_>) -> bool {
        let s = &mut self.steps[n - 1];
        let ok = result.is_ok();
        s.status = if ok {
            StepStatus::Done
        } else {
            StepStatus::Failed
        };
        s.ended_at = Some(Utc::now());
        s.duration_ms = self.started[n - 1].map(|t| t.elapsed().as_millis() as u64);
        s.message = result.unwrap_or_else(|e| e);
        progress(
            percent(n, true),
            format!(
                "[{n}/5] {}: {} — {}",
                s.name,
                if ok { "done" } else { "failed" },
                s.message
            ),
        );
        ok
    }

    /// Steps 2 to 4 that never ran after a failure.
    fn skip_rest(&mut self) {
        for s in self.steps.iter_mut().take(4) {
            if s.status == StepStatus::Pending {
                s.status = StepStatus::Skipped;
                s.message = "skipped: an earlier step failed".into();
            }
        }
    }
}

fn percent(step: usize, ended: bool) -> f32 {
    // Step n runs from (n-1)*19+2 to n*19+1: 2..=96, rising at every line.
    (step as f32 - 1.0) * 19.0 + if ended { 20.0 } else { 2.0 }
}

/// Child side: runs the five steps for `backup` in `dir` (an empty throw-away directory,
/// removed before this returns). A failed step is reported in the steps, not as an error.
pub async fn run(
    repo: &Repository,
    db: &DatabaseConfig,
    conninfo: Option<&str>,
    backup: &str,
    dir: &Path,
    restore_command: String,
    progress: Report<'_>,
) -> Result<DrTestReport, DatabaseError> {
    let scratch = Scratch {
        dir: dir.to_path_buf(),
    };
    let began = Instant::now();
    let mut steps = Steps::new();
    let mut f = Findings::default();
    let mut measured_rto_ms = None;
    let passed = steps_1_to_4(
        repo,
        db,
        conninfo,
        backup,
        dir,
        restore_command,
        progress,
        &mut steps,
        &mut f,
        began,
        &mut measured_rto_ms,
    )
    .await;
    if !passed {
        steps.skip_rest();
    }

    // 5: always.
    steps.start(5, progress);
    let pgdata = dir.join(PGDATA);
    let cleaned = {
        let (db, pgdata) = (db.clone(), pgdata.clone());
        let _ = tokio::task::spawn_blocking(move || verify::stop(&db, &pgdata)).await;
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || verify::remove_scratch(&dir))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
    };
    let gone = !dir.exists();
    steps.end(
        5,
        match cleaned {
            Ok(_) if gone => Ok(format!("server stopped, {} removed", dir.display())),
            Ok(_) => Err(format!("{} is still there", dir.display())),
            Err(e) => Err(e),
        },
        progress,
    );
    // Already removed; the guard only covers the early returns and panics above.
    drop(scratch);
    Ok(DrTestReport {
        steps: steps.steps,
        measured_rto_ms,
        smoke_checks: f.report.smoke_checks,
        details: f.report.details,
    })
}

#[allow(clippy::too_many_arguments)]
async fn steps_1_to_4(
    repo: &Repository,
    db: &DatabaseConfig,
    conninfo: Option<&str>,
    backup: &str,
    dir: &Path,
    restore_command: String,
    progress: Report<'_>,
    steps: &mut Steps,
    f: &mut Findings,
    began: Instant,
    measured_rto_ms: &mut Option<u64>,
) -> bool {
    let pgdata = dir.join(PGDATA);

    // 1: the environment.
    steps.start(1, progress);
    let env = (|| -> Result<u16, String> {
        crate::postgres::pg_bin_of(db).map_err(|e| e.to_string())?;
        let port = crate::postgres::local::free_port().map_err(|e| e.to_string())?;
        std::fs::write(dir.join("pg_hba.conf"), "local all all trust\n")
            .map_err(|e| format!("write pg_hba.conf: {e}"))?;
        Ok(port)
    })();
    let port = match env {
        Ok(port) => {
            steps.end(
                1,
                Ok(format!(
                    "{}: port {port}, Unix socket only, no TCP listener",
                    dir.display()
                )),
                progress,
            );
            port
        }
        Err(e) => return steps.end(1, Err(e), progress),
    };

    // 2: restore and recover.
    steps.start(2, progress);
    let snap = match repo.snapshot(backup).await {
        Ok(s) => s,
        Err(e) => return steps.end(2, Err(format!("{backup}: {e}")), progress),
    };
    let Some(pg) = snap.postgres.clone() else {
        return steps.end(
            2,
            Err(format!("{backup} is not a PostgreSQL base backup")),
            progress,
        );
    };
    let counts = pg.row_counts.as_ref();
    let restored = repo
        .restore_for_recovery(&RecoveryRequest {
            backup: Some(snap.id.clone()),
            target: pgdata.clone(),
            time: None,
            immediate: counts.is_none(),
            lsn: counts.map(|c| c.lsn.clone()),
            port: Some(port),
            restore_command,
            progress: Default::default(),
            check_data: false,
            durable: true,
        })
        .await;
    let restored = match restored {
        Ok(r) => r,
        Err(e) => return steps.end(2, Err(format!("restore: {e}")), progress),
    };
    let settings = {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(pgdata.join("postgresql.auto.conf"))
            .and_then(|mut file| file.write_all(verify::isolation_settings(dir, true).as_bytes()))
    };
    if let Err(e) = settings {
        return steps.end(2, Err(format!("isolation settings: {e}")), progress);
    }
    let (user, database) = super::user_and_database(conninfo, counts);
    let server = match verify::start_and_wait(db, dir, &pgdata, port, &user, &database).await {
        Ok(c) => c,
        Err(why) => return steps.end(2, Err(format!("recovery: {why}")), progress),
    };
    steps.end(
        2,
        Ok(format!(
            "{} restored ({} files, {:.1} MiB) and recovered to {}",
            restored.backup,
            restored.files,
            restored.bytes as f64 / 1048576.0,
            counts.map_or_else(
                || format!("its consistent point {}", pg.stop_lsn),
                |c| format!("its row counts' LSN {}", c.lsn)
            )
        )),
        progress,
    );

    // 3: smoke tests.
    steps.start(3, progress);
    let builtin = [crate::config::SmokeCheck {
        sql: "select 1".into(),
        expect: "1".into(),
    }];
    let checks = if db.smoke_checks.is_empty() {
        &builtin[..]
    } else {
        &db.smoke_checks[..]
    };
    let failed = verify::smoke_checks(&server.client, checks, "smoke test", f).await;
    if !failed.is_empty() {
        return steps.end(
            3,
            Err(format!(
                "{} of {} smoke checks failed: {}",
                failed.len(),
                checks.len(),
                failed.join("; ")
            )),
            progress,
        );
    }
    *measured_rto_ms = Some(began.elapsed().as_millis() as u64);
    steps.end(
        3,
        Ok(format!(
            "{} smoke checks passed{}",
            checks.len(),
            if db.smoke_checks.is_empty() {
                " (none configured: select 1)"
            } else {
                ""
            }
        )),
        progress,
    );

    // 4: consistency.
    steps.start(4, progress);
    let (counted, indexes) = verify::consistency(&server, counts, f).await;
    drop(server);
    let summary: Vec<String> = f
        .report
        .smoke_checks
        .iter()
        .filter(|c| c.name == "row counts" || c.name == "amcheck")
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    let summary = if summary.is_empty() {
        "no row counts recorded".to_string()
    } else {
        summary.join("; ")
    };
    if counted && indexes {
        steps.end(4, Ok(summary), progress)
    } else {
        warn!(%summary, "DR test: data consistency failed");
        steps.end(4, Err(summary), progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_rises_through_the_steps() {
        let mut last = 0.0;
        for n in 1..=5 {
            for ended in [false, true] {
                let p = percent(n, ended);
                assert!(p > last || (n == 1 && !ended), "{n} {ended}: {p}");
                assert!(p < 100.0);
                last = p;
            }
        }
    }
}
