//! Cron expressions (feature `cron`): six fields, seconds first, evaluated in an IANA time zone
//! by `croner` on `jiff`'s time zone database (the system's), daylight saving time included.

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use super::{MAX_TICKS_PER_ROUND, MissedTicks, ON_TIME_WINDOW};
use crate::OutboxError;

/// A parsed expression and its time zone.
pub(crate) struct CronSchedule {
    cron: Cron,
    zone: TimeZone,
}

impl CronSchedule {
    /// Parses `expression` (seconds required) and looks `time_zone` up.
    pub(crate) fn new(expression: &str, time_zone: &str) -> Result<Self, OutboxError> {
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .build()
            .parse(expression)
            .map_err(|e| OutboxError::InvalidSchedule(format!("{expression:?}: {e}")))?;
        let zone = TimeZone::get(time_zone)
            .map_err(|e| OutboxError::InvalidSchedule(format!("{time_zone:?}: {e}")))?;
        Ok(Self { cron, zone })
    }

    fn zoned(&self, ms: i64) -> Option<Zoned> {
        Some(
            Timestamp::from_millisecond(ms)
                .ok()?
                .to_zoned(self.zone.clone()),
        )
    }

    /// The first occurrence after `ms` (or at it, when `inclusive`), in Unix milliseconds.
    pub(crate) fn next_after(&self, ms: i64, inclusive: bool) -> Option<i64> {
        let next = self
            .cron
            .find_next_occurrence(&self.zoned(ms)?, inclusive)
            .ok()?;
        Some(next.timestamp().as_millisecond())
    }

    fn latest_at_or_before(&self, ms: i64) -> Option<i64> {
        let latest = self
            .cron
            .find_previous_occurrence(&self.zoned(ms)?, true)
            .ok()?;
        Some(latest.timestamp().as_millisecond())
    }

    /// As [`plan`](super::plan), for the expression's occurrences. `None` when the expression
    /// has no occurrence left (a year in the past).
    pub(crate) fn plan(
        &self,
        next_ms: i64,
        now_ms: i64,
        missed: MissedTicks,
    ) -> Option<(Vec<i64>, i64)> {
        if now_ms < next_ms {
            return Some((Vec::new(), next_ms));
        }
        let latest = self.latest_at_or_before(now_ms)?.max(next_ms);
        let after = self.next_after(now_ms, false)?;
        let on_time = i64::try_from(ON_TIME_WINDOW.as_millis()).unwrap_or(i64::MAX);
        Some(match missed {
            MissedTicks::FireOnce => (vec![latest], after),
            MissedTicks::Skip if now_ms - latest <= on_time => (vec![latest], after),
            MissedTicks::Skip => (Vec::new(), after),
            MissedTicks::FireAll => {
                let mut ticks = vec![next_ms];
                while ticks.len() < MAX_TICKS_PER_ROUND {
                    match self.next_after(ticks[ticks.len() - 1], false) {
                        Some(tick) if tick <= now_ms => ticks.push(tick),
                        _ => break,
                    }
                }
                let last = ticks[ticks.len() - 1];
                (ticks, self.next_after(last, false)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07 00:00:00 UTC.
    const DEC_7: i64 = 1_796_601_600_000;

    #[test]
    fn occurrences_are_in_the_time_zone() {
        // 09:00 in New York in December is 14:00 UTC (EST, UTC-5).
        let nine = CronSchedule::new("0 0 9 * * *", "America/New_York").unwrap();
        assert_eq!(nine.next_after(DEC_7, false), Some(DEC_7 + 14 * 3_600_000));
        let paris = CronSchedule::new("0 0 9 * * *", "Europe/Paris").unwrap();
        assert_eq!(paris.next_after(DEC_7, false), Some(DEC_7 + 8 * 3_600_000));
    }

    #[test]
    fn seconds_are_a_field_and_missed_ticks_follow_the_policy() {
        let every_ten = CronSchedule::new("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(every_ten.next_after(DEC_7, false), Some(DEC_7 + 10_000));
        // Next tick at +10 s, now +45 s: ticks 10, 20, 30, 40 are due.
        let (next, now) = (DEC_7 + 10_000, DEC_7 + 45_000);
        assert_eq!(
            every_ten.plan(next, now, MissedTicks::FireOnce),
            Some((vec![DEC_7 + 40_000], DEC_7 + 50_000))
        );
        assert_eq!(
            every_ten.plan(next, now, MissedTicks::FireAll),
            Some((
                vec![
                    DEC_7 + 10_000,
                    DEC_7 + 20_000,
                    DEC_7 + 30_000,
                    DEC_7 + 40_000
                ],
                DEC_7 + 50_000
            ))
        );
        assert_eq!(
            every_ten.plan(next, now, MissedTicks::Skip),
            Some((vec![], DEC_7 + 50_000))
        );
        assert_eq!(
            every_ten.plan(next, DEC_7 + 5_000, MissedTicks::FireAll),
            Some((vec![], next))
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        assert!(
            CronSchedule::new("* * * * *", "UTC").is_err(),
            "seconds are required"
        );
        assert!(CronSchedule::new("0 0 9 * * *", "Mars/Olympus").is_err());
        assert!(CronSchedule::new("not cron", "UTC").is_err());
    }
}
