//! The `metrics` feature: what a recorder sees (metrics-util's debugging recorder, installed
//! for this thread only).
#![cfg(all(feature = "metrics", feature = "rate-limit"))]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use ms_resilience::bulkhead::BulkheadLayer;
use ms_resilience::circuit_breaker::{CircuitBreaker, State};
use ms_resilience::classify::Outcome;
use ms_resilience::metrics::{
    BULKHEAD_REJECTIONS, CIRCUIT_BREAKER_CALLS, CIRCUIT_BREAKER_SLOW_CALLS, CIRCUIT_BREAKER_STATE,
    RATE_LIMIT_REJECTIONS, RETRY_ATTEMPTS, RETRY_BUDGET_EXHAUSTED,
};
use ms_resilience::rate_limit::{Quota, RateLimitLayer};
use ms_resilience::retry::{RetryBudget, RetryLayer};
use ms_resilience::{BoxError, Error};
use tower::{Service, ServiceBuilder, ServiceExt};

/// What a test recorded: metric, labels, value.
type Recorded = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// Runs `test` on a paused current-thread runtime with a recorder for this thread; returns
/// what it recorded (taken once: a snapshot drains the counters).
fn recorded<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> Recorded {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(test()));
    snapshotter.snapshot().into_vec()
}

/// The value of the metric `name` whose labels include all of `labels`.
fn value(recorded: &Recorded, name: &str, labels: &[(&str, &str)]) -> Option<DebugValue> {
    recorded
        .iter()
        .find(|(key, ..)| {
            key.key().name() == name
                && labels.iter().all(|(k, v)| {
                    key.key()
                        .labels()
                        .any(|label| label.key() == *k && label.value() == *v)
                })
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(count) => DebugValue::Counter(*count),
            DebugValue::Gauge(gauge) => DebugValue::Gauge(*gauge),
            DebugValue::Histogram(samples) => DebugValue::Histogram(samples.clone()),
        })
}

#[test]
fn breaker_state_and_calls_by_outcome_follow_transitions_and_exports() {
    let recorded = recorded(|| async {
        let breaker = CircuitBreaker::builder()
            .name("payments")
            .count_successful_calls(true)
            .build();
        breaker.try_acquire().unwrap().record(Outcome::Success);
        breaker.try_acquire().unwrap().record(Outcome::Success);
        breaker
            .try_acquire()
            .unwrap()
            .record(Outcome::Failure { retryable: true });
        breaker.try_acquire().unwrap().record(Outcome::Ignored);
        // A transition publishes the state and the counts so far.
        breaker.force_open();
        assert_eq!(breaker.state(), State::ForcedOpen);
        for _ in 0..3 {
            assert!(breaker.try_acquire().is_err());
        }
    });
    let payments = [("breaker", "payments")];
    assert_eq!(
        value(&recorded, CIRCUIT_BREAKER_STATE, &payments),
        Some(DebugValue::Gauge(3.0.into()))
    );
    let calls = |outcome| {
        value(
            &recorded,
            CIRCUIT_BREAKER_CALLS,
            &[("breaker", "payments"), ("outcome", outcome)],
        )
    };
    assert_eq!(calls("success"), Some(DebugValue::Counter(2)));
    assert_eq!(calls("failure"), Some(DebugValue::Counter(1)));
    assert_eq!(calls("ignored"), Some(DebugValue::Counter(1)));
    // Rejections came after the last transition: not published until an export.
    assert_eq!(calls("rejected"), Some(DebugValue::Counter(0)));
    assert_eq!(
        value(&recorded, CIRCUIT_BREAKER_SLOW_CALLS, &payments),
        Some(DebugValue::Counter(0))
    );
}

#[test]
fn export_brings_counts_up_to_date_and_reset_sets_the_gauge_back() {
    let recorded = recorded(|| async {
        let breaker = CircuitBreaker::builder().name("ledger").build();
        breaker.force_open();
        for _ in 0..3 {
            assert!(breaker.try_acquire().is_err());
        }
        breaker.export_metrics();
        breaker.reset();
    });
    let ledger = [("breaker", "ledger")];
    assert_eq!(
        value(&recorded, CIRCUIT_BREAKER_STATE, &ledger),
        Some(DebugValue::Gauge(0.0.into()))
    );
    assert_eq!(
        value(
            &recorded,
            CIRCUIT_BREAKER_CALLS,
            &[("breaker", "ledger"), ("outcome", "rejected")]
        ),
        Some(DebugValue::Counter(3))
    );
    // Successes are not counted unless asked for: no series rather than a false zero.
    assert_eq!(
        value(
            &recorded,
            CIRCUIT_BREAKER_CALLS,
            &[("breaker", "ledger"), ("outcome", "success")]
        ),
        None
    );
}

#[test]
fn retries_made_and_retries_refused_by_the_budget_are_counted() {
    let recorded = recorded(|| async {
        // Fails twice, then succeeds: two retries.
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let flaky = ServiceBuilder::new()
            .layer(RetryLayer::new().max_attempts(5))
            .service_fn(move |n: u32| {
                let attempt = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    if attempt < 2 {
                        Err::<u32, BoxError>("reset".into())
                    } else {
                        Ok(n)
                    }
                }
            });
        assert_eq!(flaky.oneshot(7).await.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        // A budget of one token: the first failure leaves too little to retry.
        let broken = ServiceBuilder::new()
            .layer(RetryLayer::new().budget(RetryBudget::new(1, 0.1)))
            .service_fn(|_: u32| async { Err::<u32, BoxError>("down".into()) });
        assert!(broken.oneshot(1).await.is_err());
    });
    assert_eq!(
        value(&recorded, RETRY_ATTEMPTS, &[]),
        Some(DebugValue::Counter(2))
    );
    assert_eq!(
        value(&recorded, RETRY_BUDGET_EXHAUSTED, &[]),
        Some(DebugValue::Counter(1))
    );
}

#[test]
fn bulkhead_and_rate_limit_rejections_are_counted() {
    let recorded = recorded(|| async {
        let mut bulkhead = ServiceBuilder::new()
            .layer(BulkheadLayer::new(1))
            .service_fn(|wait: Duration| async move {
                tokio::time::sleep(wait).await;
                Ok::<_, BoxError>(())
            });
        let busy = bulkhead
            .ready()
            .await
            .unwrap()
            .call(Duration::from_secs(60));
        for _ in 0..2 {
            let error = bulkhead
                .ready()
                .await
                .unwrap()
                .call(Duration::ZERO)
                .await
                .unwrap_err();
            assert!(matches!(
                Error::find(&*error),
                Some(Error::BulkheadFull { .. })
            ));
        }
        drop(busy);

        let limited = ServiceBuilder::new()
            .layer(RateLimitLayer::new(
                Quota::per_second(NonZeroU32::new(1).unwrap()),
                |_: &u32| (),
            ))
            .service_fn(|n: u32| async move { Ok::<_, BoxError>(n) });
        limited.clone().oneshot(1).await.unwrap();
        for _ in 0..3 {
            assert!(limited.clone().oneshot(1).await.is_err());
        }
    });
    assert_eq!(
        value(&recorded, BULKHEAD_REJECTIONS, &[]),
        Some(DebugValue::Counter(2))
    );
    assert_eq!(
        value(&recorded, RATE_LIMIT_REJECTIONS, &[]),
        Some(DebugValue::Counter(3))
    );
}
