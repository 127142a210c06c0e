//! Which snapshots to keep: a pure function of the snapshot list, the policy and the pins.
//!
//! Semantics (snapper's timeline / btrbk's `preserve`): for each of hourly, daily and weekly,
//! walk the UTC periods (hour, day, ISO week from Monday 00:00) that *hold at least one
//! snapshot*, newest first, and keep the newest snapshot of each of the first N such periods.
//! Empty periods do not count, so a machine that was off for a week still keeps N weekly
//! snapshots. On top of that the newest snapshot overall and every pinned one (a backup target
//! still needs it as the parent of its next incremental send) are always kept. Everything else
//! is to be deleted.
//!
//! "Newest" orders by time, then by name: two snapshots in the same second differ by height in
//! their names (see `naming`), so the higher one wins. Names identify snapshots; an entry whose
//! name repeats one already seen adds nothing.

use super::naming::parse_snapshot_name;
use super::utc::{iso_week, monday_week_index, UtcDateTime, SECS_PER_DAY, SECS_PER_HOUR};
use serde::Serialize;
use std::collections::HashSet;
use std::fmt;

/// One existing snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub name: String,
    pub time_utc_secs: i64,
}

impl SnapshotEntry {
    /// An entry for a directory name made by `snapshot_name`; `None` for anything else.
    pub fn from_name(name: &str) -> Option<SnapshotEntry> {
        let parsed = parse_snapshot_name(name)?;
        Some(SnapshotEntry {
            name: name.to_owned(),
            time_utc_secs: parsed.time_utc_secs,
        })
    }
}

/// How many hourly, daily and weekly periods keep a snapshot (`OPDBUS_RETAIN_HOURLY`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetentionPolicy {
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
}

impl Default for RetentionPolicy {
    fn default() -> RetentionPolicy {
        RetentionPolicy {
            hourly: 5,
            daily: 5,
            weekly: 5,
        }
    }
}

/// Why a snapshot is kept. Periods are labelled in UTC: `2026-11-25T13Z`, `2026-11-25`,
/// `2026-W48` (ISO week-numbering year).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "period", rename_all = "lowercase")]
pub enum KeepReason {
    Newest,
    Pinned,
    Hourly(String),
    Daily(String),
    Weekly(String),
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Newest => f.write_str("newest"),
            KeepReason::Pinned => f.write_str("pinned (a backup's incremental parent)"),
            KeepReason::Hourly(hour) => write!(f, "hourly {hour}"),
            KeepReason::Daily(day) => write!(f, "daily {day}"),
            KeepReason::Weekly(week) => write!(f, "weekly {week}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kept {
    pub name: String,
    pub reasons: Vec<KeepReason>,
}

/// The outcome: `keep` newest first, `delete` oldest first (the order to delete in).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeepPlan {
    pub keep: Vec<Kept>,
    pub delete: Vec<String>,
}

/// Applies `policy` to `snapshots` (in any order); see the module documentation.
pub fn select_keep(
    snapshots: &[SnapshotEntry],
    policy: RetentionPolicy,
    pinned: &HashSet<String>,
) -> KeepPlan {
    let mut seen = HashSet::new();
    let mut newest_first: Vec<&SnapshotEntry> = snapshots
        .iter()
        .filter(|s| seen.insert(s.name.as_str()))
        .collect();
    newest_first.sort_by(|a, b| (b.time_utc_secs, &b.name).cmp(&(a.time_utc_secs, &a.name)));

    let mut reasons: Vec<Vec<KeepReason>> = vec![Vec::new(); newest_first.len()];
    if !newest_first.is_empty() {
        reasons[0].push(KeepReason::Newest);
    }
    for (i, s) in newest_first.iter().enumerate() {
        if pinned.contains(&s.name) {
            reasons[i].push(KeepReason::Pinned);
        }
    }
    for (period, count) in [
        (Period::Hour, policy.hourly),
        (Period::Day, policy.daily),
        (Period::Week, policy.weekly),
    ] {
        let mut last_period = None;
        let mut taken = 0;
        for (i, s) in newest_first.iter().enumerate() {
            if taken == count {
                break;
            }
            let index = period.index(s.time_utc_secs);
            // Newest first: the first snapshot met in a period is that period's newest.
            if last_period != Some(index) {
                last_period = Some(index);
                taken += 1;
                reasons[i].push(period.reason(s.time_utc_secs));
            }
        }
    }

    let mut plan = KeepPlan::default();
    for (s, reasons) in newest_first.iter().zip(reasons) {
        if reasons.is_empty() {
            plan.delete.push(s.name.clone());
        } else {
            plan.keep.push(Kept {
                name: s.name.clone(),
                reasons,
            });
        }
    }
    plan.delete.reverse();
    plan
}

#[derive(Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
}

impl Period {
    /// Equal for two times exactly when they fall in the same UTC period.
    fn index(self, t: i64) -> i64 {
        match self {
            Period::Hour => t.div_euclid(SECS_PER_HOUR),
            Period::Day => t.div_euclid(SECS_PER_DAY),
            Period::Week => monday_week_index(t),
        }
    }

    fn reason(self, t: i64) -> KeepReason {
        let d = UtcDateTime::from_unix(t);
        match self {
            Period::Hour => KeepReason::Hourly(format!(
                "{:04}-{:02}-{:02}T{:02}Z",
                d.year, d.month, d.day, d.hour
            )),
            Period::Day => KeepReason::Daily(format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)),
            Period::Week => {
                let (year, week) = iso_week(t.div_euclid(SECS_PER_DAY));
                KeepReason::Weekly(format!("{year:04}-W{week:02}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::naming::snapshot_name;
    use crate::snapshot::utc::days_from_civil;

    /// Unix seconds of a UTC date and time.
    fn at(year: i64, month: u32, day: u32, hour: i64, minute: i64, second: i64) -> i64 {
        days_from_civil(year, month, day) * SECS_PER_DAY + hour * 3600 + minute * 60 + second
    }

    fn entry(name: &str, time_utc_secs: i64) -> SnapshotEntry {
        SnapshotEntry {
            name: name.to_owned(),
            time_utc_secs,
        }
    }

    fn kept_names(plan: &KeepPlan) -> Vec<&str> {
        plan.keep.iter().map(|k| k.name.as_str()).collect()
    }

    fn reasons_of<'a>(plan: &'a KeepPlan, name: &str) -> &'a [KeepReason] {
        &plan
            .keep
            .iter()
            .find(|k| k.name == name)
            .expect("kept")
            .reasons
    }

    fn weekly_only(weeks: u32) -> RetentionPolicy {
        RetentionPolicy {
            hourly: 0,
            daily: 0,
            weekly: weeks,
        }
    }

    #[test]
    fn nothing_to_keep_from_nothing() {
        assert_eq!(
            select_keep(&[], RetentionPolicy::default(), &HashSet::new()),
            KeepPlan::default()
        );
    }

    #[test]
    fn sunday_night_and_monday_midnight_are_different_weeks() {
        let snapshots = [
            entry("sun-morning", at(2026, 11, 29, 0, 0, 0)),
            entry("sun-last-second", at(2026, 11, 29, 23, 59, 59)),
            entry("mon-midnight", at(2026, 11, 30, 0, 0, 0)),
        ];
        let plan = select_keep(&snapshots, weekly_only(2), &HashSet::new());
        assert_eq!(kept_names(&plan), ["mon-midnight", "sun-last-second"]);
        assert_eq!(plan.delete, ["sun-morning"]);
        assert_eq!(
            reasons_of(&plan, "mon-midnight"),
            [KeepReason::Newest, KeepReason::Weekly("2026-W49".into())]
        );
        assert_eq!(
            reasons_of(&plan, "sun-last-second"),
            [KeepReason::Weekly("2026-W48".into())]
        );
    }

    #[test]
    fn iso_week_53_spans_the_new_year() {
        // 2020-W53 runs from Monday 2020-12-28 to Sunday 2021-01-03.
        let snapshots = [
            entry("w52-sunday", at(2020, 12, 27, 12, 0, 0)),
            entry("w53-monday", at(2020, 12, 28, 10, 0, 0)),
            entry("w53-new-year", at(2021, 1, 1, 10, 0, 0)),
            entry("w53-sunday", at(2021, 1, 3, 23, 59, 59)),
            entry("w01-monday", at(2021, 1, 4, 0, 0, 0)),
        ];
        let plan = select_keep(&snapshots, weekly_only(3), &HashSet::new());
        assert_eq!(
            kept_names(&plan),
            ["w01-monday", "w53-sunday", "w52-sunday"]
        );
        assert_eq!(plan.delete, ["w53-monday", "w53-new-year"]);
        assert_eq!(
            reasons_of(&plan, "w53-sunday"),
            [KeepReason::Weekly("2020-W53".into())]
        );
        assert_eq!(
            reasons_of(&plan, "w52-sunday"),
            [KeepReason::Weekly("2020-W52".into())]
        );
        assert_eq!(
            reasons_of(&plan, "w01-monday"),
            [KeepReason::Newest, KeepReason::Weekly("2021-W01".into())]
        );
    }

    #[test]
    fn two_snapshots_in_one_second_keep_the_higher_name() {
        let t = at(2026, 11, 25, 13, 5, 0);
        let (low, high) = (snapshot_name(t, 41), snapshot_name(t, 42));
        let policy = RetentionPolicy {
            hourly: 1,
            daily: 1,
            weekly: 1,
        };
        for snapshots in [
            [entry(&low, t), entry(&high, t)],
            [entry(&high, t), entry(&low, t)],
        ] {
            let plan = select_keep(&snapshots, policy, &HashSet::new());
            assert_eq!(kept_names(&plan), [high.as_str()]);
            assert_eq!(plan.delete, [low.as_str()]);
            assert_eq!(
                reasons_of(&plan, &high),
                [
                    KeepReason::Newest,
                    KeepReason::Hourly("2026-11-25T13Z".into()),
                    KeepReason::Daily("2026-11-25".into()),
                    KeepReason::Weekly("2026-W48".into()),
                ]
            );
        }
    }

    #[test]
    fn empty_periods_do_not_count() {
        // Three snapshots, months apart: with weekly = 3 all are kept.
        let snapshots = [
            entry("jan", at(2026, 1, 10, 0, 0, 0)),
            entry("apr", at(2026, 4, 10, 0, 0, 0)),
            entry("sep", at(2026, 9, 10, 0, 0, 0)),
            entry("older", at(2025, 9, 10, 0, 0, 0)),
        ];
        let plan = select_keep(&snapshots, weekly_only(3), &HashSet::new());
        assert_eq!(kept_names(&plan), ["sep", "apr", "jan"]);
        assert_eq!(plan.delete, ["older"]);
    }

    #[test]
    fn the_newest_and_pinned_survive_a_zero_policy() {
        let snapshots = [
            entry("a", at(2026, 1, 1, 0, 0, 0)),
            entry("b", at(2026, 1, 2, 0, 0, 0)),
            entry("c", at(2026, 1, 3, 0, 0, 0)),
            entry("d", at(2026, 1, 4, 0, 0, 0)),
        ];
        let pinned: HashSet<String> = ["b".to_owned(), "not-there".to_owned()].into();
        let zero = RetentionPolicy {
            hourly: 0,
            daily: 0,
            weekly: 0,
        };
        let plan = select_keep(&snapshots, zero, &pinned);
        assert_eq!(kept_names(&plan), ["d", "b"]);
        assert_eq!(reasons_of(&plan, "d"), [KeepReason::Newest]);
        assert_eq!(reasons_of(&plan, "b"), [KeepReason::Pinned]);
        assert_eq!(plan.delete, ["a", "c"], "oldest first");
    }

    #[test]
    fn a_repeated_name_counts_once() {
        let t = at(2026, 1, 1, 0, 0, 0);
        let snapshots = [entry("a", t), entry("a", t + 10), entry("b", t - 7200)];
        let plan = select_keep(&snapshots, RetentionPolicy::default(), &HashSet::new());
        assert_eq!(kept_names(&plan), ["a", "b"]);
        assert!(plan.delete.is_empty());
    }

    /// A month of snapshots every 15 minutes, named like the daemon names them (height = index),
    /// against the default 5/5/5. The expectation is worked out by hand from the calendar:
    /// November 2026 starts on a Sunday and ends on Monday the 30th, the newest snapshot is
    /// 30th 23:45 (height 29 * 96 + 95 = 2879), each day's newest is its 23:45 (height
    /// (day - 1) * 96 + 95), and the newest of an hour is its :45.
    #[test]
    fn a_month_every_15_minutes_keeps_exactly_the_expected_set() {
        let start = at(2026, 11, 1, 0, 0, 0);
        let snapshots: Vec<SnapshotEntry> = (0..30 * 96u64)
            .map(|height| {
                let t = start + height as i64 * 900;
                SnapshotEntry::from_name(&snapshot_name(t, height)).expect("our own name")
            })
            .collect();
        let plan = select_keep(&snapshots, RetentionPolicy::default(), &HashSet::new());
        let expected = [
            // newest, and hourly ×5: the :45 of hours 23, 22, 21, 20, 19 on the 30th
            "2026-11-30T23-45-00Z-h000000002879",
            "2026-11-30T22-45-00Z-h000000002875",
            "2026-11-30T21-45-00Z-h000000002871",
            "2026-11-30T20-45-00Z-h000000002867",
            "2026-11-30T19-45-00Z-h000000002863",
            // daily ×5: 30th (above), 29th, 28th, 27th, 26th
            "2026-11-29T23-45-00Z-h000000002783",
            "2026-11-28T23-45-00Z-h000000002687",
            "2026-11-27T23-45-00Z-h000000002591",
            "2026-11-26T23-45-00Z-h000000002495",
            // weekly ×5: W49 = Mon 30th (above), W48 ends Sun 29th (above), then the Sundays
            // ending W47, W46, W45; W44 (ending Sunday 1st) is the sixth and goes.
            "2026-11-22T23-45-00Z-h000000002111",
            "2026-11-15T23-45-00Z-h000000001439",
            "2026-11-08T23-45-00Z-h000000000767",
        ];
        assert_eq!(kept_names(&plan), expected);
        assert_eq!(plan.delete.len(), 30 * 96 - expected.len());
        assert_eq!(plan.delete[0], "2026-11-01T00-00-00Z-h000000000000");
        assert_eq!(
            reasons_of(&plan, "2026-11-30T23-45-00Z-h000000002879"),
            [
                KeepReason::Newest,
                KeepReason::Hourly("2026-11-30T23Z".into()),
                KeepReason::Daily("2026-11-30".into()),
                KeepReason::Weekly("2026-W49".into()),
            ]
        );
        assert_eq!(
            reasons_of(&plan, "2026-11-29T23-45-00Z-h000000002783"),
            [
                KeepReason::Daily("2026-11-29".into()),
                KeepReason::Weekly("2026-W48".into())
            ]
        );

        // A backup's parent from the first day survives as well.
        let parent = "2026-11-01T06-00-00Z-h000000000024".to_owned();
        let pinned_plan = select_keep(
            &snapshots,
            RetentionPolicy::default(),
            &[parent.clone()].into(),
        );
        assert_eq!(pinned_plan.keep.len(), expected.len() + 1);
        assert_eq!(reasons_of(&pinned_plan, &parent), [KeepReason::Pinned]);
        assert!(!pinned_plan.delete.contains(&parent));
    }
}
