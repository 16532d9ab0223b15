//! A time limit per call, failing with the typed [`Error::Timeout`].
//!
//! ```
//! use std::time::Duration;
//! use ms_resilience::timeout::TimeoutLayer;
//! use ms_resilience::{BoxError, Error};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_millis(500)))
//!     .service_fn(|wait: u64| async move {
//!         tokio::time::sleep(Duration::from_millis(wait)).await;
//!         Ok::<_, BoxError>(wait)
//!     });
//! assert_eq!(service.clone().oneshot(100).await.unwrap(), 100);
//! let error = service.oneshot(900).await.unwrap_err();
//! assert_eq!(Error::find(&*error), Some(&Error::Timeout { after: Duration::from_millis(500) }));
//! # }
//! ```
//!
//! Unlike `tower::timeout`, whose `Elapsed` error says nothing more, the error here carries the
//! limit and is [`retryable`](Error::is_retryable), so the retry layer and the classifiers know
//! what to do with it. Put it inside the retry layer for a per-try limit (or use the retry
//! layer's own `per_try_timeout`), outside it for a limit on the whole call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::{BoxError, Error};

/// Applies a [`Timeout`] to services.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    after: Duration,
}

impl TimeoutLayer {
    /// Calls that take longer than `after` fail with [`Error::Timeout`].
    pub fn new(after: Duration) -> Self {
        Self { after }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            after: self.after,
        }
    }
}

/// A service whose calls fail with [`Error::Timeout`] when they take too long. The inner
/// call's future is dropped then.
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    after: Duration,
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(request),
            sleep: tokio::time::sleep(self.after),
            after_nanos: u64::try_from(self.after.as_nanos()).unwrap_or(u64::MAX),
        }
    }
}

pin_project! {
    /// The response future of [`Timeout`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        // Nanoseconds rather than a `Duration`, whose 4-byte half is written alone and then
        // read back as part of a whole word when the future moves (a store-forwarding stall).
        after_nanos: u64,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Error::Timeout {
                after: Duration::from_nanos(*this.after_nanos),
            }
            .into())),
            Poll::Pending => Poll::Pending,
        }
    }
}
