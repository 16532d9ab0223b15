//! The OpenTelemetry messaging attributes that only the consumer knows (the system, the
//! group, the message id and, on a log, where the record sits), recorded on the message's
//! consumer span, which declared them empty
//! ([`consumer_span`](ms_tracing::message::MessageContext::consumer_span)).

use tracing::Span;

use super::settle::Attempt;

/// Records `attempt`'s delivery facts on `span`. A span that did not declare a field ignores
/// it, so a [`Propagation`](crate::propagation::Propagation) with spans of its own (or none)
/// gets nothing it did not ask for.
pub(super) fn record(span: &Span, system: &'static str, attempt: &Attempt) {
    if span.is_disabled() {
        return;
    }
    span.record("messaging.system", system);
    if let Some(group) = &attempt.info.group {
        span.record("messaging.consumer.group.name", &**group);
    }
    span.record("messaging.message.id", attempt.envelope.id());
    if let Some(position) = attempt.position {
        // A string in the conventions: partition ids are not numbers on every system.
        span.record(
            "messaging.destination.partition.id",
            position.partition.to_string(),
        );
        span.record("messaging.kafka.offset", position.offset);
        // ms-bus's Kafka publisher keys each record by the envelope's ordering key.
        span.record(
            "messaging.kafka.message.key",
            attempt.envelope.ordering_key(),
        );
    }
}
