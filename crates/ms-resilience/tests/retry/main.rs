//! The retry layer's rules, one test each, on paused time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use ms_resilience::backoff::{ExponentialBackoff, Jitter};
use ms_resilience::retry::{HttpRequests, RetryBody, RetryBudget, RetryBudgets, RetryLayer};
use ms_resilience::{BoxError, Error};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

mod hints;

const MS: Duration = Duration::from_millis(1);

fn fixed(delay: Duration) -> ExponentialBackoff {
    ExponentialBackoff::new(delay, delay).with_jitter(Jitter::None)
}

/// A service that fails its first `failures` calls with an error, then succeeds.
fn flaky(
    failures: u32,
) -> (
    Arc<AtomicU32>,
    impl tower::Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let service = tower::service_fn(move |n: u32| {
        let attempt = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if attempt < failures {
                Err::<u32, BoxError>("connection reset".into())
            } else {
                Ok(n)
            }
        }
    });
    (calls, service)
}

#[tokio::test(start_paused = true)]
async fn retries_up_to_max_attempts_then_returns_the_last_error() {
    let (calls, inner) = flaky(10);
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new().max_attempts(4).backoff(fixed(10 * MS)))
        .service(inner);
    let error = service.oneshot(1).await.unwrap_err();
    assert_eq!(error.to_string(), "connection reset");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn waits_the_backoff_between_attempts() {
    let (calls, inner) = flaky(3);
    let backoff =
        ExponentialBackoff::new(100 * MS, Duration::from_secs(1)).with_jitter(Jitter::None);
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new().max_attempts(5).backoff(backoff))
        .service(inner);
    let started = Instant::now();
    assert_eq!(service.oneshot(7).await.unwrap(), 7);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // 100 + 200 + 400 ms.
    assert_eq!(started.elapsed(), 700 * MS);
}

#[tokio::test(start_paused = true)]
async fn does_not_retry_what_the_classifier_calls_not_retryable() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new().backoff(fixed(MS)))
        .service_fn(move |()| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                Err::<(), BoxError>(
                    Error::RateLimited {
                        retry_after: Duration::from_secs(1),
                    }
                    .into(),
                )
            }
        });
    let error = service.oneshot(()).await.unwrap_err();
    assert!(matches!(
        Error::find(&*error),
        Some(Error::RateLimited { .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_times_out_and_the_next_one_runs() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let service = ServiceBuilder::new()
        .layer(
            RetryLayer::new()
                .per_try_timeout(Duration::from_secs(1))
                .backoff(fixed(50 * MS)),
        )
        .service_fn(move |()| {
            let attempt = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt == 0 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Ok::<_, BoxError>(attempt)
            }
        });
    let started = Instant::now();
    assert_eq!(service.oneshot(()).await.unwrap(), 1);
    assert_eq!(started.elapsed(), Duration::from_secs(1) + 50 * MS);
}

#[tokio::test(start_paused = true)]
async fn every_attempt_timing_out_ends_with_a_typed_timeout() {
    let service = ServiceBuilder::new()
        .layer(
            RetryLayer::new()
                .max_attempts(2)
                .per_try_timeout(Duration::from_secs(1))
                .backoff(fixed(MS)),
        )
        .service_fn(|()| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, BoxError>(())
        });
    let error = service.oneshot(()).await.unwrap_err();
    assert_eq!(
        Error::find(&*error),
        Some(&Error::Timeout {
            after: Duration::from_secs(1)
        })
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_the_whole_call() {
    let (calls, inner) = flaky(100);
    let service = ServiceBuilder::new()
        .layer(
            RetryLayer::new()
                .max_attempts(100)
                .deadline(Duration::from_secs(1))
                .backoff(fixed(300 * MS)),
        )
        .service(inner);
    let started = Instant::now();
    service.oneshot(1).await.unwrap_err();
    // Attempts at 0, 300, 600, 900 ms; a wait to 1,200 ms would pass the deadline.
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(started.elapsed(), 900 * MS);

    let hanging = ServiceBuilder::new()
        .layer(RetryLayer::new().deadline(Duration::from_secs(2)))
        .service_fn(|()| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, BoxError>(())
        });
    let error = hanging.oneshot(()).await.unwrap_err();
    assert!(matches!(
        Error::find(&*error),
        Some(Error::DeadlineExceeded { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_shared_budget_stops_retries_during_an_outage() {
    let budget = RetryBudget::new(10, 0.1);
    let (calls, inner) = flaky(u32::MAX);
    let layer = RetryLayer::new()
        .max_attempts(3)
        .backoff(fixed(MS))
        .budget(budget.clone());
    let first_client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(inner.clone());
    let second_client = ServiceBuilder::new().layer(layer).service(inner);
    // Each failed attempt takes a token; retries stop once 5 or fewer of 10 are left.
    first_client.clone().oneshot(1).await.unwrap_err();
    first_client.oneshot(1).await.unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "3 attempts, then 2: the fifth failure spent the budget"
    );
    second_client.oneshot(1).await.unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "the other client shares the budget: no retry"
    );
    assert!((budget.tokens() - 4.0).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn many_layers_built_with_a_fresh_budget_each_retry_and_charge_their_own_budget() {
    // A layer stack built per connection with its own budget: every layer keeps its own
    // settings, and a retry is charged to its own budget, never to another layer's.
    for connection in 0..300 {
        let budget = RetryBudget::new(10, 0.1);
        let (calls, inner) = flaky(1);
        let service = ServiceBuilder::new()
            .layer(
                RetryLayer::new()
                    .max_attempts(3)
                    .backoff(fixed(MS))
                    .budget(budget.clone()),
            )
            .service(inner);
        assert_eq!(
            service.oneshot(7).await.unwrap(),
            7,
            "connection {connection}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2, "connection {connection}");
        assert!(
            budget.tokens() < 10.0,
            "connection {connection}: the retry was charged to this layer's own budget"
        );
    }
}

/// A body that cannot be cloned: chunks handed out once.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

fn chunks(parts: &[&'static str]) -> Chunks {
    Chunks(
        parts
            .iter()
            .map(|p| Bytes::from_static(p.as_bytes()))
            .collect(),
    )
}

type Seen = Arc<Mutex<Vec<(Method, Bytes)>>>;

/// An HTTP service that records each request's method and body and answers with `statuses` in
/// turn (the last one repeating), with optional extra headers.
fn http_server(
    statuses: &'static [u16],
    header: Option<(&'static str, &'static str)>,
) -> (
    Seen,
    impl tower::Service<
        Request<RetryBody<Chunks>>,
        Response = Response<()>,
        Error = BoxError,
        Future: Send,
    > + Clone,
) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let service = tower::service_fn(move |request: Request<RetryBody<Chunks>>| {
        let log = log.clone();
        async move {
            let method = request.method().clone();
            let body = request.into_body().collect().await?.to_bytes();
            let n = {
                let mut log = log.lock().unwrap();
                log.push((method, body));
                log.len()
            };
            let status = statuses[(n - 1).min(statuses.len() - 1)];
            let mut response = Response::builder().status(status);
            if let Some((name, value)) = header {
                response = response.header(name, value);
            }
            Ok::<_, BoxError>(response.body(()).unwrap())
        }
    });
    (seen, service)
}

fn request(method: Method, body: Chunks) -> Request<Chunks> {
    Request::builder()
        .method(method)
        .uri("http://payments.internal/charge")
        .body(body)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn http_replays_a_streamed_body_that_fits_the_buffer() {
    let (seen, server) = http_server(&[503, 502, 200], None);
    let service = ServiceBuilder::new()
        .layer(RetryLayer::http().backoff(fixed(MS)))
        .service(server);
    let response = service
        .oneshot(request(Method::PUT, chunks(&["{\"amount\":", "42}"])))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|(_, body)| body == "{\"amount\":42}"));
}

#[tokio::test(start_paused = true)]
async fn http_does_not_retry_a_body_larger_than_the_buffer_but_sends_it_whole() {
    let (seen, server) = http_server(&[503], None);
    let service = ServiceBuilder::new()
        .layer(
            RetryLayer::http()
                .backoff(fixed(MS))
                .requests(HttpRequests::new().max_replay_bytes(8)),
        )
        .service(server);
    let response = service
        .oneshot(request(Method::PUT, chunks(&["0123456", "789", "abcdef"])))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].1, "0123456789abcdef");
}

#[tokio::test(start_paused = true)]
async fn http_retries_only_idempotent_methods_unless_told() {
    let (seen, server) = http_server(&[503, 200], None);
    let service = ServiceBuilder::new()
        .layer(RetryLayer::http().backoff(fixed(MS)))
        .service(server.clone());
    let response = service
        .oneshot(request(Method::POST, chunks(&["pay"])))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (seen, server) = http_server(&[503, 200], None);
    let service = ServiceBuilder::new()
        .layer(
            RetryLayer::http()
                .backoff(fixed(MS))
                .requests(HttpRequests::new().retry_non_idempotent(true)),
        )
        .service(server);
    let response = service
        .oneshot(request(Method::POST, chunks(&["pay"])))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn http_honours_retry_after() {
    let (seen, server) = http_server(&[503, 200], Some(("retry-after", "7")));
    let service = ServiceBuilder::new()
        .layer(RetryLayer::http().backoff(fixed(MS)))
        .service(server);
    let started = Instant::now();
    let response = service
        .oneshot(request(Method::GET, chunks(&[])))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(started.elapsed(), Duration::from_secs(7));
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn grpc_honours_pushback_and_its_refusal() {
    let (seen, server) = http_server(&[200], Some(("grpc-retry-pushback-ms", "250")));
    let unavailable_then_ok = tower::service_fn(move |request: Request<RetryBody<Chunks>>| {
        let mut server = server.clone();
        let seen = seen.clone();
        async move {
            let mut response = server.ready().await?.call(request).await?;
            let first = seen.lock().unwrap().len() == 1;
            let code = if first { "14" } else { "0" };
            response
                .headers_mut()
                .insert("grpc-status", code.parse().unwrap());
            Ok::<_, BoxError>(response)
        }
    });
    let service = ServiceBuilder::new()
        .layer(RetryLayer::grpc().backoff(fixed(MS)))
        .service(unavailable_then_ok);
    let started = Instant::now();
    let response = service
        .oneshot(request(Method::POST, chunks(&["msg"])))
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "0");
    assert_eq!(started.elapsed(), 250 * MS);

    let (seen, server) = http_server(&[200], Some(("grpc-retry-pushback-ms", "-1")));
    let always_unavailable = server.map_response(|mut response: Response<()>| {
        response
            .headers_mut()
            .insert("grpc-status", "14".parse().unwrap());
        response
    });
    let service = ServiceBuilder::new()
        .layer(RetryLayer::grpc().backoff(fixed(MS)))
        .service(always_unavailable);
    service
        .oneshot(request(Method::POST, chunks(&["msg"])))
        .await
        .unwrap();
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a negative pushback means do not retry"
    );
}

#[tokio::test(start_paused = true)]
async fn calls_refused_by_an_open_breaker_neither_retry_nor_touch_the_budget() {
    let budget = RetryBudget::new(10, 0.1);
    budget.record_failure();
    let breaker = ms_resilience::circuit_breaker::CircuitBreaker::builder().build();
    breaker.force_open();
    let (calls, inner) = flaky(0);
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new().budget(budget.clone()).backoff(fixed(MS)))
        .layer(breaker.layer())
        .service(inner);
    let error = service.oneshot(1).await.unwrap_err();
    assert!(matches!(
        Error::find(&*error),
        Some(Error::CircuitOpen { .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!((budget.tokens() - 9.0).abs() < 1e-9, "{}", budget.tokens());
}

#[tokio::test(start_paused = true)]
async fn budgets_per_destination_stop_retries_to_the_failing_one_only() {
    let budgets: RetryBudgets<String> = RetryBudgets::new(10, 0.1);
    let client = |destination: &str, failures: u32| {
        let (calls, inner) = flaky(failures);
        let service = ServiceBuilder::new()
            .layer(
                RetryLayer::new()
                    .max_attempts(3)
                    .backoff(fixed(MS))
                    .budget(budgets.get(destination)),
            )
            .service(inner);
        (calls, service)
    };
    // "orders" is down: every attempt fails. Each call takes a token per attempt.
    let (orders_calls, orders) = client("orders:80", u32::MAX);
    for _ in 0..4 {
        orders.clone().oneshot(1).await.unwrap_err();
    }
    // 3 + 2 attempts spent five tokens (10 -> 5: no more retries); then one attempt each.
    assert_eq!(orders_calls.load(Ordering::SeqCst), 3 + 2 + 1 + 1);
    assert!(!budgets.get("orders:80").can_retry());

    // "billing" fails once per call but has its own bucket: it still retries.
    let (billing_calls, inner) = flaky(1);
    let billing = ServiceBuilder::new()
        .layer(
            RetryLayer::new()
                .max_attempts(3)
                .backoff(fixed(MS))
                .budget(budgets.get("billing:80")),
        )
        .service(inner);
    assert_eq!(billing.oneshot(7).await.unwrap(), 7);
    assert_eq!(billing_calls.load(Ordering::SeqCst), 2);

    // A second client of "orders" (another layer, same destination) shares the spent bucket.
    let (second_calls, second) = client("orders:80", u32::MAX);
    second.oneshot(1).await.unwrap_err();
    assert_eq!(second_calls.load(Ordering::SeqCst), 1);
    assert_eq!(budgets.len(), 2);
}

#[test]
fn budgets_are_shared_by_clones_and_bounded() {
    let budgets: RetryBudgets<String> = RetryBudgets::with_max_destinations(10, 0.1, 2);
    let clone = budgets.clone();
    assert!(budgets.is_empty());
    assert_eq!(budgets.get("a"), clone.get("a"));
    assert_ne!(budgets.get("a"), budgets.get("b"));
    assert_eq!(budgets.len(), 2);
    // Full: further destinations share one overflow bucket, and the count stays at the bound.
    let overflow = budgets.get("c");
    assert_eq!(overflow, clone.get("d"));
    assert_ne!(overflow, budgets.get("a"));
    assert_ne!(overflow, budgets.get("b"));
    assert_eq!(clone.len(), 2);
    // A known destination keeps its own bucket.
    for _ in 0..5 {
        budgets.get("a").record_failure();
    }
    assert!(!clone.get("a").can_retry());
    assert!(clone.get("b").can_retry());
    assert!(clone.get("c").can_retry());
}
