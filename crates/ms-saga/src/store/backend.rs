//! What differs between the databases, behind a sealed trait: the migration's SQL, how a
//! transaction begins, which errors mean "try again", and the few primitives that bind
//! [`Arg`]s and run a statement (sqlx's query types are per database, so these are written
//! once, as a macro each backend expands). The statements themselves, and what each binds,
//! are written once for both in [`queries`](super::queries).

use futures_util::future::BoxFuture;
// Every statement is built from a validated `TableName` (ASCII letters, digits, `_`), never
// from input: `AssertSqlSafe` says so to sqlx.
use sqlx::{AssertSqlSafe, Pool, Transaction};

/// A database sagas run on: [`sqlx::Postgres`] (feature `postgres`) or [`sqlx::Sqlite`]
/// (feature `sqlite`, the default). Sealed.
pub trait SagaBackend: ms_outbox::Backend + sealed::Sealed {}

impl<DB: ms_outbox::Backend + sealed::Sealed> SagaBackend for DB {}

/// A value bound to a statement's next `$N`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    Int(i64),
    MaybeInt(Option<i64>),
}

/// How a column is read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Text,
    Int,
    MaybeInt,
}

/// A column as read by its [`Kind`].
#[derive(Debug)]
pub(crate) enum Value {
    Text(String),
    Int(i64),
    MaybeInt(Option<i64>),
}

pub(crate) mod sealed {
    use super::{Arg, BoxFuture, Kind, Pool, Transaction, Value};

    /// The database-specific half of the store.
    #[allow(unreachable_pub, private_interfaces)]
    pub trait Sealed: sqlx::Database {
        #[doc(hidden)]
        const MIGRATION_0001: &'static str;

        /// A statement that makes concurrent migrators take turns, bound to a lock id, held
        /// until the migration's transaction ends; `None` where the transaction already
        /// serializes them (SQLite's `BEGIN IMMEDIATE`).
        #[doc(hidden)]
        const MIGRATION_LOCK: Option<&'static str>;

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

        /// `args` as this database's arguments.
        #[doc(hidden)]
        fn arguments(args: &[Arg<'_>]) -> Result<Self::Arguments, sqlx::Error>;

        /// Runs one statement and returns how many rows it changed; without arguments, runs
        /// `sql` as a script of statements (a migration).
        #[doc(hidden)]
        fn execute<'a>(
            conn: &'a mut Self::Connection,
            sql: &'a str,
            args: &[Arg<'_>],
        ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

        /// Runs a query and reads each row's columns as `kinds` says.
        #[doc(hidden)]
        fn fetch<'a>(
            conn: &'a mut Self::Connection,
            sql: &'a str,
            args: &[Arg<'_>],
            kinds: &'a [Kind],
        ) -> BoxFuture<'a, Result<Vec<Vec<Value>>, sqlx::Error>>;
    }
}

/// The primitives, the same on each concrete database: the arguments are bound before the
/// future is built, so that it borrows only the connection, the statement and the kinds.
macro_rules! primitives {
    ($db:ty) => {
        fn arguments(args: &[Arg<'_>]) -> Result<Self::Arguments, sqlx::Error> {
            use sqlx::Arguments as _;
            let mut out = <$db as sqlx::Database>::Arguments::default();
            for arg in args {
                match *arg {
                    Arg::Text(text) => out.add(text),
                    Arg::Int(n) => out.add(n),
                    Arg::MaybeInt(n) => out.add(n),
                }
                .map_err(sqlx::Error::Encode)?;
            }
            Ok(out)
        }

        fn execute<'a>(
            conn: &'a mut Self::Connection,
            sql: &'a str,
            args: &[Arg<'_>],
        ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
            let script = args.is_empty();
            let args = Self::arguments(args);
            Box::pin(async move {
                let done = if script {
                    sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?
                } else {
                    sqlx::query_with(AssertSqlSafe(sql), args?)
                        .execute(conn)
                        .await?
                };
                Ok(done.rows_affected())
            })
        }

        fn fetch<'a>(
            conn: &'a mut Self::Connection,
            sql: &'a str,
            args: &[Arg<'_>],
            kinds: &'a [Kind],
        ) -> BoxFuture<'a, Result<Vec<Vec<Value>>, sqlx::Error>> {
            use sqlx::Row as _;
            let args = Self::arguments(args);
            Box::pin(async move {
                let rows = sqlx::query_with(AssertSqlSafe(sql), args?)
                    .fetch_all(conn)
                    .await?;
                rows.iter()
                    .map(|row| {
                        kinds
                            .iter()
                            .enumerate()
                            .map(|(i, kind)| {
                                Ok(match kind {
                                    Kind::Text => Value::Text(row.try_get(i)?),
                                    Kind::Int => Value::Int(row.try_get(i)?),
                                    Kind::MaybeInt => Value::MaybeInt(row.try_get(i)?),
                                })
                            })
                            .collect()
                    })
                    .collect()
            })
        }
    };
}

// The sealed trait names crate-private types; no one outside can call or implement it.
#[cfg(feature = "postgres")]
#[allow(private_interfaces)]
impl sealed::Sealed for sqlx::Postgres {
    const MIGRATION_0001: &'static str = include_str!("../../migrations/postgres/0001_saga.sql");
    // Concurrent `CREATE TABLE IF NOT EXISTS` still collide in the catalog (the second fails
    // on pg_type's unique index once the first commits): migrators take turns.
    const MIGRATION_LOCK: Option<&'static str> = Some("SELECT pg_advisory_xact_lock($1)");

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

    primitives!(sqlx::Postgres);
}

#[cfg(feature = "sqlite")]
#[allow(private_interfaces)]
impl sealed::Sealed for sqlx::Sqlite {
    const MIGRATION_0001: &'static str = include_str!("../../migrations/sqlite/0001_saga.sql");
    const MIGRATION_LOCK: Option<&'static str> = None;

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

    primitives!(sqlx::Sqlite);
}
