//! A poison event: parked with its error; under `park_key` its key's later events are parked
//! behind it in order while other keys flow, and replay applies them all; under
//! `park_event` the key goes on; under `stop` the runner stops at it and resumes there.

#![cfg(feature = "postgres")]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Entry, Ledger, entry_event, fold, read_model};
use ms_cqrs::{ErrorPolicy, EventLog, ProjectionRunner, RunnerState};
use sqlx::{PgPool, Postgres};

/// Keys `a`, `b`, `c`, 10 entries each, interleaved; entry 4 of `b` is poison.
async fn seed(pool: &PgPool, log: &EventLog<Postgres>) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut tx = pool.begin().await.unwrap();
    for seq in 1..=10 {
        for key in ["a", "b", "c"] {
            let entry = Entry {
                key: key.to_owned(),
                seq,
                amount: seq * 10,
                poison: key == "b" && seq == 4,
            };
            log.append(&mut *tx, &[entry_event(&entry)]).await.unwrap();
            entries.push(entry);
        }
    }
    tx.commit().await.unwrap();
    entries
}

async fn setup() -> Option<(
    ms_testkit::TestPostgres,
    PgPool,
    EventLog<Postgres>,
    Vec<Entry>,
)> {
    let db = ms_testkit::postgres().await?;
    let pool = db.pool().await;
    let log = EventLog::<Postgres>::default();
    log.migrate(&pool).await.unwrap();
    let entries = seed(&pool, &log).await;
    Some((db, pool, log, entries))
}

fn of<'a>(entries: &'a [Entry], key: &str, seqs: std::ops::RangeInclusive<i64>) -> Vec<&'a Entry> {
    entries
        .iter()
        .filter(|e| e.key == key && seqs.contains(&e.seq))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn park_key_parks_the_rest_of_the_key_in_order_and_replay_applies_it() {
    let Some((_db, pool, log, entries)) = setup().await else {
        return;
    };
    let ledger = Ledger::default();
    let runner = ProjectionRunner::from_log(pool.clone(), ledger.clone(), &log)
        .segments(2)
        .batch_size(8)
        .error_policy(
            ErrorPolicy::park_key()
                .retries(2)
                .backoff(Duration::from_millis(1), Duration::from_millis(5)),
        )
        .start()
        .await
        .unwrap();
    runner.wait_until(30).await.unwrap();

    let model = read_model(&pool, "ledger").await;
    let mut expected = fold(of(&entries, "a", 1..=10));
    expected.extend(fold(of(&entries, "c", 1..=10)));
    expected.extend(fold(of(&entries, "b", 1..=3)));
    assert_eq!(
        model, expected,
        "other keys flow; b stops before its poison entry"
    );

    let parked = runner.dead_letters(100).await.unwrap();
    assert_eq!(parked.len(), 7, "{parked:?}");
    assert!(parked.iter().all(|p| p.key == "b"));
    assert!(
        !parked[0].blocked && parked[0].error.contains("poison"),
        "{:?}",
        parked[0]
    );
    assert!(parked[1..].iter().all(|p| p.blocked));
    let seqs: Vec<i64> = parked
        .iter()
        .map(|p| {
            p.envelope
                .as_ref()
                .unwrap()
                .json_data::<Entry>()
                .unwrap()
                .seq
        })
        .collect();
    assert_eq!(seqs, [4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(runner.status().parked, 7);

    // Replay while it still fails: nothing changes.
    assert!(runner.replay("b").await.is_err());
    assert_eq!(runner.dead_letters(100).await.unwrap().len(), 7);

    // Fixed: replay applies the key's parked events in order and unblocks it.
    ledger.accept_poison.store(true, Ordering::SeqCst);
    assert_eq!(runner.replay("b").await.unwrap(), 7);
    assert!(runner.dead_letters(100).await.unwrap().is_empty());
    let mut tx = pool.begin().await.unwrap();
    let later = Entry {
        key: "b".into(),
        seq: 11,
        amount: 1,
        poison: false,
    };
    log.append(&mut *tx, &[entry_event(&later)]).await.unwrap();
    tx.commit().await.unwrap();
    runner.wait_until(31).await.unwrap();

    let mut all = entries.clone();
    all.push(later);
    assert_eq!(read_model(&pool, "ledger").await, fold(&all));
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn park_event_lets_the_key_go_on() {
    let Some((_db, pool, log, entries)) = setup().await else {
        return;
    };
    let runner = ProjectionRunner::from_log(pool.clone(), Ledger::default(), &log)
        .error_policy(ErrorPolicy::park_event())
        .start()
        .await
        .unwrap();
    runner.wait_until(30).await.unwrap();
    let model = read_model(&pool, "ledger").await;
    let without_poison: Vec<&Entry> = entries.iter().filter(|e| !e.poison).collect();
    let mut expected = fold(without_poison);
    // The key went on past the hole: its sequence check saw the gap.
    expected.get_mut("b").unwrap().in_order = false;
    assert_eq!(model, expected);
    let parked = runner.dead_letters(10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].position, Some(11));
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_stops_at_the_event_and_resumes_there() {
    let Some((_db, pool, log, entries)) = setup().await else {
        return;
    };
    let ledger = Ledger::default();
    let runner = ProjectionRunner::from_log(pool.clone(), ledger.clone(), &log)
        .batch_size(4)
        .error_policy(ErrorPolicy::stop())
        .start()
        .await
        .unwrap();
    common::eventually(Duration::from_secs(10), "the runner to stop", || {
        let state = runner.status().state;
        async move { matches!(state, RunnerState::Failed(_)) }
    })
    .await;
    let RunnerState::Failed(reason) = runner.status().state else {
        unreachable!()
    };
    assert!(
        reason.contains("position 11") && reason.contains("poison"),
        "{reason}"
    );
    assert!(runner.wait_until(30).await.is_err());
    let err = runner.shutdown().await.unwrap_err();
    assert!(err.to_string().contains("poison"), "{err}");
    let model = read_model(&pool, "ledger").await;
    assert_eq!(
        model["b"].applied, 3,
        "nothing of b after the poison entry: {model:?}"
    );

    ledger.accept_poison.store(true, Ordering::SeqCst);
    let runner = ProjectionRunner::from_log(pool.clone(), ledger, &log)
        .batch_size(4)
        .error_policy(ErrorPolicy::stop())
        .start()
        .await
        .unwrap();
    runner.wait_until(30).await.unwrap();
    assert_eq!(read_model(&pool, "ledger").await, fold(&entries));
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_that_does_not_decode_is_parked_with_its_text() {
    let Some((_db, pool, log, _entries)) = setup().await else {
        return;
    };
    sqlx::query(
        "INSERT INTO ms_event_log (partition_key, event_type, envelope, recorded_at) \
         VALUES ('z', 'ledger.entry', '{\"specversion\": \"1.0\", \"not\": \"an event', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let runner = ProjectionRunner::from_log(pool.clone(), Ledger::default(), &log)
        .error_policy(ErrorPolicy::park_event())
        .start()
        .await
        .unwrap();
    runner.wait_until(31).await.unwrap();
    let parked = runner.dead_letters(10).await.unwrap();
    let broken = parked
        .iter()
        .find(|p| p.key == "z")
        .expect("the broken row is parked");
    assert!(broken.envelope.is_none());
    assert!(broken.raw.contains("not\": \"an event"));
    assert!(broken.error.contains("does not decode"), "{}", broken.error);
    runner.shutdown().await.unwrap();
}
