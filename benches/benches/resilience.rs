//! Per-call overhead of ms-resilience's layers in their quiet state (breaker closed, no retry
//! needed), through a no-op inner service, next to the bare service, tower's own `Retry` with a
//! policy that never retries, and other circuit breakers measured in the same run: tower-resilience-circuitbreaker (a tower layer),
//! failsafe and recloser (behind a thin tower adapter each: `call` wraps the inner future in
//! the crate's own future-aware breaker).
//!
//! Each iteration is one `poll_ready`, one `call` and one poll of the response future with a
//! no-op waker, on one thread.
//!
//! Run: `cargo bench -p ms-benches --bench resilience -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ms_resilience::circuit_breaker::{CircuitBreaker, KeyedCircuitBreakerLayer, SlidingWindow};
use ms_resilience::retry::RetryLayer;
use tower::{Layer, Service};

/// The inner service: answers at once, never fails.
#[derive(Clone, Copy)]
struct Noop;

impl Service<u64> for Noop {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u64) -> Self::Future {
        ready(Ok(request))
    }
}

/// One call: ready, call, poll once. Every service here answers on the first poll.
fn drive<S: Service<u64>>(service: &mut S, request: u64) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    if !matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))) {
        return false;
    }
    let future = pin!(service.call(request));
    matches!(future.poll(&mut cx), Poll::Ready(Ok(_)))
}

/// A floor: a service whose response future holds a clone of an `Arc`, as any breaker's must
/// (the future records the outcome after the service has moved on).
#[derive(Clone)]
struct ArcPerCall<S> {
    inner: S,
    shared: std::sync::Arc<u64>,
}

impl<S: Service<u64, Future: Unpin>> Service<u64> for ArcPerCall<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = ArcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: u64) -> Self::Future {
        ArcFuture {
            inner: self.inner.call(request),
            _shared: self.shared.clone(),
        }
    }
}

struct ArcFuture<F> {
    inner: F,
    _shared: std::sync::Arc<u64>,
}

impl<F: Future + Unpin> Future for ArcFuture<F> {
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        std::pin::Pin::new(&mut self.inner).poll(cx)
    }
}

/// recloser behind a tower adapter.
struct Recloser<S> {
    inner: S,
    breaker: recloser::AsyncRecloser,
}

impl<S: Service<u64>> Service<u64> for Recloser<S> {
    type Response = S::Response;
    type Error = recloser::Error<S::Error>;
    type Future = recloser::RecloserFuture<S::Future, recloser::AnyError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(recloser::Error::Inner)
    }

    fn call(&mut self, request: u64) -> Self::Future {
        self.breaker.call(self.inner.call(request))
    }
}

/// failsafe behind a tower adapter.
struct Failsafe<S, B> {
    inner: S,
    breaker: B,
}

impl<S, B> Service<u64> for Failsafe<S, B>
where
    S: Service<u64>,
    B: failsafe::futures::CircuitBreaker,
{
    type Response = S::Response;
    type Error = failsafe::Error<S::Error>;
    type Future = failsafe::futures::ResponseFuture<
        S::Future,
        B::FailurePolicy,
        B::Instrument,
        failsafe::Any,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(failsafe::Error::Inner)
    }

    fn call(&mut self, request: u64) -> Self::Future {
        self.breaker.call(self.inner.call(request))
    }
}

/// Resilience4j's defaults everywhere they exist: 50 %, last 100 calls.
fn ms_breaker() -> CircuitBreaker {
    CircuitBreaker::builder()
        .failure_rate_threshold(50.0)
        .sliding_window(SlidingWindow::Count(100))
        .build()
}

fn bench<S: Service<u64>>(c: &mut Criterion, group: &str, name: &str, mut service: S) {
    let mut request = 0u64;
    c.benchmark_group(group).bench_function(name, |b| {
        b.iter(|| {
            request = request.wrapping_add(1);
            assert!(drive(&mut service, black_box(request)));
        });
    });
}

fn closed_breaker(c: &mut Criterion) {
    const GROUP: &str = "resilience/closed_breaker_per_call";
    bench(c, GROUP, "bare_service", Noop);
    bench(
        c,
        GROUP,
        "floor_arc_clone_per_call",
        ArcPerCall {
            inner: Noop,
            shared: std::sync::Arc::new(0),
        },
    );
    bench(c, GROUP, "ms_resilience", ms_breaker().layer().layer(Noop));
    bench(
        c,
        GROUP,
        "recloser",
        Recloser {
            inner: Noop,
            breaker: recloser::Recloser::custom()
                .error_rate(0.5)
                .closed_len(100)
                .build()
                .into(),
        },
    );
    bench(
        c,
        GROUP,
        "failsafe",
        Failsafe {
            inner: Noop,
            breaker: failsafe::Config::new().build(),
        },
    );
    let tower_resilience = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("valid tower-resilience config");
    bench(c, GROUP, "tower_resilience", tower_resilience.layer(Noop));

    let handle = ms_breaker();
    c.benchmark_group(GROUP)
        .bench_function("ms_resilience_permit_only", |b| {
            b.iter(|| {
                black_box(handle.try_acquire())
                    .expect("closed")
                    .record(ms_resilience::classify::Outcome::Success);
            });
        });

    // Our variants that cost more per call, to show what each option adds.
    let slow_calls = CircuitBreaker::builder()
        .slow_call_duration(Duration::from_secs(60))
        .build();
    bench(
        c,
        GROUP,
        "ms_resilience_slow_call_detection",
        slow_calls.layer().layer(Noop),
    );
    let time_window = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Time(60))
        .build();
    bench(
        c,
        GROUP,
        "ms_resilience_time_window",
        time_window.layer().layer(Noop),
    );
    let keyed = KeyedCircuitBreakerLayer::new(CircuitBreaker::builder(), |r: &u64| r % 4);
    bench(c, GROUP, "ms_resilience_keyed_4_keys", keyed.layer(Noop));
}

/// tower's retry policy that never retries: the floor of a retry layer.
#[derive(Clone, Copy)]
struct NeverRetry;

impl tower::retry::Policy<u64, u64, Infallible> for NeverRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u64, _: &mut Result<u64, Infallible>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, request: &u64) -> Option<u64> {
        Some(*request)
    }
}

/// The same policy holding shared state, as a real one does (tower's `TpsBudget` sits behind an
/// `Arc`): tower's retry future holds a clone of the policy.
#[derive(Clone)]
struct NeverRetryShared(#[allow(dead_code)] std::sync::Arc<u64>);

impl tower::retry::Policy<u64, u64, Infallible> for NeverRetryShared {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u64, _: &mut Result<u64, Infallible>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, request: &u64) -> Option<u64> {
        Some(*request)
    }
}

fn retry_not_needed(c: &mut Criterion) {
    const GROUP: &str = "resilience/retry_no_retry_needed_per_call";
    bench(c, GROUP, "bare_service", Noop);
    bench(
        c,
        GROUP,
        "tower_retry",
        tower::retry::RetryLayer::new(NeverRetry).layer(Noop),
    );
    bench(
        c,
        GROUP,
        "tower_retry_policy_with_arc",
        tower::retry::RetryLayer::new(NeverRetryShared(std::sync::Arc::new(0))).layer(Noop),
    );
    bench(c, GROUP, "ms_resilience", RetryLayer::new().layer(Noop));
    bench(
        c,
        GROUP,
        "ms_resilience_with_budget",
        RetryLayer::new()
            .budget(ms_resilience::retry::RetryBudget::new(10, 0.1))
            .layer(Noop),
    );
}

/// Timeout, bulkhead and rate limit when nothing is limited, next to tower's own `Timeout` and
/// `ConcurrencyLimit`. Timers need a runtime: the iterations run inside one (entered, not
/// blocked on), still one thread.
fn limits_not_reached(c: &mut Criterion) {
    const GROUP: &str = "resilience/limits_not_reached_per_call";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    bench(c, GROUP, "bare_service", Noop);
    bench(
        c,
        GROUP,
        "tower_timeout",
        tower::timeout::TimeoutLayer::new(Duration::from_secs(1)).layer(Noop),
    );
    bench(
        c,
        GROUP,
        "ms_resilience_timeout",
        ms_resilience::timeout::TimeoutLayer::new(Duration::from_secs(1)).layer(Noop),
    );
    bench(
        c,
        GROUP,
        "tower_concurrency_limit",
        tower::limit::ConcurrencyLimitLayer::new(64).layer(Noop),
    );
    bench(
        c,
        GROUP,
        "ms_resilience_bulkhead",
        ms_resilience::bulkhead::BulkheadLayer::new(64).layer(Noop),
    );
    let quota = ms_resilience::rate_limit::Quota::per_second(
        std::num::NonZeroU32::new(u32::MAX).expect("non-zero"),
    );
    bench(
        c,
        GROUP,
        "ms_resilience_rate_limit_one_key",
        ms_resilience::rate_limit::RateLimitLayer::new(quota, |_: &u64| 0u8).layer(Noop),
    );
}

criterion_group!(
    benches,
    closed_breaker,
    retry_not_needed,
    limits_not_reached
);
criterion_main!(benches);
