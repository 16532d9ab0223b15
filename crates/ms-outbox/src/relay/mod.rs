//! [`Relay`]: moves committed outbox rows to the bus, in order per partition key.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_bus::memory::MemoryBus;
//! use ms_bus::{Envelope, Subscriber, Subscription};
//! use ms_outbox::{Outbox, OutboxMessage, Relay};
//! use sqlx::Sqlite;
//! use futures_util::StreamExt;
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let outbox = Outbox::<Sqlite>::default();
//! outbox.migrate(&pool).await?;
//! let bus = MemoryBus::new();
//! let reporting = Subscription::events("invoicing.invoice", "reporting")?;
//! let mut deliveries = bus.subscribe(&reporting).await?;
//! let relay = Relay::builder(&outbox, &pool, bus.clone()).build().spawn();
//!
//! let mut tx = pool.begin().await?;
//! let created = Envelope::builder("invoicing.invoice.created", "/invoicing").subject("inv-1").build()?;
//! outbox.enqueue(&mut *tx, OutboxMessage::event("invoicing.invoice", created)).await?;
//! tx.commit().await?;
//!
//! let delivery = deliveries.next().await.expect("published")?;
//! let (envelope, _info, acker) = delivery.into_parts();
//! assert_eq!(envelope?.subject(), Some("inv-1"));
//! acker.ack().await?;
//! relay.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # How it works, and why
//!
//! **Claiming.** Rows carry a shard: a stable hash of their partition key modulo the outbox's
//! shard count. A relay worker drains one shard at a time in a transaction: it takes the
//! shard's advisory lock with `pg_try_advisory_xact_lock` (a shard another relay holds is
//! skipped, the way `SKIP LOCKED` skips rows, only a whole shard at a time), reads the shard's
//! oldest pending rows in id order, publishes them, waits for the broker's confirmations,
//! deletes (or marks) the confirmed rows and commits. The lock is the relay's lease and the
//! transaction its fence: it ends with the commit that removes the rows, or with the rollback
//! (crash, lost connection, timeout) that leaves them pending. No clock, no lease table, no
//! takeover delay; any number of relay processes share the shards, each shard drained by one
//! at a time, so throughput grows with relays and shards while each key stays in order.
//!
//! **The gap problem.** Offset-based relays (read rows with id above the last one published)
//! skip or reorder rows when transactions commit out of id order: id 11 commits, is published,
//! the offset moves past 10, then 10 commits. This relay keeps no offset: published rows
//! leave the table, so a late row is simply the next pending one. What remains is order within
//! a key, which needs ids to follow commit order per key. A writer therefore takes a
//! transaction-scoped advisory lock on the key's hash before its row draws an id (see
//! [`Outbox::enqueue`](crate::Outbox::enqueue)): a second transaction writing the same key
//! waits until the first has committed, so its id is larger and its row becomes visible after
//! the first one's. Keys never wait on each other (hash collisions aside). SQLite lets one
//! writer at a time anyway.
//!
//! **Failures.** A batch the broker does not confirm is rolled back and retried. To find the
//! row at fault the relay then publishes the batch's destination one row at a time: the rows
//! before the failing one are kept as published; the failing row is retried later with
//! exponential backoff, and (with [`OnPoison::BlockKey`], the default) the later rows of its key
//! wait, while other keys flow. A failure counts towards the dead letter only while the broker
//! is demonstrably up: the relay has published something since the row last failed (for a
//! first failure: within the last minute). An outage thus costs a row at most one count and
//! parks nothing; after [`max_attempts`](RelayBuilder::max_attempts) counted failures, or at
//! once for a stored envelope that cannot be decoded, the row moves to the dead-letter table
//! with its error ([`Outbox::dead_letters`](crate::Outbox::dead_letters),
//! [`replay`](crate::Outbox::replay), [`discard`](crate::Outbox::discard)).
//!
//! **Crash cases.** Killed after publishing and before committing: the batch is published
//! again by whoever takes the shard next, so consumers see at most one batch of duplicates
//! per crashed worker, in order; the envelope's source and id
//! ([`dedup_key`](ms_bus::Envelope::dedup_key)) are the broker's dedup key (`Nats-Msg-Id`,
//! AMQP `message-id`), so JetStream drops them within its duplicate window, and the
//! [`Inbox`](crate::Inbox) of a consumer recognises them by the same key. A relay whose
//! connection drops mid-publish (the lock released while it still publishes) can interleave
//! its late duplicates with the next holder's publications: duplicates again, never a loss,
//! and never a row published after a later row of its key *for the first time*.
//!
//! **Order per key, as tested.** A row's key is its envelope's
//! [`ordering_key`](ms_bus::Envelope::ordering_key) (`partitionkey`, else subject, else id),
//! the rule ms-bus's consumers and ms-cqrs's runner follow too. The broker stores each row's
//! first copy after the first copies of every earlier row of its key, through broker crashes
//! and lost connections mid-batch: a failed batch leaves, of each key, a prefix stored (the
//! [`publish_batch`](ms_bus::EventPublisher::publish_batch) contract; the NATS adapter
//! confirms one row of a key before it sends the next, since async-nats would otherwise
//! resend a batch's tail on the new connection after losing its head), and the relay
//! republishes from the first unconfirmed row. `tests/kill_order.rs` kills a private
//! nats-server (and a private RabbitMQ) with SIGKILL while three relays drain 12,000 rows
//! over 8 keys, ten times each, and checks the stream (the handler's calls, for RabbitMQ,
//! through a consumer that fails some messages) key by key; before the NATS adapter limited
//! unconfirmed publishes per key, 5 of 10 kills stored a batch's tail before its head.
//! Copies republished after the stream's duplicate window
//! (ms-bus's `NatsBusBuilder::duplicate_window`, two minutes by default) are stored twice, in order after the first; an
//! [`Inbox`](crate::Inbox) makes them no-ops. What consumers guarantee is the consumer
//! runtime's [ordering](ms_bus::consumer#ordering): one consumer per group sees commit
//! order, handler failures included; several consumers of one group, and redeliveries after
//! a lost settlement, do not.
//!
//! **Wake-up.** Writers `NOTIFY` the shard they wrote at commit; relays `LISTEN` and drain
//! that shard at once. Notifications can be lost (a listener reconnecting), so relays also
//! poll every [`poll_interval`](RelayBuilder::poll_interval) with a loose index scan of the
//! shards that have pending rows (one index probe per shard).
//!
//! **Scheduled rows** ([`OutboxMessage::deliver_at`](crate::OutboxMessage::deliver_at)) wait
//! in the scheduled table, which the claim never reads. Each relay runs a timer that sleeps
//! until the earliest due time (the first entry of the `(due_at, id)` index), at most a poll
//! interval, and is woken by a notification when a scheduled row is written or moved. When
//! rows are due it moves them into the outbox, in due order, in one short transaction
//! (`FOR UPDATE SKIP LOCKED`, so relays never move a row twice, and never wait on a caller's
//! cancel), taking each row's key lock without waiting, as a writer would: the row draws its
//! id then, which is how it joins its key's order at its due time. From there it is an
//! ordinary row. See [`schedule`](crate::schedule) for the caller's side.
//!
//! # Partitioned retention
//!
//! Published rows leave the table in one of three ways, chosen by [`Retention`] and
//! [`OutboxBuilder::partitioned`](crate::OutboxBuilder::partitioned):
//!
//! - [`Retention::Delete`]: each batch's rows are deleted in the transaction that confirms
//!   them. The table holds only the backlog; vacuum reclaims the dead tuples as it goes.
//! - [`Retention::Keep`] on a plain table: rows are marked published and deleted after the
//!   retention by the relay, in bounded batches. Deleting is still work for vacuum, and a busy
//!   table with a long retention accumulates dead tuples and index bloat between vacuums.
//! - [`Retention::Keep`] on a table partitioned by time (PostgreSQL only): the table is
//!   `PARTITION BY RANGE (created_at)`, one partition per hour or day, and the relay drops a
//!   whole partition once its range ended more than the retention ago. `DROP TABLE` is O(1)
//!   whatever the partition holds and leaves no dead tuple behind: no bloat, no vacuum debt.
//!
//! On a partitioned outbox the relay also keeps partitions ready: at start and then every
//! tenth of the retention (between a second and a minute; every minute with
//! [`Retention::Delete`]) it creates the current interval's partition and the next
//! [`PARTITIONS_AHEAD`](crate::PARTITIONS_AHEAD), and drops the old ones. Each change is a short
//! transaction under an advisory lock (concurrent relays take turns) and a 500 ms lock
//! timeout (DDL queued behind a long transaction would block every query behind it; it tries
//! again next round). With [`Retention::Delete`] partitions are created all the same and past
//! ones are dropped once they hold no pending row (they are empty then).
//!
//! The trade-offs:
//!
//! - **A pending row pins its partition.** A partition is dropped only if it holds no
//!   unpublished row (checked under the table lock, so a row written meanwhile is never lost):
//!   a row held back by failures keeps its whole partition, past the retention. The relay logs
//!   a warning naming such partitions and sets the `ms_outbox_pinned_partitions` gauge
//!   (feature `metrics`); parking or discarding the row releases it.
//! - **Rows are kept between the retention and the retention plus one interval**, since a
//!   partition goes only when its newest possible row is old enough.
//! - **The primary key includes `created_at`**: `(shard, id, created_at)`, since a
//!   partitioned table's unique keys must contain the partition key. Ids still come from one
//!   sequence. The claim matches rows on `(id, created_at)`, so each confirmed row is found in
//!   its own partition; the rarer per-row statements (a failure, a parked row) probe every
//!   partition's key, which is why intervals should keep their count in the tens, not
//!   thousands.
//! - **A default partition** takes rows no partition covers: a dead letter replayed after its
//!   partition was dropped, or rows written while every relay was down longer than the
//!   partitions ahead. Its published rows are deleted in batches after the retention, as on a
//!   plain table, and its rows of a range move into the partition when the relay creates it.
//!   Dropping and creating partitions lock the table exclusively for a moment.
//! - **The layout is chosen when the table is created** (the `0001_outbox_partitioned.sql`
//!   migration instead of `0001_outbox.sql`); an existing table keeps its layout. Switching
//!   means a new table: point writers at it, let a relay of the old one drain it, drop it.
//! - **Not on SQLite**, which has no partitioning (and an embedded, single-writer outbox rarely
//!   keeps enough rows for bloat to matter).

mod config;
mod queue;
mod scheduler;
mod status;
mod worker;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ms_bus::{CommandSender, EventPublisher};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::{
    DEFAULT_BATCH_SIZE, DEFAULT_CONCURRENCY, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_RETRY_DELAY,
    DEFAULT_MIN_RETRY_DELAY, DEFAULT_POLL_INTERVAL, DEFAULT_PUBLISH_TIMEOUT, DEFAULT_STRIKE_WINDOW,
    OnPoison, Retention,
};
pub use status::RelayStatus;

use self::config::RelayConfig;
use self::queue::ShardQueue;
use self::status::RelayState;
use self::worker::{Round, Shared, Target};
use crate::backend::{Backend, Wake};
use crate::{Outbox, OutboxError};

/// How many poll intervals pass between two backlog measurements.
const BACKLOG_EVERY_POLLS: u32 = 10;
/// Rows deleted per cleanup statement when published rows are kept for a while.
const CLEANUP_BATCH: i64 = 10_000;
/// The longest pause between two rounds of partition upkeep.
const PARTITION_UPKEEP_EVERY: Duration = Duration::from_secs(60);

/// Publishes committed outbox rows to a bus. See the [module docs](self) for the design.
pub struct Relay {
    ctx: Arc<Shared>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("table", &self.ctx.table)
            .field("config", &self.ctx.config)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Configures a relay of `outbox` (on `pool`) to `bus`, any ms-bus adapter: events go to
    /// [`EventPublisher::publish_batch`], commands to [`CommandSender::send_batch`].
    pub fn builder<DB, P>(outbox: &Outbox<DB>, pool: &sqlx::Pool<DB>, bus: P) -> RelayBuilder
    where
        DB: Backend,
        P: EventPublisher + CommandSender + 'static,
    {
        let store = outbox.store(pool);
        let table = outbox.table().to_string();
        let mut config = RelayConfig::default();
        if !store.shards_concurrently() {
            config.concurrency = 1;
            // No notifications across processes: poll more often.
            config.poll_interval = Duration::from_millis(100);
        }
        RelayBuilder {
            store,
            target: Arc::new(bus),
            table,
            config,
        }
    }

    /// Starts the relay on the current tokio runtime.
    pub fn spawn(self) -> RelayHandle {
        let (stop, stopped) = watch::channel(false);
        let state = Arc::clone(&self.ctx.state);
        // Running from now on, not from the task's first poll: a status or health check read
        // right after `spawn` must not report a stopped relay.
        state.running.store(true, Ordering::Relaxed);
        let task = tokio::spawn(self.run_until(async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        RelayHandle { stop, task, state }
    }

    /// Runs the relay until `shutdown` completes; then lets each worker finish (commit) its
    /// current batch and returns.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), OutboxError> {
        let ctx = self.ctx;
        ctx.state.running.store(true, Ordering::Relaxed);
        // Not running once this future ends, however it ends (returned, dropped, aborted).
        let _running = Running(Arc::clone(&ctx.state));
        let queue = Arc::new(ShardQueue::default());
        let poll_now = Arc::new(tokio::sync::Notify::new());
        let timer_now = Arc::new(tokio::sync::Notify::new());
        let (stop, stopped) = watch::channel(false);

        // Background tasks, aborted at shutdown (they hold no rows; the timer's moves are
        // single transactions).
        let mut background = JoinSet::new();
        {
            let queue = Arc::clone(&queue);
            let poll_now = Arc::clone(&poll_now);
            let timer_now = Arc::clone(&timer_now);
            background.spawn(ctx.store.listen(Arc::new(move |wake| match wake {
                Wake::Shard(shard) => queue.mark(shard),
                Wake::All => {
                    poll_now.notify_one();
                    timer_now.notify_one();
                }
                Wake::Scheduled => timer_now.notify_one(),
            })));
        }
        background.spawn(scheduler::run(
            Arc::clone(&ctx),
            Arc::clone(&queue),
            Arc::clone(&timer_now),
        ));
        background.spawn(poll(
            Arc::clone(&ctx),
            Arc::clone(&queue),
            Arc::clone(&poll_now),
        ));
        if let Retention::Keep(retention) = ctx.config.retention {
            background.spawn(cleanup(Arc::clone(&ctx), retention));
        }
        if ctx.store.partitioned() {
            background.spawn(partitions(Arc::clone(&ctx)));
        }

        // Workers finish their batch before stopping: a batch cut mid-publish would only be
        // rolled back and published again, but there is no reason to.
        let mut workers = JoinSet::new();
        for _ in 0..ctx.config.concurrency.max(1) {
            workers.spawn(work(Arc::clone(&ctx), Arc::clone(&queue), stopped.clone()));
        }

        tokio::pin!(shutdown);
        let mut outcome = Ok(());
        tokio::select! {
            () = &mut shutdown => {}
            Some(joined) = workers.join_next() => {
                outcome = Err(OutboxError::RelayStopped(match joined {
                    Err(e) => e.to_string(),
                    Ok(()) => "a worker stopped".to_owned(),
                }));
            }
        }
        let _ = stop.send(true);
        while let Some(joined) = workers.join_next().await {
            if let Err(e) = joined
                && outcome.is_ok()
            {
                outcome = Err(OutboxError::RelayStopped(e.to_string()));
            }
        }
        background.shutdown().await;
        outcome
    }
}

/// Clears the relay's `running` flag when dropped.
struct Running(Arc<RelayState>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Relaxed);
    }
}

async fn work(ctx: Arc<Shared>, queue: Arc<ShardQueue>, mut stopped: watch::Receiver<bool>) {
    let mut errors: u32 = 0;
    loop {
        let shard = tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => return,
            shard = queue.next() => shard,
        };
        match worker::round(&ctx, shard).await {
            Ok(Round::Busy) => {
                errors = 0;
                queue.done(shard, false);
            }
            Ok(Round::Claimed { full, failed }) => {
                errors = 0;
                queue.done(shard, full);
                if failed {
                    // Something could not be published: give the broker a moment.
                    pause(&ctx, 1, &mut stopped).await;
                }
            }
            Err(error) => {
                errors = errors.saturating_add(1);
                ctx.state.batch_errors.fetch_add(1, Ordering::Relaxed);
                ctx.state.error(error.to_string());
                tracing::warn!(
                    %error,
                    shard,
                    database_unavailable = error.is_unavailable(),
                    "outbox relay: batch rolled back; retrying"
                );
                queue.done(shard, true);
                pause(&ctx, errors, &mut stopped).await;
            }
        }
    }
}

/// Waits [`RelayConfig::pause`] after `n` failing batches, or until shutdown.
async fn pause(ctx: &Shared, n: u32, stopped: &mut watch::Receiver<bool>) {
    let delay = ctx.config.pause(n);
    tokio::select! {
        _ = stopped.wait_for(|stop| *stop) => {}
        () = tokio::time::sleep(delay) => {}
    }
}

async fn poll(ctx: Arc<Shared>, queue: Arc<ShardQueue>, poll_now: Arc<tokio::sync::Notify>) {
    let mut polls: u32 = 0;
    loop {
        match ctx.store.pending_shards().await {
            Ok(shards) => {
                ctx.state.heartbeat();
                for shard in shards {
                    queue.mark(shard);
                }
            }
            Err(error) => {
                ctx.state.error(error.to_string());
                tracing::warn!(%error, "outbox relay: poll failed");
            }
        }
        if polls.is_multiple_of(BACKLOG_EVERY_POLLS)
            && let Ok(backlog) = ctx.store.backlog().await
        {
            ctx.state.set_backlog(backlog);
            record_backlog(&ctx, &backlog);
        }
        polls = polls.wrapping_add(1);
        tokio::select! {
            () = tokio::time::sleep(ctx.config.poll_interval) => {}
            () = poll_now.notified() => {}
        }
    }
}

#[cfg(feature = "metrics")]
#[allow(clippy::cast_precision_loss)] // Gauges are f64; row counts past 2^52 are not a concern.
fn record_backlog(ctx: &Shared, backlog: &crate::Backlog) {
    let table = ctx.table.clone();
    metrics::gauge!("ms_outbox_backlog_rows", "table" => table.clone()).set(backlog.pending as f64);
    metrics::gauge!("ms_outbox_dead_letter_rows", "table" => table.clone())
        .set(backlog.dead_letters as f64);
    metrics::gauge!("ms_outbox_scheduled_rows", "table" => table.clone())
        .set(backlog.scheduled as f64);
    let overdue = backlog
        .overdue(time::OffsetDateTime::now_utc())
        .unwrap_or_default();
    metrics::gauge!("ms_outbox_scheduled_overdue_seconds", "table" => table.clone())
        .set(overdue.as_secs_f64());
    let age = backlog
        .oldest_age(time::OffsetDateTime::now_utc())
        .unwrap_or_default();
    metrics::gauge!("ms_outbox_oldest_pending_seconds", "table" => table.clone())
        .set(age.as_secs_f64());
    if let Some(tx) = backlog.oldest_transaction {
        metrics::gauge!("ms_outbox_oldest_transaction_seconds", "table" => table)
            .set(tx.as_secs_f64());
    }
}

#[cfg(not(feature = "metrics"))]
fn record_backlog(_: &Shared, _: &crate::Backlog) {}

async fn cleanup(ctx: Arc<Shared>, retention: Duration) {
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        loop {
            match ctx.store.cleanup(retention, CLEANUP_BATCH).await {
                // Bounded statements, one after another, until a short one: short
                // transactions, no lock held long, vacuum keeps up.
                Ok(deleted) if deleted >= CLEANUP_BATCH.cast_unsigned() => {}
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "outbox relay: cleanup failed");
                    break;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Creates partitions ahead and drops old ones (partitioned outboxes), at startup and then
/// every tenth of the retention (between 1 s and a minute).
async fn partitions(ctx: Arc<Shared>) {
    let (keep, every) = match ctx.config.retention {
        Retention::Keep(keep) => (
            keep,
            (keep / 10).clamp(Duration::from_secs(1), PARTITION_UPKEEP_EVERY),
        ),
        // Published rows are gone already: a past partition without pending rows is empty.
        Retention::Delete => (Duration::ZERO, PARTITION_UPKEEP_EVERY),
    };
    loop {
        match ctx.store.maintain_partitions(keep).await {
            Ok(Some(report)) => {
                if report.created > 0 || !report.dropped.is_empty() {
                    tracing::info!(
                        table = %ctx.table,
                        created = report.created,
                        dropped = ?report.dropped,
                        "outbox relay: partitions maintained"
                    );
                }
                if !report.pinned.is_empty() {
                    tracing::warn!(
                        table = %ctx.table,
                        pinned = ?report.pinned,
                        "outbox relay: partitions past retention kept: they hold pending rows"
                    );
                }
                record_partitions(&ctx, &report);
            }
            Ok(None) => {
                tracing::warn!(
                    table = %ctx.table,
                    "outbox relay: configured partitioned, but the table is not; \
                     no partition upkeep"
                );
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "outbox relay: partition upkeep failed; retrying later");
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(feature = "metrics")]
#[allow(clippy::cast_precision_loss)] // Gauges are f64.
fn record_partitions(ctx: &Shared, report: &crate::backend::PartitionReport) {
    let table = ctx.table.clone();
    metrics::gauge!("ms_outbox_pinned_partitions", "table" => table.clone())
        .set(report.pinned.len() as f64);
    metrics::counter!("ms_outbox_partitions_dropped_total", "table" => table)
        .increment(report.dropped.len() as u64);
}

#[cfg(not(feature = "metrics"))]
fn record_partitions(_: &Shared, _: &crate::backend::PartitionReport) {}

/// Configures a [`Relay`]; every default is a named constant.
#[must_use]
pub struct RelayBuilder {
    store: Arc<dyn crate::backend::Store>,
    target: Arc<dyn Target>,
    table: String,
    config: RelayConfig,
}

impl std::fmt::Debug for RelayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("table", &self.table)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RelayBuilder {
    /// Rows per transaction ([`DEFAULT_BATCH_SIZE`]; at least 1).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.config.batch_size = rows.max(1);
        self
    }

    /// Shards drained at once by this relay ([`DEFAULT_CONCURRENCY`]; always 1 on SQLite).
    pub fn concurrency(mut self, workers: usize) -> Self {
        if self.store.shards_concurrently() {
            self.config.concurrency = workers.max(1);
        }
        self
    }

    /// How often to look for rows without being notified ([`DEFAULT_POLL_INTERVAL`]; 100 ms on
    /// SQLite, where writers in other processes cannot notify).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.config.poll_interval = every.max(Duration::from_millis(1));
        self
    }

    /// Counted failures before a row is parked ([`DEFAULT_MAX_ATTEMPTS`]; at least 1). A
    /// failure counts only while the broker is up; see [`strike_window`](Self::strike_window).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts.max(1);
        self
    }

    /// The retry delays of a failing row: from `min`, doubling with jitter, up to `max`
    /// ([`DEFAULT_MIN_RETRY_DELAY`], [`DEFAULT_MAX_RETRY_DELAY`]).
    pub fn retry_delay(mut self, min: Duration, max: Duration) -> Self {
        self.config.min_retry_delay = min;
        self.config.max_retry_delay = max.max(min);
        self
    }

    /// How long a batch's publication may take ([`DEFAULT_PUBLISH_TIMEOUT`]).
    pub fn publish_timeout(mut self, limit: Duration) -> Self {
        self.config.publish_timeout = limit;
        self
    }

    /// A failure counts towards the dead letter only if the relay published something within
    /// this window ([`DEFAULT_STRIKE_WINDOW`]).
    pub fn strike_window(mut self, window: Duration) -> Self {
        self.config.strike_window = window;
        self
    }

    /// What a failing row holds back ([`OnPoison::BlockKey`]).
    pub fn on_poison(mut self, policy: OnPoison) -> Self {
        self.config.on_poison = policy;
        self
    }

    /// What happens to published rows ([`Retention::Delete`]).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.config.retention = retention;
        self
    }

    /// The relay.
    pub fn build(self) -> Relay {
        Relay {
            ctx: Arc::new(Shared {
                store: self.store,
                target: self.target,
                config: self.config,
                state: Arc::new(RelayState::default()),
                table: self.table,
            }),
        }
    }
}

/// A running relay: its status, and a graceful shutdown.
#[derive(Debug)]
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), OutboxError>>,
    state: Arc<RelayState>,
}

impl RelayHandle {
    /// The relay's counters and last measured backlog.
    pub fn status(&self) -> RelayStatus {
        self.state.snapshot()
    }

    /// A cheap, cloneable view of the status, for health checks and dashboards.
    pub fn monitor(&self) -> RelayMonitor {
        RelayMonitor {
            state: Arc::clone(&self.state),
        }
    }

    /// Stops the relay: each worker commits its current batch, then the tasks end.
    pub async fn shutdown(self) -> Result<(), OutboxError> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(OutboxError::RelayStopped(e.to_string())),
        }
    }
}

/// Reads a relay's status from anywhere (a health check, a metrics endpoint).
#[derive(Debug, Clone)]
pub struct RelayMonitor {
    state: Arc<RelayState>,
}

impl RelayMonitor {
    /// The relay's counters and last measured backlog.
    pub fn status(&self) -> RelayStatus {
        self.state.snapshot()
    }
}
