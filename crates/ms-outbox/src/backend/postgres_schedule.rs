//! PostgreSQL: scheduled rows, written and cancelled in the caller's transaction, moved into
//! the outbox by relays when due.
//!
//! The relay's two statements on the scheduled table use its `(due_at, id)` index, however
//! many rows wait in the future: the earliest due time is the index's first entry
//! (`min(due_at)`), and the move reads due rows in index order, stopping at the first row not
//! yet due. With 1,000,000 rows due tomorrow (measured on PostgreSQL 15):
//!
//! ```text
//! EXPLAIN SELECT min(due_at) FROM ms_outbox_scheduled;
//!  Result
//!    InitPlan 1 (returns $0)
//!      ->  Limit
//!            ->  Index Only Scan using ms_outbox_scheduled_due_idx on ms_outbox_scheduled
//!                  Index Cond: (due_at IS NOT NULL)
//!
//! EXPLAIN (the move's row choice)
//! SELECT id FROM ms_outbox_scheduled WHERE due_at <= now() ORDER BY due_at, id LIMIT 500
//! FOR UPDATE SKIP LOCKED;
//!  Limit
//!    ->  LockRows
//!          ->  Index Scan using ms_outbox_scheduled_due_idx on ms_outbox_scheduled
//!                Index Cond: (due_at <= now())
//! ```
//!
//! The claim of the outbox table never sees scheduled rows at all: they are not in it.

use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{AssertSqlSafe, Row};
use time::OffsetDateTime;

use super::{PreparedRow, Promoted, ScheduledRef};
use crate::OutboxError;
use crate::outbox::OutboxInner;

/// The notification payload that tells relays a scheduled row was written or moved (shards
/// are numbers, so it cannot be mistaken for one).
pub(super) const NOTIFY_SCHEDULED: &str = "s";

/// Writes scheduled rows in the caller's transaction and, at its commit, tells the relays'
/// timers.
pub(super) async fn enqueue(
    conn: &mut PgConnection,
    outbox: &OutboxInner,
    rows: &[&PreparedRow],
) -> Result<(), OutboxError> {
    let mut message_id = Vec::with_capacity(rows.len());
    let mut shard = Vec::with_capacity(rows.len());
    let mut key = Vec::with_capacity(rows.len());
    let mut key_lock = Vec::with_capacity(rows.len());
    let mut kind = Vec::with_capacity(rows.len());
    let mut destination = Vec::with_capacity(rows.len());
    let mut envelope = Vec::with_capacity(rows.len());
    let mut due_at = Vec::with_capacity(rows.len());
    for row in rows {
        message_id.push(row.message_id.as_str());
        shard.push(row.shard);
        key.push(row.key.as_str());
        key_lock.push(row.key_lock);
        kind.push(row.kind);
        destination.push(row.destination.as_str());
        envelope.push(row.envelope.as_str());
        due_at.push(row.due_at.unwrap_or_else(OffsetDateTime::now_utc));
    }
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {} (message_id, shard, partition_key, key_lock, kind, destination, \
             envelope, due_at) \
         SELECT * FROM unnest($1::text[], $2::int2[], $3::text[], $4::int4[], $5::int2[], \
             $6::text[], $7::text[], $8::timestamptz[])",
        outbox.schema.scheduled
    )))
    .bind(&message_id)
    .bind(&shard)
    .bind(&key)
    .bind(&key_lock)
    .bind(&kind)
    .bind(&destination)
    .bind(&envelope)
    .bind(&due_at)
    .execute(&mut *conn)
    .await?;
    notify_timers(conn, outbox).await
}

/// Queues the notification that wakes the relays' timers (delivered at commit, dropped on
/// rollback).
async fn notify_timers(conn: &mut PgConnection, outbox: &OutboxInner) -> Result<(), OutboxError> {
    if outbox.notify {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&outbox.schema.channel)
            .bind(NOTIFY_SCHEDULED)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Deletes the rows `which` names; nothing found is not an error (the caller's transaction
/// goes on).
pub(super) async fn cancel(
    conn: &mut PgConnection,
    outbox: &OutboxInner,
    which: ScheduledRef<'_>,
) -> Result<u64, OutboxError> {
    let (column, value) = match which {
        ScheduledRef::Id(id) => ("message_id", id),
        ScheduledRef::Key(key) => ("partition_key", key),
    };
    // A row a relay is moving right now is locked: this waits for the move to commit, then
    // finds the row gone (it is due, and will be published).
    let done = sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {} WHERE {column} = $1",
        outbox.schema.scheduled
    )))
    .bind(value)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Moves the due time of the rows with envelope id `id`, rewriting their `deliverat`
/// extension to match.
pub(super) async fn reschedule(
    conn: &mut PgConnection,
    outbox: &OutboxInner,
    id: &str,
    at: OffsetDateTime,
) -> Result<u64, OutboxError> {
    let table = &outbox.schema.scheduled;
    // Locked first, so that a relay's move (which skips locked rows) cannot take them between
    // the read and the update.
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, envelope FROM {table} WHERE message_id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut envelopes = Vec::with_capacity(rows.len());
    for row in rows {
        ids.push(row.try_get::<i64, _>(0)?);
        envelopes.push(super::with_due_time(row.try_get(1)?, at));
    }
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {table} s SET due_at = $3, envelope = u.envelope \
         FROM unnest($1::int8[], $2::text[]) AS u(id, envelope) WHERE s.id = u.id"
    )))
    .bind(&ids)
    .bind(&envelopes)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    notify_timers(conn, outbox).await?;
    Ok(ids.len() as u64)
}

/// Moves up to `limit` due rows into the outbox in one transaction, in due order.
///
/// Each row is taken only if its key's writer lock is free (`pg_try_advisory_xact_lock`) and
/// it is not locked by a caller's cancel or reschedule (`SKIP LOCKED`): the move never waits,
/// so it can neither deadlock with a transaction that enqueues and cancels, nor stall the
/// relay. Holding the key's lock while the row draws its id is what puts it after every row
/// of its key committed before and before every row committed after, as any writer.
pub(super) async fn promote_due(
    pool: &PgPool,
    outbox: &OutboxInner,
    limit: i64,
) -> Result<Promoted, OutboxError> {
    let s = &outbox.schema;
    let key_lock = if outbox.key_order {
        format!(
            "AND pg_try_advisory_xact_lock({}, key_lock)",
            s.key_lock_space
        )
    } else {
        String::new()
    };
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(AssertSqlSafe(format!(
        "WITH due AS ( \
             DELETE FROM {sc} WHERE id = ANY(ARRAY( \
                 SELECT id FROM {sc} WHERE due_at <= now() {key_lock} \
                 ORDER BY due_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)) \
             RETURNING id, shard, partition_key, kind, destination, envelope, due_at), \
         moved AS ( \
             INSERT INTO {t} (shard, partition_key, kind, destination, envelope) \
             SELECT shard, partition_key, kind, destination, envelope FROM due \
             ORDER BY due_at, id \
             RETURNING 1) \
         SELECT shard, EXTRACT(EPOCH FROM now() - due_at)::float8 FROM due",
        sc = s.scheduled,
        t = s.outbox
    )))
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut promoted = Promoted::default();
    for row in rows {
        let shard: i16 = row.try_get(0)?;
        let late: f64 = row.try_get(1)?;
        promoted
            .lateness
            .push(Duration::try_from_secs_f64(late.max(0.0)).unwrap_or_default());
        if !promoted.shards.contains(&shard) {
            promoted.shards.push(shard);
        }
    }
    if outbox.notify && !promoted.shards.is_empty() {
        // The other relays learn of the rows as of any write (this relay queues them itself).
        sqlx::query(
            "SELECT count(*) FROM (SELECT pg_notify($1, s::text) FROM unnest($2::int2[]) AS s) n",
        )
        .bind(&s.channel)
        .bind(&promoted.shards)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(promoted)
}

/// How long until the earliest scheduled row is due, by the database's clock.
pub(super) async fn next_due(
    pool: &PgPool,
    outbox: &OutboxInner,
) -> Result<Option<Duration>, OutboxError> {
    let seconds: Option<f64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT EXTRACT(EPOCH FROM min(due_at) - now())::float8 FROM {}",
        outbox.schema.scheduled
    )))
    .fetch_one(pool)
    .await?;
    Ok(seconds.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)))
}
