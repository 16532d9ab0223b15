use tower::Layer;

use super::ServerTraceService;

/// Layer that applies [`ServerTraceService`]; see the [module docs](super).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerTraceLayer {
    _private: (),
}

impl ServerTraceLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ServerTraceLayer {
    type Service = ServerTraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTraceService::new(inner)
    }
}
