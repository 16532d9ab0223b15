//! Correlation IDs on the server side: take a trusted caller's ID or make a fresh one, and make
//! it the current ID for everything the request does.
//!
//! ```
//! use http::{Request, Response};
//! use ms_tracing::correlation::{CorrelationId, CorrelationIdLayer, X_CORRELATION_ID};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = CorrelationIdLayer::builder()
//!     .alias(http::HeaderName::from_static("x-request-id"))
//!     .build();
//! let mut service = ServiceBuilder::new().layer(layer.clone()).service_fn(
//!     |request: Request<()>| async move {
//!         // The handler, and every call it makes, sees the request's ID without being handed it.
//!         let current = CorrelationId::current().expect("set by the layer");
//!         assert_eq!(request.extensions().get::<CorrelationId>(), Some(&current));
//!         Ok::<_, std::convert::Infallible>(Response::new(current.to_string()))
//!     },
//! );
//!
//! // A well-formed ID (here under the alias) is kept and echoed...
//! let request = Request::builder().header("x-request-id", "order-42").body(())?;
//! let response = service.ready().await?.call(request).await?;
//! assert_eq!(response.headers()[X_CORRELATION_ID], "order-42");
//! assert_eq!(response.body(), "order-42");
//!
//! // ...a hostile one is neither echoed nor logged: a fresh one replaces it, and it is counted.
//! let request = Request::builder().header(X_CORRELATION_ID, "a".repeat(500)).body(())?;
//! let response = service.ready().await?.call(request).await?;
//! assert_eq!(response.headers()[X_CORRELATION_ID].len(), 36);
//! assert_eq!(layer.rejected(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! Put the layer outside the [`ServerTraceLayer`](crate::ServerTraceLayer) so the request span
//! carries `correlation.id`; put inside, it records the ID on the span that is current when it is
//! called.

mod future;
mod id;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use id::{CorrelationId, InvalidCorrelationId, MAX_CORRELATION_ID_LEN};
pub use layer::{
    CorrelationIdLayer, CorrelationIdLayerBuilder, IncomingIds, RejectedCorrelationId,
    X_CORRELATION_ID,
};
pub use service::CorrelationIdService;

/// The span field that carries the correlation ID (declare it `tracing::field::Empty` on a span
/// that should receive it).
pub const CORRELATION_ID_FIELD: &str = "correlation.id";
