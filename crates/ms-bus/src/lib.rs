//! A broker-agnostic event and command bus over CloudEvents 1.0 envelopes: publish events
//! to topics (each consumer group gets a copy, instances of a group share them) and send
//! commands to destinations, consume them with `tower::Service` handlers under one ack model,
//! on NATS JetStream, RabbitMQ, Kafka or in memory.
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::{Arc, Mutex};
//! use ms_bus::consumer::{Consumer, Message, Reject};
//! use ms_bus::memory::MemoryBus;
//! use ms_bus::{Envelope, EventPublisher, Subscription};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct InvoiceCreated { number: String, total_cents: i64 }
//!
//! let bus = MemoryBus::new(); // or ms_bus::nats::NatsBus::builder(client).build()
//! let totals = Arc::new(Mutex::new(Vec::new()));
//! let handler = tower::service_fn({
//!     let totals = totals.clone();
//!     move |message: Message| {
//!         let totals = totals.clone();
//!         async move {
//!             let invoice: InvoiceCreated = message.json_data().map_err(|e| Reject::new(e.to_string()))?;
//!             totals.lock().unwrap().push(invoice.total_cents);
//!             Ok::<_, Reject>(()) // ack; an error retries with backoff, then dead-letters
//!         }
//!     }
//! });
//! let consumer = Consumer::new(Subscription::events("invoicing.invoice", "reporting")?)
//!     .serve(&bus, handler)
//!     .await?;
//!
//! let event = Envelope::builder("invoicing.invoice.created", "/invoicing")
//!     .partition_key("inv-1001")
//!     .json_data(&InvoiceCreated { number: "inv-1001".into(), total_cents: 4200 })?
//!     .build()?;
//! bus.publish("invoicing.invoice", &event).await?; // returns once the broker confirmed
//!
//! consumer.shutdown_when(|| !totals.lock().unwrap().is_empty()).await?; // drains in-flight work
//! assert_eq!(*totals.lock().unwrap(), [4200]);
//! # Ok(()) }
//! # #[cfg(not(feature = "memory"))]
//! # fn main() {}
//! ```
//!
//! # Layout
//!
//! - [`Envelope`] (`envelope/`) and [`codec`]: the CloudEvents 1.0 envelope, binary and
//!   structured content modes over a transport-neutral [`codec::TransportMessage`]. Tested
//!   against the spec's examples, hostile input (proptest) and the CloudEvents Python SDK.
//! - [`EventPublisher`] / [`CommandSender`] (`publish.rs`), [`Subscriber`] and
//!   [`Subscription`] (`subscription.rs`), [`Delivery`] and [`Acker`] (`delivery.rs`): the
//!   contract every adapter implements. **These shapes are stable: changes are additive.**
//! - [`consumer`]: the runtime that drives a `tower::Service<Message>` over a subscription,
//!   with one ack model (ack, retry after a delay, dead letter, in progress), per-key lanes
//!   ([`Envelope::ordering_key`]) that keep retries with backoff in the key's lane, a maximum
//!   number of deliveries, and graceful shutdown.
//! - [`dead_letter`]: the headers a dead letter carries. [`propagation`]: the hook for trace
//!   and correlation context (the default, [`propagation::TraceContextPropagation`], carries
//!   W3C trace context and ms-tracing's correlation id).
//! - Adapters, each behind its cargo feature and in its own folder: `memory` (with fault
//!   injection), `nats` (JetStream), `amqp` (RabbitMQ: topic exchange, a queue per group and
//!   per command destination, publisher confirms, retry queues, reconnection), `kafka`
//!   (rdkafka: key-ordered concurrency within a partition, commits of the settled prefix,
//!   rebalances that settle in-flight work first; tested on tansu).
//! - `conformance` (feature `testkit`): the suite every adapter runs against its real broker.
//! - `health` (feature `health`): ms-health checks for consumers, JetStream, RabbitMQ and Kafka.
//!
//! # Adding an adapter
//!
//! An adapter lives in `src/<name>/` behind a cargo feature of that name and implements
//! [`EventPublisher`], [`CommandSender`] and [`Subscriber`]; each message it delivers is a
//! [`Delivery`] with an [`Acker`] that settles it on the broker. It encodes with
//! [`codec::binary_headers`] (or [`codec::encode`]) and decodes with [`codec::decode`]; a
//! message that does not decode is still delivered (as `Err`), so that the runtime
//! dead-letters it. Its test file runs the suite:
//! `ms_bus::conformance_tests!(fixture)` with a `conformance::Fixture` on
//! the real broker, and `broker_restart_loses_nothing_confirmed` with a private, killable
//! broker from ms-testkit. The NATS adapter (`src/nats/`, `tests/conformance_nats.rs`) is
//! the worked example; the RabbitMQ adapter (`src/amqp/`, `tests/conformance_amqp.rs`) shows
//! how a broker without per-message deadlines or delivery counts fills the gaps (its module
//! docs list the broker layout and the delivery guarantees).
//!
//! # What is missing
//!
//! - Adapters do not wrap a publish in a producer span of its own: a consumer span's parent
//!   is the span that published (an HTTP server span, say), and consumer spans are named after
//!   the event type, not the topic or group ([`propagation::Propagation::scope`] receives the
//!   envelope only).
//! - On RabbitMQ, `in_progress` cannot extend anything: there is no per-message deadline
//!   ([`Subscription::ack_wait`] is ignored); RabbitMQ's `consumer_timeout` (30 minutes by
//!   default) bounds a handler. Broker retries (consumers with ordering off) wait in
//!   per-delay queues, rounded down to one of four steps per doubling (at most 20 % short).
//!   A redelivered RabbitMQ message is handled in its place but its count cannot grow
//!   (classic queues keep none): a message that kills its consumer process every time loops.
//!   Quorum queues (`x-delivery-count`) would count it.
//! - Per-key order holds for one consumer per group and for first deliveries (see the
//!   consumer runtime's [ordering](consumer#ordering)); keeping it across instances or
//!   redeliveries needs per-key sequence numbers checked against stored state, which
//!   ms-cqrs's runner has and the plain consumer runtime does not.
//!
//! # Feature flags
//!
#![doc = document_features::document_features!()]
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The README's examples run as doctests, so its quick start cannot rot (it uses the memory
// adapter).
#[cfg(all(doctest, feature = "memory"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub mod amqp;
pub mod codec;
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod conformance;
pub mod consumer;
pub mod dead_letter;
mod delivery;
mod envelope;
mod error;
#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
pub mod health;
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka;
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub mod memory;
pub mod metrics;
mod name;
// What a handler decided about a message; public as `consumer::Outcome` (its own file so
// that `propagation` can use it without importing the consumer).
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
mod outcome;
pub mod propagation;
mod publish;
mod subscription;

pub use delivery::{Acker, Delivery, DeliveryInfo, LogPosition};
pub use error::{BoxError, BusError};
pub use name::{MAX_NAME_LEN, validate_name};
pub use publish::{CommandBus, CommandSender, EventBus, EventPublisher};
pub use subscription::{
    DEAD_LETTER_SUFFIX, DEFAULT_ACK_WAIT, DEFAULT_PREFETCH, Deliveries, Source, Subscriber,
    Subscription,
};

pub use envelope::{
    CORRELATION_ID_EXTENSION, DataError, Envelope, EnvelopeBuilder, EnvelopeError,
    JSON_CONTENT_TYPE, MAX_DEDUP_KEY_LEN, PARTITION_KEY_EXTENSION, SEQUENCE_EXTENSION,
    SPEC_VERSION, TENANT_ID_EXTENSION, TRACEPARENT_EXTENSION, TRACESTATE_EXTENSION, dedup_key,
    key_hash,
};
