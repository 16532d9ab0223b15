//! The consumer runtime: runs a `tower::Service<Message>` handler over a subscription with one
//! ack model for every broker.
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use ms_bus::consumer::{Consumer, Message};
//! use ms_bus::memory::MemoryBus;
//! use ms_bus::{Envelope, EventPublisher, Subscription};
//!
//! let bus = MemoryBus::new();
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
//! let consumer = Consumer::new(Subscription::events("invoicing.invoice", "reporting")?)
//!     .serve(&bus, handler)
//!     .await?;
//!
//! let event = Envelope::builder("invoicing.invoice.created", "/invoicing").build()?;
//! bus.publish("invoicing.invoice", &event).await?;
//!
//! consumer.shutdown_when(|| seen.load(Ordering::SeqCst) == 1).await?;
//! assert_eq!(seen.load(Ordering::SeqCst), 1);
//! # Ok(()) }
//! # #[cfg(not(feature = "memory"))]
//! # fn main() {}
//! ```
//!
//! # The ack model
//!
//! - The handler returns `Ok(r)` with `r: Into<Outcome>` (`()` is [`Outcome::Ack`]):
//!   ack, retry after a delay, or dead letter, as the outcome says.
//! - It returns `Err(e)`: retried after the [`RetryPolicy`]'s delay until the maximum number
//!   of deliveries, then dead-lettered with `e` (and its sources) as the reason. A [`Reject`]
//!   error dead-letters at once. A panic counts as an error. Retries happen in the message's
//!   lane (see [ordering](#ordering)), or through the broker with
//!   [`partition_key_order(false)`](Consumer::partition_key_order).
//! - A message that is not a valid CloudEvents event is dead-lettered with the decoding error,
//!   without calling the handler; so is one delivered more often than the maximum (a handler
//!   that crashed the process every time).
//! - Long handlers call [`Message::in_progress`] to extend the ack deadline.
//!
//! Handlers are tower services, so `tower::timeout`, `tower::limit` and the ms-resilience
//! layers apply to them. Up to [`Consumer::concurrency`] messages are handled at once;
//! the service's own readiness (a concurrency limit, a breaker) is respected.
//!
//! # Ordering
//!
//! Every message has a key, [`Envelope::ordering_key`](crate::Envelope::ordering_key): its
//! `partitionkey`, else its subject, else its id (nothing to order it with). The ms-outbox
//! relay publishes by the same rule and ms-cqrs's runner applies by it. Messages of one key
//! are handled one after the other, in delivery order; other keys run concurrently, up to
//! [`Consumer::concurrency`] (messages held behind their key count against it, so a hot key
//! cannot make the runtime buffer without bound).
//!
//! **Retries stay in the lane.** A message whose handler fails (or asks for
//! [`Outcome::RetryAfter`]) is not given back to the broker: the runtime keeps it, waits the
//! [`RetryPolicy`]'s delay (telling the broker every half
//! [`ack_wait`](crate::Subscription::ack_wait) that it is still working on it) and calls the
//! handler again, with [`Message::attempt`] one higher, while the later messages of its key
//! wait behind it and other keys flow. After the last attempt it is dead-lettered (the dead
//! letter records the runtime's count, [`Acker::dead_letter_after`](crate::Acker::dead_letter_after)),
//! and only then does its key's next message start. The attempt count starts from the
//! broker's count of the delivery, so a message redelivered after a crash gets its attempts
//! again. Brokers' own retries (a JetStream nak with delay, a RabbitMQ retry queue) would
//! put it behind the later messages of its key. An adapter needs nothing for this: it
//! delivers in its order and settles what the runtime tells it to (the Kafka adapter, whose
//! broker has no per-message retry at all, relies on it).
//!
//! **What is guaranteed** (tested by the conformance suite's
//! `a_retry_keeps_the_later_messages_of_its_key_behind_it` on every adapter, and end to end by
//! ms-outbox's `tests/subject_order.rs` and `tests/kill_order.rs`): one consumer of a group
//! calls its handler for each key's messages one at a time, in the order the broker delivers
//! them, and a message's successful call comes after those of every earlier message of its key,
//! failures and retries included. With the relay in front, the broker's order per key is commit
//! order, through broker crashes mid-batch.
//!
//! **What is not:**
//!
//! - *Several consumers of one group* (instances of a service, or two `Consumer`s): the broker
//!   hands each the next messages without regard to keys (RabbitMQ round-robins a queue over
//!   its consumers, a JetStream durable consumer serves whichever pull comes), so two
//!   messages of one key can be handled at once in two processes. Run one consumer per group
//!   where order matters (RabbitMQ's single active consumer gives fail-over without
//!   parallelism), or apply in key order against stored state as ms-cqrs's runner does.
//! - *Redeliveries.* A message the broker delivers again because its settlement never
//!   arrived (a consumer crash, a lost connection, a broker restart, an ack deadline passed)
//!   comes when the broker decides: JetStream redelivers after `ack_wait`, possibly after
//!   later messages of its key that were delivered meanwhile (a message lost on the wire
//!   when the connection broke is one); RabbitMQ classic queues count nothing, so the adapter
//!   counts a redelivered message by moving a copy to the back of the queue (else a message
//!   that crashes its consumer would be redelivered forever). A first call can then come
//!   after a later message's. Knowing that a message is early needs a per-key sequence number
//!   from the producer and the last one applied stored with the effects: ms-cqrs's runner
//!   does this with the `sequence` its write side stamps.
//! - *Shutdown.* A message waiting in its lane for a retry is handed to the broker's retry
//!   (with what is left of its delay) and the ones held behind it are left unsettled (see
//!   below): the next consumer may get them in any order.
//!
//! # Shutdown
//!
//! [`ConsumerHandle::shutdown`] stops taking deliveries, lets the in-flight handlers finish
//! and settles them, then returns. Messages waiting in their lane for a retry go to the
//! broker's retry with what is left of their delay. Deliveries the adapter had prefetched but not handed out
//! go back to the broker: the NATS adapter naks them without delay (another instance gets
//! them at once), RabbitMQ requeues them when the channel closes; the memory bus prefetches nothing.
//! Deliveries held behind an in-flight message of the same partition key are left
//! unsettled, so that they cannot overtake it; the broker redelivers them after its ack
//! deadline (NATS) or when the channel closes (RabbitMQ).

mod lanes;
mod message;
mod retry;
mod settle;
mod span_attributes;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tower::Service;

pub use crate::outcome::{Outcome, Reject};
use lanes::PartitionLanes;
pub use message::Message;
pub use retry::{DEFAULT_INITIAL_DELAY, DEFAULT_MAX_DELAY, DEFAULT_MAX_DELIVERIES, RetryPolicy};

use crate::propagation::{Propagation, default_propagation};
use crate::{BoxError, BusError, Delivery, Subscriber, Subscription};
use settle::{Attempt, Step};

/// How many messages a consumer handles at once, unless [`Consumer::concurrency`] says
/// otherwise.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// Configures and starts a consumer for one subscription.
#[derive(Debug, Clone)]
#[must_use]
pub struct Consumer {
    subscription: Subscription,
    concurrency: usize,
    retry: RetryPolicy,
    propagation: Arc<dyn Propagation>,
    partition_key_order: bool,
    /// The subscriber's `messaging.system`, set by `serve`, for the metrics.
    messaging_system: &'static str,
}

impl Consumer {
    /// A consumer of `subscription` with the defaults: [`DEFAULT_CONCURRENCY`],
    /// [`RetryPolicy::default`], [`TraceContextPropagation`](crate::propagation::TraceContextPropagation).
    pub fn new(subscription: Subscription) -> Self {
        Self {
            subscription,
            concurrency: DEFAULT_CONCURRENCY,
            retry: RetryPolicy::default(),
            propagation: default_propagation(),
            partition_key_order: true,
            messaging_system: "ms_bus",
        }
    }

    /// Sets how many messages are handled at once (at least 1).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Whether messages with the same [`ordering_key`](crate::Envelope::ordering_key) are
    /// handled one after the other, in delivery order, with retries kept in the key's lane,
    /// while other keys run concurrently (default `true`; see [ordering](self#ordering)).
    /// With `false`, messages run in any order and retries go through the broker
    /// ([`Acker::retry`](crate::Acker::retry)), which frees the slot during the delay.
    pub fn partition_key_order(mut self, ordered: bool) -> Self {
        self.partition_key_order = ordered;
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the context propagation restored around each handler call (ms-tracing plugs in
    /// here).
    pub fn propagation(mut self, propagation: Arc<dyn Propagation>) -> Self {
        self.propagation = propagation;
        self
    }

    /// Subscribes through `subscriber` and runs `handler` on a spawned task until
    /// [`ConsumerHandle::shutdown`]. Returns once the subscription exists on the broker.
    pub async fn serve<B, S>(
        mut self,
        subscriber: &B,
        handler: S,
    ) -> Result<ConsumerHandle, BusError>
    where
        B: Subscriber + ?Sized,
        S: Service<Message> + Send + 'static,
        S::Response: Into<Outcome>,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let deliveries = subscriber.subscribe(&self.subscription).await?;
        self.messaging_system = subscriber.messaging_system();
        let (stop, stopped) = oneshot::channel();
        let running = Arc::new(AtomicBool::new(true));
        let origin: Arc<str> = self.subscription.origin().into();
        let guard = RunningGuard(running.clone());
        let task = tokio::spawn(async move {
            // Cleared however the task ends, aborted included.
            let _guard = guard;
            run(self, deliveries, handler, stopped).await
        });
        Ok(ConsumerHandle {
            stop: Some(stop),
            task,
            running,
            origin,
        })
    }
}

/// A running consumer.
#[derive(Debug)]
pub struct ConsumerHandle {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), BusError>>,
    running: Arc<AtomicBool>,
    origin: Arc<str>,
}

/// Marks the consumer stopped when the task ends or is dropped.
struct RunningGuard(Arc<AtomicBool>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl ConsumerHandle {
    /// A health check that fails once this consumer has stopped (feature `health`).
    #[cfg(feature = "health")]
    #[cfg_attr(docsrs, doc(cfg(feature = "health")))]
    pub fn check(&self) -> crate::health::ConsumerCheck {
        crate::health::ConsumerCheck {
            running: self.running.clone(),
            name: self.origin.clone(),
        }
    }

    /// Stops taking deliveries, waits for the in-flight handlers and their settlements, and
    /// returns the consumer's end state (an error if the handler's service failed).
    pub async fn shutdown(mut self) -> Result<(), BusError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| BusError::broker(format!("consumer task failed: {e}")))?
    }

    /// Waits (polling every few milliseconds) until `done` returns true, then shuts down.
    /// For tests and examples that wait for a known number of messages.
    pub async fn shutdown_when(self, mut done: impl FnMut() -> bool) -> Result<(), BusError> {
        while !done() {
            if self.task.is_finished() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        self.shutdown().await
    }

    /// Stops the consumer at once, as a crash would: in-flight messages are not settled, so
    /// the broker redelivers them.
    pub fn abort(self) {
        self.task.abort();
    }

    /// The topic or destination this consumer reads.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether the consumer has stopped (shut down, or its stream ended).
    pub fn is_finished(&self) -> bool {
        !self.running.load(Ordering::Acquire) || self.task.is_finished()
    }
}

async fn run<S>(
    consumer: Consumer,
    mut deliveries: crate::Deliveries,
    mut service: S,
    mut stopped: oneshot::Receiver<()>,
) -> Result<(), BusError>
where
    S: Service<Message> + Send + 'static,
    S::Response: Into<Outcome>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Step>> = FuturesUnordered::new();
    let mut lanes = PartitionLanes::default();
    // Messages whose retry delay passed in their lane: called again before anything else.
    let mut again: VecDeque<Attempt> = VecDeque::new();
    // Tells messages waiting in their lane for a retry that the consumer stops.
    let (stopping, stop_signal) = watch::channel(false);
    let context = Context {
        retry: consumer.retry,
        messaging_system: consumer.messaging_system,
        ack_wait: consumer.subscription.ack_wait_duration(),
        stopping: stop_signal,
        propagation: consumer.propagation.clone(),
    };
    let mut ready = false;
    let mut result = Ok(());
    loop {
        if !ready {
            // In-flight handlers are polled while waiting for readiness: a concurrency limit
            // becomes ready only when one of them completes.
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                r = poll_fn(|cx| service.poll_ready(cx)) => match r {
                    Ok(()) => ready = true,
                    Err(e) => {
                        result = Err(BusError::broker(e));
                        break;
                    }
                },
                Some(step) = in_flight.next(), if !in_flight.is_empty() => {
                    step_done(step, &mut lanes, &mut again);
                }
            }
            continue;
        }
        // A retry whose delay passed, then a message whose predecessor of the same key
        // finished, go before new deliveries.
        if let Some(attempt) = again.pop_front() {
            in_flight.push(call(&context, &mut service, attempt));
            ready = false;
            continue;
        }
        if let Some((delivery, key)) = lanes.next_runnable() {
            in_flight.push(handle(&context, &mut service, delivery, key));
            ready = false;
            continue;
        }
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            Some(step) = in_flight.next(), if !in_flight.is_empty() => {
                step_done(step, &mut lanes, &mut again);
            }
            item = deliveries.next(), if in_flight.len() + lanes.held() < consumer.concurrency => match item {
                None => break,
                Some(Err(e)) => tracing::warn!(error = %e, "subscription error; the adapter reconnects"),
                Some(Ok(delivery)) => {
                    let admitted = if consumer.partition_key_order {
                        lanes.admit(delivery)
                    } else {
                        Some((delivery, None))
                    };
                    if let Some((delivery, key)) = admitted {
                        in_flight.push(handle(&context, &mut service, delivery, key));
                        ready = false;
                    }
                }
            },
        }
    }
    // Drain: finish and settle what the handler already has; messages waiting in their lane
    // for a retry go to the broker's retry. Deliveries still in the stream, or held behind
    // their partition key, are dropped unsettled, for the broker to redeliver.
    let _ = stopping.send(true);
    drop(deliveries);
    drop(lanes);
    for attempt in again.drain(..) {
        in_flight.push(Box::pin(hand_back(attempt)));
    }
    while let Some(step) = in_flight.next().await {
        if let Step::Again(attempt) = step {
            in_flight.push(Box::pin(hand_back(attempt)));
        }
    }
    result
}

/// What every handler call of one consumer shares.
struct Context {
    retry: RetryPolicy,
    /// The subscriber's `messaging.system`, for the metrics.
    messaging_system: &'static str,
    ack_wait: Duration,
    stopping: watch::Receiver<bool>,
    propagation: Arc<dyn Propagation>,
}

fn step_done(step: Step, lanes: &mut PartitionLanes, again: &mut VecDeque<Attempt>) {
    match step {
        Step::Settled(key) => lanes.finish(key),
        Step::Again(attempt) => again.push_back(attempt),
    }
}

/// A retry due while the consumer stops: the broker delivers it again (to this group's next
/// consumer) at once.
async fn hand_back(attempt: Attempt) -> Step {
    if let Err(e) = attempt.acker.retry(Duration::ZERO).await {
        tracing::warn!(error = %e, origin = %attempt.info.origin, "handing a message back failed; the broker redelivers it");
    }
    Step::Settled(attempt.key)
}

/// Starts handling `delivery`; the future settles it (or waits out its retry in its lane) and
/// yields the step for the run loop.
fn handle<S>(
    context: &Context,
    service: &mut S,
    delivery: Delivery,
    key: Option<String>,
) -> BoxFuture<'static, Step>
where
    S: Service<Message> + Send + 'static,
    S::Response: Into<Outcome>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let position = delivery.log_position();
    let (message, info, acker) = delivery.into_parts();
    let info = Arc::new(info);
    match message {
        Ok(envelope) => call(
            context,
            service,
            Attempt {
                envelope: Arc::new(envelope),
                info,
                acker,
                key,
                position,
            },
        ),
        Err(error) => {
            let reason = format!("not a valid CloudEvents event: {error}");
            Box::pin(async move {
                settle::dead_letter(&*acker, &info, &reason).await;
                Step::Settled(key)
            })
        }
    }
}

/// Calls the handler with `attempt`; the future concludes it.
fn call<S>(context: &Context, service: &mut S, attempt: Attempt) -> BoxFuture<'static, Step>
where
    S: Service<Message> + Send + 'static,
    S::Response: Into<Outcome>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let retry = context.retry;
    if attempt.info.attempt > retry.max_deliveries_count() {
        let reason = format!(
            "delivered {} times, more than the maximum of {} (the handler never settled it)",
            attempt.info.attempt,
            retry.max_deliveries_count()
        );
        return Box::pin(async move {
            settle::dead_letter(&*attempt.acker, &attempt.info, &reason).await;
            Step::Settled(attempt.key)
        });
    }
    // `call` runs inside the message's context too: tower services do work in `call`
    // itself (read the correlation id, open a span, publish), not only in its future.
    let mut message = Some(Message::new(
        attempt.envelope.clone(),
        attempt.info.clone(),
        attempt.acker.clone(),
    ));
    let system = context.messaging_system;
    let mut call = || -> crate::propagation::HandlerFuture {
        let Some(message) = message.take() else {
            // `scope_call` calls once; a second call has no message to give.
            return Box::pin(std::future::ready(Err(
                "the propagation called the handler twice".into(),
            )));
        };
        // Inside the message's span: what only the consumer knows about the delivery.
        span_attributes::record(&tracing::Span::current(), system, &attempt);
        let call = service.call(message);
        Box::pin(async move { call.await.map(Into::into).map_err(Into::into) })
    };
    let processing = crate::metrics::Processing::start();
    // A panic in the handler's synchronous `call` is the same handler failure as one in its
    // future: retried, then dead-lettered, while the consumer keeps running.
    let scoped = match std::panic::catch_unwind(AssertUnwindSafe(|| {
        context.propagation.scope_call(&attempt.envelope, &mut call)
    })) {
        Ok(scoped) => scoped,
        Err(panic) => {
            let error: BoxError = panic_message(&*panic).into();
            Box::pin(std::future::ready(Err(error)))
        }
    };
    let (ack_wait, stopping) = (context.ack_wait, context.stopping.clone());
    Box::pin(async move {
        let result = match AssertUnwindSafe(scoped).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => Err(panic_message(&*panic).into()),
        };
        processing.finish(system, &attempt.info.origin, &result);
        let decision = settle::decide(retry, attempt.info.attempt, result);
        settle::conclude(attempt, decision, ack_wait, stopping).await
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    format!("handler panicked: {detail}")
}
