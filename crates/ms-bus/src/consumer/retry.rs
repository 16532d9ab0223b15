//! When a failed message is delivered again, and when the consumer gives up on it.

use std::time::Duration;

use ms_resilience::backoff::{ExponentialBackoff, Jitter};

/// How many deliveries a message gets before it is dead-lettered, unless
/// [`RetryPolicy::max_deliveries`] says otherwise.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
/// The delay before the second delivery, unless [`RetryPolicy::initial_delay`] says otherwise.
pub const DEFAULT_INITIAL_DELAY: Duration = Duration::from_secs(1);
/// The longest delay between deliveries, unless [`RetryPolicy::max_delay`] says otherwise.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(300);

/// Exponential backoff with equal jitter between deliveries of a failing message, and the
/// maximum number of deliveries.
///
/// The delay after delivery `n` is `initial · 2ⁿ⁻¹`, capped at `max_delay`, of which the upper
/// half is random (equal jitter): failing messages of one outage do not all come back at once,
/// and no delay is shorter than half the nominal one.
///
/// ```
/// use std::time::Duration;
/// use ms_bus::consumer::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .max_deliveries(3)
///     .initial_delay(Duration::from_millis(100))
///     .max_delay(Duration::from_millis(150));
/// assert!((50..=100).contains(&policy.delay(1).as_millis()));
/// assert!((75..=150).contains(&policy.delay(2).as_millis()));
/// assert!((75..=150).contains(&policy.delay(9).as_millis()));
/// assert!(!policy.gives_up(2));
/// assert!(policy.gives_up(3));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_deliveries: u32,
    initial_delay: Duration,
    max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            initial_delay: DEFAULT_INITIAL_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
        }
    }
}

impl RetryPolicy {
    /// Sets how many deliveries a message gets (at least 1: then a failure dead-letters it).
    #[must_use]
    pub fn max_deliveries(mut self, max: u32) -> Self {
        self.max_deliveries = max.max(1);
        self
    }

    /// Sets the delay before the second delivery.
    #[must_use]
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets the longest delay.
    #[must_use]
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The configured maximum number of deliveries.
    pub fn max_deliveries_count(&self) -> u32 {
        self.max_deliveries
    }

    /// Whether a message that failed on delivery `attempt` goes to the dead letter.
    pub fn gives_up(&self, attempt: u32) -> bool {
        attempt >= self.max_deliveries
    }

    /// The delay after a failure on delivery `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.backoff().delay(attempt.saturating_sub(1))
    }

    /// The schedule as ms-resilience's backoff: equal jitter from the initial delay up to the
    /// longest. (A longest delay below the initial one makes every delay the longest one.)
    pub(crate) fn backoff(&self) -> ExponentialBackoff {
        ExponentialBackoff::new(self.initial_delay.min(self.max_delay), self.max_delay)
            .with_jitter(Jitter::Equal)
    }
}
