//! The client-side trace layer, for hyper / hyper-util clients and tonic channels: a client
//! span per call, whose W3C trace context (and baggage) and the current correlation ID are
//! written into the outgoing request.
//!
//! ```
//! # #[cfg(not(feature = "testing"))]
//! # fn main() {}
//! # #[cfg(feature = "testing")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use http::{Request, Response};
//! use ms_tracing::{ClientTraceLayer, CorrelationId, testing::TestTracing};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! let tracing = TestTracing::new();
//! let _guard = tracing.set_default();
//!
//! // Stands in for the network: answers with the headers it was sent.
//! let mut client = ServiceBuilder::new().layer(ClientTraceLayer::new()).service_fn(
//!     |request: Request<()>| async move {
//!         Ok::<_, std::convert::Infallible>(Response::new(request.headers().clone()))
//!     },
//! );
//! let request = Request::get("http://billing.internal/invoices/7").body(())?;
//! // A handler runs in its request's correlation scope (set by `CorrelationIdLayer`).
//! let call = async { client.ready().await?.call(request).await };
//! let sent = CorrelationId::parse("order-7")?.scope(call).await?.into_body().into_inner();
//!
//! let span = tracing.span("GET");
//! let traceparent = sent["traceparent"].to_str()?;
//! assert!(traceparent.contains(&span.span_context.span_id().to_string()));
//! assert_eq!(sent["x-correlation-id"], "order-7");
//! assert_eq!(TestTracing::attribute(&span, "server.address").as_deref(), Some("billing.internal"));
//! # Ok(())
//! # }
//! ```
//!
//! With a tonic channel: `HealthClient::new(ServiceBuilder::new().layer(ClientTraceLayer::new())
//! .service(channel))`. The call is gRPC when its `content-type` starts with `application/grpc`
//! (tonic sets it), and then gets `rpc.*` attributes; a non-OK `grpc-status` marks the span as
//! an error. An HTTP status of 400 or above does too (client side, per the conventions).

mod layer;
mod service;

pub use layer::ClientTraceLayer;
pub use service::ClientTraceService;
