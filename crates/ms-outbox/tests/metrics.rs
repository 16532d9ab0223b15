//! The `metrics` feature: what a recorder sees of a relay on a SQLite file (metrics-util's
//! debugging recorder, installed for the test's thread, which runs every task of the relay).
#![cfg(all(feature = "metrics", feature = "sqlite"))]

use std::path::PathBuf;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use ms_bus::Envelope;
use ms_bus::memory::MemoryBus;
use ms_outbox::{Outbox, OutboxMessage, Relay, RelayHandle};
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

const WAIT: Duration = Duration::from_secs(10);

/// What the recorder saw so far: counters summed over snapshots (a snapshot drains them),
/// gauges as last set.
#[derive(Default)]
struct Seen {
    published: u64,
    backlog: Option<f64>,
    dead_letters: Option<f64>,
    scheduled: Option<f64>,
    overdue: Option<f64>,
    due: u64,
    lateness: usize,
}

impl Seen {
    fn take(&mut self, snapshotter: &Snapshotter) {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let ours = key
                .labels()
                .any(|l| l.key() == "table" && l.value() == "ms_outbox");
            match (key.name(), value) {
                (_, _) if !ours => {}
                ("ms_outbox_published_total", DebugValue::Counter(n)) => self.published += n,
                ("ms_outbox_backlog_rows", DebugValue::Gauge(v)) => self.backlog = Some(v.0),
                ("ms_outbox_dead_letter_rows", DebugValue::Gauge(v)) => {
                    self.dead_letters = Some(v.0);
                }
                ("ms_outbox_scheduled_rows", DebugValue::Gauge(v)) => self.scheduled = Some(v.0),
                ("ms_outbox_scheduled_overdue_seconds", DebugValue::Gauge(v)) => {
                    self.overdue = Some(v.0);
                }
                ("ms_outbox_scheduled_due_total", DebugValue::Counter(n)) => self.due += n,
                ("ms_outbox_scheduled_lateness_seconds", DebugValue::Histogram(v)) => {
                    self.lateness += v.len();
                }
                _ => {}
            }
        }
    }
}

/// Takes snapshots until `done` holds for what was seen.
async fn until(
    seen: &mut Seen,
    snapshotter: &Snapshotter,
    relay: &RelayHandle,
    done: impl Fn(&Seen) -> bool,
) {
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            seen.take(snapshotter);
            if done(seen) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "published {}, backlog {:?}, dead letters {:?}, scheduled {:?} ({} due, {} \
         latenesses, overdue {:?}); relay {:?}",
        seen.published,
        seen.backlog,
        seen.dead_letters,
        seen.scheduled,
        seen.due,
        seen.lateness,
        seen.overdue,
        relay.status()
    );
}

#[test]
fn the_published_counter_and_the_backlog_and_scheduled_gauges_move() {
    let path: PathBuf =
        std::env::temp_dir().join(format!("ms-outbox-metrics-{}.db", std::process::id()));
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let test = async {
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        let outbox = Outbox::<Sqlite>::default();
        outbox.migrate(&pool).await.unwrap();
        // A parked row holds back the later row of its key: one row stays pending for sure.
        let bad_id = sqlx::query(
            "INSERT INTO ms_outbox (shard, partition_key, kind, destination, envelope, \
             created_at) VALUES (0, 'stuck', 0, 'test.events', 'not json', \
             CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))",
        )
        .execute(&pool)
        .await
        .unwrap()
        .last_insert_rowid();
        let mut tx = pool.begin().await.unwrap();
        for key in ["stuck", "a", "b"] {
            let envelope = Envelope::builder("test.happened", "/test")
                .subject(key)
                .build()
                .unwrap();
            outbox
                .enqueue(&mut *tx, OutboxMessage::event("test.events", envelope))
                .await
                .unwrap();
        }
        // One due soon (moved, then published), one due in an hour (stays scheduled).
        for (key, due) in [("soon", 200), ("later", 3_600_000)] {
            let envelope = Envelope::builder("test.happened", "/test")
                .subject(key)
                .build()
                .unwrap();
            let message = OutboxMessage::event("test.events", envelope)
                .deliver_after(Duration::from_millis(due));
            outbox.enqueue(&mut *tx, message).await.unwrap();
        }
        tx.commit().await.unwrap();

        // The backlog is measured every ten polls.
        let relay = Relay::builder(&outbox, &pool, MemoryBus::new())
            .poll_interval(Duration::from_millis(10))
            .build()
            .spawn();
        let mut seen = Seen::default();
        until(&mut seen, &snapshotter, &relay, |s| {
            s.published == 3
                && s.backlog == Some(1.0)
                && s.dead_letters == Some(1.0)
                && s.scheduled == Some(1.0)
                && s.overdue == Some(0.0)
                && s.due == 1
                && s.lateness == 1
        })
        .await;

        assert!(outbox.discard(&pool, bad_id).await.unwrap());
        until(&mut seen, &snapshotter, &relay, |s| {
            s.published == 4 && s.backlog == Some(0.0) && s.dead_letters == Some(0.0)
        })
        .await;
        relay.shutdown().await.unwrap();
        pool.close().await;
    };
    metrics::with_local_recorder(&recorder, || runtime.block_on(test));
    for suffix in ["", "-journal"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}
