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
//!   error dead-letters at once. A panic counts as an error.
//! - A message that is not a valid CloudEvents event is dead-lettered with the decoding error,
//!   without calling the handler; so is one delivered more often than the maximum (a handler
//!   that crashed the process every time).
//! - Long handlers call [`Message::in_progress`] to extend the ack deadline.
//!
//! Handlers are tower services, so `tower::timeout`, `tower::limit` and the ms-resilience
//! layers apply to them. Up to [`Consumer::concurrency`] messages are handled at once;
//! the service's own readiness (a concurrency limit, a breaker) is respected.
//!
//! # Shutdown
//!
//! [`ConsumerHandle::shutdown`] stops taking deliveries, lets the in-flight handlers finish
//! and settles them, then returns. Deliveries the adapter had prefetched but not handed out
//! go back to the broker: the NATS adapter naks them without delay (another instance gets
//! them at once), RabbitMQ requeues them when the channel closes; the memory bus prefetches nothing.
//! Deliveries held behind an in-flight message of the same partition key are left
//! unsettled, so that they cannot overtake it; the broker redelivers them after its ack
//! deadline (NATS) or when the channel closes (RabbitMQ).

mod lanes;
mod message;
mod outcome;
mod retry;

use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::Service;

use lanes::PartitionLanes;
pub use message::Message;
pub use outcome::{Outcome, Reject};
pub use retry::{DEFAULT_INITIAL_DELAY, DEFAULT_MAX_DELAY, DEFAULT_MAX_DELIVERIES, RetryPolicy};

use crate::propagation::{Propagation, default_propagation};
use crate::{Acker, BoxError, BusError, Delivery, DeliveryInfo, Subscriber, Subscription};

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

    /// Whether messages with the same `partitionkey` are handled one after the other, in
    /// delivery order, while messages of other keys (or none) run concurrently (default
    /// `true`). The order is the broker's delivery order: a message that is retried after a
    /// delay comes back behind later ones of its key.
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
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Option<String>>> =
        FuturesUnordered::new();
    let mut lanes = PartitionLanes::default();
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
                Some(key) = in_flight.next(), if !in_flight.is_empty() => lanes.finish(key),
            }
            continue;
        }
        // A message whose predecessor of the same key finished goes before new deliveries.
        if let Some((delivery, key)) = lanes.next_runnable() {
            in_flight.push(handle(&consumer, &mut service, delivery, key));
            ready = false;
            continue;
        }
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            Some(key) = in_flight.next(), if !in_flight.is_empty() => lanes.finish(key),
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
                        in_flight.push(handle(&consumer, &mut service, delivery, key));
                        ready = false;
                    }
                }
            },
        }
    }
    // Drain: finish and settle what the handler already has. Deliveries still in the stream,
    // or held behind their partition key, are dropped unsettled, for the broker to redeliver.
    drop(deliveries);
    drop(lanes);
    while in_flight.next().await.is_some() {}
    result
}

/// Starts handling `delivery`; the future settles it and yields `key` back for the lanes.
fn handle<S>(
    consumer: &Consumer,
    service: &mut S,
    delivery: Delivery,
    key: Option<String>,
) -> BoxFuture<'static, Option<String>>
where
    S: Service<Message> + Send + 'static,
    S::Response: Into<Outcome>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let (message, info, acker) = delivery.into_parts();
    let info = Arc::new(info);
    let envelope = match message {
        Ok(envelope) => Arc::new(envelope),
        Err(error) => {
            let reason = format!("not a valid CloudEvents event: {error}");
            return Box::pin(async move {
                settle_dead_letter(&*acker, &info, &reason).await;
                key
            });
        }
    };
    let retry = consumer.retry;
    if info.attempt > retry.max_deliveries_count() {
        let reason = format!(
            "delivered {} times, more than the maximum of {} (the handler never settled it)",
            info.attempt,
            retry.max_deliveries_count()
        );
        return Box::pin(async move {
            settle_dead_letter(&*acker, &info, &reason).await;
            key
        });
    }
    // `call` runs inside the message's context too: tower services do work in `call`
    // itself (read the correlation id, open a span, publish), not only in its future.
    let mut message = Some(Message::new(envelope.clone(), info.clone(), acker.clone()));
    let mut call = || -> crate::propagation::HandlerFuture {
        let Some(message) = message.take() else {
            // `scope_call` calls once; a second call has no message to give.
            return Box::pin(std::future::ready(Err(
                "the propagation called the handler twice".into(),
            )));
        };
        let call = service.call(message);
        Box::pin(async move { call.await.map(Into::into).map_err(Into::into) })
    };
    let processing = crate::metrics::Processing::start();
    let system = consumer.messaging_system;
    // A panic in the handler's synchronous `call` is the same handler failure as one in its
    // future: retried, then dead-lettered, while the consumer keeps running.
    let scoped = match std::panic::catch_unwind(AssertUnwindSafe(|| {
        consumer.propagation.scope_call(&envelope, &mut call)
    })) {
        Ok(scoped) => scoped,
        Err(panic) => {
            let error: BoxError = panic_message(&*panic).into();
            Box::pin(std::future::ready(Err(error)))
        }
    };
    Box::pin(async move {
        let result = match AssertUnwindSafe(scoped).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => Err(panic_message(&*panic).into()),
        };
        processing.finish(system, &info.origin, &result);
        settle(&*acker, &info, retry, result).await;
        key
    })
}

async fn settle(
    acker: &dyn Acker,
    info: &DeliveryInfo,
    retry: RetryPolicy,
    result: Result<Outcome, BoxError>,
) {
    let settled = match result {
        Ok(Outcome::Ack) => acker.ack().await,
        Ok(Outcome::RetryAfter(delay)) if !retry.gives_up(info.attempt) => acker.retry(delay).await,
        Ok(Outcome::RetryAfter(_)) => {
            let reason = format!(
                "handler asked for a retry on delivery {}, the maximum",
                info.attempt
            );
            return settle_dead_letter(acker, info, &reason).await;
        }
        Ok(Outcome::DeadLetter(reason)) => {
            return settle_dead_letter(acker, info, &reason).await;
        }
        Err(error) if error.is::<Reject>() || retry.gives_up(info.attempt) => {
            return settle_dead_letter(acker, info, &error_chain(&*error)).await;
        }
        Err(error) => {
            tracing::debug!(error = %error_chain(&*error), attempt = info.attempt, "handler failed; retrying");
            acker.retry(retry.delay(info.attempt)).await
        }
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, origin = %info.origin, "settling a message failed; the broker redelivers it");
    }
}

async fn settle_dead_letter(acker: &dyn Acker, info: &DeliveryInfo, reason: &str) {
    tracing::warn!(origin = %info.origin, attempt = info.attempt, reason, "dead-lettering a message");
    if let Err(e) = acker.dead_letter(reason).await {
        tracing::warn!(error = %e, origin = %info.origin, "dead-lettering failed; the broker redelivers the message");
    }
}

/// An error and its sources, `outer: inner: root`.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    format!("handler panicked: {detail}")
}
