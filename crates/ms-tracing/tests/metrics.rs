//! RED metrics of the trace layers over real sockets (axum through a hyper-util client, tonic
//! health through a tonic channel), and the classifier that decides both a span's status and a
//! metric's `error.type`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use ms_resilience::classify::{GrpcClassifier, HttpClassifier};
use ms_tracing::metrics::{
    HTTP_CLIENT_REQUEST_DURATION, HTTP_SERVER_REQUEST_DURATION, MESSAGING_CLIENT_SENT_MESSAGES,
    MESSAGING_PROCESS_DURATION, RPC_CLIENT_DURATION, RPC_SERVER_DURATION,
};
use ms_tracing::testing::TestTracing;
use ms_tracing::{ClientTraceLayer, ServerTraceLayer};
use opentelemetry::trace::Status;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Service, ServiceBuilder, ServiceExt};

/// One recorded series: its labels and how many samples (or the counter's value) it has.
#[derive(Debug, Clone)]
struct Series {
    labels: BTreeMap<String, String>,
    count: u64,
}

/// What a recorder saw so far. A snapshot drains the recorder, so this adds each one up.
struct Observed {
    snapshotter: Snapshotter,
    seen: BTreeMap<(String, Vec<(String, String)>), u64>,
}

impl Observed {
    fn new(recorder: &DebuggingRecorder) -> Self {
        Self {
            snapshotter: recorder.snapshotter(),
            seen: BTreeMap::new(),
        }
    }

    fn series(&mut self, name: &str) -> Vec<Series> {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let count = match value {
                DebugValue::Histogram(samples) => samples.len() as u64,
                DebugValue::Counter(n) => n,
                DebugValue::Gauge(_) => 0,
            };
            *self
                .seen
                .entry((key.key().name().to_owned(), labels))
                .or_default() += count;
        }
        self.seen
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, labels), count)| Series {
                labels: labels.iter().cloned().collect(),
                count: *count,
            })
            .collect()
    }

    /// Yields to the server tasks until `name` has `count` samples in all.
    async fn settle(&mut self, name: &str, count: u64) {
        for _ in 0..2_000 {
            if self.series(name).iter().map(|s| s.count).sum::<u64>() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{name} never reached {count} samples");
    }
}

fn label<'a>(series: &'a Series, key: &str) -> Option<&'a str> {
    series.labels.get(key).map(String::as_str)
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

fn app() -> axum::Router {
    axum::Router::new()
        .route("/orders/{id}", axum::routing::get(|| async { "order" }))
        .route(
            "/broken",
            axum::routing::get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route(
            "/busy",
            axum::routing::get(|| async { StatusCode::TOO_MANY_REQUESTS }),
        )
}

async fn get<S>(client: &mut S, address: SocketAddr, path: &str) -> StatusCode
where
    S: Service<
            Request<Empty<Bytes>>,
            Response = http::Response<ms_tracing::response::ResponseBody<hyper::body::Incoming>>,
        >,
    S::Error: std::fmt::Debug,
{
    let request = Request::get(format!("http://{address}{path}"))
        .body(Empty::new())
        .unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn http_calls_are_counted_and_timed_on_both_sides_with_the_conventions_labels() {
    let recorder = DebuggingRecorder::new();
    let mut observed = Observed::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let address = serve(app().layer(ServerTraceLayer::new())).await;
    let mut client = ServiceBuilder::new()
        .layer(ClientTraceLayer::new())
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());

    assert_eq!(get(&mut client, address, "/orders/7").await, StatusCode::OK);
    assert_eq!(get(&mut client, address, "/orders/8").await, StatusCode::OK);
    assert_eq!(
        get(&mut client, address, "/broken").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get(&mut client, address, "/nowhere").await,
        StatusCode::NOT_FOUND
    );
    observed.settle(HTTP_SERVER_REQUEST_DURATION, 4).await;

    let server = observed.series(HTTP_SERVER_REQUEST_DURATION);
    let ok = server
        .iter()
        .find(|s| label(s, "http.route") == Some("/orders/{id}"))
        .expect("one series per route template, not per order");
    assert_eq!(ok.count, 2);
    assert_eq!(label(ok, "http.request.method"), Some("GET"));
    assert_eq!(label(ok, "http.response.status_code"), Some("200"));
    assert_eq!(label(ok, "url.scheme"), Some("http"));
    assert_eq!(label(ok, "network.protocol.version"), Some("1.1"));
    assert_eq!(label(ok, "error.type"), None);
    let broken = server
        .iter()
        .find(|s| label(s, "http.route") == Some("/broken"))
        .unwrap();
    assert_eq!(label(broken, "error.type"), Some("500"));
    // A 404 is the caller's doing: no error on the server side.
    let missing = server
        .iter()
        .find(|s| label(s, "http.response.status_code") == Some("404"))
        .unwrap();
    assert_eq!(label(missing, "error.type"), None);
    assert_eq!(label(missing, "http.route"), None);

    let client_series = observed.series(HTTP_CLIENT_REQUEST_DURATION);
    assert_eq!(client_series.iter().map(|s| s.count).sum::<u64>(), 4);
    let port = address.port().to_string();
    for s in &client_series {
        assert_eq!(label(s, "server.address"), Some("127.0.0.1"));
        assert_eq!(label(s, "server.port"), Some(port.as_str()));
    }
    let client_404 = client_series
        .iter()
        .find(|s| label(s, "http.response.status_code") == Some("404"))
        .unwrap();
    // ... but on the client's, 4xx is a failed call.
    assert_eq!(label(client_404, "error.type"), Some("404"));
}

#[tokio::test]
async fn the_breakers_classifier_decides_the_span_and_the_metric_alike() {
    let recorder = DebuggingRecorder::new();
    let mut observed = Observed::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    // ms-resilience's HttpClassifier counts a 429 as a failure (the server shedding load),
    // where the server layer's default counts only 5xx.
    let layer = ServerTraceLayer::new().http_classifier(HttpClassifier::new());
    let address = serve(app().layer(layer)).await;
    let mut client = ServiceBuilder::new()
        .layer(ClientTraceLayer::new().metrics(false))
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    get(&mut client, address, "/busy").await;
    get(&mut client, address, "/orders/1").await;
    observed.settle(HTTP_SERVER_REQUEST_DURATION, 2).await;

    let server = observed.series(HTTP_SERVER_REQUEST_DURATION);
    let busy = server
        .iter()
        .find(|s| label(s, "http.route") == Some("/busy"))
        .unwrap();
    assert_eq!(label(busy, "error.type"), Some("429"));
    let spans = tracing.spans();
    let span = |route: &str| {
        spans
            .iter()
            .find(|s| s.name == format!("GET {route}"))
            .unwrap()
    };
    assert!(matches!(span("/busy").status, Status::Error { .. }));
    assert_eq!(span("/orders/{id}").status, Status::Unset);
    // The client layer recorded nothing: metrics(false).
    assert!(observed.series(HTTP_CLIENT_REQUEST_DURATION).is_empty());
}

#[tokio::test]
async fn grpc_calls_are_timed_in_milliseconds_with_the_status_from_the_trailers() {
    let recorder = DebuggingRecorder::new();
    let mut observed = Observed::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("billing", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(ServerTraceLayer::new())
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    // The client takes the breaker's gRPC classifier: NOT_FOUND is the caller's problem there.
    let mut breaker_minded = HealthClient::new(
        ServiceBuilder::new()
            .layer(ClientTraceLayer::new().grpc_classifier(GrpcClassifier::new()))
            .service(channel.clone()),
    );
    let mut plain = HealthClient::new(
        ServiceBuilder::new()
            .layer(ClientTraceLayer::new())
            .service(channel),
    );
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    plain.check(check("billing")).await.unwrap();
    plain.check(check("nope")).await.unwrap_err();
    breaker_minded.check(check("nope")).await.unwrap_err();
    observed.settle(RPC_SERVER_DURATION, 3).await;
    observed.settle(RPC_CLIENT_DURATION, 3).await;

    let server = observed.series(RPC_SERVER_DURATION);
    for s in &server {
        assert_eq!(label(s, "rpc.system"), Some("grpc"));
        assert_eq!(label(s, "rpc.service"), Some("grpc.health.v1.Health"));
        assert_eq!(label(s, "rpc.method"), Some("Check"));
        // OK and NOT_FOUND: neither is the server's fault.
        assert_eq!(label(s, "error.type"), None, "{s:?}");
    }
    let codes: Vec<(&str, u64)> = server
        .iter()
        .map(|s| (label(s, "rpc.grpc.status_code").unwrap(), s.count))
        .collect();
    assert!(
        codes.contains(&("0", 1)) && codes.contains(&("5", 2)),
        "{codes:?}"
    );

    let client = observed.series(RPC_CLIENT_DURATION);
    let not_found: Vec<&Series> = client
        .iter()
        .filter(|s| label(s, "rpc.grpc.status_code") == Some("5"))
        .collect();
    // Two calls, one series each: the plain client called it a failure, the breaker's
    // classifier did not.
    let mut error_types: Vec<Option<&str>> =
        not_found.iter().map(|s| label(s, "error.type")).collect();
    error_types.sort_unstable();
    assert_eq!(error_types, [None, Some("NOT_FOUND")]);
    // A tonic client above a `Channel` sends path-only URIs: no `server.address` to give.
    assert!(client.iter().all(|s| label(s, "server.address").is_none()));
}

#[tokio::test]
async fn a_call_given_up_before_its_answer_is_recorded_as_cancelled() {
    let recorder = DebuggingRecorder::new();
    let mut observed = Observed::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut client = ServiceBuilder::new()
        .layer(ClientTraceLayer::new())
        .service_fn(|_: Request<()>| async {
            std::future::pending::<Result<http::Response<()>, std::convert::Infallible>>().await
        });
    let call = client
        .ready()
        .await
        .unwrap()
        .call(Request::get("http://billing/slow").body(()).unwrap());
    assert!(
        tokio::time::timeout(Duration::from_millis(5), call)
            .await
            .is_err()
    );
    let client = observed.series(HTTP_CLIENT_REQUEST_DURATION);
    assert_eq!(client.len(), 1);
    assert_eq!(label(&client[0], "error.type"), Some("cancelled"));
    assert_eq!(label(&client[0], "http.response.status_code"), None);
}

#[test]
fn a_bus_records_processing_and_publishing_through_the_same_facade() {
    let recorder = DebuggingRecorder::new();
    let mut observed = Observed::new(&recorder);
    metrics::with_local_recorder(&recorder, || {
        ms_tracing::metrics::record_process("nats", "invoices", Duration::from_millis(3), None);
        ms_tracing::metrics::record_process(
            "nats",
            "invoices",
            Duration::from_millis(4),
            Some("handler"),
        );
        ms_tracing::metrics::count_sent("nats", "invoices", 1, None);
        ms_tracing::metrics::count_sent("nats", "invoices", 1, None);
    });
    let process = observed.series(MESSAGING_PROCESS_DURATION);
    assert_eq!(process.len(), 2);
    assert!(
        process
            .iter()
            .all(|s| label(s, "messaging.operation.name") == Some("process")
                && label(s, "messaging.destination.name") == Some("invoices")
                && label(s, "messaging.system") == Some("nats"))
    );
    let sent = observed.series(MESSAGING_CLIENT_SENT_MESSAGES);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].count, 2);
}
