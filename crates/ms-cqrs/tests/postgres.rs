//! The runner on PostgreSQL fed from the event log: every event applied once, per key in
//! order, with concurrent writers and parallel segments; checkpoints survive a restart.

#![cfg(feature = "postgres")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Entry, Ledger, entry_event, fold, read_model};
use ms_cqrs::{EventLog, ProjectionRunner, RunnerState};
use sqlx::{PgPool, Postgres};

const WRITERS: usize = 4;
const PER_WRITER: usize = 500;
const KEYS: usize = 40;

/// Appends an entry for `key` with the next sequence of that key, taken from a counter row
/// in the same transaction (so the sequence is contiguous per key across writers).
async fn append(pool: &PgPool, log: &EventLog<Postgres>, key: &str, amount: i64) -> Entry {
    let mut tx = pool.begin().await.unwrap();
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO counters (key, n) VALUES ($1, 1) \
         ON CONFLICT (key) DO UPDATE SET n = counters.n + 1 RETURNING n",
    )
    .bind(key)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let entry = Entry {
        key: key.to_owned(),
        seq,
        amount,
        poison: false,
    };
    log.append(&mut *tx, &[entry_event(&entry)]).await.unwrap();
    tx.commit().await.unwrap();
    entry
}

async fn setup() -> Option<(ms_testkit::TestPostgres, PgPool, EventLog<Postgres>)> {
    let db = ms_testkit::postgres().await?;
    let pool = db.pool().await;
    let log = EventLog::<Postgres>::default();
    log.migrate(&pool).await.unwrap();
    sqlx::query("CREATE TABLE counters (key TEXT PRIMARY KEY, n BIGINT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    Some((db, pool, log))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_segments_apply_each_event_once_in_key_order() {
    let Some((_db, pool, log)) = setup().await else {
        return;
    };
    let runner = ProjectionRunner::from_log(pool.clone(), Ledger::default(), &log)
        .segments(4)
        .batch_size(100)
        .poll_interval(Duration::from_millis(10))
        .start()
        .await
        .unwrap();

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (pool, log) = (pool.clone(), log.clone());
        writers.push(tokio::spawn(async move {
            let mut entries = Vec::new();
            for i in 0..PER_WRITER {
                let key = format!("k{}", (i * 7 + w) % KEYS);
                entries.push(append(&pool, &log, &key, i64::try_from(i).unwrap() + 1).await);
            }
            entries
        }));
    }
    let mut entries = Vec::new();
    for writer in writers {
        entries.extend(writer.await.unwrap());
    }
    let total = i64::try_from(WRITERS * PER_WRITER).unwrap();
    tokio::time::timeout(Duration::from_secs(60), runner.wait_until(total))
        .await
        .expect("the runner applies every event within a minute")
        .unwrap();

    // The log: positions 1..=N, no gaps, no repeats.
    let (count, min, max): (i64, i64, i64) =
        sqlx::query_as("SELECT count(position), min(position), max(position) FROM ms_event_log")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((count, min, max), (total, 1, total));

    // Sequences per key in commit order = per key in the order the counters handed them out.
    entries.sort_by_key(|e| (e.key.clone(), e.seq));
    let expected = fold(&entries);
    assert!(expected.values().all(|row| row.in_order));
    assert_eq!(read_model(&pool, "ledger").await, expected);
    let status = runner.status();
    assert_eq!(status.position, total);
    assert_eq!(status.applied, u64::try_from(total).unwrap());
    assert_eq!(status.lag_events(), 0);
    assert!(matches!(status.state, RunnerState::Running { .. }));
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runner_resumes_at_its_checkpoints() {
    let Some((_db, pool, log)) = setup().await else {
        return;
    };
    let mut entries = Vec::new();
    for i in 0..300 {
        entries.push(append(&pool, &log, &format!("k{}", i % 13), 1).await);
    }
    let runner = ProjectionRunner::from_log(pool.clone(), Ledger::default(), &log)
        .segments(3)
        .batch_size(50)
        .start()
        .await
        .unwrap();
    runner.wait_until(300).await.unwrap();
    runner.shutdown().await.unwrap();

    for i in 0..200 {
        entries.push(append(&pool, &log, &format!("k{}", i % 17), 2).await);
    }
    let runner = ProjectionRunner::from_log(pool.clone(), Ledger::default(), &log)
        .segments(3)
        .batch_size(50)
        .start()
        .await
        .unwrap();
    runner.wait_until(500).await.unwrap();
    entries.sort_by_key(|e| (e.key.clone(), e.seq));
    assert_eq!(read_model(&pool, "ledger").await, fold(&entries));
    // Only the 200 new events were applied by the second runner.
    assert_eq!(runner.status().applied, 200);
    runner.shutdown().await.unwrap();
    let err = runner.rebuild().await.unwrap_err();
    assert!(err.to_string().contains("shut down"), "{err}");

    // Another number of segments would map keys elsewhere: refused, with the way out.
    let err = ProjectionRunner::from_log(pool.clone(), Ledger::default(), &log)
        .segments(5)
        .start()
        .await
        .err()
        .expect("a different number of segments is refused");
    assert!(err.to_string().contains("rebuild"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_committing_writer_is_not_skipped() {
    let Some((_db, pool, log)) = setup().await else {
        return;
    };
    let runner = ProjectionRunner::from_log(pool.clone(), Ledger::default(), &log)
        .poll_interval(Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    // A transaction draws its row id first and commits last, while others commit around it.
    let mut slow = pool.begin().await.unwrap();
    log.append(&mut *slow, &[common::event("slow", 1, 1000)])
        .await
        .unwrap();
    for i in 1..=50 {
        append(&pool, &log, "fast", i).await;
    }
    runner.wait_until(50).await.unwrap();
    slow.commit().await.unwrap();
    runner.wait_until(51).await.unwrap();
    let model = read_model(&pool, "ledger").await;
    assert_eq!(model["slow"].total, 1000, "{model:?}");
    assert_eq!(model["fast"].applied, 50);
    let position: i64 =
        sqlx::query_scalar("SELECT position FROM ms_event_log WHERE partition_key = 'slow'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        position, 51,
        "the late row is numbered after the rows committed before it"
    );
    runner.shutdown().await.unwrap();
    let _: BTreeMap<String, common::Row> = model;
}
