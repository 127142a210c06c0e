//! UTC calendar arithmetic on Unix seconds: civil dates (proleptic Gregorian), ISO weeks.
//!
//! Small enough to own instead of pulling in a date crate: `days_from_civil` and
//! `civil_from_days` are Howard Hinnant's public-domain algorithms, exact for every `i64` day
//! count we can meet. Leap seconds do not exist in Unix time, so a day is always 86 400 s.

pub const SECS_PER_HOUR: i64 = 3_600;
pub const SECS_PER_DAY: i64 = 86_400;

/// A UTC time broken down into calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcDateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl UtcDateTime {
    pub fn from_unix(secs: i64) -> UtcDateTime {
        let (days, rem) = (secs.div_euclid(SECS_PER_DAY), secs.rem_euclid(SECS_PER_DAY));
        let (year, month, day) = civil_from_days(days);
        // `rem` is in 0..86_400, so these casts are exact.
        let rem = rem as u32;
        UtcDateTime {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
        }
    }

    /// Unix seconds; `None` unless every field is in range (no 24:00, no 23:59:60, no Feb 30).
    pub fn to_unix(&self) -> Option<i64> {
        let in_range = (1..=12).contains(&self.month)
            && self.day >= 1
            && self.day <= days_in_month(self.year, self.month)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60;
        in_range.then(|| {
            let days = days_from_civil(self.year, self.month, self.day);
            let secs = i64::from(self.hour * 3600 + self.minute * 60 + self.second);
            days * SECS_PER_DAY + secs
        })
    }

    /// RFC 3339 with a `Z`: `2026-11-25T13:05:00Z`.
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `(year, month, day)` of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
                                  // Both are small and positive by the ranges above.
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Weeks since the Monday 1969-12-29, the start of the ISO week holding 1970-01-01 (a
/// Thursday). Two times share a number exactly when they share an ISO week.
pub fn monday_week_index(secs: i64) -> i64 {
    (secs.div_euclid(SECS_PER_DAY) + 3).div_euclid(7)
}

/// The ISO 8601 `(week-numbering year, week 1..=53)` of a day count since 1970-01-01.
pub fn iso_week(days: i64) -> (i64, u32) {
    let weekday_from_monday = (days + 3).rem_euclid(7); // 0 = Monday
                                                        // An ISO week belongs to the year that holds its Thursday.
    let thursday = days - weekday_from_monday + 3;
    let (year, _, _) = civil_from_days(thursday);
    let week = (thursday - days_from_civil(year, 1, 1)) / 7 + 1;
    (year, week as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(year: i64, month: u32, day: u32) -> i64 {
        days_from_civil(year, month, day)
    }

    #[test]
    fn known_dates_convert_both_ways() {
        for (days, date) in [
            (0, (1970, 1, 1)),
            (-1, (1969, 12, 31)),
            (11_016, (2000, 2, 29)),
            (20_512, (2026, 2, 28)),
            (20_513, (2026, 3, 1)),
            (-719_468, (0, 3, 1)),
            (2_932_896, (9999, 12, 31)),
        ] {
            assert_eq!(civil_from_days(days), date, "day {days}");
            assert_eq!(days_from_civil(date.0, date.1, date.2), days, "{date:?}");
        }
    }

    #[test]
    fn every_day_for_ten_thousand_years_round_trips_and_follows_the_previous() {
        let mut previous = civil_from_days(-1_000_001);
        for days in -1_000_000..=3_000_000 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            let next_in_month = (y, m, d) == (previous.0, previous.1, previous.2 + 1);
            let first_of_next_month = d == 1
                && previous.2 == days_in_month(previous.0, previous.1)
                && ((y, m) == (previous.0, previous.1 + 1)
                    || (y, m, previous.1) == (previous.0 + 1, 1, 12));
            assert!(
                next_in_month || first_of_next_month,
                "{previous:?} -> {:?}",
                (y, m, d)
            );
            previous = (y, m, d);
        }
    }

    #[test]
    fn unix_seconds_break_down_and_reassemble() {
        let t = UtcDateTime::from_unix(1_795_611_900);
        assert_eq!(t.rfc3339(), "2026-11-25T13:05:00Z");
        assert_eq!(t.to_unix(), Some(1_795_611_900));
        let before_epoch = UtcDateTime::from_unix(-1);
        assert_eq!(before_epoch.rfc3339(), "1969-12-31T23:59:59Z");
        assert_eq!(before_epoch.to_unix(), Some(-1));
        let feb30 = UtcDateTime {
            year: 2026,
            month: 2,
            day: 30,
            hour: 0,
            minute: 0,
            second: 0,
        };
        assert_eq!(feb30.to_unix(), None);
        let leap_day = UtcDateTime {
            year: 2024,
            month: 2,
            day: 29,
            ..feb30
        };
        assert!(leap_day.to_unix().is_some());
        assert_eq!(
            UtcDateTime {
                hour: 24,
                ..leap_day
            }
            .to_unix(),
            None
        );
        assert_eq!(
            UtcDateTime {
                second: 60,
                ..leap_day
            }
            .to_unix(),
            None
        );
    }

    #[test]
    fn iso_weeks_match_published_calendars() {
        assert_eq!(iso_week(day(2026, 1, 1)), (2026, 1)); // a Thursday
        assert_eq!(iso_week(day(2025, 12, 29)), (2026, 1)); // its Monday
        assert_eq!(iso_week(day(2025, 12, 28)), (2025, 52)); // the Sunday before
        assert_eq!(iso_week(day(2020, 12, 31)), (2020, 53));
        assert_eq!(iso_week(day(2021, 1, 3)), (2020, 53));
        assert_eq!(iso_week(day(2021, 1, 4)), (2021, 1));
        assert_eq!(iso_week(day(2015, 12, 31)), (2015, 53));
        assert_eq!(iso_week(day(2024, 12, 30)), (2025, 1));
        assert_eq!(iso_week(day(2026, 11, 25)), (2026, 48));
        assert_eq!(iso_week(day(1970, 1, 1)), (1970, 1));
    }

    #[test]
    fn week_index_changes_exactly_at_monday_midnight() {
        let monday = day(2026, 11, 23) * SECS_PER_DAY;
        assert_eq!(monday_week_index(monday - 1), monday_week_index(monday) - 1);
        assert_eq!(
            monday_week_index(monday),
            monday_week_index(monday + 7 * SECS_PER_DAY - 1)
        );
        // Same index ⇔ same ISO week, over a span crossing several year boundaries.
        for days in day(2014, 12, 1)..day(2027, 2, 1) {
            let same_as_yesterday = monday_week_index(days * SECS_PER_DAY)
                == monday_week_index((days - 1) * SECS_PER_DAY);
            assert_eq!(
                same_as_yesterday,
                iso_week(days) == iso_week(days - 1),
                "day {days}"
            );
        }
    }
}
