//! A circuit breaker for tower services: stops calling a failing service, lets a few trial
//! calls through after a while, and closes again when they succeed.
//!
//! ```
//! use std::time::Duration;
//! use ms_resilience::circuit_breaker::{CircuitBreaker, SlidingWindow, State};
//! use ms_resilience::{BoxError, Error};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let breaker = CircuitBreaker::builder()
//!     .name("payments")
//!     .sliding_window(SlidingWindow::Count(10))
//!     .minimum_number_of_calls(4)
//!     .failure_rate_threshold(50.0)
//!     .open_duration(Duration::from_secs(30))
//!     .build();
//! let mut service = ServiceBuilder::new()
//!     .layer(breaker.layer())
//!     .service_fn(|fail: bool| async move {
//!         if fail { Err::<&str, BoxError>("boom".into()) } else { Ok("paid") }
//!     });
//!
//! for fail in [false, true, false, true] {
//!     let _ = service.ready().await.unwrap().call(fail).await;
//! }
//! // 2 failures in 4 calls: 50 %, the threshold. The next call fails fast.
//! assert_eq!(breaker.state(), State::Open);
//! let error = service.ready().await.unwrap().call(false).await.unwrap_err();
//! assert!(matches!(Error::find(&*error), Some(Error::CircuitOpen { .. })));
//!
//! // After the open duration, trial calls decide.
//! tokio::time::advance(Duration::from_secs(30)).await;
//! for _ in 0..10 {
//!     service.ready().await.unwrap().call(false).await.unwrap();
//! }
//! assert_eq!(breaker.state(), State::Closed);
//! # }
//! ```
//!
//! # Rules
//!
//! Resilience4j's model and defaults (see [`config`] for the constants), rule by rule, checked
//! against its `CircuitBreakerStateMachine` and `CircuitBreakerMetrics`; where this breaker
//! departs from it, [the section below](#where-it-departs-from-resilience4j) says how and why.
//!
//! - **Closed**: every call goes through and its outcome is recorded in a sliding window, the
//!   last N calls ([`SlidingWindow::Count`], a true ring: each call replaces the oldest) or the
//!   last N seconds ([`SlidingWindow::Time`]). Once the window holds
//!   [`minimum_number_of_calls`](CircuitBreakerBuilder::minimum_number_of_calls), a failure
//!   rate at or above the threshold, or a slow-call rate at or above its threshold, opens the
//!   breaker. A call is slow when it takes longer than the
//!   [`slow_call_duration`](CircuitBreakerBuilder::slow_call_duration); one of exactly that
//!   duration is not.
//! - **Open**: calls fail fast with [`Error::CircuitOpen`] for the open duration (fixed, or an
//!   [`ExponentialBackoff`](crate::backoff::ExponentialBackoff) over consecutive openings).
//!   The first call after it moves the breaker to half-open.
//! - **Half-open**: exactly [`permitted_calls_in_half_open`](CircuitBreakerBuilder::permitted_calls_in_half_open)
//!   trial calls go through; the others fail fast. Once `min(minimum_number_of_calls,
//!   permitted_calls_in_half_open)` trials have finished, their failure (or slow-call) rate
//!   decides, after each trial that finishes: below the threshold closes, at or above opens
//!   again. With the defaults (100 and 10) that is when all 10 trials are in; with a minimum
//!   of 2 and 4 permitted trials, two successes close the breaker. A trial call that is
//!   cancelled (its future dropped) gives its permit back.
//! - **Manual control**: [`force_open`](CircuitBreaker::force_open),
//!   [`force_closed`](CircuitBreaker::force_closed) and [`reset`](CircuitBreaker::reset). A
//!   transition to the state the breaker is already in (a reset of a closed breaker, a forced
//!   state forced again) is not a state change: listeners, `tracing`, the
//!   [`watch_state`](CircuitBreaker::watch_state) channel and the state gauge hear nothing.
//!
//! # Where it departs from Resilience4j
//!
//! - **Slow-call detection is off** until a slow-call duration is set (Resilience4j times
//!   every call against 60 s): timing a call reads the clock twice, which costs more than the
//!   rest of the closed-state path.
//! - **A half-open trial that finishes after its trial was decided is not counted** (it shows
//!   in [`ignored_calls`](CircuitBreakerMetrics::ignored_calls)); Resilience4j records it in
//!   the window of the state the breaker moved to. Each call is recorded under the state word
//!   it was admitted with, and a trial's outcome speaks for the probe it belonged to, not for
//!   the fresh window of the closed state (nor against a new open duration). A call admitted
//!   while closed that finishes after the breaker opened is recorded, as in Resilience4j.
//! - **No reset event**: Resilience4j publishes a separate `onReset` event on every reset; here
//!   listeners see state transitions only, so resetting a closed breaker (which empties its
//!   window) tells no one.
//! - **Fewer states and timers**: [`State::ForcedClosed`] is Resilience4j's `DISABLED` (every
//!   call goes through, nothing is recorded); there is no `METRICS_ONLY` state, no
//!   `maxWaitDurationInHalfOpenState` and no automatic transition from open to half-open
//!   (Resilience4j's default too: the next call after the open duration moves it).
//!
//! What counts as a failure is the [`Classify`](crate::classify::Classify) classifier's call:
//! by default every `Err` ([`ErrorsAsFailures`]); for HTTP
//! and gRPC use [`HttpClassifier`](crate::classify::HttpClassifier) and
//! [`GrpcClassifier`](crate::classify::GrpcClassifier).
//!
//! # Where an open circuit shows: `call`, or `poll_ready`
//!
//! By default `poll_ready` stays ready while the breaker is open (it only asks the inner
//! service) and `call` returns a future that fails at once with [`Error::CircuitOpen`]: a caller of one service learns immediately
//! and can degrade. Inside `tower::balance` that is wrong: the balancer drops an endpoint whose
//! `poll_ready` fails, and would send calls to one whose `poll_ready` succeeds. With
//! [`pending_while_open(true)`](CircuitBreakerBuilder::pending_while_open) `poll_ready` instead
//! returns `Pending` while the breaker is open (and wakes the task when trial calls are
//! allowed), so the balancer routes around the open endpoint and comes back to it later.
//!
//! # Sharing
//!
//! A [`CircuitBreaker`] is a handle: clones share one breaker, and so do all services made by
//! its [`layer`](CircuitBreaker::layer) and their clones. For one breaker per endpoint from a
//! single layer, see [`KeyedCircuitBreakerLayer`].
//!
//! # Cost
//!
//! In the closed state with a count window, a success while the window holds only successes
//! costs two loads (the state word and the window's packed totals) and the `Arc` clone that
//! lets the response future outlive the service: nothing shared is written. Any other record
//! advances the ring's cursor (one compare-and-swap), loads the slot and, when the outcome
//! differs from the one it replaces, swaps it and adds the difference to the packed totals. No
//! lock, no allocation, no clock read unless slow-call detection or a time window is on.
//! State changes take a mutex; half-open trials too (at most a handful of calls). See
//! `BENCHMARKS.md` for figures against other breakers.

pub mod config;
mod future;
mod keyed;
mod layer;
mod service;
pub(crate) mod snapshot;
pub(crate) mod state;
mod window;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use self::config::{Config, OpenDuration};
use self::window::{CountWindow, Recorded, TimeWindow};
use crate::Error;
use crate::backoff::Delays;
use crate::classify::{ErrorsAsFailures, Outcome};

pub use self::config::{CircuitBreakerBuilder, SlidingWindow};
pub use self::future::ResponseFuture;
pub use self::keyed::{KeyedCircuitBreakerLayer, KeyedCircuitBreakerService};
pub use self::layer::CircuitBreakerLayer;
pub use self::service::CircuitBreakerService;
pub use self::snapshot::CircuitBreakerMetrics;
pub use self::state::{State, StateTransition};
pub use self::window::WindowCounts;

/// A circuit breaker. Cheap to clone: clones share the same breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

#[derive(Debug, Default)]
struct Stats {
    failed: AtomicU64,
    slow: AtomicU64,
    rejected: AtomicU64,
    ignored: AtomicU64,
    /// Only when the builder asked for it.
    successful: AtomicU64,
}

/// The half-open state's trial, guarded by the transition mutex.
#[derive(Debug, Default)]
struct Trial {
    remaining: u32,
    completed: u32,
    failed: u32,
    slow: u32,
}

#[derive(Debug, Default)]
struct Transitions {
    trial: Trial,
    /// The open-duration backoff, from the first opening since the breaker last closed.
    delays: Option<Delays>,
}

#[derive(Debug)]
struct Shared {
    config: Config,
    /// The [`state::Word`]: state and epoch.
    word: AtomicU64,
    window: Window,
    origin: Instant,
    /// When the open state ends, in nanoseconds since `origin`.
    open_until: AtomicU64,
    transitions: Mutex<Transitions>,
    stats: Stats,
    /// The state for [`CircuitBreaker::watch_state`]; written on transitions only.
    state_tx: tokio::sync::watch::Sender<State>,
}

use self::state::Word;

impl CircuitBreaker {
    /// A builder with Resilience4j's defaults.
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::default()
    }

    fn from_config(config: Config) -> Self {
        let window = match config.window {
            SlidingWindow::Count(n) => Window::Count(CountWindow::new(n)),
            SlidingWindow::Time(s) => Window::Time(TimeWindow::new(s)),
        };
        Self {
            shared: Arc::new(Shared {
                config,
                word: AtomicU64::new(Word::new(State::Closed, 0).0),
                window,
                origin: Instant::now(),
                open_until: AtomicU64::new(0),
                transitions: Mutex::new(Transitions::default()),
                stats: Stats::default(),
                state_tx: tokio::sync::watch::Sender::new(State::Closed),
            }),
        }
    }

    /// A layer whose services all use this breaker, counting every `Err` as a failure.
    /// Use [`CircuitBreakerLayer::with_classifier`] for HTTP or gRPC.
    pub fn layer(&self) -> CircuitBreakerLayer<ErrorsAsFailures> {
        CircuitBreakerLayer::new(self.clone())
    }

    /// The breaker's name.
    pub fn name(&self) -> &Arc<str> {
        &self.shared.config.name
    }

    /// The state now. An open breaker whose open duration has passed reports `Open` until a
    /// call arrives and moves it to half-open.
    pub fn state(&self) -> State {
        Word(self.shared.word.load(Ordering::Acquire)).state()
    }

    /// The state, the window and the calls by outcome. The counters cost nothing on the hot
    /// path of a healthy service: only the rarer outcomes (failed, slow, rejected, ignored) are
    /// counted unless [`count_successful_calls`](CircuitBreakerBuilder::count_successful_calls)
    /// is on. Export them to your metrics system by polling this.
    pub fn metrics(&self) -> CircuitBreakerMetrics {
        self.shared.snapshot(self.state())
    }

    /// Publishes [`metrics`](Self::metrics) through the `metrics` facade (see
    /// [`crate::metrics`]): call it from a scrape handler or an interval. State changes
    /// publish on their own.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn export_metrics(&self) {
        self.shared.export_metrics(self.state());
    }

    /// Follows the state from async code (a health check, a dashboard): the receiver sees every
    /// transition's new state. Costs nothing per call; transitions update it.
    pub fn watch_state(&self) -> tokio::sync::watch::Receiver<State> {
        self.shared.state_tx.subscribe()
    }

    /// Opens the breaker until [`reset`](Self::reset), whatever the calls do. Forcing the state
    /// the breaker is already in changes nothing and tells no one.
    pub fn force_open(&self) {
        self.shared.force(State::ForcedOpen);
    }

    /// Closes the breaker until [`reset`](Self::reset): every call goes through and nothing is
    /// recorded in the window.
    pub fn force_closed(&self) {
        self.shared.force(State::ForcedClosed);
    }

    /// Back to closed with an empty window, from any state. A closed breaker's window is
    /// emptied without a state change: no listener is called and [`watch_state`](Self::watch_state)
    /// sees nothing (Resilience4j publishes no state transition either).
    pub fn reset(&self) {
        self.shared.force(State::Closed);
    }

    /// Asks to make one call: a [`Permit`] whose [`record`](Permit::record) takes the outcome, or the
    /// [`Error::CircuitOpen`] to fail with. For using the breaker without the tower layer.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit, Error> {
        let word = self.shared.admit();
        if word.is_rejected() {
            Err(self.shared.rejection())
        } else {
            Ok(self.permit(word))
        }
    }

    #[inline]
    pub(crate) fn permit(&self, word: Word) -> Permit {
        self.clone().into_permit(word)
    }

    /// A permit that keeps this handle (no second `Arc` clone when the caller has its own).
    #[inline]
    pub(crate) fn into_permit(self, word: Word) -> Permit {
        let timed = self.times_calls();
        self.into_permit_timed(word, timed)
    }

    /// Whether calls are timed (slow-call detection is on).
    pub(crate) fn times_calls(&self) -> bool {
        self.shared.config.slow_call_duration.is_some()
    }

    /// [`into_permit`](Self::into_permit) for a caller that already knows whether calls are
    /// timed.
    #[inline]
    pub(crate) fn into_permit_timed(self, word: Word, timed: bool) -> Permit {
        let started = if timed {
            self.shared.now_nanos().saturating_add(1)
        } else {
            0
        };
        Permit {
            breaker: Some(self),
            word,
            started,
        }
    }
}

/// Permission to make one call, from [`CircuitBreaker::try_acquire`]. Record the call's outcome
/// with [`record`](Self::record); dropping a permit unrecorded (the call was cancelled) gives a
/// half-open trial permit back.
#[derive(Debug)]
#[must_use = "record the outcome, or drop the permit if the call was cancelled"]
pub struct Permit {
    /// `None` once recorded.
    breaker: Option<CircuitBreaker>,
    word: Word,
    /// When the call started, in nanoseconds since the breaker's origin, plus one; 0 when
    /// slow-call detection is off. A plain `u64` rather than an `Option<Instant>`: the
    /// option's `None` writes only 4 of its 16 bytes, and reading the field back whole then
    /// stalls on store forwarding, which cost more than the rest of the permit.
    started: u64,
}

impl Permit {
    /// A permit for nothing (a rejected call's future holds one).
    pub(crate) fn none() -> Self {
        Self {
            breaker: None,
            word: Word(0),
            started: 0,
        }
    }

    /// Records the call's outcome. Its duration (for slow-call detection) is the time since
    /// the permit was acquired.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        self.finish(outcome);
    }

    /// Records in place: the response future calls this rather than moving the permit out of
    /// itself, since copying it whole right after it was written field by field stalls on
    /// store forwarding.
    #[inline]
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if let Some(breaker) = self.breaker.take() {
            if self.started == 0 {
                breaker.shared.record(self.word, outcome, None);
            } else {
                record_timed(&breaker, self.word, self.started, outcome);
            }
        }
    }
}

/// Records the outcome of a timed call (slow-call detection is on). Out of line: reading the
/// clock costs far more than the call, and the untimed path stays small enough to inline.
#[inline(never)]
fn record_timed(breaker: &CircuitBreaker, word: Word, started: u64, outcome: Outcome) {
    let elapsed = Duration::from_nanos(breaker.shared.now_nanos().saturating_sub(started - 1));
    breaker.shared.record(word, outcome, Some(elapsed));
}

impl Drop for Permit {
    /// A recorded permit (the common case) holds nothing; an unrecorded one is let go out of
    /// line, so that this drop is small enough to be inlined into the response future's.
    #[inline]
    fn drop(&mut self) {
        if let Some(breaker) = self.breaker.take() {
            release_unrecorded(&breaker, self.word);
        }
    }
}

/// Gives back the half-open trial of a permit dropped unrecorded (the call was cancelled).
#[cold]
#[inline(never)]
fn release_unrecorded(breaker: &CircuitBreaker, word: Word) {
    if word.state() == State::HalfOpen {
        breaker.shared.release(word);
    }
}

impl Shared {
    /// The counts, with `state` as the state.
    fn snapshot(&self, state: State) -> CircuitBreakerMetrics {
        let counters = &self.stats;
        let window = match &self.window {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(self.now_seconds()),
        };
        CircuitBreakerMetrics {
            state,
            window,
            successful_calls: self
                .config
                .count_successful_calls
                .then(|| counters.successful.load(Ordering::Relaxed)),
            failed_calls: counters.failed.load(Ordering::Relaxed),
            slow_calls: counters.slow.load(Ordering::Relaxed),
            rejected_calls: counters.rejected.load(Ordering::Relaxed),
            ignored_calls: counters.ignored.load(Ordering::Relaxed),
        }
    }

    #[cfg(feature = "metrics")]
    fn export_metrics(&self, state: State) {
        crate::metrics::export_circuit_breaker(&self.config.name, &self.snapshot(state));
    }

    fn lock(&self) -> MutexGuard<'_, Transitions> {
        // The guarded data stays consistent even if a listener panicked while it was held.
        self.transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn now_nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn now_seconds(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }

    /// The error for a rejected call (and the count of rejections). Separate from [`admit`]
    /// so that admission returns a plain word: a `Result` with an `Error` in it is laid out
    /// with its tag in a 4-byte niche, and moving it right after writing it stalls.
    #[cold]
    pub(crate) fn rejection(&self) -> Error {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        let retry_in = match Word(self.word.load(Ordering::Acquire)).state() {
            State::Open => {
                let until = self.open_until.load(Ordering::Acquire);
                Some(Duration::from_nanos(until.saturating_sub(self.now_nanos())))
            }
            _ => None,
        };
        Error::CircuitOpen {
            name: self.config.name.clone(),
            retry_in,
        }
    }

    /// Admits a call: the word it runs under, or [`Word::REJECTED`].
    #[inline]
    pub(crate) fn admit(&self) -> Word {
        let word = Word(self.word.load(Ordering::Acquire));
        match word.state() {
            State::Closed | State::ForcedClosed => word,
            _ => self.admit_slow(word),
        }
    }

    #[cold]
    fn admit_slow(&self, mut word: Word) -> Word {
        loop {
            match word.state() {
                State::Closed | State::ForcedClosed => return word,
                State::ForcedOpen => return Word::REJECTED,
                State::Open => {
                    if self.now_nanos() < self.open_until.load(Ordering::Acquire) {
                        return Word::REJECTED;
                    }
                    self.transition(word, State::HalfOpen);
                    word = Word(self.word.load(Ordering::Acquire));
                }
                State::HalfOpen => {
                    let mut transitions = self.lock();
                    let current = Word(self.word.load(Ordering::Acquire));
                    if current != word {
                        drop(transitions);
                        word = current;
                        continue;
                    }
                    if transitions.trial.remaining == 0 {
                        return Word::REJECTED;
                    }
                    transitions.trial.remaining -= 1;
                    return word;
                }
            }
        }
    }

    /// Records the outcome of a call admitted under `word`. The healthy case, an untimed
    /// success into a closed count window already full of successes, changes nothing but the
    /// success counter; it is handled here, and the rest out of line, so that the response
    /// future's poll stays small enough to be inlined into its caller.
    #[inline]
    fn record(&self, word: Word, outcome: Outcome, elapsed: Option<Duration>) {
        if matches!(outcome, Outcome::Success)
            && elapsed.is_none()
            && word.state() == State::Closed
            && let Window::Count(window) = &self.window
            && window.is_full_of_successes()
        {
            if self.config.count_successful_calls {
                self.stats.successful.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        self.record_slow(word, outcome, elapsed);
    }

    #[inline(never)]
    fn record_slow(&self, word: Word, outcome: Outcome, elapsed: Option<Duration>) {
        let failure = match outcome {
            Outcome::Success => false,
            Outcome::Failure { .. } => true,
            Outcome::Ignored => {
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                if word.state() == State::HalfOpen {
                    self.release(word);
                }
                return;
            }
        };
        let slow = match (elapsed, self.config.slow_call_duration) {
            // Resilience4j's boundary: slow means longer than the threshold.
            (Some(elapsed), Some(threshold)) => elapsed > threshold,
            _ => false,
        };
        if failure {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        } else if self.config.count_successful_calls {
            self.stats.successful.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            self.stats.slow.fetch_add(1, Ordering::Relaxed);
        }
        let recorded = Recorded { failure, slow };
        match word.state() {
            State::Closed => {
                let counts = match &self.window {
                    Window::Count(w) => w.record(recorded),
                    Window::Time(w) => {
                        w.record(self.now_seconds(), recorded, self.config.minimum_calls)
                    }
                };
                if let Some(counts) = counts
                    && self.trips(counts)
                    && self.word.load(Ordering::Acquire) == word.0
                {
                    self.transition(word, State::Open);
                }
            }
            State::HalfOpen => self.record_trial(word, recorded),
            State::ForcedClosed | State::Open | State::ForcedOpen => {}
        }
    }

    fn trips(&self, counts: WindowCounts) -> bool {
        counts.calls >= self.config.minimum_calls
            && (counts.failure_rate() >= self.config.failure_rate_threshold
                || (self.config.slow_call_duration.is_some()
                    && counts.slow_call_rate() >= self.config.slow_call_rate_threshold))
    }

    #[cold]
    fn record_trial(&self, word: Word, recorded: Recorded) {
        let mut transitions = self.lock();
        if Word(self.word.load(Ordering::Acquire)) != word {
            self.stats.ignored.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let trial = &mut transitions.trial;
        trial.completed += 1;
        trial.failed += u32::from(recorded.failure);
        trial.slow += u32::from(recorded.slow);
        // Resilience4j's half-open window: it judges once it holds
        // min(minimumNumberOfCalls, permittedNumberOfCallsInHalfOpenState) trials, and again
        // after each one until it has decided.
        if trial.completed < self.config.half_open_minimum {
            return;
        }
        let counts = WindowCounts {
            calls: trial.completed,
            failures: trial.failed,
            slow: trial.slow,
        };
        let reopen = counts.failure_rate() >= self.config.failure_rate_threshold
            || (self.config.slow_call_duration.is_some()
                && counts.slow_call_rate() >= self.config.slow_call_rate_threshold);
        let to = if reopen { State::Open } else { State::Closed };
        let change = self.transition_locked(&mut transitions, word, to);
        drop(transitions);
        self.notify(change);
    }

    /// Gives back a half-open trial permit whose call was cancelled or ignored.
    #[cold]
    fn release(&self, word: Word) {
        let mut transitions = self.lock();
        if Word(self.word.load(Ordering::Acquire)) == word {
            transitions.trial.remaining += 1;
        }
    }

    fn force(&self, to: State) {
        let mut transitions = self.lock();
        let current = Word(self.word.load(Ordering::Acquire));
        let change = self.transition_locked(&mut transitions, current, to);
        drop(transitions);
        self.notify(change);
    }

    #[cold]
    fn transition(&self, from: Word, to: State) {
        let mut transitions = self.lock();
        let change = self.transition_locked(&mut transitions, from, to);
        drop(transitions);
        self.notify(change);
    }

    /// Moves from `from` to `to` unless another thread already moved on from `from`.
    fn transition_locked(
        &self,
        transitions: &mut Transitions,
        from: Word,
        to: State,
    ) -> Option<StateTransition> {
        let current = Word(self.word.load(Ordering::Acquire));
        if current != from {
            return None;
        }
        match to {
            State::Open => {
                let wait = match &self.config.open_duration {
                    OpenDuration::Fixed(wait) => *wait,
                    OpenDuration::Backoff(backoff) => transitions
                        .delays
                        .get_or_insert_with(|| backoff.delays())
                        .next()
                        .unwrap_or_else(|| backoff.max()),
                };
                let until = self
                    .now_nanos()
                    .saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX));
                self.open_until.store(until, Ordering::Release);
            }
            State::HalfOpen => {
                transitions.trial = Trial {
                    remaining: self.config.half_open_calls,
                    ..Trial::default()
                };
            }
            State::Closed => {
                transitions.delays = None;
                match &self.window {
                    Window::Count(w) => w.reset(),
                    Window::Time(w) => w.reset(),
                }
            }
            State::ForcedOpen | State::ForcedClosed => {}
        }
        self.word.store(current.next(to).0, Ordering::Release);
        // Entering the state it is in (a reset of a closed breaker, a forced state forced
        // again) still starts the state afresh, but is no change to tell listeners, logs or
        // gauges about: a periodic reset of a healthy breaker would otherwise fire them all.
        if current.state() == to {
            return None;
        }
        Some(StateTransition {
            name: self.config.name.clone(),
            from: current.state(),
            to,
        })
    }

    /// Tells `tracing` and the listeners, outside the lock (a listener may call back into the
    /// breaker).
    fn notify(&self, change: Option<StateTransition>) {
        let Some(change) = change else { return };
        self.state_tx.send_replace(change.to);
        if matches!(change.to, State::Open | State::ForcedOpen) {
            tracing::warn!(breaker = %change.name, from = %change.from, to = %change.to, "circuit breaker opened");
        } else {
            tracing::info!(breaker = %change.name, from = %change.from, to = %change.to, "circuit breaker state changed");
        }
        for listener in &self.config.listeners {
            listener(&change);
        }
        #[cfg(feature = "metrics")]
        self.export_metrics(change.to);
    }
}
