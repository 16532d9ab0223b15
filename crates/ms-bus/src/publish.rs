//! The publishing side: [`EventPublisher`] (one topic, a copy per consumer group) and
//! [`CommandSender`] (one named destination, one consumer), and the [`EventBus`] /
//! [`CommandBus`] pairs of a publisher with a [`Subscriber`].
//!
//! # Stability
//!
//! These traits are what every adapter (memory, NATS JetStream, RabbitMQ) implements. Their
//! shapes are stable: changes are additive only (new provided methods with defaults).

use futures_util::future::BoxFuture;

use crate::{BusError, Envelope, Subscriber};

/// Publishes events to topics.
///
/// A topic is a [`validate_name`](crate::validate_name)-valid name such as
/// `invoicing.invoice`. Every consumer *group* subscribed to the topic receives each event
/// once; the instances of one group share the work. A group receives the events published
/// after it first subscribed (JetStream keeps earlier ones in the stream, but a new group's
/// durable consumer starts after them; a RabbitMQ topic exchange and the memory bus drop
/// events no queue is bound for): subscribe before publishing.
///
/// Publishing returns only after the broker confirmed the event (a JetStream publish ack, a
/// RabbitMQ publisher confirm). An error means "not confirmed": republishing the same envelope
/// is safe where the broker deduplicates (JetStream, by the envelope's
/// [`dedup_key`](crate::Envelope::dedup_key): its source and id) and harmless elsewhere as
/// consumers are idempotent (delivery is at least once everywhere).
///
/// # Order
///
/// Order is per [`Envelope::ordering_key`] (the `partitionkey`, else the subject, else the
/// id): the one rule the ms-outbox relay, the consumer runtime's lanes and ms-cqrs's runner
/// all follow. Events of one key that are published one after the other (each confirmed
/// before the next is published, or in one batch) are stored in that order. A batch that
/// fails leaves, of each key, a prefix of the key's events stored (plus, possibly, copies of
/// earlier publications): so republishing the whole batch stores every event for the first
/// time after the earlier events of its key, whatever broke. The NATS adapter achieves it
/// through a broken connection by confirming one event of a key before sending the next
/// (see the `nats` module's ordering notes); RabbitMQ's adapter republishes only
/// the unconfirmed tail of a batch, on a new connection, in order. Events of different keys
/// have no order between them. ms-outbox's `tests/kill_order.rs` checks it with the broker
/// killed mid-batch.
pub trait EventPublisher: Send + Sync {
    /// Publishes one event and waits for the broker's confirmation.
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        event: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>>;

    /// Publishes events with many confirmations in flight, in order per ordering key (see
    /// [order](#order)), and returns when all are confirmed. On error some events may have
    /// been stored, of each key a prefix of its events; republish the whole batch.
    ///
    /// The default publishes one at a time; adapters override it to pipeline.
    fn publish_batch<'a>(
        &'a self,
        topic: &'a str,
        events: &'a [Envelope],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            for event in events {
                self.publish(topic, event).await?;
            }
            Ok(())
        })
    }
}

/// Sends commands to named destinations (point to point: one consumer handles each).
///
/// Commands sent before any consumer listens are kept until one does. Confirmation and
/// retry rules are those of [`EventPublisher`].
pub trait CommandSender: Send + Sync {
    /// Sends one command and waits for the broker's confirmation.
    fn send<'a>(
        &'a self,
        destination: &'a str,
        command: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>>;

    /// Sends commands with many confirmations in flight; see
    /// [`EventPublisher::publish_batch`].
    fn send_batch<'a>(
        &'a self,
        destination: &'a str,
        commands: &'a [Envelope],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            for command in commands {
                self.send(destination, command).await?;
            }
            Ok(())
        })
    }
}

/// A bus for events: publish to topics and subscribe consumer groups to them.
pub trait EventBus: EventPublisher + Subscriber {}

impl<T: EventPublisher + Subscriber + ?Sized> EventBus for T {}

/// A bus for commands: send to destinations and consume them.
pub trait CommandBus: CommandSender + Subscriber {}

impl<T: CommandSender + Subscriber + ?Sized> CommandBus for T {}

impl<T: EventPublisher + ?Sized> EventPublisher for std::sync::Arc<T> {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        event: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        (**self).publish(topic, event)
    }

    fn publish_batch<'a>(
        &'a self,
        topic: &'a str,
        events: &'a [Envelope],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        (**self).publish_batch(topic, events)
    }
}

impl<T: CommandSender + ?Sized> CommandSender for std::sync::Arc<T> {
    fn send<'a>(
        &'a self,
        destination: &'a str,
        command: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        (**self).send(destination, command)
    }

    fn send_batch<'a>(
        &'a self,
        destination: &'a str,
        commands: &'a [Envelope],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        (**self).send_batch(destination, commands)
    }
}
