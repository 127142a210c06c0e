//! Times as an admin types them after `--since` and `--until`: the forms `journalctl` accepts,
//! read as UTC (the chain's timestamps and the daemon's log are UTC; honouring the local zone
//! would need the tz database, which the daemon's sandbox does not even show).
//!
//! Pure: "now" is an argument, so the tests pin it.

use crate::snapshot::utc::{UtcDateTime, SECS_PER_DAY};

const NS_PER_SEC: u128 = 1_000_000_000;

/// The forms [`parse_time`] accepts, for error messages and `--help`.
pub const ACCEPTED_TIMES: &str = "\"2026-12-04 10:00\", \"2026-12-04 10:00:30\", \"2026-12-04\", \
\"10:00\" (today), yesterday, today, tomorrow, now, \"-1h\", \"+30min\", \"-2d\", \"1h ago\", \
\"@1733400000\" (Unix seconds); all UTC";

/// Why a text is not a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a time ({reason}); accepted: {ACCEPTED_TIMES}")]
pub struct TimeError {
    text: String,
    reason: String,
}

/// Nanoseconds since the Unix epoch of `text`, relative forms counted from `now_ns`. Times
/// before 1970 are 0 and times past the year 2554 are `u64::MAX`: both only bound a search.
pub fn parse_time(text: &str, now_ns: u64) -> Result<u64, TimeError> {
    let fail = |reason: &str| TimeError {
        text: text.chars().take(80).collect(),
        reason: reason.into(),
    };
    let trimmed = text.trim();
    let now = now_ns as i128;
    let midnight = |days_from_today: i128| {
        let day = (now_ns / 1_000_000_000) as i128 / SECS_PER_DAY as i128 + days_from_today;
        day * SECS_PER_DAY as i128 * NS_PER_SEC as i128
    };
    let ns: i128 = match trimmed.to_ascii_lowercase().as_str() {
        "" => return Err(fail("empty")),
        "now" => now,
        "today" => midnight(0),
        "yesterday" => midnight(-1),
        "tomorrow" => midnight(1),
        _ => {
            if let Some(secs) = trimmed.strip_prefix('@') {
                let (whole, frac) = number(secs).ok_or_else(|| fail("'@' takes Unix seconds"))?;
                scale(whole, frac, NS_PER_SEC).ok_or_else(|| fail("too far in the future"))? as i128
            } else if let Some(span) = trimmed.strip_suffix(" ago") {
                now - span_ns(span).map_err(|reason| fail(&reason))? as i128
            } else if let Some(span) = trimmed.strip_prefix('-') {
                now - span_ns(span).map_err(|reason| fail(&reason))? as i128
            } else if let Some(span) = trimmed.strip_prefix('+') {
                now + span_ns(span).map_err(|reason| fail(&reason))? as i128
            } else {
                absolute(trimmed, now_ns).map_err(|reason| fail(&reason))?
            }
        }
    };
    Ok(ns.clamp(0, u64::MAX as i128) as u64)
}

/// `YYYY-MM-DD[ HH:MM[:SS[.frac]]]` or `HH:MM[:SS[.frac]]` (today), with an optional `T`
/// between date and time and an optional `Z` or ` UTC` after it.
fn absolute(text: &str, now_ns: u64) -> Result<i128, String> {
    let text = text
        .strip_suffix(" UTC")
        .or_else(|| text.strip_suffix(" utc"))
        .or_else(|| text.strip_suffix('Z'))
        .unwrap_or(text)
        .trim();
    let (date, time) = match text.split_once([' ', 'T']) {
        Some((date, time)) => (Some(date), Some(time.trim())),
        None if text.contains('-') => (Some(text), None),
        None => (None, Some(text)),
    };
    let day = match date {
        Some(date) => {
            let parts: Vec<&str> = date.split('-').collect();
            let [year, month, day] = parts[..] else {
                return Err("a date is YYYY-MM-DD".into());
            };
            let field = |s: &str| -> Result<i64, String> {
                (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| s.parse().ok())
                    .flatten()
                    .ok_or_else(|| "a date is YYYY-MM-DD".to_string())
            };
            let civil = UtcDateTime {
                year: field(year)?,
                month: field(month)? as u32,
                day: field(day)? as u32,
                hour: 0,
                minute: 0,
                second: 0,
            };
            civil
                .to_unix()
                .filter(|_| year.len() == 4)
                .ok_or_else(|| format!("no such date {date}"))?
                / SECS_PER_DAY
        }
        None => (now_ns / 1_000_000_000 / SECS_PER_DAY as u64) as i64,
    };
    let (seconds, frac_ns) = match time {
        None => (0, 0),
        Some(time) => clock(time)?,
    };
    Ok(
        (day as i128 * SECS_PER_DAY as i128 + seconds as i128) * NS_PER_SEC as i128
            + frac_ns as i128,
    )
}

/// `HH:MM[:SS[.frac]]`: seconds into the day and the fraction's nanoseconds.
fn clock(time: &str) -> Result<(u32, u64), String> {
    let bad = || format!("'{time}' is not a time of day HH:MM[:SS]");
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (time, None),
    };
    let fields: Vec<&str> = hms.split(':').collect();
    if !(2..=3).contains(&fields.len())
        || fields
            .iter()
            .any(|f| f.len() != 2 || !f.bytes().all(|b| b.is_ascii_digit()))
        || (frac.is_some() && fields.len() != 3)
    {
        return Err(bad());
    }
    let value = |i: usize| fields.get(i).map_or(Ok(0), |f| f.parse::<u32>());
    let (h, m, s) = (
        value(0).map_err(|_| bad())?,
        value(1).map_err(|_| bad())?,
        value(2).map_err(|_| bad())?,
    );
    if h > 23 || m > 59 || s > 59 {
        return Err(bad());
    }
    let frac_ns = match frac {
        None => 0,
        Some(frac) => scale(0, Some(frac), NS_PER_SEC).ok_or_else(bad)? as u64,
    };
    Ok((h * 3600 + m * 60 + s, frac_ns))
}

/// A time span as systemd writes them: `90s`, `1h30min`, `2 days`, `1.5h`; a bare number is
/// seconds.
fn span_ns(text: &str) -> Result<u64, String> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("a time span is a number and a unit, e.g. 1h or 30min".into());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (whole, frac) = number(&rest[..digits_end])
            .ok_or_else(|| format!("'{rest}' does not start with a number"))?;
        rest = rest[digits_end..].trim_start();
        let unit_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = rest[unit_end..].trim_start();
        let unit_ns = unit_ns(unit).ok_or_else(|| {
            format!("unknown unit '{unit}' (us, ms, s, min, h, d, w, M, y and their long names)")
        })?;
        total += scale(whole, frac, unit_ns).ok_or("a span that long")?;
    }
    u64::try_from(total).map_err(|_| "a span that long".into())
}

/// systemd's time units (`man systemd.time`); `m` is minutes and `M` months, as there.
fn unit_ns(unit: &str) -> Option<u128> {
    const S: u128 = NS_PER_SEC;
    Some(match unit {
        "" | "s" | "sec" | "second" | "seconds" => S,
        "us" | "usec" | "µs" => 1_000,
        "ms" | "msec" => 1_000_000,
        "m" | "min" | "minute" | "minutes" => 60 * S,
        "h" | "hr" | "hour" | "hours" => 3_600 * S,
        "d" | "day" | "days" => 86_400 * S,
        "w" | "week" | "weeks" => 7 * 86_400 * S,
        "M" | "month" | "months" => 2_629_800 * S,
        "y" | "year" | "years" => 31_557_600 * S,
        _ => return None,
    })
}

/// `123` or `123.45` as its whole part and its fraction's digits.
fn number(text: &str) -> Option<(u128, Option<&str>)> {
    let (whole, frac) = match text.split_once('.') {
        Some((whole, frac)) => (whole, Some(frac)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || frac.is_some_and(|f| !digits(f)) || whole.len() > 20 {
        return None;
    }
    Some((whole.parse().ok()?, frac))
}

/// `whole.frac × unit`, the fraction cut at nanosecond precision of the unit.
fn scale(whole: u128, frac: Option<&str>, unit: u128) -> Option<u128> {
    let mut value = whole.checked_mul(unit)?;
    if let Some(frac) = frac {
        let digits = &frac[..frac.len().min(18)];
        let n: u128 = digits.parse().ok()?;
        value = value.checked_add(n * unit / 10u128.pow(digits.len() as u32))?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-05 13:45:30.5 UTC.
    const NOW: u64 = 1_796_478_330_500_000_000;
    const SEC: u64 = 1_000_000_000;

    fn at(text: &str) -> u64 {
        parse_time(text, NOW).unwrap_or_else(|e| panic!("{e}"))
    }

    fn utc(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> u64 {
        let t = UtcDateTime {
            year: y,
            month: mo,
            day: d,
            hour: h,
            minute: mi,
            second: s,
        };
        t.to_unix().expect("valid") as u64 * SEC
    }

    #[test]
    fn now_is_what_the_tests_think() {
        assert_eq!(NOW, utc(2026, 12, 5, 13, 45, 30) + SEC / 2);
    }

    #[test]
    fn absolute_forms_are_utc() {
        assert_eq!(at("2026-12-04 10:00"), utc(2026, 12, 4, 10, 0, 0));
        assert_eq!(at("2026-12-04 10:00:30"), utc(2026, 12, 4, 10, 0, 30));
        assert_eq!(at("2026-12-04T10:00:30Z"), utc(2026, 12, 4, 10, 0, 30));
        assert_eq!(at("2026-12-04 10:00:30 UTC"), utc(2026, 12, 4, 10, 0, 30));
        assert_eq!(
            at("2026-12-04 10:00:30.25"),
            utc(2026, 12, 4, 10, 0, 30) + SEC / 4
        );
        assert_eq!(at("2026-12-04"), utc(2026, 12, 4, 0, 0, 0));
        assert_eq!(at("2024-02-29"), utc(2024, 2, 29, 0, 0, 0));
        assert_eq!(at("10:00"), utc(2026, 12, 5, 10, 0, 0));
        assert_eq!(at(" 23:59:59 "), utc(2026, 12, 5, 23, 59, 59));
    }

    #[test]
    fn words_name_midnights_and_now() {
        assert_eq!(at("now"), NOW);
        assert_eq!(at("today"), utc(2026, 12, 5, 0, 0, 0));
        assert_eq!(at("Yesterday"), utc(2026, 12, 4, 0, 0, 0));
        assert_eq!(at("tomorrow"), utc(2026, 12, 6, 0, 0, 0));
    }

    #[test]
    fn relative_forms_count_from_now() {
        assert_eq!(at("-1h"), NOW - 3600 * SEC);
        assert_eq!(at("+30min"), NOW + 1800 * SEC);
        assert_eq!(at("-2d"), NOW - 2 * 86_400 * SEC);
        assert_eq!(at("-90s"), NOW - 90 * SEC);
        assert_eq!(at("-90"), NOW - 90 * SEC);
        assert_eq!(at("1h ago"), NOW - 3600 * SEC);
        assert_eq!(at("1h 30min ago"), NOW - 5400 * SEC);
        assert_eq!(at("-1h30m"), NOW - 5400 * SEC);
        assert_eq!(at("-1.5h"), NOW - 5400 * SEC);
        assert_eq!(at("-2 days"), NOW - 2 * 86_400 * SEC);
        assert_eq!(at("-500ms"), NOW - SEC / 2);
        assert_eq!(at("-1w"), NOW - 7 * 86_400 * SEC);
        assert_eq!(at("-60y"), 0, "before 1970 clamps to the epoch");
    }

    #[test]
    fn unix_seconds_after_an_at_sign() {
        assert_eq!(at("@1733400000"), 1_733_400_000 * SEC);
        assert_eq!(at("@1733400000.5"), 1_733_400_000 * SEC + SEC / 2);
        assert_eq!(at("@0"), 0);
        assert_eq!(at("@99999999999999999999"), u64::MAX);
    }

    #[test]
    fn anything_else_is_refused_naming_the_accepted_forms() {
        for bad in [
            "",
            "soon",
            "2026-13-01",
            "2026-02-30",
            "26-12-04",
            "2026-12-04 25:00",
            "10:60",
            "10",
            "1:00",
            "-1 fortnight",
            "-h",
            "@",
            "@12x",
            "ago",
            "-1h ago",
            "+",
            "10:00:00:00",
        ] {
            let err = parse_time(bad, NOW).expect_err(bad).to_string();
            assert!(
                err.contains("accepted: \"2026-12-04 10:00\""),
                "{bad}: {err}"
            );
            assert!(err.contains("UTC"), "{bad}: {err}");
        }
    }
}
