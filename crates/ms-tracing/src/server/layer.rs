use std::sync::Arc;

use ms_resilience::classify::GrpcClassifier;
use tower::Layer;
use tower_http::classify::ServerErrorsAsFailures;

use super::ServerTraceService;
use crate::histogram_cache::HistogramCache;

/// Whether the trace layers record [`crate::metrics`] (feature `metrics`): yes.
pub const DEFAULT_METRICS: bool = true;

/// Layer that applies [`ServerTraceService`]; see the [module docs](super).
///
/// `H` and `G` are the tower-http classifiers that decide whether an HTTP or a gRPC call
/// failed (the span's error status and the metrics' `error.type`). Defaults: HTTP 5xx
/// (tower-http's [`ServerErrorsAsFailures`]); gRPC codes that point at the server
/// ([`GrpcClassifier::server_faults`]). Clones share the list of skipped paths.
#[derive(Debug, Clone)]
pub struct ServerTraceLayer<H = ServerErrorsAsFailures, G = GrpcClassifier> {
    pub(crate) skipped_paths: Arc<[String]>,
    pub(crate) http: H,
    pub(crate) grpc: G,
    pub(crate) metrics: bool,
    /// The metrics' histogram handles, shared by every clone of the layer.
    pub(crate) handles: HistogramCache,
}

impl ServerTraceLayer {
    /// The layer, tracing every request, with the default classifiers and
    /// [`DEFAULT_METRICS`].
    pub fn new() -> Self {
        Self {
            skipped_paths: Arc::from([]),
            http: ServerErrorsAsFailures::new(),
            grpc: GrpcClassifier::server_faults(),
            metrics: DEFAULT_METRICS,
            handles: HistogramCache::default(),
        }
    }
}

impl Default for ServerTraceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<H, G> ServerTraceLayer<H, G> {
    /// Requests for exactly `path` get no span and no metrics (health probes, metrics scrapes:
    /// frequent, and of no interest in a trace). They still pass through untouched.
    #[must_use]
    pub fn skip_path(mut self, path: impl Into<String>) -> Self {
        let mut paths = self.skipped_paths.to_vec();
        paths.push(path.into());
        self.skipped_paths = paths.into();
        self
    }

    /// What counts as a failed HTTP call: any tower-http classifier, such as
    /// `StatusInRangeAsFailures` or ms-resilience's `HttpClassifier` (the breaker's own).
    pub fn http_classifier<C>(self, classifier: C) -> ServerTraceLayer<C, G> {
        ServerTraceLayer {
            skipped_paths: self.skipped_paths,
            http: classifier,
            grpc: self.grpc,
            metrics: self.metrics,
            handles: self.handles,
        }
    }

    /// What counts as a failed gRPC call: any tower-http classifier, such as
    /// `GrpcErrorsAsFailures` or ms-resilience's `GrpcClassifier`.
    pub fn grpc_classifier<C>(self, classifier: C) -> ServerTraceLayer<H, C> {
        ServerTraceLayer {
            skipped_paths: self.skipped_paths,
            http: self.http,
            grpc: classifier,
            metrics: self.metrics,
            handles: self.handles,
        }
    }

    /// Whether calls are recorded in [`crate::metrics`] (default [`DEFAULT_METRICS`]; without
    /// the `metrics` feature there are none to record).
    #[must_use]
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }
}

impl<S, H: Clone, G: Clone> Layer<S> for ServerTraceLayer<H, G> {
    type Service = ServerTraceService<S, H, G>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTraceService::with_layer(inner, self.clone())
    }
}
