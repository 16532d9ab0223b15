//! [`Repository`]: how the executor loads and saves an application's aggregate state.

use std::future::Future;

/// An aggregate's state with the version it was stored at: the number of events the aggregate
/// has emitted so far (1 after its first event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<S> {
    /// The state.
    pub state: S,
    /// The stored version, at least 1.
    pub version: u64,
}

impl<S> Versioned<S> {
    /// `state` at `version`.
    pub fn new(state: S, version: u64) -> Self {
        Self { state, version }
    }
}

/// Loads and saves one kind of aggregate in the application's own table, inside the
/// transaction the [`CommandExecutor`](super::CommandExecutor) opened.
///
/// The library holds no domain logic: the application owns the table, its columns and the
/// (de)serialisation. Write the methods as `async fn`:
///
/// ```
/// use ms_cqrs::command::{Repository, Versioned};
/// use sqlx::{Sqlite, SqliteConnection};
///
/// struct Counters;
///
/// impl Repository<Sqlite> for Counters {
///     type State = i64;
///
///     async fn load(
///         &self,
///         conn: &mut SqliteConnection,
///         id: &str,
///     ) -> Result<Option<Versioned<i64>>, sqlx::Error> {
///         let row: Option<(i64, i64)> =
///             sqlx::query_as("SELECT value, version FROM counters WHERE id = ?")
///                 .bind(id)
///                 .fetch_optional(conn)
///                 .await?;
///         Ok(row.map(|(value, version)| Versioned::new(value, version.cast_unsigned())))
///     }
///
///     async fn save(
///         &self,
///         conn: &mut SqliteConnection,
///         id: &str,
///         value: &i64,
///         expected: Option<u64>,
///         new_version: u64,
///     ) -> Result<bool, sqlx::Error> {
///         let done = match expected {
///             // Creating: a racing creator's row makes this fail with a unique violation,
///             // which the executor retries (an `ON CONFLICT DO NOTHING` returning `false`
///             // works as well).
///             None => sqlx::query("INSERT INTO counters (id, value, version) VALUES (?, ?, ?)")
///                 .bind(id)
///                 .bind(value)
///                 .bind(new_version.cast_signed())
///                 .execute(conn)
///                 .await?,
///             Some(expected) => {
///                 sqlx::query("UPDATE counters SET value = ?, version = ? WHERE id = ? AND version = ?")
///                     .bind(value)
///                     .bind(new_version.cast_signed())
///                     .bind(id)
///                     .bind(expected.cast_signed())
///                     .execute(conn)
///                     .await?
///             }
///         };
///         Ok(done.rows_affected() == 1)
///     }
/// }
/// ```
///
/// On PostgreSQL, `load` may lock the row (`SELECT … FOR UPDATE`): concurrent commands on one
/// aggregate then queue instead of conflicting and retrying, which is cheaper under contention.
/// `save` must still check the version: it is what makes the result correct without the lock.
/// `load` runs first in the transaction, so it may also raise the isolation level
/// (`SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`): the serialization failures that
/// brings are retried like any other conflict.
pub trait Repository<DB: sqlx::Database>: Sync {
    /// The aggregate's state.
    type State: Send + Sync;

    /// The state of aggregate `id` and its version, or `None` when it does not exist yet.
    fn load(
        &self,
        conn: &mut DB::Connection,
        id: &str,
    ) -> impl Future<Output = Result<Option<Versioned<Self::State>>, sqlx::Error>> + Send;

    /// Stores `state` as version `new_version` of aggregate `id`, if and only if its stored
    /// version is still `expected` (`None`: the aggregate must not exist yet, this creates
    /// it). Returns `false` when it was not (a concurrent writer won): the executor then rolls
    /// back and tries the whole command again.
    fn save(
        &self,
        conn: &mut DB::Connection,
        id: &str,
        state: &Self::State,
        expected: Option<u64>,
        new_version: u64,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;
}
