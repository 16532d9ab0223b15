//! The response side shared by [`ServerTraceService`](crate::server::ServerTraceService) and
//! [`ClientTraceService`](crate::client::ClientTraceService): the future that classifies the
//! outcome (with the layer's tower-http classifier) and records it on the span and the call's
//! metrics, and the body that keeps both open until the response is complete (and classifies a
//! gRPC status in the trailers).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_http::classify::{ClassifiedResponse, ClassifyEos, ClassifyResponse};
use tracing::Span;

use crate::call_metrics::CallMetrics;

/// What the call is, which decides which attributes it gets and which classifier applies.
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

/// The layer's classifier for this call's protocol.
#[derive(Debug, Clone)]
pub(crate) enum Classifier<H, G> {
    Http(H),
    Grpc(G),
}

impl<H, G> Classifier<H, G> {
    pub(crate) fn for_protocol(protocol: Protocol, http: &H, grpc: &G) -> Self
    where
        H: Clone,
        G: Clone,
    {
        match protocol {
            Protocol::Http => Self::Http(http.clone()),
            Protocol::Grpc => Self::Grpc(grpc.clone()),
        }
    }
}

/// A tower-http end-of-stream classifier, boxed so that the body type does not name it.
trait Eos: Send + Sync {
    fn failed(self: Box<Self>, trailers: Option<&HeaderMap>) -> bool;
}

impl<T: ClassifyEos + Send + Sync> Eos for T {
    fn failed(self: Box<Self>, trailers: Option<&HeaderMap>) -> bool {
        (*self).classify_eos(trailers).is_err()
    }
}

/// The numeric `grpc-status` of `headers` (response headers of a trailers-only response, or
/// trailers), if there is one.
fn grpc_code(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i32>().ok())
}

/// The `error.type` of a failed gRPC call: the status code's canonical name.
fn grpc_error_type(code: Option<i32>) -> &'static str {
    code.and_then(ms_resilience::classify::grpc_code_name)
        .unwrap_or("_OTHER")
}

/// One traced call: its span and its metrics, which end together.
#[derive(Debug)]
pub(crate) struct Call {
    span: Span,
    metrics: Option<CallMetrics>,
}

impl Call {
    pub(crate) fn new(span: Span, metrics: Option<CallMetrics>) -> Self {
        Self { span, metrics }
    }

    fn fail(&mut self, error_type: &'static str) {
        self.span.record("otel.status_code", "error");
        if let Some(metrics) = &mut self.metrics {
            metrics.error(error_type);
        }
    }

    fn grpc_status(&mut self, code: Option<i32>) {
        if let Some(code) = code {
            self.span.record("rpc.grpc.status_code", i64::from(code));
            if let Some(metrics) = &mut self.metrics {
                metrics.grpc_status(code);
            }
        }
    }
}

pin_project! {
    /// Response future of the trace services: polls the inner future inside the span,
    /// classifies the response head and hands the call on to the [`ResponseBody`].
    pub struct ResponseFuture<F, H, G> {
        #[pin]
        inner: F,
        call: Option<Call>,
        classifier: Option<Classifier<H, G>>,
    }
}

impl<F, H, G> ResponseFuture<F, H, G> {
    pub(crate) fn new(inner: F, call: Option<Call>, classifier: Classifier<H, G>) -> Self {
        Self {
            inner,
            call,
            classifier: Some(classifier),
        }
    }
}

impl<F, B, E, H, G> Future for ResponseFuture<F, H, G>
where
    F: Future<Output = Result<Response<B>, E>>,
    H: ClassifyResponse,
    H::ClassifyEos: Send + Sync + 'static,
    G: ClassifyResponse,
    G::ClassifyEos: Send + Sync + 'static,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = match this.call.as_ref() {
            Some(call) => ready!(call.span.in_scope(|| this.inner.poll(cx))),
            // Untraced (a skipped path), or polled after completion: the inner future decides.
            None => ready!(this.inner.poll(cx)),
        };
        let (Some(mut call), Some(classifier)) = (this.call.take(), this.classifier.take()) else {
            return Poll::Ready(outcome.map(|r| r.map(ResponseBody::untraced)));
        };
        let response = match outcome {
            Ok(response) => response,
            Err(error) => {
                call.fail(std::any::type_name::<E>());
                return Poll::Ready(Err(error));
            }
        };
        let eos: Option<Box<dyn Eos>> = match classifier {
            Classifier::Http(classifier) => {
                let status = response.status().as_u16();
                call.span
                    .record("http.response.status_code", i64::from(status));
                if let Some(metrics) = &mut call.metrics {
                    metrics.http_status(status);
                }
                match classifier.classify_response(&response) {
                    ClassifiedResponse::Ready(Ok(())) => None,
                    ClassifiedResponse::Ready(Err(_)) => {
                        call.fail(CallMetrics::status_text(status));
                        None
                    }
                    ClassifiedResponse::RequiresEos(eos) => Some(Box::new(eos)),
                }
            }
            Classifier::Grpc(classifier) => {
                // A "trailers-only" response carries its status in the headers.
                let code = grpc_code(response.headers());
                call.grpc_status(code);
                match classifier.classify_response(&response) {
                    ClassifiedResponse::Ready(Ok(())) => None,
                    ClassifiedResponse::Ready(Err(_)) => {
                        call.fail(grpc_error_type(code));
                        None
                    }
                    ClassifiedResponse::RequiresEos(eos) => Some(Box::new(eos)),
                }
            }
        };
        if let Some(metrics) = &mut call.metrics {
            metrics.head_received();
        }
        Poll::Ready(Ok(response.map(|inner| ResponseBody {
            inner,
            call: Some(call),
            eos,
        })))
    }
}

impl<F, H, G> std::fmt::Debug for ResponseFuture<F, H, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("call", &self.call)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// Response body of the trace services: the span ends and the call's duration is recorded
    /// when the body has been sent (or dropped), and a gRPC status in the trailers is
    /// classified and recorded.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
        eos: Option<Box<dyn Eos>>,
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
            call: None,
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
                if let Some(trailers) = frame.trailers_ref() {
                    // Trailers are the last frame: the exchange is over.
                    if let Some(mut call) = this.call.take() {
                        let code = grpc_code(trailers);
                        call.grpc_status(code);
                        if let Some(eos) = this.eos.take()
                            && eos.failed(Some(trailers))
                        {
                            call.fail(grpc_error_type(code));
                        }
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(mut call) = this.call.take() {
                    call.fail(std::any::type_name::<B::Error>());
                }
            }
            None => {
                if let Some(mut call) = this.call.take()
                    && let Some(eos) = this.eos.take()
                    && eos.failed(None)
                {
                    call.fail(grpc_error_type(None));
                }
            }
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
            .field("call", &self.call)
            .finish_non_exhaustive()
    }
}
