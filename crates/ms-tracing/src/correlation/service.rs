use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tower::Service;

use super::{CORRELATION_ID_FIELD, CorrelationIdLayer, ResponseFuture};

/// Middleware that gives every request a [`CorrelationId`](super::CorrelationId); see the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct CorrelationIdService<S> {
    inner: S,
    layer: CorrelationIdLayer,
}

impl<S> CorrelationIdService<S> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: CorrelationIdLayer) -> Self {
        Self { inner, layer }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CorrelationIdService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let config = &self.layer.config;
        let (id, incoming) = config.resolve(request.headers());
        tracing::Span::current().record(CORRELATION_ID_FIELD, id.as_str());
        request.extensions_mut().insert(id.clone());
        // Every accepted or generated ID is visible ASCII, so `from_str` always succeeds; if it
        // ever did not, the response simply goes without the echo.
        let echo = incoming
            .or_else(|| HeaderValue::from_str(id.as_str()).ok())
            .map(|value| (config.header.clone(), value));
        // `call` itself may do work (tower services often do), so it runs in the scope too.
        let inner = id.clone().sync_scope(|| self.inner.call(request));
        ResponseFuture::new(id.scope(inner), echo)
    }
}
