//! What a consumer subscribes to: a topic as a consumer group, or a command destination; and
//! the [`Subscriber`] trait adapters implement to deliver it.
//!
//! # Stability
//!
//! [`Subscriber`] and [`Subscription`] are implemented and read by every adapter; their
//! shapes are stable: changes are additive only (new builder options with defaults).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::{BusError, Delivery, validate_name};

/// How many deliveries an adapter may hand out before they are settled (broker prefetch /
/// pull batch size), unless [`Subscription::prefetch`] says otherwise.
pub const DEFAULT_PREFETCH: usize = 256;
/// How long the broker waits for a settlement before it redelivers, unless
/// [`Subscription::ack_wait`] says otherwise. Long handlers extend it with
/// [`Message::in_progress`](crate::consumer::Message::in_progress).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// The suffix of the default dead-letter destination: `{group or destination}.dead-letter`.
pub const DEAD_LETTER_SUFFIX: &str = "dead-letter";

/// The stream of deliveries an adapter returns for a subscription. It ends when the
/// subscription ends (bus closed); a lost connection shows as an `Err` item, after which the
/// adapter keeps trying to reconnect and the stream goes on.
pub type Deliveries = BoxStream<'static, Result<Delivery, BusError>>;

/// Delivers the messages of a [`Subscription`]. Implemented by every adapter; the consumer
/// runtime ([`Consumer`](crate::consumer::Consumer)) drives it.
pub trait Subscriber: Send + Sync {
    /// Creates what the subscription needs on the broker (stream and durable consumer, queue
    /// and bindings, dead-letter destination) and returns its deliveries. When this returns,
    /// events published to the topic reach the group.
    fn subscribe<'a>(
        &'a self,
        subscription: &'a Subscription,
    ) -> BoxFuture<'a, Result<Deliveries, BusError>>;

    /// The broker's name as OpenTelemetry's `messaging.system` (`nats`, `rabbitmq`), for
    /// [metrics](crate::metrics). The default is `ms_bus`.
    fn messaging_system(&self) -> &'static str {
        "ms_bus"
    }
}

impl<T: Subscriber + ?Sized> Subscriber for Arc<T> {
    fn subscribe<'a>(
        &'a self,
        subscription: &'a Subscription,
    ) -> BoxFuture<'a, Result<Deliveries, BusError>> {
        (**self).subscribe(subscription)
    }

    fn messaging_system(&self) -> &'static str {
        (**self).messaging_system()
    }
}

/// Where a subscription's messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// Events on `topic`, as consumer group `group` (each group gets every event once).
    Events {
        /// The topic.
        topic: Arc<str>,
        /// The consumer group.
        group: Arc<str>,
    },
    /// Commands sent to `destination`.
    Commands {
        /// The destination.
        destination: Arc<str>,
    },
}

/// A subscription: its [`Source`] and the delivery options every broker honours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    source: Source,
    dead_letter: Arc<str>,
    prefetch: usize,
    ack_wait: Duration,
}

impl Subscription {
    /// Events on `topic` for consumer group `group`. Dead letters go to
    /// `{topic}.{group}.dead-letter`.
    pub fn events(topic: &str, group: &str) -> Result<Self, BusError> {
        validate_name(topic)?;
        validate_name(group)?;
        Ok(Self::new(
            Source::Events {
                topic: topic.into(),
                group: group.into(),
            },
            format!("{topic}.{group}.{DEAD_LETTER_SUFFIX}"),
        ))
    }

    /// Commands sent to `destination`. Dead letters go to `{destination}.dead-letter`.
    pub fn commands(destination: &str) -> Result<Self, BusError> {
        validate_name(destination)?;
        Ok(Self::new(
            Source::Commands {
                destination: destination.into(),
            },
            format!("{destination}.{DEAD_LETTER_SUFFIX}"),
        ))
    }

    fn new(source: Source, dead_letter: String) -> Self {
        Self {
            source,
            dead_letter: dead_letter.into(),
            prefetch: DEFAULT_PREFETCH,
            ack_wait: DEFAULT_ACK_WAIT,
        }
    }

    /// Sets the dead-letter destination, a command destination: read it with
    /// [`Subscription::commands`]. Dead letters carry the original message and the
    /// [`dead_letter`](crate::dead_letter) headers.
    pub fn dead_letter(mut self, destination: &str) -> Result<Self, BusError> {
        validate_name(destination)?;
        self.dead_letter = destination.into();
        Ok(self)
    }

    /// Sets how many unsettled deliveries the adapter may hold (default
    /// [`DEFAULT_PREFETCH`]; at least 1).
    #[must_use]
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Sets how long the broker waits for a settlement before redelivering (default
    /// [`DEFAULT_ACK_WAIT`]). Brokers without a deadline (RabbitMQ redelivers when the
    /// channel closes) may ignore it.
    #[must_use]
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Where the messages come from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The topic (events) or destination (commands).
    pub fn origin(&self) -> &str {
        match &self.source {
            Source::Events { topic, .. } => topic,
            Source::Commands { destination } => destination,
        }
    }

    /// The consumer group, for events.
    pub fn group(&self) -> Option<&str> {
        match &self.source {
            Source::Events { group, .. } => Some(group),
            Source::Commands { .. } => None,
        }
    }

    /// The dead-letter destination.
    pub fn dead_letter_destination(&self) -> &str {
        &self.dead_letter
    }

    /// The prefetch.
    pub fn prefetch_count(&self) -> usize {
        self.prefetch
    }

    /// The ack deadline.
    pub fn ack_wait_duration(&self) -> Duration {
        self.ack_wait
    }
}
