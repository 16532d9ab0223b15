//! The event log: an append-only table of envelopes, written in the writer's transaction and
//! read by projection runners in a gap-free order.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_bus::Envelope;
//! use ms_cqrs::EventLog;
//! use sqlx::Sqlite;
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let log = EventLog::<Sqlite>::default();
//! log.migrate(&pool).await?;
//!
//! let event = Envelope::builder("invoicing.invoice.created", "/invoicing")
//!     .subject("inv-1")
//!     .build()?;
//! let mut tx = pool.begin().await?;
//! // ... the application's own writes ...
//! let appended = log.append(&mut *tx, std::slice::from_ref(&event)).await?;
//! tx.commit().await?;
//!
//! let position = log.position_of(&pool, appended[0]).await?;
//! assert_eq!(position, Some(1));
//! let read = log.read(&pool, 0, 10).await?;
//! assert_eq!(read[0].1.id(), event.id());
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```
//!
//! # Order without gaps
//!
//! Every event gets a *position*. Positions start at 1, have no holes, and a position is
//! visible only when every lower one is: a reader that remembers the last position it handled
//! never skips an event whose transaction committed late (the "high-water mark" problem
//! of logs numbered by a sequence at insert time).
//!
//! - On SQLite one transaction writes at a time, so the row id is the position.
//! - On PostgreSQL rows get their position after they commit, from a *sequencer*: one at a
//!   time (an advisory lock), numbering the committed rows in id order. Projection runners
//!   reading the log run it; [`EventLog::sequence`] runs it by hand. Until then a row is
//!   committed but not yet readable, which costs latency (one poll interval of a runner), never
//!   order.
//!
//! The events of one partition key (the `partitionkey` extension, else the subject, else the
//! id) are positioned in commit order: on PostgreSQL a writer waits for the previous writer of
//! its key to commit before its row draws an id.

use std::marker::PhantomData;
use std::sync::Arc;

use ms_bus::Envelope;
use ms_outbox::TableName;

use crate::ProjectionError;
use crate::store::LoggedEvent;
use crate::store::Store;

/// The default table of the event log.
pub const DEFAULT_EVENT_LOG_TABLE: &str = "ms_event_log";

/// What [`EventLog::append`] returns for each event: its row id, which
/// [`EventLog::position_of`] turns into its position once sequenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Appended(pub i64);

/// An append-only log of envelopes in a table of `DB`. Cheap to clone.
#[derive(Debug)]
pub struct EventLog<DB: Store> {
    table: Arc<TableName>,
    quoted: Arc<str>,
    _db: PhantomData<fn() -> DB>,
}

impl<DB: Store> Clone for EventLog<DB> {
    fn clone(&self) -> Self {
        Self {
            table: Arc::clone(&self.table),
            quoted: Arc::clone(&self.quoted),
            _db: PhantomData,
        }
    }
}

impl<DB: Store> Default for EventLog<DB> {
    fn default() -> Self {
        match TableName::new(DEFAULT_EVENT_LOG_TABLE) {
            Ok(table) => Self::new(table),
            // The constant is a valid name; this arm only satisfies the type.
            Err(_) => unreachable!("DEFAULT_EVENT_LOG_TABLE is a valid table name"),
        }
    }
}

impl<DB: Store> EventLog<DB> {
    /// A log in `table`.
    pub fn new(table: TableName) -> Self {
        let quoted = table.quoted().into();
        Self {
            table: Arc::new(table),
            quoted,
            _db: PhantomData,
        }
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    pub(crate) fn quoted(&self) -> &str {
        &self.quoted
    }

    /// Creates the table and its indexes if they do not exist.
    pub async fn migrate(&self, pool: &sqlx::Pool<DB>) -> Result<(), ProjectionError> {
        DB::migrate_log(pool, &self.quoted, self.table.table()).await?;
        Ok(())
    }

    /// Appends `events` in the caller's transaction (pass `&mut *tx`): they become readable
    /// when it commits, and vanish with it when it rolls back.
    pub async fn append(
        &self,
        conn: &mut DB::Connection,
        events: &[Envelope],
    ) -> Result<Vec<Appended>, ProjectionError> {
        let rows: Vec<(String, String, String)> = events
            .iter()
            .map(|event| {
                let json = ms_bus::codec::to_json(event);
                (
                    event.ordering_key().to_owned(),
                    event.ty().to_owned(),
                    // The codec writes UTF-8 JSON; a lossy conversion can only be a no-op.
                    String::from_utf8_lossy(&json).into_owned(),
                )
            })
            .collect();
        let ids = DB::log_append(conn, &self.quoted, &rows).await?;
        Ok(ids.into_iter().map(Appended).collect())
    }

    /// Numbers committed events that have no position yet (PostgreSQL; a no-op on SQLite),
    /// up to `limit` of them; returns how many. Runners reading the log do this themselves;
    /// it is here for tools and tests. Returns 0 when another process is numbering.
    pub async fn sequence(
        &self,
        pool: &sqlx::Pool<DB>,
        limit: u32,
    ) -> Result<u64, ProjectionError> {
        Ok(DB::log_sequence(pool, &self.quoted, i64::from(limit)).await?)
    }

    /// The position of an appended event, or `None` while it is not sequenced yet (or its
    /// transaction did not commit).
    pub async fn position_of(
        &self,
        pool: &sqlx::Pool<DB>,
        appended: Appended,
    ) -> Result<Option<i64>, ProjectionError> {
        Ok(DB::log_position_of(pool, &self.quoted, appended.0).await?)
    }

    /// The highest readable position (0 when the log is empty).
    pub async fn head(&self, pool: &sqlx::Pool<DB>) -> Result<i64, ProjectionError> {
        Ok(DB::log_head(pool, &self.quoted).await?)
    }

    /// Up to `limit` events after position `after`, in order. A row that does not decode is
    /// skipped here (a runner parks it instead, with its reason).
    pub async fn read(
        &self,
        pool: &sqlx::Pool<DB>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Envelope)>, ProjectionError> {
        let rows = self.read_raw(pool, after, i64::MAX, limit).await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                ms_bus::codec::from_json(row.envelope.as_bytes())
                    .ok()
                    .map(|event| (row.position, event))
            })
            .collect())
    }

    pub(crate) async fn read_raw(
        &self,
        pool: &sqlx::Pool<DB>,
        after: i64,
        until: i64,
        limit: u32,
    ) -> Result<Vec<LoggedEvent>, sqlx::Error> {
        DB::log_read(pool, &self.quoted, after, until, i64::from(limit)).await
    }
}
