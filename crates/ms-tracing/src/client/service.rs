use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use tower::Service;
use tower_http::classify::{ClassifyResponse, GrpcErrorsAsFailures, StatusInRangeAsFailures};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::ClientTraceLayer;
use crate::call_metrics::CallMetrics;
use crate::correlation::CorrelationId;
use crate::histogram_cache::HistogramCache;
use crate::propagation::{HeaderInjector, propagator};
use crate::response::{
    Call, Classifier, Protocol, ResponseBody, ResponseFuture, grpc_service_method,
};

/// Middleware that runs each outgoing call in a client span and propagates it; see the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct ClientTraceService<S, H = StatusInRangeAsFailures, G = GrpcErrorsAsFailures> {
    inner: S,
    layer: ClientTraceLayer<H, G>,
}

impl<S, H, G> ClientTraceService<S, H, G> {
    /// Wraps `inner` with the settings of `layer`.
    pub fn new(inner: S, layer: ClientTraceLayer<H, G>) -> Self {
        Self { inner, layer }
    }
}

impl<S, H, G, ReqBody, ResBody> Service<Request<ReqBody>> for ClientTraceService<S, H, G>
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

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let protocol = Protocol::of(request.headers());
        let classifier = Classifier::for_protocol(protocol, &self.layer.http, &self.layer.grpc);
        let correlation_id = CorrelationId::current()
            .or_else(|| request.extensions().get::<CorrelationId>().cloned());
        let span = client_span(&request, protocol, correlation_id.as_ref());
        // The client span's own context goes out, so the server's span is its child. Baggage
        // of the current context is carried by the span's context too. A span filtered out (or
        // kept from the OpenTelemetry layer by a per-layer filter) has no valid context: the
        // current one goes out instead, so the trace is not cut.
        let mut cx = span.context();
        if !cx.span().span_context().is_valid() {
            crate::missing_layer::check(&span);
            cx = tracing::Span::current().context();
        }
        propagator().inject_context(&cx, &mut HeaderInjector(request.headers_mut()));
        let header = &self.layer.correlation_header;
        if let Some(id) = correlation_id
            && !request.headers().contains_key(header)
            && let Ok(value) = HeaderValue::from_str(id.as_str())
        {
            request.headers_mut().insert(header.clone(), value);
        }
        let metrics = self
            .layer
            .metrics
            .then(|| client_metrics(&request, protocol, &self.layer.handles))
            .flatten();
        let future = span.in_scope(|| self.inner.call(request));
        ResponseFuture::new(future, Some(Call::new(span, metrics)), classifier)
    }
}

#[cfg(feature = "metrics")]
#[allow(clippy::unnecessary_wraps)] // The shape of the build without metrics.
fn client_metrics<B>(
    request: &Request<B>,
    protocol: Protocol,
    handles: &HistogramCache,
) -> Option<CallMetrics> {
    if protocol == Protocol::Grpc
        && let Some((service, method)) = grpc_service_method(request.uri().path())
    {
        return Some(CallMetrics::rpc_client(
            service,
            method,
            request.uri(),
            handles,
        ));
    }
    Some(CallMetrics::http_client(request, handles))
}

#[cfg(not(feature = "metrics"))]
fn client_metrics<B>(
    _request: &Request<B>,
    _protocol: Protocol,
    _handles: &HistogramCache,
) -> Option<CallMetrics> {
    None
}

fn client_span<B>(
    request: &Request<B>,
    protocol: Protocol,
    correlation_id: Option<&CorrelationId>,
) -> tracing::Span {
    // Values are given at creation rather than recorded later: see `server_span`.
    let correlation_id = correlation_id.map(CorrelationId::as_str);
    let uri = request.uri();
    let host = uri.host();
    let port = uri.port_u16().map(i64::from);
    if protocol == Protocol::Grpc
        && let Some((service, method)) = grpc_service_method(uri.path())
    {
        return tracing::info_span!(
            target: "ms_tracing::client",
            "call",
            otel.name = format!("{service}/{method}"),
            otel.kind = "client",
            otel.status_code = Empty,
            server.address = host,
            server.port = port,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
            correlation.id = correlation_id,
        );
    }
    let method = request.method().as_str();
    // Query strings may hold secrets; the conventions allow leaving them out.
    let full = match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => format!("{scheme}://{authority}{}", uri.path()),
        _ => uri.path().to_owned(),
    };
    tracing::info_span!(
        target: "ms_tracing::client",
        "call",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = method,
        url.full = full,
        server.address = host,
        server.port = port,
        http.response.status_code = Empty,
        correlation.id = correlation_id,
    )
}
