//! Breaker and retry over real gRPC: tonic-health's service served by tonic on 127.0.0.1,
//! behind a server layer that answers `UNAVAILABLE` on command; tonic-health's generated
//! client over a tonic `Channel` through `RetryLayer::grpc()` and a breaker with the gRPC
//! classifier.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use ms_resilience::backoff::{ExponentialBackoff, Jitter};
use ms_resilience::circuit_breaker::{CircuitBreaker, SlidingWindow, State};
use ms_resilience::classify::GrpcClassifier;
use ms_resilience::retry::{RetryBody, RetryLayer};
use tonic::transport::{Channel, Server};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Layer, Service, ServiceBuilder};

/// Counts requests, and answers the next `fail_next` of them with a trailers-only
/// `UNAVAILABLE` (the `code`) instead of passing them on.
#[derive(Clone, Default)]
struct Switch {
    fail_next: Arc<AtomicU32>,
    code: Arc<AtomicU32>,
    received: Arc<AtomicU32>,
}

#[derive(Clone)]
struct Failing<S> {
    inner: S,
    switch: Switch,
}

impl<S> Layer<S> for Switch {
    type Service = Failing<S>;

    fn layer(&self, inner: S) -> Failing<S> {
        Failing {
            inner,
            switch: self.clone(),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Failing<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.switch.received.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .switch
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            let code =
                tonic::Code::from(i32::try_from(self.switch.code.load(Ordering::SeqCst)).unwrap());
            let status = tonic::Status::new(code, "switched off");
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}

async fn server(switch: Switch) -> String {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("ms.Payments", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        Server::builder()
            .layer(switch)
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
        drop(reporter);
    });
    address
}

fn check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: "ms.Payments".into(),
    }
}

#[tokio::test]
async fn retry_and_breaker_over_a_real_grpc_channel() {
    let switch = Switch::default();
    switch
        .code
        .store(tonic::Code::Unavailable as u32, Ordering::SeqCst);
    let address = server(switch.clone()).await;
    let channel = Channel::from_shared(address)
        .unwrap()
        .connect()
        .await
        .unwrap();

    let breaker = CircuitBreaker::builder()
        .name("payments-grpc")
        .sliding_window(SlidingWindow::Count(5))
        .minimum_number_of_calls(5)
        .failure_rate_threshold(60.0)
        .open_duration(Duration::from_secs(3600))
        .build();
    let stack = ServiceBuilder::new()
        .layer(
            RetryLayer::grpc().max_attempts(3).backoff(
                ExponentialBackoff::new(Duration::from_millis(5), Duration::from_millis(5))
                    .with_jitter(Jitter::None),
            ),
        )
        .layer(breaker.layer().with_classifier(GrpcClassifier::new()))
        .map_request(|request: http::Request<RetryBody<tonic::body::Body>>| {
            request.map(tonic::body::Body::new)
        })
        .service(channel);
    let mut client = HealthClient::new(stack);

    // Two UNAVAILABLEs, then the third attempt (the same message, replayed) is served.
    switch.fail_next.store(2, Ordering::SeqCst);
    let response = client.check(check()).await.unwrap().into_inner();
    assert_eq!(
        response.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    assert_eq!(switch.received.load(Ordering::SeqCst), 3);
    assert_eq!(breaker.metrics().window.failures, 2);

    // INVALID_ARGUMENT-like caller errors are not failures and are not retried.
    switch
        .code
        .store(tonic::Code::InvalidArgument as u32, Ordering::SeqCst);
    switch.fail_next.store(1, Ordering::SeqCst);
    let status = client.check(check()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(switch.received.load(Ordering::SeqCst), 4);
    assert_eq!(breaker.state(), State::Closed);

    // INTERNAL fails (not retryable): 3 of the last 5 calls failed, 60 %: the breaker opens.
    switch
        .code
        .store(tonic::Code::Internal as u32, Ordering::SeqCst);
    switch.fail_next.store(100, Ordering::SeqCst);
    let status = client.check(check()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert_eq!(
        switch.received.load(Ordering::SeqCst),
        5,
        "INTERNAL is not retried"
    );
    assert_eq!(breaker.state(), State::Open);

    // Open: the call fails in the client without reaching the server.
    let status = client.check(check()).await.unwrap_err();
    assert!(
        status
            .message()
            .contains("circuit breaker `payments-grpc` is open"),
        "{status:?}"
    );
    assert_eq!(switch.received.load(Ordering::SeqCst), 5);
}
