//! When to take the next scheduled snapshot (`OPDBUS_SNAPSHOT_INTERVAL`).
//!
//! `every-N-minutes` counts from the last snapshot; `hourly` and `daily` fall on UTC hour and
//! day boundaries, like snapper's timeline. A missed slot (the daemon was down) is taken once,
//! right away; slots are never caught up one by one.

use super::utc::{SECS_PER_DAY, SECS_PER_HOUR};
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

/// The environment variable the interval is read from.
pub const SNAPSHOT_INTERVAL_ENV: &str = "OPDBUS_SNAPSHOT_INTERVAL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotInterval {
    Off,
    EveryMinutes(NonZeroU32),
    Hourly,
    Daily,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {SNAPSHOT_INTERVAL_ENV} value {0:?}: accepted are every-N-minutes (N a whole \
     number ≥ 1, e.g. every-15-minutes), hourly, daily, off"
)]
pub struct SnapshotIntervalError(pub String);

impl FromStr for SnapshotInterval {
    type Err = SnapshotIntervalError;

    fn from_str(text: &str) -> Result<SnapshotInterval, SnapshotIntervalError> {
        let error = || SnapshotIntervalError(text.to_owned());
        match text {
            "off" => Ok(SnapshotInterval::Off),
            "hourly" => Ok(SnapshotInterval::Hourly),
            "daily" => Ok(SnapshotInterval::Daily),
            _ => {
                let n = text
                    .strip_prefix("every-")
                    .and_then(|rest| rest.strip_suffix("-minutes"))
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(error)?;
                let n = n.parse().map_err(|_| error())?;
                Ok(SnapshotInterval::EveryMinutes(
                    NonZeroU32::new(n).ok_or_else(error)?,
                ))
            }
        }
    }
}

impl fmt::Display for SnapshotInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotInterval::Off => f.write_str("off"),
            SnapshotInterval::EveryMinutes(n) => write!(f, "every-{n}-minutes"),
            SnapshotInterval::Hourly => f.write_str("hourly"),
            SnapshotInterval::Daily => f.write_str("daily"),
        }
    }
}

impl SnapshotInterval {
    /// When the next snapshot is due, in Unix seconds, given the last one's time (`None` if
    /// there is none yet) and the current time: `None` when off, otherwise a time in
    /// `now ..= now + one interval`. `now` itself means "take one now"; a clock that went
    /// backwards past `last` waits at most one interval.
    pub fn next_due(&self, last: Option<i64>, now: i64) -> Option<i64> {
        let next_after = |t: i64| -> i64 {
            match *self {
                SnapshotInterval::EveryMinutes(n) => t.saturating_add(i64::from(n.get()) * 60),
                SnapshotInterval::Hourly => next_boundary(t, SECS_PER_HOUR),
                SnapshotInterval::Daily => next_boundary(t, SECS_PER_DAY),
                SnapshotInterval::Off => t,
            }
        };
        if *self == SnapshotInterval::Off {
            return None;
        }
        let Some(last) = last else { return Some(now) };
        Some(next_after(last).clamp(now, next_after(now)))
    }
}

/// The first multiple of `period` strictly after `t`.
fn next_boundary(t: i64, period: i64) -> i64 {
    t.div_euclid(period)
        .saturating_add(1)
        .saturating_mul(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SnapshotInterval, SnapshotIntervalError> {
        text.parse()
    }

    fn every(n: u32) -> SnapshotInterval {
        SnapshotInterval::EveryMinutes(NonZeroU32::new(n).expect("test uses n ≥ 1"))
    }

    #[test]
    fn accepted_forms_parse_and_display_back() {
        for (text, interval) in [
            ("off", SnapshotInterval::Off),
            ("hourly", SnapshotInterval::Hourly),
            ("daily", SnapshotInterval::Daily),
            ("every-15-minutes", every(15)),
            ("every-1-minutes", every(1)),
            ("every-1440-minutes", every(1440)),
        ] {
            assert_eq!(parse(text), Ok(interval));
            assert_eq!(interval.to_string(), text);
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_accepted_forms() {
        for bad in [
            "",
            "every-0-minutes",
            "every--minutes",
            "every-+5-minutes",
            "every--5-minutes",
            "every-5-minute",
            "every-5",
            "every-99999999999-minutes",
            "Hourly",
            " hourly",
            "weekly",
        ] {
            let err = parse(bad).expect_err(bad);
            let message = err.to_string();
            assert!(message.contains("OPDBUS_SNAPSHOT_INTERVAL"), "{message}");
            assert!(
                message.contains("every-N-minutes") && message.contains("off"),
                "{message}"
            );
        }
    }

    #[test]
    fn off_is_never_due() {
        assert_eq!(SnapshotInterval::Off.next_due(None, 1000), None);
        assert_eq!(SnapshotInterval::Off.next_due(Some(0), 1000), None);
    }

    #[test]
    fn the_first_snapshot_is_due_at_once() {
        assert_eq!(every(15).next_due(None, 1000), Some(1000));
        assert_eq!(SnapshotInterval::Daily.next_due(None, 1000), Some(1000));
    }

    #[test]
    fn every_n_minutes_counts_from_the_last_snapshot() {
        let last = 1_795_611_900;
        assert_eq!(every(15).next_due(Some(last), last + 1), Some(last + 900));
        assert_eq!(every(15).next_due(Some(last), last + 900), Some(last + 900));
        // Missed slots: once, now.
        assert_eq!(
            every(15).next_due(Some(last), last + 10_000),
            Some(last + 10_000)
        );
        // Clock stepped back a day: wait one interval, not a day.
        assert_eq!(
            every(15).next_due(Some(last), last - 86_400),
            Some(last - 86_400 + 900)
        );
    }

    #[test]
    fn hourly_and_daily_fall_on_utc_boundaries() {
        let last = 1_795_611_900; // 2026-11-25T13:05:00Z
        let hour_14 = 1_795_615_200;
        let midnight_26th = 1_795_651_200;
        assert_eq!(
            SnapshotInterval::Hourly.next_due(Some(last), last + 60),
            Some(hour_14)
        );
        assert_eq!(
            SnapshotInterval::Hourly.next_due(Some(hour_14), hour_14),
            Some(hour_14 + 3600)
        );
        assert_eq!(
            SnapshotInterval::Daily.next_due(Some(last), last),
            Some(midnight_26th)
        );
        assert_eq!(
            SnapshotInterval::Daily.next_due(Some(last), midnight_26th + 5),
            Some(midnight_26th + 5)
        );
        // Clock stepped back: the next boundary after now.
        assert_eq!(
            SnapshotInterval::Hourly.next_due(Some(last), last - 86_400),
            Some(hour_14 - 86_400)
        );
    }
}
