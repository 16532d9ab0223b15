//! The circuit breaker's rules, one test each, on paused time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ms_resilience::backoff::{ExponentialBackoff, Jitter};
use ms_resilience::circuit_breaker::{CircuitBreaker, SlidingWindow, State, StateTransition};
use ms_resilience::classify::{HttpClassifier, Outcome};
use ms_resilience::{BoxError, Error};
use tower::{Service, ServiceBuilder, ServiceExt};

mod resilience4j;

#[derive(Debug, Clone, Copy)]
enum Call {
    Succeed,
    Fail,
    /// Succeeds after this long.
    Take(Duration),
}

type Svc = tower::util::BoxCloneService<Call, &'static str, BoxError>;

fn service(breaker: &CircuitBreaker) -> Svc {
    let svc = ServiceBuilder::new()
        .layer(breaker.layer())
        .service_fn(|call: Call| async move {
            match call {
                Call::Succeed => Ok("ok"),
                Call::Fail => Err::<_, BoxError>("boom".into()),
                Call::Take(d) => {
                    tokio::time::sleep(d).await;
                    Ok("slow ok")
                }
            }
        });
    tower::util::BoxCloneService::new(svc)
}

async fn run(svc: &mut Svc, calls: impl IntoIterator<Item = Call>) {
    for call in calls {
        let _ = svc.ready().await.unwrap().call(call).await;
    }
}

fn is_open_error(error: &BoxError) -> bool {
    matches!(Error::find(&**error), Some(Error::CircuitOpen { .. }))
}

fn breaker(window: u32, minimum: u32) -> CircuitBreaker {
    CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(window))
        .minimum_number_of_calls(minimum)
        .failure_rate_threshold(50.0)
        .open_duration(Duration::from_secs(10))
        .permitted_calls_in_half_open(3)
        .build()
}

#[tokio::test(start_paused = true)]
async fn does_not_open_before_the_minimum_number_of_calls() {
    let b = breaker(10, 5);
    let mut svc = service(&b);
    run(&mut svc, [Call::Fail; 4]).await;
    // 100 % failures, but only 4 of the 5 calls needed to judge.
    assert_eq!(b.state(), State::Closed);
    run(&mut svc, [Call::Succeed]).await;
    // 4 of 5 failed: judged, and over the threshold.
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn opens_exactly_at_the_failure_rate_threshold() {
    let b = breaker(10, 6);
    let mut svc = service(&b);
    run(
        &mut svc,
        [
            Call::Fail,
            Call::Fail,
            Call::Succeed,
            Call::Succeed,
            Call::Succeed,
            Call::Succeed,
        ],
    )
    .await;
    // 2 / 6 = 33 %.
    assert_eq!(b.state(), State::Closed);
    run(&mut svc, [Call::Fail]).await;
    // 3 / 7 = 43 %.
    assert_eq!(b.state(), State::Closed);
    run(&mut svc, [Call::Fail]).await;
    // 4 / 8 = 50 %: at the threshold opens.
    assert_eq!(b.state(), State::Open);
    let error = svc
        .ready()
        .await
        .unwrap()
        .call(Call::Succeed)
        .await
        .unwrap_err();
    assert!(is_open_error(&error), "{error}");
    assert_eq!(b.metrics().rejected_calls, 1);
}

/// tower-resilience 0.14's count window never slides: after 10,000 successes it needs 10,000
/// failures. A true ring of the last 10 calls opens after 5.
#[tokio::test(start_paused = true)]
async fn the_count_window_slides() {
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(10))
        .minimum_number_of_calls(10)
        .count_successful_calls(true)
        .build();
    let mut svc = service(&b);
    run(&mut svc, std::iter::repeat_n(Call::Succeed, 10_000)).await;
    run(&mut svc, [Call::Fail; 4]).await;
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.metrics().window.failures, 4);
    run(&mut svc, [Call::Fail]).await;
    assert_eq!(b.state(), State::Open);
    let m = b.metrics();
    assert_eq!((m.successful_calls, m.failed_calls), (Some(10_000), 5));
}

#[tokio::test(start_paused = true)]
async fn the_time_window_forgets_calls_older_than_its_span() {
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Time(10))
        .minimum_number_of_calls(4)
        .build();
    let mut svc = service(&b);
    run(&mut svc, [Call::Fail; 3]).await;
    tokio::time::advance(Duration::from_secs(11)).await;
    // The three failures are 11 s old: 1 of 4 recent calls failed.
    run(
        &mut svc,
        [Call::Fail, Call::Succeed, Call::Succeed, Call::Succeed],
    )
    .await;
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.metrics().window.calls, 4);
    // Within the span they add up: 3 of 6.
    run(&mut svc, [Call::Fail, Call::Fail]).await;
    assert_eq!(b.state(), State::Open);
}

/// A success can only lower the rates of an unchanged window, so the time window skips the
/// count on most successes: not on the one that completes the minimum number of calls.
#[tokio::test(start_paused = true)]
async fn a_success_that_completes_the_minimum_opens_a_time_window() {
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Time(10))
        .minimum_number_of_calls(10)
        .build();
    let mut svc = service(&b);
    run(&mut svc, [Call::Fail; 9]).await;
    assert_eq!(b.state(), State::Closed);
    run(&mut svc, [Call::Succeed]).await;
    assert_eq!(b.state(), State::Open);
}

async fn open(b: &CircuitBreaker, svc: &mut Svc) {
    run(svc, [Call::Fail; 10]).await;
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn stays_open_for_the_open_duration_then_admits_exactly_the_permitted_trials() {
    let b = breaker(10, 2);
    let mut svc = service(&b);
    open(&b, &mut svc).await;
    tokio::time::advance(Duration::from_millis(9_999)).await;
    let error = b.try_acquire().unwrap_err();
    assert!(
        matches!(error, Error::CircuitOpen { retry_in: Some(d), .. } if d == Duration::from_millis(1))
    );
    tokio::time::advance(Duration::from_millis(1)).await;

    let trials: Vec<_> = (0..3)
        .map(|_| b.try_acquire().expect("a trial permit"))
        .collect();
    assert_eq!(b.state(), State::HalfOpen);
    // The fourth is refused while the three are out, through the handle and the service alike.
    assert!(matches!(
        b.try_acquire(),
        Err(Error::CircuitOpen { retry_in: None, .. })
    ));
    let error = svc
        .ready()
        .await
        .unwrap()
        .call(Call::Succeed)
        .await
        .unwrap_err();
    assert!(is_open_error(&error));

    for trial in trials {
        trial.record(Outcome::Success);
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.metrics().window.calls, 0, "closing empties the window");
}

#[tokio::test(start_paused = true)]
async fn failed_trials_open_again_and_a_cancelled_trial_gives_its_permit_back() {
    // A minimum of 3 calls: all three trials decide.
    let b = breaker(10, 3);
    let mut svc = service(&b);
    open(&b, &mut svc).await;
    tokio::time::advance(Duration::from_secs(10)).await;

    let first = b.try_acquire().unwrap();
    let second = b.try_acquire().unwrap();
    let cancelled = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    drop(cancelled);
    let third = b
        .try_acquire()
        .expect("the cancelled trial's permit is back");

    first.record(Outcome::Success);
    second.record(Outcome::Failure { retryable: true });
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "decides only when the minimum number of trials are in"
    );
    third.record(Outcome::Failure { retryable: true });
    // 2 of 3 trials failed: 67 % >= 50 %.
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_count_even_when_they_succeed() {
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(4))
        .minimum_number_of_calls(4)
        .slow_call_duration(Duration::from_secs(2))
        .slow_call_rate_threshold(50.0)
        .count_successful_calls(true)
        .build();
    let mut svc = service(&b);
    run(
        &mut svc,
        [
            Call::Take(Duration::from_millis(1_999)),
            Call::Succeed,
            Call::Succeed,
        ],
    )
    .await;
    run(&mut svc, [Call::Take(Duration::from_millis(2_001))]).await;
    // 1 of 4 slow.
    assert_eq!(b.state(), State::Closed);
    run(&mut svc, [Call::Take(Duration::from_secs(5))]).await;
    // The ring now holds 2 slow of 4: 50 %.
    assert_eq!(b.state(), State::Open);
    let m = b.metrics();
    assert_eq!(
        (m.slow_calls, m.failed_calls, m.successful_calls),
        (2, 0, Some(5))
    );
}

#[tokio::test(start_paused = true)]
async fn open_duration_follows_the_backoff_over_consecutive_openings() {
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(2))
        .minimum_number_of_calls(2)
        .permitted_calls_in_half_open(1)
        .open_duration(
            ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(4))
                .with_jitter(Jitter::None),
        )
        .build();
    let mut svc = service(&b);
    run(&mut svc, [Call::Fail; 2]).await;
    for wait in [1, 2, 4, 4] {
        let Err(Error::CircuitOpen {
            retry_in: Some(retry_in),
            ..
        }) = b.try_acquire()
        else {
            panic!("expected open");
        };
        assert_eq!(retry_in, Duration::from_secs(wait));
        tokio::time::advance(retry_in).await;
        // The trial fails: open again, for longer.
        run(&mut svc, [Call::Fail]).await;
    }
    tokio::time::advance(Duration::from_secs(4)).await;
    run(&mut svc, [Call::Succeed]).await;
    assert_eq!(b.state(), State::Closed);
    run(&mut svc, [Call::Fail; 2]).await;
    let Err(Error::CircuitOpen {
        retry_in: Some(retry_in),
        ..
    }) = b.try_acquire()
    else {
        panic!("expected open");
    };
    assert_eq!(
        retry_in,
        Duration::from_secs(1),
        "closing restarts the backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn pending_while_open_makes_poll_ready_wait_instead_of_failing() {
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(2))
        .minimum_number_of_calls(2)
        .open_duration(Duration::from_secs(30))
        .pending_while_open(true)
        .build();
    let mut svc = service(&b);
    run(&mut svc, [Call::Fail; 2]).await;
    assert_eq!(b.state(), State::Open);
    let waited = tokio::time::timeout(Duration::from_secs(29), svc.ready()).await;
    assert!(waited.is_err(), "not ready while open");
    let started = tokio::time::Instant::now();
    svc.ready().await.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "ready when the trials may start"
    );
    assert_eq!(svc.call(Call::Succeed).await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn state_changes_reach_listeners_and_manual_control_overrides_the_rules() {
    let seen: Arc<Mutex<Vec<(State, State)>>> = Arc::default();
    let log = seen.clone();
    let b = CircuitBreaker::builder()
        .name("ledger")
        .sliding_window(SlidingWindow::Count(2))
        .minimum_number_of_calls(2)
        .on_state_transition(move |t: &StateTransition| {
            assert_eq!(&*t.name, "ledger");
            log.lock().unwrap().push((t.from, t.to));
        })
        .build();
    let mut svc = service(&b);

    b.force_open();
    let error = svc
        .ready()
        .await
        .unwrap()
        .call(Call::Succeed)
        .await
        .unwrap_err();
    assert!(is_open_error(&error));
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(b.try_acquire().is_err(), "forced open does not time out");

    b.force_closed();
    run(&mut svc, [Call::Fail; 20]).await;
    assert_eq!(
        b.state(),
        State::ForcedClosed,
        "forced closed ignores failures"
    );

    b.reset();
    run(&mut svc, [Call::Fail; 2]).await;
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (State::Closed, State::ForcedOpen),
            (State::ForcedOpen, State::ForcedClosed),
            (State::ForcedClosed, State::Closed),
            (State::Closed, State::Open),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn state_changes_can_be_awaited() {
    let b = breaker(2, 2);
    let mut states = b.watch_state();
    assert_eq!(*states.borrow_and_update(), State::Closed);
    let mut svc = service(&b);
    let watcher = tokio::spawn(async move {
        states.changed().await.unwrap();
        *states.borrow_and_update()
    });
    run(&mut svc, [Call::Fail; 2]).await;
    assert_eq!(watcher.await.unwrap(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn the_classifier_decides_what_counts() {
    let b = breaker(4, 4);
    let svc = ServiceBuilder::new()
        .layer(b.layer().with_classifier(HttpClassifier::new()))
        .service_fn(|status: u16| async move {
            Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
        });
    for status in [404, 400, 404, 409, 200] {
        svc.clone().oneshot(status).await.unwrap();
    }
    assert_eq!(
        b.state(),
        State::Closed,
        "client errors are the caller's fault"
    );
    for status in [503, 500] {
        let response = svc.clone().oneshot(status).await.unwrap();
        assert_eq!(
            response.status().as_u16(),
            status,
            "responses pass through unchanged"
        );
    }
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_further_in_does_not_count_as_a_failure_here() {
    let inner = breaker(2, 2);
    inner.force_open();
    let outer = breaker(2, 2);
    let mut svc = ServiceBuilder::new()
        .layer(outer.layer())
        .layer(inner.layer())
        .service_fn(|()| async { Ok::<_, BoxError>(()) });
    for _ in 0..5 {
        let error = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(is_open_error(&error));
    }
    assert_eq!(outer.state(), State::Closed);
    assert_eq!(outer.metrics().ignored_calls, 5);
}

/// Many tasks on a multi-threaded runtime through one breaker: every call is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_all_add_up() {
    const TASKS: u32 = 16;
    const CALLS: u32 = 2_000;
    // The window holds every call, and a 100 % threshold never opens: each task starts with
    // a success, so the failure rate stays below 100 %.
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(TASKS * CALLS))
        .minimum_number_of_calls(1)
        .failure_rate_threshold(100.0)
        .count_successful_calls(true)
        .build();
    let svc = service(&b);
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                for i in 0..CALLS {
                    let call = if i % 4 == 3 {
                        Call::Fail
                    } else {
                        Call::Succeed
                    };
                    let _ = svc.ready().await.unwrap().call(call).await;
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let m = b.metrics();
    let total = u64::from(TASKS * CALLS);
    assert_eq!(m.failed_calls, total / 4);
    assert_eq!(m.successful_calls, Some(total - total / 4));
    assert_eq!(u64::from(m.window.calls), total);
    assert_eq!(u64::from(m.window.failures), total / 4);
    assert_eq!(b.state(), State::Closed);
}

/// The same with a small window that wraps thousands of times: the window stays full and its
/// failure count is what its slots hold (checked by the unit tests); here, it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_failures_open_a_shared_breaker_once() {
    let transitions = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = transitions.clone();
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(50))
        .minimum_number_of_calls(50)
        .open_duration(Duration::from_secs(3600))
        .on_state_transition(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .build();
    let svc = service(&b);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move { run(&mut svc, [Call::Fail; 500]).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(b.state(), State::Open);
    assert_eq!(transitions.load(std::sync::atomic::Ordering::SeqCst), 1);
    let m = b.metrics();
    assert_eq!(m.failed_calls + m.rejected_calls, 4_000);
}

/// With `pending_while_open`, `tower::balance` sends nothing to an open endpoint and keeps it:
/// once its open duration is over, it gets trial calls again.
#[tokio::test(start_paused = true)]
async fn balance_routes_around_an_open_endpoint_and_comes_back_to_it() {
    use std::sync::atomic::{AtomicU32, Ordering};

    let calls_to_broken = Arc::new(AtomicU32::new(0));
    let counter = calls_to_broken.clone();
    let broken_breaker = CircuitBreaker::builder()
        .name("broken")
        .sliding_window(SlidingWindow::Count(2))
        .minimum_number_of_calls(2)
        .permitted_calls_in_half_open(1)
        .open_duration(Duration::from_secs(60))
        .pending_while_open(true)
        .build();
    let broken = ServiceBuilder::new()
        .layer(broken_breaker.layer())
        .service_fn(move |()| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Err::<&str, BoxError>("refused".into()) }
        });
    let healthy = ServiceBuilder::new()
        .layer(
            CircuitBreaker::builder()
                .pending_while_open(true)
                .build()
                .layer(),
        )
        .service_fn(|()| async { Ok::<_, BoxError>("ok") });
    let endpoints = vec![
        tower::util::BoxService::new(broken),
        tower::util::BoxService::new(healthy),
    ];
    let mut balance = tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(
        endpoints
            .into_iter()
            .map(|s| tower::load::Constant::new(s, 0)),
    ));

    let mut failures = 0;
    for _ in 0..50 {
        if balance.ready().await.unwrap().call(()).await.is_err() {
            failures += 1;
        }
    }
    assert_eq!(broken_breaker.state(), State::Open);
    assert_eq!(
        failures, 2,
        "two failures open the broken endpoint's breaker"
    );
    assert_eq!(calls_to_broken.load(Ordering::SeqCst), 2);
    assert_eq!(balance.len(), 2, "the open endpoint is kept, not dropped");

    // After the open duration it is ready again and gets its trial call.
    tokio::time::advance(Duration::from_secs(60)).await;
    for _ in 0..50 {
        let _ = balance.ready().await.unwrap().call(()).await;
    }
    assert_eq!(calls_to_broken.load(Ordering::SeqCst), 3);
    assert_eq!(broken_breaker.state(), State::Open);
}
