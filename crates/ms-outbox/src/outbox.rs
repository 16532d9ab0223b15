//! [`Outbox`]: writing events into the caller's own transaction.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use ms_bus::propagation::{Propagation, default_propagation, outgoing_to};

use crate::backend::{Backend, Backlog, DeadLetter, PreparedRow, Store};
use crate::key::{key_hash, lock_id, shard_of};
use crate::outbox_config::OutboxInner;
use crate::schema::{Migration, OutboxSchema};
use crate::{OutboxError, OutboxMessage, PartitionInterval, TableName};

/// The table name [`Outbox::default`] uses.
pub const DEFAULT_TABLE: &str = "ms_outbox";
/// How many shards keys are spread over unless told otherwise: enough for a handful of relay
/// processes with a few workers each, few enough that an idle relay's poll stays cheap.
pub const DEFAULT_SHARDS: u16 = 32;
/// The most shards an outbox can have (shards are stored as `SMALLINT`).
pub const MAX_SHARDS: u16 = 4096;
/// How many advisory locks partition keys are spread over on PostgreSQL (see
/// [`OutboxBuilder::key_lock_slots`]).
pub const DEFAULT_KEY_LOCK_SLOTS: u32 = 1024;

/// A transactional outbox: [`enqueue`](Self::enqueue) writes events into the caller's own sqlx
/// transaction, so the business change and its events commit or roll back together; a
/// [`Relay`](crate::Relay) publishes them once committed.
///
/// Cloning is cheap and clones share their configuration. On SQLite, give the relay a clone of
/// the outbox the application enqueues through: that is how an enqueue wakes it at once (there
/// is no LISTEN/NOTIFY); a relay on a separately built `Outbox` finds new rows at its poll
/// interval.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use ms_bus::Envelope;
/// use ms_outbox::{Outbox, OutboxMessage};
/// use sqlx::Sqlite;
///
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let outbox = Outbox::<Sqlite>::default();
/// outbox.migrate(&pool).await?;
///
/// let mut tx = pool.begin().await?;
/// // ... the business change, in `tx` ...
/// let sent = Envelope::builder("invoicing.invoice.sent", "/invoicing")
///     .subject("invoice-42")
///     .build()?;
/// outbox.enqueue(&mut *tx, OutboxMessage::event("invoicing.invoice", sent)).await?;
/// tx.commit().await?;
///
/// assert_eq!(outbox.backlog(&pool).await?.pending, 1);
/// # Ok(())
/// # }
/// ```
pub struct Outbox<DB: Backend> {
    pub(crate) inner: Arc<OutboxInner>,
    _db: PhantomData<fn() -> DB>,
}

impl<DB: Backend> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            _db: PhantomData,
        }
    }
}

impl<DB: Backend> fmt::Debug for Outbox<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("table", &self.inner.schema.name.to_string())
            .field("shards", &self.inner.shards)
            .field("key_order", &self.inner.key_order)
            .field("notify", &self.inner.notify)
            .field("partitioning", &self.inner.partitioning)
            .finish()
    }
}

impl<DB: Backend> Default for Outbox<DB> {
    /// The outbox in table [`DEFAULT_TABLE`] with the default settings.
    fn default() -> Self {
        Self::builder(TableName::new(DEFAULT_TABLE).expect("the default table name is valid"))
            .build()
    }
}

impl<DB: Backend> Outbox<DB> {
    /// The outbox in `table`, with the default settings.
    pub fn new(table: TableName) -> Self {
        Self::builder(table).build()
    }

    /// Configures an outbox in `table`.
    pub fn builder(table: TableName) -> OutboxBuilder<DB> {
        OutboxBuilder {
            table,
            shards: DEFAULT_SHARDS,
            key_order: true,
            key_lock_slots: DEFAULT_KEY_LOCK_SLOTS,
            notify: true,
            propagation: None,
            partitioning: None,
            _db: PhantomData,
        }
    }

    /// The outbox table.
    pub fn table(&self) -> &TableName {
        &self.inner.schema.name
    }

    /// The dead-letter table (the outbox table's name with `_dead_letters`).
    pub fn dead_letter_table(&self) -> &TableName {
        &self.inner.schema.dead_letters_name
    }

    pub(crate) fn store(&self, pool: &sqlx::Pool<DB>) -> Arc<dyn Store> {
        DB::store(pool.clone(), Arc::clone(&self.inner))
    }

    /// Creates or upgrades the outbox and dead-letter tables (idempotent, safe to run from
    /// several processes at once). Versions are recorded per table in `ms_outbox_schema`.
    ///
    /// A [partitioned](OutboxBuilder::partitioned) outbox is created partitioned, with the
    /// partitions of the current interval and the next [`PARTITIONS_AHEAD`](crate::PARTITIONS_AHEAD);
    /// an existing table keeps the layout it was created with.
    pub async fn migrate(&self, pool: &sqlx::Pool<DB>) -> Result<(), OutboxError> {
        self.store(pool).migrate().await
    }

    /// The migrations [`migrate`](Self::migrate) applies, rendered for this table, for
    /// projects that run migrations with their own tool. (For a partitioned outbox they create
    /// the table and its default partition; the relay creates the time partitions.)
    pub fn migrations(&self) -> Vec<Migration> {
        crate::schema::outbox_migrations::<DB>(
            &self.inner.schema,
            self.inner.partitioning.is_some(),
        )
    }

    /// Writes `message` into the caller's transaction (pass `&mut *tx`).
    ///
    /// The trace context and correlation ID current now are stored with the envelope (unless
    /// it carries its own), so the relay publishes them and the trace goes on from here.
    ///
    /// On PostgreSQL, with key ordering on (the default), this takes a transaction-scoped
    /// advisory lock on the message's partition key: a concurrent transaction writing the same
    /// key waits for this one to end. That is what makes ids follow commit order per key. Two
    /// transactions that enqueue several keys in opposite orders can deadlock (PostgreSQL then
    /// aborts one of them); [`enqueue_all`](Self::enqueue_all) takes its keys' locks in a fixed
    /// order, so enqueue each transaction's messages in one call where you can, and after the
    /// business change's own row locks.
    pub async fn enqueue(
        &self,
        conn: &mut DB::Connection,
        message: OutboxMessage,
    ) -> Result<(), OutboxError> {
        let row = self.prepare(&message)?;
        DB::enqueue(conn, &self.inner, std::slice::from_ref(&row)).await
    }

    /// Writes several messages into the caller's transaction, in order, with one statement
    /// per kind of work rather than one per message.
    pub async fn enqueue_all(
        &self,
        conn: &mut DB::Connection,
        messages: impl IntoIterator<Item = OutboxMessage>,
    ) -> Result<(), OutboxError> {
        let rows = messages
            .into_iter()
            .map(|message| self.prepare(&message))
            .collect::<Result<Vec<_>, _>>()?;
        if rows.is_empty() {
            return Ok(());
        }
        DB::enqueue(conn, &self.inner, &rows).await
    }

    fn prepare(&self, message: &OutboxMessage) -> Result<PreparedRow, OutboxError> {
        ms_bus::validate_name(message.destination()).map_err(OutboxError::InvalidDestination)?;
        let envelope = outgoing_to(
            &*self.inner.propagation,
            message.destination(),
            message.envelope(),
        );
        let json = ms_bus::codec::to_json(&envelope);
        // The structured codec writes JSON, which is UTF-8 by definition.
        let envelope = String::from_utf8_lossy(&json).into_owned();
        let key = message.key().to_owned();
        let hash = key_hash(&key);
        Ok(PreparedRow {
            shard: shard_of(hash, self.inner.shards),
            key_hash: hash,
            key_lock: lock_id(hash % self.inner.key_lock_slots),
            key,
            kind: message.kind().code(),
            destination: message.destination().to_owned(),
            envelope,
            message_id: message.envelope().id().to_owned(),
            due_at: message.due_at(),
        })
    }

    /// The parked rows, oldest first, at most `limit`.
    pub async fn dead_letters(
        &self,
        pool: &sqlx::Pool<DB>,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, OutboxError> {
        self.store(pool).dead_letters(limit).await
    }

    /// Puts a parked row back into the outbox under its original id (so it is still ahead of
    /// the later rows of its key) with its attempts reset. Returns whether it was found.
    pub async fn replay(&self, pool: &sqlx::Pool<DB>, id: i64) -> Result<bool, OutboxError> {
        let found = self.store(pool).replay(id).await?;
        self.inner.wake.notify_one();
        Ok(found)
    }

    /// Deletes a parked row for good, releasing its key. Returns whether it was found.
    pub async fn discard(&self, pool: &sqlx::Pool<DB>, id: i64) -> Result<bool, OutboxError> {
        let found = self.store(pool).discard(id).await?;
        self.inner.wake.notify_one();
        Ok(found)
    }

    /// How far behind publishing is: pending rows, the oldest one's age, dead letters, and
    /// (PostgreSQL) the oldest open transaction. Counts rows, so poll it every few seconds,
    /// not per request.
    pub async fn backlog(&self, pool: &sqlx::Pool<DB>) -> Result<Backlog, OutboxError> {
        self.store(pool).backlog().await
    }
}

/// Configures an [`Outbox`]; see each method for its default.
#[must_use]
pub struct OutboxBuilder<DB: Backend> {
    table: TableName,
    shards: u16,
    key_order: bool,
    key_lock_slots: u32,
    notify: bool,
    propagation: Option<Arc<dyn Propagation>>,
    partitioning: Option<PartitionInterval>,
    _db: PhantomData<fn() -> DB>,
}

impl<DB: Backend> fmt::Debug for OutboxBuilder<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxBuilder")
            .field("table", &self.table.to_string())
            .field("shards", &self.shards)
            .field("partitioning", &self.partitioning)
            .finish_non_exhaustive()
    }
}

impl<DB: Backend> OutboxBuilder<DB> {
    /// How many shards partition keys are spread over ([`DEFAULT_SHARDS`], clamped to
    /// `1..=`[`MAX_SHARDS`]). Relays drain shards in parallel, each shard by one relay at a
    /// time, so this bounds the useful number of relay workers. Writers and relays of one
    /// table must agree: change it only with an empty outbox.
    pub fn shards(mut self, shards: u16) -> Self {
        self.shards = shards.clamp(1, MAX_SHARDS);
        self
    }

    /// Whether writers of the same partition key are serialised so that ids follow commit
    /// order per key (PostgreSQL; default on). Turn it off only if no two concurrent
    /// transactions ever write the same key (SQLite serialises all writers anyway).
    pub fn key_order(mut self, on: bool) -> Self {
        self.key_order = on;
        self
    }

    /// How many advisory locks the key ordering uses ([`DEFAULT_KEY_LOCK_SLOTS`], at least 1):
    /// a key takes slot `hash(key) mod slots`. PostgreSQL's lock table is shared and small
    /// (`max_locks_per_transaction` × connections, 6,400 by default), so one transaction
    /// enqueueing thousands of distinct keys would exhaust it with a lock per key; with slots
    /// it holds at most this many. The price is that two keys sharing a slot also take turns
    /// when written concurrently (correctness is unaffected).
    pub fn key_lock_slots(mut self, slots: u32) -> Self {
        self.key_lock_slots = slots.max(1);
        self
    }

    /// Whether writers send a `NOTIFY` so relays wake at once (PostgreSQL; default on). Each
    /// notifying transaction takes PostgreSQL's notify queue lock while it commits; without
    /// it relays find new rows at their poll interval.
    pub fn notify(mut self, on: bool) -> Self {
        self.notify = on;
        self
    }

    /// How the trace context and correlation ID are stored with each envelope
    /// ([`ms_bus::propagation::default_propagation`] by default).
    pub fn propagation(mut self, propagation: Arc<dyn Propagation>) -> Self {
        self.propagation = Some(propagation);
        self
    }

    /// The outbox.
    pub fn build(self) -> Outbox<DB> {
        Outbox {
            inner: Arc::new(OutboxInner {
                schema: OutboxSchema::new(self.table),
                shards: self.shards,
                key_order: self.key_order,
                key_lock_slots: self.key_lock_slots,
                notify: self.notify,
                propagation: self.propagation.unwrap_or_else(default_propagation),
                partitioning: self.partitioning,
                wake: tokio::sync::Notify::new(),
                schedule_wake: tokio::sync::Notify::new(),
            }),
            _db: PhantomData,
        }
    }
}

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
impl OutboxBuilder<sqlx::Postgres> {
    /// Creates the outbox table partitioned by range of `created_at`, one partition per
    /// `interval` (default: not partitioned). PostgreSQL only: SQLite has no partitioning,
    /// and one writer with a small file has no bloat to avoid.
    ///
    /// What it buys: with [`Retention::Keep`](crate::Retention::Keep) the relay drops whole
    /// partitions once their range is older than the retention, instead of deleting rows:
    /// `DROP TABLE` is O(1) and leaves no dead tuples for vacuum. See the
    /// [relay docs](crate::relay#partitioned-retention) for the trade-offs.
    ///
    /// It decides the layout when [`migrate`](Outbox::migrate) *creates* the table; a table
    /// that already exists keeps its layout (switching means a new table, drained by a relay
    /// of the old one). Set it alike in every process that uses the table.
    pub fn partitioned(mut self, interval: PartitionInterval) -> Self {
        self.partitioning = Some(interval);
        self
    }
}
