//! The hook through which trace and correlation context travels with messages: injected into
//! outgoing envelopes by publishers, restored around the handler (its `call` and its future)
//! by the consumer runtime.
//!
//! The default, [`TraceContextPropagation`], is ms-tracing's message propagation: the
//! current span's W3C trace context (`traceparent`, `tracestate`) and the
//! [current correlation ID](CorrelationId::current) go out with each envelope, and each
//! handler runs inside a consumer span (a child of the producer's span, and linked to it)
//! with the envelope's correlation ID current. The correlation ID is ms-tracing's: the one
//! its `CorrelationIdLayer` sets for an HTTP request is the one a message published from that
//! request carries, and the one a handler sees is the one its HTTP and gRPC calls send.
//!
//! ```
//! use ms_bus::propagation::{default_propagation, Propagation};
//! use ms_bus::Envelope;
//! use ms_tracing::CorrelationId;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ms_bus::EnvelopeError> {
//! let incoming_id = CorrelationId::generate();
//! let incoming = Envelope::builder("invoicing.invoice.created", "/invoicing")
//!     .correlation_id(&incoming_id)
//!     .build()?;
//! let propagation = default_propagation();
//!
//! // The consumer runtime runs each handler inside `scope_call` (`scope` for a ready
//! // future); an event the handler publishes gets the incoming correlation id through
//! // `inject`.
//! let handler_propagation = propagation.clone();
//! let outcome = propagation
//!     .scope(&incoming, Box::pin(async move {
//!         assert_eq!(CorrelationId::current().as_ref(), Some(&incoming_id));
//!         let reply = Envelope::builder("payments.payment.requested", "/payments").build()?;
//!         let sent = handler_propagation.inject(&reply).expect("a correlation id to add");
//!         assert_eq!(sent.correlation_id().as_ref(), Some(&incoming_id));
//!         Ok(ms_bus::consumer::Outcome::Ack)
//!     }))
//!     .await;
//! assert!(outcome.is_ok());
//! assert_eq!(CorrelationId::current(), None); // only inside the handler
//! # Ok(()) }
//! ```
//!
//! Without an OpenTelemetry layer in the subscriber there is no valid span context, so only
//! the correlation ID travels; the consumer span is then a disabled `tracing` span.
//!
//! # Stability
//!
//! The trait's shape is stable: changes are additive only.

use std::borrow::Cow;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use ms_tracing::CorrelationId;
use ms_tracing::message::{self, ConsumerRelation, MessageHeaders};
use tracing::Instrument as _;

use crate::envelope::{CORRELATION_ID_EXTENSION, TRACESTATE_EXTENSION};
use crate::outcome::Outcome;
use crate::{BoxError, Envelope};

/// The future of one handler call, as the runtime passes it through [`Propagation::scope`].
pub type HandlerFuture = BoxFuture<'static, Result<Outcome, BoxError>>;

/// Carries context from the publishing code to the handler of the message.
pub trait Propagation: Send + Sync + std::fmt::Debug + 'static {
    /// Returns `envelope` with the current context added (extensions such as
    /// `correlationid`, `traceparent`, `tracestate`), or `None` when there is nothing to add.
    /// Attributes the envelope already has are the caller's choice and are kept.
    fn inject(&self, envelope: &Envelope) -> Option<Envelope>;

    /// [`inject`](Self::inject) for an envelope about to be published to `destination` (a
    /// topic or a command destination). Adapters call this, through [`outgoing_to`], so that
    /// an implementation can relate the message to its publication: the default
    /// [`TraceContextPropagation`] opens a `publish {destination}` producer span and sends
    /// its context. The default method ignores the destination and calls `inject`.
    fn inject_to(&self, destination: &str, envelope: &Envelope) -> Option<Envelope> {
        let _ = destination;
        self.inject(envelope)
    }

    /// [`inject_to`](Self::inject_to) with everything the publisher knows of the publication:
    /// the destination and, from an adapter, the messaging system. Adapters call this,
    /// through [`outgoing_for`]; the default [`TraceContextPropagation`] records the system
    /// and the message id on its producer span. The default method calls `inject_to`.
    fn inject_for(&self, publication: Publication<'_>, envelope: &Envelope) -> Option<Envelope> {
        self.inject_to(publication.destination, envelope)
    }

    /// Runs `handler` with the context of `envelope` current (a task-local correlation id, a
    /// span whose parent is the envelope's `traceparent`).
    fn scope(&self, envelope: &Envelope, handler: HandlerFuture) -> HandlerFuture;

    /// Calls `call` (once) and runs the future it returns, both with the context of
    /// `envelope` current. The consumer runtime uses this, so that what a tower service does
    /// synchronously in its `call` (read [`CorrelationId::current`], create a span, publish)
    /// sees the message's context, as its future does.
    ///
    /// The default calls `call` outside the context and passes its future to
    /// [`scope`](Self::scope) (implementations written before this method existed keep their
    /// behaviour); the implementations in this module override it.
    fn scope_call(
        &self,
        envelope: &Envelope,
        call: &mut dyn FnMut() -> HandlerFuture,
    ) -> HandlerFuture {
        self.scope(envelope, call())
    }

    /// The correlation ID and span to handle `envelope` under, for code that runs the handler
    /// itself rather than handing over a `'static` future (a projection runner applying a
    /// batch of events in one borrowed transaction): run the work inside the span, with the
    /// ID [scoped](CorrelationId::scope).
    ///
    /// The default: the envelope's correlation ID, when it has a valid one, and no span.
    fn handler_context(&self, envelope: &Envelope) -> (Option<CorrelationId>, tracing::Span) {
        (envelope.correlation_id(), tracing::Span::none())
    }
}

/// The default [`Propagation`]: W3C trace context and the correlation ID, through
/// ms-tracing's [`message`] module.
///
/// - `inject_for` (and `inject_to`), what adapters call on publish, opens a
///   `publish {destination}` producer span (OpenTelemetry messaging conventions: child of the
///   current span, with `messaging.system` when the adapter names it and
///   `messaging.message.id`) and sends its context, so that a consumer span's parent is the publication, not whatever span
///   published; then injects as `inject` does. The span marks the moment of sending: it
///   ends once the envelope is prepared, not when the broker confirms.
/// - `inject` adds the current span's `traceparent` (and `tracestate`, when not empty) and
///   the [current correlation ID](CorrelationId::current), each only when the envelope has
///   none (an envelope with its own `traceparent` keeps its `tracestate` too, so the two
///   never come from different traces).
/// - `scope` runs the handler inside a `process {type}` consumer span related to the
///   producer's span by [`ConsumerRelation`] (by default its child, and linked to it), and
///   with the envelope's correlation ID current. A message with an absent or invalid
///   `correlationid` starts a conversation of its own, correlated by the envelope's id
///   (or, should that not be a valid correlation ID, a generated one); an invalid one is
///   reported by a `warn` event naming the reason, never the value. An invalid
///   `traceparent` starts a new trace. Neither fails the message.
///
/// ```
/// use ms_bus::propagation::TraceContextPropagation;
/// use ms_tracing::message::ConsumerRelation;
///
/// // Batch or fan-out work that should start a trace of its own, linked to the producer's.
/// let propagation = TraceContextPropagation::new().relation(ConsumerRelation::LinkOnly);
/// # let _ = propagation;
/// ```
#[derive(Debug, Clone, Copy, Default)]
#[must_use]
pub struct TraceContextPropagation {
    relation: ConsumerRelation,
}

impl TraceContextPropagation {
    /// Consumer spans are children of the producer's span and linked to it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how a consumer span relates to the producer's span.
    pub fn relation(mut self, relation: ConsumerRelation) -> Self {
        self.relation = relation;
        self
    }
}

impl Propagation for TraceContextPropagation {
    fn inject(&self, envelope: &Envelope) -> Option<Envelope> {
        // Nothing to decide when the caller set both already: skip reading the context.
        if envelope.traceparent().is_some()
            && envelope.extension(CORRELATION_ID_EXTENSION).is_some()
        {
            return None;
        }
        let mut outgoing = Outgoing {
            original: envelope,
            with: None,
        };
        message::inject(&mut outgoing);
        outgoing.with
    }

    fn inject_to(&self, destination: &str, envelope: &Envelope) -> Option<Envelope> {
        self.inject_for(Publication::to(destination), envelope)
    }

    fn inject_for(&self, publication: Publication<'_>, envelope: &Envelope) -> Option<Envelope> {
        // An envelope with its own `traceparent` names the parent its producer chose (an
        // outbox relay sends the context of the work that stored it): no span of ours.
        if envelope.traceparent().is_some() {
            return self.inject(envelope);
        }
        let mut outgoing = Outgoing {
            original: envelope,
            with: None,
        };
        // One producer span per message, also in a batch: each message is consumed on its
        // own, so each consumer span gets a parent naming that message's publication.
        // Without a subscriber that records it the span is disabled and costs a callsite
        // check; with no OpenTelemetry layer its context is invalid and only the correlation
        // ID travels, as before.
        let span = message::producer_span(publication.destination);
        if !span.is_disabled() {
            if let Some(system) = publication.system {
                span.record("messaging.system", system);
            }
            span.record("messaging.message.id", envelope.id());
        }
        span.in_scope(|| message::inject(&mut outgoing));
        outgoing.with
    }

    fn scope(&self, envelope: &Envelope, handler: HandlerFuture) -> HandlerFuture {
        let (id, span) = self.context(envelope);
        Box::pin(id.scope(handler.instrument(span)))
    }

    fn scope_call(
        &self,
        envelope: &Envelope,
        call: &mut dyn FnMut() -> HandlerFuture,
    ) -> HandlerFuture {
        let (id, span) = self.context(envelope);
        let handler = id.clone().sync_scope(|| span.in_scope(call));
        Box::pin(id.scope(handler.instrument(span)))
    }

    fn handler_context(&self, envelope: &Envelope) -> (Option<CorrelationId>, tracing::Span) {
        let (id, span) = self.context(envelope);
        (Some(id), span)
    }
}

impl TraceContextPropagation {
    /// The correlation ID and consumer span to handle `envelope` under.
    fn context(self, envelope: &Envelope) -> (CorrelationId, tracing::Span) {
        let received = message::extract(&Incoming(envelope));
        if let Some(reason) = received.rejected_correlation_id() {
            // The reason only: the value is a foreign producer's text (log injection).
            tracing::warn!(
                target: "ms_bus::propagation",
                envelope_id = envelope.id(),
                %reason,
                "incoming correlationid rejected, processing under the envelope id"
            );
        }
        // A message without a (valid) correlation ID starts a conversation, correlated by the
        // message's own id, as NServiceBus does: unique like a generated one, the same on a
        // redelivery, and without generating a UUID per message.
        let id = received
            .correlation_id()
            .cloned()
            .or_else(|| CorrelationId::parse(envelope.id()).ok())
            .unwrap_or_else(CorrelationId::generate);
        let span = received.consumer_span(envelope.ty(), self.relation);
        (id, span)
    }
}

/// A [`Propagation`] that carries the correlation ID only, with no spans: the
/// [current](CorrelationId::current) one into envelopes that have none, and the envelope's
/// (when present and valid) around the handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct CorrelationPropagation;

impl Propagation for CorrelationPropagation {
    fn inject(&self, envelope: &Envelope) -> Option<Envelope> {
        if envelope.extension(CORRELATION_ID_EXTENSION).is_some() {
            return None;
        }
        let current = CorrelationId::current()?;
        let mut with = envelope.clone();
        // The name is a constant that satisfies the extension naming rule.
        with.set_extension(CORRELATION_ID_EXTENSION, current.as_str())
            .ok()?;
        Some(with)
    }

    fn scope(&self, envelope: &Envelope, handler: HandlerFuture) -> HandlerFuture {
        match envelope.correlation_id() {
            Some(id) => Box::pin(id.scope(handler)),
            None => handler,
        }
    }

    fn scope_call(
        &self,
        envelope: &Envelope,
        call: &mut dyn FnMut() -> HandlerFuture,
    ) -> HandlerFuture {
        match envelope.correlation_id() {
            Some(id) => {
                let handler = id.clone().sync_scope(call);
                Box::pin(id.scope(handler))
            }
            None => call(),
        }
    }
}

/// The propagation adapters and the runtime use unless told otherwise:
/// [`TraceContextPropagation::new`].
pub fn default_propagation() -> Arc<dyn Propagation> {
    Arc::new(TraceContextPropagation::new())
}

/// Where an envelope is about to be published, as [`Propagation::inject_for`] sees it.
///
/// ```
/// use ms_bus::propagation::Publication;
///
/// let publication = Publication::to("invoicing.invoice").on("kafka");
/// assert_eq!(publication.destination, "invoicing.invoice");
/// assert_eq!(publication.system, Some("kafka"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Publication<'a> {
    /// The topic or command destination.
    pub destination: &'a str,
    /// The messaging system by OpenTelemetry's `messaging.system` names (`kafka`,
    /// `rabbitmq`; `nats` and `memory` for ms-bus's others), as the adapters' consumers
    /// report it ([`Subscriber::messaging_system`](crate::Subscriber::messaging_system)).
    /// `None` where no broker is known yet: ms-outbox stores the envelope for a relay.
    pub system: Option<&'static str>,
}

impl<'a> Publication<'a> {
    /// A publication to `destination` on a system not known here.
    #[must_use]
    pub const fn to(destination: &'a str) -> Self {
        Self {
            destination,
            system: None,
        }
    }

    /// The same publication, on `system`.
    #[must_use]
    pub const fn on(self, system: &'static str) -> Self {
        Self {
            system: Some(system),
            ..self
        }
    }
}

/// `envelope`, about to be published to `destination`, with context injected through
/// [`Propagation::inject_for`]; borrowed when there was nothing to add. What code that knows
/// no broker calls (ms-outbox, storing an envelope); adapters call [`outgoing_for`].
pub fn outgoing_to<'a>(
    propagation: &dyn Propagation,
    destination: &str,
    envelope: &'a Envelope,
) -> Cow<'a, Envelope> {
    outgoing_for(propagation, Publication::to(destination), envelope)
}

/// `envelope`, about to be published as `publication` says, with context injected through
/// [`Propagation::inject_for`]; borrowed when there was nothing to add. What adapters call.
pub fn outgoing_for<'a>(
    propagation: &dyn Propagation,
    publication: Publication<'_>,
    envelope: &'a Envelope,
) -> Cow<'a, Envelope> {
    propagation
        .inject_for(publication, envelope)
        .map_or(Cow::Borrowed(envelope), Cow::Owned)
}

/// A received envelope's extensions, read in place as message headers.
struct Incoming<'a>(&'a Envelope);

impl MessageHeaders for Incoming<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.extension(name)
    }

    fn set(&mut self, _name: &str, _value: String) {
        // Extraction only reads; a received envelope is never changed.
    }
}

/// An outgoing envelope's extensions as message headers: the envelope is copied (its
/// attributes, once) only when a header is actually added, and headers it has are kept.
struct Outgoing<'a> {
    original: &'a Envelope,
    with: Option<Envelope>,
}

impl MessageHeaders for Outgoing<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.with.as_ref().unwrap_or(self.original).extension(name)
    }

    fn set(&mut self, name: &str, value: String) {
        let keep = self.original.extension(name).is_some()
            // A `tracestate` belongs to the `traceparent` beside it.
            || (name == TRACESTATE_EXTENSION && self.original.traceparent().is_some());
        if keep {
            return;
        }
        let with = self.with.get_or_insert_with(|| self.original.clone());
        // The names ms-tracing writes (`traceparent`, `tracestate`, `correlationid`) satisfy
        // the extension naming rule, so this cannot fail; were it to, the header is left out
        // rather than the message.
        let _ = with.set_extension(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::TRACEPARENT_EXTENSION;

    fn envelope() -> Envelope {
        Envelope::builder("test.thing.happened", "/test")
            .build()
            .unwrap()
    }

    #[test]
    fn nothing_to_inject_outside_any_context() {
        assert!(TraceContextPropagation::new().inject(&envelope()).is_none());
    }

    #[test]
    fn the_callers_own_correlation_id_and_traceparent_are_kept() {
        let theirs = CorrelationId::parse("theirs").unwrap();
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let own = Envelope::builder("test.thing.happened", "/test")
            .correlation_id(&theirs)
            .traceparent(traceparent)
            .build()
            .unwrap();
        let ours = CorrelationId::parse("ours").unwrap();
        let injected = ours.sync_scope(|| TraceContextPropagation::new().inject(&own));
        assert!(injected.is_none());
        assert_eq!(
            Outgoing {
                original: &own,
                with: None
            }
            .get(TRACEPARENT_EXTENSION),
            Some(traceparent)
        );
    }

    #[test]
    fn the_current_correlation_id_is_added_when_absent() {
        let ours = CorrelationId::parse("ours").unwrap();
        let injected = ours
            .clone()
            .sync_scope(|| TraceContextPropagation::new().inject(&envelope()))
            .expect("a correlation id to add");
        assert_eq!(injected.correlation_id(), Some(ours));
        assert_eq!(injected.traceparent(), None); // no OpenTelemetry layer, no span context
    }
}
