//! Trace context and correlation ID in message headers: the CloudEvents distributed-tracing
//! extension (`traceparent`, `tracestate`) plus a `correlationid` extension attribute.
//!
//! ```
//! # #[cfg(not(feature = "testing"))]
//! # fn main() {}
//! # #[cfg(feature = "testing")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeMap;
//! use ms_tracing::CorrelationId;
//! use ms_tracing::message::{self, ConsumerRelation};
//! use ms_tracing::testing::TestTracing;
//!
//! let tracing = TestTracing::new();
//! let _guard = tracing.set_default();
//!
//! // Producer: inside a span and a correlation scope, the headers pick both up.
//! let mut headers = BTreeMap::new();
//! let id = CorrelationId::parse("order-42")?;
//! let publish = message::producer_span("invoices");
//! id.sync_scope(|| publish.in_scope(|| message::inject(&mut headers)));
//! drop(publish);
//! assert!(headers["traceparent"].starts_with("00-"));
//! assert_eq!(headers["correlationid"], "order-42");
//!
//! // Consumer: the processing span is a child of the producer's span, and links to it.
//! let received = message::extract(&headers);
//! let process = received.consumer_span("invoices", ConsumerRelation::ChildAndLink);
//! process.in_scope(|| {});
//! drop(process);
//! assert_eq!(received.correlation_id().map(CorrelationId::as_str), Some("order-42"));
//!
//! let (producer, consumer) = (tracing.span("publish invoices"), tracing.span("process invoices"));
//! assert_eq!(consumer.span_context.trace_id(), producer.span_context.trace_id());
//! assert_eq!(consumer.parent_span_id, producer.span_context.span_id());
//! assert_eq!(consumer.links.links[0].span_context.span_id(), producer.span_context.span_id());
//! # Ok(())
//! # }
//! ```
//!
//! A consumer span may instead only *link* to the producer ([`ConsumerRelation::LinkOnly`]),
//! starting a trace of its own: the right choice when one message fans out to work that should
//! not be billed to the producer's trace, or when a batch of messages from many traces is
//! processed as one unit (one link per message).

use std::collections::{BTreeMap, HashMap};

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::correlation::{CorrelationId, InvalidCorrelationId};
use crate::propagation::W3cTraceContextPropagator;

/// The header (CloudEvents extension attribute) carrying the trace parent: the W3C name,
/// [`propagation::TRACEPARENT`](crate::propagation::TRACEPARENT).
pub const TRACEPARENT: &str = crate::propagation::TRACEPARENT;
/// The header (CloudEvents extension attribute) carrying the vendor trace state: the W3C
/// name, [`propagation::TRACESTATE`](crate::propagation::TRACESTATE).
pub const TRACESTATE: &str = crate::propagation::TRACESTATE;
/// The header (CloudEvents extension attribute) carrying the correlation ID. CloudEvents
/// attribute names are lowercase letters and digits only, hence no dash.
pub const CORRELATION_ID: &str = "correlationid";

/// A message's header map, as far as propagation needs it. Implemented for
/// `BTreeMap<String, String>` and `HashMap<String, String>`; a bus implements it for its
/// envelope's extension attributes.
pub trait MessageHeaders {
    /// The value of header `name` (names as written above: lowercase).
    fn get(&self, name: &str) -> Option<&str>;
    /// Sets header `name`, replacing any value.
    fn set(&mut self, name: &str, value: String);
}

impl MessageHeaders for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        BTreeMap::get(self, name).map(String::as_str)
    }
    fn set(&mut self, name: &str, value: String) {
        self.insert(name.to_owned(), value);
    }
}

impl<S: std::hash::BuildHasher> MessageHeaders for HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(String::as_str)
    }
    fn set(&mut self, name: &str, value: String) {
        self.insert(name.to_owned(), value);
    }
}

struct AsInjector<'a, H: ?Sized>(&'a mut H);
struct AsExtractor<'a, H: ?Sized>(&'a H);

impl<H: MessageHeaders + ?Sized> Injector for AsInjector<'_, H> {
    fn set(&mut self, key: &str, value: String) {
        self.0.set(key, value);
    }
}

impl<H: MessageHeaders + ?Sized> Extractor for AsExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }
    fn keys(&self) -> Vec<&str> {
        [TRACEPARENT, TRACESTATE, CORRELATION_ID]
            .into_iter()
            .filter(|key| self.0.get(key).is_some())
            .collect()
    }
}

/// Writes the current span's trace context and the [current](CorrelationId::current)
/// correlation ID into `headers`.
pub fn inject<H: MessageHeaders + ?Sized>(headers: &mut H) {
    let current = tracing::Span::current();
    let cx = current.context();
    if !cx.span().span_context().is_valid() {
        crate::missing_layer::check(&current);
    }
    inject_context(&cx, CorrelationId::current().as_ref(), headers);
}

/// Writes the trace context of `cx` and `correlation_id` into `headers` (for a message built
/// away from the work that caused it, such as an outbox relay).
pub fn inject_context<H: MessageHeaders + ?Sized>(
    cx: &Context,
    correlation_id: Option<&CorrelationId>,
    headers: &mut H,
) {
    W3cTraceContextPropagator::new().inject_context(cx, &mut AsInjector(headers));
    if let Some(id) = correlation_id {
        headers.set(CORRELATION_ID, id.to_string());
    }
}

/// What a received message carries.
pub fn extract<H: MessageHeaders + ?Sized>(headers: &H) -> MessageContext {
    // The whole context, not only the span context: it carries what the propagator read beside
    // it (the Level 2 `random` flag as received, a `tracestate` opentelemetry cannot hold).
    let parent = W3cTraceContextPropagator::new()
        .extract_with_context(&Context::new(), &AsExtractor(headers));
    let remote = Some(parent.span().span_context().clone()).filter(SpanContext::is_valid);
    let (correlation_id, rejected) = match headers.get(CORRELATION_ID).map(CorrelationId::parse) {
        None => (None, None),
        Some(Ok(id)) => (Some(id), None),
        Some(Err(reason)) => (None, Some(reason)),
    };
    MessageContext {
        remote,
        parent,
        correlation_id,
        rejected,
    }
}

/// How a consumer's span relates to the producer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ConsumerRelation {
    /// Child of the producer's span, in its trace, and linked to it (the default).
    #[default]
    ChildAndLink,
    /// A new trace, linked to the producer's span.
    LinkOnly,
}

/// The trace context and correlation ID a received message carries; see [`extract`].
#[derive(Debug, Clone, Default)]
pub struct MessageContext {
    remote: Option<SpanContext>,
    parent: Context,
    correlation_id: Option<CorrelationId>,
    rejected: Option<InvalidCorrelationId>,
}

impl MessageContext {
    /// The producer's span context, when the headers carry a valid one.
    pub fn span_context(&self) -> Option<&SpanContext> {
        self.remote.as_ref()
    }

    /// The producer's correlation ID, when the headers carry a valid one.
    pub fn correlation_id(&self) -> Option<&CorrelationId> {
        self.correlation_id.as_ref()
    }

    /// Why the `correlationid` header was refused, when it was (the text itself is not kept).
    pub fn rejected_correlation_id(&self) -> Option<&InvalidCorrelationId> {
        self.rejected.as_ref()
    }

    /// The correlation ID to process the message under: the producer's, or a fresh one.
    pub fn correlation_id_or_new(&self) -> CorrelationId {
        self.correlation_id
            .clone()
            .unwrap_or_else(CorrelationId::generate)
    }

    /// Relates `span` (not yet entered) to the producer's span. Does nothing without a valid
    /// producer context, or when `span` has already started (entered or its context read).
    pub fn attach(&self, span: &tracing::Span, relation: ConsumerRelation) {
        let Some(remote) = &self.remote else {
            return;
        };
        if relation == ConsumerRelation::ChildAndLink {
            // An error only means the span is disabled or already started: nothing to relate.
            let _ = span.set_parent(self.parent.clone());
        }
        span.add_link(remote.clone());
    }

    /// A `process {destination}` consumer span related to the producer by `relation`, carrying
    /// `correlation.id` (the producer's, or empty when it sent none).
    ///
    /// The span also declares, empty, the OpenTelemetry messaging attributes that only the
    /// consumer knows, for it to [record](tracing::Span::record): `messaging.system`,
    /// `messaging.consumer.group.name`, `messaging.message.id`,
    /// `messaging.destination.partition.id`, and Kafka's `messaging.kafka.offset` and
    /// `messaging.kafka.message.key` (ms-bus's consumer runtime records those its broker
    /// has). A `tracing` span takes only the fields it declared when it was created.
    pub fn consumer_span(&self, destination: &str, relation: ConsumerRelation) -> tracing::Span {
        let span = tracing::info_span!(
            "process",
            otel.name = format!("process {destination}"),
            otel.kind = "consumer",
            messaging.operation.type = "process",
            messaging.destination.name = destination,
            correlation.id = tracing::field::Empty,
            messaging.system = tracing::field::Empty,
            messaging.consumer.group.name = tracing::field::Empty,
            messaging.message.id = tracing::field::Empty,
            messaging.destination.partition.id = tracing::field::Empty,
            messaging.kafka.offset = tracing::field::Empty,
            messaging.kafka.message.key = tracing::field::Empty,
        );
        if let Some(id) = &self.correlation_id {
            span.record("correlation.id", id.as_str());
        }
        self.attach(&span, relation);
        span
    }
}

/// A `publish {destination}` producer span; enter it around [`inject`] so the message carries
/// its context. `messaging.system` and `messaging.message.id` are declared empty, for the
/// publisher to record when it knows them.
pub fn producer_span(destination: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "publish",
        otel.name = format!("publish {destination}"),
        otel.kind = "producer",
        messaging.operation.type = "send",
        messaging.destination.name = destination,
        correlation.id = tracing::field::Empty,
        messaging.system = tracing::field::Empty,
        messaging.message.id = tracing::field::Empty,
    );
    if let Some(id) = CorrelationId::current() {
        span.record("correlation.id", id.as_str());
    }
    span
}
