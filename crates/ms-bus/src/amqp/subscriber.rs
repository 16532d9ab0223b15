//! A subscription's deliveries: a consumer on the group's (or destination's) queue, reopened on
//! a new session whenever the connection breaks.
//!
//! RabbitMQ 3.10 classic queues do not count deliveries, and a message whose handler crashed
//! comes back only flagged `redelivered`. So that a message that crashes its consumer every
//! time still reaches the maximum number of deliveries, a redelivered message is not handed to
//! the handler: a copy with the attempt counter raised is published to the back of the queue
//! and the original acked, and the copy is what the handler gets. (A message that was only
//! prefetched when its consumer stopped counts as a delivery too.)

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};

use super::acker::AmqpAcker;
use super::headers::{self, ATTEMPT_HEADER};
use super::link::{Link, Outgoing, Prepare, Session};
use super::topology::{self, Names};
use crate::codec::{self, HEADER_PREFIX, HeaderValues};
use crate::{BusError, Deliveries, Delivery, DeliveryInfo, Subscription};

/// What a subscription consumes and where its messages go when they fail.
pub(crate) struct Plan {
    pub(crate) subscription: Subscription,
    pub(crate) queue: Arc<str>,
    pub(crate) origin: Arc<str>,
    pub(crate) group: Option<Arc<str>>,
    pub(crate) dead_letter: Arc<str>,
}

impl Plan {
    pub(crate) fn new(names: &Names, subscription: &Subscription) -> Result<Self, BusError> {
        Ok(Self {
            queue: names.work_queue(subscription)?.into(),
            origin: subscription.origin().into(),
            group: subscription.group().map(Into::into),
            dead_letter: names
                .destination(subscription.dead_letter_destination())?
                .into(),
            subscription: subscription.clone(),
        })
    }
}

/// An open consumer.
struct Live {
    session: Arc<Session>,
    channel: Channel,
    consumer: Consumer,
}

/// The stream's state between items.
struct State {
    link: Arc<Link>,
    plan: Arc<Plan>,
    live: Option<Live>,
    /// The delay before the next reopening attempt, after a failed one.
    delay: Option<Duration>,
}

/// Opens the consumer now (so that, on return, published events reach the group) and returns
/// its deliveries.
pub(crate) async fn subscribe(link: Arc<Link>, plan: Plan) -> Result<Deliveries, BusError> {
    let deadline = tokio::time::Instant::now() + link.config.publish_timeout;
    let session = link.session_before(deadline).await?;
    let plan = Arc::new(plan);
    let live = open(&link, &plan, session).await?;
    let state = State {
        link,
        plan,
        live: Some(live),
        delay: None,
    };
    Ok(futures_util::stream::unfold(state, next).boxed())
}

async fn open(link: &Link, plan: &Plan, session: Arc<Session>) -> Result<Live, BusError> {
    let channel = session
        .connection
        .create_channel()
        .await
        .map_err(|e| BusError::Connection(e.into()))?;
    let prefetch = u16::try_from(plan.subscription.prefetch_count()).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| BusError::Connection(e.into()))?;
    topology::declare_subscription(&channel, link.exchange(), &plan.subscription, &plan.queue)
        .await?;
    let consumer = channel
        .basic_consume(
            plan.queue.as_ref().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BusError::broker)?;
    Ok(Live {
        session,
        channel,
        consumer,
    })
}

async fn next(mut state: State) -> Option<(Result<Delivery, BusError>, State)> {
    loop {
        if state.link.is_closed() {
            return None;
        }
        let Some(live) = state.live.as_mut() else {
            if let Some(delay) = state.delay {
                tokio::time::sleep(delay).await;
            }
            let reopened = match state.link.session().await {
                Ok(session) => open(&state.link, &state.plan, session).await,
                Err(e) => Err(e),
            };
            match reopened {
                Ok(live) => {
                    state.live = Some(live);
                    state.delay = None;
                    continue;
                }
                Err(BusError::Closed) => return None,
                Err(error) => {
                    state.delay = Some(state.link.next_delay(state.delay));
                    return Some((Err(error), state));
                }
            }
        };
        match live.consumer.next().await {
            Some(Ok(delivery)) if delivery.redelivered => {
                count_redelivery(&state.link, &state.plan, delivery).await;
            }
            Some(Ok(delivery)) => {
                let delivery = to_delivery(&state.link, &state.plan, live, delivery);
                return Some((Ok(delivery), state));
            }
            Some(Err(error)) => {
                // A channel-level error (the broker closed only this channel) reopens the
                // consumer on the same connection; a dead connection is replaced.
                if !live.session.connection.status().connected() {
                    live.session.mark_broken();
                }
                state.live = None;
                return Some((Err(BusError::Connection(error.into())), state));
            }
            // The broker cancelled the consumer (its queue was deleted): declare and consume
            // again, after a pause so that a persistent cause does not spin.
            None => {
                state.live = None;
                state.delay = Some(state.link.next_delay(state.delay));
                if state.link.is_closed() {
                    return None;
                }
                let error = BusError::broker(format!(
                    "RabbitMQ cancelled the consumer of `{}`",
                    state.plan.queue
                ));
                return Some((Err(error), state));
            }
        }
    }
}

fn to_delivery(
    link: &Arc<Link>,
    plan: &Plan,
    live: &Live,
    delivery: lapin::message::Delivery,
) -> Delivery {
    let lapin::message::Delivery {
        properties,
        data,
        acker,
        ..
    } = delivery;
    let body = bytes::Bytes::from(data);
    let message = headers::to_transport(&properties, body.clone());
    let decoded = codec::decode(&message, HeaderValues::Raw);
    let info = Arc::new(DeliveryInfo {
        attempt: headers::attempt(&properties),
        origin: plan.origin.clone(),
        group: plan.group.clone(),
        headers: message
            .headers
            .into_iter()
            .filter(|(name, _)| {
                !name
                    .get(..HEADER_PREFIX.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(HEADER_PREFIX))
            })
            .collect(),
    });
    let acker = AmqpAcker {
        link: link.clone(),
        acker,
        _channel: live.channel.clone(),
        _session: live.session.clone(),
        queue: plan.queue.clone(),
        dead_letter: plan.dead_letter.clone(),
        info: info.clone(),
        properties,
        body,
    };
    Delivery::new(decoded, Arc::unwrap_or_clone(info), Arc::new(acker))
}

/// Replaces a redelivered message by a copy at the back of the queue with the attempt counter
/// raised (see the module docs). If the copy cannot be published the original is requeued, to
/// be counted on its next delivery.
async fn count_redelivery(link: &Link, plan: &Plan, delivery: lapin::message::Delivery) {
    let next = headers::attempt(&delivery.properties).saturating_add(1);
    let copy = headers::with_headers(
        &delivery.properties,
        [(ATTEMPT_HEADER.to_owned(), next.to_string())],
    )
    .and_then(|properties| {
        Ok(Outgoing {
            exchange: "".into(),
            routing_key: headers::short(plan.queue.as_ref())?,
            properties,
            body: bytes::Bytes::from(delivery.data),
            mandatory: true,
        })
    });
    let published = match copy {
        Ok(copy) => link.publish(&[copy], &Prepare::Nothing).await,
        Err(e) => Err(e),
    };
    let settled = match published {
        Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
        Err(error) => {
            tracing::warn!(%error, queue = %plan.queue, "could not count a redelivery; requeueing it");
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
    };
    if let Err(error) = settled {
        tracing::warn!(%error, queue = %plan.queue, "settling a redelivered message failed; RabbitMQ redelivers it");
    }
}
