//! The RabbitMQ adapter (feature `amqp`), over lapin.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use ms_bus::amqp::AmqpBus;
//! use ms_bus::consumer::{Consumer, Message};
//! use ms_bus::{Envelope, EventPublisher, Subscription};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let Some(rabbit) = ms_testkit::amqp().await else { return Ok(()) };
//! # let url = rabbit.url();
//! let bus = AmqpBus::builder(url)
//! #   .namespace(rabbit.namespace())? // the test's own, where it has no vhost of its own
//!     .connect()
//!     .await?;
//!
//! let seen = Arc::new(AtomicUsize::new(0));
//! let handler = tower::service_fn({
//!     let seen = seen.clone();
//!     move |message: Message| {
//!         let seen = seen.clone();
//!         async move {
//!             assert_eq!(message.ty(), "invoicing.invoice.created");
//!             assert_eq!(message.attempt(), 1);
//!             seen.fetch_add(1, Ordering::SeqCst);
//!             Ok::<_, std::convert::Infallible>(())
//!         }
//!     }
//! });
//! // The group's queue `invoicing.invoice:reporting` exists once `serve` returns.
//! let consumer = Consumer::new(Subscription::events("invoicing.invoice", "reporting")?)
//!     .serve(&bus, handler)
//!     .await?;
//!
//! let event = Envelope::builder("invoicing.invoice.created", "/invoicing").build()?;
//! bus.publish("invoicing.invoice", &event).await?; // returns once RabbitMQ confirmed it
//!
//! consumer.shutdown_when(|| seen.load(Ordering::SeqCst) == 1).await?;
//! assert_eq!(seen.load(Ordering::SeqCst), 1);
//! bus.close().await;
//! # Ok(()) }
//! ```
//!
//! # On the broker
//!
//! | what | where | declared by |
//! |---|---|---|
//! | events | durable topic exchange [`DEFAULT_EVENTS_EXCHANGE`] (`ms.events`), routing key = topic | the bus, on every (re)connection |
//! | a consumer group | durable queue `{topic}:{group}`, bound with the topic | the subscriber |
//! | commands | durable queue named after the destination, through the default exchange | the sender and the subscriber |
//! | a retry after `d` | durable queue `{queue}:retry:{ms}` with `x-message-ttl` = `ms` and the default exchange as dead-letter exchange, routing key `{queue}` | the acker, before each retry |
//! | dead letters | the subscription's dead-letter destination, a command queue | the acker |
//!
//! With a [namespace](AmqpBusBuilder::namespace), every name in the table starts with
//! `{namespace}/` (`acme/ms.events`, `acme/{topic}:{group}`, …): systems sharing a virtual
//! host, each with its own namespace, share no exchange or queue. [`AmqpBus::queue`] and
//! [`AmqpBus::events_exchange`] give the names on the broker.
//!
//! `:` is not allowed in bus names, so group and retry queues never collide with a command
//! destination. Retries wait in queues per delay rather than with a per-message `expiration`,
//! because RabbitMQ expires messages only at the head of a queue: a message waiting five
//! minutes would hold back one behind it that should wait a second. The delay is rounded down
//! to one of four steps per doubling (at most 20 % short), which keeps such queues few; an
//! idle one deletes itself an hour after its delay. RabbitMQ 3.10.8 here has no
//! delayed-message plugin. Dead letters are published by the adapter (then the original is
//! acked) rather than rejected to a dead-letter exchange, because RabbitMQ's dead-lettering
//! cannot add the reason headers.
//!
//! Messages are persistent and encoded with the crate's [`codec`](crate::codec::encode) in binary content
//! mode by default, per the CloudEvents RabbitMQ binding: the `ce-` attributes as headers
//! (AMQP long strings, unescaped), `datacontenttype` as the AMQP `content_type`. The AMQP
//! `message-id` is the envelope's [`dedup_key`](crate::Envelope::dedup_key) (source and id),
//! for consumers and tools that deduplicate by it; RabbitMQ itself does not.
//!
//! # Delivery guarantees
//!
//! - Publishing returns after RabbitMQ's publisher confirm. If the connection drops first,
//!   the adapter reconnects and republishes every message not yet confirmed, until the
//!   [publish timeout](AmqpBusBuilder::publish_timeout); then it returns
//!   [`BusError::Connection`]. A message is never silently lost, and may arrive twice.
//! - Subscriptions reopen their consumers after a reconnection; the stream yields one `Err`
//!   per break. Unsettled messages are redelivered by RabbitMQ.
//! - Deliveries are counted by the adapter (a `ms-attempt` header), since RabbitMQ 3.10
//!   classic queues count nothing: a broker retry's copy raises it. A message RabbitMQ
//!   redelivers (flagged `redelivered`: a consumer had it and did not settle it, or a broker
//!   restart recovered it) is handled where it is in the queue, as one attempt more than its
//!   header says, so that it keeps its place among its key's messages. The count does not
//!   grow from one such redelivery to the next (a classic queue cannot change a message in
//!   place, and moving a counted copy to the back put a restarted broker's whole backlog
//!   behind what came after it): a message that kills its consumer *process* every time is
//!   redelivered until it is removed. Failures the runtime sees (errors, panics) are counted
//!   and dead-lettered as everywhere.
//! - `in_progress` is a no-op: RabbitMQ has no per-message deadline, and
//!   [`Subscription::ack_wait`](crate::Subscription::ack_wait) is ignored. RabbitMQ's own
//!   `consumer_timeout` (30 minutes by default) still closes the channel of a handler that
//!   runs longer, which requeues every unsettled message of that subscription (see the
//!   acker's notes in `acker.rs`); raise it on the broker for longer handlers.
//! - Ordering: one queue delivers in order, redeliveries in their place, and the consumer
//!   runtime keeps retries in the key's lane, so one consumer of a group (at any
//!   [`concurrency`](crate::consumer::Consumer::concurrency)) handles each key's messages in
//!   the publisher's order, through broker restarts (ms-outbox's `tests/kill_order.rs`). Not
//!   across several consumers of one queue, which RabbitMQ serves in turn whatever the key;
//!   and a message redelivered after its consumer's channel closed may already have been
//!   overtaken by later ones of its key that another consumer (or a reopened channel)
//!   received meanwhile. Broker retries with
//!   [`partition_key_order(false)`](crate::consumer::Consumer::partition_key_order) go to
//!   the back of the queue.

mod acker;
mod builder;
mod headers;
#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
mod health;
mod link;
mod subscriber;
mod topology;

use std::sync::Arc;

use futures_util::future::BoxFuture;

pub use builder::{
    AmqpBusBuilder, DEFAULT_CONFIRM_WINDOW, DEFAULT_PUBLISH_TIMEOUT,
    DEFAULT_RECONNECT_INITIAL_DELAY, DEFAULT_RECONNECT_MAX_DELAY,
};
#[cfg(feature = "health")]
pub use health::RabbitMqCheck;
pub use topology::DEFAULT_EVENTS_EXCHANGE;

use crate::codec::{self, HeaderValues, Mode};
use crate::propagation::{self, Propagation};
use crate::{
    BusError, CommandSender, Deliveries, Envelope, EventPublisher, Subscriber, Subscription,
    validate_name,
};
use link::{Link, Outgoing, Prepare};

/// An event and command bus on RabbitMQ. Cloning is cheap: clones share one connection (and
/// its reconnection), which every publisher and subscription uses; each subscription has its
/// own channel.
#[derive(Debug, Clone)]
pub struct AmqpBus {
    link: Arc<Link>,
    mode: Mode,
    propagation: Arc<dyn Propagation>,
}

impl AmqpBus {
    /// A builder for a bus on the broker at `url` (`amqp://user:password@host:port/vhost`).
    pub fn builder(url: &str) -> AmqpBusBuilder {
        AmqpBusBuilder::new(url)
    }

    /// Connects to `url` with the defaults.
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        Self::builder(url).connect().await
    }

    fn from_parts(link: Arc<Link>, mode: Mode, propagation: Arc<dyn Propagation>) -> Self {
        Self {
            link,
            mode,
            propagation,
        }
    }

    /// Whether the connection is up now (it may be down between a break and the reconnection
    /// that the next operation triggers).
    pub async fn is_connected(&self) -> bool {
        self.link.is_connected().await
    }

    /// A health check of this bus's RabbitMQ connection, across reconnections (feature `health`).
    #[cfg(feature = "health")]
    #[cfg_attr(docsrs, doc(cfg(feature = "health")))]
    pub fn check(&self) -> RabbitMqCheck {
        RabbitMqCheck::new(self.link.clone())
    }

    /// Closes the connection: subscriptions end, publishing fails with [`BusError::Closed`].
    pub async fn close(&self) {
        self.link.close().await;
    }

    /// The events exchange on the broker: [`DEFAULT_EVENTS_EXCHANGE`] or the builder's, behind
    /// the [namespace](AmqpBusBuilder::namespace) if one is set.
    pub fn events_exchange(&self) -> &str {
        self.link.exchange()
    }

    /// The queue on the broker that `subscription` consumes from (and that commands sent to a
    /// destination wait in: `Subscription::commands(destination)`), for tools and other
    /// clients that read or send by queue name.
    ///
    /// ```no_run
    /// // Not run here: `tests/amqp.rs` checks these names on a real broker, in a vhost or
    /// // namespace of its own.
    /// # use ms_bus::Subscription;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = ms_bus::amqp::AmqpBus::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
    ///     .namespace("acme")?
    ///     .connect()
    ///     .await?;
    /// let group = Subscription::events("invoicing.invoice", "reporting")?;
    /// assert_eq!(bus.queue(&group)?, "acme/invoicing.invoice:reporting");
    /// assert_eq!(bus.queue(&Subscription::commands("payments.charge")?)?, "acme/payments.charge");
    /// assert_eq!(bus.events_exchange(), "acme/ms.events");
    /// # bus.close().await;
    /// # Ok(()) }
    /// ```
    pub fn queue(&self, subscription: &Subscription) -> Result<String, BusError> {
        self.link.names().work_queue(subscription)
    }

    /// An outgoing message for bus name `name` (a topic or destination), routed by
    /// `routing_key` (the topic, or the destination's queue).
    fn outgoing(
        &self,
        exchange: &str,
        name: &str,
        routing_key: &str,
        envelope: &Envelope,
        mandatory: bool,
    ) -> Result<Outgoing, BusError> {
        validate_name(name)?;
        let envelope = propagation::outgoing_for(
            &*self.propagation,
            propagation::Publication::to(name).on("rabbitmq"),
            envelope,
        );
        let message = codec::encode(&envelope, self.mode, HeaderValues::Raw);
        let (properties, body) = headers::to_amqp(message, &envelope.dedup_key())?;
        Ok(Outgoing {
            exchange: headers::short(exchange)?,
            routing_key: headers::short(routing_key)?,
            properties,
            body,
            mandatory,
        })
    }

    fn events(&self, topic: &str, events: &[Envelope]) -> Result<Vec<Outgoing>, BusError> {
        events
            .iter()
            .map(|event| self.outgoing(self.link.exchange(), topic, topic, event, false))
            .collect()
    }

    fn commands(
        &self,
        destination: &str,
        queue: &str,
        commands: &[Envelope],
    ) -> Result<Vec<Outgoing>, BusError> {
        commands
            .iter()
            .map(|command| self.outgoing("", destination, queue, command, true))
            .collect()
    }
}

impl EventPublisher for AmqpBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        event: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        self.publish_batch(topic, std::slice::from_ref(event))
    }

    fn publish_batch<'a>(
        &'a self,
        topic: &'a str,
        events: &'a [Envelope],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let messages = self.events(topic, events)?;
            let result = self.link.publish(&messages, &Prepare::Nothing).await;
            crate::metrics::sent("rabbitmq", topic, events.len(), result.as_ref().err());
            result
        })
    }
}

impl CommandSender for AmqpBus {
    fn send<'a>(
        &'a self,
        destination: &'a str,
        command: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        self.send_batch(destination, std::slice::from_ref(command))
    }

    fn send_batch<'a>(
        &'a self,
        destination: &'a str,
        commands: &'a [Envelope],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            validate_name(destination)?;
            let queue = self.link.names().destination(destination)?;
            let messages = self.commands(destination, &queue, commands)?;
            // Commands sent before any consumer listens must wait for one: the sender declares
            // the destination's durable queue (once per connection).
            let prepare = Prepare::Queue(queue);
            let result = self.link.publish(&messages, &prepare).await;
            crate::metrics::sent(
                "rabbitmq",
                destination,
                commands.len(),
                result.as_ref().err(),
            );
            result
        })
    }
}

impl Subscriber for AmqpBus {
    fn messaging_system(&self) -> &'static str {
        "rabbitmq"
    }

    fn subscribe<'a>(
        &'a self,
        subscription: &'a Subscription,
    ) -> BoxFuture<'a, Result<Deliveries, BusError>> {
        Box::pin(async move {
            let plan = subscriber::Plan::new(self.link.names(), subscription)?;
            subscriber::subscribe(self.link.clone(), plan).await
        })
    }
}
