//! [`HttpRequests`]: HTTP requests whose bodies cannot be cloned, replayed from a bounded buffer;
//! only idempotent methods unless told otherwise.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, request::Parts};
use http_body::{Body, Frame, SizeHint};

use super::request::{Prepare, RetryRequest};

/// The default replay buffer: 64 KiB, enough for almost every JSON or protobuf request.
pub const DEFAULT_MAX_REPLAY_BYTES: usize = 64 * 1024;

/// Retries `http::Request<B>` for any body `B`, through a bounded replay buffer.
///
/// Before the first attempt the body is read into a buffer of at most
/// [`max_replay_bytes`](Self::max_replay_bytes). If it ends within the limit, every attempt
/// sends a copy. If it does not, the first attempt sends what was read followed by the rest
/// of the body as it streams, and there is no retry (the body is gone). Requests whose method
/// is not idempotent (`POST`, `PATCH`, ...) are neither buffered nor retried unless
/// [`retry_non_idempotent`](Self::retry_non_idempotent) says so: repeating them could repeat
/// their effect. gRPC calls are `POST`s: for them, turn it on and let the classifier retry
/// only codes that say the request was not processed (`UNAVAILABLE`).
///
/// The inner service takes `http::Request<RetryBody<B>>`.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequests {
    max_replay_bytes: usize,
    retry_non_idempotent: bool,
}

impl Default for HttpRequests {
    fn default() -> Self {
        Self {
            max_replay_bytes: DEFAULT_MAX_REPLAY_BYTES,
            retry_non_idempotent: false,
        }
    }
}

impl HttpRequests {
    /// Idempotent methods only, bodies up to [`DEFAULT_MAX_REPLAY_BYTES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The largest body kept for replay.
    #[must_use]
    pub fn max_replay_bytes(mut self, bytes: usize) -> Self {
        self.max_replay_bytes = bytes;
        self
    }

    /// Also retry `POST`, `PATCH` and other non-idempotent methods.
    #[must_use]
    pub fn retry_non_idempotent(mut self, retry: bool) -> Self {
        self.retry_non_idempotent = retry;
        self
    }

    fn replayable(&self, method: &Method) -> bool {
        self.retry_non_idempotent || is_idempotent(method)
    }
}

/// RFC 9110 §9.2.2: methods whose repetition has the same effect as one request.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A prepared HTTP request: its head, and its body either buffered whole or still streaming.
#[derive(Debug)]
pub struct PreparedRequest<B> {
    parts: Parts,
    body: Prepared<B>,
}

#[derive(Debug)]
enum Prepared<B> {
    /// The whole body, replayable.
    Buffered {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Not replayable: what was read, then the rest. Taken by the first attempt.
    Streaming { prefix: Bytes, rest: Option<B> },
    /// The body failed while it was being buffered: the first attempt gets the error.
    Failed(Option<B>),
    /// Sent already and not kept.
    Gone,
}

impl<B> RetryRequest<Request<B>> for HttpRequests
where
    B: Body<Data = Bytes> + Unpin,
{
    type Request = Request<RetryBody<B>>;
    type Prepared = PreparedRequest<B>;
    type PrepareFuture = Buffering<B>;

    fn prepare(&self, request: Request<B>) -> Prepare<PreparedRequest<B>, Buffering<B>> {
        let (parts, body) = request.into_parts();
        let limit = if self.replayable(&parts.method) {
            self.max_replay_bytes
        } else {
            0
        };
        Prepare::Pending(Buffering {
            parts: Some(parts),
            body: Some(body),
            buffer: BytesMut::new(),
            limit,
        })
    }

    fn attempt(&self, prepared: &mut PreparedRequest<B>, first: bool) -> Option<Self::Request> {
        let body = match &mut prepared.body {
            Prepared::Buffered { data, trailers } => {
                RetryBody::buffered(data.clone(), trailers.clone())
            }
            Prepared::Streaming { prefix, rest } if first => {
                let rest = rest.take()?;
                RetryBody {
                    kind: Kind::Streaming {
                        prefix: Some(std::mem::take(prefix)).filter(|p| !p.is_empty()),
                        rest,
                    },
                }
            }
            Prepared::Failed(body) if first => RetryBody {
                kind: Kind::Streaming {
                    prefix: None,
                    rest: body.take()?,
                },
            },
            _ => return None,
        };
        if !first && !self.replayable(&prepared.parts.method) {
            return None;
        }
        let request = Request::from_parts(prepared.parts.clone(), body);
        if first && !matches!(prepared.body, Prepared::Buffered { .. }) {
            prepared.body = Prepared::Gone;
        }
        Some(request)
    }
}

/// Reads a request body into the replay buffer, up to the limit. Made by [`HttpRequests`].
#[derive(Debug)]
pub struct Buffering<B> {
    parts: Option<Parts>,
    body: Option<B>,
    buffer: BytesMut,
    limit: usize,
}

impl<B> Future for Buffering<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Output = PreparedRequest<B>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let (Some(body), Some(_)) = (this.body.as_mut(), this.parts.as_ref()) else {
            // Polled after completion: an empty GET is the harmless answer.
            return Poll::Ready(PreparedRequest {
                parts: Request::new(()).into_parts().0,
                body: Prepared::Gone,
            });
        };
        let prepared = loop {
            let over = this.buffer.len() > this.limit;
            if over || (this.limit == 0 && !body.is_end_stream()) {
                // Not (or no longer) kept for replay: what was read goes first, then the rest.
                break Prepared::Streaming {
                    prefix: this.buffer.split().freeze(),
                    rest: this.body.take(),
                };
            }
            if body.is_end_stream() {
                break Prepared::Buffered {
                    data: this.buffer.split().freeze(),
                    trailers: None,
                };
            }
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                None => {
                    break Prepared::Buffered {
                        data: this.buffer.split().freeze(),
                        trailers: None,
                    };
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            break Prepared::Buffered {
                                data: this.buffer.split().freeze(),
                                trailers: Some(trailers),
                            };
                        }
                    }
                },
                // The body failed: the first attempt will see the failure where it reads it.
                Some(Err(_)) => break Prepared::Failed(this.body.take()),
            }
        };
        let parts = this
            .parts
            .take()
            .unwrap_or_else(|| Request::new(()).into_parts().0);
        this.body = None;
        Poll::Ready(PreparedRequest {
            parts,
            body: prepared,
        })
    }
}

/// The body the inner service receives: a replayed copy, or the original streaming on.
#[derive(Debug)]
pub struct RetryBody<B> {
    kind: Kind<B>,
}

#[derive(Debug)]
enum Kind<B> {
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Streaming {
        prefix: Option<Bytes>,
        rest: B,
    },
}

impl<B> RetryBody<B> {
    fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Buffered {
                data: Some(data).filter(|d| !d.is_empty()),
                trailers,
            },
        }
    }
}

impl<B> Body for RetryBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.kind {
            Kind::Buffered { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            Kind::Streaming { prefix, rest } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Streaming { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Streaming { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let hint = rest.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(hint.lower() + extra);
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper + extra);
                }
                sum
            }
        }
    }
}
