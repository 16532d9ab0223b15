//! The relay's settings and their defaults.

use std::time::Duration;

use ms_resilience::backoff::{ExponentialBackoff, Jitter};

/// Rows claimed and published per transaction. Large batches amortise the round trips and
/// pipeline the broker's confirmations; the cost is duplicates after a crash (at most one
/// batch per worker) and memory.
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// Workers per relay: shards drained at once.
pub const DEFAULT_CONCURRENCY: usize = 2;
/// How often the relay looks for rows it was not told about (a missed notification, a writer
/// with notifications off, a retry coming due).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Failures that count (see [`RelayBuilder::max_attempts`](crate::RelayBuilder::max_attempts))
/// before a row is parked.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// The first retry delay of a failing row; it doubles, with jitter, up to
/// [`DEFAULT_MAX_RETRY_DELAY`].
pub const DEFAULT_MIN_RETRY_DELAY: Duration = Duration::from_millis(200);
/// The longest retry delay of a failing row.
pub const DEFAULT_MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// The longest a batch's publication may take before it is abandoned (rolled back, retried).
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// A row's first failure counts towards the dead letter only if the relay published something
/// within this long (later failures count only if it published something since the row's
/// previous failure): then the broker is up and the row itself is the problem.
pub const DEFAULT_STRIKE_WINDOW: Duration = Duration::from_secs(60);

/// What a row that keeps failing does to the rows after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnPoison {
    /// Later rows of the same partition key wait while it is retried and, once parked, until it
    /// is replayed or discarded: the key's order is never broken. Other keys keep flowing.
    #[default]
    BlockKey,
    /// Nothing waits: later rows of its key are published meanwhile (out of order with it).
    BlockNothing,
}

/// What happens to rows once published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Retention {
    /// Deleted in the transaction that confirms them: one batch at a time, so the table never
    /// holds more than the backlog and vacuum keeps up.
    /// (On a partitioned outbox, past partitions are dropped once empty.)
    #[default]
    Delete,
    /// Marked published and deleted after this long, in bounded batches, by the relay (an
    /// audit trail, or replay from the table).
    ///
    /// On a [partitioned](crate::OutboxBuilder::partitioned) outbox (PostgreSQL) the relay
    /// instead drops whole partitions once their range ended this long ago, in O(1) and
    /// without dead tuples; rows then stay up to one partition interval longer, and a
    /// partition holding a pending row is kept until the row is gone. See
    /// [partitioned retention](crate::relay#partitioned-retention).
    Keep(Duration),
}

#[derive(Debug, Clone)]
pub(crate) struct RelayConfig {
    pub(crate) batch_size: usize,
    pub(crate) concurrency: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) min_retry_delay: Duration,
    pub(crate) max_retry_delay: Duration,
    pub(crate) publish_timeout: Duration,
    pub(crate) strike_window: Duration,
    pub(crate) on_poison: OnPoison,
    pub(crate) retention: Retention,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            min_retry_delay: DEFAULT_MIN_RETRY_DELAY,
            max_retry_delay: DEFAULT_MAX_RETRY_DELAY,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            strike_window: DEFAULT_STRIKE_WINDOW,
            on_poison: OnPoison::default(),
            retention: Retention::default(),
        }
    }
}

impl RelayConfig {
    /// The delay before a row's next attempt after `attempts` failures: exponential from
    /// `min_retry_delay` up to `max_retry_delay`, with equal jitter so that rows failing
    /// together do not come back together.
    pub(crate) fn retry_delay(&self, attempts: i32) -> Duration {
        let attempts = u32::try_from(attempts).unwrap_or(0);
        ExponentialBackoff::new(
            self.min_retry_delay.min(self.max_retry_delay),
            self.max_retry_delay,
        )
        .with_jitter(Jitter::Equal)
        .delay(attempts)
    }

    /// The pause after `errors` failed or partly failed batches in a row (at least one):
    /// `min_retry_delay` doubling per error, no jitter (one relay's own rhythm), capped at
    /// [`MAX_PAUSE`] and at [`MAX_PAUSE_DOUBLINGS`] doublings.
    pub(crate) fn pause(&self, errors: u32) -> Duration {
        let max = self
            .min_retry_delay
            .saturating_mul(1 << MAX_PAUSE_DOUBLINGS)
            .min(MAX_PAUSE);
        ExponentialBackoff::new(self.min_retry_delay.min(max), max)
            .with_jitter(Jitter::None)
            .ceiling(errors.saturating_sub(1))
    }
}

/// The longest pause of a relay between failing batches.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// A relay's pause between failing batches doubles at most this many times: with a small
/// `min_retry_delay` (tests, latency-sensitive set-ups) it stays well under [`MAX_PAUSE`].
const MAX_PAUSE_DOUBLINGS: u32 = 10;
