//! SQLite: one writer at a time, so a row's id is drawn and committed before the next writer
//! draws one; the id is the position and no sequencing is needed.

use futures_util::future::BoxFuture;
use sqlx::sqlite::{Sqlite, SqliteConnection};
use sqlx::{AssertSqlSafe, Row};

use super::sealed::Sealed;
use super::{LoggedEvent, ParkedRow, Registration, Tables, now_micros, runner_ddl};

#[allow(private_interfaces)] // Sealed: callable only inside this crate.
impl Sealed for Sqlite {
    fn migrate_runner<'a>(
        pool: &'a sqlx::Pool<Self>,
        tables: &'a Tables,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::raw_sql(AssertSqlSafe(runner_ddl(
                tables,
                "INTEGER PRIMARY KEY AUTOINCREMENT",
            )))
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    fn migrate_log<'a>(
        pool: &'a sqlx::Pool<Self>,
        log: &'a str,
        _log_bare: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            // AUTOINCREMENT: a deleted last row's id is never reused, so positions only grow.
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE TABLE IF NOT EXISTS {log} (\
                   position INTEGER PRIMARY KEY AUTOINCREMENT, partition_key TEXT NOT NULL, \
                   event_type TEXT NOT NULL, envelope TEXT NOT NULL, recorded_at BIGINT NOT NULL)"
            )))
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    fn log_append<'a>(
        conn: &'a mut SqliteConnection,
        log: &'a str,
        rows: &'a [(String, String, String)],
    ) -> BoxFuture<'a, Result<Vec<i64>, sqlx::Error>> {
        Box::pin(async move { insert_log_rows!(conn, log, rows, "position") })
    }

    fn log_sequence<'a>(
        _pool: &'a sqlx::Pool<Self>,
        _log: &'a str,
        _limit: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async { Ok(0) })
    }

    fn log_position_of<'a>(
        _pool: &'a sqlx::Pool<Self>,
        _log: &'a str,
        id: i64,
    ) -> BoxFuture<'a, Result<Option<i64>, sqlx::Error>> {
        Box::pin(async move { Ok(Some(id)) })
    }

    common_statements!(Sqlite);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seen table's statement on SQLite: once per key, and a bare-id row of the days
    /// before keys were source + id still counts.
    #[tokio::test]
    async fn record_seen_is_once_per_key_and_honours_bare_id_rows() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let tables = Tables::new(&ms_outbox::TableName::new("ms_cqrs").unwrap());
        Sqlite::migrate_runner(&pool, &tables).await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        let conn = &mut *conn;
        for (key, id, first) in [
            ("/a 1", "1", true),
            ("/a 1", "1", false),
            ("/b 1", "1", true),
        ] {
            let recorded = Sqlite::record_seen(conn, &tables, "p", 1, key, id);
            assert_eq!(recorded.await.unwrap(), first, "{key}");
        }
        sqlx::query("INSERT INTO ms_cqrs_seen VALUES ('p', 1, 'old', 0)")
            .execute(&mut *conn)
            .await
            .unwrap();
        let again = Sqlite::record_seen(conn, &tables, "p", 1, "/a old", "old");
        assert!(!again.await.unwrap());
    }
}
