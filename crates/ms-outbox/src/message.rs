//! What goes into the outbox: an envelope and where it is going.

use ms_bus::Envelope;

/// Whether a message is an event (published to a topic, a copy per consumer group) or a
/// command (sent to one destination, one consumer handles it): the two halves of ms-bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// Published with [`ms_bus::EventPublisher::publish`].
    Event,
    /// Sent with [`ms_bus::CommandSender::send`].
    Command,
}

impl MessageKind {
    pub(crate) fn code(self) -> i16 {
        match self {
            Self::Event => 0,
            Self::Command => 1,
        }
    }

    pub(crate) fn from_code(code: i16) -> Option<Self> {
        match code {
            0 => Some(Self::Event),
            1 => Some(Self::Command),
            _ => None,
        }
    }
}

/// An envelope on its way out: its kind, its destination (topic or command destination) and
/// its partition key.
///
/// The partition key decides what stays in order: the relay publishes the messages of one key
/// in commit order, and ms-bus's consumers and ms-cqrs's runner handle them in that order. It
/// is the envelope's [`ordering_key`](ms_bus::Envelope::ordering_key), the one rule all of
/// them follow: its `partitionkey` extension (which [`partition_key`](Self::partition_key)
/// sets), else its `subject` (the aggregate the event is about, by CloudEvents convention),
/// else its id (no ordering constraint).
///
/// ```
/// use ms_bus::Envelope;
/// use ms_outbox::OutboxMessage;
///
/// let created = Envelope::builder("invoicing.invoice.created", "/invoicing")
///     .subject("invoice-42")
///     .json_data(&serde_json::json!({ "total": 120 }))?
///     .build()?;
/// let message = OutboxMessage::event("invoicing.invoice", created);
/// assert_eq!(message.key(), "invoice-42");
/// // A key of its own travels on the envelope, for the consumers to order by too.
/// let message = message.partition_key("customer-7");
/// assert_eq!(message.envelope().partition_key(), Some("customer-7"));
/// assert_eq!(message.key(), "customer-7");
/// # Ok::<(), ms_bus::EnvelopeError>(())
/// ```
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    kind: MessageKind,
    destination: String,
    envelope: Envelope,
}

impl OutboxMessage {
    /// An event for `topic`.
    pub fn event(topic: impl Into<String>, envelope: Envelope) -> Self {
        Self::new(MessageKind::Event, topic.into(), envelope)
    }

    /// A command for `destination`.
    pub fn command(destination: impl Into<String>, envelope: Envelope) -> Self {
        Self::new(MessageKind::Command, destination.into(), envelope)
    }

    fn new(kind: MessageKind, destination: String, envelope: Envelope) -> Self {
        Self {
            kind,
            destination,
            envelope,
        }
    }

    /// Orders this message with the others of `key` (see the type's docs for the default) by
    /// setting the envelope's `partitionkey` extension: consumers then keep the same order.
    #[must_use]
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        // The name is the spec's own extension name, which `set_extension` accepts.
        let _ = self
            .envelope
            .set_extension(ms_bus::PARTITION_KEY_EXTENSION, key);
        self
    }

    /// The message's kind.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// The topic or command destination.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The partition key the message is ordered by.
    pub fn key(&self) -> &str {
        self.envelope.ordering_key()
    }
}
