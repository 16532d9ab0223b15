//! [`ResponseFuture`]: drives the inner call and records its outcome when it finishes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::Permit;
use crate::classify::Classify;
use crate::{BoxError, Error};

pin_project! {
    /// The response future of [`CircuitBreakerService`](super::CircuitBreakerService) and
    /// [`KeyedCircuitBreakerService`](super::KeyedCircuitBreakerService). If it is dropped
    /// before the call finishes, nothing is recorded (and a half-open trial permit is given
    /// back).
    //
    // A struct of options rather than an enum: an enum's tag is written as a single byte, and
    // the future is copied by 8-byte words right after it is built, which stalls on store
    // forwarding.
    pub struct ResponseFuture<F, C> {
        #[pin]
        future: Option<F>,
        permit: Permit,
        classifier: C,
        rejected: RejectionSlot,
    }
}

/// The future's slot for a rejected call's error, empty for an admitted call. Taking and
/// freeing a full slot are kept out of line, so that the future's poll and drop stay small
/// enough to be inlined into the caller: fewer calls and stack stores between the breaker's
/// reference-count increment in `call` and its decrement when the outcome is recorded.
struct RejectionSlot(Option<Box<Error>>);

impl Drop for RejectionSlot {
    #[inline]
    fn drop(&mut self) {
        if let Some(error) = self.0.take() {
            free_rejection(error);
        }
    }
}

#[cold]
#[inline(never)]
fn free_rejection(error: Box<Error>) {
    drop(error);
}

/// The error of a rejected call's future: the rejection on the first poll, a plain error on
/// any later one.
#[cold]
#[inline(never)]
fn take_rejection(slot: &mut RejectionSlot) -> BoxError {
    // An unsizing coercion, not `into()`: `From` would wrap the `Box<Error>` in a second box,
    // and `Error::find` could no longer downcast it.
    match slot.0.take() {
        Some(error) => error,
        None => "circuit breaker future polled after completion".into(),
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline]
    pub(crate) fn called(future: F, permit: Permit, classifier: C) -> Self {
        Self {
            future: Some(future),
            permit,
            classifier,
            rejected: RejectionSlot(None),
        }
    }

    pub(crate) fn rejected(error: Error, classifier: C) -> Self {
        Self {
            future: None,
            permit: Permit::none(),
            classifier,
            rejected: RejectionSlot(Some(Box::new(error))),
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, C, Res, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    C: Classify<Res, E>,
{
    type Output = Result<Res, BoxError>;

    // Always inlined: left to itself the compiler keeps this a call, and the call's register
    // saves are stores between the breaker's reference-count increment in `call` and its
    // decrement here, which cost more than the work itself (closed_breaker_per_call in the
    // resilience bench: about 10.5 ns as a call, about 8 ns inlined). What is inlined is small:
    // the rare paths (rejection, timed calls, anything but a success into a healthy window)
    // are out of line.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.future.as_pin_mut() {
            Some(future) => {
                let result = ready!(future.poll(cx));
                // A second poll after completion would find the permit already finished.
                this.permit.finish(this.classifier.classify(&result));
                Poll::Ready(result.map_err(Into::into))
            }
            None => Poll::Ready(Err(take_rejection(this.rejected))),
        }
    }
}
