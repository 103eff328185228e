//! Per-token limits on the expensive routes: which class a request is in, and whether
//! one more fits in its token bucket (`[limits] expensive_per_minute`, with a burst of
//! as many). A pure function of the bucket, `now` and the rate; the HTTP layer keeps
//! the buckets and says 429 with when to retry.

use std::time::{Duration, Instant};

/// The expensive kinds of call, each limited on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expensive {
    /// A database or document backup.
    Backup,
    /// A verification (a restore and a server start), one or all.
    Verify,
    /// A document restore or a point-in-time recovery.
    Restore,
    /// A failover, switchover, retry, rejoin or DR test.
    Failover,
}

impl Expensive {
    pub fn name(self) -> &'static str {
        match self {
            Expensive::Backup => "backup",
            Expensive::Verify => "verify",
            Expensive::Restore => "restore",
            Expensive::Failover => "failover",
        }
    }

    /// The class of a `POST` to `path` (a `/v1/…` path), if it is expensive.
    pub fn of(path: &str) -> Option<Expensive> {
        let p = path.strip_prefix("/v1/backup-recovery/")?;
        let segments: Vec<&str> = p.split('/').collect();
        match segments.as_slice() {
            ["database", "backup", _] | ["documents", "backup"] => Some(Expensive::Backup),
            ["verification", "verify", _]
            | ["verification", "verify-all"]
            | ["documents", "backups", _, "verify"] => Some(Expensive::Verify),
            ["documents", "backups", _, "restore"]
            | ["disaster-recovery", "point-in-time-recovery"] => Some(Expensive::Restore),
            ["disaster-recovery", "failover"]
            | ["disaster-recovery", "switchover"]
            | ["disaster-recovery", "failover", _, "retry"]
            | ["disaster-recovery", "rejoin"]
            | ["disaster-recovery", "test", _] => Some(Expensive::Failover),
            _ => None,
        }
    }
}

/// A token bucket: `tokens` left as of `at`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at: Instant,
}

impl Bucket {
    /// A full bucket of `per_minute`.
    pub fn full(per_minute: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(per_minute),
            at: now,
        }
    }

    /// Takes one call at `now`: the bucket after it, or how long until one fits.
    pub fn take(self, now: Instant, per_minute: u32) -> Result<Bucket, Duration> {
        let rate = f64::from(per_minute) / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let tokens = (self.tokens + elapsed * rate).min(f64::from(per_minute));
        let at = now.max(self.at);
        if tokens >= 1.0 {
            Ok(Bucket {
                tokens: tokens - 1.0,
                at,
            })
        } else if rate > 0.0 {
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        } else {
            Err(Duration::from_secs(60))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_expensive_routes_are_classed_and_the_others_not() {
        let b = "/v1/backup-recovery";
        for (path, class) in [
            (format!("{b}/database/backup/full"), Some(Expensive::Backup)),
            (format!("{b}/documents/backup"), Some(Expensive::Backup)),
            (
                format!("{b}/verification/verify/bk_1"),
                Some(Expensive::Verify),
            ),
            (
                format!("{b}/verification/verify-all"),
                Some(Expensive::Verify),
            ),
            (
                format!("{b}/documents/backups/d1/verify"),
                Some(Expensive::Verify),
            ),
            (
                format!("{b}/documents/backups/d1/restore"),
                Some(Expensive::Restore),
            ),
            (
                format!("{b}/disaster-recovery/point-in-time-recovery"),
                Some(Expensive::Restore),
            ),
            (
                format!("{b}/disaster-recovery/failover"),
                Some(Expensive::Failover),
            ),
            (
                format!("{b}/disaster-recovery/failover/f1/retry"),
                Some(Expensive::Failover),
            ),
            (
                format!("{b}/disaster-recovery/test/p"),
                Some(Expensive::Failover),
            ),
            (format!("{b}/disaster-recovery/failover/f1/abort"), None),
            (format!("{b}/disaster-recovery/plans"), None),
            (format!("{b}/monitoring/alerts/a/acknowledge"), None),
            ("/v1/tokens".to_string(), None),
        ] {
            assert_eq!(Expensive::of(&path), class, "{path}");
        }
    }

    #[test]
    fn a_full_bucket_takes_its_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut b = Bucket::full(6, t0);
        for _ in 0..6 {
            b = b.take(t0, 6).expect("within the burst");
        }
        let wait = b.take(t0, 6).expect_err("empty");
        assert!((wait.as_secs_f64() - 10.0).abs() < 1e-6, "{wait:?}");
        let later = t0 + Duration::from_secs(10);
        let b = b.take(later, 6).expect("refilled one");
        assert!(b.take(later, 6).is_err());
    }

    proptest! {
        /// Over any window, no more calls pass than the burst plus the refill.
        #[test]
        fn no_more_pass_than_the_burst_and_the_rate(
            per_minute in 1u32..120,
            gaps in proptest::collection::vec(0u64..5_000, 1..400),
        ) {
            let t0 = Instant::now();
            let mut b = Bucket::full(per_minute, t0);
            let mut now = t0;
            let mut passed = 0u32;
            for g in gaps {
                now += Duration::from_millis(g);
                if let Ok(next) = b.take(now, per_minute) {
                    b = next;
                    passed += 1;
                }
            }
            let minutes = now.duration_since(t0).as_secs_f64() / 60.0;
            let most = f64::from(per_minute) * (1.0 + minutes);
            prop_assert!(f64::from(passed) <= most + 1e-9, "{passed} > {most}");
        }
    }
}
