use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderName, HeaderValue, Response};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;

use super::CorrelationId;

pin_project! {
    /// Response future of [`CorrelationIdService`](super::CorrelationIdService): runs the inner
    /// future with the request's ID current, then echoes the ID on the response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: TaskLocalFuture<CorrelationId, F>,
        echo: Option<(HeaderName, HeaderValue)>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: TaskLocalFuture<CorrelationId, F>,
        echo: Option<(HeaderName, HeaderValue)>,
    ) -> Self {
        Self { inner, echo }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some((name, value)) = this.echo.take() {
            response.headers_mut().insert(name, value);
        }
        Poll::Ready(Ok(response))
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("echo", &self.echo)
            .finish_non_exhaustive()
    }
}
