//! Graceful shutdown: readiness fails first, liveness stays up, the caller is released after the
//! drain delay.
#![cfg(feature = "axum")]

use std::time::Duration;

use axum::http::StatusCode;
use ms_health::{CheckResult, HealthRegistry, Status, check_fn};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const DRAIN: Duration = Duration::from_secs(5);

fn registry(drain: Duration) -> HealthRegistry {
    HealthRegistry::builder()
        .readiness("db", check_fn(|| async { CheckResult::pass() }))
        .liveness("loop", check_fn(|| async { CheckResult::pass() }))
        .drain_delay(drain)
        .build()
        .unwrap()
}

mod common;

async fn status_and_body(app: &axum::Router, uri: &str) -> (StatusCode, serde_json::Value) {
    let answer = common::get(app, uri).await;
    // Every answer, 503 during the drain included, stays a health+json document.
    assert_eq!(answer.content_type, ms_health::HEALTH_JSON_CONTENT_TYPE);
    (answer.status, answer.body)
}

#[tokio::test(start_paused = true)]
async fn shutdown_fails_readiness_while_liveness_stays_up() {
    let registry = registry(DRAIN);
    let app = ms_health::router(registry.clone());
    assert_eq!(status_and_body(&app, "/readyz").await.0, StatusCode::OK);

    let shutdown = tokio::spawn({
        let registry = registry.clone();
        async move { registry.shutdown().await }
    });
    tokio::task::yield_now().await;

    let (status, body) = status_and_body(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["output"], "shutting down");
    assert_eq!(status_and_body(&app, "/healthz").await.0, StatusCode::OK);
    assert!(!shutdown.is_finished());
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_after_the_drain_delay_not_before() {
    let registry = registry(DRAIN);
    let started = tokio::time::Instant::now();

    let shutdown = tokio::spawn({
        let registry = registry.clone();
        async move { registry.shutdown().await }
    });
    tokio::time::sleep(DRAIN.saturating_sub(Duration::from_millis(1))).await;
    assert!(!shutdown.is_finished(), "released before the drain delay");
    shutdown.await.unwrap();

    assert_eq!(started.elapsed(), DRAIN);
    // Liveness is never touched, even after the drain.
    assert_eq!(registry.liveness().await.status, Status::Pass);
    assert_eq!(registry.readiness().await.status, Status::Fail);
}

#[tokio::test(start_paused = true)]
async fn repeated_shutdown_calls_share_one_deadline() {
    let registry = registry(DRAIN);
    let started = tokio::time::Instant::now();

    let first = tokio::spawn({
        let registry = registry.clone();
        async move { registry.shutdown().await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    registry.shutdown().await;

    assert_eq!(started.elapsed(), DRAIN);
    first.await.unwrap();
}

/// Sends one HTTP/1.1 request over a fresh connection and returns the status code.
async fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

#[tokio::test]
async fn serving_with_graceful_shutdown_answers_503_during_the_drain_then_stops() {
    let drain = Duration::from_millis(400);
    let registry = registry(drain);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, signal) = tokio::sync::oneshot::channel::<()>();
    let serve = axum::serve(listener, ms_health::router(registry.clone())).with_graceful_shutdown(
        registry.shutdown_on(async {
            signal.await.ok();
        }),
    );
    let server = tokio::spawn(async move { serve.await });

    assert_eq!(http_status(addr, "/readyz").await, 200);
    let triggered = std::time::Instant::now();
    trigger.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Still accepting connections during the drain, and telling load balancers to go away.
    assert_eq!(http_status(addr, "/readyz").await, 503);
    assert_eq!(http_status(addr, "/healthz").await, 200);

    server.await.unwrap().unwrap();
    assert!(triggered.elapsed() >= drain);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_begun_resolves_when_shutdown_begins() {
    let registry = registry(Duration::ZERO);
    let begun = tokio::spawn(registry.shutdown_begun());
    tokio::task::yield_now().await;
    assert!(!begun.is_finished());

    registry.begin_shutdown();

    tokio::time::timeout(Duration::from_secs(1), begun)
        .await
        .expect("shutdown_begun did not resolve")
        .unwrap();
}

/// A drain delay too long for the clock (`Duration::MAX`) drains, rather than releasing the
/// caller at once.
#[tokio::test(start_paused = true)]
async fn a_drain_delay_of_duration_max_keeps_draining() {
    let registry = registry(Duration::MAX);
    let shutdown = tokio::spawn({
        let registry = registry.clone();
        async move { registry.shutdown().await }
    });
    tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)).await;
    assert!(!shutdown.is_finished(), "still draining after a year");
    assert_eq!(registry.readiness().await.status, Status::Fail);
    shutdown.abort();
}
