use std::sync::Arc;

use tower::Layer;

use super::ServerTraceService;

/// Layer that applies [`ServerTraceService`]; see the [module docs](super).
///
/// Clones share the list of skipped paths.
#[derive(Debug, Clone, Default)]
pub struct ServerTraceLayer {
    pub(crate) skipped_paths: Arc<[String]>,
}

impl ServerTraceLayer {
    /// The layer, tracing every request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests for exactly `path` get no span (health probes, metrics scrapes: frequent,
    /// and of no interest in a trace). They still pass through untouched.
    #[must_use]
    pub fn skip_path(mut self, path: impl Into<String>) -> Self {
        let mut paths = self.skipped_paths.to_vec();
        paths.push(path.into());
        self.skipped_paths = paths.into();
        self
    }
}

impl<S> Layer<S> for ServerTraceLayer {
    type Service = ServerTraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTraceService::with_layer(inner, self.clone())
    }
}
