use std::task::{Context, Poll};

use http::{Request, Response};
use ms_resilience::classify::GrpcClassifier;
use opentelemetry::propagation::TextMapPropagator as _;
use tower::Service;
use tower_http::classify::{ClassifyResponse, ServerErrorsAsFailures};
use tracing::field::Empty;

use super::ServerTraceLayer;
use crate::call_metrics::CallMetrics;
use crate::correlation::CorrelationId;
use crate::histogram_cache::HistogramCache;
use crate::propagation::{HeaderExtractor, propagator};
use crate::response::{
    Call, Classifier, Protocol, ResponseBody, ResponseFuture, grpc_service_method,
};

/// Middleware that runs each request in a server span; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct ServerTraceService<S, H = ServerErrorsAsFailures, G = GrpcClassifier> {
    inner: S,
    layer: ServerTraceLayer<H, G>,
}

impl<S> ServerTraceService<S> {
    /// Wraps `inner`, tracing every request with the default settings.
    pub fn new(inner: S) -> Self {
        Self::with_layer(inner, ServerTraceLayer::new())
    }
}

impl<S, H, G> ServerTraceService<S, H, G> {
    /// Wraps `inner` with the settings of `layer`.
    pub fn with_layer(inner: S, layer: ServerTraceLayer<H, G>) -> Self {
        Self { inner, layer }
    }
}

impl<S, H, G, ReqBody, ResBody> Service<Request<ReqBody>> for ServerTraceService<S, H, G>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    H: ClassifyResponse + Clone,
    H::ClassifyEos: Send + Sync + 'static,
    G: ClassifyResponse + Clone,
    G::ClassifyEos: Send + Sync + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, H, G>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let protocol = Protocol::of(request.headers());
        let classifier = Classifier::for_protocol(protocol, &self.layer.http, &self.layer.grpc);
        let path = request.uri().path();
        if self
            .layer
            .skipped_paths
            .iter()
            .any(|skipped| skipped == path)
        {
            let future = self.inner.call(request);
            return ResponseFuture::new(future, None, classifier);
        }
        let span = server_span(&request, protocol);
        let metrics = self
            .layer
            .metrics
            .then(|| server_metrics(&request, protocol, &self.layer.handles))
            .flatten();
        let parent = propagator().extract_with_context(
            &opentelemetry::Context::new(),
            &HeaderExtractor(request.headers()),
        );
        // Always set, even without a valid remote parent: a server span starts a trace rather
        // than joining whatever span happens to be current where the server runs.
        crate::missing_layer::set_parent(&span, parent);
        let future = span.in_scope(|| self.inner.call(request));
        ResponseFuture::new(future, Some(Call::new(span, metrics)), classifier)
    }
}

#[cfg(feature = "metrics")]
#[allow(clippy::unnecessary_wraps)] // The shape of the build without metrics.
fn server_metrics<B>(
    request: &Request<B>,
    protocol: Protocol,
    handles: &HistogramCache,
) -> Option<CallMetrics> {
    if protocol == Protocol::Grpc
        && let Some((service, method)) = grpc_service_method(request.uri().path())
    {
        return Some(CallMetrics::rpc_server(service, method, handles));
    }
    Some(CallMetrics::http_server(request, route(request), handles))
}

#[cfg(not(feature = "metrics"))]
fn server_metrics<B>(
    _request: &Request<B>,
    _protocol: Protocol,
    _handles: &HistogramCache,
) -> Option<CallMetrics> {
    None
}

fn server_span<B>(request: &Request<B>, protocol: Protocol) -> tracing::Span {
    // Every value known now is given at creation: each later `record` is one more trip through
    // the subscriber, which is most of a span's cost.
    let correlation_id = request
        .extensions()
        .get::<CorrelationId>()
        .map(CorrelationId::as_str);
    let path = request.uri().path();
    if protocol == Protocol::Grpc
        && let Some((service, method)) = grpc_service_method(path)
    {
        return tracing::info_span!(
            target: "ms_tracing::server",
            "request",
            otel.name = format!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
            correlation.id = correlation_id,
        );
    }
    let method = request.method().as_str();
    let route = route(request);
    // Without a route template the name is the method alone: the path would make one span
    // name per order ID.
    let name = match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    tracing::info_span!(
        target: "ms_tracing::server",
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        url.path = path,
        http.response.status_code = Empty,
        correlation.id = correlation_id,
    )
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
