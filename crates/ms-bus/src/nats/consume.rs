//! Subscribing: durable pull consumers, their deliveries, and the acker that settles them.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt as _;
use futures_util::future::{BoxFuture, FutureExt as _};

use super::naming::{self, COMMAND_CONSUMER, Kind};
use super::{Inner, MSG_ID_HEADER, NatsBus, PULL_EXPIRES, PULL_HEARTBEAT, transport_message};
use crate::codec::{self, HEADER_PREFIX, HeaderValues};
use crate::{
    Acker, BusError, Deliveries, Delivery, DeliveryInfo, Source, Subscriber, Subscription,
    dead_letter,
};

/// The pause before a pull stream that ended or failed to open is opened again.
const REOPEN_DELAY: Duration = Duration::from_millis(250);

impl Subscriber for NatsBus {
    fn messaging_system(&self) -> &'static str {
        "nats"
    }

    fn subscribe<'a>(
        &'a self,
        subscription: &'a Subscription,
    ) -> BoxFuture<'a, Result<Deliveries, BusError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let (kind, name, consumer_name, deliver_policy) = match subscription.source() {
                // A new group starts with the events published from now on, as a new queue
                // bound to a RabbitMQ exchange would.
                Source::Events { topic, group } => (
                    Kind::Events,
                    &**topic,
                    naming::consumer(group),
                    DeliverPolicy::New,
                ),
                Source::Commands { destination } => (
                    Kind::Commands,
                    &**destination,
                    COMMAND_CONSUMER.to_owned(),
                    DeliverPolicy::All,
                ),
            };
            let stream_name = inner.ensure_stream(kind, name).await?;
            // The dead-letter stream exists before the first message can need it.
            inner
                .ensure_stream(Kind::Commands, subscription.dead_letter_destination())
                .await?;
            let config = pull::Config {
                durable_name: Some(consumer_name.clone()),
                deliver_policy,
                ack_policy: AckPolicy::Explicit,
                ack_wait: subscription.ack_wait_duration(),
                // Unlimited: the consumer runtime counts deliveries and dead-letters, so the
                // server never drops a message silently.
                max_deliver: -1,
                filter_subject: naming::subject(&inner.prefix, kind, name),
                ..pull::Config::default()
            };
            let stream = inner
                .jetstream
                .get_stream(&stream_name)
                .await
                .map_err(|e| BusError::broker(format!("stream {stream_name}: {e}")))?;
            let consumer: PullConsumer = stream
                .get_or_create_consumer(&consumer_name, config)
                .await
                .map_err(|e| BusError::broker(format!("consumer {consumer_name}: {e}")))?;
            let context = Arc::new(DeliveryContext {
                inner: inner.clone(),
                origin: subscription.origin().into(),
                group: subscription.group().map(Into::into),
                dead_letter: subscription.dead_letter_destination().into(),
            });
            let first = open(&consumer, subscription.prefetch_count()).await?;
            let state = PullState {
                consumer,
                prefetch: subscription.prefetch_count(),
                messages: Some(first),
                context,
            };
            Ok(futures_util::stream::unfold(state, next_delivery).boxed())
        })
    }
}

async fn open(consumer: &PullConsumer, prefetch: usize) -> Result<pull::Stream, BusError> {
    consumer
        .stream()
        .max_messages_per_batch(prefetch)
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(|e| BusError::Connection(e.into()))
}

struct PullState {
    consumer: PullConsumer,
    prefetch: usize,
    messages: Option<pull::Stream>,
    context: Arc<DeliveryContext>,
}

/// Hands back what JetStream already delivered to this client but no handler has taken: when
/// the subscription is dropped (a consumer shutting down), each such message is nak'ed without
/// delay, so another instance of the group gets it at once instead of after `ack_wait`.
impl Drop for PullState {
    fn drop(&mut self) {
        let Some(mut messages) = self.messages.take() else {
            return;
        };
        // Only what is buffered already: `now_or_never` never waits for the server.
        let mut unhandled = Vec::new();
        while let Some(Some(item)) = messages.next().now_or_never() {
            if let Ok(message) = item {
                unhandled.push(message);
            }
        }
        // Unsubscribes and stops the pull requests before anything else can be pulled.
        drop(messages);
        if unhandled.is_empty() {
            return;
        }
        // Outside a runtime (the process is ending) the server redelivers after `ack_wait`.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.context.inner.jetstream.client();
            let consumer = self.consumer.clone();
            runtime.spawn(async move {
                // The closed stream's pull request still waits on the server, which would
                // hand a nak'ed message to it (nats-server hands messages to waiting requests
                // without checking interest). Once this PING is answered the server knows the
                // inbox has no subscriber; a consumer info request makes it drop requests
                // without interest. Only then are the messages nak'ed.
                let _ = client.flush().await;
                let _ = consumer.get_info().await;
                for message in unhandled {
                    if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
                        tracing::debug!(%error, "nak on shutdown failed; redelivered after ack_wait");
                    }
                }
            });
        }
    }
}

async fn next_delivery(mut state: PullState) -> Option<(Result<Delivery, BusError>, PullState)> {
    loop {
        let Some(messages) = state.messages.as_mut() else {
            match open(&state.consumer, state.prefetch).await {
                Ok(messages) => state.messages = Some(messages),
                Err(e) => {
                    tokio::time::sleep(REOPEN_DELAY).await;
                    return Some((Err(e), state));
                }
            }
            continue;
        };
        match messages.next().await {
            Some(Ok(message)) => {
                let delivery = delivery(&state.context, message);
                return Some((Ok(delivery), state));
            }
            Some(Err(e)) => return Some((Err(BusError::Connection(e.into())), state)),
            None => {
                // The pull stream gave up (consumer deleted, request limits): open a new one.
                state.messages = None;
                tokio::time::sleep(REOPEN_DELAY).await;
            }
        }
    }
}

/// What every delivery of one subscription shares.
#[derive(Debug)]
struct DeliveryContext {
    inner: Arc<Inner>,
    origin: Arc<str>,
    group: Option<Arc<str>>,
    dead_letter: Arc<str>,
}

fn delivery(context: &Arc<DeliveryContext>, message: jetstream::Message) -> Delivery {
    let (attempt, dedup_id) = match message.info() {
        Ok(info) => (
            u32::try_from(info.delivered).unwrap_or(u32::MAX),
            format!("dl-{}-{}", info.stream, info.stream_sequence),
        ),
        // A reply subject that is no JetStream ack subject: count it as a first delivery.
        Err(_) => (1, format!("dl-{}", uuid::Uuid::now_v7())),
    };
    let transport = transport_message(&message.message);
    let decoded = codec::decode(&transport, HeaderValues::PercentEncoded);
    let headers = transport
        .headers
        .into_iter()
        .filter(|(name, _)| {
            name.get(..HEADER_PREFIX.len())
                .is_none_or(|p| !p.eq_ignore_ascii_case(HEADER_PREFIX))
        })
        .collect();
    let info = DeliveryInfo {
        attempt,
        origin: context.origin.clone(),
        group: context.group.clone(),
        headers,
    };
    let acker = NatsAcker {
        context: context.clone(),
        message,
        attempt,
        dedup_id,
    };
    Delivery::new(decoded, info, Arc::new(acker))
}

/// Settles one JetStream delivery. Dropped unsettled, the server redelivers after `ack_wait`.
struct NatsAcker {
    context: Arc<DeliveryContext>,
    message: jetstream::Message,
    attempt: u32,
    /// The dead letter's `Nats-Msg-Id`: one per original stream message, so that a dead
    /// letter published twice (its ack was lost) is stored once.
    dedup_id: String,
}

impl NatsAcker {
    async fn send(&self, kind: AckKind) -> Result<(), BusError> {
        self.message.ack_with(kind).await.map_err(BusError::Ack)
    }
}

impl Acker for NatsAcker {
    fn ack(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.send(AckKind::Ack))
    }

    fn retry(&self, delay: Duration) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.send(AckKind::Nak(Some(delay))))
    }

    fn dead_letter<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        self.dead_letter_after(reason, self.attempt)
    }

    fn dead_letter_after<'a>(
        &'a self,
        reason: &'a str,
        deliveries: u32,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let info = DeliveryInfo {
                attempt: deliveries,
                origin: self.context.origin.clone(),
                group: self.context.group.clone(),
                headers: Vec::new(),
            };
            let mut headers = self.message.message.headers.clone().unwrap_or_default();
            headers.insert(MSG_ID_HEADER, self.dedup_id.as_str());
            for (name, value) in dead_letter::headers(&info, reason) {
                if let Ok(name) = async_nats::HeaderName::from_str(&name) {
                    headers.insert(name, value);
                }
            }
            self.context
                .inner
                .publish_raw(
                    &self.context.dead_letter,
                    headers,
                    self.message.message.payload.clone(),
                )
                .await?;
            // Only now that the dead letter is stored may the original go.
            self.send(AckKind::Ack).await
        })
    }

    fn in_progress(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.send(AckKind::Progress))
    }
}
