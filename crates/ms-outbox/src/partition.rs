//! [`PartitionInterval`]: the time ranges of a partitioned outbox table (PostgreSQL).

use std::time::Duration;

use time::{Date, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Partitions created ahead of the current one (besides it), so that a relay that is down for
/// a while does not leave writers without a partition. Rows that find none anyway go to the
/// default partition, and move into their own partition once the relay creates it.
pub const PARTITIONS_AHEAD: u32 = 3;

/// The range of `created_at` each partition of a partitioned outbox covers, aligned to UTC; see
/// [`OutboxBuilder::partitioned`](crate::OutboxBuilder::partitioned).
///
/// ```
/// use ms_outbox::PartitionInterval;
/// use std::time::Duration;
///
/// assert_eq!(PartitionInterval::Hour.duration(), Duration::from_secs(3600));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PartitionInterval {
    /// One partition per UTC hour (`<table>_p2026112617`): for heavy traffic or retention of
    /// a few hours.
    Hour,
    /// One partition per UTC day (`<table>_p20261126`).
    Day,
}

impl PartitionInterval {
    /// How long one partition's range is.
    pub fn duration(self) -> Duration {
        match self {
            Self::Hour => Duration::from_secs(3600),
            Self::Day => Duration::from_secs(86_400),
        }
    }

    /// The end of the partition starting at `start` (`None` past the calendar's end).
    pub(crate) fn end(self, start: OffsetDateTime) -> Option<OffsetDateTime> {
        start.checked_add(time::Duration::try_from(self.duration()).ok()?)
    }

    /// The start of the partition that holds `at`.
    pub(crate) fn floor(self, at: OffsetDateTime) -> OffsetDateTime {
        let at = at.to_offset(UtcOffset::UTC);
        let time = match self {
            // An hour from 0 to 23 is always a valid time.
            Self::Hour => Time::from_hms(at.hour(), 0, 0).unwrap_or(Time::MIDNIGHT),
            Self::Day => Time::MIDNIGHT,
        };
        PrimitiveDateTime::new(at.date(), time).assume_utc()
    }

    /// The suffix of the partition starting at `start` (a value of [`floor`](Self::floor)).
    pub(crate) fn suffix(self, start: OffsetDateTime) -> String {
        let (y, m, d, h) = (
            start.year(),
            u8::from(start.month()),
            start.day(),
            start.hour(),
        );
        match self {
            Self::Hour => format!("_p{y:04}{m:02}{d:02}{h:02}"),
            Self::Day => format!("_p{y:04}{m:02}{d:02}"),
        }
    }

    /// The range a suffix made by [`suffix`](Self::suffix) stands for, whichever interval made
    /// it (the interval of an outbox may change; its old partitions are still ours to drop).
    pub(crate) fn parse_suffix(suffix: &str) -> Option<(Self, OffsetDateTime, OffsetDateTime)> {
        let digits = suffix.strip_prefix("_p")?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let number = |range: std::ops::Range<usize>| digits.get(range)?.parse::<u16>().ok();
        let interval = match digits.len() {
            8 => Self::Day,
            10 => Self::Hour,
            _ => return None,
        };
        let year = i32::from(number(0..4)?);
        let month = time::Month::try_from(u8::try_from(number(4..6)?).ok()?).ok()?;
        let day = u8::try_from(number(6..8)?).ok()?;
        let hour = match interval {
            Self::Hour => u8::try_from(number(8..10)?).ok()?,
            Self::Day => 0,
        };
        let start = PrimitiveDateTime::new(
            Date::from_calendar_date(year, month, day).ok()?,
            Time::from_hms(hour, 0, 0).ok()?,
        )
        .assume_utc();
        Some((interval, start, interval.end(start)?))
    }
}

/// A `TIMESTAMPTZ` literal for `at` (UTC, whole seconds), for DDL, which takes no parameters.
pub(crate) fn timestamp_literal(at: OffsetDateTime) -> String {
    let at = at.to_offset(UtcOffset::UTC);
    format!(
        "'{:04}-{:02}-{:02} {:02}:{:02}:{:02}+00'",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moment(y: i32, mo: u8, d: u8, h: u8, mi: u8, offset_hours: i8) -> OffsetDateTime {
        PrimitiveDateTime::new(
            Date::from_calendar_date(y, time::Month::try_from(mo).unwrap(), d).unwrap(),
            Time::from_hms(h, mi, 10).unwrap(),
        )
        .assume_offset(UtcOffset::from_hms(offset_hours, 0, 0).unwrap())
    }

    #[test]
    fn suffixes_round_trip_and_ranges_are_aligned() {
        let at = moment(2026, 11, 26, 17, 42, 0);
        for interval in [PartitionInterval::Hour, PartitionInterval::Day] {
            let start = interval.floor(at);
            let suffix = interval.suffix(start);
            let (parsed, from, to) = PartitionInterval::parse_suffix(&suffix).unwrap();
            assert_eq!((parsed, from), (interval, start));
            assert_eq!(to - from, interval.duration());
            assert!(from <= at && at < to);
        }
        assert_eq!(
            PartitionInterval::Day.suffix(PartitionInterval::Day.floor(at)),
            "_p20261126"
        );
        assert_eq!(
            timestamp_literal(moment(2026, 11, 26, 17, 0, 2)),
            "'2026-11-26 15:00:10+00'"
        );
        for wrong in [
            "_p2026",
            "_p20261340",
            "_px0261126",
            "p20261126",
            "_p2026112624",
        ] {
            assert!(PartitionInterval::parse_suffix(wrong).is_none(), "{wrong}");
        }
    }
}
