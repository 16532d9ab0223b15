//! SQLite: scheduled rows, written and cancelled in the caller's transaction, moved into the
//! outbox by the relay when due. SQLite has one writer at a time, so the move is simply a
//! short `BEGIN IMMEDIATE` transaction: no key locks, nothing to skip.

use std::time::Duration;

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{AssertSqlSafe, Row};
use time::OffsetDateTime;

use super::sqlite::{from_ms, now_ms, to_ms};
use super::{PreparedRow, Promoted, ScheduledRef};
use crate::OutboxError;
use crate::outbox_config::OutboxInner;
use crate::recurring::{CRON, DueSchedule, RecurringRow, plan_schedule, tick_rows};

/// Writes scheduled rows in the caller's transaction.
pub(super) async fn enqueue(
    conn: &mut SqliteConnection,
    outbox: &OutboxInner,
    rows: &[&PreparedRow],
) -> Result<(), OutboxError> {
    let insert = format!(
        "INSERT INTO {} (message_id, shard, partition_key, key_lock, kind, destination, \
             envelope, created_at, due_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        outbox.schema.scheduled
    );
    let now = now_ms();
    for row in rows {
        sqlx::query(AssertSqlSafe(insert.as_str()))
            .bind(&row.message_id)
            .bind(row.shard)
            .bind(&row.key)
            .bind(row.key_lock)
            .bind(row.kind)
            .bind(&row.destination)
            .bind(&row.envelope)
            .bind(now)
            .bind(row.due_at.map_or(now, to_ms))
            .execute(&mut *conn)
            .await?;
    }
    // Before the commit (there is no hook after it): the relay's timer may read too early and
    // miss the row, and then finds it at its next poll, at most a poll interval (100 ms)
    // later.
    outbox.schedule_wake.notify_one();
    Ok(())
}

/// Deletes the rows `which` names; nothing found is not an error.
pub(super) async fn cancel(
    conn: &mut SqliteConnection,
    outbox: &OutboxInner,
    which: ScheduledRef<'_>,
) -> Result<u64, OutboxError> {
    let (column, value) = match which {
        ScheduledRef::Id(id) => ("message_id", id),
        ScheduledRef::Key(key) => ("partition_key", key),
    };
    let done = sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {} WHERE {column} = ?",
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
    conn: &mut SqliteConnection,
    outbox: &OutboxInner,
    id: &str,
    at: OffsetDateTime,
) -> Result<u64, OutboxError> {
    let table = &outbox.schema.scheduled;
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, envelope FROM {table} WHERE message_id = ?"
    )))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let update = format!("UPDATE {table} SET due_at = ?2, envelope = ?3 WHERE id = ?1");
    for row in &rows {
        let envelope = super::with_due_time(row.try_get(1)?, at);
        sqlx::query(AssertSqlSafe(update.as_str()))
            .bind(row.try_get::<i64, _>(0)?)
            .bind(to_ms(at))
            .bind(envelope)
            .execute(&mut *conn)
            .await?;
    }
    if !rows.is_empty() {
        outbox.schedule_wake.notify_one();
    }
    Ok(rows.len() as u64)
}

/// Moves up to `limit` due rows into the outbox in one transaction, in due order; each draws
/// its id there, after every row already in the outbox.
pub(super) async fn promote_due(
    pool: &SqlitePool,
    outbox: &OutboxInner,
    limit: i64,
) -> Result<Promoted, OutboxError> {
    let s = &outbox.schema;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let now = now_ms();
    let mut rows = sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {sc} WHERE id IN (SELECT id FROM {sc} WHERE due_at <= ?1 \
             ORDER BY due_at, id LIMIT ?2) \
         RETURNING id, shard, partition_key, kind, destination, envelope, due_at",
        sc = s.scheduled
    )))
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|row| Ok::<_, sqlx::Error>((row.try_get::<i64, _>(6)?, row.try_get::<i64, _>(0)?, row)))
    .collect::<Result<Vec<_>, _>>()?;
    // RETURNING follows no particular order.
    rows.sort_unstable_by_key(|(due, id, _)| (*due, *id));
    let insert = format!(
        "INSERT INTO {} (shard, partition_key, kind, destination, envelope, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
        s.outbox
    );
    let mut promoted = Promoted::default();
    for (due, _, row) in &rows {
        sqlx::query(AssertSqlSafe(insert.as_str()))
            .bind(row.try_get::<i64, _>(1)?)
            .bind(row.try_get::<String, _>(2)?)
            .bind(row.try_get::<i64, _>(3)?)
            .bind(row.try_get::<String, _>(4)?)
            .bind(row.try_get::<String, _>(5)?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let late = (from_ms(now) - from_ms(*due)).max(time::Duration::ZERO);
        promoted
            .lateness
            .push(late.try_into().unwrap_or(Duration::ZERO));
    }
    tx.commit().await?;
    if !rows.is_empty() {
        // One relay drains the whole table: shard 0 stands for all of it.
        promoted.shards.push(0);
    }
    Ok(promoted)
}

/// How long until the earliest scheduled row or recurring tick is due.
pub(super) async fn next_due(
    pool: &SqlitePool,
    outbox: &OutboxInner,
) -> Result<Option<Duration>, OutboxError> {
    // A plain read, not `BEGIN IMMEDIATE`: this runs at every poll (100 ms), and must not take
    // the write lock from the application that often. An enqueue wakes the timer before its
    // commit, so this read may miss its row: the timer then looks again within a poll
    // interval.
    let due: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT min(at) FROM (SELECT min(due_at) AS at FROM {} \
                              UNION ALL SELECT min(next_tick_ms) FROM {} \
                                  WHERE cron IS NULL OR ?1)",
        outbox.schema.scheduled, outbox.schema.recurring
    )))
    .bind(CRON)
    .fetch_one(pool)
    .await?;
    Ok(due
        .map(|due| Duration::from_millis(u64::try_from(due.saturating_sub(now_ms())).unwrap_or(0))))
}

/// Inserts or updates a recurring schedule; the same interval keeps its next tick.
pub(super) async fn register(
    pool: &SqlitePool,
    outbox: &OutboxInner,
    row: &RecurringRow,
) -> Result<(), OutboxError> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {} AS r (name, every_ms, missed, kind, destination, envelope, \
             next_tick_ms, registered_at, cron, time_zone) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
         ON CONFLICT (name) DO UPDATE SET every_ms = excluded.every_ms, \
             missed = excluded.missed, kind = excluded.kind, \
             destination = excluded.destination, envelope = excluded.envelope, \
             cron = excluded.cron, time_zone = excluded.time_zone, \
             next_tick_ms = CASE WHEN r.every_ms = excluded.every_ms \
                 AND r.cron IS excluded.cron AND r.time_zone IS excluded.time_zone \
                 THEN r.next_tick_ms ELSE excluded.next_tick_ms END",
        outbox.schema.recurring
    )))
    .bind(&row.name)
    .bind(row.every_ms)
    .bind(row.missed)
    .bind(row.kind)
    .bind(&row.destination)
    .bind(&row.envelope)
    .bind(row.next_tick_ms)
    .bind(now_ms())
    .bind(&row.cron)
    .bind(&row.time_zone)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes a recurring schedule in the caller's transaction.
pub(super) async fn unregister(
    conn: &mut SqliteConnection,
    outbox: &OutboxInner,
    name: &str,
) -> Result<bool, OutboxError> {
    let done = sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {} WHERE name = ?",
        outbox.schema.recurring
    )))
    .bind(name)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Turns the due ticks of up to `limit` schedules into scheduled rows, in the transaction
/// that moves each schedule past them.
pub(super) async fn fire_recurring(
    pool: &SqlitePool,
    outbox: &OutboxInner,
    limit: i64,
) -> Result<usize, OutboxError> {
    let r = &outbox.schema.recurring;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let now = now_ms();
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT name, every_ms, missed, kind, destination, envelope, next_tick_ms, cron, \
             time_zone \
         FROM {r} WHERE next_tick_ms <= ?1 AND (cron IS NULL OR ?3) \
         ORDER BY next_tick_ms LIMIT ?2"
    )))
    .bind(now)
    .bind(limit)
    .bind(CRON)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let update = format!("UPDATE {r} SET next_tick_ms = ?2 WHERE name = ?1");
    let mut ticks = Vec::new();
    for row in rows {
        let schedule = DueSchedule {
            name: row.try_get(0)?,
            every_ms: row.try_get(1)?,
            missed: row.try_get(2)?,
            kind: row.try_get(3)?,
            destination: row.try_get(4)?,
            envelope: row.try_get(5)?,
            next_tick_ms: row.try_get(6)?,
            cron: row.try_get(7)?,
            time_zone: row.try_get(8)?,
        };
        let (due, next) = plan_schedule(&schedule, now);
        ticks.extend(tick_rows(outbox, &schedule, &due));
        sqlx::query(AssertSqlSafe(update.as_str()))
            .bind(&schedule.name)
            .bind(next)
            .execute(&mut *tx)
            .await?;
    }
    if !ticks.is_empty() {
        let refs: Vec<&PreparedRow> = ticks.iter().collect();
        enqueue(&mut tx, outbox, &refs).await?;
    }
    tx.commit().await?;
    Ok(ticks.len())
}
