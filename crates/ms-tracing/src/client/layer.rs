use http::HeaderName;
use tower::Layer;
use tower_http::classify::{GrpcErrorsAsFailures, StatusInRangeAsFailures};

use super::ClientTraceService;
use crate::correlation::X_CORRELATION_ID;
use crate::histogram_cache::HistogramCache;
use crate::server::DEFAULT_METRICS;

/// Layer that applies [`ClientTraceService`]; see the [module docs](super).
///
/// `H` and `G` are the tower-http classifiers that decide whether an HTTP or a gRPC call
/// failed (the span's error status and the metrics' `error.type`). Defaults, per the
/// conventions for a client: HTTP 4xx and 5xx (tower-http's
/// [`StatusInRangeAsFailures::new_for_client_and_server_errors`]); every gRPC code but `OK`
/// ([`GrpcErrorsAsFailures`]).
#[derive(Debug, Clone)]
pub struct ClientTraceLayer<H = StatusInRangeAsFailures, G = GrpcErrorsAsFailures> {
    pub(crate) correlation_header: HeaderName,
    pub(crate) http: H,
    pub(crate) grpc: G,
    pub(crate) metrics: bool,
    /// The metrics' histogram handles, shared by every clone of the layer.
    pub(crate) handles: HistogramCache,
}

impl ClientTraceLayer {
    /// The layer, writing the correlation ID to [`X_CORRELATION_ID`], with the default
    /// classifiers and [`DEFAULT_METRICS`].
    pub fn new() -> Self {
        Self {
            correlation_header: X_CORRELATION_ID,
            http: StatusInRangeAsFailures::new_for_client_and_server_errors(),
            grpc: GrpcErrorsAsFailures::new(),
            metrics: DEFAULT_METRICS,
            handles: HistogramCache::default(),
        }
    }
}

impl Default for ClientTraceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<H, G> ClientTraceLayer<H, G> {
    /// Writes the correlation ID to `header` instead.
    #[must_use]
    pub fn correlation_header(mut self, header: HeaderName) -> Self {
        self.correlation_header = header;
        self
    }

    /// What counts as a failed HTTP call: any tower-http classifier, such as ms-resilience's
    /// `HttpClassifier`, so that the span, the metric and that breaker agree.
    pub fn http_classifier<C>(self, classifier: C) -> ClientTraceLayer<C, G> {
        ClientTraceLayer {
            correlation_header: self.correlation_header,
            http: classifier,
            grpc: self.grpc,
            metrics: self.metrics,
            handles: self.handles,
        }
    }

    /// What counts as a failed gRPC call: any tower-http classifier, such as ms-resilience's
    /// `GrpcClassifier`.
    pub fn grpc_classifier<C>(self, classifier: C) -> ClientTraceLayer<H, C> {
        ClientTraceLayer {
            correlation_header: self.correlation_header,
            http: self.http,
            grpc: classifier,
            metrics: self.metrics,
            handles: self.handles,
        }
    }

    /// Whether calls are recorded in [`crate::metrics`] (default [`DEFAULT_METRICS`]).
    #[must_use]
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }
}

impl<S, H: Clone, G: Clone> Layer<S> for ClientTraceLayer<H, G> {
    type Service = ClientTraceService<S, H, G>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTraceService::new(inner, self.clone())
    }
}
