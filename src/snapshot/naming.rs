//! Snapshot names: `2026-11-25T13-05-00Z-h000000000042`, UTC time then chain height.
//!
//! Fixed-width fields make byte order equal time order (then height order for snapshots taken
//! in the same second), so a sorted directory listing is a timeline. Colons are avoided because
//! they are awkward in paths (scp, `PATH`-like lists). The height has at least 12 digits and
//! more only beyond 10^12 blocks; the year is four digits (0000–9999).

use super::utc::UtcDateTime;
use std::fmt;
use std::str::FromStr;

/// Digits of the height field, zero-padded.
const HEIGHT_WIDTH: usize = 12;

/// The two facts a snapshot name carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotName {
    /// Unix seconds, UTC. Comes first so that the derived order is time order.
    pub time_utc_secs: i64,
    /// Chain height recorded in the snapshot's manifest.
    pub height: u64,
}

/// The name for a snapshot taken at `time_utc_secs` holding the chain up to `height`.
pub fn snapshot_name(time_utc_secs: i64, height: u64) -> String {
    SnapshotName {
        time_utc_secs,
        height,
    }
    .to_string()
}

/// The time and height in a snapshot name; `None` for anything not produced by
/// [`snapshot_name`] (other entries in a snapshot directory are not ours).
pub fn parse_snapshot_name(name: &str) -> Option<SnapshotName> {
    name.parse().ok()
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = UtcDateTime::from_unix(self.time_utc_secs);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}-{:02}-{:02}Z-h{:0width$}",
            t.year,
            t.month,
            t.day,
            t.hour,
            t.minute,
            t.second,
            self.height,
            width = HEIGHT_WIDTH
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a snapshot name (expected YYYY-MM-DDTHH-MM-SSZ-hNNNNNNNNNNNN, UTC)")]
pub struct SnapshotNameError(pub String);

impl FromStr for SnapshotName {
    type Err = SnapshotNameError;

    fn from_str(name: &str) -> Result<SnapshotName, SnapshotNameError> {
        let error = || SnapshotNameError(name.to_owned());
        // "YYYY-MM-DDTHH-MM-SSZ-h" is 22 bytes; all of it must be ASCII for the slicing below.
        let (time, height) = name.split_at_checked(22).ok_or_else(error)?;
        if !time.is_ascii() {
            return Err(error());
        }
        let field = |range: std::ops::Range<usize>| -> Result<u32, SnapshotNameError> {
            let digits = &time[range];
            if digits.bytes().all(|b| b.is_ascii_digit()) {
                digits.parse().map_err(|_| error())
            } else {
                Err(error())
            }
        };
        let separators_ok = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b'-'), (16, b'-')]
            .iter()
            .chain(&[(19, b'Z'), (20, b'-'), (21, b'h')])
            .all(|&(i, c)| time.as_bytes()[i] == c);
        if !separators_ok {
            return Err(error());
        }
        let date_time = UtcDateTime {
            year: i64::from(field(0..4)?),
            month: field(5..7)?,
            day: field(8..10)?,
            hour: field(11..13)?,
            minute: field(14..16)?,
            second: field(17..19)?,
        };
        let time_utc_secs = date_time.to_unix().ok_or_else(error)?;
        let canonical_height = height.len() == HEIGHT_WIDTH
            || (height.len() > HEIGHT_WIDTH && !height.starts_with('0'));
        if !canonical_height || !height.bytes().all(|b| b.is_ascii_digit()) {
            return Err(error());
        }
        let height = height.parse().map_err(|_| error())?;
        Ok(SnapshotName {
            time_utc_secs,
            height,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_has_the_documented_shape() {
        assert_eq!(
            snapshot_name(1_795_611_900, 42),
            "2026-11-25T13-05-00Z-h000000000042"
        );
        assert_eq!(snapshot_name(0, 0), "1970-01-01T00-00-00Z-h000000000000");
        assert_eq!(
            snapshot_name(0, 1_234_567_890_123),
            "1970-01-01T00-00-00Z-h1234567890123"
        );
    }

    #[test]
    fn names_round_trip() {
        for (t, h) in [
            (1_795_611_900, 42),
            (0, 0),
            (-86_400, 7),
            (253_402_300_799, u64::MAX),
        ] {
            let name = snapshot_name(t, h);
            assert_eq!(
                parse_snapshot_name(&name),
                Some(SnapshotName {
                    time_utc_secs: t,
                    height: h
                })
            );
        }
    }

    #[test]
    fn byte_order_is_time_order_then_height_order() {
        let mut names: Vec<(SnapshotName, String)> = [
            (1_795_611_900, 9),
            (1_795_611_899, 100),
            (1_795_611_900, 10),
            (951_782_400, 0), // 2000-02-29
            (1_795_611_960, 1),
        ]
        .iter()
        .map(|&(t, h)| {
            (
                SnapshotName {
                    time_utc_secs: t,
                    height: h,
                },
                snapshot_name(t, h),
            )
        })
        .collect();
        let mut by_text = names.clone();
        by_text.sort_by(|a, b| a.1.cmp(&b.1));
        names.sort();
        assert_eq!(names, by_text);
    }

    #[test]
    fn anything_else_is_not_a_snapshot_name() {
        for bad in [
            "",
            "MANIFEST.json",
            "2026-11-25T13-05-00Z-h00000000004", // height too short
            "2026-11-25T13-05-00Z-h0000000000042", // 13 digits with a leading zero
            "2026-11-25T13-05-00Z-h+00000000042",
            "2026-11-25T13:05:00Z-h000000000042",
            "2026-02-30T13-05-00Z-h000000000042",
            "2026-11-25T24-00-00Z-h000000000042",
            "2026-11-25T13-05-00Z-h000000000042.tmp",
            "2026-11-25T13-05-00Z-h00000000004é",
            "2026-1é-25T13-05-00Z-h000000000042",
            "+026-11-25T13-05-00Z-h000000000042",
        ] {
            assert_eq!(parse_snapshot_name(bad), None, "{bad:?}");
        }
        let err = "x".parse::<SnapshotName>().expect_err("not a name");
        assert!(err
            .to_string()
            .contains("YYYY-MM-DDTHH-MM-SSZ-hNNNNNNNNNNNN"));
    }
}
