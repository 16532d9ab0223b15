//! The runner on SQLite, the embedded default: the same semantics on one file, and the
//! readiness check that follows its lag.

#![cfg(feature = "sqlite")]

mod common;

use std::time::Duration;

use common::{Entry, Ledger, entry_event, fold, read_model};
use ms_cqrs::{ErrorPolicy, EventLog, ProjectionRunner, RunnerState};
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

async fn pool(dir: &tempfile::TempDir) -> sqlx::SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("read.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap()
}

fn entries(keys: i64, per_key: i64, poison: Option<(&str, i64)>) -> Vec<Entry> {
    let mut entries = Vec::new();
    for seq in 1..=per_key {
        for k in 0..keys {
            let key = format!("k{k}");
            entries.push(Entry {
                poison: poison == Some((key.as_str(), seq)),
                key,
                seq,
                amount: seq * 7 - k,
            });
        }
    }
    entries
}

async fn append(pool: &sqlx::SqlitePool, log: &EventLog<Sqlite>, entries: &[Entry]) {
    let mut tx = pool.begin().await.unwrap();
    let events: Vec<_> = entries.iter().map(entry_event).collect();
    log.append(&mut *tx, &events).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_runner_applies_resumes_and_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let log = EventLog::<Sqlite>::default();
    log.migrate(&pool).await.unwrap();
    let mut all = entries(8, 40, None);
    append(&pool, &log, &all).await;

    let runner = ProjectionRunner::from_log(pool.clone(), Ledger::default(), &log)
        .segments(2)
        .batch_size(25)
        .poll_interval(Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    runner.wait_until(320).await.unwrap();
    assert_eq!(read_model(&pool, "ledger").await, fold(&all));
    runner.shutdown().await.unwrap();

    let more = entries(8, 45, None).split_off(320);
    append(&pool, &log, &more).await;
    all.extend(more);
    let runner = ProjectionRunner::from_log(pool.clone(), Ledger::default(), &log)
        .segments(2)
        .batch_size(25)
        .start()
        .await
        .unwrap();
    runner.wait_until(360).await.unwrap();
    assert_eq!(runner.status().applied, 40, "resumed at its checkpoints");
    assert_eq!(runner.rebuild().await.unwrap(), 2);
    assert_eq!(read_model(&pool, "ledger_v2").await, fold(&all));
    assert_eq!(read_model(&pool, "ledger").await, fold(&all));
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_parks_a_poison_event_and_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let log = EventLog::<Sqlite>::default();
    log.migrate(&pool).await.unwrap();
    let all = entries(3, 5, Some(("k1", 2)));
    append(&pool, &log, &all).await;
    let ledger = Ledger::default();
    let runner = ProjectionRunner::from_log(pool.clone(), ledger.clone(), &log)
        .error_policy(ErrorPolicy::park_key())
        .start()
        .await
        .unwrap();
    runner.wait_until(15).await.unwrap();
    assert_eq!(runner.dead_letters(10).await.unwrap().len(), 4);
    assert_eq!(read_model(&pool, "ledger").await["k1"].applied, 1);
    ledger
        .accept_poison
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(runner.replay("k1").await.unwrap(), 4);
    assert_eq!(read_model(&pool, "ledger").await, fold(&all));
    runner.shutdown().await.unwrap();
    assert_eq!(runner.status().state, RunnerState::Stopped);
}

#[cfg(feature = "health")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caught_up_check_fails_while_the_runner_lags_and_passes_when_it_catches_up() {
    use ms_health::{Check, Status};

    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let log = EventLog::<Sqlite>::default();
    log.migrate(&pool).await.unwrap();
    // Entries recorded "long ago": the oldest unapplied one is old.
    let all = entries(2, 200, None);
    append(&pool, &log, &all).await;
    sqlx::query("UPDATE ms_event_log SET recorded_at = recorded_at - 3600000000")
        .execute(&pool)
        .await
        .unwrap();
    let ledger = Ledger {
        delay: Some(Duration::from_millis(2)),
        ..Ledger::default()
    };
    let runner = ProjectionRunner::from_log(pool.clone(), ledger, &log)
        .batch_size(10)
        .start()
        .await
        .unwrap();
    let check = runner.monitor().check().within(Duration::from_secs(60));
    common::eventually(
        Duration::from_secs(10),
        "the runner to report its lag",
        || {
            let check = check.clone();
            async move { check.check().await.status() == Status::Fail }
        },
    )
    .await;
    let failing = check.check().await;
    assert!(
        failing.output().unwrap_or_default().contains("behind"),
        "{failing:?}"
    );
    runner.wait_until(400).await.unwrap();
    assert_eq!(check.check().await.status(), Status::Pass);
    runner.shutdown().await.unwrap();
    let stopped = check.check().await;
    assert_eq!(stopped.status(), Status::Fail);
}

/// Records the correlation ID current while each event is applied.
struct Correlations;

impl ms_cqrs::Projection<Sqlite> for Correlations {
    fn name(&self) -> &'static str {
        "correlations"
    }

    async fn setup(
        &self,
        conn: &mut sqlx::SqliteConnection,
        _: &ms_cqrs::ApplyContext,
    ) -> Result<(), ms_cqrs::ApplyError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS seen_correlations (event_id TEXT, correlation TEXT)",
        )
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut sqlx::SqliteConnection,
        event: &ms_bus::Envelope,
        _: &ms_cqrs::ApplyContext,
    ) -> Result<(), ms_cqrs::ApplyError> {
        let current = ms_tracing::CorrelationId::current().map(|c| c.to_string());
        sqlx::query("INSERT INTO seen_correlations VALUES ($1, $2)")
            .bind(event.id())
            .bind(current)
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_applied_under_its_correlation_id() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let log = EventLog::<Sqlite>::default();
    log.migrate(&pool).await.unwrap();
    let ids = [
        ms_tracing::CorrelationId::generate(),
        ms_tracing::CorrelationId::generate(),
    ];
    let events: Vec<_> = ids
        .iter()
        .map(|id| {
            ms_bus::Envelope::builder("any.thing", "/tests")
                .correlation_id(id)
                .build()
                .unwrap()
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    log.append(&mut *tx, &events).await.unwrap();
    tx.commit().await.unwrap();
    let runner = ProjectionRunner::from_log(pool.clone(), Correlations, &log)
        .start()
        .await
        .unwrap();
    runner.wait_until(2).await.unwrap();
    for (event, id) in events.iter().zip(&ids) {
        let seen: Option<String> =
            sqlx::query_scalar("SELECT correlation FROM seen_correlations WHERE event_id = $1")
                .bind(event.id())
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(seen.as_deref(), Some(id.to_string().as_str()));
    }
    runner.shutdown().await.unwrap();
}

/// A batch timeout from configuration too long for the clock (`Duration::MAX`: "wait for full
/// batches") is added to the clock for every batch, and must not panic the segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_timeout_of_duration_max_applies_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let log = EventLog::<Sqlite>::default();
    log.migrate(&pool).await.unwrap();
    let all = entries(4, 10, None);
    append(&pool, &log, &all).await;

    let runner = ProjectionRunner::from_log(pool.clone(), Ledger::default(), &log)
        .batch_timeout(Duration::MAX)
        .poll_interval(Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), runner.wait_until(40))
        .await
        .expect("applied in time")
        .unwrap();
    assert_eq!(read_model(&pool, "ledger").await, fold(&all));
    runner.shutdown().await.unwrap();
}
