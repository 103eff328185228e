//! When scheduled work is due: DR tests every `testInterval`, retention at the
//! `[retention] schedule` cron times, and whether a measured RTO meets the plan's.
//! Pure functions of the last run and `now`.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use drmesh_protocol::api::DrTestStatus;

/// Whether a plan is due a scheduled test at `now`: its last test (or, without one, its
/// creation) started at least `test_interval` ms ago, and no test of it is running.
pub fn drtest_due(
    now: DateTime<Utc>,
    test_interval_ms: u64,
    created_at: DateTime<Utc>,
    last: Option<(DateTime<Utc>, DrTestStatus)>,
) -> bool {
    if matches!(last, Some((_, DrTestStatus::InProgress))) {
        return false;
    }
    let since = last.map_or(created_at, |(started, _)| started);
    let interval = chrono::Duration::milliseconds(test_interval_ms.min(i64::MAX as u64) as i64);
    now.signed_duration_since(since) >= interval
}

/// Whether a measured RTO exceeds the plan's RTO (strictly; equal meets it).
pub fn rto_exceeded(measured_ms: u64, plan_rto_seconds: u64) -> bool {
    measured_ms > plan_rto_seconds.saturating_mul(1000)
}

/// `[retention] schedule`: a cron expression (five fields, UTC), or `off` (`None`).
pub fn parse_schedule(text: &str) -> Result<Option<croner::Cron>, String> {
    if text.trim() == "off" {
        return Ok(None);
    }
    croner::Cron::from_str(text)
        .map(Some)
        .map_err(|e| format!("retention.schedule {text:?}: {e}"))
}

/// Whether an enforcement is due at `now`: the schedule's first time after the last
/// run (or, before any, after `since`) has come. Several missed times make one run.
pub fn retention_due(
    cron: &croner::Cron,
    last: Option<DateTime<Utc>>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    cron.find_next_occurrence(&last.unwrap_or(since), false)
        .is_ok_and(|next| next <= now)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    fn at(d: u32, h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, d, h, m, 0)
            .single()
            .expect("time")
    }

    #[test]
    fn a_plan_is_due_once_its_interval_has_passed_since_its_last_test_or_creation() {
        let hour = 3_600_000;
        let created = t("2026-01-01T00:00:00Z");
        // Never tested: counted from its creation.
        assert!(!drtest_due(t("2026-01-01T00:59:59Z"), hour, created, None));
        assert!(drtest_due(t("2026-01-01T01:00:00Z"), hour, created, None));
        // Tested: counted from the last test's start, whatever its outcome.
        let last = Some((t("2026-01-01T05:00:00Z"), DrTestStatus::Failed));
        assert!(!drtest_due(t("2026-01-01T05:30:00Z"), hour, created, last));
        assert!(drtest_due(t("2026-01-01T06:00:01Z"), hour, created, last));
        let last = Some((t("2026-01-01T05:00:00Z"), DrTestStatus::Completed));
        assert!(drtest_due(t("2026-01-01T06:00:00Z"), hour, created, last));
        // Never a second one while one runs, however old.
        let last = Some((t("2026-01-01T05:00:00Z"), DrTestStatus::InProgress));
        assert!(!drtest_due(t("2026-02-01T00:00:00Z"), hour, created, last));
        // A short interval (not a valid plan, but the rule is the same).
        assert!(drtest_due(t("2026-01-01T00:00:02Z"), 2000, created, None));
        assert!(!drtest_due(t("2026-01-01T00:00:01Z"), 2000, created, None));
    }

    #[test]
    fn the_rto_is_exceeded_only_above_the_plans() {
        assert!(!rto_exceeded(0, 1));
        assert!(!rto_exceeded(1000, 1));
        assert!(rto_exceeded(1001, 1));
        assert!(!rto_exceeded(4 * 3600 * 1000, 4 * 3600));
        assert!(rto_exceeded(u64::MAX, 3600));
        // No overflow: a plan RTO too large to hold in milliseconds is never exceeded.
        assert!(!rto_exceeded(u64::MAX, u64::MAX));
    }

    #[test]
    fn the_default_schedule_runs_daily_at_one_utc_and_catches_up_once() {
        let cron = parse_schedule(drmesh_protocol::retention::DEFAULT_SCHEDULE)
            .expect("parses")
            .expect("on");
        let since = at(1, 12, 0);
        assert!(!retention_due(&cron, None, since, at(2, 0, 59)));
        assert!(retention_due(&cron, None, since, at(2, 1, 0)));
        assert!(!retention_due(
            &cron,
            Some(at(2, 1, 0)),
            since,
            at(2, 23, 0)
        ));
        assert!(retention_due(&cron, Some(at(2, 1, 0)), since, at(3, 1, 0)));
        // Down for days: due, and once it ran, not again until the next 01:00.
        assert!(retention_due(&cron, Some(at(2, 1, 0)), since, at(6, 9, 0)));
        assert!(!retention_due(
            &cron,
            Some(at(6, 9, 0)),
            since,
            at(6, 23, 0)
        ));
    }

    #[test]
    fn off_and_bad_schedules() {
        assert!(parse_schedule("off").expect("off").is_none());
        let err = parse_schedule("0 25 * * *").expect_err("hour 25");
        assert!(err.contains("retention.schedule"), "{err}");
        assert!(parse_schedule("every day").is_err());
    }

    proptest! {
        /// Once due, a DR test stays due as time passes (until one starts), and never
        /// while one runs.
        #[test]
        fn drtest_due_is_monotone_in_time(
            interval in 1_000u64..10_000_000,
            since in 0i64..1_000_000,
            a in 0i64..20_000_000,
            b in 0i64..20_000_000,
            running in any::<bool>(),
        ) {
            let created = t("2026-01-01T00:00:00Z");
            let started = created + chrono::Duration::milliseconds(since);
            let status = if running { DrTestStatus::InProgress } else { DrTestStatus::Completed };
            let (early, late) = (a.min(b), a.max(b));
            let due = |ms: i64| drtest_due(started + chrono::Duration::milliseconds(ms), interval, created, Some((started, status)));
            if due(early) {
                prop_assert!(due(late));
            }
            if running {
                prop_assert!(!due(late));
            }
        }

        /// Retention: due exactly from the schedule's first time after the last run.
        #[test]
        fn retention_due_is_monotone_and_runs_once_per_time(
            last_min in 0i64..100_000,
            a in 0i64..200_000,
            b in 0i64..200_000,
        ) {
            let cron = parse_schedule(drmesh_protocol::retention::DEFAULT_SCHEDULE)
                .expect("parses")
                .expect("on");
            let since = at(1, 0, 0);
            let last = since + chrono::Duration::minutes(last_min);
            let (early, late) = (a.min(b), a.max(b));
            let due = |m: i64| retention_due(&cron, Some(last), since, last + chrono::Duration::minutes(m));
            if due(early) {
                prop_assert!(due(late));
            }
            // Never due within the same minute as the last run, and always within a day.
            prop_assert!(!due(0));
            prop_assert!(due(24 * 60));
        }

        /// An RTO is exceeded exactly above the plan's, without overflow.
        #[test]
        fn rto_is_a_strict_threshold(measured in any::<u64>(), plan in any::<u64>()) {
            let exceeded = rto_exceeded(measured, plan);
            prop_assert_eq!(exceeded, u128::from(measured) > u128::from(plan) * 1000 && plan <= u64::MAX / 1000);
            if exceeded {
                prop_assert!(!rto_exceeded(measured.saturating_sub(1).min(plan.saturating_mul(1000)), plan));
            }
        }
    }
}
