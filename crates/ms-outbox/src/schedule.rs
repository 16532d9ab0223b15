//! Scheduled messages: sent later, cancelled or moved in the caller's transaction.
//!
//! A message with a due time ([`deliver_at`], [`deliver_after`]) is enqueued like any other,
//! in the caller's transaction, with the trace context and correlation ID of that moment. It
//! waits in a table of its own (the outbox's name with `_scheduled`) until it is due; then a
//! relay moves it into the outbox, where it draws its id and is published like an immediate
//! message: never before its due time, at least once, under its envelope id as the broker's
//! dedup key. Until then [`Outbox::cancel`] deletes it and [`Outbox::reschedule`]
//! moves it, both in a transaction of the caller's (a saga's timeout is cancelled in the
//! transaction that records the reply); finding nothing is an answer, not an error.
//!
//! The order rule is on [`OutboxMessage`](crate::OutboxMessage#scheduled-messages): a scheduled
//! message joins its key's order at its due time, and holds no immediate message back.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use ms_bus::Envelope;
//! use ms_outbox::{Cancellation, Outbox, OutboxMessage};
//! use sqlx::Sqlite;
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let outbox = Outbox::<Sqlite>::default();
//! outbox.migrate(&pool).await?;
//!
//! // The invoice's reminder, due in 30 days, with the invoice.
//! let mut tx = pool.begin().await?;
//! let overdue = Envelope::builder("invoicing.invoice.overdue", "/invoicing")
//!     .id("inv-42-overdue")
//!     .subject("inv-42")
//!     .build()?;
//! let reminder = OutboxMessage::event("invoicing.invoice", overdue)
//!     .deliver_after(Duration::from_secs(30 * 24 * 3600));
//! outbox.enqueue(&mut *tx, reminder).await?;
//! tx.commit().await?;
//! assert_eq!(outbox.backlog(&pool).await?.scheduled, 1);
//!
//! // Paid: no reminder, in the transaction that records the payment.
//! let mut tx = pool.begin().await?;
//! assert_eq!(outbox.cancel(&mut *tx, "inv-42-overdue").await?, Cancellation::Cancelled);
//! // A second cancel finds nothing, and the transaction goes on.
//! assert_eq!(outbox.cancel(&mut *tx, "inv-42-overdue").await?, Cancellation::NotScheduled);
//! tx.commit().await?;
//! assert_eq!(outbox.backlog(&pool).await?.scheduled, 0);
//! # Ok(())
//! # }
//! ```
//!
//! [`deliver_at`]: crate::OutboxMessage::deliver_at
//! [`deliver_after`]: crate::OutboxMessage::deliver_after

use time::OffsetDateTime;

use crate::backend::{Backend, ScheduledRef};
use crate::{Outbox, OutboxError};

/// A scheduled message not yet due, as [`Outbox::scheduled`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduledMessage {
    /// The envelope's id (what [`Outbox::cancel`] and [`Outbox::reschedule`] take).
    pub id: String,
    /// Event or command.
    pub kind: crate::MessageKind,
    /// The topic or command destination.
    pub destination: String,
    /// The partition key.
    pub partition_key: String,
    /// When it is due.
    pub due_at: OffsetDateTime,
    /// When it was scheduled.
    pub created_at: OffsetDateTime,
}

/// What [`Outbox::cancel`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub enum Cancellation {
    /// The message was waiting and is gone: it will not be published (once the transaction
    /// commits; a rollback keeps it).
    Cancelled,
    /// Nothing with this id waits: it is due already (published, or about to be), it was
    /// cancelled before, or it never existed. The database cannot tell these apart once a
    /// message has left the schedule; the transaction is unaffected.
    NotScheduled,
}

/// What [`Outbox::reschedule`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub enum Rescheduling {
    /// The message now waits until the new time (once the transaction commits).
    Moved,
    /// Nothing with this id waits (see [`Cancellation::NotScheduled`]); nothing changed.
    NotScheduled,
}

impl<DB: Backend> Outbox<DB> {
    /// Cancels the scheduled messages whose envelope id is `id`, in the caller's transaction
    /// (pass `&mut *tx`): they will never be published if it commits, and are still scheduled
    /// if it rolls back. A message that is due already is not cancelled: the answer is
    /// [`Cancellation::NotScheduled`], never an error that would abort the transaction (an
    /// error means the database failed).
    ///
    /// A message a relay is moving into the outbox at that very moment makes the cancel wait
    /// for the move's commit (milliseconds), then answer `NotScheduled`. On PostgreSQL at
    /// `REPEATABLE READ` or `SERIALIZABLE`, that race is a serialization failure instead, as
    /// for any row updated concurrently.
    pub async fn cancel(
        &self,
        conn: &mut DB::Connection,
        id: &str,
    ) -> Result<Cancellation, OutboxError> {
        let found = DB::cancel(conn, &self.inner, ScheduledRef::Id(id)).await?;
        Ok(if found > 0 {
            Cancellation::Cancelled
        } else {
            Cancellation::NotScheduled
        })
    }

    /// Cancels every scheduled message of partition key `key` not yet due, in the caller's
    /// transaction, as [`cancel`](Self::cancel) does; returns how many (0 is not an error).
    pub async fn cancel_key(
        &self,
        conn: &mut DB::Connection,
        key: &str,
    ) -> Result<u64, OutboxError> {
        DB::cancel(conn, &self.inner, ScheduledRef::Key(key)).await
    }

    /// The scheduled messages not yet due, earliest first, at most `limit`; only those of
    /// partition key `key` when given (for operators: what is pending for an aggregate).
    pub async fn scheduled(
        &self,
        pool: &sqlx::Pool<DB>,
        key: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ScheduledMessage>, OutboxError> {
        self.store(pool).scheduled(key, limit).await
    }

    /// Moves the due time of the scheduled messages whose envelope id is `id` to `at`, in the
    /// caller's transaction, and their envelope's
    /// [`deliverat`](crate::DELIVER_AT_EXTENSION) extension with it. A message already due is
    /// left alone ([`Rescheduling::NotScheduled`]); the same races as for
    /// [`cancel`](Self::cancel) apply.
    pub async fn reschedule(
        &self,
        conn: &mut DB::Connection,
        id: &str,
        at: OffsetDateTime,
    ) -> Result<Rescheduling, OutboxError> {
        let found = DB::reschedule(conn, &self.inner, id, at).await?;
        Ok(if found > 0 {
            Rescheduling::Moved
        } else {
            Rescheduling::NotScheduled
        })
    }
}
