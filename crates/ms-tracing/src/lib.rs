//! Correlation IDs, W3C trace-context propagation and sampling for services built on tower:
//! one trace and one correlation ID across HTTP, gRPC and messages, on the `opentelemetry` and
//! `tracing` crates.
//!
//! ```
//! use axum::{Router, body::Body, routing::get};
//! use http::Request;
//! use ms_tracing::{CorrelationId, CorrelationIdLayer, ServerTraceLayer, TracingBuilder};
//! use ms_tracing::init::SpanExport;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One setup call. A service calls `.from_env()?.install()?` and keeps the guard; this
//! // example keeps the pipeline local.
//! let tracing = TracingBuilder::new("orders").exporter(SpanExport::None).build()?;
//! let _subscriber = tracing::dispatcher::set_default(tracing.dispatch());
//!
//! let app = Router::new()
//!     .route("/orders/{id}", get(|| async {
//!         // Outgoing calls through `ClientTraceLayer` and messages through `message::inject`
//!         // pick these up without being handed them.
//!         CorrelationId::current().map(|id| id.to_string()).unwrap_or_default()
//!     }))
//!     .layer(ServerTraceLayer::new()) // continues the caller's W3C trace
//!     .layer(CorrelationIdLayer::new()); // outermost: the request span gets `correlation.id`
//!
//! let request = Request::get("/orders/7")
//!     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!     .header("x-correlation-id", "checkout-81")
//!     .body(Body::empty())?;
//! let response = app.oneshot(request).await?;
//! assert_eq!(response.headers()["x-correlation-id"], "checkout-81");
//! # Ok(())
//! # }
//! ```
//!
//! | piece | module |
//! |---|---|
//! | [`CorrelationId`], [`CorrelationIdLayer`]: take or make an ID, make it current | [`correlation`] |
//! | W3C `traceparent`/`tracestate` (Level 1 and 2) and `baggage`, rule by rule | [`propagation`] |
//! | [`ServerTraceLayer`]: server spans for HTTP and gRPC with semantic-convention attributes | [`server`] |
//! | [`ClientTraceLayer`]: client spans for hyper and tonic, context and ID injected | [`client`] |
//! | trace context and correlation ID in message headers (CloudEvents extension) | [`message`] |
//! | [`TracingBuilder`]: subscriber, exporter (stdout, OTLP, in-memory), samplers; [`init()`], the one setup call | [`mod@init`] |
//! | head samplers from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` | [`head_sampling`] |
//! | tail sampling by error, latency and ratio, with a memory budget | [`tail_sampling`] |
//! | in-memory spans for tests (feature `testing`) | `testing` |
//!
//! # Features
//! - `axum`: `http.route` from axum's `MatchedPath` on server spans.
//! - `otlp`: the OTLP/gRPC (tonic) exporter.
//! - `testing`: the in-memory exporter and the `testing` module.
//!
//! # Not there yet, and known limits
//! - A new root span started by the OpenTelemetry SDK does not set the W3C Level 2 `random`
//!   flag (the SDK sets only `sampled`), although its IDs are random; a `random` flag received
//!   from a caller is kept on every local child and sent on.
//! - A `tracestate` key whose `system-id` has 14 characters is valid but cannot be held by
//!   opentelemetry 0.33's `TraceState`: the propagator keeps such a `tracestate` beside the span
//!   context and sends it on unchanged, but it cannot be read or mutated through `TraceState`,
//!   and [`message::extract`] (which returns a bare span context) drops it.
//! - The correlation-ID rejection counter is a plain counter on the layer
//!   ([`CorrelationIdLayer::rejected`]) plus a `warn` event; no metrics backend is wired.
//! - No cargo-fuzz target: the header parsers are covered by property tests instead.
//! - The tail sampler is one mutex-guarded map per process; its cost is measured in
//!   `benches/benches/tracing.rs`, not tuned for many cores.
//! - What counts as a failed call is fixed per side (tower-http's classifiers: 5xx on a server,
//!   4xx and 5xx on a client, gRPC server faults on a server, every non-OK code on a client);
//!   the layers do not take a custom classifier yet.
//! - A server span that the span filter ([`TracingBuilder::span_filter`]) drops takes the
//!   caller's trace context with it: calls made under it start new traces.
//! - ms-bus does not call [`message::inject`] / [`message::extract`] yet; the end-to-end test
//!   carries the message through a channel.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod call_metrics;
pub mod client;
pub mod correlation;
pub mod head_sampling;
pub mod init;
pub mod message;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod missing_layer;
pub mod propagation;
pub mod response;
pub mod server;
pub mod tail_sampling;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use client::ClientTraceLayer;
pub use correlation::{
    CorrelationId, CorrelationIdLayer, InvalidCorrelationId, MAX_CORRELATION_ID_LEN,
};
pub use init::TracingBuilder;

/// The one setup call for a service: [`TracingBuilder`] configured from the environment
/// (`OTEL_TRACES_EXPORTER`, `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`, `RUST_LOG`) and
/// installed process-wide. Keep the guard until the process ends: dropping it flushes the last
/// spans.
///
/// ```no_run
/// fn main() -> Result<(), ms_tracing::init::InitError> {
///     let _tracing = ms_tracing::init("invoicing")?;
///     tracing::info!("ready");
///     Ok(())
/// }
/// ```
pub fn init(service_name: impl Into<String>) -> Result<init::TracingGuard, init::InitError> {
    TracingBuilder::new(service_name).from_env()?.install()
}
pub use server::ServerTraceLayer;
