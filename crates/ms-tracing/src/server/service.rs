use std::task::{Context, Poll};

use http::{Request, Response};
use opentelemetry::propagation::TextMapPropagator as _;
use tower::Service;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::correlation::{CORRELATION_ID_FIELD, CorrelationId};
use crate::propagation::{HeaderExtractor, propagator};
use crate::response::{Protocol, ResponseBody, ResponseFuture, Side, grpc_service_method};

/// Middleware that runs each request in a server span; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct ServerTraceService<S> {
    inner: S,
}

impl<S> ServerTraceService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ServerTraceService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let protocol = Protocol::of(request.headers());
        let span = server_span(&request, protocol);
        let parent = propagator().extract_with_context(
            &opentelemetry::Context::new(),
            &HeaderExtractor(request.headers()),
        );
        // Always set, even without a valid remote parent: a server span starts a trace rather
        // than joining whatever span happens to be current where the server runs. An error only
        // means no OpenTelemetry layer is installed, which leaves nothing to parent.
        let _ = span.set_parent(parent);
        let future = span.in_scope(|| self.inner.call(request));
        ResponseFuture::new(future, span, Side::Server, protocol)
    }
}

fn server_span<B>(request: &Request<B>, protocol: Protocol) -> tracing::Span {
    let span = tracing::info_span!(
        target: "ms_tracing::server",
        "request",
        otel.name = Empty,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = Empty,
        http.route = Empty,
        url.path = Empty,
        http.response.status_code = Empty,
        rpc.system = Empty,
        rpc.service = Empty,
        rpc.method = Empty,
        rpc.grpc.status_code = Empty,
        correlation.id = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let path = request.uri().path();
    match protocol
        .eq(&Protocol::Grpc)
        .then(|| grpc_service_method(path))
        .flatten()
    {
        Some((service, method)) => {
            span.record("otel.name", format!("{service}/{method}"));
            span.record("rpc.system", "grpc");
            span.record("rpc.service", service);
            span.record("rpc.method", method);
        }
        None => {
            let method = request.method().as_str();
            span.record("http.request.method", method);
            span.record("url.path", path);
            match route(request) {
                Some(route) => {
                    span.record("http.route", route);
                    span.record("otel.name", format!("{method} {route}"));
                }
                // Without a route template the name is the method alone: the path would make
                // one span name per order ID.
                None => {
                    span.record("otel.name", method);
                }
            }
        }
    }
    if let Some(id) = request.extensions().get::<CorrelationId>() {
        span.record(CORRELATION_ID_FIELD, id.as_str());
    }
    span
}

#[cfg(feature = "axum")]
fn route<B>(request: &Request<B>) -> Option<&str> {
    request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str)
}

#[cfg(not(feature = "axum"))]
fn route<B>(_request: &Request<B>) -> Option<&str> {
    None
}
