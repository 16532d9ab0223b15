//! The NATS JetStream adapter (feature `nats`), on async-nats.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_bus::consumer::{Consumer, Message};
//! use ms_bus::nats::NatsBus;
//! use ms_bus::{Envelope, EventPublisher, Subscription};
//!
//! // Started before the server is up (a relay deployed with its broker, say), a client
//! // without `retry_on_initial_connect` fails at once; with it, it connects in the background
//! // and publishing waits or fails (to be retried) until then.
//! let client = async_nats::ConnectOptions::new()
//!     .retry_on_initial_connect()
//!     .connect("nats://127.0.0.1:4222")
//!     .await?;
//! let bus = NatsBus::builder(client).prefix("shop")?.build();
//!
//! let handler = tower::service_fn(|m: Message| async move {
//!     println!("{} {}", m.ty(), m.id());
//!     Ok::<_, std::convert::Infallible>(())
//! });
//! let consumer = Consumer::new(Subscription::events("invoicing.invoice", "reporting")?)
//!     .serve(&bus, handler)
//!     .await?;
//!
//! let event = Envelope::builder("invoicing.invoice.created", "/invoicing").build()?;
//! bus.publish("invoicing.invoice", &event).await?; // returns after the JetStream ack
//! consumer.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Mapping
//!
//! - Streams and durable pull consumers are created as needed (see the naming below), file
//!   storage, one stream per topic (limits retention: every group reads it) and one
//!   work-queue stream per command destination (a message is gone once handled).
//! - Messages are CloudEvents in binary content mode: `ce-` headers (percent-encoded as in
//!   the HTTP binding), `content-type` for `datacontenttype`, the data as the payload.
//!   Structured-mode messages from other producers are read too.
//! - `Nats-Msg-Id` is the envelope's [`dedup_key`](crate::Envelope::dedup_key): its source and
//!   id together, as CloudEvents identifies an event, so a republished envelope is dropped by
//!   the server within the stream's duplicate window ([`NatsBusBuilder::duplicate_window`],
//!   default two minutes) while another producer's event with the same id is kept.
//! - A header is never written with a line break (async-nats would panic): every envelope is
//!   free of control characters, and should a value still not fit, the publish fails with
//!   [`BusError::Unencodable`].
//! - Retry is a nak with delay; in progress is `+WPI`; dead letter publishes the original
//!   message with the [`dead_letter`](crate::dead_letter) headers to the dead-letter
//!   destination's stream and acks it only once that publish is confirmed.
//! - The consumers' `max_deliver` is unlimited: the consumer runtime counts deliveries and
//!   dead-letters, so that no message is silently dropped by the server.
//! - async-nats reconnects by itself; a pull stream that ends is opened again.
//! - When a subscription is dropped (a consumer shutting down), the messages the pull stream
//!   had received but not handed out are nak'ed without delay, so another instance of the
//!   group gets them at once rather than after `ack_wait`. Messages still on the wire at that
//!   instant are redelivered after `ack_wait`.
//!
//! # Ordering
//!
//! A stream stores what one connection publishes in the order the server receives it. A
//! batch ([`EventPublisher::publish_batch`]) keeps up to the
//! [publish window](NatsBusBuilder::publish_window) of acks outstanding, but at most one per
//! [`Envelope::ordering_key`]: the next event of a key goes out only once the previous one is
//! confirmed. async-nats resends, on a new connection, the publishes it still had queued
//! when the old one broke, while those in the old connection's buffers are lost; with two
//! unconfirmed events of one key the second could be stored without the first, and
//! republishing the batch would store the first behind it. With one, whatever a failure cuts
//! off, each key's stored events are a prefix of its events in the batch, and republishing
//! stores every event for the first time after its key's earlier ones (tested in ms-outbox's
//! `tests/kill_order.rs`: a relay draining 12,000 rows over 8 keys, the server killed with
//! SIGKILL mid-batch ten times, the stream read back key by key). The price is pipelining
//! within one key: a batch of a single key is published one round trip per event (6-7 k/s
//! on a quiet 2-core machine, 3-4 k/s under load, against 10 k/s and more pipelined; see
//! BENCHMARKS.md), a batch of many keys fills the window.
//!
//! Consumers: see [the consumer runtime's ordering](crate::consumer#ordering).
//!
//! # Clusters
//!
//! On a JetStream cluster, give the client every server's URL (async-nats takes a list,
//! connects to one and reconnects to another when it dies) and store each stream on three
//! servers:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! # use std::time::Duration;
//! # use ms_bus::nats::NatsBus;
//! let client = async_nats::ConnectOptions::new()
//!     .retry_on_initial_connect()
//!     .connect(vec!["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"])
//!     .await?;
//! let bus = NatsBus::builder(client)
//!     .replicas(3) // streams (and their durable consumers) on three servers
//!     .publish_timeout(Duration::from_secs(30)) // longer than a leader election
//!     .build();
//! # Ok(()) }
//! ```
//!
//! - [`replicas`](NatsBusBuilder::replicas) applies when ms-bus creates a stream; an existing
//!   stream keeps its replica count. Consumers are created with their stream's.
//! - When a stream's leader dies, its unacknowledged publishes get no ack and, until the
//!   other replicas elect a new leader (about 5 s after a SIGKILL on the test machine), the
//!   stream answers "no responders". A publish is then sent again, unchanged, every
//!   [`ack_timeout`](NatsBusBuilder::ack_timeout) or after a short pause, until the new
//!   leader confirms it or the [`publish_timeout`](NatsBusBuilder::publish_timeout) is over;
//!   its `Nats-Msg-Id` makes the stream keep one copy should the old leader have stored it.
//!   Batches retry in place (one unconfirmed event per ordering key, so order holds), and
//!   dead letters go through the same retry. The default publish timeout (5 s) is sized for
//!   one server: on a cluster, 30 s rides out an election with margin.
//! - Consumers carry on once the new leader is there: the pull stream is opened again, and
//!   messages delivered but not acked before the failover come back (at-least-once).
//! - Measured on a 3-node cluster under a leader SIGKILL every 5 s (`tests/nats_cluster.rs`,
//!   BENCHMARKS.md): publishing stalls p50 5.2-6.2 s, max 7.4-19 s per kill; nothing
//!   confirmed is lost or stored twice, each key stays in order.
//!
//! Naming: with prefix `ms`, topic `invoicing.invoice` is subject `ms.ev.invoicing.invoice`
//! in stream `ms_EV_invoicing_invoice` with one durable consumer per group; destination
//! `payments.capture` is subject `ms.cmd.payments.capture` in stream
//! `ms_CMD_payments_capture`.

mod confirm;
mod consume;
mod encode;
mod naming;
mod pipeline;

/// The NATS client this adapter is built on ([`NatsBus::builder`] takes its
/// [`Client`](async_nats::Client)), re-exported so that the versions match.
pub use async_nats;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage, stream};
use async_nats::{HeaderMap, Subject};
use futures_util::future::BoxFuture;

use crate::codec::{Mode, TransportMessage};
use crate::propagation::{Propagation, Publication, default_propagation, outgoing_for};
use crate::{BusError, CommandSender, Envelope, EventPublisher, validate_name};
use naming::Kind;

/// The prefix of subjects and stream names unless [`NatsBusBuilder::prefix`] says otherwise.
pub const DEFAULT_PREFIX: &str = "ms";
/// How many publishes a batch keeps waiting for their acks at once, unless
/// [`NatsBusBuilder::publish_window`] says otherwise.
pub const DEFAULT_PUBLISH_WINDOW: usize = 512;
/// The header that carries the content type in binary mode.
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// JetStream's dedup header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// How long the streams ms-bus creates remember a `Nats-Msg-Id` (JetStream's own default),
/// unless [`NatsBusBuilder::duplicate_window`] says otherwise.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How many servers store each stream ms-bus creates, unless [`NatsBusBuilder::replicas`]
/// says otherwise: one, as a single server needs.
pub const DEFAULT_REPLICAS: usize = 1;
/// How long a publish may take in all, retries included, unless
/// [`NatsBusBuilder::publish_timeout`] says otherwise: the five seconds a publish could wait
/// for its ack before retries existed, so that a failing publish fails no later than it did.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one attempt waits for its ack before the message is published again, unless
/// [`NatsBusBuilder::ack_timeout`] says otherwise.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// An event and command bus on NATS JetStream. Cloning shares the connection.
#[derive(Debug, Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    prefix: String,
    mode: Mode,
    window: usize,
    duplicate_window: Duration,
    replicas: usize,
    publish_timeout: Duration,
    ack_timeout: Duration,
    propagation: Arc<dyn Propagation>,
    /// Streams known to exist, so that publishing does not ask the server each time.
    streams: Mutex<HashSet<String>>,
}

/// Builds a [`NatsBus`].
#[derive(Debug, Clone)]
#[must_use]
pub struct NatsBusBuilder {
    client: async_nats::Client,
    prefix: String,
    mode: Mode,
    window: usize,
    duplicate_window: Duration,
    replicas: usize,
    publish_timeout: Duration,
    ack_timeout: Duration,
    propagation: Arc<dyn Propagation>,
}

impl NatsBusBuilder {
    /// Sets the prefix of every subject and stream name (default [`DEFAULT_PREFIX`]); a
    /// [`validate_name`]-valid name.
    pub fn prefix(mut self, prefix: &str) -> Result<Self, BusError> {
        validate_name(prefix)?;
        prefix.clone_into(&mut self.prefix);
        Ok(self)
    }

    /// Sets the content mode messages are published in (default binary).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets how many batch publishes wait for acks at once (default
    /// [`DEFAULT_PUBLISH_WINDOW`]). Of one ordering key, one at a time: see
    /// [ordering](self#ordering).
    pub fn publish_window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// Sets how long the streams this bus uses remember the `Nats-Msg-Id` of what they stored
    /// (default [`DEFAULT_DUPLICATE_WINDOW`], two minutes): a copy republished within the
    /// window is dropped by the server, a later one is stored again. Applied when a stream is
    /// created, and to an existing stream whose window differs when this bus first uses it
    /// (the rest of its configuration is left as it is).
    ///
    /// Make it longer than the longest broker or network outage a deployment must survive
    /// without duplicates in the stream, plus the publisher's retry delay: a relay that
    /// published a batch whose acks the outage swallowed republishes it when the broker is
    /// back. The server keeps every id of the window in memory (about a hundred bytes per
    /// message), so a window of an hour on a stream taking 1,000 messages a second holds
    /// 3.6 million ids. What is stored twice anyway reaches consumers twice, in order after
    /// the first copy; an idempotent handler (ms-outbox's `Inbox`, keyed by the envelope id,
    /// kept longer than any republication) makes the second copy a no-op.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Sets how many servers of a cluster store each stream this bus creates (default
    /// [`DEFAULT_REPLICAS`], one): 3 on a three-node JetStream cluster, so that a stream keeps
    /// taking publishes and serving consumers while one node is down. The durable consumers
    /// the bus creates are replicated with their stream. Applied when a stream is created
    /// (an existing stream keeps its replicas); at most the cluster's size, else creating the
    /// stream fails. Values below one count as one.
    ///
    /// On a cluster, also set a [`publish_timeout`](Self::publish_timeout) longer than a
    /// leader election: a publish in flight when a stream's leader dies is published again
    /// until the new leader confirms it.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// Sets how long a publish (or each event of a batch, from when it is first sent) may
    /// take in all, retries included, before it fails with [`BusError::NotConfirmed`]
    /// (default [`DEFAULT_PUBLISH_TIMEOUT`], five seconds). A publish whose ack does not come
    /// within the [`ack_timeout`](Self::ack_timeout), or that the server answers with "no
    /// responders" (a stream electing a new leader) or a broken connection, is published
    /// again, unchanged: its `Nats-Msg-Id` makes the server drop the copy should the first
    /// have been stored, within the [`duplicate_window`](Self::duplicate_window).
    ///
    /// On a three-node cluster, a stream leader killed with SIGKILL is replaced after about
    /// 5 s (measured here, see BENCHMARKS.md); 30 s rides out such a failover with margin.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets how long one attempt of a publish waits for its ack before the message is
    /// published again (default [`DEFAULT_ACK_TIMEOUT`], two seconds; async-nats gives up
    /// on an ack after five seconds whatever this says). Shorter finds a new leader sooner
    /// after a failover; too short for the load republishes messages whose acks were merely
    /// slow (dropped by the server as duplicates, at the cost of the extra traffic).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Sets the context propagation applied on publish (ms-tracing plugs in here).
    pub fn propagation(mut self, propagation: Arc<dyn Propagation>) -> Self {
        self.propagation = propagation;
        self
    }

    /// The bus.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: async-nats's JetStream context spawns a task.
    pub fn build(self) -> NatsBus {
        NatsBus {
            inner: Arc::new(Inner {
                jetstream: jetstream::new(self.client.clone()),
                client: self.client,
                prefix: self.prefix,
                mode: self.mode,
                window: self.window,
                duplicate_window: self.duplicate_window,
                replicas: self.replicas,
                publish_timeout: self.publish_timeout,
                ack_timeout: self.ack_timeout,
                propagation: self.propagation,
                streams: Mutex::new(HashSet::new()),
            }),
        }
    }
}

impl NatsBus {
    /// Configures a bus over a connected client.
    pub fn builder(client: async_nats::Client) -> NatsBusBuilder {
        NatsBusBuilder {
            client,
            prefix: DEFAULT_PREFIX.to_owned(),
            mode: Mode::Binary,
            window: DEFAULT_PUBLISH_WINDOW,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            replicas: DEFAULT_REPLICAS,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            propagation: default_propagation(),
        }
    }

    /// A health check that JetStream answers (feature `health`).
    #[cfg(feature = "health")]
    #[cfg_attr(docsrs, doc(cfg(feature = "health")))]
    pub fn check(&self) -> crate::health::JetStreamCheck {
        crate::health::JetStreamCheck {
            client: self.inner.client.clone(),
        }
    }

    /// The client.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The subject a topic's events are published on (for tools and raw producers).
    pub fn event_subject(&self, topic: &str) -> String {
        naming::subject(&self.inner.prefix, Kind::Events, topic)
    }

    /// The subject a destination's commands are sent on.
    pub fn command_subject(&self, destination: &str) -> String {
        naming::subject(&self.inner.prefix, Kind::Commands, destination)
    }

    /// The JetStream stream a topic's events are stored in (to read it back, inspect or
    /// purge it with a plain client or the `nats` CLI).
    pub fn event_stream(&self, topic: &str) -> String {
        naming::stream(&self.inner.prefix, Kind::Events, topic)
    }

    /// The JetStream stream a destination's commands are stored in.
    pub fn command_stream(&self, destination: &str) -> String {
        naming::stream(&self.inner.prefix, Kind::Commands, destination)
    }

    /// Creates the stream of a topic if needed: raw producers publishing to
    /// [`event_subject`](Self::event_subject) need it to exist.
    pub async fn ensure_topic(&self, topic: &str) -> Result<(), BusError> {
        validate_name(topic)?;
        self.inner
            .ensure_stream(Kind::Events, topic)
            .await
            .map(drop)
    }
}

impl Inner {
    /// Creates (or finds) the stream for `name`; returns its name.
    async fn ensure_stream(&self, kind: Kind, name: &str) -> Result<String, BusError> {
        let stream_name = naming::stream(&self.prefix, kind, name);
        if self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&stream_name)
        {
            return Ok(stream_name);
        }
        let config = stream::Config {
            name: stream_name.clone(),
            subjects: vec![naming::subject(&self.prefix, kind, name)],
            retention: match kind {
                Kind::Events => stream::RetentionPolicy::Limits,
                Kind::Commands => stream::RetentionPolicy::WorkQueue,
            },
            storage: stream::StorageType::File,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            ..stream::Config::default()
        };
        let mut stream = self
            .jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|e| BusError::broker(format!("creating stream {stream_name}: {e}")))?;
        let existing = &stream.cached_info().config;
        if existing.duplicate_window != self.duplicate_window {
            let mut config = existing.clone();
            tracing::info!(stream = %stream_name, from = ?config.duplicate_window, to = ?self.duplicate_window, "changing the stream's duplicate window");
            config.duplicate_window = self.duplicate_window;
            self.jetstream
                .update_stream(config)
                .await
                .map_err(|e| BusError::broker(format!("updating stream {stream_name}: {e}")))?;
            stream
                .info()
                .await
                .map_err(|e| BusError::broker(format!("reading stream {stream_name}: {e}")))?;
        }
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(stream_name.clone());
        Ok(stream_name)
    }

    fn encode(
        &self,
        destination: &str,
        envelope: &Envelope,
    ) -> Result<(HeaderMap, bytes::Bytes), BusError> {
        let envelope = outgoing_for(
            &*self.propagation,
            Publication::to(destination).on("nats"),
            envelope,
        );
        encode::message(&envelope, self.mode)
    }

    async fn start_publish(
        &self,
        name: &str,
        subject: &Subject,
        envelope: &Envelope,
    ) -> Result<PublishAckFuture, BusError> {
        let (headers, body) = self.encode(name, envelope)?;
        self.jetstream
            .send_publish(
                subject.clone(),
                PublishMessage::build().payload(body).headers(headers),
            )
            .await
            .map_err(|e| BusError::NotConfirmed(e.into()))
    }

    /// Validates the name, makes sure its stream exists, and returns its subject.
    async fn prepare(&self, kind: Kind, name: &str) -> Result<Subject, BusError> {
        validate_name(name)?;
        self.ensure_stream(kind, name).await?;
        Ok(Subject::from(naming::subject(&self.prefix, kind, name)))
    }

    async fn publish_one(
        &self,
        kind: Kind,
        name: &str,
        envelope: &Envelope,
    ) -> Result<(), BusError> {
        let subject = self.prepare(kind, name).await?;
        let result = async {
            let started = tokio::time::Instant::now();
            let ack = self.start_publish(name, &subject, envelope).await?;
            self.confirm(name, &subject, envelope, ack, started).await
        }
        .await;
        self.forget_stream_on_error(kind, name, &result);
        crate::metrics::sent("nats", name, 1, result.as_ref().err());
        result
    }

    /// After a failed publish the stream may be gone (deleted by an operator, a server that
    /// lost its store): ask the server again next time instead of trusting the cache.
    fn forget_stream_on_error(&self, kind: Kind, name: &str, result: &Result<(), BusError>) {
        if result.is_err() {
            self.streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&naming::stream(&self.prefix, kind, name));
        }
    }

    async fn publish_many(
        &self,
        kind: Kind,
        name: &str,
        envelopes: &[Envelope],
    ) -> Result<(), BusError> {
        let subject = self.prepare(kind, name).await?;
        // Up to the window unconfirmed, at most one per ordering key: see `pipeline`.
        let result = async {
            let mut schedule = pipeline::KeyedSchedule::new(envelopes);
            let mut pending: VecDeque<(&str, usize, tokio::time::Instant, PublishAckFuture)> =
                VecDeque::with_capacity(self.window.min(envelopes.len()));
            loop {
                while pending.len() < self.window
                    && let Some((position, key)) = schedule.next()
                {
                    let started = tokio::time::Instant::now();
                    let ack = self
                        .start_publish(name, &subject, &envelopes[position])
                        .await?;
                    pending.push_back((key, position, started, ack));
                }
                let Some((key, position, started, ack)) = pending.pop_front() else {
                    return Ok(());
                };
                // Retried in place: nothing else of its key is in flight (see `confirm`).
                self.confirm(name, &subject, &envelopes[position], ack, started)
                    .await?;
                schedule.confirmed(key);
            }
        }
        .await;
        self.forget_stream_on_error(kind, name, &result);
        crate::metrics::sent("nats", name, envelopes.len(), result.as_ref().err());
        result
    }

    /// Publishes a raw transport message (a dead letter) to a command destination's stream.
    async fn publish_raw(
        &self,
        destination: &str,
        headers: HeaderMap,
        body: bytes::Bytes,
    ) -> Result<(), BusError> {
        self.ensure_stream(Kind::Commands, destination).await?;
        let subject = Subject::from(naming::subject(&self.prefix, Kind::Commands, destination));
        // Confirmed or republished as any publish is (see `confirm`): the original message's
        // `Nats-Msg-Id` travels with it, so a retried dead letter is stored once.
        let send = || async {
            self.jetstream
                .send_publish(
                    subject.clone(),
                    PublishMessage::build()
                        .payload(body.clone())
                        .headers(headers.clone()),
                )
                .await
                .map_err(|e| BusError::NotConfirmed(e.into()))
        };
        let started = tokio::time::Instant::now();
        let ack = send().await?;
        let id = headers
            .get(MSG_ID_HEADER)
            .map_or_else(String::new, |id| id.as_str().to_owned());
        self.confirm_with(&id, ack, started, send).await
    }
}

/// Reads a NATS message as a transport message: `content-type` becomes the content type,
/// every other header a pair (a name given several values yields several pairs).
fn transport_message(message: &async_nats::Message) -> TransportMessage {
    let mut transport = TransportMessage {
        headers: Vec::new(),
        content_type: None,
        body: message.payload.clone(),
    };
    if let Some(headers) = &message.headers {
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            for value in values {
                if name.eq_ignore_ascii_case(CONTENT_TYPE_HEADER) {
                    if transport.content_type.is_none() {
                        transport.content_type = Some(value.as_str().to_owned());
                    }
                } else {
                    transport
                        .headers
                        .push((name.to_owned(), value.as_str().to_owned()));
                }
            }
        }
    }
    transport
}

impl EventPublisher for NatsBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        event: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(self.inner.publish_one(Kind::Events, topic, event))
    }

    fn publish_batch<'a>(
        &'a self,
        topic: &'a str,
        events: &'a [Envelope],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(self.inner.publish_many(Kind::Events, topic, events))
    }
}

impl CommandSender for NatsBus {
    fn send<'a>(
        &'a self,
        destination: &'a str,
        command: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(self.inner.publish_one(Kind::Commands, destination, command))
    }

    fn send_batch<'a>(
        &'a self,
        destination: &'a str,
        commands: &'a [Envelope],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(
            self.inner
                .publish_many(Kind::Commands, destination, commands),
        )
    }
}

/// How long a pull request waits on the server before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// How often the server confirms an idle pull request is alive; two missed heartbeats make
/// the client pull again (after a server restart, say).
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
