//! RED metrics (rate, errors, duration) through the [`metrics`] facade (feature `metrics`),
//! named and labelled by OpenTelemetry's semantic conventions: every call through
//! [`ServerTraceLayer`](crate::ServerTraceLayer) and [`ClientTraceLayer`](crate::ClientTraceLayer)
//! records one histogram sample when it ends, and a message bus records its processing and
//! publishing with [`record_process`] and [`count_sent`] (ms-bus does, with its own `metrics`
//! feature). Nothing is recorded until the application installs a recorder (for Prometheus,
//! `metrics-exporter-prometheus`); the ms crates all record through this one facade.
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use metrics_util::debugging::{DebugValue, DebuggingRecorder};
//! use ms_tracing::ServerTraceLayer;
//! use ms_tracing::metrics::HTTP_SERVER_REQUEST_DURATION;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! let _local = metrics::set_default_local_recorder(&recorder);
//!
//! let mut service = ServiceBuilder::new()
//!     .layer(ServerTraceLayer::new())
//!     .service_fn(|_: Request<String>| async {
//!         let mut response = Response::new(String::new());
//!         *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
//!         Ok::<_, std::convert::Infallible>(response)
//!     });
//! let response = service.ready().await?.call(Request::post("/orders").body(String::new())?).await?;
//! drop(response); // the call ends with its response body
//!
//! let (key, _, _, value) = snapshotter.snapshot().into_vec().remove(0);
//! assert_eq!(key.key().name(), HTTP_SERVER_REQUEST_DURATION);
//! let label = |name: &str| key.key().labels().find(|l| l.key() == name).map(|l| l.value().to_owned());
//! assert_eq!(label("http.request.method").as_deref(), Some("POST"));
//! assert_eq!(label("http.response.status_code").as_deref(), Some("503"));
//! assert_eq!(label("error.type").as_deref(), Some("503")); // what the classifier called a failure
//! assert!(matches!(value, DebugValue::Histogram(samples) if samples.len() == 1));
//! # Ok(())
//! # }
//! ```
//!
//! | metric | kind, unit | labels |
//! |---|---|---|
//! | [`HTTP_SERVER_REQUEST_DURATION`] | histogram, s | `http.request.method`, `url.scheme`, `network.protocol.version`, `http.route` (axum feature), `http.response.status_code`, `error.type` |
//! | [`HTTP_CLIENT_REQUEST_DURATION`] | histogram, s | `http.request.method`, `url.scheme`, `server.address`, `server.port`, `http.response.status_code`, `error.type` |
//! | [`RPC_SERVER_DURATION`] | histogram, ms | `rpc.system` (`grpc`), `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `error.type` |
//! | [`RPC_CLIENT_DURATION`] | histogram, ms | as the server's, and `server.address`, `server.port` |
//! | [`MESSAGING_PROCESS_DURATION`] | histogram, s | `messaging.system`, `messaging.destination.name`, `messaging.operation.name` (`process`), `error.type` |
//! | [`MESSAGING_CLIENT_SENT_MESSAGES`] | counter | `messaging.system`, `messaging.destination.name`, `messaging.operation.name` (`send`), `error.type` |
//!
//! A histogram's count is the call rate; `error.type` is there only on failures: the status
//! code (`"503"`) of an HTTP response the layer's classifier calls failed, the status name
//! (`"UNAVAILABLE"`) of such a gRPC response, the Rust type of an error the inner service
//! returned, or `cancelled` for a call dropped before its answer came. The classifier is the
//! one that also decides the span's status (see [`crate::server`]), so a span, a metric and a
//! circuit breaker given the same classifier agree on what failed.
//!
//! Metric names are OpenTelemetry's; Prometheus exporters turn the dots into underscores
//! (`http_server_request_duration`). Call [`describe`] once the recorder is installed to give
//! each metric its unit and description. A layer records nothing for
//! [`ServerTraceLayer::skip_path`](crate::ServerTraceLayer::skip_path)'s paths, and nothing at
//! all with `.metrics(false)`.

use std::time::Duration;

use metrics::{Label, Unit};

/// Duration of HTTP server requests, until the response body has been sent.
pub const HTTP_SERVER_REQUEST_DURATION: &str = "http.server.request.duration";
/// Duration of HTTP client requests, until the response body has been read.
pub const HTTP_CLIENT_REQUEST_DURATION: &str = "http.client.request.duration";
/// Duration of gRPC calls served, in milliseconds.
pub const RPC_SERVER_DURATION: &str = "rpc.server.duration";
/// Duration of gRPC calls made, in milliseconds.
pub const RPC_CLIENT_DURATION: &str = "rpc.client.duration";
/// Duration of processing one received message.
pub const MESSAGING_PROCESS_DURATION: &str = "messaging.process.duration";
/// Messages published (or attempted: a failed publish has `error.type`).
pub const MESSAGING_CLIENT_SENT_MESSAGES: &str = "messaging.client.sent.messages";

/// Gives every metric above its unit and description in the installed recorder (Prometheus's
/// `# HELP` lines). Call it after installing the recorder; calling it again does no harm.
pub fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_histogram!(
        HTTP_SERVER_REQUEST_DURATION,
        Unit::Seconds,
        "Duration of HTTP server requests."
    );
    describe_histogram!(
        HTTP_CLIENT_REQUEST_DURATION,
        Unit::Seconds,
        "Duration of HTTP client requests."
    );
    describe_histogram!(
        RPC_SERVER_DURATION,
        Unit::Milliseconds,
        "Duration of inbound gRPC calls."
    );
    describe_histogram!(
        RPC_CLIENT_DURATION,
        Unit::Milliseconds,
        "Duration of outbound gRPC calls."
    );
    describe_histogram!(
        MESSAGING_PROCESS_DURATION,
        Unit::Seconds,
        "Duration of processing operations."
    );
    describe_counter!(
        MESSAGING_CLIENT_SENT_MESSAGES,
        Unit::Count,
        "Number of messages producers attempted to send to the broker."
    );
}

/// Records one message's processing: `system` is `messaging.system` (`nats`, `rabbitmq`, or a
/// bus's own name), `destination` the subject or queue, `error_type` what failed, if it did.
pub fn record_process(
    system: &'static str,
    destination: &str,
    elapsed: Duration,
    error_type: Option<&'static str>,
) {
    let labels = messaging_labels(system, destination, "process", error_type);
    metrics::histogram!(MESSAGING_PROCESS_DURATION, labels).record(elapsed.as_secs_f64());
}

/// Counts `count` messages published to `destination` (with `error_type` when publishing
/// failed).
pub fn count_sent(
    system: &'static str,
    destination: &str,
    count: u64,
    error_type: Option<&'static str>,
) {
    let labels = messaging_labels(system, destination, "send", error_type);
    metrics::counter!(MESSAGING_CLIENT_SENT_MESSAGES, labels).increment(count);
}

fn messaging_labels(
    system: &'static str,
    destination: &str,
    operation: &'static str,
    error_type: Option<&'static str>,
) -> Vec<Label> {
    let mut labels = vec![
        Label::from_static_parts("messaging.system", system),
        Label::new("messaging.destination.name", destination.to_owned()),
        Label::from_static_parts("messaging.operation.name", operation),
    ];
    if let Some(error_type) = error_type {
        labels.push(Label::from_static_parts("error.type", error_type));
    }
    labels
}
