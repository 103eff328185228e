//! Which month repositories retention looks at in a document location whose URL has a
//! date template (`{yyyy}`, `{mm}`: `s3://b/document-backups/{yyyy}/{mm}`, one repository
//! per month as the runbook lays them out).
//!
//! The policy is applied to such a location as one history
//! ([`drmesh_repo::enforce_history`]), so it needs every month a tier could
//! still keep a snapshot from, and the months just before, whose snapshots have fallen
//! out of every tier since the last run and are now to go. [`months`] is that range:
//! from [`MARGIN_MONTHS`] before the oldest month any tier of the policy reaches, to
//! the month of `now`, never more than [`MAX_MONTHS`]. Each month's repository is then
//! probed (a local `config` file looked for, an object store's `config` read), so the
//! cost is bounded by the range, not by what the bucket holds.
//!
//! Looking at a suffix of the history is safe: every tier keeps the newest snapshot of
//! a period (or everything younger than an age), and the newest snapshot of a period
//! the range cuts is inside the range; a snapshot before the range is never touched,
//! and [`drmesh_protocol::retention::Tier::Latest`] is the newest of all wherever it is.
//! What the bound costs is that a month older than the range is not cleaned up (after
//! a policy was shortened by more than the margin, or no enforcement ran for longer):
//! its repository has to be removed by hand.

use chrono::{DateTime, Datelike, Days, NaiveDate, TimeDelta, TimeZone, Utc};

use drmesh_protocol::retention::RetentionPolicy;

/// Months looked at before the oldest one a tier reaches: a whole year, so that the
/// year the yearly tier lets go of on 1 January is still seen once.
pub const MARGIN_MONTHS: i64 = 12;

/// At most this many months (a hundred years) are looked at, whatever the policy.
pub const MAX_MONTHS: i64 = 1200;

/// Whether a location URL has a date template.
pub fn templated(url: &str) -> bool {
    url.contains("{yyyy}") || url.contains("{mm}")
}

fn month_number(d: NaiveDate) -> i64 {
    i64::from(d.year()) * 12 + i64::from(d.month0())
}

fn first_day(month: i64) -> Option<DateTime<Utc>> {
    let year = i32::try_from(month.div_euclid(12)).ok()?;
    let day = NaiveDate::from_ymd_opt(year, month.rem_euclid(12) as u32 + 1, 1)?;
    Some(Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0)?))
}

/// The oldest month (as a month number) a tier of `policy` can keep a snapshot from
/// at `now`.
fn oldest_reach(policy: &RetentionPolicy, now: DateTime<Utc>) -> i64 {
    let today = now.date_naive();
    let this_month = month_number(today);
    // A full younger than `policy.full` (one too long for the calendar reaches anywhere).
    let mut oldest = TimeDelta::from_std(policy.full)
        .ok()
        .and_then(|full| now.checked_sub_signed(full))
        .map_or(i64::MIN, |t| month_number(t.date_naive()));
    if policy.weekly > 0 {
        let back =
            u64::from(today.weekday().num_days_from_monday()) + 7 * u64::from(policy.weekly - 1);
        let monday = today.checked_sub_days(Days::new(back));
        oldest = oldest.min(monday.map_or(i64::MIN, month_number));
    }
    if policy.monthly > 0 {
        oldest = oldest.min(this_month - i64::from(policy.monthly - 1));
    }
    if policy.yearly > 0 {
        oldest = oldest.min(i64::from(today.year()) * 12 - 12 * i64::from(policy.yearly - 1));
    }
    oldest
}

/// The first instant of each month retention looks at in a templated location at
/// `now`, oldest first: see the module notes.
pub fn months(policy: &RetentionPolicy, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let this_month = month_number(now.date_naive());
    let first = oldest_reach(policy, now)
        .saturating_sub(MARGIN_MONTHS)
        .max(this_month - (MAX_MONTHS - 1));
    (first..=this_month).filter_map(first_day).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    fn span(policy: &RetentionPolicy, now: &str) -> (String, String, usize) {
        let m = months(policy, at(now));
        let name = |t: &DateTime<Utc>| t.format("%Y-%m").to_string();
        (name(&m[0]), name(&m[m.len() - 1]), m.len())
    }

    #[test]
    fn the_runbook_policy_reaches_seven_years_and_a_margin_back() {
        // Yearly 7 at 2026-06-15: January 2020 onwards, and all of 2019.
        let got = span(&RetentionPolicy::default(), "2026-06-15T01:00:00Z");
        assert_eq!(got, ("2019-01".into(), "2026-06".into(), 90));
        // Every month once, in order, each at its first instant.
        let m = months(&RetentionPolicy::default(), at("2026-06-15T01:00:00Z"));
        assert!(m.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(m[0], at("2019-01-01T00:00:00Z"));
    }

    #[test]
    fn the_tier_reaching_furthest_sets_the_range() {
        let none = RetentionPolicy {
            full: DAY,
            incremental: DAY,
            weekly: 0,
            monthly: 0,
            yearly: 0,
        };
        // Only yesterday: this month and the margin.
        assert_eq!(
            span(&none, "2026-03-01T00:30:00Z"),
            ("2025-02".into(), "2026-03".into(), 14)
        );
        // Two weeks back from Sunday 1 March 2026 starts on Monday 16 February.
        let weekly = RetentionPolicy {
            weekly: 2,
            ..none.clone()
        };
        assert_eq!(
            span(&weekly, "2026-03-01T12:00:00Z"),
            ("2025-02".into(), "2026-03".into(), 14)
        );
        let weekly = RetentionPolicy {
            weekly: 3,
            ..none.clone()
        };
        assert_eq!(span(&weekly, "2026-03-01T12:00:00Z").0, "2025-02");
        let weekly = RetentionPolicy {
            weekly: 4,
            ..none.clone()
        };
        assert_eq!(span(&weekly, "2026-03-01T12:00:00Z").0, "2025-02");
        let weekly = RetentionPolicy {
            weekly: 5,
            ..none.clone()
        };
        assert_eq!(span(&weekly, "2026-03-01T12:00:00Z").0, "2025-01");
        // Monthly 6 from December: July, less the margin.
        let monthly = RetentionPolicy {
            monthly: 6,
            ..none.clone()
        };
        assert_eq!(span(&monthly, "2026-12-02T12:00:00Z").0, "2025-07");
        // A year-long daily tier reaches furthest.
        let daily = RetentionPolicy {
            full: 400 * DAY,
            monthly: 6,
            ..none.clone()
        };
        assert_eq!(span(&daily, "2026-12-02T12:00:00Z").0, "2024-10");
    }

    #[test]
    fn the_range_is_bounded_whatever_the_policy() {
        let huge = RetentionPolicy {
            full: Duration::from_secs(u64::MAX / 4),
            incremental: DAY,
            weekly: 1000,
            monthly: 1000,
            yearly: 1000,
        };
        let got = span(&huge, "2026-06-15T01:00:00Z");
        assert_eq!(
            got,
            ("1926-07".into(), "2026-06".into(), MAX_MONTHS as usize)
        );
    }

    #[test]
    fn templates_are_recognised() {
        assert!(templated("s3://b/document-backups/{yyyy}/{mm}"));
        assert!(templated("/srv/docs-{yyyy}"));
        assert!(!templated("/srv/docs"));
    }
}
