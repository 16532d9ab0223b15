//! Subscribing: one Kafka consumer per subscription, run by a poller thread of its own, whose
//! records are handed to the consumer runtime one key at a time and committed as far as they
//! are settled.
//!
//! - The poller thread owns librdkafka's consumer: it polls, feeds the [`Tracker`], stops
//!   taking records while `prefetch` are unsettled (`back_pressure`), commits every commit
//!   interval, and runs the rebalance callbacks, which may block it (a revocation waits for
//!   handlers).
//! - The deliveries stream takes records the tracker marks ready: the first unsettled record
//!   of each key. A key's next record becomes ready only when the one before is settled (acked
//!   or dead-lettered), so a retried record keeps its key's later records behind it.
//! - Ackers settle in the tracker and wake whoever waits (the stream, a revocation).

mod acker;
mod back_pressure;
pub(super) mod metadata;
mod poller;
mod tracker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;

pub(crate) use tracker::Record;
use tracker::Tracker;

use super::naming::{self, COMMAND_GROUP, Kind};
use super::{Inner, KafkaBus, headers};
use crate::{
    BusError, Deliveries, Delivery, DeliveryInfo, LogPosition, Source, Subscriber, Subscription,
};

/// What the poller thread, the deliveries stream and the ackers of one subscription share.
#[derive(Debug)]
pub(super) struct Shared {
    tracker: Mutex<Tracker>,
    /// Wakes the deliveries stream when a record becomes ready (or the subscription ends).
    ready: tokio::sync::Notify,
    /// Wakes a revocation (on the poller thread) when a handler settles.
    settled: Condvar,
    /// The deliveries stream was dropped: the poller drains and closes the consumer.
    stream_dropped: AtomicBool,
    /// The poller ended (its consumer closed): the stream ends.
    poller_done: AtomicBool,
    inner: Arc<Inner>,
    topic: String,
    origin: Arc<str>,
    group: Option<Arc<str>>,
    kafka_group: String,
    dead_letter_topic: String,
    prefetch: usize,
}

impl Shared {
    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Subscriber for KafkaBus {
    fn messaging_system(&self) -> &'static str {
        "kafka"
    }

    fn subscribe<'a>(
        &'a self,
        subscription: &'a Subscription,
    ) -> BoxFuture<'a, Result<Deliveries, BusError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let (kind, name, group) = match subscription.source() {
                Source::Events { topic, group } => (Kind::Events, &**topic, &**group),
                Source::Commands { destination } => (Kind::Commands, &**destination, COMMAND_GROUP),
            };
            let topic = inner.prepare(kind, name).await?;
            // The dead-letter topic exists before the first record can need it.
            let dead_letter_topic = inner
                .prepare(Kind::Commands, subscription.dead_letter_destination())
                .await?;
            let kafka_group = naming::group(&topic, group);
            let shared = Arc::new(Shared {
                tracker: Mutex::default(),
                ready: tokio::sync::Notify::new(),
                settled: Condvar::new(),
                stream_dropped: AtomicBool::new(false),
                poller_done: AtomicBool::new(false),
                inner: inner.clone(),
                topic,
                origin: subscription.origin().into(),
                group: subscription.group().map(Into::into),
                kafka_group,
                dead_letter_topic,
                prefetch: subscription.prefetch_count(),
            });
            // A new group of an event topic starts at the end of the log, as a new RabbitMQ
            // queue or JetStream consumer would; commands wait for their first consumer.
            let start_at_end = kind == Kind::Events;
            poller::start(shared.clone(), start_at_end).await?;
            let stream = futures_util::stream::unfold(
                StreamState {
                    shared: shared.clone(),
                    _guard: StreamGuard(shared),
                },
                next_delivery,
            );
            Ok(stream.boxed())
        })
    }
}

struct StreamState {
    shared: Arc<Shared>,
    _guard: StreamGuard,
}

/// Tells the poller when the deliveries stream is dropped (the consumer shut down or was
/// aborted), so that it settles what it can and leaves the group.
struct StreamGuard(Arc<Shared>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.stream_dropped.store(true, Ordering::Release);
        self.0.settled.notify_all();
    }
}

async fn next_delivery(state: StreamState) -> Option<(Result<Delivery, BusError>, StreamState)> {
    let shared = state.shared.clone();
    loop {
        // Registered before looking, so that a record readied meanwhile is not missed.
        let notified = shared.ready.notified();
        let taken = shared.tracker().take_ready();
        if let Some((ticket, record, attempt)) = taken {
            let delivery = delivery(&shared, ticket, record, attempt);
            return Some((Ok(delivery), state));
        }
        if shared.poller_done.load(Ordering::Acquire) {
            return None;
        }
        notified.await;
    }
}

fn delivery(
    shared: &Arc<Shared>,
    ticket: tracker::Ticket,
    record: Arc<Record>,
    attempt: u32,
) -> Delivery {
    let (message, headers) = headers::decode(&record);
    let info = DeliveryInfo {
        attempt,
        origin: shared.origin.clone(),
        group: shared.group.clone(),
        headers,
    };
    let position = LogPosition {
        partition: record.partition,
        offset: record.offset,
    };
    let acker = acker::KafkaAcker::new(shared.clone(), ticket, record, attempt);
    Delivery::new(message, info, Arc::new(acker)).with_log_position(position)
}
