//! What goes into the outbox: an envelope and where it is going.

use std::time::Duration;

use ms_bus::Envelope;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The envelope extension that carries a scheduled message's due time (RFC 3339, UTC), set by
/// [`OutboxMessage::deliver_at`]: consumers see when it was meant to arrive (a timeout handler
/// can tell how late it runs).
pub const DELIVER_AT_EXTENSION: &str = "deliverat";

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
///
/// # Scheduled messages
///
/// [`deliver_at`](Self::deliver_at) and [`deliver_after`](Self::deliver_after) make a message
/// wait until a due time: enqueued in the caller's transaction like any other (trace context
/// and correlation ID captured then), published by the relay when due, never before, at least
/// once, under its envelope id as the broker's dedup key. Until then it can be
/// [cancelled](crate::Outbox::cancel) or [moved](crate::Outbox::reschedule), in a transaction.
///
/// **Order.** A scheduled message joins its key's order at its due time: it is published after
/// the messages of its key enqueued before it became due, and before those enqueued after.
/// Immediate messages of the key are never held back by a message due later, and scheduling
/// says nothing about the order among messages of other keys. "Became due" is when a relay
/// moves it into the outbox: its due time while a relay runs, a relay's start after downtime
/// (a relay that was down for an hour publishes an hour's due messages, in due order, after
/// the messages enqueued during that hour). A due message whose key an open transaction is
/// writing waits for that transaction to end, as any writer of the key would. Due times are
/// compared with the database's clock.
///
/// ```
/// use std::time::Duration;
/// use ms_bus::Envelope;
/// use ms_outbox::{DELIVER_AT_EXTENSION, OutboxMessage};
///
/// let reminder = Envelope::builder("invoicing.invoice.overdue", "/invoicing")
///     .id("inv-42-overdue") // an id of your own, to cancel it by
///     .subject("inv-42")
///     .build()?;
/// let message = OutboxMessage::event("invoicing.invoice", reminder)
///     .deliver_after(Duration::from_secs(30 * 24 * 3600));
/// assert!(message.due_at().is_some());
/// assert!(message.envelope().extension(DELIVER_AT_EXTENSION).is_some());
/// # Ok::<(), ms_bus::EnvelopeError>(())
/// ```
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    kind: MessageKind,
    destination: String,
    envelope: Envelope,
    due_at: Option<OffsetDateTime>,
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
            due_at: None,
        }
    }

    /// Publishes the message at `at`, not before (see
    /// [scheduled messages](Self#scheduled-messages)), and records `at` in the envelope's
    /// [`DELIVER_AT_EXTENSION`]. A time in the past means
    /// as soon as a relay gets to it.
    #[must_use]
    pub fn deliver_at(mut self, at: OffsetDateTime) -> Self {
        let at = whole_millis_up(at.to_offset(time::UtcOffset::UTC));
        if let Ok(text) = at.format(&Rfc3339) {
            // The name is a valid extension name, and RFC 3339 text a valid value.
            let _ = self.envelope.set_extension(DELIVER_AT_EXTENSION, text);
        }
        self.due_at = Some(at);
        self
    }

    /// Publishes the message `delay` from now (this process's clock), not before.
    #[must_use]
    pub fn deliver_after(self, delay: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        let at = time::Duration::try_from(delay)
            .ok()
            .and_then(|delay| now.checked_add(delay))
            .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc());
        self.deliver_at(at)
    }

    /// When the message is due, if it is scheduled.
    pub fn due_at(&self) -> Option<OffsetDateTime> {
        self.due_at
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

/// `at` rounded up to a whole millisecond: what every database stores exactly (SQLite keeps
/// milliseconds, PostgreSQL microseconds), so the due time in the envelope is the one the
/// relay compares with, and rounding can only make it later, never early.
fn whole_millis_up(at: OffsetDateTime) -> OffsetDateTime {
    let sub_milli = at.nanosecond() % 1_000_000;
    if sub_milli == 0 {
        return at;
    }
    at.checked_add(time::Duration::nanoseconds(i64::from(
        1_000_000 - sub_milli,
    )))
    .unwrap_or(at)
}
