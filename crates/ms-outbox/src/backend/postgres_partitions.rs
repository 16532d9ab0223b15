//! Partition upkeep of a partitioned outbox (PostgreSQL): partitions created ahead, old ones
//! dropped whole.
//!
//! Every change runs in a short transaction under the outbox's maintenance advisory lock (so
//! that concurrent relays and migrators take turns instead of failing each other) and a
//! [`LOCK_TIMEOUT`]: DDL waiting for a lock makes every later query on the table queue behind
//! it, so it gives up quickly and the next round tries again.

use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};
use time::OffsetDateTime;

use super::PartitionReport;
use crate::partition::{PARTITIONS_AHEAD, timestamp_literal};
use crate::schema::OutboxSchema;
use crate::{OutboxError, PartitionInterval};

/// How long partition DDL waits for a table lock before it gives up until the next round.
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '500ms'";
/// PostgreSQL's "would overlap partition" (an existing partition covers the range already).
const INVALID_OBJECT_DEFINITION: &str = "42P17";
/// PostgreSQL's "lock not available" (the lock timeout expired).
pub(super) const LOCK_NOT_AVAILABLE: &str = "55P03";
/// PostgreSQL's "relation does not exist".
const UNDEFINED_TABLE: &str = "42P01";

/// Whether the outbox table exists and is partitioned.
pub(super) async fn is_partitioned(
    pool: &PgPool,
    schema: &OutboxSchema,
) -> Result<bool, OutboxError> {
    let partitioned: Option<bool> =
        sqlx::query_scalar("SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass($1)")
            .bind(&schema.outbox)
            .fetch_optional(pool)
            .await?;
    Ok(partitioned == Some(true))
}

/// The maintenance lock's transaction: the outbox's shard lock space with key -1, which no
/// shard uses.
async fn begin(
    pool: &PgPool,
    schema: &OutboxSchema,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, OutboxError> {
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(LOCK_TIMEOUT).execute(&mut *tx).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, -1)")
        .bind(schema.shard_lock_space)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Creates the partitions of the current interval and the next [`PARTITIONS_AHEAD`]; returns
/// how many it created.
pub(super) async fn create_ahead(
    pool: &PgPool,
    schema: &OutboxSchema,
    interval: PartitionInterval,
) -> Result<usize, OutboxError> {
    let now: OffsetDateTime = sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    let mut start = interval.floor(now);
    let mut created = 0;
    for _ in 0..=PARTITIONS_AHEAD {
        let Some(end) = interval.end(start) else {
            break;
        };
        if create(pool, schema, interval, start, end).await? {
            created += 1;
        }
        start = end;
    }
    Ok(created)
}

/// Creates the partition starting at `start`, unless it (or one overlapping it) exists.
///
/// It is created apart and attached, rather than with `CREATE TABLE … PARTITION OF`, which
/// locks the whole table against readers and writers: `ATTACH PARTITION` takes only a
/// `SHARE UPDATE EXCLUSIVE` lock on it, plus an exclusive lock on the default partition, which
/// PostgreSQL scans for rows that belong to the new range. Such rows (written while no
/// partition covered their time) are moved into the new partition in the same transaction.
async fn create(
    pool: &PgPool,
    schema: &OutboxSchema,
    interval: PartitionInterval,
    start: OffsetDateTime,
    end: OffsetDateTime,
) -> Result<bool, OutboxError> {
    let partition = schema.partition(&interval.suffix(start)).quoted();
    let (from, to) = (timestamp_literal(start), timestamp_literal(end));
    let mut tx = begin(pool, schema).await?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&partition)
        .fetch_one(&mut *tx)
        .await?;
    if exists {
        return Ok(false);
    }
    let (t, default) = (&schema.outbox, &schema.default_partition);
    let sql = format!(
        "CREATE TABLE {partition} (LIKE {t} INCLUDING DEFAULTS); \
         LOCK TABLE {t} IN SHARE UPDATE EXCLUSIVE MODE; \
         LOCK TABLE {default} IN ACCESS EXCLUSIVE MODE; \
         WITH moved AS (DELETE FROM {default} \
                        WHERE created_at >= {from} AND created_at < {to} RETURNING *) \
         INSERT INTO {partition} SELECT * FROM moved; \
         ALTER TABLE {t} ATTACH PARTITION {partition} FOR VALUES FROM ({from}) TO ({to})"
    );
    match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(INVALID_OBJECT_DEFINITION) => {
            // An existing partition (of another interval) covers part of the range: rows of
            // the rest go to the default partition, which is correct, only not dropped whole.
            tracing::debug!(%partition, error = %e, "outbox partitions: range already covered");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    tracing::debug!(%partition, "outbox partitions: created");
    Ok(true)
}

/// Drops this outbox's partitions whose whole range ended more than `keep` ago and that hold
/// no pending row; reports those it dropped and those pending rows pin.
pub(super) async fn drop_old(
    pool: &PgPool,
    schema: &OutboxSchema,
    keep: Duration,
    report: &mut PartitionReport,
) -> Result<(), OutboxError> {
    let rows = sqlx::query(
        "SELECT c.relname::text, now() FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent \
         WHERE i.inhparent = to_regclass($1) AND c.relnamespace = p.relnamespace",
    )
    .bind(&schema.outbox)
    .fetch_all(pool)
    .await?;
    for row in rows {
        let name: String = row.try_get(0)?;
        let now: OffsetDateTime = row.try_get(1)?;
        // Only the partitions this crate made: the name says their range.
        let Some(at) = name.rfind("_p") else { continue };
        let Some((_, _, end)) = PartitionInterval::parse_suffix(&name[at..]) else {
            continue;
        };
        let expired = time::Duration::try_from(keep)
            .ok()
            .and_then(|keep| end.checked_add(keep))
            .is_some_and(|expiry| expiry <= now);
        if schema.partition(&name[at..]).table() != name || !expired {
            continue;
        }
        let partition = schema.partition(&name[at..]).quoted();
        let pending =
            format!("SELECT EXISTS (SELECT 1 FROM {partition} WHERE published_at IS NULL)");
        // A cheap look first, without the lock. (Another relay may have dropped it since the
        // listing.)
        match sqlx::query_scalar(AssertSqlSafe(pending.clone()))
            .fetch_one(pool)
            .await
        {
            Ok(true) => {
                report.pinned.push(name);
                continue;
            }
            Ok(false) => {}
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_TABLE) => {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        // Dropping a partition locks the whole table exclusively, for a moment. The look is
        // repeated under that lock: a transaction still writing into the partition (a replayed
        // dead letter, a writer whose transaction began in the partition's range) has
        // committed by then, or will route its row to the default partition.
        let mut tx = begin(pool, schema).await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
            schema.outbox
        )))
        .execute(&mut *tx)
        .await?;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&partition)
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            continue;
        }
        let pinned: bool = sqlx::query_scalar(AssertSqlSafe(pending))
            .fetch_one(&mut *tx)
            .await?;
        if pinned {
            report.pinned.push(name);
            continue;
        }
        sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE {partition}")))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::debug!(%partition, "outbox partitions: dropped");
        report.dropped.push(name);
    }
    Ok(())
}
