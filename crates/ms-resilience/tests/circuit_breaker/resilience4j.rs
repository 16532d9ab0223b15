//! The rules where this breaker once departed from Resilience4j without saying so, one test
//! each, named after the rule (Resilience4j's `CircuitBreakerStateMachine`,
//! `CircuitBreakerMetrics` and their tests are the reference).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ms_resilience::circuit_breaker::{
    CircuitBreaker, CircuitBreakerBuilder, SlidingWindow, State, StateTransition,
};
use ms_resilience::classify::Outcome;

const FAILED: Outcome = Outcome::Failure { retryable: true };

fn builder(window: u32, minimum: u32, permitted: u32) -> CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(window))
        .minimum_number_of_calls(minimum)
        .failure_rate_threshold(50.0)
        .open_duration(Duration::from_secs(10))
        .permitted_calls_in_half_open(permitted)
}

/// Opens `b` with `calls` failures, waits out the open duration and takes `permitted` trial
/// permits.
async fn trials(
    b: &CircuitBreaker,
    calls: u32,
    permitted: u32,
) -> Vec<ms_resilience::circuit_breaker::Permit> {
    for _ in 0..calls {
        if let Ok(permit) = b.try_acquire() {
            permit.record(FAILED);
        }
    }
    assert_eq!(b.state(), State::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    let permits: Vec<_> = (0..permitted)
        .map(|_| b.try_acquire().expect("a trial permit"))
        .collect();
    assert!(b.try_acquire().is_err(), "exactly the permitted trials");
    permits
}

/// Resilience4j's `CircuitBreakerMetrics.onSuccess`/`onError`: slow means
/// `duration > slowCallDurationThreshold`.
#[tokio::test(start_paused = true)]
async fn a_call_is_slow_only_when_longer_than_the_slow_call_duration() {
    let threshold = Duration::from_secs(2);
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(2))
        .minimum_number_of_calls(2)
        .slow_call_duration(threshold)
        .slow_call_rate_threshold(100.0)
        .build();
    for _ in 0..2 {
        let permit = b.try_acquire().unwrap();
        tokio::time::advance(threshold).await;
        permit.record(Outcome::Success);
    }
    assert_eq!(
        b.metrics().slow_calls,
        0,
        "exactly the threshold is not slow"
    );
    assert_eq!(b.state(), State::Closed);
    for _ in 0..2 {
        let permit = b.try_acquire().unwrap();
        tokio::time::advance(threshold + Duration::from_nanos(1)).await;
        permit.record(Outcome::Success);
    }
    assert_eq!(b.metrics().slow_calls, 2);
    assert_eq!(b.state(), State::Open, "every call in the window was slow");
}

/// Resilience4j's half-open window (`CircuitBreakerMetrics.forHalfOpen`) judges once it holds
/// `min(minimumNumberOfCalls, permittedNumberOfCallsInHalfOpenState)` trials (resilience4j
/// issues #1351 and #1523): with a minimum of 2 and 4 permitted, two successes close it.
#[tokio::test(start_paused = true)]
async fn half_open_decides_once_min_of_minimum_calls_and_permitted_trials_have_finished() {
    let b = builder(10, 2, 4).build();
    let mut permits = trials(&b, 2, 4).await.into_iter();
    permits.next().unwrap().record(Outcome::Success);
    assert_eq!(b.state(), State::HalfOpen, "1 of the 2 trials needed");
    permits.next().unwrap().record(Outcome::Success);
    assert_eq!(b.state(), State::Closed, "2 successes of 2: closed");
    // The two trials still out finish after the decision and no longer count.
    for permit in permits {
        permit.record(FAILED);
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.metrics().window.calls, 0);
    assert_eq!(b.metrics().ignored_calls, 2);

    // A failure among the first two: 50 %, at the threshold, opens again.
    let b = builder(10, 2, 4).build();
    let mut permits = trials(&b, 2, 4).await.into_iter();
    permits.next().unwrap().record(Outcome::Success);
    permits.next().unwrap().record(FAILED);
    assert_eq!(b.state(), State::Open);

    // The minimum as set, not as clamped to a smaller count window: a window of 2 calls with
    // a minimum of 5 judges the closed state after 2 calls, and 4 permitted trials after 4.
    let b = builder(2, 5, 4).build();
    let mut permits = trials(&b, 2, 4).await.into_iter();
    for _ in 0..3 {
        permits.next().unwrap().record(Outcome::Success);
        assert_eq!(b.state(), State::HalfOpen);
    }
    permits.next().unwrap().record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);

    // Resilience4j's defaults (100 and 10): all 10 trials decide.
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(2))
        .open_duration(Duration::from_secs(10))
        .build();
    let mut permits = trials(&b, 2, 10).await.into_iter();
    for _ in 0..9 {
        permits.next().unwrap().record(Outcome::Success);
        assert_eq!(b.state(), State::HalfOpen);
    }
    permits.next().unwrap().record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);
}

/// Resilience4j's `circuitBreakerDoesNotPublishStateTransitionEventsForInternalTransitions`:
/// a transition to the state the breaker is in publishes nothing, and a reset of a closed
/// breaker still empties its window (`shouldResetClosedState`).
#[tokio::test(start_paused = true)]
async fn transitions_that_change_nothing_publish_no_events() {
    let seen: Arc<Mutex<Vec<(State, State)>>> = Arc::default();
    let log = seen.clone();
    let b = builder(10, 10, 3)
        .on_state_transition(move |t: &StateTransition| log.lock().unwrap().push((t.from, t.to)))
        .build();
    let mut states = b.watch_state();
    states.borrow_and_update();

    b.try_acquire().unwrap().record(FAILED);
    assert_eq!(b.metrics().window.calls, 1);
    b.reset();
    b.reset();
    assert_eq!(b.metrics().window.calls, 0, "a reset empties the window");
    assert!(
        !states.has_changed().unwrap(),
        "closed to closed is no change"
    );

    b.force_open();
    b.force_open();
    b.reset();
    b.reset();
    b.force_closed();
    b.force_closed();
    b.reset();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (State::Closed, State::ForcedOpen),
            (State::ForcedOpen, State::Closed),
            (State::Closed, State::ForcedClosed),
            (State::ForcedClosed, State::Closed),
        ]
    );
}

/// `ignored_calls` counts what its doc says: outcomes classified `Ignored`, and half-open
/// trials that finished after their trial was decided. A call admitted while closed that
/// finishes after the breaker opened is recorded, as Resilience4j's `OpenState` records it.
#[tokio::test(start_paused = true)]
async fn ignored_calls_counts_ignored_outcomes_and_late_half_open_trials_only() {
    let b = builder(2, 2, 1).build();
    let late = b.try_acquire().unwrap();
    b.try_acquire().unwrap().record(FAILED);
    b.try_acquire().unwrap().record(FAILED);
    assert_eq!(b.state(), State::Open);
    late.record(FAILED);
    let m = b.metrics();
    assert_eq!((m.ignored_calls, m.failed_calls), (0, 3));

    tokio::time::advance(Duration::from_secs(10)).await;
    let trial = b.try_acquire().unwrap();
    trial.record(Outcome::Ignored);
    assert_eq!(b.metrics().ignored_calls, 1, "an ignored outcome");
    assert_eq!(b.state(), State::HalfOpen, "and its permit is given back");
    let trial = b.try_acquire().unwrap();
    b.reset();
    trial.record(FAILED);
    let m = b.metrics();
    assert_eq!(
        m.ignored_calls, 2,
        "a trial that outlived its half-open state"
    );
    assert_eq!(m.window.calls, 0);
    assert_eq!(b.state(), State::Closed);
}
