//! The Kafka adapter (feature `kafka`), on rdkafka (librdkafka built from its bundled
//! source).
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use ms_bus::consumer::{Consumer, Message};
//! use ms_bus::kafka::KafkaBus;
//! use ms_bus::{Envelope, EventPublisher, Subscription};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let Some(kafka) = ms_testkit::kafka().await else { return Ok(()) };
//! # let (servers, prefix) = (kafka.bootstrap_servers(), kafka.prefix());
//! let bus = KafkaBus::builder(servers) // "127.0.0.1:9092"
//! #   .prefix(prefix)?
//!     .build()?;
//!
//! let seen = Arc::new(AtomicUsize::new(0));
//! let handler = tower::service_fn({
//!     let seen = seen.clone();
//!     move |message: Message| {
//!         let seen = seen.clone();
//!         async move {
//!             assert_eq!(message.ty(), "invoicing.invoice.created");
//!             seen.fetch_add(1, Ordering::SeqCst);
//!             Ok::<_, std::convert::Infallible>(())
//!         }
//!     }
//! });
//! // Topic `ms.ev.invoicing.invoice`, consumer group `ms.ev.invoicing.invoice:reporting`.
//! let consumer = Consumer::new(Subscription::events("invoicing.invoice", "reporting")?)
//!     .serve(&bus, handler)
//!     .await?;
//!
//! let event = Envelope::builder("invoicing.invoice.created", "/invoicing")
//!     .partition_key("inv-1001") // the Kafka key: one key's events stay in order
//!     .build()?;
//! bus.publish("invoicing.invoice", &event).await?; // returns once the brokers acknowledged it
//!
//! consumer.shutdown_when(|| seen.load(Ordering::SeqCst) == 1).await?;
//! # Ok(()) }
//! ```
//!
//! # Mapping
//!
//! | bus | Kafka |
//! |---|---|
//! | event topic `t` | topic `{prefix}.ev.t` |
//! | consumer group `g` of `t` | consumer group `{prefix}.ev.t:g` |
//! | command destination `d` | topic `{prefix}.cmd.d`, read by the one group `{prefix}.cmd.d:handlers` |
//! | dead letters of a subscription | the command topic of its dead-letter destination (`{prefix}.cmd.t.g.dead-letter`) |
//! | the envelope | a record per the CloudEvents Kafka binding: binary mode (`ce_` headers, `content-type`, the data as the value) or structured mode |
//! | [`Envelope::ordering_key`] (`partitionkey`, else `subject`, else `id`) | the record key: one key's records share a partition, in order |
//!
//! Topics are created on first use ([`Topics::Create`], [`DEFAULT_PARTITIONS`] partitions,
//! the broker's default replication factor) or left to the operator ([`Topics::Existing`]).
//! A new group of an event topic starts at the end of the log (it receives what is published
//! after it first subscribed, as on NATS and RabbitMQ); a command topic's group starts at its
//! beginning (commands sent before any consumer listened are kept). The binary mode also
//! writes the W3C `traceparent` / `tracestate` headers that OpenTelemetry's Kafka
//! instrumentations read. The record key is not read back into the envelope: an envelope
//! round-trips unchanged.
//!
//! # Delivery guarantees
//!
//! - **Publishing** returns once the brokers acknowledged the record (`acks=all`); the
//!   producer is idempotent (`enable.idempotence=true`), so librdkafka's retries after a lost
//!   connection neither duplicate nor reorder a partition's records. Batches are pipelined.
//! - **Key-ordered concurrency**: a subscription hands the consumer runtime one record per key
//!   at a time; a key's next record starts when the one before is settled (acked or
//!   dead-lettered). Records of different keys of one partition run in parallel, up to the
//!   consumer's [`concurrency`](crate::consumer::Consumer::concurrency). This is the KEY
//!   ordering of Confluent's parallel-consumer. Records without a key have no order.
//! - **Commits**: every [commit interval](KafkaBusBuilder::commit_interval) each partition's
//!   offset is committed up to its first unsettled record, never past it: a crash redelivers
//!   settled records after that point (at least once), never skips one. A record a handler
//!   holds (a long handler, one asking for a retry) holds the partition's commit, not the
//!   other keys.
//! - **The ack model**: `retry` keeps the record in the consumer for its delay, with its key's
//!   later records behind it (other keys flow). The delivery count is the consumer's: kept
//!   in memory, and carried across members in the commit's metadata (the highest offset
//!   delivered, and how often the record at the committed offset was), so that a record that
//!   crashes its consumer every time is still dead-lettered after the maximum. A dead letter
//!   is the record as received (key, value, headers) with ms-bus's
//!   [dead-letter headers](crate::dead_letter), produced to the dead-letter topic before the
//!   original counts as settled. `in_progress` is a no-op: Kafka has no per-record deadline
//!   ([`Subscription::ack_wait`](crate::Subscription::ack_wait) is ignored), and a record in a
//!   handler is never redelivered while its partition stays with the member.
//! - **Rebalances** (`cooperative-sticky` assignment): a revoked partition hands out nothing
//!   more, waits for its records in handlers to settle (at most the
//!   [revoke timeout](KafkaBusBuilder::revoke_timeout)), commits, and only then is released;
//!   its other records (waiting, retrying) are dropped and read again by the next owner.
//! - **Back-pressure**: while [`prefetch`](crate::Subscription::prefetch) records are
//!   unsettled, the subscription takes no more; librdkafka keeps what it prefetched. After
//!   half a second of that, the partitions are paused (and resumed when half are settled):
//!   librdkafka drops a paused partition's prefetched records and fetches them again on
//!   resume, too costly to do at every stall.
//! - **Shutdown**: a consumer that shuts down settles what its handlers finish, commits, and
//!   leaves the group, so its partitions move at once; an aborted one commits what was
//!   settled before.
//!
//! Settings the adapter does not name (security, SASL, compression, timeouts) pass through to
//! librdkafka: [`KafkaBusBuilder::set`], [`producer_set`](KafkaBusBuilder::producer_set),
//! [`consumer_set`](KafkaBusBuilder::consumer_set).
//!
//! # Tested on tansu
//!
//! The tests run on [tansu](https://github.com/tansu-io/tansu) 0.6, an Apache-2.0
//! Kafka-protocol broker (ms-testkit provides one). Where it departs from Apache Kafka, as
//! measured by this crate's tests (`tests/kafka.rs`):
//!
//! - **Joining**: with librdkafka's default `session.timeout.ms` (45 s) a new group's first
//!   join takes about 23 s on tansu; at 6 s it takes about 1 s. The tests set
//!   `session.timeout.ms=6000` (and `heartbeat.interval.ms=500`, so that members notice a
//!   rebalance sooner) through [`consumer_set`](KafkaBusBuilder::consumer_set).
//! - **Commit metadata is dropped**: tansu keeps a committed offset but returns its metadata
//!   empty (`commit_metadata_is_kept_except_on_tansu`). On tansu a record redelivered to
//!   another member after a crash therefore starts again at attempt 1, and a record that
//!   crashes every member is not dead-lettered by the count (the conformance suite's crash
//!   case checks the redelivery only, through `Capabilities::counts_redeliveries`).
//! - **High watermarks count batches**: tansu answers `ListOffsets` (latest) with the base
//!   offset of the partition's last record batch plus one, not the offset after the last
//!   record (`the_high_watermark_is_the_end_of_the_log_except_on_tansu`). A new group of a
//!   topic that already holds records then starts early and gets some old records (never
//!   fewer), and the health check's lag counts batches.
//!
//! The adapter is not shaped around any of this: it relies only on Apache Kafka's documented
//! behaviour.

mod builder;
mod consume;
mod headers;
#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
mod health;
mod naming;
mod publish;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;

pub use builder::{
    DEFAULT_COMMIT_INTERVAL, DEFAULT_JOIN_TIMEOUT, DEFAULT_PARTITIONS, DEFAULT_PREFIX,
    DEFAULT_REPLICATION_FACTOR, DEFAULT_REQUEST_TIMEOUT, DEFAULT_REVOKE_TIMEOUT, KafkaBusBuilder,
    Topics,
};
pub use headers::{CONTENT_TYPE_HEADER, KAFKA_HEADER_PREFIX, W3C_HEADERS};
#[cfg(feature = "health")]
pub use health::{DEFAULT_HEALTH_DEADLINE, KafkaCheck};

use crate::{BusError, CommandSender, Envelope, EventPublisher};
use naming::Kind;

/// An event and command bus on Kafka. Cloning shares the producer; each subscription has a
/// consumer (and a poller thread) of its own.
#[derive(Clone)]
pub struct KafkaBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("prefix", &self.inner.settings.prefix)
            .finish_non_exhaustive()
    }
}

struct Inner {
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    settings: KafkaBusBuilder,
    /// Topics created (or found) by this bus, so that publishing does not ask each time.
    topics_made: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// Configures a bus for the brokers in `bootstrap_servers` (`host:port`, comma-separated).
    pub fn builder(bootstrap_servers: &str) -> KafkaBusBuilder {
        KafkaBusBuilder::new(bootstrap_servers)
    }

    /// The Kafka topic a bus topic's events are published to (for tools and raw producers).
    pub fn event_topic(&self, topic: &str) -> String {
        naming::topic(&self.inner.settings.prefix, Kind::Events, topic)
    }

    /// The Kafka topic a destination's commands are sent to.
    pub fn command_topic(&self, destination: &str) -> String {
        naming::topic(&self.inner.settings.prefix, Kind::Commands, destination)
    }

    /// The Kafka consumer group of `group` on `topic`.
    pub fn event_group(&self, topic: &str, group: &str) -> String {
        naming::group(&self.event_topic(topic), group)
    }

    /// The Kafka consumer group of a command destination.
    pub fn command_group(&self, destination: &str) -> String {
        naming::group(&self.command_topic(destination), naming::COMMAND_GROUP)
    }

    /// Creates a topic's Kafka topic if the bus creates topics: raw producers writing to
    /// [`event_topic`](Self::event_topic) need it to exist.
    pub async fn ensure_topic(&self, topic: &str) -> Result<(), BusError> {
        self.inner.prepare(Kind::Events, topic).await.map(drop)
    }

    /// The producer, for raw records next to the bus's (it is idempotent, `acks=all`).
    pub fn producer(&self) -> &FutureProducer {
        &self.inner.producer
    }

    /// A health check (feature `health`): the brokers answer a metadata request in time, and
    /// the lag of the groups added with [`KafkaCheck::group`] is in the report.
    #[cfg(feature = "health")]
    #[cfg_attr(docsrs, doc(cfg(feature = "health")))]
    pub fn check(&self) -> KafkaCheck {
        KafkaCheck::new(self.inner.clone())
    }
}

impl EventPublisher for KafkaBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        event: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.inner
                .send_all(Kind::Events, topic, std::slice::from_ref(event))
                .await
                .map(drop)
        })
    }

    fn publish_batch<'a>(
        &'a self,
        topic: &'a str,
        events: &'a [Envelope],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.inner
                .send_all(Kind::Events, topic, events)
                .await
                .map(drop)
        })
    }
}

impl CommandSender for KafkaBus {
    fn send<'a>(
        &'a self,
        destination: &'a str,
        command: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.inner
                .send_all(Kind::Commands, destination, std::slice::from_ref(command))
                .await
                .map(drop)
        })
    }

    fn send_batch<'a>(
        &'a self,
        destination: &'a str,
        commands: &'a [Envelope],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.inner
                .send_all(Kind::Commands, destination, commands)
                .await
                .map(drop)
        })
    }
}
