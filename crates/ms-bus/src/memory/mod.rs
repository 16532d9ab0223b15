//! The in-process adapter: the semantics of the real brokers (consumer groups, redelivery,
//! retry delays, dead letters) without a broker, plus [`Faults`] for application tests.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_bus::memory::MemoryBus;
//! use ms_bus::{CommandSender, Envelope, Subscriber, Subscription};
//! use futures_util::StreamExt as _;
//!
//! let bus = MemoryBus::new();
//! let command = Envelope::builder("payments.payment.capture", "/invoicing").build()?;
//! bus.send("payments.capture", &command).await?; // kept until someone consumes it
//!
//! let mut deliveries = bus.subscribe(&Subscription::commands("payments.capture")?).await?;
//! let delivery = deliveries.next().await.expect("one delivery")?;
//! assert_eq!(delivery.message().map(|e| e.id()), Ok(command.id()));
//! assert_eq!(delivery.info().attempt, 1);
//! delivery.acker().ack().await?;
//! # Ok(()) }
//! ```
//!
//! Semantics, as on the real brokers: every consumer group subscribed to a topic gets each
//! event once, and the consumers of a group share them; events published to a topic no group
//! subscribes to are dropped (as by a RabbitMQ topic exchange); commands are kept until
//! consumed; a delivery dropped without settlement (a crashed consumer) is delivered again.
//! Cloning a `MemoryBus` shares the bus.

mod faults;
mod queue;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;

pub use faults::Faults;

use crate::codec::{self, HeaderValues, TransportMessage};
use crate::propagation::{Propagation, Publication, default_propagation, outgoing_for};
use crate::{
    Acker, BusError, CommandSender, Deliveries, Delivery, DeliveryInfo, Envelope, EventPublisher,
    Source, Subscriber, Subscription, dead_letter, validate_name,
};
use queue::{Item, Payload, Queue};

/// An in-process bus. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Each topic's group queues, in subscription order.
    topics: Mutex<HashMap<Arc<str>, Vec<Arc<Queue>>>>,
    /// Every queue by key: `e/{topic}/{group}` for groups, `c/{destination}` for commands.
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    faults: Faults,
    rng: Mutex<fastrand::Rng>,
    propagation: Arc<dyn Propagation>,
}

/// Builds a [`MemoryBus`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryBusBuilder {
    faults: Faults,
    propagation: Arc<dyn Propagation>,
}

impl MemoryBusBuilder {
    /// Injects `faults`.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Sets the context propagation applied on publish (ms-tracing plugs in here).
    pub fn propagation(mut self, propagation: Arc<dyn Propagation>) -> Self {
        self.propagation = propagation;
        self
    }

    /// The bus.
    pub fn build(self) -> MemoryBus {
        MemoryBus {
            inner: Arc::new(Inner {
                topics: Mutex::new(HashMap::new()),
                queues: Mutex::new(HashMap::new()),
                rng: Mutex::new(fastrand::Rng::with_seed(self.faults.seed)),
                faults: self.faults,
                propagation: self.propagation,
            }),
        }
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    /// A bus without faults.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a bus.
    pub fn builder() -> MemoryBusBuilder {
        MemoryBusBuilder {
            faults: Faults::default(),
            propagation: default_propagation(),
        }
    }

    /// Publishes raw transport bytes to a topic, as a foreign or broken producer would; they
    /// are decoded on delivery (binary or structured mode, raw header values), so a message
    /// that is no CloudEvents event reaches the consumer's dead-letter path.
    pub fn publish_raw(&self, topic: &str, message: TransportMessage) -> Result<(), BusError> {
        validate_name(topic)?;
        self.inner.fan_out(topic, &Payload::Raw(message));
        Ok(())
    }

    /// Sends raw transport bytes to a command destination; see
    /// [`publish_raw`](Self::publish_raw).
    pub fn send_raw(&self, destination: &str, message: TransportMessage) -> Result<(), BusError> {
        validate_name(destination)?;
        let queue = self.inner.command_queue(destination);
        self.inner.enqueue(&queue, Payload::Raw(message));
        Ok(())
    }

    /// How many messages wait in a command destination (a dead-letter destination, say).
    pub fn pending_commands(&self, destination: &str) -> usize {
        self.inner
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&format!("c/{destination}"))
            .map_or(0, |q| q.len())
    }
}

impl Inner {
    fn command_queue(&self, destination: &str) -> Arc<Queue> {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(format!("c/{destination}"))
            .or_insert_with(|| Arc::new(Queue::new(destination.into(), None)))
            .clone()
    }

    fn group_queue(&self, topic: &Arc<str>, group: &Arc<str>) -> Arc<Queue> {
        // Lock order: queues, then topics (the only place holding both).
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        queues
            .entry(format!("e/{topic}/{group}"))
            .or_insert_with(|| {
                let queue = Arc::new(Queue::new(topic.clone(), Some(group.clone())));
                self.topics
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(topic.clone())
                    .or_default()
                    .push(queue.clone());
                queue
            })
            .clone()
    }

    fn groups(&self, topic: &str) -> Vec<Arc<Queue>> {
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .cloned()
            .unwrap_or_default()
    }

    fn fan_out(&self, topic: &str, payload: &Payload) {
        for queue in self.groups(topic) {
            self.enqueue(&queue, payload.clone());
        }
    }

    fn chance(&self, probability: f64) -> bool {
        probability > 0.0
            && self
                .rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .f64()
                < probability
    }

    fn enqueue(&self, queue: &Arc<Queue>, payload: Payload) {
        let item = Item {
            payload,
            headers: Vec::new(),
            deliveries: 0,
        };
        if self.faults.is_none() {
            queue.push(item, None);
            return;
        }
        let copies = if self.chance(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let item = item.clone();
            if self.chance(self.faults.delay) {
                let nanos = u64::try_from(self.faults.max_delay.as_nanos()).unwrap_or(u64::MAX);
                let delay = Duration::from_nanos(
                    self.rng
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .u64(0..=nanos),
                );
                push_later(queue.clone(), item, delay);
            } else if self.chance(self.faults.reorder) {
                let at = self
                    .rng
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .usize(0..=queue.len());
                queue.push(item, Some(at));
            } else {
                queue.push(item, None);
            }
        }
    }
}

fn push_later(queue: Arc<Queue>, item: Item, delay: Duration) {
    if delay.is_zero() {
        queue.push(item, None);
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        queue.push(item, None);
    });
}

impl EventPublisher for MemoryBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        event: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            validate_name(topic)?;
            let event = outgoing_for(
                &*self.inner.propagation,
                Publication::to(topic).on("memory"),
                event,
            );
            self.inner
                .fan_out(topic, &Payload::Envelope(event.into_owned()));
            crate::metrics::sent("memory", topic, 1, None);
            Ok(())
        })
    }

    fn publish_batch<'a>(
        &'a self,
        topic: &'a str,
        events: &'a [Envelope],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            validate_name(topic)?;
            if !self.inner.faults.is_none() {
                for event in events {
                    self.publish(topic, event).await?;
                }
                return Ok(());
            }
            let prepared: Vec<Envelope> = events
                .iter()
                .map(|e| {
                    outgoing_for(
                        &*self.inner.propagation,
                        Publication::to(topic).on("memory"),
                        e,
                    )
                    .into_owned()
                })
                .collect();
            for queue in self.inner.groups(topic) {
                queue.push_all(prepared.iter().map(|e| Item {
                    payload: Payload::Envelope(e.clone()),
                    headers: Vec::new(),
                    deliveries: 0,
                }));
            }
            crate::metrics::sent("memory", topic, prepared.len(), None);
            Ok(())
        })
    }
}

impl CommandSender for MemoryBus {
    fn send<'a>(
        &'a self,
        destination: &'a str,
        command: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            validate_name(destination)?;
            let command = outgoing_for(
                &*self.inner.propagation,
                Publication::to(destination).on("memory"),
                command,
            )
            .into_owned();
            let queue = self.inner.command_queue(destination);
            self.inner.enqueue(&queue, Payload::Envelope(command));
            crate::metrics::sent("memory", destination, 1, None);
            Ok(())
        })
    }
}

impl Subscriber for MemoryBus {
    fn messaging_system(&self) -> &'static str {
        "memory"
    }

    fn subscribe<'a>(
        &'a self,
        subscription: &'a Subscription,
    ) -> BoxFuture<'a, Result<Deliveries, BusError>> {
        Box::pin(async move {
            let queue = match subscription.source() {
                Source::Events { topic, group } => self.inner.group_queue(topic, group),
                Source::Commands { destination } => self.inner.command_queue(destination),
            };
            let inner = self.inner.clone();
            let dead_letter: Arc<str> = subscription.dead_letter_destination().into();
            let stream = futures_util::stream::unfold((), move |()| {
                let queue = queue.clone();
                let inner = inner.clone();
                let dead_letter = dead_letter.clone();
                async move {
                    let mut item = queue.pop().await;
                    item.deliveries += 1;
                    Some((Ok(deliver(inner, queue, dead_letter, item)), ()))
                }
            });
            Ok(stream.boxed())
        })
    }
}

fn deliver(inner: Arc<Inner>, queue: Arc<Queue>, dead_letter: Arc<str>, item: Item) -> Delivery {
    let message = match &item.payload {
        Payload::Envelope(envelope) => Ok(envelope.clone()),
        Payload::Raw(raw) => codec::decode(raw, HeaderValues::Raw),
    };
    let info = DeliveryInfo {
        attempt: item.deliveries,
        origin: queue.origin.clone(),
        group: queue.group.clone(),
        headers: item.headers.clone(),
    };
    let acker = MemoryAcker {
        inner,
        queue,
        dead_letter,
        item: Mutex::new(Some(item)),
    };
    Delivery::new(message, info, Arc::new(acker))
}

/// Settles one memory delivery; dropped unsettled, it queues the message again.
struct MemoryAcker {
    inner: Arc<Inner>,
    queue: Arc<Queue>,
    dead_letter: Arc<str>,
    item: Mutex<Option<Item>>,
}

impl MemoryAcker {
    fn take(&self) -> Result<Item, BusError> {
        self.item
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| BusError::Ack("the delivery was already settled".into()))
    }
}

impl Acker for MemoryAcker {
    fn ack(&self) -> BoxFuture<'_, Result<(), BusError>> {
        let item = self.take();
        Box::pin(async move {
            let item = item?;
            if self.inner.chance(self.inner.faults.drop_before_ack) {
                // The ack is "lost": the broker delivers the message again.
                self.queue.push(item, None);
            }
            Ok(())
        })
    }

    fn retry(&self, delay: Duration) -> BoxFuture<'_, Result<(), BusError>> {
        let item = self.take();
        Box::pin(async move {
            push_later(self.queue.clone(), item?, delay);
            Ok(())
        })
    }

    fn dead_letter<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        self.dead_letter_counted(reason, None)
    }

    fn dead_letter_after<'a>(
        &'a self,
        reason: &'a str,
        deliveries: u32,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        self.dead_letter_counted(reason, Some(deliveries))
    }

    fn in_progress(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
}

impl MemoryAcker {
    /// Moves the message to the dead letter, recording `deliveries` (else the bus's count).
    fn dead_letter_counted<'a>(
        &'a self,
        reason: &'a str,
        deliveries: Option<u32>,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        let item = self.take();
        Box::pin(async move {
            let mut item = item?;
            let info = DeliveryInfo {
                attempt: deliveries.unwrap_or(item.deliveries),
                origin: self.queue.origin.clone(),
                group: self.queue.group.clone(),
                headers: Vec::new(),
            };
            item.headers.extend(dead_letter::headers(&info, reason));
            item.deliveries = 0;
            self.inner.command_queue(&self.dead_letter).push(item, None);
            Ok(())
        })
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if let Some(item) = self
            .item
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            self.queue.push(item, None);
        }
    }
}
