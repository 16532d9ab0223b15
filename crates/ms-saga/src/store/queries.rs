//! Each statement of the store and what it binds, written once for both databases on the
//! [primitives](super::backend) each one implements (`$N` placeholders work on both).

use ms_outbox::Migration;
use sqlx::Pool;

use super::backend::{Arg, Kind, SagaBackend, Value};
use super::rows::{PARKED_KINDS, RawInstance, parked_message};
use super::{ParkedMessage, Statements, Status, now_ms};

/// The advisory lock id migrators of saga tables take turns on (PostgreSQL).
const MIGRATION_LOCK_KEY: &str = "ms_saga_schema";

/// Applies the `migrations` not yet recorded in the versions table, each in a transaction
/// of its own that first takes the migration lock, so that runners starting at once take
/// turns: the first applies, the others find it recorded.
pub(crate) async fn migrate<DB: SagaBackend>(
    pool: &Pool<DB>,
    st: &Statements,
    migrations: &[Migration],
) -> Result<(), sqlx::Error> {
    let table = st.name.to_string();
    let lock_id = i64::from(ms_bus::key_hash(MIGRATION_LOCK_KEY));
    for migration in migrations {
        let mut tx = DB::begin(pool).await?;
        if let Some(lock) = DB::MIGRATION_LOCK {
            DB::execute(&mut tx, lock, &[Arg::Int(lock_id)]).await?;
        }
        DB::execute(&mut tx, &st.versions_create, &[]).await?;
        let version = [Arg::Text(&table), Arg::Int(migration.version)];
        let done = DB::fetch(&mut tx, &st.version_applied, &version, &[Kind::Int]).await?;
        if done.is_empty() {
            DB::execute(&mut tx, &migration.sql, &[]).await?;
            let record = [version[0], version[1], Arg::Int(now_ms())];
            DB::execute(&mut tx, &st.version_record, &record).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

pub(crate) async fn load<DB: SagaBackend>(
    conn: &mut DB::Connection,
    st: &Statements,
    saga: &str,
    instance: &str,
) -> Result<Option<RawInstance>, sqlx::Error> {
    let args = [Arg::Text(saga), Arg::Text(instance)];
    // The key is the primary key: one row at most.
    let rows = DB::fetch(conn, &st.load, &args, &RawInstance::KINDS).await?;
    rows.into_iter()
        .next()
        .map(RawInstance::from_values)
        .transpose()
}

/// Inserts a new row; `false` when a row exists already (a racing creator).
pub(crate) async fn insert<DB: SagaBackend>(
    conn: &mut DB::Connection,
    st: &Statements,
    row: &RawInstance,
) -> Result<bool, sqlx::Error> {
    Ok(DB::execute(conn, &st.insert, &row.columns()).await? == 1)
}

/// Updates the row at version `expected`; `false` when it moved on.
pub(crate) async fn update<DB: SagaBackend>(
    conn: &mut DB::Connection,
    st: &Statements,
    row: &RawInstance,
    expected: i64,
) -> Result<bool, sqlx::Error> {
    // The statement binds the columns but `created_at` (6), then the expected version.
    let c = row.columns();
    let args = [
        c[0],
        c[1],
        c[2],
        c[3],
        c[4],
        c[5],
        c[7],
        c[8],
        Arg::Int(expected),
    ];
    Ok(DB::execute(conn, &st.update, &args).await? == 1)
}

/// Moves the instance from status `from` to `to`; `false` when it was not in `from`.
pub(crate) async fn set_status<DB: SagaBackend>(
    conn: &mut DB::Connection,
    st: &Statements,
    saga: &str,
    instance: &str,
    from: Status,
    to: Status,
) -> Result<bool, sqlx::Error> {
    let args = [
        Arg::Text(saga),
        Arg::Text(instance),
        Arg::Text(to.code()),
        Arg::Int(now_ms()),
        Arg::Text(from.code()),
    ];
    Ok(DB::execute(conn, &st.set_status, &args).await? == 1)
}

pub(crate) async fn park<DB: SagaBackend>(
    conn: &mut DB::Connection,
    st: &Statements,
    saga: &str,
    instance: &str,
    envelope: String,
    reason: &str,
) -> Result<(), sqlx::Error> {
    let args = [
        Arg::Text(saga),
        Arg::Text(instance),
        Arg::Text(&envelope),
        Arg::Text(reason),
        Arg::Int(now_ms()),
    ];
    DB::execute(conn, &st.park, &args).await?;
    Ok(())
}

/// The first parked message of `instance` (arrival order).
pub(crate) async fn parked_first<DB: SagaBackend>(
    conn: &mut DB::Connection,
    st: &Statements,
    saga: &str,
    instance: &str,
) -> Result<Option<ParkedMessage>, sqlx::Error> {
    let args = [Arg::Text(saga), Arg::Text(instance)];
    let rows = DB::fetch(conn, &st.parked_first, &args, &PARKED_KINDS).await?;
    rows.into_iter().next().map(parked_message).transpose()
}

pub(crate) async fn parked_delete<DB: SagaBackend>(
    conn: &mut DB::Connection,
    st: &Statements,
    id: i64,
) -> Result<(), sqlx::Error> {
    DB::execute(conn, &st.parked_delete, &[Arg::Int(id)]).await?;
    Ok(())
}

pub(crate) async fn parked<DB: SagaBackend>(
    pool: &Pool<DB>,
    st: &Statements,
    saga: &str,
    limit: i64,
) -> Result<Vec<ParkedMessage>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let args = [Arg::Text(saga), Arg::Int(limit)];
    let rows = DB::fetch(&mut conn, &st.parked_list, &args, &PARKED_KINDS).await?;
    rows.into_iter().map(parked_message).collect()
}

/// Instances least recently updated first: those not completed and updated before
/// `updated_before` when given, else those in `status` when given, else all.
pub(crate) async fn list<DB: SagaBackend>(
    pool: &Pool<DB>,
    st: &Statements,
    saga: &str,
    status: Option<Status>,
    updated_before: Option<i64>,
    limit: i64,
) -> Result<Vec<RawInstance>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let (sql, third) = match (status, updated_before) {
        (_, Some(before)) => (&st.stuck, Some(Arg::Int(before))),
        (Some(status), None) => (&st.list_status, Some(Arg::Text(status.code()))),
        (None, None) => (&st.list, None),
    };
    let args: Vec<Arg<'_>> = [Arg::Text(saga), Arg::Int(limit)]
        .into_iter()
        .chain(third)
        .collect();
    let rows = DB::fetch(&mut conn, sql, &args, &RawInstance::KINDS).await?;
    rows.into_iter().map(RawInstance::from_values).collect()
}

pub(crate) async fn count<DB: SagaBackend>(
    pool: &Pool<DB>,
    st: &Statements,
    saga: &str,
    status: Status,
) -> Result<u64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let args = [Arg::Text(saga), Arg::Text(status.code())];
    let rows = DB::fetch(&mut conn, &st.count_status, &args, &[Kind::Int]).await?;
    match rows.into_iter().flatten().next() {
        Some(Value::Int(n)) => Ok(n.cast_unsigned()),
        _ => Ok(0),
    }
}

/// Removes the instances completed before `completed_before`; returns how many.
pub(crate) async fn purge<DB: SagaBackend>(
    pool: &Pool<DB>,
    st: &Statements,
    saga: &str,
    completed_before: i64,
) -> Result<u64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let args = [Arg::Text(saga), Arg::Int(completed_before)];
    DB::execute(&mut conn, &st.purge, &args).await
}
