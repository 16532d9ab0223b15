//! Publishing: topics made on demand, records keyed by the envelope's ordering key, and sends
//! that return once the brokers acknowledged them (`acks=all`, idempotent producer).

use std::collections::VecDeque;
use std::sync::PoisonError;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::types::RDKafkaErrorCode as Code;

use super::builder::Topics;
use super::naming::{self, Kind};
use super::{Inner, headers};
use crate::propagation::{Publication, outgoing_for};
use crate::{BusError, Envelope, validate_name};

/// How long a send waits for room in librdkafka's queue before it awaits earlier sends.
const QUEUE_FULL_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Where a record's delivery report came back: partition and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stored {
    pub(super) partition: i32,
    pub(super) offset: i64,
}

impl Inner {
    /// Makes sure `topic` exists (once per process and topic, unless a publish to it fails).
    pub(super) async fn ensure_topic(&self, topic: &str) -> Result<(), BusError> {
        let Topics::Create {
            partitions,
            replication_factor,
        } = self.settings.topics
        else {
            return Ok(());
        };
        if self
            .topics_made
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(topic)
        {
            return Ok(());
        }
        let new = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(replication_factor),
        );
        let options = AdminOptions::new()
            .request_timeout(Some(super::builder::DEFAULT_REQUEST_TIMEOUT))
            .operation_timeout(Some(super::builder::DEFAULT_REQUEST_TIMEOUT));
        let results = self
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| BusError::Connection(format!("creating topic {topic}: {e}").into()))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BusError::broker(format!("creating topic {name}: {code}")));
                }
            }
        }
        self.topics_made
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_owned());
        Ok(())
    }

    /// Validates the name and returns its topic, created if the bus creates topics.
    pub(super) async fn prepare(&self, kind: Kind, name: &str) -> Result<String, BusError> {
        validate_name(name)?;
        let topic = naming::topic(&self.settings.prefix, kind, name);
        self.ensure_topic(&topic).await?;
        Ok(topic)
    }

    /// Hands one record to librdkafka; its future resolves with the broker's acknowledgement.
    /// Waits (awaiting `pending`'s oldest) while librdkafka's queue is full.
    pub(super) async fn start_send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: OwnedHeaders,
        pending: &mut VecDeque<DeliveryFuture>,
        stored: &mut Vec<Stored>,
    ) -> Result<DeliveryFuture, BusError> {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        loop {
            match self.producer.send_result(record) {
                Ok(future) => return Ok(future),
                Err((KafkaError::MessageProduction(Code::QueueFull), back)) => {
                    record = back;
                    match pending.pop_front() {
                        Some(oldest) => stored.push(confirm(oldest).await?),
                        None => tokio::time::sleep(QUEUE_FULL_PAUSE).await,
                    }
                }
                Err((error, _)) => return Err(BusError::NotConfirmed(error.into())),
            }
        }
    }

    /// Sends envelopes and waits for every acknowledgement; librdkafka pipelines them, and
    /// the idempotent producer keeps each partition's order through its retries.
    pub(super) async fn send_all(
        &self,
        kind: Kind,
        name: &str,
        envelopes: &[Envelope],
    ) -> Result<Vec<Stored>, BusError> {
        let topic = self.prepare(kind, name).await?;
        let result = async {
            let mut pending = VecDeque::with_capacity(envelopes.len());
            let mut stored = Vec::with_capacity(envelopes.len());
            for envelope in envelopes {
                let envelope = outgoing_for(
                    &*self.settings.propagation,
                    Publication::to(name).on("kafka"),
                    envelope,
                );
                let (headers, value) = headers::encode(&envelope, self.settings.mode);
                let future = self
                    .start_send(
                        &topic,
                        Some(envelope.ordering_key().as_bytes()),
                        Some(&value),
                        headers,
                        &mut pending,
                        &mut stored,
                    )
                    .await?;
                pending.push_back(future);
            }
            for future in pending {
                stored.push(confirm(future).await?);
            }
            Ok(stored)
        }
        .await;
        crate::metrics::sent("kafka", name, envelopes.len(), result.as_ref().err());
        if result.is_err() {
            // The topic may be gone (deleted by an operator): ask the broker again next time.
            self.topics_made
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&topic);
        }
        result
    }
}

/// Awaits one delivery report.
pub(super) async fn confirm(future: DeliveryFuture) -> Result<Stored, BusError> {
    match future.await {
        Ok(Ok(delivery)) => Ok(Stored {
            partition: delivery.partition,
            offset: delivery.offset,
        }),
        Ok(Err((error, _))) => Err(BusError::NotConfirmed(error.into())),
        Err(_) => Err(BusError::Closed),
    }
}
