//! Back-pressure on the poller: how it stops taking records while `prefetch` of them are
//! unsettled.
//!
//! A short stall is waited out without polling: librdkafka keeps the records it prefetched
//! and the poller takes them as soon as handlers settle. Only a stall longer than
//! [`PAUSE_AFTER`] pauses the partitions (the poller then polls again, for rebalances), and
//! they resume once half of the unsettled records are settled. Pausing at once would be
//! costly: librdkafka drops what it prefetched for a paused partition and fetches it again on
//! resume, and with a fast handler that round trip at every `prefetch / 2` records capped the
//! consumer at about 400 records per second on tansu (`benches/benches/bus_kafka.rs`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};

use super::Shared;
use super::poller::{PollerContext, partitions};

/// How long the poller waits for a settlement, without polling, before it pauses the
/// partitions. Far below librdkafka's `max.poll.interval.ms` (5 minutes by default), so a
/// waiting member stays in its group; rebalance callbacks wait at most this long.
pub(super) const PAUSE_AFTER: Duration = Duration::from_millis(500);

/// What the poller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Poll (records, or only events while the partitions are paused).
    Poll,
    /// Wait for a settlement instead of polling.
    Wait,
}

/// The poller's back-pressure state.
#[derive(Debug, Default)]
pub(super) struct BackPressure {
    paused: HashSet<i32>,
    full_since: Option<Instant>,
}

impl BackPressure {
    /// Decides whether the poller may poll now, pausing or resuming partitions as needed.
    pub(super) fn next(&mut self, consumer: &BaseConsumer<PollerContext>, shared: &Shared) -> Next {
        let (unsettled, assigned) = {
            let tracker = shared.tracker();
            (tracker.unsettled(), tracker.assigned())
        };
        if !self.paused.is_empty() {
            if unsettled > shared.prefetch / 2 {
                // Still full: partitions assigned meanwhile are paused too.
                self.pause(consumer, shared, &assigned);
            } else {
                let owned: Vec<i32> = self
                    .paused
                    .drain()
                    .filter(|p| assigned.contains(p))
                    .collect();
                // Partitions revoked meanwhile are no longer paused anywhere.
                let _ = consumer.resume(&partitions(&shared.topic, &owned));
                self.full_since = None;
            }
            return Next::Poll;
        }
        if unsettled < shared.prefetch {
            self.full_since = None;
            return Next::Poll;
        }
        let since = *self.full_since.get_or_insert_with(Instant::now);
        if since.elapsed() < PAUSE_AFTER {
            return Next::Wait;
        }
        self.pause(consumer, shared, &assigned);
        Next::Poll
    }

    fn pause(&mut self, consumer: &BaseConsumer<PollerContext>, shared: &Shared, assigned: &[i32]) {
        let new: Vec<i32> = assigned
            .iter()
            .copied()
            .filter(|p| !self.paused.contains(p))
            .collect();
        if !new.is_empty() && consumer.pause(&partitions(&shared.topic, &new)).is_ok() {
            self.paused.extend(new);
        }
    }
}
