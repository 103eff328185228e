//! `drmesh verify --all` and `drmesh stats`: verify-all runs and lifecycle statistics
//! through the coordinator's REST API.

use drmesh_protocol::api::{
    LifecycleStats, PassRate, VerifyAllAccepted, VerifyAllRun, VerifyAllStatus,
};
use serde_json::json;

use crate::client::Client;
use crate::{print_json, Output};

const VERIFY: &str = "/v1/backup-recovery/verification";

/// `drmesh verify --all [--wait]`: exit 1 when waiting and a verification failed.
pub fn all(client: &Client, wait: bool, output: Output) -> anyhow::Result<()> {
    let accepted: VerifyAllAccepted = client.post(&format!("{VERIFY}/verify-all"), &json!({}))?;
    if !wait {
        match output {
            Output::Json => print_json(&accepted)?,
            Output::Text => {
                println!(
                    "verify-all {}: {} queued ({} at a time), {} skipped",
                    accepted.run_id,
                    accepted.queued.len(),
                    accepted.concurrency,
                    accepted.skipped.len()
                );
                for id in &accepted.queued {
                    println!("  queued   {id}");
                }
                for s in &accepted.skipped {
                    println!("  skipped  {}: {}", s.backup_id, s.reason);
                }
            }
        }
        return Ok(());
    }
    let path = format!("{VERIFY}/verify-all/{}", accepted.run_id);
    let run: VerifyAllRun = crate::database::poll(
        "verify-all",
        || client.get(&path),
        |r: &VerifyAllRun| (r.status == VerifyAllStatus::Completed).then(|| r.run_id.clone()),
        |r: &VerifyAllRun| {
            let t = &r.totals;
            let done = t.passed + t.failed;
            (
                if t.queued == 0 {
                    100.0
                } else {
                    done as f32 * 100.0 / t.queued as f32
                },
                format!("{done} of {} ended, {} failed", t.queued, t.failed),
            )
        },
    )?;
    match output {
        Output::Json => print_json(&run)?,
        Output::Text => print_run(&run),
    }
    if run.totals.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn print_run(r: &VerifyAllRun) {
    let t = &r.totals;
    println!(
        "verify-all {}  {:?}  passed {}  failed {}  running {}  skipped {}",
        r.run_id, r.status, t.passed, t.failed, t.running, t.skipped
    );
    let show = |x: Option<String>| x.unwrap_or_else(|| "-".into());
    for i in &r.results {
        println!(
            "  {}  {:?}  checksum {}  files {}  restorability {}  {}",
            i.backup_id,
            i.status,
            show(
                i.checksum_verification
                    .map(|x| format!("{x:?}").to_uppercase())
            ),
            show(i.file_accessibility.map(|x| format!("{x:?}"))),
            show(i.restorability_test.map(|x| format!("{x:?}"))),
            i.duration_ms
                .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
                .unwrap_or_default()
        );
        if let Some(e) = &i.error {
            println!("      error: {e}");
        }
    }
    for s in &r.skipped {
        println!("  {}  skipped: {}", s.backup_id, s.reason);
    }
}

/// `drmesh stats [--output json]`.
pub fn stats(client: &Client, output: Output) -> anyhow::Result<()> {
    let s: LifecycleStats = client.get(&format!("{VERIFY}/lifecycle-stats"))?;
    match output {
        Output::Json => print_json(&s)?,
        Output::Text => print_stats(&s),
    }
    Ok(())
}

fn print_stats(s: &LifecycleStats) {
    let counts = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rate = |p: &PassRate| match p.rate {
        Some(r) => format!("{:.1}% ({} of {})", r * 100.0, p.passed, p.finished),
        None => "- (none ended)".into(),
    };
    let secs = |ms: Option<u64>| {
        ms.map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    println!("database backups   {}", counts(&s.backups_by_status));
    println!(
        "document backups   {}",
        counts(&s.document_backups_by_status)
    );
    println!(
        "verification pass rate  7 days {}  30 days {}",
        rate(&s.verification_pass_rate_7d),
        rate(&s.verification_pass_rate_30d)
    );
    println!(
        "restore time ({} days, {} tests)  mean {}  max {}",
        s.restore_time.days,
        s.restore_time.samples,
        secs(s.restore_time.mean_ms),
        secs(s.restore_time.max_ms)
    );
    if s.last_dr_tests.is_empty() {
        println!("last DR tests      none");
    }
    for t in &s.last_dr_tests {
        println!(
            "DR test {}  plan {}  {:?}  measured RTO {}  plan RTO {} s  {}",
            t.test_id,
            t.plan_id,
            t.status,
            t.measured_rto_seconds
                .map(|s| format!("{s:.1} s"))
                .unwrap_or_else(|| "-".into()),
            t.rto_seconds,
            match t.within_rto {
                Some(true) => "within RTO",
                Some(false) => "OVER RTO",
                None => "",
            }
        );
        for step in &t.steps {
            println!(
                "  {}. {}  {:?}  {}",
                step.number,
                step.name,
                step.status,
                step.duration_ms
                    .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
                    .unwrap_or_default()
            );
        }
    }
    for r in &s.rpo {
        println!(
            "plan {}  RPO {} s  newest verified backup {} ({})  {}",
            r.plan_id,
            r.rpo_seconds,
            r.newest_verified_backup_id.as_deref().unwrap_or("none"),
            r.newest_verified_backup_age_seconds
                .map(|a| format!("{a} s old"))
                .unwrap_or_else(|| "-".into()),
            if r.within_rpo {
                "within RPO"
            } else {
                "OUTSIDE RPO"
            }
        );
    }
}
