//! What a running relay reports about itself.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::Backlog;

/// A snapshot of a relay's counters, from [`RelayHandle::status`](crate::RelayHandle::status).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RelayStatus {
    /// Whether the relay's tasks are running.
    pub running: bool,
    /// Rows published (confirmed by the broker) since start.
    pub published: u64,
    /// Failed publish attempts of single rows since start.
    pub failures: u64,
    /// Rows moved to the dead letters since start.
    pub parked: u64,
    /// Database or broker errors that made a whole batch roll back since start.
    pub batch_errors: u64,
    /// Scheduled rows this relay moved into the outbox when due, since start.
    pub scheduled_due: u64,
    /// Recurring ticks this relay enqueued, since start.
    pub recurring_ticks: u64,
    /// When the relay last confirmed a publication.
    pub last_published: Option<Instant>,
    /// When the relay last completed a database round (a claim or a poll) without error: the
    /// proof that its loop and its database connection are alive.
    pub last_heartbeat: Option<Instant>,
    /// The last error seen, if any.
    pub last_error: Option<String>,
    /// The backlog as last measured (every few poll intervals).
    pub backlog: Option<Backlog>,
}

#[derive(Debug, Default)]
pub(crate) struct RelayState {
    pub(crate) running: AtomicBool,
    pub(crate) published: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) parked: AtomicU64,
    pub(crate) batch_errors: AtomicU64,
    pub(crate) promoted: AtomicU64,
    pub(crate) ticks: AtomicU64,
    last_published: Mutex<Option<Instant>>,
    last_published_at: Mutex<Option<time::OffsetDateTime>>,
    last_heartbeat: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    backlog: Mutex<Option<Backlog>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values: a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RelayState {
    /// Counts `rows` published by a round that began sending at `sent_at`. The wall-clock
    /// stamp the strike rule compares with failure times is `sent_at`, never later: a round
    /// whose confirms came before a broker outage may commit after it began, when other rows
    /// have failed already; stamped at its commit, it would make their next failure look like
    /// one while the broker was up. Rounds of several shards commit in any order: the latest
    /// stamp wins.
    pub(crate) fn published(&self, rows: usize, sent_at: time::OffsetDateTime) {
        if rows > 0 {
            self.published.fetch_add(rows as u64, Ordering::Relaxed);
            let now = Instant::now();
            *lock(&self.last_published) = Some(now);
            let mut last = lock(&self.last_published_at);
            *last = Some(last.map_or(sent_at, |last| last.max(sent_at)));
            *lock(&self.last_heartbeat) = Some(now);
        }
    }

    pub(crate) fn heartbeat(&self) {
        *lock(&self.last_heartbeat) = Some(Instant::now());
    }

    pub(crate) fn error(&self, error: String) {
        *lock(&self.last_error) = Some(error);
    }

    pub(crate) fn set_backlog(&self, backlog: Backlog) {
        *lock(&self.backlog) = Some(backlog);
    }

    /// When the latest round that confirmed a publication began sending, by the wall clock
    /// (compared with the failure times stored in rows).
    pub(crate) fn last_published_at(&self) -> Option<time::OffsetDateTime> {
        *lock(&self.last_published_at)
    }

    pub(crate) fn snapshot(&self) -> RelayStatus {
        RelayStatus {
            running: self.running.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            parked: self.parked.load(Ordering::Relaxed),
            batch_errors: self.batch_errors.load(Ordering::Relaxed),
            scheduled_due: self.promoted.load(Ordering::Relaxed),
            recurring_ticks: self.ticks.load(Ordering::Relaxed),
            last_published: *lock(&self.last_published),
            last_heartbeat: *lock(&self.last_heartbeat),
            last_error: lock(&self.last_error).clone(),
            backlog: *lock(&self.backlog),
        }
    }
}
