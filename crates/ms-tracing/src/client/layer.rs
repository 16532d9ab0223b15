use http::HeaderName;
use tower::Layer;

use super::ClientTraceService;
use crate::correlation::X_CORRELATION_ID;

/// Layer that applies [`ClientTraceService`]; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct ClientTraceLayer {
    pub(crate) correlation_header: HeaderName,
}

impl ClientTraceLayer {
    /// The layer, writing the correlation ID to [`X_CORRELATION_ID`].
    pub fn new() -> Self {
        Self {
            correlation_header: X_CORRELATION_ID,
        }
    }

    /// Writes the correlation ID to `header` instead.
    #[must_use]
    pub fn correlation_header(mut self, header: HeaderName) -> Self {
        self.correlation_header = header;
        self
    }
}

impl Default for ClientTraceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTraceService::new(inner, self.clone())
    }
}
