//! The databases projections run on, and every statement the runner and the event log send.
//!
//! [`Store`] is sealed: PostgreSQL and SQLite are implemented here, behind the `postgres` and
//! `sqlite` features. Both speak the same SQL for almost everything (timestamps are stored as
//! Unix microseconds in a `BIGINT`, envelopes as CloudEvents JSON text), so one macro writes
//! both implementations and only the DDL and the event log's sequencing differ.

use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use time::OffsetDateTime;

/// A database projections and the event log can live in: [`sqlx::Postgres`] (feature
/// `postgres`) or [`sqlx::Sqlite`] (feature `sqlite`, the default).
pub trait Store: sqlx::Database + sealed::Sealed {}

impl<DB: sqlx::Database + sealed::Sealed> Store for DB {}

/// The tables of one runner store and one event log, quoted and ready to splice into SQL.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    pub(crate) projections: String,
    pub(crate) checkpoints: String,
    pub(crate) dead_letters: String,
    pub(crate) key_sequences: String,
    pub(crate) seen: String,
    /// The bare prefix, for index names.
    pub(crate) prefix: String,
}

impl Tables {
    pub(crate) fn new(prefix: &ms_outbox::TableName) -> Self {
        let derive = |suffix: &str| match prefix.schema() {
            Some(schema) => format!(r#""{schema}"."{}_{suffix}""#, prefix.table()),
            None => format!(r#""{}_{suffix}""#, prefix.table()),
        };
        Self {
            projections: derive("projections"),
            checkpoints: derive("checkpoints"),
            dead_letters: derive("dead_letters"),
            key_sequences: derive("key_sequences"),
            seen: derive("seen"),
            prefix: prefix.table().to_owned(),
        }
    }
}

/// One event as the event log stores it.
#[derive(Debug, Clone)]
pub(crate) struct LoggedEvent {
    pub(crate) position: i64,
    pub(crate) key: String,
    pub(crate) envelope: String,
    pub(crate) recorded_at: i64,
}

/// A row of the runner's registry: which version readers see, and how it is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Registration {
    pub(crate) live_version: i32,
    pub(crate) segments: i32,
}

/// A parked event, as stored.
#[derive(Debug, Clone)]
pub(crate) struct ParkedRow {
    pub(crate) id: i64,
    pub(crate) version: i32,
    pub(crate) key: String,
    pub(crate) position: Option<i64>,
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) envelope: String,
    pub(crate) error: String,
    pub(crate) blocked: bool,
    pub(crate) attempts: i32,
    pub(crate) parked_at: i64,
}

/// Microseconds since the Unix epoch, the stored form of every timestamp.
pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The stored form back as a date; out-of-range values become the epoch rather than a panic.
pub(crate) fn from_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(crate) mod sealed {
    use super::{BoxFuture, LoggedEvent, ParkedRow, Registration, Tables};

    /// What each database implements; sealed so that the set can grow without breaking anyone.
    #[allow(unreachable_pub, private_interfaces)]
    pub trait Sealed: sqlx::Database {
        /// Creates the runner's tables if they do not exist.
        #[doc(hidden)]
        fn migrate_runner<'a>(
            pool: &'a sqlx::Pool<Self>,
            tables: &'a Tables,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

        /// Creates the event log if it does not exist.
        #[doc(hidden)]
        fn migrate_log<'a>(
            pool: &'a sqlx::Pool<Self>,
            log: &'a str,
            log_bare: &'a str,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

        /// Appends events to the log in the caller's transaction; returns their row ids.
        #[doc(hidden)]
        fn log_append<'a>(
            conn: &'a mut Self::Connection,
            log: &'a str,
            rows: &'a [(String, String, String)],
        ) -> BoxFuture<'a, Result<Vec<i64>, sqlx::Error>>;

        /// Gives committed, unsequenced events their gap-free positions; returns how many.
        /// A no-op where row ids already are positions (SQLite).
        #[doc(hidden)]
        fn log_sequence<'a>(
            pool: &'a sqlx::Pool<Self>,
            log: &'a str,
            limit: i64,
        ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

        /// The position of the row with id `id`, once sequenced.
        #[doc(hidden)]
        fn log_position_of<'a>(
            pool: &'a sqlx::Pool<Self>,
            log: &'a str,
            id: i64,
        ) -> BoxFuture<'a, Result<Option<i64>, sqlx::Error>>;

        /// Up to `limit` events after `after`, in position order, not past `until`.
        #[doc(hidden)]
        fn log_read<'a>(
            pool: &'a sqlx::Pool<Self>,
            log: &'a str,
            after: i64,
            until: i64,
            limit: i64,
        ) -> BoxFuture<'a, Result<Vec<LoggedEvent>, sqlx::Error>>;

        /// The highest sequenced position (0 for an empty log).
        #[doc(hidden)]
        fn log_head<'a>(
            pool: &'a sqlx::Pool<Self>,
            log: &'a str,
        ) -> BoxFuture<'a, Result<i64, sqlx::Error>>;

        /// Runs DDL (views, `setup` leftovers) in the caller's transaction.
        #[doc(hidden)]
        fn execute_ddl(
            conn: &mut Self::Connection,
            sql: String,
        ) -> BoxFuture<'_, Result<(), sqlx::Error>>;

        /// The registry row of a projection.
        #[doc(hidden)]
        fn registration<'a>(
            conn: &'a mut Self::Connection,
            tables: &'a Tables,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<Registration>, sqlx::Error>>;

        /// Writes the registry row of a projection.
        #[doc(hidden)]
        fn register<'a>(
            conn: &'a mut Self::Connection,
            tables: &'a Tables,
            name: &'a str,
            registration: Registration,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

        /// The checkpoints of one version: `(segment, position)`.
        #[doc(hidden)]
        fn checkpoints<'a>(
            conn: &'a mut Self::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
        ) -> BoxFuture<'a, Result<Vec<(i32, i64)>, sqlx::Error>>;

        /// Stores a segment's checkpoint in the caller's transaction.
        #[doc(hidden)]
        fn save_checkpoint<'a>(
            conn: &'a mut Self::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            segment: i32,
            position: i64,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

        /// Deletes everything the runner keeps about one version.
        #[doc(hidden)]
        fn forget_version<'a>(
            conn: &'a mut Self::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

        /// Parks an event in the caller's transaction.
        #[doc(hidden)]
        fn park<'a>(
            conn: &'a mut Self::Connection,
            tables: &'a Tables,
            name: &'a str,
            row: &'a ParkedRow,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

        /// Parked events of a projection version, oldest first; of one key when `key` is set.
        #[doc(hidden)]
        fn parked<'a>(
            conn: &'a mut Self::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: Option<&'a str>,
            limit: i64,
        ) -> BoxFuture<'a, Result<Vec<ParkedRow>, sqlx::Error>>;

        /// Deletes the parked events of one key; returns how many.
        #[doc(hidden)]
        fn unpark<'a>(
            conn: &'a mut Self::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: &'a str,
        ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

        /// The keys with parked events.
        #[doc(hidden)]
        fn parked_keys<'a>(
            conn: &'a mut Self::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
        ) -> BoxFuture<'a, Result<Vec<String>, sqlx::Error>>;

        /// The last sequence applied for a key (bus sources).
        #[doc(hidden)]
        fn key_sequence<'a>(
            conn: &'a mut Self::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: &'a str,
        ) -> BoxFuture<'a, Result<Option<i64>, sqlx::Error>>;

        /// Moves a key's last applied sequence from `sequence - 1` to `sequence`; `false` when
        /// it was not at `sequence - 1` (bus sources).
        #[doc(hidden)]
        fn advance_key_sequence<'a>(
            conn: &'a mut Self::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: &'a str,
            sequence: i64,
        ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;

        /// Records an event, by its dedup key (source + id), as handled; `false` when it (or,
        /// in a row from before keys were source + id, its bare `legacy_id`) already was (bus
        /// sources).
        #[doc(hidden)]
        fn record_seen<'a>(
            conn: &'a mut Self::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: &'a str,
            legacy_id: &'a str,
        ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;
    }
}

/// The statements both databases share, written once for each concrete database type.
macro_rules! common_statements {
    ($db:ty) => {
        fn log_read<'a>(
            pool: &'a sqlx::Pool<$db>,
            log: &'a str,
            after: i64,
            until: i64,
            limit: i64,
        ) -> BoxFuture<'a, Result<Vec<LoggedEvent>, sqlx::Error>> {
            Box::pin(async move {
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT position, partition_key, envelope, recorded_at FROM {log} \
                     WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3"
                )))
                .bind(after)
                .bind(until)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(LoggedEvent {
                            position: row.try_get(0)?,
                            key: row.try_get(1)?,
                            envelope: row.try_get(2)?,
                            recorded_at: row.try_get(3)?,
                        })
                    })
                    .collect()
            })
        }

        fn log_head<'a>(
            pool: &'a sqlx::Pool<$db>,
            log: &'a str,
        ) -> BoxFuture<'a, Result<i64, sqlx::Error>> {
            Box::pin(async move {
                let head: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT MAX(position) FROM {log}"
                )))
                .fetch_one(pool)
                .await?;
                Ok(head.unwrap_or(0))
            })
        }

        fn execute_ddl(
            conn: &mut <$db as sqlx::Database>::Connection,
            sql: String,
        ) -> BoxFuture<'_, Result<(), sqlx::Error>> {
            Box::pin(async move {
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await?;
                Ok(())
            })
        }

        fn registration<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<Registration>, sqlx::Error>> {
            Box::pin(async move {
                let row: Option<(i32, i32)> = sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT live_version, segments FROM {} WHERE name = $1",
                    tables.projections
                )))
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?;
                Ok(row.map(|(live_version, segments)| Registration {
                    live_version,
                    segments,
                }))
            })
        }

        fn register<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            registration: Registration,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {} (name, live_version, segments, updated_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE \
                     SET live_version = excluded.live_version, segments = excluded.segments, \
                     updated_at = excluded.updated_at",
                    tables.projections
                )))
                .bind(name)
                .bind(registration.live_version)
                .bind(registration.segments)
                .bind(now_micros())
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        }

        fn checkpoints<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
        ) -> BoxFuture<'a, Result<Vec<(i32, i64)>, sqlx::Error>> {
            Box::pin(async move {
                sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT segment, position FROM {} WHERE name = $1 AND version = $2",
                    tables.checkpoints
                )))
                .bind(name)
                .bind(version)
                .fetch_all(&mut *conn)
                .await
            })
        }

        fn save_checkpoint<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            segment: i32,
            position: i64,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {} (name, version, segment, position, updated_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name, version, segment) \
                     DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                    tables.checkpoints
                )))
                .bind(name)
                .bind(version)
                .bind(segment)
                .bind(position)
                .bind(now_micros())
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        }

        fn forget_version<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
            Box::pin(async move {
                for table in [
                    &tables.checkpoints,
                    &tables.dead_letters,
                    &tables.key_sequences,
                    &tables.seen,
                ] {
                    sqlx::query(AssertSqlSafe(format!(
                        "DELETE FROM {table} WHERE name = $1 AND version = $2"
                    )))
                    .bind(name)
                    .bind(version)
                    .execute(&mut *conn)
                    .await?;
                }
                Ok(())
            })
        }

        fn park<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            row: &'a ParkedRow,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {} (name, version, partition_key, position, event_id, \
                     event_type, envelope, error, blocked, attempts, parked_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    tables.dead_letters
                )))
                .bind(name)
                .bind(row.version)
                .bind(&row.key)
                .bind(row.position)
                .bind(&row.event_id)
                .bind(&row.event_type)
                .bind(&row.envelope)
                .bind(&row.error)
                .bind(i32::from(row.blocked))
                .bind(row.attempts)
                .bind(row.parked_at)
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        }

        fn parked<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: Option<&'a str>,
            limit: i64,
        ) -> BoxFuture<'a, Result<Vec<ParkedRow>, sqlx::Error>> {
            Box::pin(async move {
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT id, version, partition_key, position, event_id, event_type, envelope, \
                     error, blocked, attempts, parked_at FROM {} \
                     WHERE name = $1 AND version = $2 AND ($3 IS NULL OR partition_key = $3) \
                     ORDER BY id LIMIT $4",
                    tables.dead_letters
                )))
                .bind(name)
                .bind(version)
                .bind(key)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(ParkedRow {
                            id: row.try_get(0)?,
                            version: row.try_get(1)?,
                            key: row.try_get(2)?,
                            position: row.try_get(3)?,
                            event_id: row.try_get(4)?,
                            event_type: row.try_get(5)?,
                            envelope: row.try_get(6)?,
                            error: row.try_get(7)?,
                            blocked: row.try_get::<i32, _>(8)? != 0,
                            attempts: row.try_get(9)?,
                            parked_at: row.try_get(10)?,
                        })
                    })
                    .collect()
            })
        }

        fn unpark<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: &'a str,
        ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
            Box::pin(async move {
                let done = sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM {} WHERE name = $1 AND version = $2 AND partition_key = $3",
                    tables.dead_letters
                )))
                .bind(name)
                .bind(version)
                .bind(key)
                .execute(&mut *conn)
                .await?;
                Ok(done.rows_affected())
            })
        }

        fn parked_keys<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
        ) -> BoxFuture<'a, Result<Vec<String>, sqlx::Error>> {
            Box::pin(async move {
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT DISTINCT partition_key FROM {} WHERE name = $1 AND version = $2",
                    tables.dead_letters
                )))
                .bind(name)
                .bind(version)
                .fetch_all(&mut *conn)
                .await
            })
        }

        fn key_sequence<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: &'a str,
        ) -> BoxFuture<'a, Result<Option<i64>, sqlx::Error>> {
            Box::pin(async move {
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT sequence FROM {} WHERE name = $1 AND version = $2 AND partition_key = $3",
                    tables.key_sequences
                )))
                .bind(name)
                .bind(version)
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
            })
        }

        fn advance_key_sequence<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: &'a str,
            sequence: i64,
        ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
            Box::pin(async move {
                // The guard makes a concurrent runner instance that applied the same event
                // fail here instead of applying it twice: its upsert waits for ours, then
                // finds the sequence moved on.
                let done = sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {t} (name, version, partition_key, sequence) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (name, version, partition_key) DO UPDATE SET sequence = excluded.sequence \
                     WHERE {t}.sequence = excluded.sequence - 1",
                    t = tables.key_sequences
                )))
                .bind(name)
                .bind(version)
                .bind(key)
                .bind(sequence)
                .execute(&mut *conn)
                .await?;
                Ok(done.rows_affected() == 1)
            })
        }

        fn record_seen<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: &'a str,
            legacy_id: &'a str,
        ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
            Box::pin(async move {
                // `event_id` holds the dedup key; rows written before it was source + id hold
                // the bare id (`$5`), and still count, so an event applied then is not applied
                // again. The `WHERE` also keeps SQLite from reading `ON CONFLICT` as part of a
                // join.
                let done = sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {seen} (name, version, event_id, seen_at) SELECT $1, $2, $3, $4 \
                     WHERE NOT EXISTS (SELECT 1 FROM {seen} \
                       WHERE name = $1 AND version = $2 AND event_id = $5) \
                     ON CONFLICT (name, version, event_id) DO NOTHING",
                    seen = tables.seen
                )))
                .bind(name)
                .bind(version)
                .bind(key)
                .bind(now_micros())
                .bind(legacy_id)
                .execute(&mut *conn)
                .await?;
                Ok(done.rows_affected() == 1)
            })
        }
    };
}

/// Inserts the event log rows `(key, type, envelope)` one statement each (the connection is
/// the caller's transaction) and collects the column `$returning` of each: the same code for
/// both databases, written once.
macro_rules! insert_log_rows {
    ($conn:expr, $log:expr, $rows:expr, $returning:literal) => {{
        let insert = format!(
            "INSERT INTO {} (partition_key, event_type, envelope, recorded_at) \
             VALUES ($1, $2, $3, $4) RETURNING {}",
            $log, $returning
        );
        let now = now_micros();
        let mut ids = Vec::with_capacity($rows.len());
        for (key, ty, envelope) in $rows {
            let id: i64 = sqlx::query_scalar(AssertSqlSafe(insert.clone()))
                .bind(key)
                .bind(ty)
                .bind(envelope)
                .bind(now)
                .fetch_one(&mut *$conn)
                .await?;
            ids.push(id);
        }
        Ok(ids)
    }};
}

/// The runner's tables; `{serial}` is the database's auto-increment key type.
pub(crate) fn runner_ddl(tables: &Tables, serial: &str) -> String {
    let Tables {
        projections,
        checkpoints,
        dead_letters,
        key_sequences,
        seen,
        prefix,
    } = tables;
    format!(
        "CREATE TABLE IF NOT EXISTS {projections} (\
           name TEXT PRIMARY KEY, live_version INTEGER NOT NULL, segments INTEGER NOT NULL, \
           updated_at BIGINT NOT NULL);\n\
         CREATE TABLE IF NOT EXISTS {checkpoints} (\
           name TEXT NOT NULL, version INTEGER NOT NULL, segment INTEGER NOT NULL, \
           position BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
           PRIMARY KEY (name, version, segment));\n\
         CREATE TABLE IF NOT EXISTS {dead_letters} (\
           id {serial}, name TEXT NOT NULL, version INTEGER NOT NULL, \
           partition_key TEXT NOT NULL, position BIGINT, event_id TEXT NOT NULL, \
           event_type TEXT NOT NULL, envelope TEXT NOT NULL, error TEXT NOT NULL, \
           blocked INTEGER NOT NULL, attempts INTEGER NOT NULL, parked_at BIGINT NOT NULL);\n\
         CREATE INDEX IF NOT EXISTS \"{prefix}_dead_letters_key\" \
           ON {dead_letters} (name, version, partition_key, id);\n\
         CREATE TABLE IF NOT EXISTS {key_sequences} (\
           name TEXT NOT NULL, version INTEGER NOT NULL, partition_key TEXT NOT NULL, \
           sequence BIGINT NOT NULL, PRIMARY KEY (name, version, partition_key));\n\
         CREATE TABLE IF NOT EXISTS {seen} (\
           name TEXT NOT NULL, version INTEGER NOT NULL, event_id TEXT NOT NULL, \
           seen_at BIGINT NOT NULL, PRIMARY KEY (name, version, event_id));"
    )
}

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
