//! What differs between the databases, behind a sealed trait; the statements are shared
//! (`$N` placeholders work on both).

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use ms_outbox::Migration;
use serde::de::DeserializeOwned;
// Every statement is built from a validated `TableName` (ASCII letters, digits, `_`), never
// from input: `AssertSqlSafe` says so to sqlx.
use sqlx::{AssertSqlSafe, Pool, Transaction};

use super::{Instance, ParkedMessage, Statements, Status, from_ms, now_ms};
use crate::SagaError;

/// A database sagas run on: [`sqlx::Postgres`] (feature `postgres`) or [`sqlx::Sqlite`]
/// (feature `sqlite`, the default). Sealed.
pub trait SagaBackend: ms_outbox::Backend + sealed::Sealed {}

impl<DB: ms_outbox::Backend + sealed::Sealed> SagaBackend for DB {}

/// One instance row as stored.
#[derive(Debug, Clone)]
pub(crate) struct RawInstance {
    pub(crate) saga: String,
    pub(crate) instance: String,
    pub(crate) state: String,
    pub(crate) version: i64,
    pub(crate) status: String,
    pub(crate) timeouts: String,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) completed_at: Option<i64>,
}

type Row = (
    String,
    String,
    String,
    i64,
    String,
    String,
    i64,
    i64,
    Option<i64>,
);

impl From<Row> for RawInstance {
    fn from(r: Row) -> Self {
        Self {
            saga: r.0,
            instance: r.1,
            state: r.2,
            version: r.3,
            status: r.4,
            timeouts: r.5,
            created_at: r.6,
            updated_at: r.7,
            completed_at: r.8,
        }
    }
}

impl RawInstance {
    pub(crate) fn status(&self) -> Status {
        // An unknown code (a newer version's) is treated as parked: nothing runs on it.
        Status::parse(&self.status).unwrap_or(Status::Parked)
    }

    pub(crate) fn timeouts(&self) -> Result<BTreeMap<String, String>, SagaError> {
        serde_json::from_str(&self.timeouts).map_err(|source| SagaError::State {
            instance: self.instance.clone(),
            source,
        })
    }

    pub(crate) fn decode<S: DeserializeOwned>(self) -> Result<Instance<S>, SagaError> {
        let state = serde_json::from_str(&self.state).map_err(|source| SagaError::State {
            instance: self.instance.clone(),
            source,
        })?;
        Ok(Instance {
            state,
            version: self.version.cast_unsigned(),
            status: self.status(),
            timeouts: self.timeouts()?.into_iter().collect(),
            created_at: from_ms(self.created_at),
            updated_at: from_ms(self.updated_at),
            completed_at: self.completed_at.map(from_ms),
            id: self.instance,
        })
    }
}

pub(crate) mod sealed {
    use super::Transaction;
    use super::{BoxFuture, Migration, ParkedMessage, Pool, RawInstance, Statements, Status};

    /// The database-specific half of the store.
    #[allow(unreachable_pub, private_interfaces)]
    pub trait Sealed: sqlx::Database {
        #[doc(hidden)]
        const MIGRATION_0001: &'static str;

        /// How an index is named in `CREATE INDEX` (qualified on SQLite, bare on PostgreSQL).
        #[doc(hidden)]
        fn index_name(names: &(String, String)) -> &str;

        /// Opens a handling transaction.
        #[doc(hidden)]
        fn begin(
            pool: &Pool<Self>,
        ) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>>;

        /// Whether an error means "a concurrent transaction got in the way, try again".
        #[doc(hidden)]
        fn is_transient(error: &dyn sqlx::error::DatabaseError) -> bool;

        #[doc(hidden)]
        fn migrate<'a>(
            pool: &'a Pool<Self>,
            st: &'a Statements,
            migrations: &'a [Migration],
        ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

        #[doc(hidden)]
        fn load<'a>(
            conn: &'a mut Self::Connection,
            st: &'a Statements,
            saga: &'a str,
            instance: &'a str,
        ) -> BoxFuture<'a, Result<Option<RawInstance>, sqlx::Error>>;

        /// Inserts a new row; `false` when a row exists already (a racing creator).
        #[doc(hidden)]
        fn insert<'a>(
            conn: &'a mut Self::Connection,
            st: &'a Statements,
            row: &'a RawInstance,
        ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;

        /// Updates the row at version `expected`; `false` when it moved on.
        #[doc(hidden)]
        fn update<'a>(
            conn: &'a mut Self::Connection,
            st: &'a Statements,
            row: &'a RawInstance,
            expected: i64,
        ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;

        /// Moves the instance from status `from` to `to`; `false` when it was not in `from`.
        #[doc(hidden)]
        fn set_status<'a>(
            conn: &'a mut Self::Connection,
            st: &'a Statements,
            saga: &'a str,
            instance: &'a str,
            from: Status,
            to: Status,
        ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;

        #[doc(hidden)]
        fn park<'a>(
            conn: &'a mut Self::Connection,
            st: &'a Statements,
            saga: &'a str,
            instance: &'a str,
            envelope: String,
            reason: &'a str,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

        #[doc(hidden)]
        fn parked_first<'a>(
            conn: &'a mut Self::Connection,
            st: &'a Statements,
            saga: &'a str,
            instance: &'a str,
        ) -> BoxFuture<'a, Result<Option<ParkedMessage>, sqlx::Error>>;

        #[doc(hidden)]
        fn parked_delete<'a>(
            conn: &'a mut Self::Connection,
            st: &'a Statements,
            id: i64,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

        #[doc(hidden)]
        fn parked<'a>(
            pool: &'a Pool<Self>,
            st: &'a Statements,
            saga: &'a str,
            limit: i64,
        ) -> BoxFuture<'a, Result<Vec<ParkedMessage>, sqlx::Error>>;

        #[doc(hidden)]
        fn list<'a>(
            pool: &'a Pool<Self>,
            st: &'a Statements,
            saga: &'a str,
            status: Option<Status>,
            updated_before: Option<i64>,
            limit: i64,
        ) -> BoxFuture<'a, Result<Vec<RawInstance>, sqlx::Error>>;

        #[doc(hidden)]
        fn count<'a>(
            pool: &'a Pool<Self>,
            st: &'a Statements,
            saga: &'a str,
            status: Status,
        ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

        #[doc(hidden)]
        fn purge<'a>(
            pool: &'a Pool<Self>,
            st: &'a Statements,
            saga: &'a str,
            completed_before: i64,
        ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;
    }
}

fn parked_row(
    (id, instance, envelope, reason, parked_at): (i64, String, String, String, i64),
) -> Result<ParkedMessage, sqlx::Error> {
    let envelope = ms_bus::codec::from_json(envelope.as_bytes())
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(ParkedMessage {
        id,
        instance,
        envelope,
        reason,
        parked_at: from_ms(parked_at),
    })
}

/// The shared half of both implementations: the same statements on a concrete database.
macro_rules! common_statements {
    ($db:ty) => {
        fn migrate<'a>(
            pool: &'a Pool<Self>,
            st: &'a Statements,
            migrations: &'a [Migration],
        ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
            Box::pin(async move {
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "CREATE TABLE IF NOT EXISTS {} (table_name TEXT NOT NULL, version BIGINT NOT NULL, \
                     applied_at BIGINT NOT NULL, PRIMARY KEY (table_name, version))",
                    st.versions
                )))
                .execute(pool)
                .await?;
                let table = st.name.to_string();
                for migration in migrations {
                    let mut tx = <$db as sealed::Sealed>::begin(pool).await?;
                    let done: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
                        "SELECT version FROM {} WHERE table_name = $1 AND version = $2",
                        st.versions
                    )))
                    .bind(&table)
                    .bind(migration.version)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if done.is_none() {
                        sqlx::raw_sql(AssertSqlSafe(migration.sql.as_str())).execute(&mut *tx).await?;
                        sqlx::query(AssertSqlSafe(format!(
                            "INSERT INTO {} (table_name, version, applied_at) VALUES ($1, $2, $3) \
                             ON CONFLICT DO NOTHING",
                            st.versions
                        )))
                        .bind(&table)
                        .bind(migration.version)
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                }
                Ok(())
            })
        }

        fn load<'a>(
            conn: &'a mut Self::Connection,
            st: &'a Statements,
            saga: &'a str,
            instance: &'a str,
        ) -> BoxFuture<'a, Result<Option<RawInstance>, sqlx::Error>> {
            Box::pin(async move {
                let row: Option<Row> = sqlx::query_as(AssertSqlSafe(st.load.as_str()))
                    .bind(saga)
                    .bind(instance)
                    .fetch_optional(conn)
                    .await?;
                Ok(row.map(RawInstance::from))
            })
        }

        fn insert<'a>(
            conn: &'a mut Self::Connection,
            st: &'a Statements,
            row: &'a RawInstance,
        ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
            Box::pin(async move {
                let done = sqlx::query(AssertSqlSafe(st.insert.as_str()))
                    .bind(&row.saga)
                    .bind(&row.instance)
                    .bind(&row.state)
                    .bind(row.version)
                    .bind(&row.status)
                    .bind(&row.timeouts)
                    .bind(row.created_at)
                    .bind(row.updated_at)
                    .bind(row.completed_at)
                    .execute(conn)
                    .await?;
                Ok(done.rows_affected() == 1)
            })
        }

        fn update<'a>(
            conn: &'a mut Self::Connection,
            st: &'a Statements,
            row: &'a RawInstance,
            expected: i64,
        ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
            Box::pin(async move {
                let done = sqlx::query(AssertSqlSafe(st.update.as_str()))
                    .bind(&row.saga)
                    .bind(&row.instance)
                    .bind(&row.state)
                    .bind(row.version)
                    .bind(&row.status)
                    .bind(&row.timeouts)
                    .bind(row.updated_at)
                    .bind(row.completed_at)
                    .bind(expected)
                    .execute(conn)
                    .await?;
                Ok(done.rows_affected() == 1)
            })
        }

        fn set_status<'a>(
            conn: &'a mut Self::Connection,
            st: &'a Statements,
            saga: &'a str,
            instance: &'a str,
            from: Status,
            to: Status,
        ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
            Box::pin(async move {
                let done = sqlx::query(AssertSqlSafe(st.set_status.as_str()))
                    .bind(saga)
                    .bind(instance)
                    .bind(to.code())
                    .bind(now_ms())
                    .bind(from.code())
                    .execute(conn)
                    .await?;
                Ok(done.rows_affected() == 1)
            })
        }

        fn park<'a>(
            conn: &'a mut Self::Connection,
            st: &'a Statements,
            saga: &'a str,
            instance: &'a str,
            envelope: String,
            reason: &'a str,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(st.park.as_str()))
                    .bind(saga)
                    .bind(instance)
                    .bind(envelope)
                    .bind(reason)
                    .bind(now_ms())
                    .execute(conn)
                    .await?;
                Ok(())
            })
        }

        fn parked_first<'a>(
            conn: &'a mut Self::Connection,
            st: &'a Statements,
            saga: &'a str,
            instance: &'a str,
        ) -> BoxFuture<'a, Result<Option<ParkedMessage>, sqlx::Error>> {
            Box::pin(async move {
                let row: Option<(i64, String, String, String, i64)> =
                    sqlx::query_as(AssertSqlSafe(st.parked_first.as_str()))
                        .bind(saga)
                        .bind(instance)
                        .fetch_optional(conn)
                        .await?;
                row.map(parked_row).transpose()
            })
        }

        fn parked_delete<'a>(
            conn: &'a mut Self::Connection,
            st: &'a Statements,
            id: i64,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(st.parked_delete.as_str())).bind(id).execute(conn).await?;
                Ok(())
            })
        }

        fn parked<'a>(
            pool: &'a Pool<Self>,
            st: &'a Statements,
            saga: &'a str,
            limit: i64,
        ) -> BoxFuture<'a, Result<Vec<ParkedMessage>, sqlx::Error>> {
            Box::pin(async move {
                let rows: Vec<(i64, String, String, String, i64)> =
                    sqlx::query_as(AssertSqlSafe(st.parked_list.as_str()))
                        .bind(saga)
                        .bind(limit)
                        .fetch_all(pool)
                        .await?;
                rows.into_iter().map(parked_row).collect()
            })
        }

        fn list<'a>(
            pool: &'a Pool<Self>,
            st: &'a Statements,
            saga: &'a str,
            status: Option<Status>,
            updated_before: Option<i64>,
            limit: i64,
        ) -> BoxFuture<'a, Result<Vec<RawInstance>, sqlx::Error>> {
            Box::pin(async move {
                let rows: Vec<Row> = match (status, updated_before) {
                    (_, Some(before)) => {
                        sqlx::query_as(AssertSqlSafe(st.stuck.as_str()))
                            .bind(saga)
                            .bind(limit)
                            .bind(before)
                            .fetch_all(pool)
                            .await?
                    }
                    (Some(status), None) => {
                        sqlx::query_as(AssertSqlSafe(st.list_status.as_str()))
                            .bind(saga)
                            .bind(limit)
                            .bind(status.code())
                            .fetch_all(pool)
                            .await?
                    }
                    (None, None) => {
                        sqlx::query_as(AssertSqlSafe(st.list.as_str()))
                            .bind(saga)
                            .bind(limit)
                            .fetch_all(pool)
                            .await?
                    }
                };
                Ok(rows.into_iter().map(RawInstance::from).collect())
            })
        }

        fn count<'a>(
            pool: &'a Pool<Self>,
            st: &'a Statements,
            saga: &'a str,
            status: Status,
        ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
            Box::pin(async move {
                let n: i64 = sqlx::query_scalar(AssertSqlSafe(st.count_status.as_str()))
                    .bind(saga)
                    .bind(status.code())
                    .fetch_one(pool)
                    .await?;
                Ok(n.cast_unsigned())
            })
        }

        fn purge<'a>(
            pool: &'a Pool<Self>,
            st: &'a Statements,
            saga: &'a str,
            completed_before: i64,
        ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
            Box::pin(async move {
                let done = sqlx::query(AssertSqlSafe(st.purge.as_str()))
                    .bind(saga)
                    .bind(completed_before)
                    .execute(pool)
                    .await?;
                Ok(done.rows_affected())
            })
        }
    };
}

// The sealed trait names crate-private types; no one outside can call or implement it.
#[cfg(feature = "postgres")]
#[allow(private_interfaces)]
impl sealed::Sealed for sqlx::Postgres {
    const MIGRATION_0001: &'static str = include_str!("../../migrations/postgres/0001_saga.sql");

    fn index_name(names: &(String, String)) -> &str {
        // PostgreSQL puts an index in its table's schema; the name is bare.
        &names.1
    }

    fn begin(pool: &Pool<Self>) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>> {
        Box::pin(pool.begin())
    }

    fn is_transient(error: &dyn sqlx::error::DatabaseError) -> bool {
        // serialization_failure, deadlock_detected: PostgreSQL asks for a retry.
        matches!(error.code().as_deref(), Some("40001" | "40P01"))
    }

    common_statements!(sqlx::Postgres);
}

#[cfg(feature = "sqlite")]
#[allow(private_interfaces)]
impl sealed::Sealed for sqlx::Sqlite {
    const MIGRATION_0001: &'static str = include_str!("../../migrations/sqlite/0001_saga.sql");

    fn index_name(names: &(String, String)) -> &str {
        // SQLite takes the schema on the index's name.
        &names.0
    }

    fn begin(pool: &Pool<Self>) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>> {
        // Take the write lock up front: a deferred transaction that reads and then writes
        // fails with SQLITE_BUSY at once when another one wrote in between; an immediate one
        // waits (busy timeout) and then reads the latest state.
        Box::pin(pool.begin_with("BEGIN IMMEDIATE"))
    }

    fn is_transient(error: &dyn sqlx::error::DatabaseError) -> bool {
        // SQLITE_BUSY and SQLITE_LOCKED, with their extended codes (the low byte).
        error
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6))
    }

    common_statements!(sqlx::Sqlite);
}
