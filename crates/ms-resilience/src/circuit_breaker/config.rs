//! The breaker's configuration, its builder, and Resilience4j's defaults as named constants.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{CircuitBreaker, StateTransition};
use crate::backoff::ExponentialBackoff;

/// Resilience4j's `failureRateThreshold`: open when at least this percentage of the calls in
/// the window failed.
pub const DEFAULT_FAILURE_RATE_THRESHOLD: f64 = 50.0;
/// Resilience4j's `slidingWindowSize` (count-based by default): judge the last 100 calls.
pub const DEFAULT_SLIDING_WINDOW_SIZE: u32 = 100;
/// Resilience4j's `minimumNumberOfCalls`: judge no rate before the window holds 100 calls.
pub const DEFAULT_MINIMUM_NUMBER_OF_CALLS: u32 = 100;
/// Resilience4j's `waitDurationInOpenState`: stay open 60 s before letting trial calls through.
pub const DEFAULT_WAIT_DURATION_IN_OPEN_STATE: Duration = Duration::from_secs(60);
/// Resilience4j's `permittedNumberOfCallsInHalfOpenState`: 10 trial calls decide.
pub const DEFAULT_PERMITTED_CALLS_IN_HALF_OPEN_STATE: u32 = 10;
/// Resilience4j's `slowCallDurationThreshold`: a call that takes longer than 60 s is slow.
pub const DEFAULT_SLOW_CALL_DURATION_THRESHOLD: Duration = Duration::from_secs(60);
/// Resilience4j's `slowCallRateThreshold`: open when 100 % of the calls in the window were slow.
pub const DEFAULT_SLOW_CALL_RATE_THRESHOLD: f64 = 100.0;
/// The largest count-based window (and the most calls per second in one time-window bucket):
/// the counters are packed three to a 64-bit word with room for in-flight updates.
pub const MAX_WINDOW_SIZE: u32 = (1 << 19) - 1;
/// The most one-second buckets of a time-based window (17 minutes).
pub const MAX_WINDOW_SECONDS: u32 = 1024;

/// Which recent calls the failure and slow-call rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last `n` calls: a ring of outcomes, each call replacing the oldest.
    Count(u32),
    /// The calls of the last `n` seconds, in one-second buckets. Every recorded call reads the
    /// clock, so this costs a little more per call than [`Count`](Self::Count).
    Time(u32),
}

/// How long the breaker stays open before it lets trial calls through.
#[derive(Debug, Clone, PartialEq)]
pub enum OpenDuration {
    /// Always the same wait.
    Fixed(Duration),
    /// A backoff: the `n`-th consecutive opening (without closing in between) waits the
    /// schedule's `n`-th delay, jitter included, so a service that keeps failing its trials is
    /// probed less and less often, and a fleet of clients does not probe in lockstep.
    Backoff(ExponentialBackoff),
}

pub(crate) type Listener = Arc<dyn Fn(&StateTransition) + Send + Sync>;

/// A breaker's settings. Build one with [`CircuitBreaker::builder`].
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) name: Arc<str>,
    pub(crate) failure_rate_threshold: f64,
    pub(crate) slow_call_rate_threshold: f64,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) window: SlidingWindow,
    pub(crate) minimum_calls: u32,
    pub(crate) open_duration: OpenDuration,
    pub(crate) half_open_calls: u32,
    /// How many trials must have finished before the half-open state decides:
    /// `min(minimum_calls, half_open_calls)`, from the minimum as set (before the build clamps
    /// it to a count window's size), as Resilience4j's half-open window computes it.
    pub(crate) half_open_minimum: u32,
    pub(crate) pending_while_open: bool,
    pub(crate) count_successful_calls: bool,
    pub(crate) listeners: Vec<Listener>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("failure_rate_threshold", &self.failure_rate_threshold)
            .field("slow_call_rate_threshold", &self.slow_call_rate_threshold)
            .field("slow_call_duration", &self.slow_call_duration)
            .field("window", &self.window)
            .field("minimum_calls", &self.minimum_calls)
            .field("open_duration", &self.open_duration)
            .field("half_open_calls", &self.half_open_calls)
            .field("half_open_minimum", &self.half_open_minimum)
            .field("pending_while_open", &self.pending_while_open)
            .field("count_successful_calls", &self.count_successful_calls)
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

/// Builds a [`CircuitBreaker`]. Every setting starts at Resilience4j's default (the `DEFAULT_*`
/// constants of this module) except slow-call detection, which is off until
/// [`slow_call_duration`](Self::slow_call_duration) turns it on: timing every call reads the
/// clock twice, which costs more than the rest of the breaker's hot path.
///
/// Out-of-range values are brought into range rather than rejected: rates are clamped to
/// `0..=100` (NaN becomes 100), sizes to at least 1 and at most [`MAX_WINDOW_SIZE`] /
/// [`MAX_WINDOW_SECONDS`], and the minimum number of calls to the window size (for a
/// count-based window).
#[derive(Debug, Clone)]
#[must_use]
pub struct CircuitBreakerBuilder {
    config: Config,
}

impl Default for CircuitBreakerBuilder {
    fn default() -> Self {
        Self {
            config: Config {
                name: Arc::from("default"),
                failure_rate_threshold: DEFAULT_FAILURE_RATE_THRESHOLD,
                slow_call_rate_threshold: DEFAULT_SLOW_CALL_RATE_THRESHOLD,
                slow_call_duration: None,
                window: SlidingWindow::Count(DEFAULT_SLIDING_WINDOW_SIZE),
                minimum_calls: DEFAULT_MINIMUM_NUMBER_OF_CALLS,
                open_duration: OpenDuration::Fixed(DEFAULT_WAIT_DURATION_IN_OPEN_STATE),
                half_open_calls: DEFAULT_PERMITTED_CALLS_IN_HALF_OPEN_STATE,
                half_open_minimum: DEFAULT_PERMITTED_CALLS_IN_HALF_OPEN_STATE,
                pending_while_open: false,
                count_successful_calls: false,
                listeners: Vec::new(),
            },
        }
    }
}

fn clamp_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        100.0
    } else {
        rate.clamp(0.0, 100.0)
    }
}

impl CircuitBreakerBuilder {
    /// Names the breaker in errors, events and `tracing` fields.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Opens when at least this percentage of the window's calls failed.
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.config.failure_rate_threshold = clamp_rate(percent);
        self
    }

    /// Counts calls that take longer than `duration` as slow (whatever their outcome), and turns
    /// slow-call detection on. A call of exactly `duration` is not slow, as in Resilience4j.
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.config.slow_call_duration = Some(duration);
        self
    }

    /// Opens when at least this percentage of the window's calls were slow.
    pub fn slow_call_rate_threshold(mut self, percent: f64) -> Self {
        self.config.slow_call_rate_threshold = clamp_rate(percent);
        self
    }

    /// Which calls the rates are computed over.
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.config.window = match window {
            SlidingWindow::Count(n) => SlidingWindow::Count(n.clamp(1, MAX_WINDOW_SIZE)),
            SlidingWindow::Time(s) => SlidingWindow::Time(s.clamp(1, MAX_WINDOW_SECONDS)),
        };
        self
    }

    /// How many calls the window must hold before a rate is judged. The half-open state judges
    /// its trials once `min(calls, permitted_calls_in_half_open)` of them have finished.
    pub fn minimum_number_of_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls.max(1);
        self
    }

    /// How long to stay open: a fixed [`Duration`] or an [`ExponentialBackoff`].
    pub fn open_duration(mut self, duration: impl Into<OpenDuration>) -> Self {
        self.config.open_duration = duration.into();
        self
    }

    /// How many trial calls the half-open state lets through. Once
    /// `min(minimum_number_of_calls, calls)` of them have finished, their failure (and
    /// slow-call) rate decides, after each trial that finishes, whether the breaker closes or
    /// opens again; trials still running then no longer count.
    pub fn permitted_calls_in_half_open(mut self, calls: u32) -> Self {
        self.config.half_open_calls = calls.max(1);
        self
    }

    /// While open, make the service's `poll_ready` return `Pending` (and wake it when trial
    /// calls are allowed) instead of failing calls with [`Error::CircuitOpen`](crate::Error).
    /// Turn this on for endpoints inside `tower::balance`, which routes around services that
    /// are not ready but drops services whose `poll_ready` fails.
    pub fn pending_while_open(mut self, pending: bool) -> Self {
        self.config.pending_while_open = pending;
        self
    }

    /// Counts successful calls in [`metrics`](CircuitBreaker::metrics). Off by default: it adds
    /// an atomic add on a shared counter to every call, more than the rest of the breaker costs
    /// a healthy service.
    pub fn count_successful_calls(mut self, count: bool) -> Self {
        self.config.count_successful_calls = count;
        self
    }

    /// Calls `listener` on every state change, after the change, on the thread that caused it.
    /// Keep it short; it is never called on the hot path. A transition to the state the breaker
    /// is already in ([`reset`](CircuitBreaker::reset) of a closed breaker,
    /// [`force_open`](CircuitBreaker::force_open) of a forced-open one) changes no state and
    /// calls no listener, as in Resilience4j.
    pub fn on_state_transition(
        mut self,
        listener: impl Fn(&StateTransition) + Send + Sync + 'static,
    ) -> Self {
        self.config.listeners.push(Arc::new(listener));
        self
    }

    /// Builds the breaker.
    pub fn build(self) -> CircuitBreaker {
        let mut config = self.config;
        config.half_open_minimum = config.minimum_calls.min(config.half_open_calls);
        if let SlidingWindow::Count(n) = config.window {
            config.minimum_calls = config.minimum_calls.min(n);
        }
        CircuitBreaker::from_config(config)
    }
}

impl From<Duration> for OpenDuration {
    fn from(duration: Duration) -> Self {
        Self::Fixed(duration)
    }
}

impl From<ExponentialBackoff> for OpenDuration {
    fn from(backoff: ExponentialBackoff) -> Self {
        Self::Backoff(backoff)
    }
}
