//! A subscription's deliveries: a consumer on the group's (or destination's) queue, reopened on
//! a new session whenever the connection breaks.
//!
//! RabbitMQ 3.10 classic queues do not count deliveries: a message whose consumer's channel
//! closed before it was settled (a crash, a lost connection, a broker restart, which flags
//! every message it recovers) comes back only flagged `redelivered`. It is handed to the
//! handler where it is, with the attempt counter one above its `ms-attempt` header, so that
//! it keeps its place among its key's messages. (Moving a counted copy to the back of the
//! queue would count every redelivery, but after a broker restart it put the whole backlog
//! behind what was published since, out of order.) A message that kills its consumer process
//! every time is therefore redelivered, as attempt 2, until someone removes it; retries and
//! dead letters of the consumer runtime are counted as before.

use std::sync::Arc;

use futures_util::StreamExt as _;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};

use super::acker::AmqpAcker;
use super::headers;
use super::link::{Link, Session};
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
    /// Failed reopening attempts in a row: the pause before the next one grows with them.
    failures: u32,
}

/// Opens the consumer now (so that, on return, published events reach the group) and returns
/// its deliveries.
pub(crate) async fn subscribe(link: Arc<Link>, plan: Plan) -> Result<Deliveries, BusError> {
    let deadline = link.config.publish_deadline();
    let session = link.session_before(deadline).await?;
    let plan = Arc::new(plan);
    let live = open(&link, &plan, session).await?;
    let state = State {
        link,
        plan,
        live: Some(live),
        failures: 0,
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
            if state.failures > 0 {
                tokio::time::sleep(state.link.config.reconnect_delay(state.failures)).await;
            }
            let reopened = match state.link.session().await {
                Ok(session) => open(&state.link, &state.plan, session).await,
                Err(e) => Err(e),
            };
            match reopened {
                Ok(live) => {
                    state.live = Some(live);
                    state.failures = 0;
                    continue;
                }
                Err(BusError::Closed) => return None,
                Err(error) => {
                    state.failures = state.failures.saturating_add(1);
                    return Some((Err(error), state));
                }
            }
        };
        match live.consumer.next().await {
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
                state.failures = state.failures.saturating_add(1);
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
        redelivered,
        ..
    } = delivery;
    let body = bytes::Bytes::from(data);
    let message = headers::to_transport(&properties, body.clone());
    let decoded = codec::decode(&message, HeaderValues::Raw);
    let info = Arc::new(DeliveryInfo {
        attempt: headers::attempt(&properties).saturating_add(u32::from(redelivered)),
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
