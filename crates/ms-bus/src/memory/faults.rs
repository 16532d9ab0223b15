//! Faults the memory bus injects, so that application tests meet the failures real brokers
//! produce: duplicates, delays, reordering, and acks that are lost.

use std::time::Duration;

/// Which faults to inject, each with a probability in `0.0..=1.0`, drawn from a seeded
/// generator so that a failing test replays the same faults.
///
/// ```
/// use std::time::Duration;
/// use ms_bus::memory::Faults;
///
/// let faults = Faults::seeded(7)
///     .duplicate(0.1)
///     .delay(0.05, Duration::from_millis(20))
///     .reorder(0.1)
///     .drop_before_ack(0.02);
/// assert_eq!(faults.seed(), 7);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    pub(super) seed: u64,
    pub(super) duplicate: f64,
    pub(super) delay: f64,
    pub(super) max_delay: Duration,
    pub(super) reorder: f64,
    pub(super) drop_before_ack: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Self::seeded(0)
    }
}

impl Faults {
    /// No faults, with `seed` for the ones you turn on.
    pub fn seeded(seed: u64) -> Self {
        Self {
            seed,
            duplicate: 0.0,
            delay: 0.0,
            max_delay: Duration::ZERO,
            reorder: 0.0,
            drop_before_ack: 0.0,
        }
    }

    /// Delivers a published message twice with this probability (to each group).
    #[must_use]
    pub fn duplicate(mut self, probability: f64) -> Self {
        self.duplicate = probability.clamp(0.0, 1.0);
        self
    }

    /// Holds a published message back for up to `max` with this probability.
    #[must_use]
    pub fn delay(mut self, probability: f64, max: Duration) -> Self {
        self.delay = probability.clamp(0.0, 1.0);
        self.max_delay = max;
        self
    }

    /// Queues a published message at a random position instead of last, with this
    /// probability.
    #[must_use]
    pub fn reorder(mut self, probability: f64) -> Self {
        self.reorder = probability.clamp(0.0, 1.0);
        self
    }

    /// Loses an ack with this probability: the handler succeeded, the broker never heard,
    /// and the message is delivered again.
    #[must_use]
    pub fn drop_before_ack(mut self, probability: f64) -> Self {
        self.drop_before_ack = probability.clamp(0.0, 1.0);
        self
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub(super) fn is_none(&self) -> bool {
        self.duplicate == 0.0
            && self.delay == 0.0
            && self.reorder == 0.0
            && self.drop_before_ack == 0.0
    }
}
