//! The relay's health check (feature `health`) against a real relay on a SQLite file.
#![cfg(all(feature = "health", feature = "sqlite"))]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ms_bus::Envelope;
use ms_bus::memory::MemoryBus;
use ms_health::{Check, CheckResult, Status};
use ms_outbox::{Outbox, OutboxMessage, Relay, RelayCheck};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Pool, Sqlite};

const WAIT: Duration = Duration::from_secs(10);

/// A SQLite file in the temp directory, removed (with its journal) when dropped.
struct TempDb {
    path: PathBuf,
}

impl TempDb {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        Self {
            path: std::env::temp_dir().join(format!(
                "ms-outbox-health-{}-{}.db",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )),
        }
    }

    async fn pool(&self) -> Pool<Sqlite> {
        SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&self.path)
                    .create_if_missing(true),
            )
            .await
            .expect("open the SQLite file")
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

fn event(key: &str) -> OutboxMessage {
    let envelope = Envelope::builder("test.happened", "/test")
        .subject(key)
        .build()
        .expect("valid envelope");
    OutboxMessage::event("test.events", envelope)
}

/// Runs `check` until its status is `status` and its output contains `says` (the relay
/// measures its backlog every few polls).
async fn until(check: &RelayCheck, status: Status, says: &str) -> CheckResult {
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            let result = check.check().await;
            if result.status() == status && result.output().unwrap_or("").contains(says) {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    match waited {
        Ok(result) => result,
        Err(tokio::time::error::Elapsed { .. }) => {
            panic!("the check turns {status}: {:?}", check.check().await)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_while_running_and_failing_once_stopped() {
    let db = TempDb::new();
    let pool = db.pool().await;
    let outbox = Outbox::<Sqlite>::default();
    outbox.migrate(&pool).await.unwrap();
    let relay = Relay::builder(&outbox, &pool, MemoryBus::new())
        .build()
        .spawn();
    let check = relay.check();
    let result = check.check().await;
    assert_eq!(
        result.status(),
        Status::Pass,
        "right after spawn: {result:?}"
    );
    assert_eq!(result.observed_unit(), Some("s"));

    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut *tx, event("a")).await.unwrap();
    tx.commit().await.unwrap();
    tokio::time::timeout(WAIT, async {
        while relay.status().published == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(check.check().await.status(), Status::Pass);

    relay.shutdown().await.unwrap();
    let result = check.check().await;
    assert_eq!(result.status(), Status::Fail);
    assert_eq!(result.output(), Some("the outbox relay is not running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_backlog_older_than_the_limit_fails_and_says_by_how_much() {
    let db = TempDb::new();
    let pool = db.pool().await;
    let outbox = Outbox::<Sqlite>::default();
    outbox.migrate(&pool).await.unwrap();
    // A key stuck for real: a row that cannot be decoded is parked and, by default, holds back
    // the later rows of its key until it is replayed or discarded.
    let bad_id = sqlx::query(
        "INSERT INTO ms_outbox (shard, partition_key, kind, destination, envelope, created_at) \
         VALUES (0, 'stuck', 0, 'test.events', 'not json', \
                 CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))",
    )
    .execute(&pool)
    .await
    .unwrap()
    .last_insert_rowid();
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut *tx, event("stuck")).await.unwrap();
    tx.commit().await.unwrap();

    // A short poll interval: the backlog is measured every ten polls.
    let relay = Relay::builder(&outbox, &pool, MemoryBus::new())
        .poll_interval(Duration::from_millis(10))
        .build()
        .spawn();
    tokio::time::timeout(WAIT, async {
        while relay.status().parked == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the bad row is parked");
    let strict = relay.check().max_backlog_age(Duration::from_millis(50));
    let result = until(&strict, Status::Fail, "(1 rows pending)").await;
    let output = result.output().unwrap();
    assert!(
        output.contains("the oldest pending row is") && output.contains("over the limit of 50 ms"),
        "{output}"
    );
    assert!(
        output.contains("1 rows in the dead-letter table"),
        "{output}"
    );
    let age = result.observed_value().unwrap().as_f64().unwrap();
    assert!(age > 0.05, "{age}");

    // With the default limit the same relay is only degraded, by its dead letter.
    let lenient = relay.check();
    let result = lenient.check().await;
    assert_eq!(result.status(), Status::Warn, "{result:?}");

    // Released, the key flows and the check recovers.
    assert!(outbox.discard(&pool, bad_id).await.unwrap());
    until(&strict, Status::Pass, "").await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_database_stopped_answering_fails_on_its_heartbeat() {
    let db = TempDb::new();
    let pool = db.pool().await;
    let outbox = Outbox::<Sqlite>::default();
    outbox.migrate(&pool).await.unwrap();
    let relay = Relay::builder(&outbox, &pool, MemoryBus::new())
        .poll_interval(Duration::from_millis(10))
        .build()
        .spawn();
    let check = relay.check().max_heartbeat_age(Duration::from_millis(300));
    until(&check, Status::Pass, "").await;

    // The pool closes under the relay: every poll fails from now on.
    pool.close().await;
    let result = until(&check, Status::Fail, "no heartbeat for").await;
    let output = result.output().unwrap();
    assert!(output.contains("(limit 300 ms)"), "{output}");
    assert!(output.contains("last error:"), "{output}");
    relay.shutdown().await.unwrap();
}
