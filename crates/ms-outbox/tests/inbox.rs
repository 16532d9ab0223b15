//! The inbox on a real PostgreSQL and on a SQLite file: first record wins, envelopes are told
//! apart by source and id (rows of the id-only days still count), a rolled-back record does
//! not count, concurrent duplicates are handled once, cleanup removes old rows.

#![cfg(any(feature = "sqlite", feature = "postgres"))]

use std::time::Duration;

use ms_bus::Envelope;
use ms_outbox::{Backend, Inbox};
use sqlx::{Executor, Pool};

fn envelope() -> Envelope {
    Envelope::builder("billing.invoice.paid", "/payments")
        .subject("inv-1")
        .build()
        .expect("valid envelope")
}

async fn count<DB: Backend>(pool: &Pool<DB>, sql: &str) -> i64
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    i64: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn check_first_record_wins<DB: Backend>(pool: &Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let inbox = Inbox::<DB>::default();
    inbox.migrate(pool).await.unwrap();
    inbox
        .migrate(pool)
        .await
        .expect("migrating twice is harmless");
    let paid = envelope();

    let mut tx = pool.begin().await.unwrap();
    assert!(inbox.record(&mut *tx, "billing", &paid).await.unwrap());
    tx.commit().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    assert!(!inbox.record(&mut *tx, "billing", &paid).await.unwrap());
    // Another consumer of the same envelope deduplicates on its own.
    assert!(inbox.record(&mut *tx, "reporting", &paid).await.unwrap());
    tx.commit().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    assert!(!inbox.record(&mut *tx, "reporting", &paid).await.unwrap());
    assert!(
        inbox
            .record(&mut *tx, "billing", &envelope())
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
}

/// CloudEvents identifies an event by source and id: the same id from another producer is
/// another envelope, handled; each is still deduplicated. An id too long for a readable key
/// is deduplicated by its digest.
async fn check_the_same_id_from_two_sources_is_two_envelopes<DB: Backend>(pool: &Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let inbox = Inbox::<DB>::default();
    inbox.migrate(pool).await.unwrap();
    let from = |source: &str, id: &str| {
        Envelope::builder("billing.invoice.paid", source)
            .id(id)
            .build()
            .unwrap()
    };
    let (a, b) = (from("/payments", "order-42"), from("/refunds", "order-42"));
    let long = from("/payments", &"x".repeat(3000));
    let mut tx = pool.begin().await.unwrap();
    assert!(inbox.record(&mut *tx, "billing", &a).await.unwrap());
    assert!(
        inbox.record(&mut *tx, "billing", &b).await.unwrap(),
        "another source's event with the same id is handled"
    );
    assert!(inbox.record(&mut *tx, "billing", &long).await.unwrap());
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    for again in [&a, &b, &long] {
        assert!(!inbox.record(&mut *tx, "billing", again).await.unwrap());
    }
    assert!(
        !inbox
            .record_id(&mut *tx, "billing", "/refunds", "order-42")
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
}

/// A row written before keys were source + id holds the bare id: the envelope it recorded is
/// not handled again after the upgrade.
async fn check_rows_recorded_by_id_alone_still_count<DB: Backend>(pool: &Pool<DB>, insert: &str)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let inbox = Inbox::<DB>::default();
    inbox.migrate(pool).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(insert.to_owned()))
        .execute(pool)
        .await
        .unwrap();
    let handled_before = Envelope::builder("billing.invoice.paid", "/payments")
        .id("legacy-1")
        .build()
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    assert!(
        !inbox
            .record(&mut *tx, "billing", &handled_before)
            .await
            .unwrap()
    );
    // Another consumer never recorded it.
    assert!(
        inbox
            .record(&mut *tx, "reporting", &handled_before)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
}

async fn check_rolled_back_record_does_not_count<DB: Backend>(pool: &Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let inbox = Inbox::<DB>::default();
    inbox.migrate(pool).await.unwrap();
    let paid = envelope();

    let mut tx = pool.begin().await.unwrap();
    assert!(inbox.record(&mut *tx, "billing", &paid).await.unwrap());
    tx.rollback().await.unwrap();

    // The handler failed: the redelivery is handled.
    let mut tx = pool.begin().await.unwrap();
    assert!(inbox.record(&mut *tx, "billing", &paid).await.unwrap());
    tx.commit().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    assert!(!inbox.record(&mut *tx, "billing", &paid).await.unwrap());
    tx.rollback().await.unwrap();
}

/// 25 old rows and 5 fresh ones; `age_sql` moves the rows of consumer `old` back two hours.
async fn check_cleanup_deletes_only_old_rows<DB: Backend>(pool: &Pool<DB>, age_sql: &str)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    i64: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let inbox = Inbox::<DB>::default();
    inbox.migrate(pool).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    for i in 0..25 {
        let id = format!("old-{i}");
        assert!(inbox.record_id(&mut *tx, "old", "/s", &id).await.unwrap());
    }
    for i in 0..5 {
        let id = format!("new-{i}");
        assert!(inbox.record_id(&mut *tx, "new", "/s", &id).await.unwrap());
    }
    tx.commit().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(age_sql.to_owned()))
        .execute(pool)
        .await
        .unwrap();

    // Batches of 10: two full ones, one short, then it stops.
    let deleted = inbox
        .cleanup(pool, Duration::from_secs(3600), 10)
        .await
        .unwrap();
    assert_eq!(deleted, 25);
    assert_eq!(
        count(pool, "SELECT count(*) FROM ms_inbox WHERE consumer = 'old'").await,
        0
    );
    assert_eq!(
        count(pool, "SELECT count(*) FROM ms_inbox WHERE consumer = 'new'").await,
        5
    );
    // The fresh rows still deduplicate.
    let mut tx = pool.begin().await.unwrap();
    assert!(
        !inbox
            .record_id(&mut *tx, "new", "/s", "new-0")
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    assert_eq!(
        inbox
            .cleanup(pool, Duration::from_secs(3600), 10)
            .await
            .unwrap(),
        0
    );
}

async fn qualified_inbox<DB: Backend>(pool: &Pool<DB>, name: &str)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let inbox = Inbox::<DB>::new(ms_outbox::TableName::new(name).unwrap());
    inbox.migrate(pool).await.unwrap();
    inbox.migrate(pool).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    assert!(
        inbox
            .record_id(&mut *tx, "billing", "/s", "e-1")
            .await
            .unwrap()
    );
    assert!(
        !inbox
            .record_id(&mut *tx, "billing", "/s", "e-1")
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    let young = Duration::from_secs(3600);
    assert_eq!(inbox.cleanup(pool, young, 0).await.unwrap(), 0);
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    use sqlx::Sqlite;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    use super::*;

    /// A SQLite file in the temp directory, removed (with its journal) when dropped.
    struct TempDb {
        path: PathBuf,
        pool: Pool<Sqlite>,
    }

    impl TempDb {
        async fn new(name: &str) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "ms-outbox-{name}-{}-{}.db",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(&path)
                        .create_if_missing(true),
                )
                .await
                .expect("open the SQLite file");
            Self { path, pool }
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                let mut path = self.path.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
        }
    }

    #[tokio::test]
    async fn first_record_wins() {
        let db = TempDb::new("inbox").await;
        check_first_record_wins(&db.pool).await;
    }

    #[tokio::test]
    async fn the_same_id_from_two_sources_is_two_envelopes() {
        let db = TempDb::new("inbox").await;
        check_the_same_id_from_two_sources_is_two_envelopes(&db.pool).await;
    }

    #[tokio::test]
    async fn rows_recorded_by_id_alone_still_count() {
        let db = TempDb::new("inbox").await;
        check_rows_recorded_by_id_alone_still_count(
            &db.pool,
            "INSERT INTO ms_inbox (consumer, envelope_id, handled_at) VALUES ('billing', 'legacy-1', 0)",
        )
        .await;
    }

    #[tokio::test]
    async fn a_rolled_back_record_does_not_count() {
        let db = TempDb::new("inbox").await;
        check_rolled_back_record_does_not_count(&db.pool).await;
    }

    #[tokio::test]
    async fn cleanup_deletes_only_old_rows_in_batches() {
        let db = TempDb::new("inbox").await;
        check_cleanup_deletes_only_old_rows(
            &db.pool,
            "UPDATE ms_inbox SET handled_at = handled_at - 7200000 WHERE consumer = 'old'",
        )
        .await;
    }

    #[tokio::test]
    async fn a_schema_qualified_inbox_works() {
        let db = TempDb::new("inbox").await;
        qualified_inbox(&db.pool, "main.processed").await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use sqlx::Postgres;

    use super::*;

    #[tokio::test]
    async fn first_record_wins() {
        let Some(db) = ms_testkit::postgres().await else {
            return;
        };
        check_first_record_wins(&db.pool().await).await;
    }

    #[tokio::test]
    async fn the_same_id_from_two_sources_is_two_envelopes() {
        let Some(db) = ms_testkit::postgres().await else {
            return;
        };
        check_the_same_id_from_two_sources_is_two_envelopes(&db.pool().await).await;
    }

    #[tokio::test]
    async fn rows_recorded_by_id_alone_still_count() {
        let Some(db) = ms_testkit::postgres().await else {
            return;
        };
        check_rows_recorded_by_id_alone_still_count(
            &db.pool().await,
            "INSERT INTO ms_inbox (consumer, envelope_id) VALUES ('billing', 'legacy-1')",
        )
        .await;
    }

    #[tokio::test]
    async fn a_rolled_back_record_does_not_count() {
        let Some(db) = ms_testkit::postgres().await else {
            return;
        };
        check_rolled_back_record_does_not_count(&db.pool().await).await;
    }

    #[tokio::test]
    async fn cleanup_deletes_only_old_rows_in_batches() {
        let Some(db) = ms_testkit::postgres().await else {
            return;
        };
        check_cleanup_deletes_only_old_rows(
            &db.pool().await,
            "UPDATE ms_inbox SET handled_at = handled_at - interval '2 hours' \
             WHERE consumer = 'old'",
        )
        .await;
    }

    /// Waits until some backend of this database waits for a lock (the second delivery, blocked
    /// on the first one's uncommitted inbox row).
    async fn wait_for_a_lock_wait(pool: &Pool<Postgres>) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(pool)
                .await
                .unwrap();
                if waiting > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the second delivery waits for the first one's transaction");
    }

    /// A handler: records the envelope and, the first time, writes a payment; returns whether it
    /// handled it and its still open transaction.
    async fn handle(
        pool: &Pool<Postgres>,
        inbox: &Inbox<Postgres>,
        paid: &Envelope,
        name: &str,
    ) -> (bool, sqlx::Transaction<'static, Postgres>) {
        let mut tx = pool.begin().await.unwrap();
        let first = inbox.record(&mut *tx, "billing", paid).await.unwrap();
        if first {
            sqlx::query("INSERT INTO payments VALUES ($1, $2)")
                .bind(paid.subject())
                .bind(name)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        (first, tx)
    }

    /// Two deliveries of one envelope at once: the second waits for the first transaction and
    /// then sees the record (`commit`), or takes over when the first rolled back.
    async fn concurrent_duplicates(commit_first: bool) {
        let Some(db) = ms_testkit::postgres().await else {
            return;
        };
        let pool = db.pool().await;
        let inbox = Inbox::<Postgres>::default();
        inbox.migrate(&pool).await.unwrap();
        sqlx::query("CREATE TABLE payments (invoice TEXT NOT NULL, handler TEXT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        let paid = envelope();

        let (first, tx_a) = handle(&pool, &inbox, &paid, "a").await;
        assert!(first);
        let pool2 = pool.clone();
        // The second delivery, while the first one's transaction is still open.
        let second = tokio::spawn(async move {
            let (first, tx) = handle(&pool2, &inbox, &paid, "b").await;
            tx.commit().await.unwrap();
            first
        });
        wait_for_a_lock_wait(&pool).await;
        assert!(!second.is_finished(), "the second delivery waits");
        if commit_first {
            tx_a.commit().await.unwrap();
        } else {
            tx_a.rollback().await.unwrap();
        }
        let second_handled = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("the second delivery goes on once the first ended")
            .unwrap();
        assert_eq!(second_handled, !commit_first);

        let handlers: Vec<String> = sqlx::query_scalar("SELECT handler FROM payments")
            .fetch_all(&pool)
            .await
            .unwrap();
        let expected = if commit_first { "a" } else { "b" };
        assert_eq!(handlers, vec![expected.to_owned()], "handled exactly once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_duplicate_delivery_is_handled_once() {
        concurrent_duplicates(true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_concurrent_duplicate_takes_over_when_the_first_rolls_back() {
        concurrent_duplicates(false).await;
    }

    #[tokio::test]
    async fn a_schema_qualified_inbox_works() {
        let Some(db) = ms_testkit::postgres().await else {
            return;
        };
        let pool = db.pool().await;
        sqlx::query("CREATE SCHEMA billing")
            .execute(&pool)
            .await
            .unwrap();
        qualified_inbox(&pool, "billing.processed").await;
    }
}
