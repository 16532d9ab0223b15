//! The relay's settings and their defaults.

use std::time::Duration;

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
    #[default]
    Delete,
    /// Marked published and deleted after this long, in bounded batches, by the relay (an
    /// audit trail, or replay from the table).
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
    /// The delay before a row's next attempt after `attempts` failures: exponential, with
    /// "equal jitter" so that rows failing together do not come back together.
    pub(crate) fn retry_delay(&self, attempts: i32) -> Duration {
        let exp = u32::try_from(attempts.clamp(0, 20)).unwrap_or(0);
        let full = self
            .min_retry_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_retry_delay);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }
}
