//! What a runner does when a projection cannot apply an event.

use std::time::Duration;

use ms_resilience::backoff::{ExponentialBackoff, Jitter};

/// The default number of retries of a transient failure before the policy's last resort.
pub const DEFAULT_RETRIES: u32 = 5;
/// The default first retry delay; it doubles per retry, with jitter.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// The default longest retry delay.
pub const DEFAULT_MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// What happens after the retries are spent (or at once, for a permanent error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LastResort {
    /// Park the event in the dead-letter table with its error and go on. With `block_key`,
    /// the later events of its partition key are parked behind it (in order) until it is
    /// replayed or discarded, so the key's read model never sees them out of order (Axon's
    /// sequenced dead letters); other keys flow.
    Park {
        /// Park the key's later events too.
        block_key: bool,
    },
    /// Stop the runner: it reports the event and its error, and resumes at that event when
    /// started again.
    Stop,
}

/// A projection's error policy: retry transient failures with exponential backoff and
/// jitter, then the [`LastResort`]. Permanent failures
/// ([`ApplyError::permanent`](crate::ApplyError::permanent)) go to the last resort at once.
///
/// The default parks the event and blocks its key, after [`DEFAULT_RETRIES`] retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorPolicy {
    pub(crate) retries: u32,
    pub(crate) initial_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) last_resort: LastResort,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        Self::park_key()
    }
}

impl ErrorPolicy {
    fn with(last_resort: LastResort) -> Self {
        Self {
            retries: DEFAULT_RETRIES,
            initial_delay: DEFAULT_RETRY_DELAY,
            max_delay: DEFAULT_MAX_RETRY_DELAY,
            last_resort,
        }
    }

    /// Park the failing event and the later events of its key.
    pub fn park_key() -> Self {
        Self::with(LastResort::Park { block_key: true })
    }

    /// Park the failing event only; its key's later events go on.
    pub fn park_event() -> Self {
        Self::with(LastResort::Park { block_key: false })
    }

    /// Stop the runner.
    pub fn stop() -> Self {
        Self::with(LastResort::Stop)
    }

    /// Retries of a transient failure before the last resort (`u32::MAX`: retry forever).
    #[must_use]
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The first retry delay and the longest one.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_delay = initial;
        self.max_delay = max.max(initial);
        self
    }

    /// The last resort.
    pub fn last_resort(&self) -> LastResort {
        self.last_resort
    }

    /// The delay before retry `attempt` (1-based): doubling, capped, with "equal jitter"
    /// (half fixed, half random) so that retries of many segments do not stay in step.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        ExponentialBackoff::new(self.initial_delay, self.max_delay)
            .with_jitter(Jitter::Equal)
            .delay(attempt.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_stay_under_the_cap() {
        let policy =
            ErrorPolicy::park_key().backoff(Duration::from_millis(100), Duration::from_secs(1));
        for attempt in 1..40 {
            let delay = policy.delay(attempt);
            let full = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(Duration::from_secs(1));
            assert!(
                delay >= full / 2 && delay <= full,
                "attempt {attempt}: {delay:?}"
            );
        }
    }
}
