//! The hook through which trace and correlation context travels with messages: injected into
//! outgoing envelopes by publishers, restored around the handler by the consumer runtime.
//!
//! ```
//! use ms_bus::propagation::{current_correlation_id, CorrelationPropagation, Propagation};
//! use ms_bus::Envelope;
//! use ms_tracing::CorrelationId;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ms_bus::EnvelopeError> {
//! let incoming_id = CorrelationId::generate();
//! let incoming = Envelope::builder("invoicing.invoice.created", "/invoicing")
//!     .correlation_id(&incoming_id)
//!     .build()?;
//! let propagation = CorrelationPropagation;
//!
//! // The consumer runtime runs each handler inside `scope`; an event the handler publishes
//! // gets the incoming correlation id through `inject`.
//! let outcome = propagation
//!     .scope(&incoming, Box::pin(async move {
//!         assert_eq!(current_correlation_id().as_ref(), Some(&incoming_id));
//!         let reply = Envelope::builder("payments.payment.requested", "/payments").build()?;
//!         let sent = propagation.inject(&reply).expect("a correlation id to add");
//!         assert_eq!(sent.correlation_id().as_ref(), Some(&incoming_id));
//!         Ok(ms_bus::consumer::Outcome::Ack)
//!     }))
//!     .await;
//! assert!(outcome.is_ok());
//! assert_eq!(current_correlation_id(), None); // only inside the handler
//! # Ok(()) }
//! ```
//!
//! # Where ms-tracing plugs in
//!
//! ms-tracing's message propagation (W3C `traceparent`/`tracestate` and the correlation id,
//! with the current span restored around the handler) implements [`Propagation`] and is
//! passed to the adapters' builders and the [`Consumer`](crate::consumer::Consumer). Until
//! then the default, [`CorrelationPropagation`], carries the correlation id only.
//!
//! # Stability
//!
//! The trait's shape is stable: changes are additive only.

use std::borrow::Cow;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use ms_tracing::CorrelationId;

use crate::envelope::CORRELATION_ID_EXTENSION;
use crate::{BoxError, Envelope, consumer::Outcome};

/// The future of one handler call, as the runtime passes it through [`Propagation::scope`].
pub type HandlerFuture = BoxFuture<'static, Result<Outcome, BoxError>>;

/// Carries context from the publishing code to the handler of the message.
pub trait Propagation: Send + Sync + std::fmt::Debug + 'static {
    /// Returns `envelope` with the current context added (extensions such as
    /// `correlationid`, `traceparent`, `tracestate`), or `None` when there is nothing to add.
    /// Attributes the envelope already has are the caller's choice and are kept.
    fn inject(&self, envelope: &Envelope) -> Option<Envelope>;

    /// Runs `handler` with the context of `envelope` current (a task-local correlation id, a
    /// span whose parent is the envelope's `traceparent`).
    fn scope(&self, envelope: &Envelope, handler: HandlerFuture) -> HandlerFuture;
}

tokio::task_local! {
    static CURRENT_CORRELATION_ID: CorrelationId;
}

/// The correlation id of the message whose handler is running, under
/// [`CorrelationPropagation`].
pub fn current_correlation_id() -> Option<CorrelationId> {
    CURRENT_CORRELATION_ID.try_with(Clone::clone).ok()
}

/// The default [`Propagation`]: restores the incoming `correlationid` around the handler and
/// copies it into envelopes published from there that have none.
#[derive(Debug, Clone, Copy, Default)]
pub struct CorrelationPropagation;

impl Propagation for CorrelationPropagation {
    fn inject(&self, envelope: &Envelope) -> Option<Envelope> {
        if envelope.extension(CORRELATION_ID_EXTENSION).is_some() {
            return None;
        }
        let current = current_correlation_id()?;
        let mut with = envelope.clone();
        // The name is a constant that satisfies the extension naming rule.
        with.set_extension(CORRELATION_ID_EXTENSION, current.as_str())
            .ok()?;
        Some(with)
    }

    fn scope(&self, envelope: &Envelope, handler: HandlerFuture) -> HandlerFuture {
        match envelope.correlation_id() {
            Some(id) => Box::pin(CURRENT_CORRELATION_ID.scope(id, handler)),
            None => handler,
        }
    }
}

/// The propagation adapters and the runtime use unless told otherwise.
pub fn default_propagation() -> Arc<dyn Propagation> {
    Arc::new(CorrelationPropagation)
}

/// `envelope` with context injected, borrowed when there was nothing to add. For adapters.
pub fn outgoing<'a>(propagation: &dyn Propagation, envelope: &'a Envelope) -> Cow<'a, Envelope> {
    propagation
        .inject(envelope)
        .map_or(Cow::Borrowed(envelope), Cow::Owned)
}
