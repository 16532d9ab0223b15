//! The server-side trace layer: continues the caller's W3C trace (or starts one) and wraps the
//! request in a server span with OpenTelemetry semantic-convention attributes, for HTTP and
//! gRPC alike.
//!
//! ```
//! # #[cfg(not(feature = "testing"))]
//! # fn main() {}
//! # #[cfg(feature = "testing")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use http::{Request, Response, StatusCode};
//! use ms_tracing::{CorrelationIdLayer, ServerTraceLayer, testing::TestTracing};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! let tracing = TestTracing::new();
//! let _guard = tracing.set_default();
//!
//! let mut service = ServiceBuilder::new()
//!     .layer(CorrelationIdLayer::new()) // outside, so the span gets `correlation.id`
//!     .layer(ServerTraceLayer::new())
//!     .service_fn(|_: Request<String>| async {
//!         let mut response = Response::new(String::new());
//!         *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
//!         Ok::<_, std::convert::Infallible>(response)
//!     });
//! let request = Request::post("/orders/7")
//!     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!     .header("x-correlation-id", "order-7")
//!     .body(String::new())?;
//! let response = service.ready().await?.call(request).await?;
//! drop(response); // the span ends with the response body
//!
//! let span = tracing.span("POST");
//! assert_eq!(span.span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert_eq!(span.parent_span_id.to_string(), "00f067aa0ba902b7");
//! let attribute = |key| TestTracing::attribute(&span, key);
//! assert_eq!(attribute("http.request.method").as_deref(), Some("POST"));
//! assert_eq!(attribute("url.path").as_deref(), Some("/orders/7"));
//! assert_eq!(attribute("http.response.status_code").as_deref(), Some("503"));
//! assert_eq!(attribute("correlation.id").as_deref(), Some("order-7"));
//! assert!(matches!(span.status, opentelemetry::trace::Status::Error { .. }));
//! # Ok(())
//! # }
//! ```
//!
//! A request is gRPC when its `content-type` starts with `application/grpc`; it then gets
//! `rpc.system`, `rpc.service`, `rpc.method` and `rpc.grpc.status_code` (from the trailers, or
//! the headers of a trailers-only response). With the `axum` feature, `http.route` comes from
//! axum's `MatchedPath` (apply the layer with `Router::layer`, so it runs after routing).
//!
//! Malformed or invalid trace headers start a new trace: never an error response, never a
//! panic (see [`crate::propagation`]).

mod layer;
mod service;

pub use layer::{DEFAULT_METRICS, ServerTraceLayer};
pub use service::ServerTraceService;
