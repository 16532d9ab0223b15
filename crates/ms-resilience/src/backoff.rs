//! Exponential backoff with jitter: how long to wait before the next attempt.
//!
//! ```
//! use std::time::Duration;
//! use ms_resilience::backoff::{ExponentialBackoff, Jitter};
//!
//! let plain = ExponentialBackoff::new(Duration::from_millis(50), Duration::from_millis(300))
//!     .with_jitter(Jitter::None);
//! let delays: Vec<u64> = plain.delays().take(5).map(|d| d.as_millis() as u64).collect();
//! assert_eq!(delays, [50, 100, 200, 300, 300]);
//! ```
//!
//! The jitter strategies are the ones compared in Marc Brooker's "Exponential Backoff And
//! Jitter" (AWS Architecture Blog, 2015). Let `ceiling(n) = min(max, initial * multiplier^n)`:
//!
//! | [`Jitter`] | delay before retry `n` |
//! |---|---|
//! | `None` | `ceiling(n)` |
//! | `Full` (default) | uniform in `[0, ceiling(n)]` |
//! | `Equal` | `ceiling(n) / 2` + uniform in `[0, ceiling(n) / 2]` |
//! | `Decorrelated` | `min(max, uniform in [initial, previous * 3])` |
//!
//! Full jitter spreads retries best and is the default; equal jitter never waits less than half
//! the ceiling; decorrelated jitter grows from the previous delay instead of the attempt count.

use std::time::Duration;

/// The default growth factor between attempts.
pub const DEFAULT_MULTIPLIER: f64 = 2.0;

/// How random each delay is. See the [module docs](self) for the formulas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness: every client waits exactly the same.
    None,
    /// Uniform in `[0, ceiling]`.
    #[default]
    Full,
    /// Half the ceiling plus uniform in `[0, ceiling / 2]`.
    Equal,
    /// Uniform in `[initial, previous * 3]`, capped at the maximum.
    Decorrelated,
}

/// An exponential backoff schedule. Cheap to clone; [`delays`](Self::delays) starts a new
/// sequence each time it is called.
#[derive(Debug, Clone, PartialEq)]
pub struct ExponentialBackoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: Jitter,
    seed: Option<u64>,
}

impl ExponentialBackoff {
    /// A schedule that starts at `initial`, grows by [`DEFAULT_MULTIPLIER`] per attempt, never
    /// exceeds `max`, and uses [`Jitter::Full`]. A `max` below `initial` is raised to `initial`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            multiplier: DEFAULT_MULTIPLIER,
            jitter: Jitter::default(),
            seed: None,
        }
    }

    /// Sets the growth factor. Values below 1 (or not finite) are treated as 1: a backoff never
    /// shrinks.
    #[must_use]
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() && multiplier >= 1.0 {
            multiplier
        } else {
            1.0
        };
        self
    }

    /// Sets the jitter strategy.
    #[must_use]
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Seeds the random source, so that a test sees the same delays every run.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The delay before the first retry.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The jitter strategy.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// An endless sequence of delays: the `n`-th item is the wait before retry `n` (from 0).
    pub fn delays(&self) -> Delays {
        Delays {
            schedule: self.clone(),
            attempt: 0,
            previous: self.initial,
            rng: self
                .seed
                .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
        }
    }

    /// One delay for retry `attempt` (from 0), drawn on its own, for callers that keep an
    /// attempt count (a message's delivery count, a row's failures) rather than a [`Delays`]
    /// sequence. `None`, `Full` and `Equal` draw exactly as the `attempt`-th item of
    /// [`delays`](Self::delays) does; `Decorrelated`, which grows from the previous delay, takes
    /// `ceiling(attempt - 1)` as that previous delay. A seeded schedule gives the same delay for
    /// the same attempt every time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ms_resilience::backoff::{ExponentialBackoff, Jitter};
    ///
    /// let b = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(1))
    ///     .with_jitter(Jitter::Equal);
    /// let d = b.delay(2); // ceiling 400 ms: equal jitter keeps it in [200, 400] ms
    /// assert!(d >= Duration::from_millis(200) && d <= Duration::from_millis(400));
    /// ```
    pub fn delay(&self, attempt: u32) -> Duration {
        let mut rng = self.seed.map_or_else(fastrand::Rng::new, |seed| {
            fastrand::Rng::with_seed(seed ^ u64::from(attempt).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        });
        let previous = attempt
            .checked_sub(1)
            .map_or(self.initial, |before| self.ceiling(before));
        draw(self, self.ceiling(attempt), previous, &mut rng)
    }

    /// The ceiling for retry `attempt`: `min(max, initial * multiplier^attempt)`, computed
    /// without overflow for any attempt count.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .powi(i32::try_from(attempt).unwrap_or(i32::MAX));
        let secs = self.initial.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

/// The delays of one [`ExponentialBackoff`] sequence. Never ends; take as many as you retry.
#[derive(Debug, Clone)]
pub struct Delays {
    schedule: ExponentialBackoff,
    attempt: u32,
    previous: Duration,
    rng: fastrand::Rng,
}

/// Uniform in `[low, high]` (inclusive), at nanosecond resolution.
fn uniform(rng: &mut fastrand::Rng, low: Duration, high: Duration) -> Duration {
    let low_ns = saturating_nanos(low);
    let high_ns = saturating_nanos(high).max(low_ns);
    Duration::from_nanos(rng.u64(low_ns..=high_ns))
}

fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The delay for a retry whose ceiling is `ceiling`, after a delay of `previous`.
fn draw(
    schedule: &ExponentialBackoff,
    ceiling: Duration,
    previous: Duration,
    rng: &mut fastrand::Rng,
) -> Duration {
    match schedule.jitter {
        Jitter::None => ceiling,
        Jitter::Full => uniform(rng, Duration::ZERO, ceiling),
        Jitter::Equal => {
            let half = ceiling / 2;
            half + uniform(rng, Duration::ZERO, ceiling.saturating_sub(half))
        }
        Jitter::Decorrelated => {
            uniform(rng, schedule.initial, previous.saturating_mul(3)).min(schedule.max)
        }
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let ceiling = self.schedule.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let delay = draw(&self.schedule, ceiling, self.previous, &mut self.rng);
        self.previous = delay.max(self.schedule.initial);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceiling_grows_then_caps_and_never_overflows() {
        let b = ExponentialBackoff::new(10 * MS, 1000 * MS);
        assert_eq!(b.ceiling(0), 10 * MS);
        assert_eq!(b.ceiling(1), 20 * MS);
        assert_eq!(b.ceiling(6), 640 * MS);
        assert_eq!(b.ceiling(7), 1000 * MS);
        assert_eq!(b.ceiling(u32::MAX), 1000 * MS);
    }

    #[test]
    fn every_jitter_stays_within_its_bounds() {
        for jitter in [
            Jitter::None,
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
        ] {
            for seed in 0..50 {
                let b = ExponentialBackoff::new(10 * MS, 500 * MS)
                    .with_jitter(jitter)
                    .with_seed(seed);
                let mut previous = b.initial();
                for (n, d) in b.delays().take(20).enumerate() {
                    let ceiling = b.ceiling(u32::try_from(n).unwrap());
                    match jitter {
                        Jitter::None => assert_eq!(d, ceiling),
                        Jitter::Full => assert!(d <= ceiling),
                        Jitter::Equal => assert!(d >= ceiling / 2 && d <= ceiling),
                        Jitter::Decorrelated => {
                            assert!(d >= b.initial() && d <= b.max());
                            assert!(d <= previous * 3);
                        }
                    }
                    previous = d.max(b.initial());
                }
            }
        }
    }

    #[test]
    fn full_jitter_actually_spreads_delays() {
        let b = ExponentialBackoff::new(100 * MS, 100 * MS).with_seed(7);
        let delays: Vec<_> = b.delays().take(200).collect();
        let low = delays.iter().filter(|d| **d < 50 * MS).count();
        // Uniform in [0, 100 ms]: about half below 50 ms. 60..140 out of 200 is a wide margin.
        assert!((60..140).contains(&low), "{low} of 200 below half");
    }

    #[test]
    fn seeded_schedules_repeat_and_bad_multipliers_do_not_shrink() {
        let b = ExponentialBackoff::new(MS, 50 * MS).with_seed(3);
        assert_eq!(
            b.delays().take(10).collect::<Vec<_>>(),
            b.delays().take(10).collect::<Vec<_>>()
        );
        let flat = ExponentialBackoff::new(5 * MS, 50 * MS)
            .with_multiplier(0.5)
            .with_jitter(Jitter::None);
        assert!(flat.delays().take(5).all(|d| d == 5 * MS));
        let nan = ExponentialBackoff::new(5 * MS, 50 * MS).with_multiplier(f64::NAN);
        assert_eq!(nan.ceiling(3), 5 * MS);
    }

    #[test]
    fn a_single_delay_draws_like_the_sequence() {
        for jitter in [
            Jitter::None,
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
        ] {
            let b = ExponentialBackoff::new(10 * MS, 500 * MS).with_jitter(jitter);
            for attempt in 0..40 {
                let ceiling = b.ceiling(attempt);
                let d = b.delay(attempt);
                match jitter {
                    Jitter::None => assert_eq!(d, ceiling),
                    Jitter::Full => assert!(d <= ceiling),
                    Jitter::Equal => assert!(d >= ceiling / 2 && d <= ceiling),
                    Jitter::Decorrelated => assert!(d >= b.initial() && d <= b.max()),
                }
            }
        }
        let seeded = ExponentialBackoff::new(10 * MS, 500 * MS).with_seed(9);
        assert_eq!(seeded.delay(4), seeded.delay(4));
        let spread: std::collections::HashSet<_> = (0..50)
            .map(|_| ExponentialBackoff::new(MS, MS).delay(0))
            .collect();
        assert!(spread.len() > 1, "unseeded delays are random");
    }
}
