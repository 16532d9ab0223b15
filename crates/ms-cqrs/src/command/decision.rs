//! [`Decision`]: what a command decided, and how its messages are stamped.

use crate::SEQUENCE_EXTENSION;
use ms_bus::{Envelope, EnvelopeBuilder, EnvelopeError};
use ms_outbox::OutboxMessage;

/// What a command decided: the aggregate's new state and the events (and commands) that carry
/// the change, in order.
///
/// ```
/// use ms_bus::Envelope;
/// use ms_cqrs::command::Decision;
///
/// let decision = Decision::new(120_i64)
///     .event("invoicing.invoice", Envelope::builder("invoicing.invoice.created", "/invoicing"))
///     .command("payments", Envelope::builder("payments.charge", "/invoicing"));
/// assert_eq!(decision.event_count(), 1);
/// assert_eq!(decision.state(), Some(&120));
/// assert!(Decision::<i64>::unchanged().is_empty());
/// ```
///
/// A state change is always carried by at least one event: the version counts events, and the
/// read side learns of the change only through them. A decision without events saves no
/// state (whatever [`new`](Self::new) was given), and one with neither events nor commands
/// writes nothing at all: that is how an idempotent command says "already done".
#[derive(Debug, Clone)]
#[must_use]
pub struct Decision<S> {
    state: Option<S>,
    messages: Vec<Pending>,
}

/// A message the decision asked for, not yet stamped.
#[derive(Debug, Clone)]
struct Pending {
    event: bool,
    destination: String,
    envelope: EnvelopeBuilder,
}

impl<S> Decision<S> {
    /// The aggregate's new state; add the events that carry the change.
    pub fn new(state: S) -> Self {
        Self {
            state: Some(state),
            messages: Vec::new(),
        }
    }

    /// No change: nothing is saved (commands added are still enqueued).
    pub fn unchanged() -> Self {
        Self {
            state: None,
            messages: Vec::new(),
        }
    }

    /// Adds an event for `topic`. The executor sets its subject and partition key to the
    /// aggregate id unless the builder set them, and its [`SEQUENCE_EXTENSION`] to the
    /// aggregate's version after this event (replacing any the builder set).
    pub fn event(mut self, topic: impl Into<String>, envelope: EnvelopeBuilder) -> Self {
        self.messages.push(Pending {
            event: true,
            destination: topic.into(),
            envelope,
        });
        self
    }

    /// Adds a command for `destination`. The executor sets its partition key to the aggregate
    /// id unless the builder set one; commands carry no sequence.
    pub fn command(mut self, destination: impl Into<String>, envelope: EnvelopeBuilder) -> Self {
        self.messages.push(Pending {
            event: false,
            destination: destination.into(),
            envelope,
        });
        self
    }

    /// The new state, if the decision has one.
    pub fn state(&self) -> Option<&S> {
        self.state.as_ref()
    }

    /// How many events the decision emits (what the version grows by).
    pub fn event_count(&self) -> usize {
        self.messages.iter().filter(|m| m.event).count()
    }

    /// Whether the decision writes nothing: no events and no commands.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Splits the decision into its state and its messages, stamped for aggregate `id` at
    /// version `version` (0 when it does not exist yet).
    pub(crate) fn stamp(self, id: &str, version: u64) -> Result<Stamped<S>, EnvelopeError> {
        let mut stamped = Stamped {
            state: self.state,
            messages: Vec::with_capacity(self.messages.len()),
            events: Vec::new(),
            commands: Vec::new(),
            version,
        };
        for pending in self.messages {
            let mut envelope = build_with_subject(pending.envelope, id, pending.event)?;
            if envelope.partition_key().is_none() {
                envelope.set_extension(ms_bus::PARTITION_KEY_EXTENSION, id)?;
            }
            let message = if pending.event {
                // Versions count events: the n-th event of the aggregate carries n, so a
                // reader sees 1, 2, 3, … without gaps or repeats.
                stamped.version = stamped.version.saturating_add(1);
                envelope.set_extension(SEQUENCE_EXTENSION, stamped.version.to_string())?;
                stamped.events.push(envelope.clone());
                OutboxMessage::event(pending.destination, envelope)
            } else {
                stamped.commands.push(envelope.clone());
                OutboxMessage::command(pending.destination, envelope)
            };
            stamped.messages.push(message);
        }
        Ok(stamped)
    }
}

/// Builds an envelope, giving an event the aggregate id as subject when the builder set none.
fn build_with_subject(
    builder: EnvelopeBuilder,
    id: &str,
    event: bool,
) -> Result<Envelope, EnvelopeError> {
    if !event {
        return builder.build();
    }
    // The builder has no getters: build once to see whether a subject was set. Data is
    // reference-counted, so the clone is cheap.
    let envelope = builder.clone().build()?;
    if envelope.subject().is_some() {
        Ok(envelope)
    } else {
        builder.subject(id).build()
    }
}

/// A decision with its messages stamped.
#[derive(Debug)]
pub(crate) struct Stamped<S> {
    pub(crate) state: Option<S>,
    pub(crate) messages: Vec<OutboxMessage>,
    pub(crate) events: Vec<Envelope>,
    pub(crate) commands: Vec<Envelope>,
    /// The version after the last event.
    pub(crate) version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: &str) -> EnvelopeBuilder {
        Envelope::builder(ty, "/test")
    }

    #[test]
    fn events_get_contiguous_sequences_and_the_aggregate_as_subject_and_key() {
        let stamped = Decision::new(())
            .event("t", event("a"))
            .command("d", event("c"))
            .event("t", event("b").subject("other").partition_key("k"))
            .stamp("agg-1", 41)
            .unwrap();
        assert_eq!(stamped.version, 43);
        let sequences: Vec<_> = stamped
            .events
            .iter()
            .map(|e| e.extension(SEQUENCE_EXTENSION))
            .collect();
        assert_eq!(sequences, [Some("42"), Some("43")]);
        assert_eq!(stamped.events[0].subject(), Some("agg-1"));
        assert_eq!(stamped.events[0].partition_key(), Some("agg-1"));
        assert_eq!(stamped.events[1].subject(), Some("other"));
        assert_eq!(stamped.events[1].partition_key(), Some("k"));
        let command = &stamped.commands[0];
        assert_eq!(command.partition_key(), Some("agg-1"));
        assert_eq!(command.subject(), None);
        assert_eq!(command.extension(SEQUENCE_EXTENSION), None);
        let kinds: Vec<_> = stamped.messages.iter().map(OutboxMessage::kind).collect();
        assert_eq!(
            kinds,
            [
                ms_outbox::MessageKind::Event,
                ms_outbox::MessageKind::Command,
                ms_outbox::MessageKind::Event
            ]
        );
    }
}
