//! A pipeline: one version of a projection being fed from its source: a reader task that
//! reads (or receives) events and routes them by key to segment tasks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use ms_bus::{Deliveries, Subscriber, Subscription};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::progress::Progress;
use super::segment::{Control, Item, Segment, Work};
use super::shared::Shared;
use super::status::RunnerState;
use super::supervise;
use crate::event_log::EventLog;
use crate::key::segment_of;
use crate::projection::ApplyContext;
use crate::store::{Store, now_micros};
use crate::{Projection, ProjectionError};

/// How many committed events a reader numbers per sequencer transaction (PostgreSQL).
const SEQUENCE_LIMIT: i64 = 10_000;

/// Where a pipeline's events come from.
pub(crate) enum Feed<DB: Store> {
    Log(EventLog<DB>),
    Bus(Arc<dyn Subscriber>, Subscription),
}

/// A running pipeline.
pub(crate) struct Pipeline {
    pub(crate) progress: Arc<Progress>,
    pub(crate) stop: watch::Sender<bool>,
    senders: Vec<mpsc::Sender<Item>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts a pipeline for `version`, resuming at its stored checkpoints.
    pub(crate) async fn start<DB: Store, P: Projection<DB>>(
        shared: &Arc<Shared<DB, P>>,
        feed: &Feed<DB>,
        version: i32,
        replay: i64,
    ) -> Result<Self, ProjectionError> {
        let segments = usize::from(shared.config.segments);
        let mut conn = shared.pool.acquire().await?;
        let mut starts = vec![0_i64; segments];
        for (segment, position) in
            DB::checkpoints(&mut conn, &shared.tables, &shared.name, version).await?
        {
            if let Some(start) = usize::try_from(segment)
                .ok()
                .and_then(|s| starts.get_mut(s))
            {
                *start = position;
            }
        }
        let parked: HashSet<String> =
            DB::parked_keys(&mut conn, &shared.tables, &shared.name, version)
                .await?
                .into_iter()
                .collect();
        drop(conn);

        let progress = Arc::new(Progress::new(&starts, replay));
        let stop = watch::Sender::new(false);
        let ctx = ApplyContext::new(
            Arc::clone(&shared.name),
            version,
            shared.projection.tables(),
        );
        let capacity = shared.config.batch_size.saturating_mul(2).max(16);
        let mut senders = Vec::with_capacity(segments);
        let mut tasks = Vec::with_capacity(segments + 1);
        for (index, start) in starts.iter().enumerate() {
            let (tx, rx) = mpsc::channel(capacity);
            senders.push(tx);
            let segment = Segment {
                shared: Arc::clone(shared),
                progress: Arc::clone(&progress),
                index,
                version,
                ctx: ctx.clone(),
                committed: *start,
                parked_keys: parked
                    .iter()
                    .filter(|key| usize::from(segment_of(key, shared.config.segments)) == index)
                    .cloned()
                    .collect(),
                stop: stop.clone(),
                last_checkpoint_at: Instant::now(),
            };
            tasks.push(supervise::spawn(
                format!("segment {index}"),
                Arc::clone(&progress),
                stop.clone(),
                segment.run(rx),
            ));
        }
        let reader = match feed {
            Feed::Log(log) => supervise::spawn(
                "the event-log reader".to_owned(),
                Arc::clone(&progress),
                stop.clone(),
                read_log(
                    Arc::clone(shared),
                    log.clone(),
                    Arc::clone(&progress),
                    senders.clone(),
                    starts,
                    stop.subscribe(),
                ),
            ),
            Feed::Bus(subscriber, subscription) => {
                let deliveries = subscriber.subscribe(subscription).await?;
                supervise::spawn(
                    "the bus reader".to_owned(),
                    Arc::clone(&progress),
                    stop.clone(),
                    read_bus(
                        shared.config.segments,
                        deliveries,
                        Arc::clone(&progress),
                        senders.clone(),
                        stop.subscribe(),
                    ),
                )
            }
        };
        tasks.push(reader);
        progress.set_state(RunnerState::Running { caught_up: false });
        Ok(Self {
            progress,
            stop,
            senders,
            tasks,
        })
    }

    /// Sends a request to the segment that owns `key`.
    /// Whether the segment took the request (false: it has stopped).
    pub(crate) async fn control(&self, key: &str, control: Control) -> bool {
        let segment = usize::from(segment_of(
            key,
            u16::try_from(self.senders.len()).unwrap_or(1),
        ));
        match self.senders.get(segment) {
            Some(sender) => sender.send(Item::Control(control)).await.is_ok(),
            None => false,
        }
    }

    /// Stops reading, lets the segments finish what they hold, and waits for them.
    pub(crate) async fn shutdown(mut self) {
        self.stop.send_replace(true);
        self.senders.clear();
        for task in self.tasks.drain(..) {
            // A panic is caught and reported inside the task (`supervise`); what is left is a
            // task the runtime cancelled, which is reported too rather than dropped.
            if let Err(error) = task.await {
                self.progress.set_state(RunnerState::Failed(format!(
                    "a runner task ended abnormally: {error}"
                )));
            }
        }
        if !matches!(self.progress.state(), RunnerState::Failed(_)) {
            self.progress.set_state(RunnerState::Stopped);
        }
    }
}

async fn read_log<DB: Store, P: Projection<DB>>(
    shared: Arc<Shared<DB, P>>,
    log: EventLog<DB>,
    progress: Arc<Progress>,
    senders: Vec<mpsc::Sender<Item>>,
    starts: Vec<i64>,
    mut stop: watch::Receiver<bool>,
) {
    let segments = shared.config.segments;
    let page = u32::try_from(
        shared
            .config
            .batch_size
            .saturating_mul(usize::from(segments)),
    )
    .unwrap_or(u32::MAX)
    .clamp(64, 10_000);
    let mut cap = progress.cap.subscribe();
    let mut after = starts.iter().copied().min().unwrap_or(0);
    let mut page_was_full = false;
    loop {
        if *stop.borrow() {
            break;
        }
        // Number new rows only once the numbered ones are read: while pages come back full,
        // there is readable work ahead and the sequencer's round trips would only slow it.
        if !page_was_full
            && let Err(e) = DB::log_sequence(&shared.pool, log.quoted(), SEQUENCE_LIMIT).await
        {
            progress.error(&e);
        }
        let until = *cap.borrow_and_update();
        let rows = match log.read_raw(&shared.pool, after, until, page).await {
            Ok(rows) => rows,
            Err(e) => {
                progress.error(&e);
                page_was_full = false;
                idle(&shared, &mut stop, &mut cap).await;
                continue;
            }
        };
        page_was_full = u32::try_from(rows.len()).is_ok_and(|n| n >= page);
        if rows.is_empty() {
            match DB::log_head(&shared.pool, log.quoted()).await {
                Ok(head) => {
                    progress
                        .head
                        .fetch_max(head, std::sync::atomic::Ordering::AcqRel);
                    let caught_up = progress.position() >= head;
                    if matches!(progress.state(), RunnerState::Running { .. }) {
                        progress.set_state(RunnerState::Running { caught_up });
                    }
                }
                Err(e) => progress.error(&e),
            }
            idle(&shared, &mut stop, &mut cap).await;
            continue;
        }
        progress.dispatched(rows.iter().map(|r| (r.position, r.recorded_at)));
        let last = rows.last().map_or(after, |r| r.position);
        progress
            .head
            .fetch_max(last, std::sync::atomic::Ordering::AcqRel);
        for row in rows {
            let segment = usize::from(segment_of(&row.key, segments));
            if row.position <= starts[segment] {
                continue;
            }
            let work = Work {
                position: Some(row.position),
                key: row.key,
                raw: Some(row.envelope),
                envelope: None,
                delivery: None,
                ticket: None,
            };
            if senders[segment].send(Item::Work(work)).await.is_err() {
                return;
            }
        }
        after = last;
        for sender in &senders {
            if sender.send(Item::Mark(after)).await.is_err() {
                return;
            }
        }
    }
}

/// Waits for the next poll, a stop, or a moved cap.
async fn idle<DB: Store, P>(
    shared: &Shared<DB, P>,
    stop: &mut watch::Receiver<bool>,
    cap: &mut watch::Receiver<i64>,
) {
    tokio::select! {
        () = tokio::time::sleep(shared.config.poll_interval) => {}
        _ = stop.changed() => {}
        _ = cap.changed() => {}
    }
}

async fn read_bus(
    segments: u16,
    mut deliveries: Deliveries,
    progress: Arc<Progress>,
    senders: Vec<mpsc::Sender<Item>>,
    mut stop: watch::Receiver<bool>,
) {
    progress.mark_bus();
    loop {
        let next = tokio::select! {
            next = deliveries.next() => next,
            _ = stop.changed() => break,
        };
        match next {
            None => break,
            Some(Err(e)) => progress.error(&e),
            Some(Ok(delivery)) => {
                let (message, info, acker) = delivery.into_parts();
                match message {
                    Err(e) => {
                        // Not an event at all: the bus's own dead letter keeps its bytes.
                        let reason = format!("not a CloudEvents event: {e}");
                        if let Err(e) = acker.dead_letter(&reason).await {
                            progress.error(&e);
                        }
                    }
                    Ok(envelope) => {
                        let key = envelope.ordering_key().to_owned();
                        let segment = usize::from(segment_of(&key, segments));
                        let created_at = envelope.time().map_or_else(now_micros, |time| {
                            i64::try_from(time.unix_timestamp_nanos() / 1_000)
                                .unwrap_or_else(|_| now_micros())
                        });
                        let work = Work {
                            position: None,
                            key,
                            raw: None,
                            envelope: Some(envelope),
                            delivery: Some((acker, info.attempt)),
                            ticket: Some(progress.delivered(created_at)),
                        };
                        if senders[segment].send(Item::Work(work)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
}
