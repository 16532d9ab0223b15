//! The statements each database implements, behind the sealed [`Store`](super::Store) trait.

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
