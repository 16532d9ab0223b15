//! Scheduled messages on SQLite (a database file, the memory bus): published when due and
//! never before, cancelled ones never, cancel and reschedule undone by a rollback, the order
//! rule. The scenarios are shared with PostgreSQL (`schedule_postgres.rs`).
#![cfg(feature = "sqlite")]

#[path = "common/schedule.rs"]
mod schedule;

use std::sync::atomic::{AtomicU32, Ordering};

use ms_bus::memory::MemoryBus;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Pool, Sqlite};

/// A SQLite file in the temp directory, removed (with its journal) when dropped.
struct TempDb(std::path::PathBuf);

impl TempDb {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        Self(std::env::temp_dir().join(format!(
            "ms-outbox-schedule-{}-{}.db",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )))
    }

    async fn pool(&self) -> Pool<Sqlite> {
        SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&self.0)
                    .create_if_missing(true),
            )
            .await
            .expect("open the SQLite file")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_come_when_due_and_cancelled_ones_never() {
    let db = TempDb::new();
    schedule::due_cancel_reschedule(&db.pool().await, MemoryBus::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_message_joins_its_key_at_its_due_time() {
    let db = TempDb::new();
    schedule::joins_its_key_at_its_due_time(&db.pool().await, MemoryBus::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recurring_ticks_fire_once_each_and_all_after_downtime() {
    let db = TempDb::new();
    schedule::recurring_ticks_fire_once_each(&db.pool().await, MemoryBus::new()).await;
}

#[cfg(feature = "cron")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_ticks_every_second() {
    let db = TempDb::new();
    schedule::cron_ticks_every_second(&db.pool().await, MemoryBus::new()).await;
}
