//! PostgreSQL: shards locked per batch, LISTEN/NOTIFY wake-up, several relays at once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use sqlx::{AssertSqlSafe, Row};
use time::OffsetDateTime;

use super::postgres_batch::{PgBatch, Sql, Statements};
use super::postgres_dead_letters as dead_letters;
use super::postgres_enqueue as enqueue;
use super::postgres_inbox as inbox;
use super::postgres_listen as listen;
use super::postgres_partitions as partitions;
use super::postgres_schedule as schedule;
use super::{
    Backlog, Claim, DeadLetter, InboxStatements, PartitionReport, PreparedRow, Promoted,
    ScheduledRef, Store, StoredRow, Wake, sealed,
};
use crate::key::key_hash;
use crate::outbox_config::OutboxInner;
use crate::recurring::RecurringRow;
use crate::schema::{OutboxSchema, outbox_migrations, pending_migrations, versions_table};
use crate::{MessageKind, OutboxError};

#[allow(private_interfaces)] // Sealed: callable only inside this crate.
impl sealed::Sealed for Postgres {
    const MIGRATIONS: &'static [(i64, &'static str, &'static str)] = &[
        (
            1,
            "outbox and dead-letter tables",
            include_str!("../../migrations/postgres/0001_outbox.sql"),
        ),
        (2, "scheduled messages", SCHEDULED_MIGRATION),
        (3, "recurring schedules", RECURRING_MIGRATION),
    ];
    const PARTITIONED_MIGRATIONS: &'static [(i64, &'static str, &'static str)] = &[
        (
            1,
            "outbox (partitioned by created_at) and dead-letter tables",
            include_str!("../../migrations/postgres/0001_outbox_partitioned.sql"),
        ),
        (2, "scheduled messages", SCHEDULED_MIGRATION),
        (3, "recurring schedules", RECURRING_MIGRATION),
    ];
    const QUALIFIED_INDEXES: bool = false;

    fn enqueue<'a>(
        conn: &'a mut PgConnection,
        outbox: &'a OutboxInner,
        rows: &'a [PreparedRow],
    ) -> BoxFuture<'a, Result<(), OutboxError>> {
        Box::pin(enqueue::enqueue(conn, outbox, rows))
    }

    fn store(pool: PgPool, outbox: Arc<OutboxInner>) -> Arc<dyn Store> {
        Arc::new(PgStore::new(pool, outbox))
    }

    fn cancel<'a>(
        conn: &'a mut PgConnection,
        outbox: &'a OutboxInner,
        which: ScheduledRef<'a>,
    ) -> BoxFuture<'a, Result<u64, OutboxError>> {
        Box::pin(schedule::cancel(conn, outbox, which))
    }

    fn reschedule<'a>(
        conn: &'a mut PgConnection,
        outbox: &'a OutboxInner,
        id: &'a str,
        at: OffsetDateTime,
    ) -> BoxFuture<'a, Result<u64, OutboxError>> {
        Box::pin(schedule::reschedule(conn, outbox, id, at))
    }

    fn register<'a>(
        pool: &'a PgPool,
        outbox: &'a OutboxInner,
        row: &'a RecurringRow,
    ) -> BoxFuture<'a, Result<(), OutboxError>> {
        Box::pin(schedule::register(pool, outbox, row))
    }

    fn unregister<'a>(
        conn: &'a mut PgConnection,
        outbox: &'a OutboxInner,
        name: &'a str,
    ) -> BoxFuture<'a, Result<bool, OutboxError>> {
        Box::pin(schedule::unregister(conn, outbox, name))
    }

    fn apply_migrations<'a>(
        pool: &'a PgPool,
        like: &'a crate::TableName,
        object: &'a str,
        migrations: &'a [crate::Migration],
    ) -> BoxFuture<'a, Result<(), OutboxError>> {
        Box::pin(apply_migrations(pool, like, object, migrations))
    }

    const INBOX_MIGRATIONS: &'static [(i64, &'static str, &'static str)] = &[(
        1,
        "inbox table",
        include_str!("../../migrations/postgres/0001_inbox.sql"),
    )];

    fn inbox_statements(inbox: &str) -> InboxStatements {
        inbox::statements(inbox)
    }

    fn inbox_record<'a>(
        conn: &'a mut PgConnection,
        statements: &'a InboxStatements,
        consumer: &'a str,
        key: &'a str,
        legacy_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, OutboxError>> {
        Box::pin(inbox::record(conn, statements, consumer, key, legacy_id))
    }

    fn inbox_cleanup<'a>(
        pool: &'a PgPool,
        statements: &'a InboxStatements,
        older_than: Duration,
        limit: i64,
    ) -> BoxFuture<'a, Result<u64, OutboxError>> {
        Box::pin(inbox::cleanup(pool, statements, older_than, limit))
    }
}

/// The scheduled table is the same for plain and partitioned outboxes.
const SCHEDULED_MIGRATION: &str = include_str!("../../migrations/postgres/0002_scheduled.sql");
/// So is the recurring schedules'.
const RECURRING_MIGRATION: &str = include_str!("../../migrations/postgres/0003_recurring.sql");

pub(crate) struct PgStore {
    pool: PgPool,
    outbox: Arc<OutboxInner>,
    statements: Arc<Statements>,
}

impl PgStore {
    fn new(pool: PgPool, outbox: Arc<OutboxInner>) -> Self {
        let s = &outbox.schema;
        let (t, d) = (&s.outbox, &s.dead_letters);
        // The claim removes (or marks) the rows it returns, optimistically: when everything is
        // confirmed the batch only has to commit. It runs under a savepoint, so that a batch
        // with failures can be rolled back to "nothing claimed" and recorded row by row.
        let pending = "o.shard = $1 AND o.published_at IS NULL \
                       AND (o.available_at IS NULL OR o.available_at <= now())";
        // Held keys are rare: whether the shard has any failing row or blocking dead letter
        // is asked once per claim (an init plan), and only then is each row checked against
        // its key (the per-row probes are otherwise never executed).
        let holding = format!(
            "AND (NOT (EXISTS (SELECT 1 FROM {t} w0 WHERE w0.shard = $1 AND w0.attempts > 0 \
                          AND w0.published_at IS NULL) \
                       OR EXISTS (SELECT 1 FROM {d} x0 WHERE x0.blocks_key AND x0.shard = $1)) \
                  OR (NOT EXISTS (SELECT 1 FROM {t} w WHERE w.shard = $1 AND w.attempts > 0 \
                          AND w.published_at IS NULL AND w.partition_key = o.partition_key \
                          AND w.id < o.id) \
                      AND NOT EXISTS (SELECT 1 FROM {d} x WHERE x.blocks_key AND x.shard = $1 \
                          AND x.partition_key = o.partition_key)))"
        );
        let returning = "RETURNING id, kind, destination, envelope, created_at, strikes, \
                         attempts, partition_key, last_attempt_at";
        // On a partitioned table the row's `created_at` lets the executor probe only the
        // partition that holds it (run-time pruning), not every partition's key.
        // Unpartitioned, the ids come as one array (an init plan) matched on the primary key:
        // `id IN (SELECT …)` may be planned as a hash join over the whole shard.
        let (chosen, close) = if outbox.partitioning.is_some() {
            ("(id, created_at) IN (SELECT o.id, o.created_at", ")")
        } else {
            ("id = ANY(ARRAY(SELECT o.id", "))")
        };
        let claim = |hold: bool, keep: bool| -> Sql {
            let verb = if keep {
                format!("UPDATE {t} SET published_at = now()")
            } else {
                format!("DELETE FROM {t}")
            };
            let holds = if hold { holding.as_str() } else { "" };
            Arc::from(format!(
                "{verb} WHERE shard = $1 AND {chosen} FROM {t} o \
                 WHERE {pending} {holds} ORDER BY o.id LIMIT $2{close} {returning}"
            ))
        };
        let statements = Statements {
            claim: [
                [claim(false, false), claim(false, true)],
                [claim(true, false), claim(true, true)],
            ],
            delete: Arc::from(format!("DELETE FROM {t} WHERE shard = $2 AND id = ANY($1)")),
            mark: Arc::from(format!(
                "UPDATE {t} SET published_at = now() WHERE shard = $2 AND id = ANY($1)"
            )),
            fail: Arc::from(format!(
                "UPDATE {t} o SET attempts = o.attempts + 1, strikes = o.strikes + f.strike, \
                     last_error = f.error, last_attempt_at = $6, \
                     available_at = now() + f.delay_ms * interval '1 millisecond' \
                 FROM unnest($1::int8[], $2::int4[], $3::text[], $4::int8[]) \
                     AS f(id, strike, error, delay_ms) \
                 WHERE o.shard = $5 AND o.id = f.id"
            )),
            park: Arc::from(format!(
                "WITH moved AS ( \
                     DELETE FROM {t} o USING unnest($1::int8[], $2::text[]) AS p(id, error) \
                     WHERE o.shard = $4 AND o.id = p.id \
                     RETURNING o.id, o.shard, o.partition_key, o.kind, o.destination, \
                         o.envelope, o.created_at, o.attempts, p.error) \
                 INSERT INTO {d} (id, shard, partition_key, kind, destination, envelope, \
                     created_at, attempts, error, blocks_key) \
                 SELECT id, shard, partition_key, kind, destination, envelope, created_at, \
                     attempts + 1, error, $3 FROM moved"
            )),
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

    /// Tells the relays that `shard` (when a row was found) has work; returns whether it was.
    async fn wake_shard(&self, shard: Option<i16>) -> Result<bool, OutboxError> {
        if let Some(shard) = shard {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.schema().channel)
                .bind(shard.to_string())
                .execute(&self.pool)
                .await?;
        }
        Ok(shard.is_some())
    }
}

/// Applies `migrations` to `object` (a table) under a lock, recording the version reached.
pub(crate) async fn apply_migrations(
    pool: &PgPool,
    like: &crate::TableName,
    object: &str,
    migrations: &[crate::Migration],
) -> Result<(), OutboxError> {
    let versions = versions_table(like);
    let mut tx = pool.begin().await?;
    // Concurrent `CREATE TABLE IF NOT EXISTS` can still fail on the catalog's unique index:
    // migrators take turns.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(i64::from(key_hash("ms_outbox_schema")))
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {versions} (object TEXT PRIMARY KEY, \
         version BIGINT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )))
    .execute(&mut *tx)
    .await?;
    let current: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM {versions} WHERE object = $1"
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
        "INSERT INTO {versions} (object, version) VALUES ($1, $2) \
         ON CONFLICT (object) DO UPDATE SET version = EXCLUDED.version, applied_at = now()"
    )))
    .bind(object)
    .bind(known)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

impl Store for PgStore {
    fn migrate(&self) -> BoxFuture<'_, Result<(), OutboxError>> {
        Box::pin(async move {
            let schema = self.schema();
            let interval = self.outbox.partitioning;
            apply_migrations(
                &self.pool,
                &schema.name,
                &schema.name.to_string(),
                &outbox_migrations::<Postgres>(schema, interval.is_some()),
            )
            .await?;
            if let Some(interval) = interval {
                if partitions::is_partitioned(&self.pool, schema).await? {
                    // Writers need no relay to find a partition for today's rows. A lock held
                    // long elsewhere (a relay publishing a slow batch) must not fail the
                    // service's start: rows go to the default partition meanwhile, and the
                    // relay creates the partitions (and moves them) on its next round.
                    match partitions::create_ahead(&self.pool, schema, interval).await {
                        Err(OutboxError::Database(sqlx::Error::Database(e)))
                            if e.code().as_deref() == Some(partitions::LOCK_NOT_AVAILABLE) =>
                        {
                            tracing::warn!(
                                table = %schema.name,
                                error = %e,
                                "outbox: partitions not created yet (table busy); \
                                 the relay will"
                            );
                        }
                        other => {
                            other?;
                        }
                    }
                } else {
                    tracing::warn!(
                        table = %schema.name,
                        "outbox: configured partitioned, but the table was created \
                         unpartitioned and stays so (switching needs a new table)"
                    );
                }
            }
            Ok(())
        })
    }

    fn pending_shards(&self) -> BoxFuture<'_, Result<Vec<i16>, OutboxError>> {
        Box::pin(async move {
            let t = &self.schema().outbox;
            // A loose index scan: one index probe per shard, however many rows are pending.
            let shards: Vec<i16> = sqlx::query_scalar(AssertSqlSafe(format!(
                "WITH RECURSIVE s(shard) AS ( \
                     SELECT min(shard) FROM {t} WHERE published_at IS NULL \
                     UNION ALL \
                     SELECT (SELECT min(shard) FROM {t} \
                             WHERE published_at IS NULL AND shard > s.shard) \
                     FROM s WHERE s.shard IS NOT NULL) \
                 SELECT shard FROM s WHERE shard IS NOT NULL"
            )))
            .fetch_all(&self.pool)
            .await?;
            Ok(shards)
        })
    }

    fn claim(
        &self,
        shard: i16,
        limit: i64,
        hold_keys: bool,
        keep_published: bool,
    ) -> BoxFuture<'_, Result<Claim, OutboxError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            // The shard lock is the relay's lease, fenced by the transaction itself: it ends
            // with the commit that removes the published rows, or with the rollback (crash,
            // lost connection) that leaves them pending. It is taken in its own statement so
            // that the claim's snapshot is taken after it, and sees what the previous holder
            // committed.
            // (Both numbers are integers this crate computed: safe to format into the text,
            // which saves a round trip for the savepoint.)
            let locked: bool = sqlx::raw_sql(AssertSqlSafe(format!(
                "SELECT pg_try_advisory_xact_lock({}, {}); SAVEPOINT ms_outbox_claim",
                self.schema().shard_lock_space,
                shard
            )))
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            if !locked {
                return Ok(Claim::Busy);
            }
            let statement =
                &self.statements.claim[usize::from(hold_keys)][usize::from(keep_published)];
            let mut rows = sqlx::query(AssertSqlSafe(Arc::clone(statement)))
                .bind(shard)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|row| {
                    Ok(StoredRow {
                        id: row.try_get(0)?,
                        kind: row.try_get(1)?,
                        destination: row.try_get(2)?,
                        envelope: row.try_get(3)?,
                        created_at: row.try_get(4)?,
                        strikes: row.try_get(5)?,
                        attempts: row.try_get(6)?,
                        key: row.try_get(7)?,
                        last_attempt_at: row.try_get(8)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            // RETURNING follows no particular order.
            rows.sort_unstable_by_key(|row| row.id);
            Ok(Claim::Batch(Box::new(PgBatch {
                tx,
                shard,
                claimed: rows.len(),
                rows,
                statements: Arc::clone(&self.statements),
            })))
        })
    }

    fn listen(&self, wake: Arc<dyn Fn(Wake) + Send + Sync>) -> BoxFuture<'static, ()> {
        Box::pin(listen::listen(
            self.pool.clone(),
            self.schema().channel.clone(),
            wake,
        ))
    }

    fn dead_letters(&self, limit: i64) -> BoxFuture<'_, Result<Vec<DeadLetter>, OutboxError>> {
        Box::pin(dead_letters::list(&self.pool, self.schema(), limit))
    }

    fn replay(&self, id: i64) -> BoxFuture<'_, Result<bool, OutboxError>> {
        Box::pin(async move {
            let shard = dead_letters::replay(&self.pool, self.schema(), id).await?;
            self.wake_shard(shard).await
        })
    }

    fn discard(&self, id: i64) -> BoxFuture<'_, Result<bool, OutboxError>> {
        Box::pin(async move {
            let shard = dead_letters::discard(&self.pool, self.schema(), id).await?;
            // Its key's later rows may have been waiting for it.
            self.wake_shard(shard).await
        })
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Backlog, OutboxError>> {
        Box::pin(async move {
            let s = self.schema();
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT (SELECT count(*) FROM {t} WHERE published_at IS NULL), \
                        (SELECT min(created_at) FROM {t} WHERE published_at IS NULL), \
                        (SELECT count(*) FROM {d}), \
                        (SELECT EXTRACT(EPOCH FROM max(clock_timestamp() - xact_start))::float8 \
                         FROM pg_stat_activity \
                         WHERE datname = current_database() AND pid <> pg_backend_pid() \
                           AND xact_start IS NOT NULL), \
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
            let oldest: Option<OffsetDateTime> = row.try_get(1)?;
            let dead: i64 = row.try_get(2)?;
            let oldest_tx: Option<f64> = row.try_get(3)?;
            let scheduled: i64 = row.try_get(4)?;
            Ok(Backlog {
                scheduled: scheduled.max(0).cast_unsigned(),
                next_due: row.try_get(5)?,
                recurring: row.try_get::<i64, _>(6)?.max(0).cast_unsigned(),
                pending: pending.max(0).cast_unsigned(),
                oldest,
                dead_letters: dead.max(0).cast_unsigned(),
                oldest_transaction: oldest_tx
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64),
            })
        })
    }

    fn cleanup(&self, older_than: Duration, limit: i64) -> BoxFuture<'_, Result<u64, OutboxError>> {
        Box::pin(async move {
            let s = self.schema();
            // A partitioned table's partitions are dropped whole once old enough; only the
            // default partition's rows are deleted one by one.
            let t = if self.outbox.partitioning.is_some()
                && partitions::is_partitioned(&self.pool, s).await?
            {
                &s.default_partition
            } else {
                &s.outbox
            };
            let done = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {t} WHERE (shard, id) IN (SELECT shard, id FROM {t} \
                 WHERE published_at < now() - $1 * interval '1 millisecond' LIMIT $2)"
            )))
            .bind(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX))
            .bind(limit)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected())
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
                 FROM {} WHERE ($1::text IS NULL OR partition_key = $1) \
                 ORDER BY due_at, id LIMIT $2",
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
                        due_at: row.try_get(4)?,
                        created_at: row.try_get(5)?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(OutboxError::from)
        })
    }

    fn shards_concurrently(&self) -> bool {
        true
    }

    fn partitioned(&self) -> bool {
        self.outbox.partitioning.is_some()
    }

    fn maintain_partitions(
        &self,
        keep: Duration,
    ) -> BoxFuture<'_, Result<Option<PartitionReport>, OutboxError>> {
        Box::pin(async move {
            let s = self.schema();
            let Some(interval) = self.outbox.partitioning else {
                return Ok(None);
            };
            if !partitions::is_partitioned(&self.pool, s).await? {
                return Ok(None);
            }
            let mut report = PartitionReport {
                created: partitions::create_ahead(&self.pool, s, interval).await?,
                ..PartitionReport::default()
            };
            partitions::drop_old(&self.pool, s, keep, &mut report).await?;
            Ok(Some(report))
        })
    }
}
