//! Settling a RabbitMQ delivery: the bus's one ack model on AMQP.
//!
//! - ack: `basic.ack`.
//! - retry after a delay: a copy with the attempt counter raised goes to the work queue's retry
//!   queue for that delay (see [`topology`](super::topology)), confirmed, then the original is
//!   acked. The broker moves the copy back to the work queue when its TTL expires.
//! - dead letter: the original (properties and body as received, the attempt counter removed)
//!   with the [`dead_letter`](crate::dead_letter) headers goes to the dead-letter queue,
//!   confirmed, then the original is acked. RabbitMQ's own dead-lettering cannot add headers,
//!   so the reason would be lost; publishing the copy keeps it.
//! - in progress: a no-op, because AMQP 0-9-1 has nothing to extend. RabbitMQ redelivers an
//!   unsettled message only when its channel closes. The one deadline is the broker's
//!   `consumer_timeout` (`rabbitmq.conf`, 30 minutes by default since RabbitMQ 3.8.15; a
//!   per-queue `x-consumer-timeout` argument exists only from 3.12 on, not on the 3.10 here):
//!   when a delivery stays unacknowledged longer, RabbitMQ closes the whole channel with
//!   `PRECONDITION_FAILED`. Every unsettled delivery of that subscription is then requeued
//!   (and counted as a delivery), their later settlements fail with [`BusError::Ack`], and
//!   the subscription reopens its consumer. A handler that may run longer needs a larger
//!   `consumer_timeout` on the broker; nothing the client sends resets the clock.
//!
//! Settlements go one `basic.ack` per message. Acking several at once (`multiple`) would
//! settle every lower delivery tag of the channel too, including messages whose handlers are
//! still running or about to retry or dead-letter them; it needs settling in delivery order,
//! which the concurrent runtime does not do, so it is not used.
//!
//! If the copy cannot be published, the original is requeued (`basic.nack`), so it is
//! delivered again rather than lost; a crash between the confirmed copy and the ack delivers
//! it twice, which at-least-once delivery allows.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{BasicProperties, Channel};

use super::headers::{self, ATTEMPT_HEADER};
use super::link::{Link, Outgoing, Prepare, Session};
use super::topology;
use crate::{Acker, BusError, DeliveryInfo, dead_letter};

/// The acker of one delivery.
pub(crate) struct AmqpAcker {
    pub(crate) link: Arc<Link>,
    pub(crate) acker: lapin::Acker,
    /// Keeps the delivery's channel (and connection) open until the delivery is settled, even
    /// after the subscription's stream was dropped by a draining consumer.
    pub(crate) _channel: Channel,
    pub(crate) _session: Arc<Session>,
    pub(crate) queue: Arc<str>,
    pub(crate) dead_letter: Arc<str>,
    pub(crate) info: Arc<DeliveryInfo>,
    pub(crate) properties: BasicProperties,
    pub(crate) body: bytes::Bytes,
}

impl AmqpAcker {
    async fn ack_original(&self) -> Result<(), BusError> {
        match self.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(BusError::Ack(
                "the delivery's channel closed (or it was settled already); RabbitMQ redelivers it"
                    .into(),
            )),
            Err(e) => Err(BusError::Ack(e.into())),
        }
    }

    /// Publishes `copy`, then acks the original; requeues the original if the copy failed.
    async fn replace_with(&self, copy: Outgoing, prepare: Prepare) -> Result<(), BusError> {
        if let Err(error) = self.link.publish(&[copy], &prepare).await {
            let _ = self
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
            return Err(error);
        }
        self.ack_original().await
    }

    fn to_queue(&self, queue: &str, properties: BasicProperties) -> Result<Outgoing, BusError> {
        Ok(Outgoing {
            exchange: "".into(),
            routing_key: headers::short(queue)?,
            properties,
            body: self.body.clone(),
            mandatory: true,
        })
    }
}

impl Acker for AmqpAcker {
    fn ack(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.ack_original())
    }

    fn retry(&self, delay: Duration) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let next = self.info.attempt.saturating_add(1);
            let properties = headers::with_headers(
                &self.properties,
                [(ATTEMPT_HEADER.to_owned(), next.to_string())],
            )?;
            let delay_ms = topology::retry_bucket(delay);
            let (target, prepare) = if delay_ms == 0 {
                (self.queue.to_string(), Prepare::Nothing)
            } else {
                (
                    topology::retry_queue_name(&self.queue, delay_ms),
                    Prepare::RetryQueue {
                        queue: self.queue.to_string(),
                        delay_ms,
                    },
                )
            };
            let copy = self.to_queue(&target, properties)?;
            self.replace_with(copy, prepare).await
        })
    }

    fn dead_letter<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        self.dead_letter_after(reason, self.info.attempt)
    }

    fn dead_letter_after<'a>(
        &'a self,
        reason: &'a str,
        deliveries: u32,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let info = DeliveryInfo {
                attempt: deliveries,
                ..(*self.info).clone()
            };
            // The counter is this subscription's bookkeeping; a consumer of the dead letters
            // starts at delivery 1 (the count is in the dead-letter headers).
            let properties = headers::with_headers(
                &headers::without(&self.properties, ATTEMPT_HEADER),
                dead_letter::headers(&info, reason),
            )?;
            let copy = self.to_queue(&self.dead_letter, properties)?;
            self.replace_with(copy, Prepare::Queue(self.dead_letter.to_string()))
                .await
        })
    }

    fn in_progress(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
}
