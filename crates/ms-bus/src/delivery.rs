//! One delivered message as an adapter hands it to the consumer runtime: the decoded envelope
//! (or why it could not be decoded), delivery facts, and the [`Acker`] that settles it.
//!
//! # Stability
//!
//! [`Acker`], [`Delivery`] and [`DeliveryInfo`] are the contract between adapters and the
//! consumer runtime; changes are additive only.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::codec::DecodeError;
use crate::{BusError, Envelope};

/// Settles one delivery on its broker: the one ack model every adapter implements.
///
/// The runtime calls exactly one of [`ack`](Self::ack), [`retry`](Self::retry) or
/// [`dead_letter`](Self::dead_letter) per delivery, and [`in_progress`](Self::in_progress)
/// any number of times before that. An acker dropped without settlement (a crashed handler,
/// an aborted consumer) leaves the message to the broker's redelivery.
pub trait Acker: Send + Sync + 'static {
    /// The message is done: the broker forgets it.
    fn ack(&self) -> BoxFuture<'_, Result<(), BusError>>;

    /// Deliver the message again after `delay` (NATS: nak with delay; RabbitMQ: a delay
    /// queue or republish; memory: a timer). The next delivery's
    /// [`attempt`](DeliveryInfo::attempt) is one higher.
    fn retry(&self, delay: Duration) -> BoxFuture<'_, Result<(), BusError>>;

    /// Move the original message to the subscription's dead-letter destination, adding the
    /// [`dead_letter`](crate::dead_letter) headers with `reason`, then settle it. The message
    /// as received is kept byte for byte, so that a message that could not be decoded is
    /// preserved too.
    fn dead_letter<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, Result<(), BusError>>;

    /// [`dead_letter`](Self::dead_letter), recording `deliveries` as the message's number of
    /// deliveries (the [`DELIVERIES_HEADER`](crate::dead_letter::DELIVERIES_HEADER)): the
    /// consumer runtime retries in the key's lane (see
    /// [ordering](crate::consumer#ordering)), so it counts attempts the broker never saw.
    /// The default ignores the count and records the broker's.
    fn dead_letter_after<'a>(
        &'a self,
        reason: &'a str,
        deliveries: u32,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        let _ = deliveries;
        self.dead_letter(reason)
    }

    /// The handler is still working: extend the ack deadline (NATS: `+WPI`). A no-op where
    /// the broker has no per-message deadline (RabbitMQ, whose `consumer_timeout` nothing
    /// from the client resets).
    fn in_progress(&self) -> BoxFuture<'_, Result<(), BusError>>;
}

/// Facts about one delivery, from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// 1 for the first delivery, then counted by the broker (JetStream `num_delivered`) or by
    /// the adapter (a header it carries through retries).
    pub attempt: u32,
    /// The topic or destination it was sent to.
    pub origin: Arc<str>,
    /// The consumer group it was delivered to (events only).
    pub group: Option<Arc<str>>,
    /// The transport headers that are not CloudEvents attributes (the `ce-` headers are in
    /// the envelope): dead-letter reasons, broker metadata.
    pub headers: Vec<(String, String)>,
}

impl DeliveryInfo {
    /// The first header of that name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Where a delivered message sits in a partitioned log (Kafka): what the consumer runtime
/// records on the message's span as `messaging.destination.partition.id` and
/// `messaging.kafka.offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogPosition {
    /// The partition of the topic.
    pub partition: i32,
    /// The record's offset in its partition.
    pub offset: i64,
}

/// One delivered message.
pub struct Delivery {
    message: Result<Envelope, DecodeError>,
    info: DeliveryInfo,
    acker: Arc<dyn Acker>,
    position: Option<LogPosition>,
}

impl Delivery {
    /// A delivery, as an adapter builds it. `message` is the decoding result: an `Err` is
    /// dead-lettered by the runtime with the error as the reason.
    pub fn new(
        message: Result<Envelope, DecodeError>,
        info: DeliveryInfo,
        acker: Arc<dyn Acker>,
    ) -> Self {
        Self {
            message,
            info,
            acker,
            position: None,
        }
    }

    /// The same delivery, from a partitioned log at `position` (what a log-based adapter such
    /// as Kafka's sets; the default is none).
    #[must_use]
    pub fn with_log_position(mut self, position: LogPosition) -> Self {
        self.position = Some(position);
        self
    }

    /// Where the message sits in a partitioned log, when its broker is one.
    pub fn log_position(&self) -> Option<LogPosition> {
        self.position
    }

    /// The decoded envelope, or why the message is not a CloudEvents event.
    pub fn message(&self) -> Result<&Envelope, &DecodeError> {
        self.message.as_ref()
    }

    /// The delivery facts.
    pub fn info(&self) -> &DeliveryInfo {
        &self.info
    }

    /// The acker.
    pub fn acker(&self) -> &Arc<dyn Acker> {
        &self.acker
    }

    /// Splits the delivery.
    pub fn into_parts(self) -> (Result<Envelope, DecodeError>, DeliveryInfo, Arc<dyn Acker>) {
        (self.message, self.info, self.acker)
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("info", &self.info)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}
