//! Retention: which backups a policy keeps hot, moves to the cold archive or deletes, and
//! which archived WAL segments the backups kept still need. Pure computation: no I/O, no
//! clock (`now` is an argument), so every rule below is tested in memory.
//!
//! # The rules (the contract)
//!
//! Order. "Newest" and the order of a [`Plan`] are by [`Candidate::time`] (when the backup
//! finished), ties broken by id (the greater id counts as the newer). Never by timeline or
//! by id alone: a timeline switch must never make the newest backups look the oldest.
//!
//! For each candidate `c`, with `age = now - c.time`:
//!
//! - Future (`c.time > now`, clock skew): kept hot, reason [`Tier::Daily`] for a full,
//!   [`Tier::Incremental`] for an incremental. It takes part in no calendar tier (it
//!   neither is picked nor displaces the newest full of its week, month or year), so skew
//!   never deletes a backup and never costs one a calendar slot.
//! - Incremental: kept hot with reason `Incremental` while `age < policy.incremental`,
//!   deleted after. Never archived, never picked by a calendar tier. A manifest lists every
//!   chunk it needs, so an incremental stays restorable when its parent goes (as long as
//!   garbage collection keeps every chunk a remaining manifest lists).
//! - Full (a document snapshot counts as a full), tiers:
//!   - `Daily`: `age < policy.full`.
//!   - `Weekly`: the newest full of its ISO week, when that week is one of the last
//!     `policy.weekly` weeks, the week of `now` counting as the first. ISO weeks run from
//!     Monday 00:00 UTC to Sunday 24:00 UTC and are counted across year ends (the first week
//!     of 2026 starts on Monday 2025-12-29): weeks are numbered by their Monday's day count,
//!     which is the same partition as `(iso_year, iso_week)`.
//!   - `Monthly`: the newest full of its UTC calendar month, when that month is one of the
//!     last `policy.monthly` months (the month of `now` first).
//!   - `Yearly`: the newest full of its UTC calendar year, when that year is one of the
//!     last `policy.yearly` years (the year of `now` first).
//!
//!   The action: [`Action::KeepHot`] when `Daily` or `Weekly` selects it;
//!   otherwise [`Action::Archive`] when `Monthly` or `Yearly` does; otherwise
//!   [`Action::Delete`]. `reasons` lists every tier that selects it, in the order
//!   `Daily, Weekly, Monthly, Yearly` (empty for a deletion).
//!
//! # The cold archive
//!
//! `plan` sees only the hot snapshots. Once there is an archive, use
//! [`plan_with_archive`] and [`archive_expired`], which take both lists:
//!
//! - `Daily` and `Weekly` are promises about the hot tier, so they are computed over the hot
//!   snapshots only (an archived copy does not satisfy them).
//! - `Monthly` and `Yearly` are computed over the hot fulls and the archived ones together:
//!   the newest full of a month is the newest wherever it lives. So a hot full older than
//!   an archived one of the same month is not archived a second time, and an archived
//!   snapshot is displaced by a newer hot full of its month or year (which is itself kept,
//!   hot or archived, since it is the tier's pick).
//! - An archived snapshot stays as long as `Monthly` or `Yearly` picks it (or it is in the
//!   future); [`archive_expired`] lists the others. An archived incremental (which should
//!   not exist) always expires.
//!
//! With these choices enforcement converges: running it at any sequence of times, applying
//! each plan (deleting `Delete`, moving `Archive` to the archive, deleting what
//! `archive_expired` lists) leaves exactly the hot set and archive that one plan over every
//! backup ever taken gives at the last time; and planning again at the same time keeps
//! everything hot and expires nothing (idempotence). A snapshot present in both lists (a
//! move cut short) counts once.
//!
//! # WAL
//!
//! An archived segment `(tl, name)` is needed when some retained base backup `b` (full or
//! incremental) has `tl == b.timeline` or `tl` descending from `b.timeline`, and the
//! segment's position `(log << 32) | seg` (the name's last 16 hex digits) is at least that
//! of `b`'s start segment. `tl` descends from `b.timeline` when `histories[tl]` (the
//! ancestors its `.history` file lists) holds it; a timeline above 1 missing from
//! `histories` is taken to descend from every lower one, since PostgreSQL numbers a new
//! timeline above all it knows (an unread history file must never release WAL). See
//! `wal_needed` for what is never deleted.
//!
//! `retained` is meant to be the base backups kept hot: passing an archived one keeps
//! every segment since its start, for years. An archived base backup should carry its
//! own WAL (start to stop segment) into the archive instead.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use drmesh_pg::{WalKind, WalName};

pub use drmesh_protocol::retention::{RetentionPolicy, Tier};

/// One day.
#[cfg(test)]
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// What a backup is, for retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    /// A full base backup, or a document snapshot.
    Full,
    /// An incremental base backup.
    Incremental,
}

/// A backup retention decides about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    pub id: String,
    pub kind: Kind,
    /// When the backup finished.
    pub time: DateTime<Utc>,
}

/// What to do with a hot backup. Serialized in camelCase (`"keepHot"`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Leave it in the repository.
    KeepHot,
    /// Copy it to the cold archive, then remove it from the repository.
    Archive,
    /// Remove it.
    Delete,
}

/// The decision about one candidate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub id: String,
    pub action: Action,
    /// Every tier that keeps it (empty for [`Action::Delete`]).
    pub reasons: Vec<Tier>,
}

/// One decision per candidate, oldest first (by time, then id).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub decisions: Vec<Decision>,
}

impl Plan {
    /// The decisions with `action`, oldest first.
    #[cfg(test)]
    pub fn with_action(&self, action: Action) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(move |d| d.action == action)
    }
}

/// What "newest" compares: time, then id.
type Key<'a> = (DateTime<Utc>, &'a str);

fn key(c: &Candidate) -> Key<'_> {
    (c.time, c.id.as_str())
}

/// A policy duration as a `TimeDelta`; one too long for it keeps everything.
fn window(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// The Monday-to-Sunday week holding `t`, as a count of weeks. Day 1 of the common era
/// (0001-01-01) is a Monday, so this is the ISO week partition.
fn week_number(t: DateTime<Utc>) -> i64 {
    (i64::from(t.date_naive().num_days_from_ce()) - 1).div_euclid(7)
}

fn month_number(t: DateTime<Utc>) -> i64 {
    i64::from(t.year()) * 12 + i64::from(t.month0())
}

/// The newest candidate of each group (week, month or year) within the last `count`
/// groups before and including `now`'s.
#[derive(Default)]
struct Newest<'a> {
    by_group: BTreeMap<i64, Key<'a>>,
}

impl<'a> Newest<'a> {
    fn offer(&mut self, now_group: i64, count: u32, group: i64, k: Key<'a>) {
        if now_group - group >= i64::from(count) {
            return;
        }
        let slot = self.by_group.entry(group).or_insert(k);
        if k > *slot {
            *slot = k;
        }
    }

    fn picks(&self) -> BTreeSet<Key<'a>> {
        self.by_group.values().copied().collect()
    }
}

/// The fulls a calendar tier keeps, as keys.
struct Picks<'a> {
    weekly: BTreeSet<Key<'a>>,
    monthly: BTreeSet<Key<'a>>,
    yearly: BTreeSet<Key<'a>>,
}

impl<'a> Picks<'a> {
    /// `Weekly` over `hot`, `Monthly` and `Yearly` over `hot` and `archived`; fulls in the
    /// future take no part.
    fn new(
        now: DateTime<Utc>,
        policy: &RetentionPolicy,
        hot: &'a [Candidate],
        archived: &'a [Candidate],
    ) -> Self {
        let past_fulls = |cs: &'a [Candidate]| {
            cs.iter()
                .filter(move |c| c.kind == Kind::Full && c.time <= now)
        };
        let mut weekly = Newest::default();
        for c in past_fulls(hot) {
            weekly.offer(week_number(now), policy.weekly, week_number(c.time), key(c));
        }
        let mut monthly = Newest::default();
        let mut yearly = Newest::default();
        for c in past_fulls(hot).chain(past_fulls(archived)) {
            monthly.offer(
                month_number(now),
                policy.monthly,
                month_number(c.time),
                key(c),
            );
            yearly.offer(
                i64::from(now.year()),
                policy.yearly,
                i64::from(c.time.year()),
                key(c),
            );
        }
        Self {
            weekly: weekly.picks(),
            monthly: monthly.picks(),
            yearly: yearly.picks(),
        }
    }
}

fn sorted(cs: &[Candidate]) -> Vec<&Candidate> {
    let mut v: Vec<&Candidate> = cs.iter().collect();
    v.sort_by(|a, b| key(a).cmp(&key(b)));
    v
}

/// Decides about every candidate (all hot), when there is no archive yet: see the module
/// notes for the rules. The same as [`plan_with_archive`] with an empty archive.
#[cfg(test)]
pub fn plan(now: DateTime<Utc>, policy: &RetentionPolicy, candidates: &[Candidate]) -> Plan {
    plan_with_archive(now, policy, candidates, &[])
}

/// Decides about every hot snapshot, taking the archived ones into account for the
/// `Monthly` and `Yearly` tiers (see the module notes).
pub fn plan_with_archive(
    now: DateTime<Utc>,
    policy: &RetentionPolicy,
    hot: &[Candidate],
    archived: &[Candidate],
) -> Plan {
    let picks = Picks::new(now, policy, hot, archived);
    let full = window(policy.full);
    let incremental = window(policy.incremental);
    let decisions = sorted(hot)
        .into_iter()
        .map(|c| {
            let age = now.signed_duration_since(c.time);
            let future = c.time > now;
            let (action, reasons) = match c.kind {
                Kind::Incremental if future || age < incremental => {
                    (Action::KeepHot, vec![Tier::Incremental])
                }
                Kind::Incremental => (Action::Delete, Vec::new()),
                Kind::Full => {
                    let k = key(c);
                    let reasons: Vec<Tier> = [
                        (Tier::Daily, future || age < full),
                        (Tier::Weekly, picks.weekly.contains(&k)),
                        (Tier::Monthly, picks.monthly.contains(&k)),
                        (Tier::Yearly, picks.yearly.contains(&k)),
                    ]
                    .into_iter()
                    .filter_map(|(tier, on)| on.then_some(tier))
                    .collect();
                    let action =
                        if reasons.contains(&Tier::Daily) || reasons.contains(&Tier::Weekly) {
                            Action::KeepHot
                        } else if reasons.is_empty() {
                            Action::Delete
                        } else {
                            Action::Archive
                        };
                    (action, reasons)
                }
            };
            Decision {
                id: c.id.clone(),
                action,
                reasons,
            }
        })
        .collect();
    Plan { decisions }
}

/// The archived snapshots no `Monthly` or `Yearly` tier keeps any more, oldest first:
/// the tiers are computed over the hot fulls and the archived ones together (see the
/// module notes). An archived snapshot in the future is kept; an archived incremental
/// always expires.
pub fn archive_expired(
    now: DateTime<Utc>,
    policy: &RetentionPolicy,
    hot: &[Candidate],
    archived: &[Candidate],
) -> Vec<String> {
    let picks = Picks::new(now, policy, hot, archived);
    sorted(archived)
        .into_iter()
        .filter(|c| {
            let k = key(c);
            let kept = c.time > now
                || (c.kind == Kind::Full
                    && (picks.monthly.contains(&k) || picks.yearly.contains(&k)));
            !kept
        })
        .map(|c| c.id.clone())
        .collect()
}

/// Where a retained base backup's WAL starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseBackupWal {
    pub id: String,
    pub timeline: u32,
    /// The 24-hex name of the segment holding the backup's start LSN, e.g.
    /// `000000010000000000000002` (`PgBackupInfo::start_wal`).
    pub start_segment: String,
}

/// A plain segment name's timeline and position `(log << 32) | seg`.
fn segment_position(name: &str) -> Option<(u32, u64)> {
    let n = WalName::parse(name).ok()?;
    (n.kind == WalKind::Segment)
        .then_some((n.timeline, (u64::from(n.log) << 32) | u64::from(n.seg)))
}

/// Per timeline, the earliest start position of a retained backup on it.
fn anchors(retained: &[BaseBackupWal]) -> BTreeMap<u32, u64> {
    let mut out: BTreeMap<u32, u64> = BTreeMap::new();
    for b in retained {
        // A start segment that does not parse, or names another timeline, cannot be
        // trusted: the backup then needs its whole timeline.
        let start = match segment_position(&b.start_segment) {
            Some((tl, pos)) if tl == b.timeline => pos,
            _ => 0,
        };
        let slot = out.entry(b.timeline).or_insert(start);
        *slot = (*slot).min(start);
    }
    out
}

/// `tl` is `anchor` or descends from it. A timeline above 1 with no entry in `histories`
/// (its history file unread) is taken to descend from every lower timeline, since
/// PostgreSQL numbers a new timeline above all it knows.
fn on_or_after(histories: &BTreeMap<u32, Vec<u32>>, tl: u32, anchor: u32) -> bool {
    tl == anchor
        || match histories.get(&tl) {
            Some(ancestors) => ancestors.contains(&anchor),
            None => anchor < tl,
        }
}

fn needed(
    anchors: &BTreeMap<u32, u64>,
    histories: &BTreeMap<u32, Vec<u32>>,
    tl: u32,
    name: &str,
) -> bool {
    if anchors.is_empty() {
        return true;
    }
    let Some((name_tl, pos)) = segment_position(name) else {
        return true;
    };
    if name_tl != tl {
        return true;
    }
    anchors
        .iter()
        .any(|(&anchor, &start)| pos >= start && on_or_after(histories, tl, anchor))
}

/// Whether the archived WAL file `segment` (timeline, file name) is needed by a retained
/// base backup (see the module notes). Always true, so it is never deleted, when:
/// no backup is retained (nothing anchors the WAL); the name is not a plain 24-hex segment
/// name (timeline history, backup history and `.partial` files); or the name's timeline
/// is not the one given. `histories` maps a timeline to its ancestors as its `.history`
/// file lists them; a timeline above 1 missing from it is taken to descend from every
/// lower one.
#[cfg(test)]
pub fn wal_needed(
    retained: &[BaseBackupWal],
    histories: &BTreeMap<u32, Vec<u32>>,
    segment: (u32, &str),
) -> bool {
    needed(&anchors(retained), histories, segment.0, segment.1)
}

/// The archived WAL files (timeline, name) that no retained base backup needs, in the
/// order given; empty when no backup is retained. See `wal_needed` (its tests).
pub fn wal_to_delete(
    retained: &[BaseBackupWal],
    histories: &BTreeMap<u32, Vec<u32>>,
    archived: &[(u32, String)],
) -> Vec<(u32, String)> {
    let anchors = anchors(retained);
    archived
        .iter()
        .filter(|(tl, name)| !needed(&anchors, histories, *tl, name))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone};
    use proptest::prelude::*;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("timestamp")
    }

    fn full(id: &str, time: &str) -> Candidate {
        Candidate {
            id: id.into(),
            kind: Kind::Full,
            time: at(time),
        }
    }

    fn incr(id: &str, time: &str) -> Candidate {
        Candidate {
            id: id.into(),
            kind: Kind::Incremental,
            time: at(time),
        }
    }

    fn days(n: u64) -> Duration {
        DAY * n as u32
    }

    /// A policy with only the tiers a test is about.
    fn policy(full: Duration, weekly: u32, monthly: u32, yearly: u32) -> RetentionPolicy {
        RetentionPolicy {
            full,
            incremental: full,
            weekly,
            monthly,
            yearly,
        }
    }

    /// id → (action, reasons).
    fn by_id(plan: &Plan) -> BTreeMap<String, (Action, Vec<Tier>)> {
        plan.decisions
            .iter()
            .map(|d| (d.id.clone(), (d.action, d.reasons.clone())))
            .collect()
    }

    fn ids(plan: &Plan, action: Action) -> BTreeSet<String> {
        plan.with_action(action).map(|d| d.id.clone()).collect()
    }

    /// The policy formulated independently of the module: chrono's `(iso_year, iso_week)`,
    /// `(year, month)` and `year` as groups, the newest of each group by a max over a
    /// `BTreeMap`, and the last N groups found by walking back from `now`'s one step at a
    /// time. Ids must be unique.
    fn expected(
        now: DateTime<Utc>,
        policy: &RetentionPolicy,
        cands: &[Candidate],
    ) -> BTreeMap<String, (Action, Vec<Tier>)> {
        let weeks: BTreeSet<(i32, u32)> = (0..i64::from(policy.weekly))
            .map(|k| {
                let w = (now - TimeDelta::days(7 * k)).iso_week();
                (w.year(), w.week())
            })
            .collect();
        let mut months = BTreeSet::new();
        let (mut y, mut m) = (now.year(), now.month());
        for _ in 0..policy.monthly {
            months.insert((y, m));
            (y, m) = if m == 1 { (y - 1, 12) } else { (y, m - 1) };
        }
        let years: BTreeSet<i32> = (0..policy.yearly as i32).map(|k| now.year() - k).collect();

        fn newest<G: Ord + Copy>(
            cands: &[Candidate],
            now: DateTime<Utc>,
            group: impl Fn(DateTime<Utc>) -> G,
            wanted: &BTreeSet<G>,
        ) -> BTreeSet<String> {
            let mut best: BTreeMap<G, (DateTime<Utc>, String)> = BTreeMap::new();
            for c in cands {
                if c.kind != Kind::Full || c.time > now {
                    continue;
                }
                let entry = best.entry(group(c.time)).or_insert((c.time, c.id.clone()));
                *entry = std::cmp::max(entry.clone(), (c.time, c.id.clone()));
            }
            best.into_iter()
                .filter(|(g, _)| wanted.contains(g))
                .map(|(_, (_, id))| id)
                .collect()
        }
        let weekly = newest(
            cands,
            now,
            |t| (t.iso_week().year(), t.iso_week().week()),
            &weeks,
        );
        let monthly = newest(cands, now, |t| (t.year(), t.month()), &months);
        let yearly = newest(cands, now, |t| t.year(), &years);

        let full_cutoff = now - TimeDelta::from_std(policy.full).expect("small");
        let incr_cutoff = now - TimeDelta::from_std(policy.incremental).expect("small");
        cands
            .iter()
            .map(|c| {
                let decision = match c.kind {
                    Kind::Incremental if c.time > incr_cutoff => {
                        (Action::KeepHot, vec![Tier::Incremental])
                    }
                    Kind::Incremental => (Action::Delete, vec![]),
                    Kind::Full => {
                        let mut reasons = vec![];
                        if c.time > full_cutoff {
                            reasons.push(Tier::Daily);
                        }
                        for (tier, set) in [
                            (Tier::Weekly, &weekly),
                            (Tier::Monthly, &monthly),
                            (Tier::Yearly, &yearly),
                        ] {
                            if set.contains(&c.id) {
                                reasons.push(tier);
                            }
                        }
                        let hot = reasons
                            .iter()
                            .any(|r| matches!(r, Tier::Daily | Tier::Weekly));
                        let action = match (hot, reasons.is_empty()) {
                            (true, _) => Action::KeepHot,
                            (false, true) => Action::Delete,
                            (false, false) => Action::Archive,
                        };
                        (action, reasons)
                    }
                };
                (c.id.clone(), decision)
            })
            .collect()
    }

    /// The repository and its cold archive, as enforcement leaves them.
    #[derive(Default)]
    struct State {
        hot: Vec<Candidate>,
        archive: Vec<Candidate>,
    }

    impl State {
        /// Plans, then applies the plan and the archive expiry.
        fn enforce(&mut self, now: DateTime<Utc>, policy: &RetentionPolicy) {
            let plan = plan_with_archive(now, policy, &self.hot, &self.archive);
            let expired: BTreeSet<String> = archive_expired(now, policy, &self.hot, &self.archive)
                .into_iter()
                .collect();
            let actions: BTreeMap<String, Action> = plan
                .decisions
                .into_iter()
                .map(|d| (d.id, d.action))
                .collect();
            self.archive.retain(|c| !expired.contains(&c.id));
            for c in std::mem::take(&mut self.hot) {
                match actions[&c.id] {
                    Action::KeepHot => self.hot.push(c),
                    Action::Archive => self.archive.push(c),
                    Action::Delete => {}
                }
            }
        }

        fn ids(cs: &[Candidate]) -> BTreeSet<String> {
            cs.iter().map(|c| c.id.clone()).collect()
        }

        /// Planning again at the same time changes nothing.
        fn assert_settled(&self, now: DateTime<Utc>, policy: &RetentionPolicy) {
            let again = plan_with_archive(now, policy, &self.hot, &self.archive);
            assert!(
                again.decisions.iter().all(|d| d.action == Action::KeepHot),
                "not idempotent: {:?}",
                again
                    .decisions
                    .iter()
                    .filter(|d| d.action != Action::KeepHot)
                    .collect::<Vec<_>>()
            );
            assert_eq!(again.decisions.len(), self.hot.len());
            assert_eq!(
                archive_expired(now, policy, &self.hot, &self.archive),
                Vec::<String>::new()
            );
        }
    }

    #[test]
    fn default_policy_is_the_runbooks() {
        let p = RetentionPolicy::default();
        assert_eq!(p.full, days(30));
        assert_eq!(p.incremental, days(7));
        assert_eq!((p.weekly, p.monthly, p.yearly), (12, 12, 7));
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn policy_parses_from_toml_with_defaults_and_refuses_unknown_fields() {
        let p: RetentionPolicy = toml::from_str("full = \"45d\"\nweekly = 8\n").expect("parse");
        assert_eq!(
            p,
            RetentionPolicy {
                full: days(45),
                weekly: 8,
                ..RetentionPolicy::default()
            }
        );
        let empty: RetentionPolicy = toml::from_str("").expect("parse empty");
        assert_eq!(empty, RetentionPolicy::default());
        let all: RetentionPolicy = toml::from_str(
            "full = \"30d\"\nincremental = \"36h\"\nweekly = 4\nmonthly = 6\nyearly = 0\n",
        )
        .expect("parse all");
        assert_eq!(all.incremental, Duration::from_secs(36 * 3600));
        assert_eq!((all.weekly, all.monthly, all.yearly), (4, 6, 0));

        let err = toml::from_str::<RetentionPolicy>("daily = 3\n").expect_err("unknown field");
        assert!(err.to_string().contains("unknown field `daily`"), "{err}");
        let err = toml::from_str::<RetentionPolicy>("full = \"a month or so\"\n")
            .expect_err("bad duration");
        assert!(err.to_string().contains("full"), "{err}");

        // As a section of a larger file, and back.
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Sections {
            database: RetentionPolicy,
        }
        let s: Sections =
            toml::from_str("[database]\nincremental = \"2d\"\n").expect("parse section");
        assert_eq!(s.database.incremental, days(2));
        let text = toml::to_string(&s).expect("serialize");
        assert_eq!(toml::from_str::<Sections>(&text).expect("reparse"), s);
    }

    #[test]
    fn validation_names_the_field() {
        let base = RetentionPolicy::default();
        let msg = |p: RetentionPolicy| p.validate().expect_err("invalid").to_string();
        assert_eq!(
            msg(RetentionPolicy {
                full: days(7),
                incremental: days(8),
                ..base.clone()
            }),
            "retention.incremental (8days) must not be longer than retention.full (7days)"
        );
        assert_eq!(
            msg(RetentionPolicy {
                full: Duration::ZERO,
                ..base.clone()
            }),
            "retention.full must be longer than zero"
        );
        assert_eq!(
            msg(RetentionPolicy {
                incremental: Duration::ZERO,
                ..base.clone()
            }),
            "retention.incremental must be longer than zero"
        );
        for (field, p) in [
            (
                "weekly",
                RetentionPolicy {
                    weekly: 1001,
                    ..base.clone()
                },
            ),
            (
                "monthly",
                RetentionPolicy {
                    monthly: 1001,
                    ..base.clone()
                },
            ),
            (
                "yearly",
                RetentionPolicy {
                    yearly: 1001,
                    ..base.clone()
                },
            ),
        ] {
            assert_eq!(
                msg(p),
                format!("retention.{field} (1001) must be at most 1000")
            );
        }
        let edge = RetentionPolicy {
            full: days(7),
            incremental: days(7),
            weekly: 1000,
            monthly: 0,
            yearly: 1000,
        };
        assert_eq!(edge.validate(), Ok(()));
    }

    #[test]
    fn incrementals_are_kept_for_their_window_then_deleted_never_archived() {
        let now = at("2026-12-02T12:00:00Z");
        let cands = [
            incr("fresh", "2026-12-02T11:00:00Z"),
            incr("just-inside", "2026-11-25T12:00:01Z"),
            incr("exactly-7d", "2026-11-25T12:00:00Z"),
            // Alone in its week, month and year: still no calendar tier keeps it.
            incr("old", "2025-03-01T00:00:00Z"),
            incr("future", "2026-12-02T13:00:00Z"),
        ];
        let got = by_id(&plan(now, &RetentionPolicy::default(), &cands));
        let keep = (Action::KeepHot, vec![Tier::Incremental]);
        let delete = (Action::Delete, vec![]);
        assert_eq!(got["fresh"], keep);
        assert_eq!(got["just-inside"], keep);
        assert_eq!(got["exactly-7d"], delete);
        assert_eq!(got["old"], delete);
        assert_eq!(got["future"], keep);
    }

    #[test]
    fn weekly_keeps_the_newest_full_of_each_iso_week_across_the_year_end() {
        // Wednesday of ISO week 2026-W02; 2026-W01 runs from Monday 2025-12-29.
        let now = at("2026-01-07T12:00:00Z");
        let cands = [
            full("w02-mon", "2026-01-05T01:00:00Z"),
            full("w01-sun", "2026-01-04T23:00:00Z"),
            full("w01-thu", "2026-01-01T01:00:00Z"),
            full("w01-mon-2025", "2025-12-29T00:00:00Z"),
            full("w52-sun", "2025-12-28T23:59:59Z"),
            full("w52-mon", "2025-12-22T00:00:00Z"),
            full("w51-sun", "2025-12-21T23:00:00Z"),
        ];
        let plan = plan(now, &policy(DAY, 3, 0, 0), &cands);
        let weekly = (Action::KeepHot, vec![Tier::Weekly]);
        let delete = (Action::Delete, vec![]);
        let got = by_id(&plan);
        assert_eq!(got["w02-mon"], weekly);
        assert_eq!(got["w01-sun"], weekly);
        assert_eq!(got["w52-sun"], weekly);
        for gone in ["w01-thu", "w01-mon-2025", "w52-mon", "w51-sun"] {
            assert_eq!(got[gone], delete, "{gone}");
        }
        assert_eq!(got, expected(now, &policy(DAY, 3, 0, 0), &cands));
    }

    #[test]
    fn fulls_kept_only_by_month_or_year_are_archived_with_every_reason_listed() {
        let now = at("2026-03-15T12:00:00Z"); // a Sunday
        let cands = [
            full("today", "2026-03-15T01:00:00Z"),
            full("mar-10", "2026-03-10T01:00:00Z"),
            full("feb-27", "2026-02-27T01:00:00Z"),
            full("feb-01", "2026-02-01T01:00:00Z"),
            full("jan-31", "2026-01-31T01:00:00Z"),
            full("dec-31", "2025-12-31T01:00:00Z"),
            full("nov-30", "2025-11-30T01:00:00Z"),
            full("2024", "2024-12-31T01:00:00Z"),
        ];
        let policy = policy(DAY, 1, 3, 2);
        let got = by_id(&plan(now, &policy, &cands));
        use Tier::*;
        assert_eq!(
            got["today"],
            (Action::KeepHot, vec![Daily, Weekly, Monthly, Yearly])
        );
        assert_eq!(got["feb-27"], (Action::Archive, vec![Monthly]));
        assert_eq!(got["jan-31"], (Action::Archive, vec![Monthly]));
        assert_eq!(got["dec-31"], (Action::Archive, vec![Yearly]));
        for gone in ["mar-10", "feb-01", "nov-30", "2024"] {
            assert_eq!(got[gone], (Action::Delete, vec![]), "{gone}");
        }
        assert_eq!(got, expected(now, &policy, &cands));
    }

    #[test]
    fn future_backups_are_kept_hot_and_take_no_calendar_slot() {
        let now = at("2026-12-02T12:00:00Z");
        let cands = [
            full("skewed", "2026-12-02T14:00:00Z"),
            full("newest-past", "2026-12-01T01:00:00Z"),
            incr("skewed-incr", "2027-01-01T00:00:00Z"),
        ];
        let got = by_id(&plan(
            now,
            &policy(Duration::from_secs(3600), 12, 12, 7),
            &cands,
        ));
        assert_eq!(got["skewed"], (Action::KeepHot, vec![Tier::Daily]));
        assert_eq!(
            got["skewed-incr"],
            (Action::KeepHot, vec![Tier::Incremental])
        );
        // The future full does not displace the newest past one of its week, month and year.
        use Tier::*;
        assert_eq!(
            got["newest-past"],
            (Action::KeepHot, vec![Weekly, Monthly, Yearly])
        );
    }

    #[test]
    fn newest_is_by_time_then_id_never_by_timeline_or_id_alone() {
        let now = at("2026-12-02T12:00:00Z"); // Wednesday
                                              // Ids that sort against time, as after a timeline switch.
        let cands = [
            full("tl9-tuesday", "2026-12-01T01:00:00Z"),
            full("tl1-wednesday", "2026-12-02T01:00:00Z"),
            full("tl5-monday", "2026-11-30T01:00:00Z"),
        ];
        let p = policy(Duration::from_secs(3600), 1, 0, 0);
        let plan = plan(now, &p, &cands);
        let order: Vec<&str> = plan.decisions.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(order, ["tl5-monday", "tl9-tuesday", "tl1-wednesday"]);
        assert_eq!(
            ids(&plan, Action::KeepHot),
            BTreeSet::from(["tl1-wednesday".to_string()])
        );

        // A tie in time goes to the greater id.
        let tied = [
            full("b", "2026-12-01T01:00:00Z"),
            full("a", "2026-12-01T01:00:00Z"),
        ];
        let plan = super::plan(now, &p, &tied);
        assert_eq!(
            ids(&plan, Action::KeepHot),
            BTreeSet::from(["b".to_string()])
        );
        assert_eq!(plan.decisions[0].id, "a");
    }

    #[test]
    fn archive_keeps_the_newest_of_each_month_over_hot_and_archived_together() {
        let now = at("2026-06-15T12:00:00Z");
        let policy = policy(DAY, 0, 3, 1);
        let hot = [
            full("jun-15", "2026-06-15T01:00:00Z"),
            full("may-25", "2026-05-25T01:00:00Z"),
            full("apr-20", "2026-04-20T01:00:00Z"),
        ];
        let archived = [
            full("apr-30", "2026-04-30T01:00:00Z"),
            full("apr-10", "2026-04-10T01:00:00Z"),
            full("may-20", "2026-05-20T01:00:00Z"),
            full("feb-28", "2026-02-28T01:00:00Z"),
            incr("stray-incr", "2026-06-01T00:00:00Z"),
            full("skewed", "2026-07-01T00:00:00Z"),
        ];
        use Tier::*;
        let got = by_id(&plan_with_archive(now, &policy, &hot, &archived));
        assert_eq!(
            got["jun-15"],
            (Action::KeepHot, vec![Daily, Monthly, Yearly])
        );
        assert_eq!(got["may-25"], (Action::Archive, vec![Monthly]));
        // An archived full of April is newer: this one is not archived a second time.
        assert_eq!(got["apr-20"], (Action::Delete, vec![]));
        // Without the archive it would have been.
        assert_eq!(
            by_id(&plan(now, &policy, &hot))["apr-20"],
            (Action::Archive, vec![Monthly])
        );
        assert_eq!(
            archive_expired(now, &policy, &hot, &archived),
            ["feb-28", "apr-10", "may-20", "stray-incr"]
        );

        let mut state = State {
            hot: hot.to_vec(),
            archive: archived.to_vec(),
        };
        state.enforce(now, &policy);
        assert_eq!(
            State::ids(&state.archive),
            ["apr-30", "may-25", "skewed"]
                .map(String::from)
                .into_iter()
                .collect()
        );
        state.assert_settled(now, &policy);
    }

    #[test]
    fn weekly_is_a_promise_about_the_hot_tier_alone() {
        // The newest full of this week was archived by hand: the next newest stays hot for
        // the week, and the archived one, the newest of June, stays in the archive.
        let now = at("2026-06-17T12:00:00Z"); // Wednesday
        let policy = policy(DAY, 2, 3, 1);
        let hot = [full("mon", "2026-06-15T01:00:00Z")];
        let archived = [full("tue", "2026-06-16T01:00:00Z")];
        let got = by_id(&plan_with_archive(now, &policy, &hot, &archived));
        assert_eq!(got["mon"], (Action::KeepHot, vec![Tier::Weekly]));
        assert_eq!(
            archive_expired(now, &policy, &hot, &archived),
            Vec::<String>::new()
        );
    }

    /// Two years back from `now`: a full every day at 01:00, an incremental every hour
    /// and a document snapshot every day at 03:00.
    fn two_years(now: DateTime<Utc>) -> (Vec<Candidate>, Vec<Candidate>) {
        let first: NaiveDate = now.date_naive() - chrono::Days::new(730);
        let mut db = Vec::new();
        let mut docs = Vec::new();
        let mut day = first;
        while day <= now.date_naive() {
            let midnight = Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight"));
            for h in 0..24 {
                let t = midnight + TimeDelta::hours(h);
                if t <= now {
                    db.push(Candidate {
                        id: format!("incr-{}", t.format("%Y%m%dT%H")),
                        kind: Kind::Incremental,
                        time: t,
                    });
                }
            }
            db.push(Candidate {
                id: format!("full-{day}"),
                kind: Kind::Full,
                time: midnight + TimeDelta::hours(1),
            });
            docs.push(Candidate {
                id: format!("docs-{day}"),
                kind: Kind::Full,
                time: midnight + TimeDelta::hours(3),
            });
            day = day.succ_opt().expect("next day");
        }
        (db, docs)
    }

    fn count(plan: &Plan, action: Action, tier: Tier) -> usize {
        plan.with_action(action)
            .filter(|d| d.reasons.contains(&tier))
            .count()
    }

    #[test]
    fn two_years_of_synthetic_history_keep_exactly_what_the_policy_defines() {
        let now = at("2026-12-02T12:00:00Z");
        let (db, docs) = two_years(now);
        let db_policy = RetentionPolicy::default();
        let docs_policy = RetentionPolicy {
            full: days(14),
            incremental: days(1),
            weekly: 4,
            monthly: 6,
            yearly: 2,
        };

        for (cands, policy) in [(&db, &db_policy), (&docs, &docs_policy)] {
            let plan = plan(now, policy, cands);
            assert_eq!(plan.decisions.len(), cands.len());
            assert_eq!(by_id(&plan), expected(now, policy, cands));
            let times: BTreeMap<&str, DateTime<Utc>> =
                cands.iter().map(|c| (c.id.as_str(), c.time)).collect();
            assert!(plan
                .decisions
                .windows(2)
                .all(|w| times[w[0].id.as_str()] <= times[w[1].id.as_str()]));

            // Apply, then plan again at the same time: everything left stays.
            let hot: Vec<Candidate> = cands
                .iter()
                .filter(|c| ids(&plan, Action::KeepHot).contains(&c.id))
                .cloned()
                .collect();
            let archive: Vec<Candidate> = cands
                .iter()
                .filter(|c| ids(&plan, Action::Archive).contains(&c.id))
                .cloned()
                .collect();
            let again = super::plan(now, policy, &hot);
            assert!(again.decisions.iter().all(|d| d.action == Action::KeepHot));
            State { hot, archive }.assert_settled(now, policy);
        }

        // The numbers, by hand. 2026-12-02 is a Wednesday.
        let plan = plan(now, &db_policy, &db);
        // Fulls of 2026-11-03 to 2026-12-02.
        assert_eq!(count(&plan, Action::KeepHot, Tier::Daily), 30);
        // Incrementals after 2026-11-25T12:00.
        assert_eq!(count(&plan, Action::KeepHot, Tier::Incremental), 168);
        // Today's full and the 11 Sundays before, back to 2026-09-20.
        assert_eq!(count(&plan, Action::KeepHot, Tier::Weekly), 12);
        // The daily ones, and the 7 Sundays from 2026-09-20 to 2026-11-01.
        assert_eq!(plan.with_action(Action::KeepHot).count() - 168, 30 + 7);
        // The last day of each month from January to October 2026, and the last days
        // of 2025 and 2024.
        let mut archived: Vec<String> = (1..=10)
            .map(|m| {
                let last = NaiveDate::from_ymd_opt(2026, m + 1, 1)
                    .and_then(|d| d.pred_opt())
                    .expect("month end");
                format!("full-{last}")
            })
            .collect();
        archived.extend(["full-2024-12-31".to_string(), "full-2025-12-31".to_string()]);
        assert_eq!(
            ids(&plan, Action::Archive),
            archived.into_iter().collect::<BTreeSet<_>>()
        );
        assert_eq!(
            plan.with_action(Action::Delete).count(),
            db.len() - 168 - 37 - 12
        );
    }

    #[test]
    fn daily_enforcement_over_two_years_converges_to_the_stateless_plan() {
        let now = at("2026-12-02T12:00:00Z");
        let (db, _) = two_years(now);
        let policy = RetentionPolicy::default();
        let mut state = State::default();
        let mut next = 0;
        let mut t = db[0].time;
        loop {
            t = (t + TimeDelta::days(1)).min(now);
            while next < db.len() && db[next].time <= t {
                state.hot.push(db[next].clone());
                next += 1;
            }
            state.enforce(t, &policy);
            state.assert_settled(t, &policy);
            if t == now {
                break;
            }
        }
        let plan = plan(now, &policy, &db);
        assert_eq!(State::ids(&state.hot), ids(&plan, Action::KeepHot));
        assert_eq!(State::ids(&state.archive), ids(&plan, Action::Archive));
    }

    fn arb_case() -> impl Strategy<Value = (DateTime<Utc>, RetentionPolicy, Vec<Candidate>)> {
        let now =
            (0i64..3 * 366 * 24).prop_map(|h| at("2025-01-01T00:00:00Z") + TimeDelta::hours(h));
        let policy = (1u64..40 * 24, 0u32..20, 0u32..30, 0u32..4).prop_flat_map(
            |(full_h, weekly, monthly, yearly)| {
                (1..=full_h).prop_map(move |incr_h| RetentionPolicy {
                    full: Duration::from_secs(full_h * 3600),
                    incremental: Duration::from_secs(incr_h * 3600),
                    weekly,
                    monthly,
                    yearly,
                })
            },
        );
        // Half-day steps over three years, so that some times tie.
        let cands = prop::collection::vec((-2200i64..4, any::<bool>(), any::<u16>()), 0..150);
        (now, policy, cands).prop_map(|(now, policy, raw)| {
            let cands = raw
                .into_iter()
                .enumerate()
                .map(|(i, (half_days, is_full, tag))| Candidate {
                    id: format!("{tag:04x}-{i}"),
                    kind: if is_full {
                        Kind::Full
                    } else {
                        Kind::Incremental
                    },
                    time: now + TimeDelta::hours(12 * half_days),
                })
                .collect();
            (now, policy, cands)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 300,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn plan_matches_an_independent_computation(
            (now, policy, cands) in arb_case(),
            steps in prop::collection::vec(0i64..2200 * 12, 0..20),
        ) {
            prop_assert_eq!(policy.validate(), Ok(()));
            let plan = plan(now, &policy, &cands);
            prop_assert_eq!(by_id(&plan), expected(now, &policy, &cands));

            // Enforcing at random earlier times first ends in the same state.
            let mut times: Vec<DateTime<Utc>> =
                steps.iter().map(|h| now - TimeDelta::hours(*h)).collect();
            times.sort();
            times.push(now);
            let mut pending = cands.clone();
            pending.sort_by(|a, b| key(a).cmp(&key(b)));
            let mut pending = pending.into_iter().peekable();
            let mut state = State::default();
            for t in times {
                while let Some(c) = pending.next_if(|c| c.time <= t || t == now) {
                    state.hot.push(c);
                }
                state.enforce(t, &policy);
                state.assert_settled(t, &policy);
            }
            prop_assert_eq!(State::ids(&state.hot), ids(&plan, Action::KeepHot));
            prop_assert_eq!(State::ids(&state.archive), ids(&plan, Action::Archive));
        }
    }

    /// A segment name on `tl` at position `n` (log 0).
    fn seg(tl: u32, n: u32) -> String {
        format!("{tl:08X}00000000{n:08X}")
    }

    fn backup(id: &str, tl: u32, start: u32) -> BaseBackupWal {
        BaseBackupWal {
            id: id.into(),
            timeline: tl,
            start_segment: seg(tl, start),
        }
    }

    fn segments(tl: u32, range: std::ops::RangeInclusive<u32>) -> Vec<(u32, String)> {
        range.map(|n| (tl, seg(tl, n))).collect()
    }

    /// Files that are never deleted: history files, backup history files, partial
    /// segments, names that are not WAL.
    fn other_files() -> Vec<(u32, String)> {
        vec![
            (2, "00000002.history".into()),
            (1, format!("{}.00000028.backup", seg(1, 1))),
            (1, format!("{}.partial", seg(1, 2))),
            (1, "README".into()),
            // A segment filed under the wrong timeline.
            (2, seg(1, 1)),
        ]
    }

    #[test]
    fn wal_single_timeline_is_kept_from_the_oldest_retained_start() {
        let retained = [backup("old", 1, 5), backup("new", 1, 9)];
        let mut archived = segments(1, 1..=12);
        archived.extend(other_files());
        let histories = BTreeMap::new();
        assert_eq!(
            wal_to_delete(&retained, &histories, &archived),
            segments(1, 1..=4)
        );
        assert!(wal_needed(&retained, &histories, (1, &seg(1, 5))));
        assert!(!wal_needed(&retained, &histories, (1, &seg(1, 4))));
        // Positions across the log boundary compare as 64-bit numbers.
        let high = [BaseBackupWal {
            id: "high".into(),
            timeline: 1,
            start_segment: "0000000100000001000000A0".into(),
        }];
        assert!(!wal_needed(
            &high,
            &histories,
            (1, "0000000100000000000000FF")
        ));
        assert!(!wal_needed(
            &high,
            &histories,
            (1, "00000001000000010000009F")
        ));
        assert!(wal_needed(
            &high,
            &histories,
            (1, "0000000100000001000000A0")
        ));
        assert!(wal_needed(
            &high,
            &histories,
            (1, "000000010000000200000000")
        ));
    }

    #[test]
    fn wal_after_a_failover_keeps_both_timelines_from_the_anchors() {
        // Timeline 2 branched from 1 in segment 10; the newest backup is on 2, an older
        // retained one on 1.
        let histories = BTreeMap::from([(2, vec![1])]);
        let mut archived = segments(1, 1..=10);
        archived.extend(segments(2, 10..=15));
        archived.extend(other_files());
        let retained = [backup("old-on-1", 1, 5), backup("new-on-2", 2, 12)];
        assert_eq!(
            wal_to_delete(&retained, &histories, &archived),
            segments(1, 1..=4)
        );
        // Once only the backup on timeline 2 is retained, timeline 1 goes, and so does
        // timeline 2's WAL before that backup.
        let mut gone = segments(1, 1..=10);
        gone.extend(segments(2, 10..=11));
        assert_eq!(wal_to_delete(&retained[1..], &histories, &archived), gone);
    }

    #[test]
    fn wal_of_a_lower_timeline_is_not_released_by_a_backup_on_a_higher_one() {
        // Timeline 3 branched from 1 (a restore of an old backup, promoted), and holds an
        // older backup than those on timeline 2, with a later start position.
        let histories = BTreeMap::from([(2, vec![1]), (3, vec![1])]);
        let retained = [
            backup("tl3", 3, 20),
            backup("tl2-old", 2, 8),
            backup("tl2-new", 2, 14),
        ];
        let mut archived = segments(1, 1..=7);
        archived.extend(segments(2, 5..=25));
        archived.extend(segments(3, 18..=22));
        archived.extend(other_files());
        let mut gone = segments(1, 1..=7);
        gone.extend(segments(2, 5..=7));
        gone.extend(segments(3, 18..=19));
        assert_eq!(wal_to_delete(&retained, &histories, &archived), gone);
        for n in 8..=25 {
            assert!(wal_needed(&retained, &histories, (2, &seg(2, n))), "{n}");
        }
        // When timeline 3 descends from 2, timeline 2 is still anchored by its own
        // backups, and they now need timeline 3's WAL as well (a recovery from them can
        // follow the history onto timeline 3).
        let histories = BTreeMap::from([(2, vec![1]), (3, vec![1, 2])]);
        let mut gone = segments(1, 1..=7);
        gone.extend(segments(2, 5..=7));
        assert_eq!(wal_to_delete(&retained, &histories, &archived), gone);
    }

    #[test]
    fn wal_is_never_deleted_without_an_anchor_or_a_known_name() {
        let histories = BTreeMap::from([(2, vec![1])]);
        let archived = segments(1, 1..=3);
        assert_eq!(wal_to_delete(&[], &histories, &archived), vec![]);
        assert!(wal_needed(&[], &histories, (1, &seg(1, 1))));
        let retained = [backup("b", 2, 50)];
        for (tl, name) in other_files() {
            assert!(wal_needed(&retained, &histories, (tl, &name)), "{name}");
        }
        // A timeline whose history is unknown may descend from any lower one.
        assert!(wal_needed(&retained, &histories, (4, &seg(4, 60))));
        assert!(!wal_needed(&retained, &histories, (4, &seg(4, 49))));
        // A backup whose start segment cannot be read keeps its whole timeline.
        let unreadable = [BaseBackupWal {
            id: "odd".into(),
            timeline: 1,
            start_segment: "garbage".into(),
        }];
        assert_eq!(wal_to_delete(&unreadable, &histories, &archived), vec![]);
    }
}
