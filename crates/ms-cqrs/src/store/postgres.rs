//! PostgreSQL: the event log draws row ids at insert time and a sequencer gives committed rows
//! their gap-free positions afterwards.
//!
//! Why a sequencer: a `BIGSERIAL` is drawn when a row is inserted, but rows become visible when
//! their transactions commit, in another order. A reader that remembered "the highest id I saw"
//! would skip a row whose transaction drew a lower id and committed later (Marten's high-water
//! mark skips, commanded#556). Here only one sequencer at a time (a transaction-scoped advisory
//! lock) numbers the rows it can see, in id order, continuing from the highest position; its
//! numbering commits at once, so positions appear without holes: every position below the
//! highest visible one is visible. Readers then simply read positions in order.
//!
//! Per key, id order is commit order: a writer takes a transaction-scoped advisory lock on its
//! key's slot before its row draws an id, so a second writer of the key draws after the first
//! committed.

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnection, Postgres};
use sqlx::{AssertSqlSafe, Connection, Row};

use super::sealed::Sealed;
use super::{LoggedEvent, ParkedRow, Registration, Tables, now_micros, runner_ddl};

/// Key lock slots per log: enough to keep unrelated keys from waiting on each other, few
/// enough that a transaction writing many keys does not run out of lock memory.
const KEY_LOCK_SLOTS: u32 = 1024;

/// The advisory-lock class of a log: its name hashed, so two logs do not share locks.
fn lock_class(log: &str) -> i32 {
    i32::from_ne_bytes(crate::key::key_hash(log).to_ne_bytes())
}

/// The slot a key's writers serialise on.
fn key_slot(key: &str) -> i32 {
    i32::try_from(crate::key::key_hash(key) % KEY_LOCK_SLOTS).unwrap_or(0)
}

/// The slot the sequencer holds: outside the key slots' range.
const SEQUENCER_SLOT: i32 = -1;

#[allow(private_interfaces)] // Sealed: callable only inside this crate.
impl Sealed for Postgres {
    fn migrate_runner<'a>(
        pool: &'a sqlx::Pool<Self>,
        tables: &'a Tables,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let mut tx = pool.begin().await?;
            // Concurrent `CREATE TABLE IF NOT EXISTS` can still collide in the catalog.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(i64::from(lock_class(&tables.projections)))
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(AssertSqlSafe(runner_ddl(tables, "BIGSERIAL PRIMARY KEY")))
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
    }

    fn migrate_log<'a>(
        pool: &'a sqlx::Pool<Self>,
        log: &'a str,
        log_bare: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(i64::from(lock_class(log)))
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE TABLE IF NOT EXISTS {log} (\
                   id BIGSERIAL PRIMARY KEY, position BIGINT, partition_key TEXT NOT NULL, \
                   event_type TEXT NOT NULL, envelope TEXT NOT NULL, recorded_at BIGINT NOT NULL);\n\
                 CREATE UNIQUE INDEX IF NOT EXISTS \"{log_bare}_position\" ON {log} (position);\n\
                 CREATE INDEX IF NOT EXISTS \"{log_bare}_unsequenced\" ON {log} (id) \
                   WHERE position IS NULL;"
            )))
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })
    }

    fn log_append<'a>(
        conn: &'a mut PgConnection,
        log: &'a str,
        rows: &'a [(String, String, String)],
    ) -> BoxFuture<'a, Result<Vec<i64>, sqlx::Error>> {
        Box::pin(async move {
            // Lock the slots in ascending order, so one call never deadlocks with another.
            let mut slots: Vec<i32> = rows.iter().map(|(key, _, _)| key_slot(key)).collect();
            slots.sort_unstable();
            slots.dedup();
            sqlx::query(
                "SELECT count(*) FROM (SELECT pg_advisory_xact_lock($1, s) \
                 FROM unnest($2::int4[]) AS s) AS locked",
            )
            .bind(lock_class(log))
            .bind(&slots)
            .execute(&mut *conn)
            .await?;
            insert_log_rows!(conn, log, rows, "id")
        })
    }

    fn log_sequence<'a>(
        pool: &'a sqlx::Pool<Self>,
        log: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin().await?;
            let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
                .bind(lock_class(log))
                .bind(SEQUENCER_SLOT)
                .fetch_one(&mut *tx)
                .await?;
            if !leader {
                // Another runner is numbering; its positions will be read like ours.
                return Ok(0);
            }
            // A statement of its own after the lock: its snapshot includes the previous
            // sequencer's commit, so MAX(position) continues where that one stopped.
            let done = sqlx::query(AssertSqlSafe(format!(
                "WITH top AS (SELECT COALESCE(MAX(position), 0) AS top FROM {log}), \
                 todo AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM \
                   (SELECT id FROM {log} WHERE position IS NULL ORDER BY id LIMIT $1) AS t) \
                 UPDATE {log} AS l SET position = top.top + todo.n FROM top, todo \
                 WHERE l.id = todo.id"
            )))
            .bind(limit)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(done.rows_affected())
        })
    }

    fn log_position_of<'a>(
        pool: &'a sqlx::Pool<Self>,
        log: &'a str,
        id: i64,
    ) -> BoxFuture<'a, Result<Option<i64>, sqlx::Error>> {
        Box::pin(async move {
            let position: Option<Option<i64>> = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT position FROM {log} WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await?;
            Ok(position.flatten())
        })
    }

    common_statements!(Postgres);
}
