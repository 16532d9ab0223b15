//! Names and declarations: what a subscription and a retry need on the broker.
//!
//! - Events go to one durable **topic exchange** (default [`DEFAULT_EVENTS_EXCHANGE`]) with the
//!   topic as the routing key. Each consumer group has one durable queue, `{topic}:{group}`,
//!   bound with the topic (bus names have no wildcards, so the binding matches the topic
//!   exactly); the instances of a group consume from it and share the work.
//! - Commands go through the default exchange to a durable queue named after the destination
//!   (a direct queue: tools and other SDKs can send to it by name). `:` cannot appear in a bus
//!   name, so a group queue never collides with a command destination.
//! - A retry after a delay goes to `{queue}:retry:{ms}`, a queue whose `x-message-ttl` is that
//!   delay and whose dead-letter exchange (the default exchange, routing key `{queue}`) sends
//!   expired messages back to the work queue. See [`retry_bucket`] for why delays are rounded.
//! - Dead letters go to the subscription's dead-letter destination, a command queue.
//! - With a namespace (see [`Names`]), every exchange and queue name above starts with
//!   `{namespace}/`: two systems on one virtual host, each with its own namespace, share no
//!   exchange, queue, retry queue or dead-letter queue.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::{BusError, Source, Subscription};

/// The topic exchange events are published to, unless the builder names another.
pub const DEFAULT_EVENTS_EXCHANGE: &str = "ms.events";

/// What separates a namespace from the name it qualifies. Bus names cannot contain `/`, so a
/// namespaced name never equals an un-namespaced one or one of another namespace.
pub(crate) const NAMESPACE_SEPARATOR: char = '/';

/// AMQP's limit on queue and exchange names.
const MAX_QUEUE_NAME: usize = 255;
/// Room a work queue's name leaves for its retry queues' `:retry:{ms}` suffix.
const RETRY_SUFFIX_ROOM: usize = ":retry:4294967295".len();

/// How long an idle retry queue outlives its delay before the broker deletes it. The adapter
/// redeclares the queue before each use, which resets the timer, so a queue is never deleted
/// while a message waits in it (the message leaves after `delay`, the queue only after
/// `delay + RETRY_QUEUE_IDLE_EXPIRY` without use).
const RETRY_QUEUE_IDLE_EXPIRY: Duration = Duration::from_secs(3600);

/// The broker's names for one bus: its events exchange and its queues, each behind the
/// namespace if there is one.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// `{namespace}/`, or empty without a namespace.
    qualifier: String,
    /// The events exchange, qualified.
    exchange: String,
}

impl Names {
    /// Names under `namespace` (a valid bus name, or none) for events on `exchange`.
    pub(crate) fn new(namespace: Option<&str>, exchange: &str) -> Result<Self, BusError> {
        let qualifier =
            namespace.map_or_else(String::new, |ns| format!("{ns}{NAMESPACE_SEPARATOR}"));
        let exchange = format!("{qualifier}{exchange}");
        if exchange.len() > MAX_QUEUE_NAME {
            return Err(BusError::InvalidName {
                name: exchange,
                reason: "with the namespace, the events exchange's name is too long for AMQP \
                         (255 bytes)",
            });
        }
        Ok(Self {
            qualifier,
            exchange,
        })
    }

    /// The events exchange.
    pub(crate) fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The queue of a command (or dead-letter) destination, a valid bus name.
    pub(crate) fn destination(&self, destination: &str) -> Result<String, BusError> {
        self.qualified(destination.to_owned(), MAX_QUEUE_NAME)
    }

    /// The queue a subscription consumes from; its name leaves room for its retry queues'.
    pub(crate) fn work_queue(&self, subscription: &Subscription) -> Result<String, BusError> {
        let name = match subscription.source() {
            Source::Events { topic, group } => format!("{topic}:{group}"),
            Source::Commands { destination } => destination.to_string(),
            #[allow(unreachable_patterns)] // `Source` is non-exhaustive for other crates only
            _ => return Err(BusError::broker("unsupported subscription source")),
        };
        self.qualified(name, MAX_QUEUE_NAME - RETRY_SUFFIX_ROOM)
    }

    fn qualified(&self, name: String, limit: usize) -> Result<String, BusError> {
        if self.qualifier.len() + name.len() > limit {
            return Err(BusError::InvalidName {
                name,
                reason: "with the namespace, and room for the retry queues' `:retry:{ms}`, it is \
                         too long for an AMQP queue name (255 bytes)",
            });
        }
        Ok(format!("{}{name}", self.qualifier))
    }
}

/// Declares the subscription's work queue (and, for events, the exchange and the binding).
pub(crate) async fn declare_subscription(
    channel: &Channel,
    exchange: &str,
    subscription: &Subscription,
    queue: &str,
) -> Result<(), BusError> {
    declare_queue(channel, queue, FieldTable::default()).await?;
    if let Source::Events { topic, .. } = subscription.source() {
        declare_events_exchange(channel, exchange).await?;
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                topic.as_ref().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BusError::broker)?;
    }
    Ok(())
}

/// Declares the durable topic exchange for events.
pub(crate) async fn declare_events_exchange(
    channel: &Channel,
    exchange: &str,
) -> Result<(), BusError> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BusError::broker)
}

/// Declares a durable queue (a command destination, a dead-letter destination, a group's
/// queue); declaring an existing one with the same arguments is a no-op.
pub(crate) async fn declare_queue(
    channel: &Channel,
    queue: &str,
    arguments: FieldTable,
) -> Result<(), BusError> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map(drop)
        .map_err(BusError::broker)
}

/// Declares the retry queue of `queue` for `delay_ms` and returns its name.
pub(crate) async fn declare_retry_queue(
    channel: &Channel,
    queue: &str,
    delay_ms: u32,
) -> Result<String, BusError> {
    let name = retry_queue_name(queue, delay_ms);
    let expiry = u64::from(delay_ms)
        + u64::try_from(RETRY_QUEUE_IDLE_EXPIRY.as_millis()).unwrap_or(u64::MAX);
    let mut arguments = FieldTable::default();
    arguments.insert("x-message-ttl".into(), AMQPValue::LongUInt(delay_ms));
    arguments.insert(
        "x-expires".into(),
        AMQPValue::LongUInt(u32::try_from(expiry).unwrap_or(u32::MAX)),
    );
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queue.into()),
    );
    declare_queue(channel, &name, arguments).await?;
    Ok(name)
}

/// The name of `queue`'s retry queue for `delay_ms`.
pub(crate) fn retry_queue_name(queue: &str, delay_ms: u32) -> String {
    format!("{queue}:retry:{delay_ms}")
}

/// The retry queue delay for a requested delay, in milliseconds: rounded down to one of four
/// steps per doubling (`4·2ᵏ, 5·2ᵏ, 6·2ᵏ, 7·2ᵏ`), so at most 20 % short, and exact below 8 ms.
///
/// Why queues per delay and not a per-message `expiration` on one delay queue: RabbitMQ
/// expires messages only at the head of a queue, so a message waiting 5 minutes would hold
/// back one behind it that should wait 1 second. In a queue where every message has the same
/// TTL, the head always expires first. Rounding keeps the number of such queues small (about
/// 4 per doubling of the delay, created when first used), while the retry policy's jitter
/// still spreads messages between them. RabbitMQ 3.10.8 here has no delayed-message plugin.
pub(crate) fn retry_bucket(delay: Duration) -> u32 {
    let ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
    if ms < 8 {
        return ms;
    }
    let shift = ms.ilog2() - 2;
    (ms >> shift) << shift
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_buckets_are_at_most_a_fifth_short_and_few() {
        for ms in [
            0_u64, 1, 7, 8, 9, 15, 100, 999, 1000, 1234, 30_000, 299_999, 86_400_000,
        ] {
            let bucket = u64::from(retry_bucket(Duration::from_millis(ms)));
            assert!(bucket <= ms, "{ms} -> {bucket}");
            assert!(bucket * 5 + 4 >= ms * 4, "{ms} -> {bucket}");
        }
        let distinct: std::collections::BTreeSet<u32> = (1..=300_000)
            .map(|ms| retry_bucket(Duration::from_millis(ms)))
            .collect();
        assert!(distinct.len() < 80, "{}", distinct.len());
        assert_eq!(retry_bucket(Duration::from_secs(u64::MAX)), 0xE000_0000);
    }

    #[test]
    fn group_queues_cannot_collide_with_command_destinations() {
        let names = Names::new(None, DEFAULT_EVENTS_EXCHANGE).unwrap();
        let group = Subscription::events("a.b", "c").unwrap();
        let other = Subscription::events("a", "b.c").unwrap();
        let command = Subscription::commands("a.b.c").unwrap();
        let queues = [
            names.work_queue(&group).unwrap(),
            names.work_queue(&other).unwrap(),
            names.work_queue(&command).unwrap(),
        ];
        assert_eq!(queues, ["a.b:c", "a:b.c", "a.b.c"]);
    }

    #[test]
    fn without_a_namespace_the_names_are_the_bus_names() {
        let names = Names::new(None, DEFAULT_EVENTS_EXCHANGE).unwrap();
        assert_eq!(names.exchange(), "ms.events");
        assert_eq!(names.destination("work").unwrap(), "work");
        let retry = retry_queue_name(
            &names
                .work_queue(&Subscription::events("t", "g").unwrap())
                .unwrap(),
            400,
        );
        assert_eq!(retry, "t:g:retry:400");
    }

    #[test]
    fn a_namespace_qualifies_every_name_and_namespaces_cannot_collide() {
        let names = Names::new(Some("acme"), DEFAULT_EVENTS_EXCHANGE).unwrap();
        let group = Subscription::events("invoicing.invoice", "ledger").unwrap();
        let queue = names.work_queue(&group).unwrap();
        assert_eq!(names.exchange(), "acme/ms.events");
        assert_eq!(queue, "acme/invoicing.invoice:ledger");
        assert_eq!(
            retry_queue_name(&queue, 400),
            "acme/invoicing.invoice:ledger:retry:400"
        );
        assert_eq!(
            names.destination(group.dead_letter_destination()).unwrap(),
            "acme/invoicing.invoice.ledger.dead-letter"
        );
        // `acme` + `b.c` and `acme.b` + `c` stay apart, and neither is a plain bus name.
        let nested = Names::new(Some("acme.b"), DEFAULT_EVENTS_EXCHANGE).unwrap();
        assert_ne!(
            names.destination("b.c").unwrap(),
            nested.destination("c").unwrap()
        );
        assert!(crate::validate_name(&names.destination("b.c").unwrap()).is_err());
    }

    #[test]
    fn an_overlong_queue_name_is_a_typed_error() {
        let long = "t".repeat(200);
        let subscription = Subscription::events(&long, &long).unwrap();
        let names = Names::new(None, DEFAULT_EVENTS_EXCHANGE).unwrap();
        assert!(matches!(
            names.work_queue(&subscription),
            Err(BusError::InvalidName { .. })
        ));
        // A name that fits alone may not fit behind a namespace.
        let fits = Subscription::commands(&"t".repeat(200)).unwrap();
        assert!(names.work_queue(&fits).is_ok());
        let namespaced = Names::new(Some(&"n".repeat(40)), DEFAULT_EVENTS_EXCHANGE).unwrap();
        assert!(matches!(
            namespaced.work_queue(&fits),
            Err(BusError::InvalidName { .. })
        ));
        assert!(namespaced.destination(&"t".repeat(200)).is_ok());
        let long_exchange = "e".repeat(200);
        assert!(Names::new(None, &long_exchange).is_ok());
        assert!(matches!(
            Names::new(Some(&"n".repeat(60)), &long_exchange),
            Err(BusError::InvalidName { .. })
        ));
    }
}
