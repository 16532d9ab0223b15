//! One segment of a pipeline: the events of the keys that hash to it, applied in order, in
//! batches, each batch in one transaction with the segment's checkpoint.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ms_bus::{Acker, Envelope};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument as _;

use super::pipeline::Shared;
use super::policy::LastResort;
use super::progress::Progress;
use super::status::RunnerState;
use crate::projection::{ApplyContext, handles};
use crate::store::{ParkedRow, Store, now_micros};
use crate::{ApplyError, Projection, ProjectionError};

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

    async fn save_checkpoint(
        &mut self,
        conn: &mut DB::Connection,
        position: i64,
    ) -> Result<(), sqlx::Error> {
        if position > self.committed {
            DB::save_checkpoint(
                conn,
                &self.shared.tables,
                &self.shared.name,
                self.version,
                i32::try_from(self.index).unwrap_or(i32::MAX),
                position,
            )
            .await?;
        }
        Ok(())
    }

    fn advance(&mut self, position: i64) {
        if position > self.committed {
            self.committed = position;
            self.last_checkpoint_at = Instant::now();
        }
        self.progress.done(self.index, position);
    }

    /// Nothing of this segment's up to `mark`: it is done up to there; store it now and then.
    async fn idle_mark(&mut self, mark: i64) {
        self.progress.done(self.index, mark);
        if mark > self.committed && self.last_checkpoint_at.elapsed() >= IDLE_CHECKPOINT_INTERVAL {
            let stored = async {
                let mut tx = self.shared.pool.begin().await?;
                self.save_checkpoint(&mut tx, mark).await?;
                tx.commit().await
            }
            .await;
            match stored {
                Ok(()) => self.advance(mark),
                Err(e) => self.progress.error(&e),
            }
        }
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

    /// Bus deliveries: `Ok(Some(n))` to apply sequence `n`, `Ok(None)` to apply an event
    /// without a sequence (recorded as seen), `Err(outcome)` to settle without applying.
    async fn check_delivery(
        &self,
        conn: &mut DB::Connection,
        envelope: &Envelope,
        key: &str,
        sequences: &mut HashMap<String, i64>,
    ) -> Result<Result<Option<i64>, Outcome>, Failure> {
        let (tables, name) = (&self.shared.tables, &*self.shared.name);
        match sequence_of(envelope) {
            Some(sequence) => {
                let last = match sequences.get(key) {
                    Some(last) => *last,
                    None => DB::key_sequence(conn, tables, name, self.version, key)
                        .await?
                        .unwrap_or(0),
                };
                sequences.insert(key.to_owned(), last);
                Ok(if sequence <= last {
                    Err(Outcome::Duplicate)
                } else if sequence > last + 1 {
                    Err(Outcome::OutOfOrder)
                } else {
                    Ok(Some(sequence))
                })
            }
            None => {
                // Once per event: its source and id, as CloudEvents identifies it (the id alone
                // is only unique within its source), the key the brokers and the inbox use.
                let key = envelope.dedup_key();
                let first =
                    DB::record_seen(conn, tables, name, self.version, &key, envelope.id()).await?;
                Ok(if first {
                    Ok(None)
                } else {
                    Err(Outcome::Duplicate)
                })
            }
        }
    }

    async fn advance_sequence(
        &self,
        conn: &mut DB::Connection,
        key: &str,
        sequence: i64,
        sequences: &mut HashMap<String, i64>,
    ) -> Result<(), Failure> {
        let moved = DB::advance_key_sequence(
            conn,
            &self.shared.tables,
            &self.shared.name,
            self.version,
            key,
            sequence,
        )
        .await?;
        if !moved {
            // Another instance of this projection applied it first: roll back, and the
            // retry will see it as a duplicate.
            return Err(Failure::Apply(ApplyError::transient(format!(
                "key `{key}`: sequence {sequence} was applied concurrently"
            ))));
        }
        sequences.insert(key.to_owned(), sequence);
        Ok(())
    }

    /// Settles a committed batch: counters, and the bus deliveries.
    async fn settle(&self, batch: &[Work], outcomes: &[Outcome]) {
        for (work, outcome) in batch.iter().zip(outcomes) {
            let counter = match outcome {
                Outcome::Applied => &self.progress.applied,
                Outcome::Skipped | Outcome::Duplicate => &self.progress.skipped,
                Outcome::Parked => &self.progress.parked,
                Outcome::OutOfOrder => &self.progress.out_of_order,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(ticket) = work.ticket {
                self.progress.settled(ticket);
            }
            if let Some((acker, _)) = &work.delivery {
                // A lost settlement means a redelivery, which the sequence or the seen-table
                // turns into a duplicate: logging is enough.
                let settled = if *outcome == Outcome::OutOfOrder {
                    acker.retry(OUT_OF_ORDER_DELAY).await
                } else {
                    acker.ack().await
                };
                if let Err(e) = settled {
                    self.progress
                        .error(&format!("settling a delivery failed: {e}"));
                }
            }
        }
    }

    /// Handles one event in its own transaction, retrying as the policy says; false when
    /// the runner must stop.
    async fn process_one(&mut self, work: &mut Work) -> bool {
        let policy = self.shared.config.policy;
        let mut attempt: u32 = 0;
        let mut infra_attempt: u32 = 0;
        loop {
            if *self.stop.borrow() {
                // Shutting down: leave the event to the next start (not committed, not acked).
                return false;
            }
            let result = async {
                let mut tx = self.shared.pool.begin().await?;
                let outcome = self.step(&mut tx, work, &mut HashMap::new()).await?;
                if let Some(position) = work.position {
                    self.save_checkpoint(&mut tx, position).await?;
                }
                tx.commit().await?;
                Ok::<_, Failure>(outcome)
            }
            .await;
            match result {
                Ok(outcome) => {
                    self.settle(std::slice::from_ref(work), &[outcome]).await;
                    if let Some(position) = work.position {
                        self.advance(position);
                    }
                    return true;
                }
                Err(Failure::Infra(e)) => {
                    // The database, not the event: wait for it, however long.
                    self.progress.error(&e);
                    infra_attempt = infra_attempt.saturating_add(1);
                    let delay = policy.delay(infra_attempt).min(MAX_INFRA_DELAY);
                    tokio::time::sleep(delay).await;
                }
                Err(Failure::Apply(e)) => {
                    self.progress
                        .error(&format!("applying {}: {e}", describe(work)));
                    if !e.is_permanent() && is_connection_error(&e) {
                        infra_attempt = infra_attempt.saturating_add(1);
                        tokio::time::sleep(policy.delay(infra_attempt).min(MAX_INFRA_DELAY)).await;
                        continue;
                    }
                    if e.is_permanent() || attempt >= policy.retries {
                        return self.last_resort(work, &e, attempt).await;
                    }
                    attempt += 1;
                    tokio::time::sleep(policy.delay(attempt)).await;
                }
            }
        }
    }

    /// The policy's last resort for an event that failed for good.
    async fn last_resort(&mut self, work: &mut Work, error: &ApplyError, attempts: u32) -> bool {
        match self.shared.config.policy.last_resort {
            LastResort::Stop => {
                let reason = format!("{} failed: {error}", describe(work));
                tracing::error!(projection = %self.shared.name, %reason, "projection stopped");
                self.progress.set_state(RunnerState::Failed(reason));
                self.stop.send_replace(true);
                false
            }
            LastResort::Park { block_key } => {
                let mut infra_attempt = 0_u32;
                loop {
                    match self.park(work, error, attempts).await {
                        Ok(()) => break,
                        Err(e) => {
                            self.progress.error(&e);
                            if *self.stop.borrow() {
                                return false;
                            }
                            infra_attempt = infra_attempt.saturating_add(1);
                            tokio::time::sleep(
                                self.shared
                                    .config
                                    .policy
                                    .delay(infra_attempt)
                                    .min(MAX_INFRA_DELAY),
                            )
                            .await;
                        }
                    }
                }
                tracing::warn!(projection = %self.shared.name, event = %describe(work), %error, "event parked");
                if block_key {
                    self.parked_keys.insert(work.key.clone());
                }
                self.settle(std::slice::from_ref(work), &[Outcome::Parked])
                    .await;
                if let Some(position) = work.position {
                    self.advance(position);
                }
                true
            }
        }
    }

    async fn park(
        &mut self,
        work: &mut Work,
        error: &ApplyError,
        attempts: u32,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.shared.pool.begin().await?;
        let decoded = work.decode();
        let row = match decoded.and_then(|()| work.envelope()) {
            Ok(envelope) => parked_row(
                self.version,
                work,
                envelope,
                &error.to_string(),
                false,
                attempts,
            ),
            Err(_) => ParkedRow {
                id: 0,
                version: self.version,
                key: work.key.clone(),
                position: work.position,
                event_id: String::new(),
                event_type: String::new(),
                envelope: work.raw.clone().unwrap_or_default(),
                error: error.to_string(),
                blocked: false,
                attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
                parked_at: now_micros(),
            },
        };
        DB::park(&mut tx, &self.shared.tables, &self.shared.name, &row).await?;
        // A parked event is handled as far as its key's sequence goes: the next one may come.
        if work.delivery.is_some()
            && let Some(sequence) = work.envelope.as_ref().and_then(sequence_of)
        {
            DB::advance_key_sequence(
                &mut tx,
                &self.shared.tables,
                &self.shared.name,
                self.version,
                &work.key,
                sequence,
            )
            .await?;
        }
        if let Some(position) = work.position {
            self.save_checkpoint(&mut tx, position).await?;
        }
        tx.commit().await
    }

    async fn serve(&mut self, control: Control) {
        match control {
            Control::Replay { key, reply } => {
                let result = self.replay(&key).await;
                if result.is_ok() {
                    self.parked_keys.remove(&key);
                }
                let _ = reply.send(result);
            }
            Control::Discard { key, reply } => {
                let result = async {
                    let mut tx = self.shared.pool.begin().await?;
                    let n = DB::unpark(
                        &mut tx,
                        &self.shared.tables,
                        &self.shared.name,
                        self.version,
                        &key,
                    )
                    .await?;
                    tx.commit().await?;
                    Ok(n)
                }
                .await;
                if result.is_ok() {
                    self.parked_keys.remove(&key);
                }
                let _ = reply.send(result);
            }
        }
    }

    /// Applies a key's parked events in order, in one transaction, and removes them.
    async fn replay(&mut self, key: &str) -> Result<u64, ProjectionError> {
        let (tables, name) = (&self.shared.tables, &*self.shared.name);
        let mut tx = self.shared.pool.begin().await?;
        let rows = DB::parked(&mut tx, tables, name, self.version, Some(key), i64::MAX).await?;
        for row in &rows {
            let envelope = ms_bus::codec::from_json(row.envelope.as_bytes()).map_err(|e| {
                ProjectionError::Stopped {
                    name: name.to_owned(),
                    reason: format!("parked event {} does not decode: {e}", row.id),
                }
            })?;
            if !handles(self.shared.projection.event_types(), envelope.ty()) {
                continue;
            }
            let ctx = self.ctx.at(row.position, false);
            self.apply(&mut tx, &envelope, &ctx)
                .await
                .map_err(|e| ProjectionError::Stopped {
                    name: name.to_owned(),
                    reason: format!("replaying parked event {} failed again: {e}", row.id),
                })?;
        }
        let n = DB::unpark(&mut tx, tables, name, self.version, key).await?;
        tx.commit().await?;
        self.progress.applied.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
}

fn take(item: Item, batch: &mut Vec<Work>, mark: &mut Option<i64>, control: &mut Option<Control>) {
    match item {
        Item::Work(work) => batch.push(work),
        Item::Mark(position) => *mark = Some(mark.map_or(position, |m: i64| m.max(position))),
        Item::Control(c) => *control = Some(c),
    }
}

fn parked_row(
    version: i32,
    work: &Work,
    envelope: &Envelope,
    error: &str,
    blocked: bool,
    attempts: u32,
) -> ParkedRow {
    let json = ms_bus::codec::to_json(envelope);
    ParkedRow {
        id: 0,
        version,
        key: work.key.clone(),
        position: work.position,
        event_id: envelope.id().to_owned(),
        event_type: envelope.ty().to_owned(),
        envelope: String::from_utf8_lossy(&json).into_owned(),
        error: error.to_owned(),
        blocked,
        attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
        parked_at: now_micros(),
    }
}

/// The `sequence` extension: the event's 1-based number among its key's events.
pub(crate) fn sequence_of(envelope: &Envelope) -> Option<i64> {
    envelope
        .extension(crate::SEQUENCE_EXTENSION)
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|s| *s > 0)
}

fn describe(work: &Work) -> String {
    let id = work.envelope.as_ref().map_or("?", Envelope::id);
    match work.position {
        Some(position) => format!("event {id} at position {position} (key `{}`)", work.key),
        None => format!("event {id} (key `{}`)", work.key),
    }
}

/// Whether a projection's error is the database connection failing rather than the event.
fn is_connection_error(error: &ApplyError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(sqlx) = e.downcast_ref::<sqlx::Error>() {
            return matches!(
                sqlx,
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Protocol(_)
            ) || matches!(sqlx, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("08") || c == "57P01"));
        }
        source = e.source();
    }
    false
}
