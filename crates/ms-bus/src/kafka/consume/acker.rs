//! Settling one record: in the tracker (ack, retry, abandon) and, for a dead letter, on the
//! dead-letter topic first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rdkafka::message::{Header, OwnedHeaders};

use super::Shared;
use super::tracker::{Record, Ticket};
use crate::kafka::publish::confirm;
use crate::{Acker, BusError, DeliveryInfo, dead_letter};

/// Settles one record. Dropped unsettled (an aborted consumer), the record stays unsettled:
/// its key and its partition's commit wait, and the partition's next owner gets it again.
pub(super) struct KafkaAcker {
    shared: Arc<Shared>,
    ticket: Ticket,
    record: Arc<Record>,
    attempt: u32,
    settled: AtomicBool,
}

impl KafkaAcker {
    pub(super) fn new(
        shared: Arc<Shared>,
        ticket: Ticket,
        record: Arc<Record>,
        attempt: u32,
    ) -> Self {
        Self {
            shared,
            ticket,
            record,
            attempt,
            settled: AtomicBool::new(false),
        }
    }

    /// Marks the record done in the tracker and wakes the stream (the key's next record may
    /// start) and any revocation waiting for handlers.
    fn done(&self) {
        if self.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        let readied = self.shared.tracker().settle(self.ticket).readied;
        if readied {
            self.shared.ready.notify_one();
        }
        self.shared.settled.notify_all();
    }
}

impl Drop for KafkaAcker {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::Acquire) {
            self.shared.tracker().abandon(self.ticket);
            self.shared.settled.notify_all();
        }
    }
}

impl Acker for KafkaAcker {
    fn ack(&self) -> BoxFuture<'_, Result<(), BusError>> {
        self.done();
        Box::pin(std::future::ready(Ok(())))
    }

    fn retry(&self, delay: Duration) -> BoxFuture<'_, Result<(), BusError>> {
        if !self.settled.swap(true, Ordering::AcqRel) {
            self.shared.tracker().retry_later(self.ticket);
            self.shared.settled.notify_all();
            let shared = self.shared.clone();
            let ticket = self.ticket;
            // The record waits in memory, its key's later records behind it; a revocation
            // meanwhile drops it from the tracker and the next owner reads it again.
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if shared.tracker().retry_due(ticket) {
                    shared.ready.notify_one();
                }
            });
        }
        Box::pin(std::future::ready(Ok(())))
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
                origin: self.shared.origin.clone(),
                group: self.shared.group.clone(),
                headers: Vec::new(),
            };
            let mut headers = OwnedHeaders::new_with_capacity(self.record.headers.len() + 4);
            for (name, value) in &self.record.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: value.as_deref(),
                });
            }
            for (name, value) in dead_letter::headers(&info, reason) {
                headers = headers.insert(Header {
                    key: &name,
                    value: Some(&value),
                });
            }
            let inner = &self.shared.inner;
            let mut pending = std::collections::VecDeque::new();
            let mut stored = Vec::new();
            let future = inner
                .start_send(
                    &self.shared.dead_letter_topic,
                    self.record.key.as_deref(),
                    self.record.payload.as_deref(),
                    headers,
                    &mut pending,
                    &mut stored,
                )
                .await?;
            confirm(future).await?;
            // Only once the dead letter is stored may the commit pass the original.
            self.done();
            Ok(())
        })
    }

    fn in_progress(&self) -> BoxFuture<'_, Result<(), BusError>> {
        // Kafka has no per-message deadline: an unsettled record is never redelivered while
        // its partition stays with this member (it holds the partition's commit instead).
        Box::pin(std::future::ready(Ok(())))
    }
}
