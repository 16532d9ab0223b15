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
use tower_http::classify::{
    ClassifiedResponse, ClassifyEos as _, ClassifyResponse as _, GrpcCode, GrpcEosErrorsAsFailures,
    GrpcErrorsAsFailures, ServerErrorsAsFailures, StatusInRangeAsFailures,
};
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

/// What counts as a failed gRPC call for `side`, as a tower-http classifier so that this crate's
/// spans agree with tower-http's `TraceLayer` and with retry and breaker layers that use the
/// same classifiers: client side every code but `OK`; server side, per the semantic
/// conventions, only the codes that point at the server (`UNKNOWN`, `DEADLINE_EXCEEDED`,
/// `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`): the others are the caller's doing.
fn grpc_classifier(side: Side) -> GrpcErrorsAsFailures {
    match side {
        Side::Client => GrpcErrorsAsFailures::new(),
        Side::Server => [
            GrpcCode::Cancelled,
            GrpcCode::InvalidArgument,
            GrpcCode::NotFound,
            GrpcCode::AlreadyExists,
            GrpcCode::PermissionDenied,
            GrpcCode::ResourceExhausted,
            GrpcCode::FailedPrecondition,
            GrpcCode::Aborted,
            GrpcCode::OutOfRange,
            GrpcCode::Unauthenticated,
        ]
        .into_iter()
        .fold(
            GrpcErrorsAsFailures::new(),
            GrpcErrorsAsFailures::with_success,
        ),
    }
}

/// Whether an HTTP response failed, for `side`: 5xx on a server (tower-http's
/// `ServerErrorsAsFailures`), 4xx and 5xx on a client.
fn http_failed<B>(side: Side, response: &Response<B>) -> bool {
    match side {
        Side::Server => matches!(
            ServerErrorsAsFailures::new().classify_response(response),
            ClassifiedResponse::Ready(Err(_))
        ),
        Side::Client => matches!(
            StatusInRangeAsFailures::new_for_client_and_server_errors().classify_response(response),
            ClassifiedResponse::Ready(Err(_))
        ),
    }
}

/// Records the numeric `grpc-status` of `headers` (response headers of a trailers-only
/// response, or trailers), if there is one.
fn record_grpc_code(span: &Span, headers: &HeaderMap) {
    if let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
    {
        span.record("rpc.grpc.status_code", code);
    }
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
        let mut eos = None;
        match this.protocol {
            Protocol::Http => {
                span.record(
                    "http.response.status_code",
                    i64::from(response.status().as_u16()),
                );
                if http_failed(*this.side, &response) {
                    span.record("otel.status_code", "error");
                }
            }
            Protocol::Grpc => match grpc_classifier(*this.side).classify_response(&response) {
                // A "trailers-only" response carries its status in the headers.
                ClassifiedResponse::Ready(outcome) => {
                    record_grpc_code(&span, response.headers());
                    if outcome.is_err() {
                        span.record("otel.status_code", "error");
                    }
                }
                ClassifiedResponse::RequiresEos(classifier) => eos = Some(classifier),
            },
        }
        Poll::Ready(Ok(response.map(|inner| ResponseBody {
            inner,
            span: Some(span),
            eos,
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
        eos: Option<GrpcEosErrorsAsFailures>,
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
            eos: None,
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
                    if let Some(classifier) = this.eos.take() {
                        record_grpc_code(span, trailers);
                        if classifier.classify_eos(Some(trailers)).is_err() {
                            span.record("otel.status_code", "error");
                        }
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
