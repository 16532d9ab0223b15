//! A bulkhead: at most N calls in flight, an optional bounded wait for a free slot, and the
//! typed [`Error::BulkheadFull`] at once when full.
//!
//! ```
//! use std::time::Duration;
//! use ms_resilience::bulkhead::BulkheadLayer;
//! use ms_resilience::{BoxError, Error};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let mut service = ServiceBuilder::new()
//!     .layer(BulkheadLayer::new(1))
//!     .service_fn(|()| async {
//!         tokio::time::sleep(Duration::from_secs(1)).await;
//!         Ok::<_, BoxError>(())
//!     });
//! let first = service.ready().await.unwrap().call(());
//! // The only slot is taken: the second call fails at once instead of queueing.
//! let error = service.ready().await.unwrap().call(()).await.unwrap_err();
//! assert_eq!(Error::find(&*error), Some(&Error::BulkheadFull { max_concurrent: 1 }));
//! first.await.unwrap();
//! service.ready().await.unwrap().call(()).await.unwrap();
//! # }
//! ```
//!
//! tower's `ConcurrencyLimit` makes callers wait for a slot for as long as it takes, which
//! under overload turns into a queue nobody bounded. This one fails fast, or waits at most
//! [`max_wait`](BulkheadLayer::max_wait). The slot is held until the response future
//! finishes or is dropped. Clones of the service (and every service of one layer) share the
//! slots.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::{BoxError, Error};

/// Applies a [`Bulkhead`] to services; all of them share its slots.
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    max_wait: Option<Duration>,
}

impl BulkheadLayer {
    /// At most `max_concurrent` calls in flight (at least 1); no waiting.
    pub fn new(max_concurrent: usize) -> Self {
        let max_concurrent = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            max_wait: None,
        }
    }

    /// Waits at most this long for a free slot before failing.
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = Some(wait);
        self
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Bulkhead<S> {
        Bulkhead {
            inner,
            layer: self.clone(),
            slot: None,
            waiting: None,
            full: false,
        }
    }
}

type Acquire = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

/// A bounded wait for a slot: the acquisition and its deadline.
struct Waiting {
    acquire: Acquire,
    deadline: Pin<Box<Sleep>>,
}

/// A service with at most N calls in flight. Made by [`BulkheadLayer`].
pub struct Bulkhead<S> {
    inner: S,
    layer: BulkheadLayer,
    // Plain options rather than one enum of states: see `ResponseFuture`.
    /// The slot `poll_ready` took for the next `call`.
    slot: Option<OwnedSemaphorePermit>,
    /// A bounded wait in progress.
    waiting: Option<Box<Waiting>>,
    /// No slot, and no (more) waiting: the next `call` fails fast.
    full: bool,
}

impl<S: Clone> Clone for Bulkhead<S> {
    fn clone(&self) -> Self {
        // A slot belongs to the service that was polled ready, not to its clones.
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
            slot: None,
            waiting: None,
            full: false,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Bulkhead<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("max_concurrent", &self.layer.max_concurrent)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for Bulkhead<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.slot.is_none() && !self.full {
            if let Some(waiting) = &mut self.waiting {
                if let Poll::Ready(permit) = waiting.acquire.as_mut().poll(cx) {
                    self.slot = permit;
                    self.full = self.slot.is_none();
                } else {
                    ready!(waiting.deadline.as_mut().poll(cx));
                    self.full = true;
                }
                self.waiting = None;
            } else {
                match self.layer.slots.clone().try_acquire_owned() {
                    Ok(permit) => self.slot = Some(permit),
                    Err(_) => match self.layer.max_wait {
                        None => self.full = true,
                        Some(wait) => {
                            let slots = self.layer.slots.clone();
                            self.waiting = Some(Box::new(Waiting {
                                acquire: Box::pin(async move { slots.acquire_owned().await.ok() }),
                                deadline: Box::pin(tokio::time::sleep(wait)),
                            }));
                            return self.poll_ready(cx);
                        }
                    },
                }
            }
        }
        if self.full {
            // Ready: `call` fails fast without calling the inner service.
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(error)) => {
                self.slot = None;
                Poll::Ready(Err(error.into()))
            }
            other => other.map_err(Into::into),
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let slot = match self.slot.take() {
            Some(permit) => Some(permit),
            // `call` without `poll_ready`: take a slot if one is free.
            None if !self.full && self.waiting.is_none() => {
                self.layer.slots.clone().try_acquire_owned().ok()
            }
            None => None,
        };
        self.full = false;
        ResponseFuture {
            inner: slot.is_some().then(|| self.inner.call(request)),
            _permit: slot,
            max_concurrent: self.layer.max_concurrent,
        }
    }
}

pin_project! {
    /// The response future of [`Bulkhead`]; holds the slot until it finishes or is dropped.
    //
    // Options rather than an enum: an enum's one-byte tag, written and then copied as a whole
    // word when the future moves, stalls on store forwarding.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        _permit: Option<OwnedSemaphorePermit>,
        max_concurrent: usize,
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
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll(cx).map_err(Into::into),
            None => {
                #[cfg(feature = "metrics")]
                crate::metrics::increment(crate::metrics::BULKHEAD_REJECTIONS);
                Poll::Ready(Err(Error::BulkheadFull {
                    max_concurrent: *this.max_concurrent,
                }
                .into()))
            }
        }
    }
}
