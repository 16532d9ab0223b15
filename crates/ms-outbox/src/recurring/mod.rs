//! Recurring schedules: a named message sent at every tick of a fixed interval or (feature
//! `cron`) of a cron expression in a time zone, exactly once per tick across any number of
//! relays and restarts.
//!
//! [`Outbox::register`] stores a [`Recurring`] schedule (idempotent: every instance of a
//! service may register it at start; the tick position survives re-registration with the
//! same interval). Ticks are the multiples of the interval since the Unix epoch, so they are
//! the same whoever registered. When a tick is due a relay turns it into a scheduled message
//! due at the tick, in the same transaction that advances the schedule past it, under a row
//! lock that other relays skip: each tick is enqueued once. Its envelope is the template's
//! with the id `<name>@<tick, RFC 3339>` and its `deliverat` (and `time`) set to the tick, so a
//! tick republished after a crash is the same message to the broker's dedup and to an
//! [`Inbox`](crate::Inbox).
//!
//! After downtime (no relay running over several ticks) the [`MissedTicks`] policy decides:
//! fire the latest missed tick once (the default), fire every missed tick, or skip them.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use ms_bus::Envelope;
//! use ms_outbox::{MissedTicks, Outbox, OutboxMessage, Recurring};
//! use sqlx::Sqlite;
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let outbox = Outbox::<Sqlite>::default();
//! outbox.migrate(&pool).await?;
//!
//! let sweep = Envelope::builder("invoicing.sweep.due", "/invoicing").build()?;
//! let every_hour = Recurring::every(
//!     "invoicing-sweep",
//!     Duration::from_secs(3600),
//!     OutboxMessage::command("invoicing.sweep", sweep),
//! )?
//! .missed(MissedTicks::FireOnce);
//! outbox.register(&pool, &every_hour).await?;
//! outbox.register(&pool, &every_hour).await?; // idempotent
//! assert_eq!(outbox.backlog(&pool).await?.recurring, 1);
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "cron")]
mod cron;

use std::time::Duration;

use ms_bus::Envelope;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::backend::{Backend, PreparedRow};
use crate::key::{key_hash, lock_id, shard_of};
use crate::outbox_config::OutboxInner;
use crate::{MessageKind, Outbox, OutboxError, OutboxMessage};

/// The most ticks of one schedule enqueued per round with [`MissedTicks::FireAll`]; the rest
/// follow in the next rounds (bounded transactions after a long outage).
pub const MAX_TICKS_PER_ROUND: usize = 1_000;
/// How late a tick may be and still count as on time for [`MissedTicks::Skip`].
pub const ON_TIME_WINDOW: Duration = Duration::from_secs(1);

/// What a schedule does with ticks that passed while no relay ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissedTicks {
    /// One message, for the latest missed tick; the earlier ones are dropped. The usual
    /// choice for "do the periodic work": it runs once, now, and then on schedule.
    #[default]
    FireOnce,
    /// A message for every missed tick (at most [`MAX_TICKS_PER_ROUND`] per round), each with
    /// its own tick's id and due time.
    FireAll,
    /// None: only a tick at most [`ON_TIME_WINDOW`] late is sent.
    Skip,
}

impl MissedTicks {
    pub(crate) fn code(self) -> i16 {
        match self {
            Self::FireOnce => 0,
            Self::FireAll => 1,
            Self::Skip => 2,
        }
    }

    pub(crate) fn from_code(code: i16) -> Self {
        match code {
            1 => Self::FireAll,
            2 => Self::Skip,
            _ => Self::FireOnce,
        }
    }
}

/// A named message sent at every tick of a fixed interval ([`every`](Self::every)) or of a
/// cron expression (`cron`, feature `cron`); see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Recurring {
    name: String,
    every: Duration,
    /// A cron expression and its time zone, instead of the interval.
    cron: Option<(String, String)>,
    message: OutboxMessage,
    missed: MissedTicks,
}

impl Recurring {
    /// `message` (its envelope is the template of every tick's) every `interval`, under
    /// `name`. The interval is whole milliseconds, at least one.
    pub fn every(
        name: impl Into<String>,
        interval: Duration,
        message: OutboxMessage,
    ) -> Result<Self, OutboxError> {
        let name = name.into();
        if name.is_empty() {
            return Err(OutboxError::InvalidSchedule(
                "a recurring schedule needs a name".to_owned(),
            ));
        }
        if interval < Duration::from_millis(1) {
            return Err(OutboxError::InvalidSchedule(format!(
                "{name}: the interval must be at least a millisecond, not {interval:?}"
            )));
        }
        Ok(Self {
            name,
            every: interval,
            cron: None,
            message,
            missed: MissedTicks::default(),
        })
    }

    /// `message` at every occurrence of the cron `expression` in `time_zone` (an IANA name such
    /// as `Europe/Paris`, or `UTC`), under `name` (feature `cron`). Six fields, seconds
    /// first: `0 30 9 * * Mon-Fri` is 09:30:00 on weekdays, local time, daylight saving time
    /// included; parsed by [`croner`](https://docs.rs/croner), time zones from the system's
    /// database through `jiff`.
    ///
    /// ```
    /// use ms_bus::Envelope;
    /// use ms_outbox::{OutboxMessage, Recurring};
    ///
    /// let report = Envelope::builder("reporting.daily.due", "/reporting").build()?;
    /// let daily = Recurring::cron(
    ///     "daily-report",
    ///     "0 0 7 * * *",
    ///     "Europe/Paris",
    ///     OutboxMessage::command("reporting.daily", report),
    /// )?;
    /// assert_eq!(daily.name(), "daily-report");
    /// assert!(Recurring::cron("x", "0 7 * * *", "UTC", daily_message()).is_err()); // no seconds
    /// # fn daily_message() -> OutboxMessage {
    /// #     OutboxMessage::command("reporting.daily", Envelope::builder("t", "/s").build().unwrap())
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "cron")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cron")))]
    pub fn cron(
        name: impl Into<String>,
        expression: &str,
        time_zone: &str,
        message: OutboxMessage,
    ) -> Result<Self, OutboxError> {
        cron::CronSchedule::new(expression, time_zone)?;
        let mut schedule = Self::every(name, Duration::from_secs(1), message)?;
        schedule.cron = Some((expression.to_owned(), time_zone.to_owned()));
        Ok(schedule)
    }

    /// What to do with ticks missed while no relay ran ([`MissedTicks::FireOnce`]).
    #[must_use]
    pub fn missed(mut self, policy: MissedTicks) -> Self {
        self.missed = policy;
        self
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.every
    }
}

/// A schedule as registered: what the backends store.
#[derive(Debug)]
pub(crate) struct RecurringRow {
    pub(crate) name: String,
    pub(crate) every_ms: i64,
    pub(crate) missed: i16,
    pub(crate) kind: i16,
    pub(crate) destination: String,
    pub(crate) envelope: String,
    /// The first tick after registration (kept by a re-registration with the same interval).
    pub(crate) next_tick_ms: i64,
    pub(crate) cron: Option<String>,
    pub(crate) time_zone: Option<String>,
}

/// A stored schedule found due by the relay.
#[derive(Debug)]
pub(crate) struct DueSchedule {
    pub(crate) name: String,
    pub(crate) every_ms: i64,
    pub(crate) missed: i16,
    pub(crate) kind: i16,
    pub(crate) destination: String,
    pub(crate) envelope: String,
    pub(crate) next_tick_ms: i64,
    pub(crate) cron: Option<String>,
    // Read only by the cron evaluation (feature `cron`).
    #[cfg_attr(not(feature = "cron"), allow(dead_code))]
    pub(crate) time_zone: Option<String>,
}

/// Whether this build evaluates cron schedules (the relays of a build without the feature
/// leave them to those with it).
pub(crate) const CRON: bool = cfg!(feature = "cron");

/// The next tick of a schedule that never fires again: 9999-12-31T23:59:59Z, the last time
/// every database here can hold (a larger value would fail the timer's `to_timestamp`).
pub(crate) const NEVER_MS: i64 = 253_402_300_799_000;

/// [`plan`] for a stored schedule, interval or cron. A cron schedule that cannot be evaluated
/// (no occurrence left, or an expression this build no longer reads) never fires again: its
/// next tick becomes [`NEVER_MS`], rather than come back due at every round.
pub(crate) fn plan_schedule(schedule: &DueSchedule, now_ms: i64) -> (Vec<i64>, i64) {
    let missed = MissedTicks::from_code(schedule.missed);
    let Some(expression) = &schedule.cron else {
        return plan(schedule.next_tick_ms, schedule.every_ms, now_ms, missed);
    };
    #[cfg(feature = "cron")]
    {
        let zone = schedule.time_zone.as_deref().unwrap_or("UTC");
        if let Some(planned) = cron::CronSchedule::new(expression, zone)
            .ok()
            .and_then(|cron| cron.plan(schedule.next_tick_ms, now_ms, missed))
        {
            return planned;
        }
    }
    tracing::warn!(
        schedule = %schedule.name,
        cron = %expression,
        "outbox: a recurring schedule cannot be evaluated any more; it stops"
    );
    (Vec::new(), NEVER_MS)
}

/// The ticks to enqueue at `now_ms` of a schedule whose next tick is `next_ms`, and the next
/// tick after them. Ticks are multiples of `every_ms`.
pub(crate) fn plan(
    next_ms: i64,
    every_ms: i64,
    now_ms: i64,
    missed: MissedTicks,
) -> (Vec<i64>, i64) {
    let every = every_ms.max(1);
    if now_ms < next_ms {
        return (Vec::new(), next_ms);
    }
    // The latest tick at or before now, and the one after it.
    let latest = next_ms + (now_ms - next_ms) / every * every;
    let after = latest.saturating_add(every);
    let on_time = i64::try_from(ON_TIME_WINDOW.as_millis()).unwrap_or(i64::MAX);
    match missed {
        MissedTicks::FireOnce => (vec![latest], after),
        MissedTicks::Skip if now_ms - latest <= on_time => (vec![latest], after),
        MissedTicks::Skip => (Vec::new(), after),
        MissedTicks::FireAll => {
            let count = usize::try_from((latest - next_ms) / every + 1).unwrap_or(usize::MAX);
            let count = count.min(MAX_TICKS_PER_ROUND);
            let ticks: Vec<i64> = (0..count)
                .map(|n| next_ms + i64::try_from(n).unwrap_or(0) * every)
                .collect();
            let next = ticks.last().map_or(after, |last| last + every);
            (ticks, next)
        }
    }
}

/// The scheduled rows of `schedule`'s `ticks` (a template that no longer decodes is skipped:
/// its ticks are dropped, with a warning, rather than stall the schedule).
pub(crate) fn tick_rows(
    outbox: &OutboxInner,
    schedule: &DueSchedule,
    ticks: &[i64],
) -> Vec<PreparedRow> {
    let template = match ms_bus::codec::from_json(schedule.envelope.as_bytes()) {
        Ok(template) => template,
        Err(error) => {
            tracing::warn!(
                schedule = %schedule.name,
                %error,
                "outbox: recurring template does not decode; ticks dropped"
            );
            return Vec::new();
        }
    };
    let kind = MessageKind::from_code(schedule.kind).unwrap_or(MessageKind::Event);
    ticks
        .iter()
        .filter_map(|&tick| {
            let at =
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(tick) * 1_000_000).ok()?;
            let id = format!("{}@{}", schedule.name, at.format(&Rfc3339).ok()?);
            let envelope = tick_envelope(&template, id, at).ok()?;
            let message = match kind {
                MessageKind::Command => {
                    OutboxMessage::command(schedule.destination.clone(), envelope)
                }
                _ => OutboxMessage::event(schedule.destination.clone(), envelope),
            }
            .deliver_at(at);
            let key = message.key().to_owned();
            let hash = key_hash(&key);
            Some(PreparedRow {
                shard: shard_of(hash, outbox.shards),
                key_hash: hash,
                key_lock: lock_id(hash % outbox.key_lock_slots),
                key,
                kind: schedule.kind,
                destination: schedule.destination.clone(),
                envelope: String::from_utf8_lossy(&ms_bus::codec::to_json(message.envelope()))
                    .into_owned(),
                message_id: message.envelope().id().to_owned(),
                due_at: message.due_at(),
            })
        })
        .collect()
}

/// The template with the tick's id and time.
fn tick_envelope(
    template: &Envelope,
    id: String,
    at: OffsetDateTime,
) -> Result<Envelope, ms_bus::EnvelopeError> {
    let mut builder = Envelope::builder(template.ty(), template.source())
        .id(id)
        .time(at);
    if let Some(subject) = template.subject() {
        builder = builder.subject(subject);
    }
    if let Some(schema) = template.dataschema() {
        builder = builder.dataschema(schema);
    }
    if let Some(content_type) = template.datacontenttype() {
        builder = builder.data(content_type, template.data().clone());
    }
    for (name, value) in template.extensions() {
        builder = builder.extension(name, value)?;
    }
    builder.build()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl<DB: Backend> Outbox<DB> {
    /// Registers (or updates) `schedule`; idempotent. Re-registering with the same interval
    /// keeps the schedule's place (no tick is repeated or skipped); a new interval starts at
    /// its first tick after now. The template is stored as it is, without the current trace
    /// context: each tick starts its own trace.
    pub async fn register(
        &self,
        pool: &sqlx::Pool<DB>,
        schedule: &Recurring,
    ) -> Result<(), OutboxError> {
        let message = &schedule.message;
        ms_bus::validate_name(message.destination()).map_err(OutboxError::InvalidDestination)?;
        let now = i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(i64::MAX);
        let (every_ms, next_tick_ms) = match &schedule.cron {
            // A cron schedule's "interval" is 0; a re-registration keeps its next tick while
            // the expression and time zone stay the same.
            #[cfg(feature = "cron")]
            Some((expression, zone)) => (
                0,
                cron::CronSchedule::new(expression, zone)?
                    .next_after(now, false)
                    .unwrap_or(NEVER_MS),
            ),
            #[cfg(not(feature = "cron"))]
            Some(_) => (0, NEVER_MS),
            None => {
                let every_ms = millis(schedule.every);
                (every_ms, (now / every_ms + 1).saturating_mul(every_ms))
            }
        };
        let row = RecurringRow {
            name: schedule.name.clone(),
            every_ms,
            missed: schedule.missed.code(),
            kind: message.kind().code(),
            destination: message.destination().to_owned(),
            envelope: String::from_utf8_lossy(&ms_bus::codec::to_json(message.envelope()))
                .into_owned(),
            next_tick_ms,
            cron: schedule
                .cron
                .as_ref()
                .map(|(expression, _)| expression.clone()),
            time_zone: schedule.cron.as_ref().map(|(_, zone)| zone.clone()),
        };
        DB::register(pool, &self.inner, &row).await?;
        self.inner.schedule_wake.notify_one();
        Ok(())
    }

    /// Removes the recurring schedule `name` in the caller's transaction; its ticks already
    /// enqueued stay (cancel them by id). Returns whether it existed.
    pub async fn unregister(
        &self,
        conn: &mut DB::Connection,
        name: &str,
    ) -> Result<bool, OutboxError> {
        DB::unregister(conn, &self.inner, name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_tick_fires_once_and_the_schedule_moves_past_it() {
        for policy in [
            MissedTicks::FireOnce,
            MissedTicks::FireAll,
            MissedTicks::Skip,
        ] {
            assert_eq!(plan(1_000, 1_000, 1_010, policy), (vec![1_000], 2_000));
            assert_eq!(plan(2_000, 1_000, 1_999, policy), (vec![], 2_000));
        }
    }

    #[test]
    fn missed_ticks_follow_the_policy() {
        // Down from 1 s to 5.5 s: ticks 1..=5 s are due.
        assert_eq!(
            plan(1_000, 1_000, 5_500, MissedTicks::FireOnce),
            (vec![5_000], 6_000)
        );
        assert_eq!(
            plan(1_000, 1_000, 5_500, MissedTicks::FireAll),
            (vec![1_000, 2_000, 3_000, 4_000, 5_000], 6_000)
        );
        // The latest is on time (500 ms late): it fires; one 5 s late would not.
        assert_eq!(
            plan(1_000, 1_000, 5_500, MissedTicks::Skip),
            (vec![5_000], 6_000)
        );
        assert_eq!(
            plan(1_000, 10_000, 7_000, MissedTicks::Skip),
            (vec![], 11_000)
        );
        assert_eq!(
            plan(1_000, 10_000, 7_000, MissedTicks::FireOnce),
            (vec![1_000], 11_000)
        );
    }

    #[test]
    fn a_long_outage_fires_all_in_bounded_rounds() {
        let (ticks, next) = plan(0, 1, 5_000, MissedTicks::FireAll);
        assert_eq!(ticks.len(), MAX_TICKS_PER_ROUND);
        assert_eq!(next, 1_000);
        let (ticks, next) = plan(next, 1, 5_000, MissedTicks::FireAll);
        assert_eq!((ticks[0], next), (1_000, 2_000));
    }

    #[test]
    fn a_schedule_needs_a_name_and_an_interval() {
        let envelope = Envelope::builder("t", "/s").build().unwrap();
        let message = OutboxMessage::event("t", envelope);
        assert!(Recurring::every("", Duration::from_secs(1), message.clone()).is_err());
        assert!(Recurring::every("x", Duration::from_micros(10), message).is_err());
    }
}
