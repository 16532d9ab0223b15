//! SQLite, the embedded default: one writer at a time, so ids are commit order already; the
//! relay drains the whole table as one shard.
//!
//! SQLite has one write lock for the whole database, so the relay never holds it while it
//! publishes: a slow or unreachable broker would otherwise fail every application write with
//! "database is locked" once the busy timeout passes, the very coupling an outbox removes. A
//! batch is read in one short `BEGIN IMMEDIATE` transaction and its outcome written in
//! another. One relay per database (the documented setup) has one worker, so its batches do
//! not overlap; a second relay on the same file would publish duplicates, never lose a row.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool};
use sqlx::{AssertSqlSafe, Row};
use time::OffsetDateTime;

use super::sqlite_schedule as schedule;
use super::{
    Backlog, BatchOutcome, Claim, ClaimedBatch, DeadLetter, InboxStatements, PreparedRow, Promoted,
    ScheduledRef, Store, StoredRow, Wake, sealed,
};
use crate::outbox_config::OutboxInner;
use crate::recurring::RecurringRow;
use crate::schema::{OutboxSchema, outbox_migrations, pending_migrations, versions_table};
use crate::{MessageKind, OutboxError};

type Sql = Arc<str>;

#[allow(private_interfaces)] // Sealed: callable only inside this crate.
impl sealed::Sealed for Sqlite {
    const MIGRATIONS: &'static [(i64, &'static str, &'static str)] = &[
        (
            1,
            "outbox and dead-letter tables",
            include_str!("../../migrations/sqlite/0001_outbox.sql"),
        ),
        (
            2,
            "scheduled messages",
            include_str!("../../migrations/sqlite/0002_scheduled.sql"),
        ),
        (
            3,
            "recurring schedules",
            include_str!("../../migrations/sqlite/0003_recurring.sql"),
        ),
    ];
    // SQLite has no table partitioning; `OutboxBuilder::partitioned` exists only for
    // PostgreSQL, so this is never chosen.
    const PARTITIONED_MIGRATIONS: &'static [(i64, &'static str, &'static str)] = Self::MIGRATIONS;
    const QUALIFIED_INDEXES: bool = true;

    fn enqueue<'a>(
        conn: &'a mut SqliteConnection,
        outbox: &'a OutboxInner,
        rows: &'a [PreparedRow],
    ) -> BoxFuture<'a, Result<(), OutboxError>> {
        Box::pin(async move {
            let insert = AssertSqlSafe(Arc::<str>::from(format!(
                "INSERT INTO {} (shard, partition_key, kind, destination, envelope, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
                outbox.schema.outbox
            )));
            let now = now_ms();
            let later: Vec<&PreparedRow> = rows.iter().filter(|r| r.due_at.is_some()).collect();
            if !later.is_empty() {
                schedule::enqueue(conn, outbox, &later).await?;
            }
            for row in rows.iter().filter(|r| r.due_at.is_none()) {
                sqlx::query(AssertSqlSafe(Arc::clone(&insert.0)))
                    .bind(row.shard)
                    .bind(&row.key)
                    .bind(row.kind)
                    .bind(&row.destination)
                    .bind(&row.envelope)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
            }
            // The caller's transaction now holds SQLite's write lock until it ends, so a relay
            // woken this early blocks in `BEGIN IMMEDIATE` until the commit, then sees the rows.
            outbox.wake.notify_one();
            Ok(())
        })
    }

    fn store(pool: SqlitePool, outbox: Arc<OutboxInner>) -> Arc<dyn Store> {
        Arc::new(SqliteStore::new(pool, outbox))
    }

    fn cancel<'a>(
        conn: &'a mut SqliteConnection,
        outbox: &'a OutboxInner,
        which: ScheduledRef<'a>,
    ) -> BoxFuture<'a, Result<u64, OutboxError>> {
        Box::pin(schedule::cancel(conn, outbox, which))
    }

    fn reschedule<'a>(
        conn: &'a mut SqliteConnection,
        outbox: &'a OutboxInner,
        id: &'a str,
        at: OffsetDateTime,
    ) -> BoxFuture<'a, Result<u64, OutboxError>> {
        Box::pin(schedule::reschedule(conn, outbox, id, at))
    }

    fn register<'a>(
        pool: &'a SqlitePool,
        outbox: &'a OutboxInner,
        row: &'a RecurringRow,
    ) -> BoxFuture<'a, Result<(), OutboxError>> {
        Box::pin(schedule::register(pool, outbox, row))
    }

    fn unregister<'a>(
        conn: &'a mut SqliteConnection,
        outbox: &'a OutboxInner,
        name: &'a str,
    ) -> BoxFuture<'a, Result<bool, OutboxError>> {
        Box::pin(schedule::unregister(conn, outbox, name))
    }

    fn apply_migrations<'a>(
        pool: &'a SqlitePool,
        like: &'a crate::TableName,
        object: &'a str,
        migrations: &'a [crate::Migration],
    ) -> BoxFuture<'a, Result<(), OutboxError>> {
        Box::pin(apply_migrations(pool, like, object, migrations))
    }

    const INBOX_MIGRATIONS: &'static [(i64, &'static str, &'static str)] = &[(
        1,
        "inbox table",
        include_str!("../../migrations/sqlite/0001_inbox.sql"),
    )];

    fn inbox_statements(inbox: &str) -> InboxStatements {
        InboxStatements {
            // `?4`, the bare id, finds rows recorded before keys were source + id. (The
            // `WHERE` also keeps SQLite from reading `ON CONFLICT` as a join constraint.)
            record: Arc::from(format!(
                "INSERT INTO {inbox} (consumer, envelope_id, handled_at) SELECT ?1, ?2, ?3 \
                 WHERE NOT EXISTS (SELECT 1 FROM {inbox} WHERE consumer = ?1 AND envelope_id = ?4) \
                 ON CONFLICT DO NOTHING"
            )),
            cleanup: Arc::from(format!(
                "DELETE FROM {inbox} WHERE (consumer, envelope_id) IN ( \
                     SELECT consumer, envelope_id FROM {inbox} WHERE handled_at < ?1 LIMIT ?2)"
            )),
        }
    }

    fn inbox_record<'a>(
        conn: &'a mut SqliteConnection,
        statements: &'a InboxStatements,
        consumer: &'a str,
        key: &'a str,
        legacy_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, OutboxError>> {
        Box::pin(async move {
            let done = sqlx::query(AssertSqlSafe(Arc::clone(&statements.record)))
                .bind(consumer)
                .bind(key)
                .bind(now_ms())
                .bind(legacy_id)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn inbox_cleanup<'a>(
        pool: &'a SqlitePool,
        statements: &'a InboxStatements,
        older_than: Duration,
        limit: i64,
    ) -> BoxFuture<'a, Result<u64, OutboxError>> {
        Box::pin(async move {
            let done = sqlx::query(AssertSqlSafe(Arc::clone(&statements.cleanup)))
                .bind(now_ms().saturating_sub(millis(older_than)))
                .bind(limit)
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
    }
}

pub(crate) fn now_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc())
}

pub(crate) fn to_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

struct Statements {
    claim_holding_keys: Sql,
    claim: Sql,
    delete: Sql,
    mark: Sql,
    fail: Sql,
    park: Sql,
    park_delete: Sql,
}

pub(crate) struct SqliteStore {
    pool: SqlitePool,
    outbox: Arc<OutboxInner>,
    statements: Arc<Statements>,
}

impl SqliteStore {
    fn new(pool: SqlitePool, outbox: Arc<OutboxInner>) -> Self {
        let s = &outbox.schema;
        let (t, d) = (&s.outbox, &s.dead_letters);
        let select = "SELECT o.id, o.kind, o.destination, o.envelope, o.created_at, \
                      o.strikes, o.attempts, o.partition_key, o.last_attempt_at";
        let pending = "o.published_at IS NULL AND (o.available_at IS NULL OR o.available_at <= ?1)";
        let statements = Statements {
            claim_holding_keys: Arc::from(format!(
                "{select} FROM {t} o WHERE {pending} \
                 AND NOT EXISTS (SELECT 1 FROM {t} w WHERE w.attempts > 0 \
                     AND w.published_at IS NULL AND w.partition_key = o.partition_key \
                     AND w.id < o.id) \
                 AND NOT EXISTS (SELECT 1 FROM {d} x WHERE x.blocks_key \
                     AND x.partition_key = o.partition_key) \
                 ORDER BY o.id LIMIT ?2"
            )),
            claim: Arc::from(format!(
                "{select} FROM {t} o WHERE {pending} ORDER BY o.id LIMIT ?2"
            )),
            delete: Arc::from(format!(
                "DELETE FROM {t} WHERE id IN (SELECT value FROM json_each(?1))"
            )),
            mark: Arc::from(format!(
                "UPDATE {t} SET published_at = ?2 WHERE id IN (SELECT value FROM json_each(?1))"
            )),
            fail: Arc::from(format!(
                "UPDATE {t} SET attempts = attempts + 1, strikes = strikes + ?2, \
                 last_error = ?3, last_attempt_at = ?4, available_at = ?4 + ?5 WHERE id = ?1"
            )),
            park: Arc::from(format!(
                "INSERT INTO {d} (id, shard, partition_key, kind, destination, envelope, \
                     created_at, attempts, error, parked_at, blocks_key) \
                 SELECT id, shard, partition_key, kind, destination, envelope, created_at, \
                     attempts + 1, ?2, ?3, ?4 FROM {t} WHERE id = ?1"
            )),
            park_delete: Arc::from(format!("DELETE FROM {t} WHERE id = ?1")),
        };
        Self {
            pool,
            outbox,
            statements: Arc::new(statements),
        }
    }

    fn schema(&self) -> &OutboxSchema {
        &self.outbox.schema
    }
}

/// Applies `migrations` to `object` (a table), recording the version reached.
pub(crate) async fn apply_migrations(
    pool: &SqlitePool,
    like: &crate::TableName,
    object: &str,
    migrations: &[crate::Migration],
) -> Result<(), OutboxError> {
    let versions = versions_table(like);
    // `BEGIN IMMEDIATE` takes the write lock first: migrators take turns.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {versions} (object TEXT PRIMARY KEY, \
         version INTEGER NOT NULL, applied_at INTEGER NOT NULL)"
    )))
    .execute(&mut *tx)
    .await?;
    let current: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM {versions} WHERE object = ?"
    )))
    .bind(object)
    .fetch_optional(&mut *tx)
    .await?;
    let (known, pending) = pending_migrations(object, current, migrations)?;
    for migration in pending {
        sqlx::raw_sql(AssertSqlSafe(migration.sql.clone()))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {versions} (object, version, applied_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (object) DO UPDATE SET version = excluded.version, \
         applied_at = excluded.applied_at"
    )))
    .bind(object)
    .bind(known)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

struct SqliteBatch {
    pool: SqlitePool,
    rows: Vec<StoredRow>,
    statements: Arc<Statements>,
}

fn json_ids(ids: &[i64]) -> String {
    let mut json = String::with_capacity(ids.len() * 8 + 2);
    json.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&id.to_string());
    }
    json.push(']');
    json
}

impl ClaimedBatch for SqliteBatch {
    fn take_rows(&mut self) -> Vec<StoredRow> {
        std::mem::take(&mut self.rows)
    }

    fn finish(
        self: Box<Self>,
        outcome: BatchOutcome,
    ) -> BoxFuture<'static, Result<(), OutboxError>> {
        Box::pin(async move {
            let SqliteBatch {
                pool, statements, ..
            } = *self;
            // Rows deleted meanwhile (by a second relay) make these statements no-ops.
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let now = now_ms();
            if !outcome.published.is_empty() {
                let ids = json_ids(&outcome.published);
                if outcome.keep_published {
                    sqlx::query(AssertSqlSafe(Arc::clone(&statements.mark)))
                        .bind(ids)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    sqlx::query(AssertSqlSafe(Arc::clone(&statements.delete)))
                        .bind(ids)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            for failed in &outcome.failed {
                sqlx::query(AssertSqlSafe(Arc::clone(&statements.fail)))
                    .bind(failed.id)
                    .bind(i32::from(failed.strike))
                    .bind(&failed.error)
                    .bind(outcome.attempted_at.map_or(now, to_ms))
                    .bind(millis(failed.retry_in))
                    .execute(&mut *tx)
                    .await?;
            }
            for (id, error) in &outcome.parked {
                sqlx::query(AssertSqlSafe(Arc::clone(&statements.park)))
                    .bind(id)
                    .bind(error)
                    .bind(now)
                    .bind(outcome.parked_blocks_key)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(AssertSqlSafe(Arc::clone(&statements.park_delete)))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }
}

fn stored_row(row: &sqlx::sqlite::SqliteRow) -> Result<StoredRow, sqlx::Error> {
    Ok(StoredRow {
        id: row.try_get(0)?,
        kind: row.try_get(1)?,
        destination: row.try_get(2)?,
        envelope: row.try_get(3)?,
        created_at: from_ms(row.try_get(4)?),
        strikes: row.try_get(5)?,
        attempts: row.try_get(6)?,
        key: row.try_get(7)?,
        last_attempt_at: row.try_get::<Option<i64>, _>(8)?.map(from_ms),
    })
}

impl Store for SqliteStore {
    fn migrate(&self) -> BoxFuture<'_, Result<(), OutboxError>> {
        Box::pin(async move {
            let schema = self.schema();
            apply_migrations(
                &self.pool,
                &schema.name,
                &schema.name.to_string(),
                &outbox_migrations::<Sqlite>(schema, false),
            )
            .await
        })
    }

    fn pending_shards(&self) -> BoxFuture<'_, Result<Vec<i16>, OutboxError>> {
        Box::pin(async move {
            let any: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT id FROM {} WHERE published_at IS NULL LIMIT 1",
                self.schema().outbox
            )))
            .fetch_optional(&self.pool)
            .await?;
            // One relay drains the whole table: shard 0 stands for all of it.
            Ok(any.map(|_| vec![0]).unwrap_or_default())
        })
    }

    fn claim(
        &self,
        _shard: i16,
        limit: i64,
        hold_keys: bool,
        _keep_published: bool,
    ) -> BoxFuture<'_, Result<Claim, OutboxError>> {
        Box::pin(async move {
            // `BEGIN IMMEDIATE` waits for a writer that is still committing (an enqueue wakes
            // the relay before its commit), so the read sees its rows; the lock is let go
            // before publishing (see the module docs).
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let statement = if hold_keys {
                &self.statements.claim_holding_keys
            } else {
                &self.statements.claim
            };
            let rows = sqlx::query(AssertSqlSafe(Arc::clone(statement)))
                .bind(now_ms())
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(stored_row)
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit().await?;
            Ok(Claim::Batch(Box::new(SqliteBatch {
                pool: self.pool.clone(),
                rows,
                statements: Arc::clone(&self.statements),
            })))
        })
    }

    fn listen(&self, wake: Arc<dyn Fn(Wake) + Send + Sync>) -> BoxFuture<'static, ()> {
        let outbox = Arc::clone(&self.outbox);
        Box::pin(async move {
            loop {
                tokio::select! {
                    () = outbox.wake.notified() => wake(Wake::Shard(0)),
                    () = outbox.schedule_wake.notified() => wake(Wake::Scheduled),
                }
            }
        })
    }

    fn promote_due(&self, limit: i64) -> BoxFuture<'_, Result<Promoted, OutboxError>> {
        Box::pin(schedule::promote_due(&self.pool, &self.outbox, limit))
    }

    fn next_due(&self) -> BoxFuture<'_, Result<Option<Duration>, OutboxError>> {
        Box::pin(schedule::next_due(&self.pool, &self.outbox))
    }

    fn fire_recurring(&self, limit: i64) -> BoxFuture<'_, Result<usize, OutboxError>> {
        Box::pin(schedule::fire_recurring(&self.pool, &self.outbox, limit))
    }

    fn scheduled(
        &self,
        key: Option<&str>,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<crate::ScheduledMessage>, OutboxError>> {
        let key = key.map(str::to_owned);
        Box::pin(async move {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT message_id, kind, destination, partition_key, due_at, created_at \
                 FROM {} WHERE (?1 IS NULL OR partition_key = ?1) \
                 ORDER BY due_at, id LIMIT ?2",
                self.schema().scheduled
            )))
            .bind(key)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(crate::ScheduledMessage {
                        id: row.try_get(0)?,
                        kind: MessageKind::from_code(row.try_get(1)?).unwrap_or(MessageKind::Event),
                        destination: row.try_get(2)?,
                        partition_key: row.try_get(3)?,
                        due_at: from_ms(row.try_get(4)?),
                        created_at: from_ms(row.try_get(5)?),
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(OutboxError::from)
        })
    }

    fn dead_letters(&self, limit: i64) -> BoxFuture<'_, Result<Vec<DeadLetter>, OutboxError>> {
        Box::pin(async move {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT id, kind, destination, partition_key, envelope, created_at, attempts, \
                 error, parked_at, blocks_key FROM {} ORDER BY id LIMIT ?",
                self.schema().dead_letters
            )))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|row| {
                    let kind: i16 = row.try_get(1)?;
                    Ok(DeadLetter {
                        id: row.try_get(0)?,
                        kind: MessageKind::from_code(kind).unwrap_or(MessageKind::Event),
                        destination: row.try_get(2)?,
                        partition_key: row.try_get(3)?,
                        envelope: row.try_get(4)?,
                        created_at: from_ms(row.try_get(5)?),
                        attempts: row.try_get(6)?,
                        error: row.try_get(7)?,
                        parked_at: from_ms(row.try_get(8)?),
                        blocks_key: row.try_get(9)?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(OutboxError::from)
        })
    }

    fn replay(&self, id: i64) -> BoxFuture<'_, Result<bool, OutboxError>> {
        Box::pin(async move {
            let s = self.schema();
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let moved = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {t} (id, shard, partition_key, kind, destination, envelope, \
                     created_at) \
                 SELECT id, shard, partition_key, kind, destination, envelope, created_at \
                 FROM {d} WHERE id = ?",
                d = s.dead_letters,
                t = s.outbox
            )))
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE id = ?",
                s.dead_letters
            )))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(moved > 0)
        })
    }

    fn discard(&self, id: i64) -> BoxFuture<'_, Result<bool, OutboxError>> {
        Box::pin(async move {
            let done = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE id = ?",
                self.schema().dead_letters
            )))
            .bind(id)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Backlog, OutboxError>> {
        Box::pin(async move {
            let s = self.schema();
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT (SELECT count(*) FROM {t} WHERE published_at IS NULL), \
                        (SELECT min(created_at) FROM {t} WHERE published_at IS NULL), \
                        (SELECT count(*) FROM {d}), \
                        (SELECT count(*) FROM {sc}), \
                        (SELECT min(due_at) FROM {sc}), \
                        (SELECT count(*) FROM {r})",
                t = s.outbox,
                d = s.dead_letters,
                sc = s.scheduled,
                r = s.recurring
            )))
            .fetch_one(&self.pool)
            .await?;
            let pending: i64 = row.try_get(0)?;
            let oldest: Option<i64> = row.try_get(1)?;
            let dead: i64 = row.try_get(2)?;
            let scheduled: i64 = row.try_get(3)?;
            let next_due: Option<i64> = row.try_get(4)?;
            Ok(Backlog {
                scheduled: scheduled.max(0).cast_unsigned(),
                next_due: next_due.map(from_ms),
                recurring: row.try_get::<i64, _>(5)?.max(0).cast_unsigned(),
                pending: pending.max(0).cast_unsigned(),
                oldest: oldest.map(from_ms),
                dead_letters: dead.max(0).cast_unsigned(),
                oldest_transaction: None,
            })
        })
    }

    fn cleanup(&self, older_than: Duration, limit: i64) -> BoxFuture<'_, Result<u64, OutboxError>> {
        Box::pin(async move {
            let t = &self.schema().outbox;
            let done = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} \
                 WHERE published_at IS NOT NULL AND published_at < ? LIMIT ?)"
            )))
            .bind(now_ms().saturating_sub(millis(older_than)))
            .bind(limit)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected())
        })
    }

    fn shards_concurrently(&self) -> bool {
        false
    }
}
