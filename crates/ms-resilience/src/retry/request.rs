//! [`RetryRequest`]: how the retry layer gets a request for each attempt.

use std::future::Pending;

/// Makes the request for each attempt. The retry layer calls [`prepare`](Self::prepare) once
/// per call, then [`attempt`](Self::attempt) before every attempt; `None` means this request
/// cannot be sent again (its body was not kept, or its method is not safe to repeat), and the
/// last result stands.
pub trait RetryRequest<Req> {
    /// The request the inner service takes.
    type Request;
    /// What is kept between attempts.
    type Prepared;
    /// Prepares a call when that has to wait (for HTTP: reading the body into the replay
    /// buffer).
    type PrepareFuture: Future<Output = Self::Prepared>;

    /// Prepares a call: at once, or with a future.
    fn prepare(&self, request: Req) -> Prepare<Self::Prepared, Self::PrepareFuture>;

    /// The request for the next attempt (`first` for the first one).
    fn attempt(&self, prepared: &mut Self::Prepared, first: bool) -> Option<Self::Request>;
}

/// A prepared call, or the future that prepares it.
#[derive(Debug)]
pub enum Prepare<P, F> {
    /// Prepared at once: the first attempt starts in `call`.
    Ready(P),
    /// Prepared by this future: the first attempt starts when it is done.
    Pending(F),
}

/// Retries requests that are `Clone` by cloning them (for bodies that clone: `String`,
/// `Bytes`, `http_body_util::Full`, and any non-HTTP request type).
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneRequest;

impl<Req: Clone> RetryRequest<Req> for CloneRequest {
    type Request = Req;
    type Prepared = Req;
    type PrepareFuture = Pending<Req>;

    fn prepare(&self, request: Req) -> Prepare<Req, Pending<Req>> {
        Prepare::Ready(request)
    }

    fn attempt(&self, prepared: &mut Req, first: bool) -> Option<Req> {
        // The last attempt could take the original rather than a clone, but the layer does
        // not know which attempt is the last until it has its result.
        let _ = first;
        Some(prepared.clone())
    }
}
