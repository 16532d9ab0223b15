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
/// in commit order. It is, in this order of preference, the one set with
/// [`partition_key`](Self::partition_key), the envelope's `partitionkey` extension, its
/// `subject` (the aggregate the event is about, by CloudEvents convention), or else its id (no
/// ordering constraint).
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
/// # Ok::<(), ms_bus::EnvelopeError>(())
/// ```
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    kind: MessageKind,
    destination: String,
    envelope: Envelope,
    partition_key: Option<String>,
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
            partition_key: None,
        }
    }

    /// Orders this message with the others of `key` (see the type's docs for the default).
    #[must_use]
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
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
        self.partition_key
            .as_deref()
            .unwrap_or_else(|| self.envelope.ordering_key())
    }
}
