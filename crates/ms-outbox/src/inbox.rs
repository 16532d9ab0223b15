//! [`Inbox`]: effectively-once handling over an at-least-once bus.
//!
//! A bus delivers at least once: after a crash, a lost acknowledgement or a relay's retry the
//! same envelope comes again. A handler whose effect is a database write records the
//! envelope's identity in the same transaction as the write; a redelivery then finds it
//! recorded and skips the write. The record and the effect commit or roll back together, so
//! the effect happens exactly once however often the envelope arrives.
//!
//! The identity is the envelope's source and id together, its
//! [`dedup_key`](ms_bus::Envelope::dedup_key), as CloudEvents identifies an event and as the
//! brokers deduplicate: the same id from two producers is two events, both handled.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_bus::Envelope;
//! use ms_outbox::{Inbox, OutboxError};
//! use sqlx::{Sqlite, SqlitePool};
//!
//! let pool = SqlitePool::connect("sqlite::memory:").await?;
//! let inbox = Inbox::<Sqlite>::default();
//! inbox.migrate(&pool).await?;
//! sqlx::query("CREATE TABLE payments (invoice TEXT NOT NULL)").execute(&pool).await?;
//!
//! // The handler of the "billing" consumer: the record and the write share one transaction.
//! async fn handle(pool: &SqlitePool, inbox: &Inbox<Sqlite>, paid: &Envelope) -> Result<(), OutboxError> {
//!     let mut tx = pool.begin().await?;
//!     if inbox.record(&mut *tx, "billing", paid).await? {
//!         sqlx::query("INSERT INTO payments (invoice) VALUES (?)")
//!             .bind(paid.subject())
//!             .execute(&mut *tx)
//!             .await?;
//!     }
//!     tx.commit().await?;
//!     Ok(())
//! }
//!
//! let paid = Envelope::builder("billing.invoice.paid", "/payments").subject("inv-42").build()?;
//! handle(&pool, &inbox, &paid).await?;
//! handle(&pool, &inbox, &paid).await?; // redelivered: nothing happens
//! let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&pool).await?;
//! assert_eq!(payments, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Concurrent deliveries
//!
//! On PostgreSQL, a transaction that records an id another open transaction has just recorded
//! waits (on the primary key) until that transaction ends: if it committed, `record` returns
//! `false`; if it rolled back, `true`. So two copies of one envelope handled at once by two
//! consumer instances still take effect once. Under `REPEATABLE READ` or `SERIALIZABLE`
//! isolation the waiting transaction fails with a serialization error instead (its snapshot
//! cannot see the other's row); retry it, and the retry sees the id recorded. Record first
//! in the handler's transaction, so that the wait happens before any other work.
//!
//! On SQLite writers take turns anyway: the second transaction waits for the database's write
//! lock (up to the connection's busy timeout), then finds the id. That wait needs `record` to
//! be the transaction's first statement, or the transaction to start with
//! `pool.begin_with("BEGIN IMMEDIATE")`: a transaction that has read before its first write
//! may be answered "database is locked" at once rather than wait.
//!
//! # Rows from before source + id
//!
//! Earlier versions recorded the bare id in `envelope_id`; the column now holds the dedup key.
//! The table is unchanged (no migration, so instances of both versions can share it during a
//! rolling upgrade), and the old rows keep counting: [`record`](Inbox::record) also looks for
//! a row holding the envelope's bare id, so an envelope handled before the upgrade is not
//! handled again after it. Such a row still matches an envelope of that id from any source
//! (the old rule) until [`cleanup`](Inbox::cleanup) removes it; rows written since match by
//! source and id only. An instance of the earlier version, during the upgrade, does not see
//! the new rows: deploy the new version before its consumers see redeliveries, as with any
//! change of a handler.
//!
//! # Cleanup
//!
//! The inbox only has to remember an id for as long as the bus may redeliver it: a JetStream
//! consumer's ack wait times its max deliveries, a relay's retry horizon, a replayed dead
//! letter. Call [`cleanup`](Inbox::cleanup) now and then (daily, say) with a retention well
//! beyond that; it deletes in bounded batches, each its own short statement.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use ms_bus::Envelope;

use crate::backend::{Backend, InboxStatements};
use crate::schema::{Migration, derived_name};
use crate::{OutboxError, TableName};

/// The table name [`Inbox::default`] uses.
pub const DEFAULT_INBOX_TABLE: &str = "ms_inbox";

/// Rows [`Inbox::cleanup`] deletes per statement when told 0: large enough that cleanup
/// keeps up with busy consumers, small enough that each statement is short.
pub const DEFAULT_INBOX_CLEANUP_BATCH: u32 = 10_000;

/// Records which envelopes each consumer has handled, in the consumer's own transaction, so
/// that a handler writing to the database is effectively-once over an at-least-once bus. See
/// the [module docs](crate::inbox) for an example and for what happens under concurrency.
///
/// The table (default [`DEFAULT_INBOX_TABLE`]) holds `(consumer, envelope_id, handled_at)`
/// with the primary key `(consumer, envelope_id)`, where `envelope_id` is the envelope's
/// [`dedup_key`](ms_bus::Envelope::dedup_key) (source and id; see
/// [rows from before](crate::inbox#rows-from-before-source--id)): consumers of the same
/// envelopes deduplicate separately. Cloning is cheap.
pub struct Inbox<DB: Backend> {
    inner: Arc<InboxInner>,
    _db: PhantomData<fn() -> DB>,
}

struct InboxInner {
    table: TableName,
    statements: InboxStatements,
}

impl<DB: Backend> Clone for Inbox<DB> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            _db: PhantomData,
        }
    }
}

impl<DB: Backend> fmt::Debug for Inbox<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("table", &self.inner.table.to_string())
            .finish()
    }
}

impl<DB: Backend> Default for Inbox<DB> {
    /// The inbox in table [`DEFAULT_INBOX_TABLE`].
    fn default() -> Self {
        Self::new(TableName::new(DEFAULT_INBOX_TABLE).expect("the default table name is valid"))
    }
}

impl<DB: Backend> Inbox<DB> {
    /// The inbox in `table`. Give it a name of its own, not an outbox's: versions are recorded
    /// per table name in `ms_outbox_schema`.
    pub fn new(table: TableName) -> Self {
        let statements = DB::inbox_statements(&table.quoted());
        Self {
            inner: Arc::new(InboxInner { table, statements }),
            _db: PhantomData,
        }
    }

    /// The inbox table.
    pub fn table(&self) -> &TableName {
        &self.inner.table
    }

    /// Creates or upgrades the inbox table (idempotent, safe to run from several processes at
    /// once). Its version is recorded in `ms_outbox_schema`, like an outbox's.
    pub async fn migrate(&self, pool: &sqlx::Pool<DB>) -> Result<(), OutboxError> {
        let table = &self.inner.table;
        DB::apply_migrations(pool, table, &table.to_string(), &self.migrations()).await
    }

    /// The migrations [`migrate`](Self::migrate) applies, rendered for this table, for
    /// projects that run migrations with their own tool.
    pub fn migrations(&self) -> Vec<Migration> {
        DB::INBOX_MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| Migration {
                version,
                description,
                sql: render::<DB>(&self.inner.table, sql),
            })
            .collect()
    }

    /// Records that `consumer` handles `envelope` (by its source and id), in the caller's
    /// transaction (pass `&mut *tx`). Returns `true` the first time: go on and handle it;
    /// `false` when it was recorded before: skip the work, commit (or roll back) and
    /// acknowledge the delivery.
    ///
    /// The record counts only if the transaction commits: a handler that fails and rolls back
    /// leaves the envelope unrecorded, so its redelivery is handled. On PostgreSQL a concurrent
    /// transaction that records the same envelope waits for this one to end; see the
    /// [module docs](crate::inbox#concurrent-deliveries).
    pub async fn record(
        &self,
        conn: &mut DB::Connection,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<bool, OutboxError> {
        self.record_id(conn, consumer, envelope.source(), envelope.id())
            .await
    }

    /// [`record`](Self::record) for an event known by its `source` and `id` alone (both are
    /// needed: an id is unique only within its source).
    pub async fn record_id(
        &self,
        conn: &mut DB::Connection,
        consumer: &str,
        source: &str,
        id: &str,
    ) -> Result<bool, OutboxError> {
        let key = ms_bus::dedup_key(source, id);
        DB::inbox_record(conn, &self.inner.statements, consumer, &key, id).await
    }

    /// Deletes the entries recorded more than `older_than` ago, in statements of at most
    /// `batch` rows each ([`DEFAULT_INBOX_CLEANUP_BATCH`] when 0), one after another until none
    /// is left: short statements, no lock held long. Returns how many rows were deleted.
    ///
    /// Keep `older_than` well beyond the longest time the bus may redeliver an envelope: an
    /// envelope redelivered after its entry was deleted is handled again.
    pub async fn cleanup(
        &self,
        pool: &sqlx::Pool<DB>,
        older_than: Duration,
        batch: u32,
    ) -> Result<u64, OutboxError> {
        let batch = if batch == 0 {
            DEFAULT_INBOX_CLEANUP_BATCH
        } else {
            batch
        };
        let mut deleted = 0;
        loop {
            let done =
                DB::inbox_cleanup(pool, &self.inner.statements, older_than, i64::from(batch))
                    .await?;
            deleted += done;
            if done < u64::from(batch) {
                return Ok(deleted);
            }
        }
    }
}

/// Substitutes the placeholders of an inbox migration file.
fn render<DB: Backend>(table: &TableName, sql: &str) -> String {
    let index = derived_name(table.table(), "_handled_idx");
    let index = match (DB::QUALIFIED_INDEXES, table.schema()) {
        (true, Some(schema)) => format!(r#""{schema}"."{index}""#),
        _ => format!(r#""{index}""#),
    };
    sql.replace("{inbox_handled_idx}", &index)
        .replace("{inbox_table}", &format!(r#""{}""#, table.table()))
        .replace("{inbox}", &table.quoted())
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use sqlx::Sqlite;
    use sqlx::sqlite::SqlitePoolOptions;

    use super::*;
    use crate::backend::sealed::Sealed;

    #[test]
    fn placeholders_are_all_substituted() {
        let inbox = Inbox::<Sqlite>::new(TableName::new("billing.inbox").unwrap());
        let sql = &inbox.migrations()[0].sql;
        assert!(!sql.contains('{'), "{sql}");
        assert!(sql.contains(r#""billing"."inbox_handled_idx""#), "{sql}");
        assert!(sql.contains(r#"ON "inbox" ("#), "{sql}");
    }

    #[tokio::test]
    async fn one_cleanup_statement_deletes_at_most_its_batch() {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let inbox = Inbox::<Sqlite>::default();
        inbox.migrate(&pool).await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        for i in 0..25 {
            assert!(
                inbox
                    .record_id(&mut conn, "c", "/s", &i.to_string())
                    .await
                    .unwrap()
            );
        }
        drop(conn);
        sqlx::query("UPDATE ms_inbox SET handled_at = handled_at - 3600000")
            .execute(&pool)
            .await
            .unwrap();
        let statements = &inbox.inner.statements;
        let one = Sqlite::inbox_cleanup(&pool, statements, Duration::from_secs(60), 10);
        assert_eq!(one.await.unwrap(), 10);
        assert_eq!(
            inbox
                .cleanup(&pool, Duration::from_secs(60), 10)
                .await
                .unwrap(),
            15
        );
    }
}
