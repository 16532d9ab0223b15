//! Breaker and retry over real HTTP: an axum server on 127.0.0.1 that fails on command, and
//! hyper-util's client through `RetryLayer::http()` and a circuit breaker with the HTTP
//! classifier.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::put;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ms_resilience::backoff::{ExponentialBackoff, Jitter};
use ms_resilience::circuit_breaker::{CircuitBreaker, SlidingWindow, State as BreakerState};
use ms_resilience::classify::HttpClassifier;
use ms_resilience::retry::RetryLayer;
use ms_resilience::{BoxError, Error};
use tower::{ServiceBuilder, ServiceExt};

/// The server's switchboard: how many of the next requests fail with 503, and what it saw.
#[derive(Default)]
struct Switch {
    fail_next: AtomicU32,
    received: AtomicU32,
    bodies: std::sync::Mutex<Vec<Bytes>>,
}

async fn charge(State(switch): State<Arc<Switch>>, body: Bytes) -> (StatusCode, Bytes) {
    switch.received.fetch_add(1, Ordering::SeqCst);
    switch.bodies.lock().unwrap().push(body.clone());
    let failing = switch
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        (StatusCode::SERVICE_UNAVAILABLE, Bytes::new())
    } else {
        (StatusCode::OK, body)
    }
}

async fn server() -> (String, Arc<Switch>, tokio::task::JoinHandle<()>) {
    let switch = Arc::new(Switch::default());
    let app = Router::new()
        .route("/charge", put(charge))
        .with_state(switch.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (address, switch, task)
}

fn put_request(address: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::PUT)
        .uri(format!("{address}/charge"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn retry_and_breaker_over_a_real_connection() {
    let (address, switch, server_task) = server().await;
    let breaker = CircuitBreaker::builder()
        .name("payments")
        .sliding_window(SlidingWindow::Count(4))
        .minimum_number_of_calls(4)
        .open_duration(Duration::from_secs(3600))
        .build();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let service = ServiceBuilder::new()
        .layer(
            RetryLayer::http().max_attempts(3).backoff(
                ExponentialBackoff::new(Duration::from_millis(5), Duration::from_millis(5))
                    .with_jitter(Jitter::None),
            ),
        )
        .layer(breaker.layer().with_classifier(HttpClassifier::new()))
        .service(client);

    // Two 503s, then the third attempt goes through with the same body.
    switch.fail_next.store(2, Ordering::SeqCst);
    let response = service
        .clone()
        .oneshot(put_request(&address, "{\"amount\":42}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "{\"amount\":42}");
    assert_eq!(switch.received.load(Ordering::SeqCst), 3);
    assert!(
        switch
            .bodies
            .lock()
            .unwrap()
            .iter()
            .all(|b| b == "{\"amount\":42}")
    );
    assert_eq!(breaker.state(), BreakerState::Closed);
    // 2 failures of 3 calls, minimum 4 not reached.
    assert_eq!(breaker.metrics().window.failures, 2);

    // The server keeps failing: one more 503 makes 3 of 4, and the breaker opens; the
    // remaining attempts are refused without reaching the server.
    switch.fail_next.store(100, Ordering::SeqCst);
    let error = service
        .clone()
        .oneshot(put_request(&address, "{\"amount\":7}"))
        .await
        .unwrap_err();
    assert!(
        matches!(Error::find(&*error), Some(Error::CircuitOpen { .. })),
        "{error}"
    );
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(switch.received.load(Ordering::SeqCst), 4);

    // Open: calls fail fast and the server sees nothing.
    let error = service
        .clone()
        .oneshot(put_request(&address, "{}"))
        .await
        .unwrap_err();
    assert!(matches!(
        Error::find(&*error),
        Some(Error::CircuitOpen { .. })
    ));
    assert_eq!(switch.received.load(Ordering::SeqCst), 4);

    // The server goes away: connection refused is a retryable failure the breaker counts.
    server_task.abort();
    let _ = server_task.await;
    breaker.reset();
    let result: Result<_, BoxError> = service.clone().oneshot(put_request(&address, "{}")).await;
    let error = result.unwrap_err();
    assert!(
        Error::find(&*error).is_none(),
        "a transport error, not ours: {error}"
    );
    assert_eq!(
        breaker.metrics().window.failures,
        3,
        "three attempts, three failures"
    );
}
