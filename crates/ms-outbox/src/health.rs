//! A health check for the relay (feature `health`), as an [`ms_health::Check`]: is it
//! running, is its loop alive, is the backlog moving.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_bus::memory::MemoryBus;
//! use ms_health::{Check, Status};
//! use ms_outbox::{Outbox, Relay};
//! use sqlx::Sqlite;
//! use std::time::Duration;
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let outbox = Outbox::<Sqlite>::default();
//! outbox.migrate(&pool).await?;
//! let relay = Relay::builder(&outbox, &pool, MemoryBus::new()).build().spawn();
//!
//! let check = relay.check().max_backlog_age(Duration::from_secs(60));
//! assert_eq!(check.check().await.status(), Status::Pass);
//! relay.shutdown().await?;
//! let result = check.check().await;
//! assert_eq!(result.status(), Status::Fail);
//! assert_eq!(result.output(), Some("the outbox relay is not running"));
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ms_health::{BoxFuture, Check, CheckResult, Status};
use time::OffsetDateTime;

use crate::{RelayHandle, RelayMonitor, RelayStatus};

/// How long a running relay may go without a heartbeat (a poll or a claim that reached the
/// database) before [`RelayCheck`] fails: many poll intervals at the defaults (500 ms on
/// PostgreSQL, 100 ms on SQLite), so only a loop that is stuck or a database that stopped
/// answering trips it.
pub const DEFAULT_MAX_HEARTBEAT_AGE: Duration = Duration::from_secs(30);
/// How old the oldest pending row may be before [`RelayCheck`] fails: far beyond a healthy
/// relay's delay (milliseconds), within what an outage of the broker should be noticed in.
pub const DEFAULT_MAX_BACKLOG_AGE: Duration = Duration::from_secs(5 * 60);

/// Fails when the relay it watches is not running, when its heartbeat is older than
/// [`max_heartbeat_age`](Self::max_heartbeat_age), when the oldest pending row is older
/// than [`max_backlog_age`](Self::max_backlog_age), or when a scheduled message has been due
/// for longer than that without being moved into the outbox; warns while rows wait in the
/// dead-letter table. The output says which and by how much; the observed value is the
/// oldest pending row's age in seconds.
///
/// It reads the relay's status in memory (the backlog as the relay last measured it, every
/// few poll intervals), so it is cheap and never cached. Made by
/// [`RelayHandle::check`] or [`RelayMonitor::check`].
#[derive(Debug)]
pub struct RelayCheck {
    monitor: RelayMonitor,
    max_heartbeat_age: Duration,
    max_backlog_age: Duration,
    /// When this check first saw the relay running without a heartbeat yet: a relay that
    /// never reaches its database fails once this is older than the heartbeat limit.
    silent_since: Mutex<Option<Instant>>,
}

impl RelayCheck {
    /// A check of the relay `monitor` watches, with the default limits.
    pub fn new(monitor: RelayMonitor) -> Self {
        Self {
            monitor,
            max_heartbeat_age: DEFAULT_MAX_HEARTBEAT_AGE,
            max_backlog_age: DEFAULT_MAX_BACKLOG_AGE,
            silent_since: Mutex::new(None),
        }
    }

    /// How long the relay may go without a heartbeat ([`DEFAULT_MAX_HEARTBEAT_AGE`]). Keep it
    /// well above the relay's poll interval: the poll is the heartbeat of an idle relay.
    #[must_use]
    pub fn max_heartbeat_age(mut self, limit: Duration) -> Self {
        self.max_heartbeat_age = limit;
        self
    }

    /// How old the oldest pending row may be ([`DEFAULT_MAX_BACKLOG_AGE`]). A row held back
    /// behind a failing or parked row of its key counts: its key is stuck.
    #[must_use]
    pub fn max_backlog_age(mut self, limit: Duration) -> Self {
        self.max_backlog_age = limit;
        self
    }

    fn evaluate(&self, status: &RelayStatus) -> CheckResult {
        if !status.running {
            let output = match &status.last_error {
                Some(error) => format!("the outbox relay is not running (last error: {error})"),
                None => "the outbox relay is not running".to_owned(),
            };
            return CheckResult::fail(output);
        }
        let mut worst = Status::Pass;
        let mut output = String::new();
        let mut problem = |status: Status, text: &str| {
            worst = worst.max(status);
            if !output.is_empty() {
                output.push_str("; ");
            }
            output.push_str(text);
        };

        let silent_for = match status.last_heartbeat {
            Some(at) => at.elapsed(),
            None => {
                let mut since = self
                    .silent_since
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                since.get_or_insert_with(Instant::now).elapsed()
            }
        };
        if silent_for > self.max_heartbeat_age {
            let mut text = format!(
                "no heartbeat for {} (limit {}): the relay's loop is stuck or its database \
                 does not answer",
                secs(silent_for),
                secs(self.max_heartbeat_age)
            );
            if let Some(error) = &status.last_error {
                let _ = write!(text, " (last error: {error})");
            }
            problem(Status::Fail, &text);
        }

        let backlog = status.backlog;
        let age = backlog
            .and_then(|b| b.oldest_age(OffsetDateTime::now_utc()))
            .unwrap_or_default();
        if age > self.max_backlog_age {
            let pending = backlog.map_or(0, |b| b.pending);
            problem(
                Status::Fail,
                &format!(
                    "the oldest pending row is {} old, {} over the limit of {} \
                     ({pending} rows pending)",
                    secs(age),
                    secs(age.saturating_sub(self.max_backlog_age)),
                    secs(self.max_backlog_age)
                ),
            );
        }
        // A due scheduled row waits outside the outbox until a relay moves it: overdue, it
        // is as stuck as an old pending row, and counts against the same limit.
        let overdue = backlog
            .and_then(|b| b.overdue(OffsetDateTime::now_utc()))
            .unwrap_or_default();
        if overdue > self.max_backlog_age {
            let scheduled = backlog.map_or(0, |b| b.scheduled);
            problem(
                Status::Fail,
                &format!(
                    "the earliest scheduled message has been due for {}, {} over the limit \
                     of {}, and is not in the outbox yet ({scheduled} scheduled)",
                    secs(overdue),
                    secs(overdue.saturating_sub(self.max_backlog_age)),
                    secs(self.max_backlog_age)
                ),
            );
        }
        if let Some(dead) = backlog.map(|b| b.dead_letters).filter(|&n| n > 0) {
            problem(
                Status::Warn,
                &format!("{dead} rows in the dead-letter table wait to be replayed or discarded"),
            );
        }

        let result = match worst {
            Status::Pass => CheckResult::pass(),
            status => CheckResult::new(status).with_output(output),
        };
        result.with_observed_value(age.as_secs_f64(), "s")
    }
}

impl From<RelayMonitor> for RelayCheck {
    fn from(monitor: RelayMonitor) -> Self {
        Self::new(monitor)
    }
}

impl Check for RelayCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        let result = self.evaluate(&self.monitor.status());
        Box::pin(std::future::ready(result))
    }

    fn component_type(&self) -> Option<&str> {
        Some("component")
    }

    fn measurement(&self) -> Option<&str> {
        Some("backlogAge")
    }

    fn cache_ttl(&self) -> Option<Duration> {
        // It reads memory: show a stop on the next probe.
        Some(Duration::ZERO)
    }
}

impl RelayMonitor {
    /// A health check of this relay with the default limits (feature `health`).
    #[cfg_attr(docsrs, doc(cfg(feature = "health")))]
    pub fn check(&self) -> RelayCheck {
        RelayCheck::new(self.clone())
    }
}

impl RelayHandle {
    /// A health check of this relay with the default limits (feature `health`); it goes on
    /// working after the handle is consumed by [`shutdown`](Self::shutdown), and then fails.
    #[cfg_attr(docsrs, doc(cfg(feature = "health")))]
    pub fn check(&self) -> RelayCheck {
        self.monitor().check()
    }
}

/// A duration the way the outputs say it: milliseconds below a second, else seconds with one
/// decimal.
fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
