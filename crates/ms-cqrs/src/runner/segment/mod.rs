//! One segment of a pipeline: the events of the keys that hash to it, applied in order, in
//! batches, each batch in one transaction with the segment's checkpoint.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ms_bus::{Acker, Envelope};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument as _;

use super::policy::LastResort;
use super::progress::Progress;
use super::shared::Shared;
use crate::projection::{ApplyContext, handles};
use crate::store::Store;
use crate::{ApplyError, Projection, ProjectionError};

mod checkpoint;
mod parking;
mod retry;
mod sequence;
mod settle;

use parking::parked_row;
use sequence::sequence_of;

/// How often a segment with nothing to apply still stores how far the log has moved past
/// it, so that a restart does not re-read what its neighbours applied.
const IDLE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a delivery that arrived ahead of its key's previous event waits before it is
/// delivered again.
const OUT_OF_ORDER_DELAY: Duration = Duration::from_millis(50);
/// After this many deliveries, an event still ahead of its key's previous one is given up
/// on: the previous one is taken as lost upstream, and the policy's last resort applies
/// (about ten seconds of redeliveries at [`OUT_OF_ORDER_DELAY`]).
const OUT_OF_ORDER_MAX_DELIVERIES: u32 = 200;
/// The longest wait between attempts when the database itself fails.
const MAX_INFRA_DELAY: Duration = Duration::from_secs(5);

/// What flows from the reader to a segment.
pub(crate) enum Item {
    /// One event.
    Work(Work),
    /// The reader has dispatched everything up to this position.
    Mark(i64),
    /// A request from the handle, served between batches.
    Control(Control),
}

/// Requests served by the segment that owns the key.
pub(crate) enum Control {
    Replay {
        key: String,
        reply: oneshot::Sender<Result<u64, ProjectionError>>,
    },
    Discard {
        key: String,
        reply: oneshot::Sender<Result<u64, ProjectionError>>,
    },
}

/// One event to apply.
pub(crate) struct Work {
    pub(crate) position: Option<i64>,
    pub(crate) key: String,
    /// The stored JSON (log sources): decoded in the segment, in parallel with the others.
    pub(crate) raw: Option<String>,
    pub(crate) envelope: Option<Envelope>,
    pub(crate) delivery: Option<(Arc<dyn Acker>, u32)>,
    /// The bus delivery's ticket in the progress's in-flight set.
    pub(crate) ticket: Option<u64>,
}

impl Work {
    /// Decodes the stored JSON once; afterwards `envelope` is set.
    fn decode(&mut self) -> Result<(), ApplyError> {
        if self.envelope.is_none() {
            let raw = self.raw.as_deref().unwrap_or_default();
            let envelope = ms_bus::codec::from_json(raw.as_bytes()).map_err(|e| {
                ApplyError::permanent(format!("the stored envelope does not decode: {e}"))
            })?;
            self.envelope = Some(envelope);
        }
        Ok(())
    }

    fn envelope(&self) -> Result<&Envelope, ApplyError> {
        self.envelope
            .as_ref()
            .ok_or_else(|| ApplyError::permanent("no envelope"))
    }
}

/// What one event came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Skipped,
    Parked,
    /// Seen before (bus sources): settled without applying.
    Duplicate,
    /// Ahead of its key's previous event (bus sources): delivered again later.
    OutOfOrder,
}

/// A failure while handling one event: the projection's, or the database's around it.
enum Failure {
    Apply(ApplyError),
    Infra(sqlx::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        Self::Infra(error)
    }
}

pub(crate) struct Segment<DB: Store, P> {
    pub(crate) shared: Arc<Shared<DB, P>>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) index: usize,
    pub(crate) version: i32,
    pub(crate) ctx: ApplyContext,
    pub(crate) committed: i64,
    pub(crate) parked_keys: HashSet<String>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) last_checkpoint_at: Instant,
}

impl<DB: Store, P: Projection<DB>> Segment<DB, P> {
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Item>) {
        let batch_size = self.shared.config.batch_size;
        while let Some(first) = rx.recv().await {
            let mut batch = Vec::with_capacity(batch_size);
            let mut mark = None;
            let mut control = None;
            let mut closed = false;
            take(first, &mut batch, &mut mark, &mut control);
            // From configuration: a timeout too long for the clock waits for a full batch.
            let deadline =
                tokio::time::Instant::now().checked_add(self.shared.config.batch_timeout);
            while batch.len() < batch_size && control.is_none() {
                match rx.try_recv() {
                    Ok(item) => take(item, &mut batch, &mut mark, &mut control),
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                    // A mark means the reader has handed over all it had: do not wait.
                    Err(mpsc::error::TryRecvError::Empty) if mark.is_some() => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        let next = match deadline {
                            Some(deadline) => tokio::time::timeout_at(deadline, rx.recv()).await,
                            None => Ok(rx.recv().await),
                        };
                        match next {
                            Ok(Some(item)) => take(item, &mut batch, &mut mark, &mut control),
                            Ok(None) => {
                                closed = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
            if !self.process(batch, mark).await {
                return;
            }
            if let Some(control) = control {
                self.serve(control).await;
            }
            if closed {
                break;
            }
        }
    }

    /// Applies a batch; false when the runner must stop.
    async fn process(&mut self, mut batch: Vec<Work>, mark: Option<i64>) -> bool {
        if batch.is_empty() {
            if let Some(mark) = mark {
                self.idle_mark(mark).await;
            }
            return true;
        }
        let target = batch
            .iter()
            .filter_map(|w| w.position)
            .max()
            .into_iter()
            .chain(mark)
            .max();
        match self.try_batch(&mut batch, target).await {
            Ok(outcomes) => {
                self.settle(&batch, &outcomes).await;
                if let Some(target) = target {
                    self.advance(target);
                }
                true
            }
            Err(failure) => {
                if let Failure::Infra(e) = &failure {
                    self.progress.error(&e);
                }
                // Isolate: one event per transaction, so the failing one is found and
                // handled by the policy while the others commit.
                for work in &mut batch {
                    if !self.process_one(work).await {
                        return false;
                    }
                }
                if let Some(mark) = mark {
                    self.idle_mark(mark).await;
                }
                true
            }
        }
    }

    async fn try_batch(
        &mut self,
        batch: &mut [Work],
        target: Option<i64>,
    ) -> Result<Vec<Outcome>, Failure> {
        let mut tx = self.shared.pool.begin().await?;
        let mut sequences = HashMap::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for work in batch.iter_mut() {
            outcomes.push(self.step(&mut tx, work, &mut sequences).await?);
        }
        if let Some(target) = target {
            self.save_checkpoint(&mut tx, target).await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// The projection's `apply`, under the event's trace context and correlation ID.
    async fn apply(
        &self,
        conn: &mut DB::Connection,
        envelope: &Envelope,
        ctx: &ApplyContext,
    ) -> Result<(), ApplyError> {
        let (id, span) = self.shared.propagation.handler_context(envelope);
        let applied = self
            .shared
            .projection
            .apply(conn, envelope, ctx)
            .instrument(span);
        match id {
            Some(id) => id.scope(applied).await,
            None => applied.await,
        }
    }

    /// Handles one event inside `conn`'s transaction.
    async fn step(
        &mut self,
        conn: &mut DB::Connection,
        work: &mut Work,
        sequences: &mut HashMap<String, i64>,
    ) -> Result<Outcome, Failure> {
        let position = work.position;
        work.decode().map_err(Failure::Apply)?;
        let work = &*work;
        let envelope = work.envelope().map_err(Failure::Apply)?;
        let sequence = if work.delivery.is_some() {
            match self
                .check_delivery(conn, envelope, &work.key, sequences)
                .await?
            {
                Ok(sequence) => sequence,
                Err(Outcome::OutOfOrder)
                    if work
                        .delivery
                        .as_ref()
                        .is_some_and(|(_, attempt)| *attempt >= OUT_OF_ORDER_MAX_DELIVERIES) =>
                {
                    return Err(Failure::Apply(ApplyError::permanent(format!(
                        "sequence gap: key `{}` is still missing the event before sequence {} after {OUT_OF_ORDER_MAX_DELIVERIES} deliveries",
                        work.key,
                        sequence_of(envelope).unwrap_or_default()
                    ))));
                }
                Err(outcome) => return Ok(outcome),
            }
        } else {
            None
        };
        let blocked = self.blocks_keys() && self.parked_keys.contains(&work.key);
        let outcome = if blocked {
            let row = parked_row(
                self.version,
                work,
                envelope,
                "blocked behind an earlier parked event of its key",
                true,
                0,
            );
            DB::park(conn, &self.shared.tables, &self.shared.name, &row).await?;
            Outcome::Parked
        } else if handles(self.shared.projection.event_types(), envelope.ty()) {
            let replaying = self.progress.replaying(self.index, position);
            let ctx = self.ctx.at(position, replaying);
            self.apply(conn, envelope, &ctx)
                .await
                .map_err(Failure::Apply)?;
            Outcome::Applied
        } else {
            Outcome::Skipped
        };
        if let Some(sequence) = sequence {
            self.advance_sequence(conn, &work.key, sequence, sequences)
                .await?;
        }
        Ok(outcome)
    }

    fn blocks_keys(&self) -> bool {
        matches!(
            self.shared.config.policy.last_resort,
            LastResort::Park { block_key: true }
        )
    }
}

fn take(item: Item, batch: &mut Vec<Work>, mark: &mut Option<i64>, control: &mut Option<Control>) {
    match item {
        Item::Work(work) => batch.push(work),
        Item::Mark(position) => *mark = Some(mark.map_or(position, |m: i64| m.max(position))),
        Item::Control(c) => *control = Some(c),
    }
}
