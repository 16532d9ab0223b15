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
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called {
            #[pin]
            future: F,
            permit: Permit,
            classifier: C,
        },
        Rejected {
            // Boxed: the rejection path allocates anyway (the error is returned boxed), and a
            // small enum keeps the hot path's future small.
            error: Option<Box<Error>>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, permit: Permit, classifier: C) -> Self {
        Self {
            kind: Kind::Called {
                future,
                permit,
                classifier,
            },
        }
    }

    pub(crate) fn rejected(error: Error) -> Self {
        Self {
            kind: Kind::Rejected {
                error: Some(Box::new(error)),
            },
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

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                permit,
                classifier,
            } => {
                let result = ready!(future.poll(cx));
                // A second poll after completion would find the permit already finished.
                permit.finish(classifier.classify(&result));
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => {
                // An unsizing coercion, not `into()`: `From` would wrap the `Box<Error>` in a
                // second box, and `Error::find` could no longer downcast it.
                let error: BoxError = match error.take() {
                    Some(error) => error,
                    None => "circuit breaker future polled after completion".into(),
                };
                Poll::Ready(Err(error))
            }
        }
    }
}
