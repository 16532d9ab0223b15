//! The response side shared by [`ServerTraceService`](crate::server::ServerTraceService) and
//! [`ClientTraceService`](crate::client::ClientTraceService): the future that records the
//! outcome on the span, and the body that keeps the span open until the response is complete
//! (and reads a gRPC status from the trailers).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tracing::Span;

/// Which side of the call a span is, which decides what counts as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Server,
    Client,
}

/// What the call is, which decides which attributes it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
        if grpc { Self::Grpc } else { Self::Http }
    }
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
pub(crate) fn grpc_service_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// Records the gRPC status on the span and, when it counts as a failure for this side, the
/// error status. Server side, per the semantic conventions, only the codes that point at the
/// server are failures (`UNKNOWN`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`,
/// `UNAVAILABLE`, `DATA_LOSS`); client side, every code but `OK`.
fn record_grpc_status(span: &Span, side: Side, headers: &HeaderMap) -> bool {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
    else {
        return false;
    };
    span.record("rpc.grpc.status_code", code);
    let failed = match side {
        Side::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
        Side::Client => code != 0,
    };
    if failed {
        span.record("otel.status_code", "error");
    }
    true
}

pin_project! {
    /// Response future of the trace services: polls the inner future inside the span, records
    /// the status and hands the span on to the [`ResponseBody`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Option<Span>,
        side: Side,
        protocol: Protocol,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, span: Span, side: Side, protocol: Protocol) -> Self {
        Self {
            inner,
            span: Some(span),
            side,
            protocol,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(span) = this.span.as_ref() else {
            // Polled after completion: the inner future decides what that means.
            return this
                .inner
                .poll(cx)
                .map_ok(|r| r.map(ResponseBody::untraced));
        };
        let outcome = ready!(span.in_scope(|| this.inner.poll(cx)));
        let span = this.span.take().unwrap_or_else(Span::none);
        let response = match outcome {
            Ok(response) => response,
            Err(error) => {
                span.record("otel.status_code", "error");
                return Poll::Ready(Err(error));
            }
        };
        let status = response.status();
        let mut grpc_done = false;
        match this.protocol {
            Protocol::Http => {
                span.record("http.response.status_code", i64::from(status.as_u16()));
                let failed = match this.side {
                    Side::Server => status.is_server_error(),
                    Side::Client => status.is_client_error() || status.is_server_error(),
                };
                if failed {
                    span.record("otel.status_code", "error");
                }
            }
            Protocol::Grpc => {
                // A "trailers-only" response carries its status in the headers.
                grpc_done = record_grpc_status(&span, *this.side, response.headers());
            }
        }
        let (side, grpc) = (*this.side, *this.protocol == Protocol::Grpc && !grpc_done);
        Poll::Ready(Ok(response.map(|inner| ResponseBody {
            inner,
            span: Some(span),
            side,
            grpc,
        })))
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// Response body of the trace services: the span ends when the body has been sent (or
    /// dropped), and a gRPC status in the trailers is recorded on it.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        span: Option<Span>,
        side: Side,
        grpc: bool,
    }
}

impl<B> ResponseBody<B> {
    /// The wrapped body; the span ends here if it has not already.
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    fn untraced(inner: B) -> Self {
        Self {
            inner,
            span: None,
            side: Side::Server,
            grpc: false,
        }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(trailers), Some(span)) = (frame.trailers_ref(), this.span.as_ref()) {
                    if *this.grpc {
                        record_grpc_status(span, *this.side, trailers);
                    }
                    // Trailers are the last frame: the exchange is over.
                    *this.span = None;
                }
            }
            Some(Err(_)) => {
                if let Some(span) = this.span.take() {
                    span.record("otel.status_code", "error");
                }
            }
            None => *this.span = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}
