//! The poller thread: the one place librdkafka's consumer is used. It polls, feeds the
//! tracker, applies back-pressure, commits, and runs the rebalance callbacks; a revocation
//! blocks it (not a tokio worker) while the partition's handlers finish.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::Shared;
use super::back_pressure::{BackPressure, Next};
use super::tracker::{Commit, Record};
use crate::BusError;
use crate::kafka::builder::DEFAULT_REQUEST_TIMEOUT;

/// How long one poll waits for a record; also how often the thread looks at commits,
/// back-pressure and shutdown while no record arrives.
const POLL_TIMEOUT: Duration = Duration::from_millis(20);
/// How long a revocation sleeps between looks at its partitions' handlers (it is woken by
/// each settlement; this bounds a missed wake-up).
const REVOKE_RECHECK: Duration = Duration::from_millis(50);
/// After an empty first assignment (more members than partitions, or a cooperative
/// rebalance's first round), how long subscribing waits for partitions before it returns.
const EMPTY_ASSIGNMENT_GRACE: Duration = Duration::from_secs(3);

/// Where the member stands in its group, for `subscribe` to wait on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Join {
    Joining,
    /// Assigned this many partitions of the topic.
    Assigned(usize),
    Failed(String),
}

/// Creates the consumer, starts its thread, and waits (bounded by the join timeout) until the
/// group gave the member partitions.
pub(super) async fn start(shared: Arc<Shared>, start_at_end: bool) -> Result<(), BusError> {
    let settings = &shared.inner.settings;
    let (joined, mut join) = watch::channel(Join::Joining);
    let context = PollerContext {
        shared: shared.clone(),
        revoke_timeout: settings.revoke_timeout,
        joined,
    };
    let consumer: BaseConsumer<PollerContext> = settings
        .consumer_config(&shared.kafka_group)
        .create_with_context(context)
        .map_err(|e| BusError::broker(format!("creating the Kafka consumer: {e}")))?;
    let commit_interval = settings.commit_interval;
    std::thread::Builder::new()
        .name(format!("ms-bus-kafka {}", shared.kafka_group))
        .spawn(move || run(&consumer, start_at_end, commit_interval))
        .map_err(|e| BusError::broker(format!("starting the Kafka poller thread: {e}")))?;
    let deadline = tokio::time::Instant::now() + settings.join_timeout;
    let mut empty_since = None;
    loop {
        let state = join.borrow_and_update().clone();
        let wait_until = match state {
            Join::Assigned(n) if n > 0 => return Ok(()),
            Join::Failed(reason) => return Err(BusError::Connection(reason.into())),
            Join::Assigned(_) => {
                let since = *empty_since.get_or_insert_with(tokio::time::Instant::now);
                deadline.min(since + EMPTY_ASSIGNMENT_GRACE)
            }
            Join::Joining => deadline,
        };
        match tokio::time::timeout_at(wait_until, join.changed()).await {
            Ok(Ok(())) => {}
            // The thread ended without a word (it cannot: it always reports), or the wait is
            // over: the member goes on joining in the background.
            Ok(Err(_)) | Err(_) => {
                if empty_since.is_none() {
                    tracing::warn!(group = %shared.kafka_group, "no partitions assigned within the join timeout; joining in the background");
                }
                return Ok(());
            }
        }
    }
}

fn run(consumer: &BaseConsumer<PollerContext>, start_at_end: bool, commit_interval: Duration) {
    let context = consumer.context();
    let shared = &context.shared;
    let prepared = if start_at_end {
        start_new_group_at_end(consumer, &shared.topic)
    } else {
        Ok(())
    }
    .and_then(|()| consumer.subscribe(&[&shared.topic]));
    if let Err(e) = prepared {
        context.joined.send_replace(Join::Failed(format!(
            "subscribing to {}: {e}",
            shared.topic
        )));
        finish(shared);
        return;
    }
    let mut back_pressure = BackPressure::default();
    let mut last_commit = Instant::now();
    let mut dropped_at = None;
    loop {
        if shared.stream_dropped.load(Ordering::Acquire) {
            let since = *dropped_at.get_or_insert_with(Instant::now);
            // Handlers that still run may settle (a graceful shutdown drains them); an
            // aborted consumer's ackers are dropped and count as done here.
            if shared.tracker().handed_out() == 0 || since.elapsed() >= context.revoke_timeout {
                break;
            }
        }
        match back_pressure.next(consumer, shared) {
            Next::Poll => match consumer.poll(POLL_TIMEOUT) {
                Some(Ok(message)) => {
                    let record = owned(&message);
                    if shared.tracker().fetched(record) {
                        shared.ready.notify_one();
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, topic = %shared.topic, "Kafka consumer error; librdkafka retries");
                }
                None => {}
            },
            Next::Wait => {
                // Woken by each settlement; the timeout bounds a wake-up missed between the
                // look at the tracker and this wait.
                let tracker = shared.tracker();
                let _ = shared.settled.wait_timeout(tracker, POLL_TIMEOUT);
            }
        }
        if last_commit.elapsed() >= commit_interval {
            let commits = shared.tracker().commits();
            commit(consumer, &shared.topic, &commits, CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    let commits = shared.tracker().commits();
    commit(consumer, &shared.topic, &commits, CommitMode::Sync);
    // Dropping the consumer closes it: librdkafka revokes the assignment (the callback
    // commits what settled since) and leaves the group, so the partitions move at once.
    finish(shared);
}

/// Marks the subscription over and wakes its stream.
fn finish(shared: &Shared) {
    shared.poller_done.store(true, Ordering::Release);
    shared.ready.notify_one();
}

pub(super) fn partitions(topic: &str, ids: &[i32]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(ids.len());
    for id in ids {
        tpl.add_partition(topic, *id);
    }
    tpl
}

/// Sends commits (offset and metadata per partition); failures are logged and the partition's
/// commit is sent again next time.
fn commit(
    consumer: &BaseConsumer<PollerContext>,
    topic: &str,
    commits: &[Commit],
    mode: CommitMode,
) {
    if commits.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::with_capacity(commits.len());
    for (partition, offset, metadata) in commits {
        let mut element = tpl.add_partition(topic, *partition);
        if element.set_offset(Offset::Offset(*offset)).is_ok() {
            element.set_metadata(metadata);
        }
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::warn!(error = %e, %topic, "committing offsets failed; retried at the next interval");
        let context = consumer.context();
        let mut tracker = context.shared.tracker();
        for (partition, _, _) in commits {
            tracker.commit_failed(*partition);
        }
    }
}

/// Commits the end of each partition for a group that has no offset there yet, before the
/// member joins: a new group then reads what is published from now on, even if its first
/// member gets its partitions only later (a rebalance takes a while). A group that already
/// has members refuses the commit; its offsets are theirs, and `auto.offset.reset=earliest`
/// covers the rest.
fn start_new_group_at_end(consumer: &BaseConsumer<PollerContext>, topic: &str) -> KafkaResult<()> {
    let metadata = consumer.fetch_metadata(Some(topic), DEFAULT_REQUEST_TIMEOUT)?;
    let ids: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| {
            t.partitions()
                .iter()
                .map(rdkafka::metadata::MetadataPartition::id)
        })
        .collect();
    let committed = consumer.committed_offsets(partitions(topic, &ids), DEFAULT_REQUEST_TIMEOUT)?;
    let mut ends = TopicPartitionList::new();
    for element in committed.elements_for_topic(topic) {
        if element.offset() == Offset::Invalid {
            let (_, high) =
                consumer.fetch_watermarks(topic, element.partition(), DEFAULT_REQUEST_TIMEOUT)?;
            ends.add_partition_offset(topic, element.partition(), Offset::Offset(high))?;
        }
    }
    if ends.count() > 0
        && let Err(e) = consumer.commit(&ends, CommitMode::Sync)
    {
        tracing::debug!(error = %e, %topic, "the group has members already: its offsets stand");
    }
    Ok(())
}

/// An owned copy of a fetched message.
fn owned(message: &BorrowedMessage<'_>) -> Record {
    // rdkafka panics on a header name that is not UTF-8 (it unwraps `CStr::to_str`): such a
    // record is delivered as undecodable, so that the runtime dead-letters it, instead of the
    // thread dying.
    let headers = message.headers().map(|headers| {
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect::<Vec<_>>()
        }))
    });
    let (headers, unreadable_headers) = match headers {
        None => (Vec::new(), false),
        Some(Ok(headers)) => (headers, false),
        Some(Err(_)) => (Vec::new(), true),
    };
    Record {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers,
        unreadable_headers,
    }
}

/// The consumer's callbacks, run on the poller thread.
pub(super) struct PollerContext {
    shared: Arc<Shared>,
    revoke_timeout: Duration,
    joined: watch::Sender<Join>,
}

impl ClientContext for PollerContext {}

impl ConsumerContext for PollerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.revoke(consumer, tpl);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.assign(consumer, tpl),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, group = %self.shared.kafka_group, "rebalance failed");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, group = %self.shared.kafka_group, "an offset commit failed; sent again at the next interval");
            let mut tracker = self.shared.tracker();
            for element in offsets.elements_for_topic(&self.shared.topic) {
                tracker.commit_failed(element.partition());
            }
        }
    }
}

impl PollerContext {
    /// Partitions go: stop handing out their records, wait (bounded) for their handlers,
    /// commit what is settled, then let librdkafka release them.
    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let shared = &self.shared;
        let ids: Vec<i32> = tpl
            .elements_for_topic(&shared.topic)
            .iter()
            .map(rdkafka::topic_partition_list::TopicPartitionListElem::partition)
            .collect();
        let deadline = Instant::now() + self.revoke_timeout;
        let mut tracker = shared.tracker();
        for id in &ids {
            tracker.start_revoke(*id);
        }
        loop {
            let busy: usize = ids.iter().map(|id| tracker.in_handlers(*id)).sum();
            let now = Instant::now();
            if busy == 0 || now >= deadline {
                if busy > 0 {
                    tracing::warn!(group = %shared.kafka_group, busy, "revoke timeout: releasing partitions with records still in handlers; their next owner redelivers them");
                }
                break;
            }
            tracker = shared
                .settled
                .wait_timeout(tracker, REVOKE_RECHECK.min(deadline - now))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        let commits: Vec<Commit> = ids.iter().filter_map(|id| tracker.release(*id)).collect();
        drop(tracker);
        // A lost assignment (the member was dropped from the group) cannot commit: its
        // partitions have new owners already.
        if !consumer.assignment_lost() {
            commit(consumer, &shared.topic, &commits, CommitMode::Sync);
        }
    }

    /// Partitions come: each gets an empty book, with what the group committed for it (the
    /// metadata says which records were delivered before).
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let shared = &self.shared;
        let ids: Vec<i32> = tpl
            .elements_for_topic(&shared.topic)
            .iter()
            .map(rdkafka::topic_partition_list::TopicPartitionListElem::partition)
            .collect();
        let committed = consumer
            .committed_offsets(partitions(&shared.topic, &ids), DEFAULT_REQUEST_TIMEOUT)
            .ok();
        {
            let mut tracker = shared.tracker();
            for id in &ids {
                let prior = committed
                    .as_ref()
                    .and_then(|c| c.find_partition(&shared.topic, *id))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(offset) => Some((offset, metadata_of(&e))),
                        _ => None,
                    });
                tracker.assign(*id, prior);
            }
        }
        let total = shared.tracker().assigned().len();
        self.joined.send_replace(Join::Assigned(total));
    }
}

/// A commit's metadata, if it is text (rdkafka panics on metadata that is not UTF-8, which
/// another group member's client may have written).
fn metadata_of(
    element: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>,
) -> Option<String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| element.metadata().to_owned())).ok()
}
