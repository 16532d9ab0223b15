//! The databases the outbox runs on, and what the relay asks of them.
//!
//! [`Backend`] is sealed: PostgreSQL and SQLite are implemented here, each in its own module,
//! behind the `postgres` and `sqlite` features.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use time::OffsetDateTime;

use crate::outbox_config::OutboxInner;
use crate::recurring::RecurringRow;
use crate::{Migration, OutboxError, TableName};

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod postgres_batch;
#[cfg(feature = "postgres")]
mod postgres_dead_letters;
#[cfg(feature = "postgres")]
mod postgres_enqueue;
#[cfg(feature = "postgres")]
mod postgres_inbox;
#[cfg(feature = "postgres")]
mod postgres_listen;
#[cfg(feature = "postgres")]
mod postgres_partitions;
#[cfg(feature = "postgres")]
mod postgres_schedule;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
mod sqlite_schedule;

/// A database the outbox can live in: [`sqlx::Postgres`] (feature `postgres`) or
/// [`sqlx::Sqlite`] (feature `sqlite`, the default).
pub trait Backend: sqlx::Database + sealed::Sealed {}

impl<DB: sqlx::Database + sealed::Sealed> Backend for DB {}

pub(crate) mod sealed {
    use super::{
        Arc, BoxFuture, Duration, InboxStatements, Migration, OffsetDateTime, OutboxError,
        OutboxInner, PreparedRow, RecurringRow, ScheduledRef, Store, TableName,
    };

    /// What each database implements; sealed so that the set can grow without breaking anyone.
    // The sealed trait's items are nameable only inside this crate, whatever rustc's
    // visibility lints infer from its nominal `pub`.
    #[allow(unreachable_pub, private_interfaces)]
    pub trait Sealed: sqlx::Database {
        /// Writes prepared rows in the caller's transaction.
        #[doc(hidden)]
        fn enqueue<'a>(
            conn: &'a mut Self::Connection,
            outbox: &'a OutboxInner,
            rows: &'a [PreparedRow],
        ) -> BoxFuture<'a, Result<(), OutboxError>>;

        /// Deletes the scheduled rows `which` names in the caller's transaction; how many.
        #[doc(hidden)]
        fn cancel<'a>(
            conn: &'a mut Self::Connection,
            outbox: &'a OutboxInner,
            which: ScheduledRef<'a>,
        ) -> BoxFuture<'a, Result<u64, OutboxError>>;

        /// Moves the due time of the scheduled rows with envelope id `id` to `at` in the
        /// caller's transaction (and their `deliverat` extension with it); how many.
        #[doc(hidden)]
        fn reschedule<'a>(
            conn: &'a mut Self::Connection,
            outbox: &'a OutboxInner,
            id: &'a str,
            at: OffsetDateTime,
        ) -> BoxFuture<'a, Result<u64, OutboxError>>;

        /// Inserts or updates a recurring schedule (keeping its next tick when the interval is
        /// the same).
        #[doc(hidden)]
        fn register<'a>(
            pool: &'a sqlx::Pool<Self>,
            outbox: &'a OutboxInner,
            row: &'a RecurringRow,
        ) -> BoxFuture<'a, Result<(), OutboxError>>;

        /// Deletes a recurring schedule in the caller's transaction; whether it existed.
        #[doc(hidden)]
        fn unregister<'a>(
            conn: &'a mut Self::Connection,
            outbox: &'a OutboxInner,
            name: &'a str,
        ) -> BoxFuture<'a, Result<bool, OutboxError>>;

        /// The migration files: version, description, SQL with placeholders.
        #[doc(hidden)]
        const MIGRATIONS: &'static [(i64, &'static str, &'static str)];

        /// The migration files of a table partitioned by time (PostgreSQL; SQLite has no
        /// partitions and never asks for them).
        #[doc(hidden)]
        const PARTITIONED_MIGRATIONS: &'static [(i64, &'static str, &'static str)];

        /// Whether index names carry the schema (SQLite) or take the table's (PostgreSQL).
        #[doc(hidden)]
        const QUALIFIED_INDEXES: bool;

        /// Everything that works on a pool rather than in the caller's transaction.
        #[doc(hidden)]
        fn store(pool: sqlx::Pool<Self>, outbox: Arc<OutboxInner>) -> Arc<dyn Store>;

        /// Applies `migrations` to `object` (a table) under the database's migration lock,
        /// recording the version reached in `ms_outbox_schema` next to `like`.
        #[doc(hidden)]
        fn apply_migrations<'a>(
            pool: &'a sqlx::Pool<Self>,
            like: &'a TableName,
            object: &'a str,
            migrations: &'a [Migration],
        ) -> BoxFuture<'a, Result<(), OutboxError>>;

        /// The inbox migration files: version, description, SQL with placeholders.
        #[doc(hidden)]
        const INBOX_MIGRATIONS: &'static [(i64, &'static str, &'static str)];

        /// The inbox's statements for the quoted table `inbox`.
        #[doc(hidden)]
        fn inbox_statements(inbox: &str) -> InboxStatements;

        /// Records the dedup key `key` as handled by `consumer` in the caller's transaction;
        /// `true` when neither it nor `legacy_id` (the bare id, as rows recorded before keys
        /// were source + id hold it) was recorded yet.
        #[doc(hidden)]
        fn inbox_record<'a>(
            conn: &'a mut Self::Connection,
            statements: &'a InboxStatements,
            consumer: &'a str,
            key: &'a str,
            legacy_id: &'a str,
        ) -> BoxFuture<'a, Result<bool, OutboxError>>;

        /// Deletes up to `limit` inbox rows handled more than `older_than` ago, in one
        /// statement; returns how many.
        #[doc(hidden)]
        fn inbox_cleanup<'a>(
            pool: &'a sqlx::Pool<Self>,
            statements: &'a InboxStatements,
            older_than: Duration,
            limit: i64,
        ) -> BoxFuture<'a, Result<u64, OutboxError>>;
    }
}

/// An inbox's statements, rendered once (sqlx caches prepared statements by their text).
#[derive(Debug)]
pub(crate) struct InboxStatements {
    pub(crate) record: Arc<str>,
    pub(crate) cleanup: Arc<str>,
}

/// A message ready to be written: validated, keyed, encoded.
#[derive(Debug, Clone)]
pub(crate) struct PreparedRow {
    pub(crate) shard: i16,
    pub(crate) key_hash: u32,
    /// The advisory lock that orders the key's writers (PostgreSQL).
    pub(crate) key_lock: i32,
    pub(crate) key: String,
    pub(crate) kind: i16,
    pub(crate) destination: String,
    pub(crate) envelope: String,
    /// The envelope's id (what a scheduled row is cancelled by).
    pub(crate) message_id: String,
    /// Set for a scheduled message: it waits in the scheduled table until then.
    pub(crate) due_at: Option<OffsetDateTime>,
}

/// Which scheduled rows a cancel means.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ScheduledRef<'a> {
    /// Those with this envelope id.
    Id(&'a str),
    /// Those of this partition key.
    Key(&'a str),
}

/// What a relay's round of moving due scheduled rows into the outbox did.
#[derive(Debug, Default)]
pub(crate) struct Promoted {
    /// Shards that received rows.
    pub(crate) shards: Vec<i16>,
    /// How late each moved row was (the database's clock).
    pub(crate) lateness: Vec<Duration>,
}

/// What woke a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// A committed write to this shard.
    Shard(i16),
    /// Writes may have been missed (a listener reconnected): look everywhere.
    All,
    /// A scheduled row was written or moved: the earliest due time may have changed.
    Scheduled,
}

/// A pending row as the relay reads it.
#[derive(Debug)]
pub(crate) struct StoredRow {
    pub(crate) id: i64,
    pub(crate) kind: i16,
    pub(crate) destination: String,
    pub(crate) envelope: String,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) strikes: i32,
    pub(crate) attempts: i32,
    pub(crate) key: String,
    /// When the relay last failed to publish it (the relay's clock).
    pub(crate) last_attempt_at: Option<OffsetDateTime>,
}

/// A row whose publication failed and that stays for a later attempt.
#[derive(Debug)]
pub(crate) struct FailedRow {
    pub(crate) id: i64,
    pub(crate) error: String,
    /// Whether the failure counts towards the dead letter.
    pub(crate) strike: bool,
    pub(crate) retry_in: Duration,
}

/// What became of a claimed batch.
#[derive(Debug, Default)]
pub(crate) struct BatchOutcome {
    pub(crate) published: Vec<i64>,
    pub(crate) failed: Vec<FailedRow>,
    /// Rows moved to the dead letters, with the reason.
    pub(crate) parked: Vec<(i64, String)>,
    /// Keep published rows (marked) instead of deleting them.
    pub(crate) keep_published: bool,
    /// Whether a parked row holds back the later rows of its key.
    pub(crate) parked_blocks_key: bool,
    /// When the failed rows were tried (the relay's clock, so that it compares with the
    /// relay's own record of its last successful publication).
    pub(crate) attempted_at: Option<OffsetDateTime>,
}

/// The result of trying to claim a shard.
pub(crate) enum Claim {
    /// Another relay (or another worker) is draining the shard.
    Busy,
    /// The shard's next rows, locked until the batch is finished or dropped (dropping rolls
    /// back: the rows stay pending). SQLite does not hold its database-wide write lock while
    /// the batch is published: there the single relay worker is what keeps batches apart.
    Batch(Box<dyn ClaimedBatch>),
}

/// A claimed batch, inside the transaction that will remove its published rows.
pub(crate) trait ClaimedBatch: Send {
    /// The claimed rows, in id order (taken once).
    fn take_rows(&mut self) -> Vec<StoredRow>;
    /// Records the outcome and commits.
    fn finish(
        self: Box<Self>,
        outcome: BatchOutcome,
    ) -> BoxFuture<'static, Result<(), OutboxError>>;
}

/// A dead-lettered row.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The id the row had in the outbox (and gets back when replayed).
    pub id: i64,
    /// Event or command.
    pub kind: crate::MessageKind,
    /// The topic or command destination.
    pub destination: String,
    /// The partition key.
    pub partition_key: String,
    /// The stored envelope, as CloudEvents structured JSON (it may be the reason it was
    /// parked, so it is not decoded here).
    pub envelope: String,
    /// When it was enqueued.
    pub created_at: OffsetDateTime,
    /// Failed attempts before it was parked.
    pub attempts: i32,
    /// The last error.
    pub error: String,
    /// When it was parked.
    pub parked_at: OffsetDateTime,
    /// Whether the later rows of its key wait for it.
    pub blocks_key: bool,
}

/// How far behind the relay is.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Backlog {
    /// Rows not yet published (dead letters not included).
    pub pending: u64,
    /// When the oldest pending row was enqueued.
    pub oldest: Option<OffsetDateTime>,
    /// Rows parked in the dead-letter table.
    pub dead_letters: u64,
    /// The age of the oldest open transaction on the database (PostgreSQL), which holds back
    /// vacuum and, when it wrote outbox rows, the events of its keys.
    pub oldest_transaction: Option<Duration>,
    /// Scheduled messages not yet due (or due and not yet moved into the outbox by a relay);
    /// not counted in `pending`.
    pub scheduled: u64,
    /// When the earliest scheduled message is due.
    pub next_due: Option<OffsetDateTime>,
    /// Recurring schedules registered.
    pub recurring: u64,
}

impl Backlog {
    /// How long the earliest scheduled message has been due at `now` without a relay moving
    /// it into the outbox (`None` when none is due): more than a poll interval or so means no
    /// relay is running.
    pub fn overdue(&self, now: OffsetDateTime) -> Option<Duration> {
        self.next_due
            .filter(|due| *due <= now)
            .map(|due| (now - due).try_into().unwrap_or(Duration::ZERO))
    }

    /// The age of the oldest pending row at `now`.
    pub fn oldest_age(&self, now: OffsetDateTime) -> Option<Duration> {
        self.oldest
            .map(|oldest| (now - oldest).try_into().unwrap_or(Duration::ZERO))
    }
}

/// What the relay and the maintenance APIs ask of a database.
pub(crate) trait Store: Send + Sync + 'static {
    fn migrate(&self) -> BoxFuture<'_, Result<(), OutboxError>>;
    /// Shards that have pending rows (all of them: cheap on the pending index).
    fn pending_shards(&self) -> BoxFuture<'_, Result<Vec<i16>, OutboxError>>;
    /// Claims up to `limit` rows of `shard`. With `hold_keys`, rows behind a failing or
    /// blocking parked row of their key are left out.
    fn claim(
        &self,
        shard: i16,
        limit: i64,
        hold_keys: bool,
        keep_published: bool,
    ) -> BoxFuture<'_, Result<Claim, OutboxError>>;
    /// Runs forever, calling `wake` for each committed write it hears of, and with
    /// [`Wake::All`] when it may have missed some (reconnection).
    fn listen(&self, wake: Arc<dyn Fn(Wake) + Send + Sync>) -> BoxFuture<'static, ()>;
    /// Moves up to `limit` due scheduled rows into the outbox, in due order, each drawing its
    /// id then (that is how it joins its key's order). Rows locked by a caller's transaction
    /// (a cancel in progress) or whose key a writer holds are left for the next round.
    fn promote_due(&self, limit: i64) -> BoxFuture<'_, Result<Promoted, OutboxError>>;
    /// The scheduled rows, earliest due first, of `key` when given.
    fn scheduled(
        &self,
        key: Option<&str>,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<crate::ScheduledMessage>, OutboxError>>;
    /// Turns the due ticks of up to `limit` recurring schedules into scheduled rows, each in
    /// the transaction that moves its schedule past them; how many ticks.
    fn fire_recurring(&self, limit: i64) -> BoxFuture<'_, Result<usize, OutboxError>>;
    /// How long until the earliest scheduled row or recurring tick is due, by the database's
    /// clock (zero when it is due already); `None` when nothing is scheduled.
    fn next_due(&self) -> BoxFuture<'_, Result<Option<Duration>, OutboxError>>;
    fn dead_letters(&self, limit: i64) -> BoxFuture<'_, Result<Vec<DeadLetter>, OutboxError>>;
    fn replay(&self, id: i64) -> BoxFuture<'_, Result<bool, OutboxError>>;
    fn discard(&self, id: i64) -> BoxFuture<'_, Result<bool, OutboxError>>;
    fn backlog(&self) -> BoxFuture<'_, Result<Backlog, OutboxError>>;
    /// Deletes up to `limit` rows published more than `older_than` ago; returns how many.
    fn cleanup(&self, older_than: Duration, limit: i64) -> BoxFuture<'_, Result<u64, OutboxError>>;
    /// Whether several relays may run at once (each on its own shards).
    fn shards_concurrently(&self) -> bool;
    /// Whether the outbox was configured partitioned (the relay then runs
    /// [`maintain_partitions`](Self::maintain_partitions)).
    fn partitioned(&self) -> bool {
        false
    }
    /// Creates the partitions ahead and drops those whose whole range ended more than
    /// `keep` ago and that hold no pending row. `None` when the table is not partitioned.
    fn maintain_partitions(
        &self,
        keep: Duration,
    ) -> BoxFuture<'_, Result<Option<PartitionReport>, OutboxError>> {
        let _ = keep;
        Box::pin(async { Ok(None) })
    }
}

/// What a round of partition upkeep did.
#[derive(Debug, Default)]
pub(crate) struct PartitionReport {
    pub(crate) created: usize,
    pub(crate) dropped: Vec<String>,
    /// Partitions old enough to drop, kept because they hold pending rows.
    pub(crate) pinned: Vec<String>,
}

/// A stored envelope with its `deliverat` extension set to `at` (a rescheduled row). A stored
/// text that does not decode (this crate wrote it, so it always should) is kept as it is: the
/// due time moves all the same, and the relay parks what it cannot decode.
pub(crate) fn with_due_time(envelope: String, at: OffsetDateTime) -> String {
    let Ok(decoded) = ms_bus::codec::from_json(envelope.as_bytes()) else {
        return envelope;
    };
    let message = crate::OutboxMessage::event("unused", decoded).deliver_at(at);
    String::from_utf8_lossy(&ms_bus::codec::to_json(message.envelope())).into_owned()
}
