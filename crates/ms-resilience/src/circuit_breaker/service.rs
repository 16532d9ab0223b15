//! [`CircuitBreakerService`]: admits or rejects each call and records its outcome.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::Service;

use super::{CircuitBreaker, Permit, ResponseFuture};
use crate::BoxError;
use crate::classify::Classify;

/// How long a `pending_while_open` service waits before asking again when the half-open
/// state's trial calls are all taken (no timer says when one frees up).
const HALF_OPEN_RECHECK: Duration = Duration::from_millis(100);

/// A service behind a [`CircuitBreaker`]. Made by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer); clones share the breaker.
///
/// By default admission happens in `call`: `poll_ready` only asks the inner service, and an
/// open breaker makes `call` fail fast without calling it. With
/// [`pending_while_open`](super::CircuitBreakerBuilder::pending_while_open) admission moves
/// to `poll_ready` (the permit is kept for the next `call`), so that an open breaker shows as
/// a service that is not ready.
pub struct CircuitBreakerService<S, C> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
    /// The permit `poll_ready` took (`pending_while_open` only).
    admission: Option<Permit>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The breaker's setting, kept here: `poll_ready` runs on every call, and three dependent
    /// loads through the shared state cost more than the rest of it.
    pending_while_open: bool,
    /// Likewise: whether calls are timed for slow-call detection.
    times_calls: bool,
}

impl<S, C> CircuitBreakerService<S, C> {
    pub(crate) fn new(inner: S, breaker: CircuitBreaker, classifier: C) -> Self {
        Self {
            pending_while_open: breaker.shared.config.pending_while_open,
            times_calls: breaker.times_calls(),
            inner,
            breaker,
            classifier,
            admission: None,
            sleep: None,
        }
    }

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes the wrapper, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreakerService<S, C> {
    fn clone(&self) -> Self {
        // The admission belongs to the service that was polled ready, not to its clones.
        Self::new(
            self.inner.clone(),
            self.breaker.clone(),
            self.classifier.clone(),
        )
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for CircuitBreakerService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker.name())
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<S, C, Req> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.pending_while_open {
            while self.admission.is_none() {
                match self.breaker.try_acquire() {
                    Ok(permit) => self.admission = Some(permit),
                    Err(open) => {
                        let wait = open.retry_after().unwrap_or(HALF_OPEN_RECHECK);
                        // A wait too long for the clock (an open duration of centuries):
                        // look again later rather than overflow.
                        let deadline = Instant::now()
                            .checked_add(wait)
                            .unwrap_or_else(|| Instant::now() + HALF_OPEN_RECHECK);
                        let sleep = self
                            .sleep
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                        sleep.as_mut().reset(deadline);
                        if sleep.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(error)) => {
                // Dropping the permit gives a half-open trial back.
                self.admission = None;
                Poll::Ready(Err(error.into()))
            }
            other => other.map_err(Into::into),
        }
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let admitted = if self.pending_while_open {
            self.admission.take()
        } else {
            None
        };
        let permit = match admitted {
            Some(permit) => permit,
            None => {
                let word = self.breaker.shared.admit();
                if word.is_rejected() {
                    return ResponseFuture::rejected(
                        self.breaker.shared.rejection(),
                        self.classifier.clone(),
                    );
                }
                self.breaker
                    .clone()
                    .into_permit_timed(word, self.times_calls)
            }
        };
        ResponseFuture::called(self.inner.call(request), permit, self.classifier.clone())
    }
}
