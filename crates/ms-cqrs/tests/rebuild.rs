//! Rebuilds: a new version built beside the live one from the start of the log while writers
//! go on, switched to when caught up; every event's side effect runs exactly once across the
//! switch; rebuilding twice gives identical read models (property test).

#![cfg(feature = "postgres")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Entry, Ledger, entry_event, fold, read_model};
use ms_cqrs::{EventLog, ProjectionRunner};
use proptest::prelude::*;
use sqlx::{PgPool, Postgres};

async fn append_all(pool: &PgPool, log: &EventLog<Postgres>, entries: &[Entry]) {
    let mut tx = pool.begin().await.unwrap();
    let events: Vec<_> = entries.iter().map(entry_event).collect();
    log.append(&mut *tx, &events).await.unwrap();
    tx.commit().await.unwrap();
}

fn entries_for(keys: usize, per_key: i64, from_seq: i64) -> Vec<Entry> {
    let mut entries = Vec::new();
    for seq in from_seq..from_seq + per_key {
        for k in 0..keys {
            entries.push(Entry {
                key: format!("k{k}"),
                seq,
                amount: seq * 3 + i64::try_from(k).unwrap(),
                poison: false,
            });
        }
    }
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_under_load_switches_views_and_runs_each_side_effect_once() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let log = EventLog::<Postgres>::default();
    log.migrate(&pool).await.unwrap();
    let mut all = entries_for(20, 50, 1);
    append_all(&pool, &log, &all).await;

    let runner = ProjectionRunner::from_log(pool.clone(), Ledger::default(), &log)
        .segments(2)
        .batch_size(64)
        .poll_interval(Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    runner.wait_until(1000).await.unwrap();

    // Writers go on during the rebuild.
    let writer = {
        let (pool, log) = (pool.clone(), log.clone());
        tokio::spawn(async move {
            let mut written = Vec::new();
            for round in 0..40 {
                let batch = entries_for(20, 1, 51 + round);
                append_all(&pool, &log, &batch).await;
                written.extend(batch);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            written
        })
    };
    let version = tokio::time::timeout(Duration::from_secs(60), runner.rebuild())
        .await
        .expect("the rebuild finishes")
        .unwrap();
    assert_eq!(version, 2);
    assert_eq!(runner.status().version, 2);
    all.extend(writer.await.unwrap());
    runner
        .wait_until(i64::try_from(all.len()).unwrap())
        .await
        .unwrap();

    let expected = fold(&all);
    assert_eq!(read_model(&pool, "ledger_v2").await, expected);
    assert_eq!(
        read_model(&pool, "ledger").await,
        expected,
        "the view reads version 2"
    );
    // Version 1 stayed as it was when it stopped: a prefix of the history.
    let v1 = read_model(&pool, "ledger_v1").await;
    assert!(v1.values().map(|r| r.applied).sum::<i64>() >= 1000);

    // Every event's live side effect ran exactly once, by version 1 or 2, never by the replay.
    let effects: Vec<(i64, i64)> =
        sqlx::query_as("SELECT count(*), COALESCE(max(times), 0) FROM ledger_effects")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(effects, [(i64::try_from(all.len()).unwrap(), 1)]);

    // A second rebuild while nothing moves, then the old versions are dropped.
    assert_eq!(runner.rebuild().await.unwrap(), 3);
    assert_eq!(read_model(&pool, "ledger_v3").await, expected);
    assert!(
        runner.drop_version(3).await.is_err(),
        "the live version cannot be dropped"
    );
    runner.drop_version(1).await.unwrap();
    runner.drop_version(2).await.unwrap();
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_name LIKE 'ledger_v%' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(left, ["ledger_v3"]);
    runner.shutdown().await.unwrap();

    // A restart runs the live version.
    let runner = ProjectionRunner::from_log(pool.clone(), Ledger::default(), &log)
        .segments(2)
        .start()
        .await
        .unwrap();
    assert_eq!(runner.status().version, 3);
    runner.shutdown().await.unwrap();
}

fn entry_strategy() -> impl Strategy<Value = Vec<(u8, i64)>> {
    prop::collection::vec((0_u8..6, -1000_i64..1000), 1..120)
}

/// Numbers each key's entries 1, 2, 3, … in the order generated.
fn sequenced(raw: &[(u8, i64)]) -> Vec<Entry> {
    let mut next: BTreeMap<u8, i64> = BTreeMap::new();
    raw.iter()
        .map(|(k, amount)| {
            let seq = next.entry(*k).or_insert(0);
            *seq += 1;
            Entry {
                key: format!("key-{k}"),
                seq: *seq,
                amount: *amount,
                poison: false,
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn rebuilding_twice_gives_identical_read_models(raw in entry_strategy(), segments in 1_u16..4, batch in 1_usize..50) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let Some(db) = ms_testkit::postgres().await else {
                return;
            };
            let pool = db.pool().await;
            let log = EventLog::<Postgres>::default();
            log.migrate(&pool).await.unwrap();
            let entries = sequenced(&raw);
            append_all(&pool, &log, &entries).await;
            let runner = ProjectionRunner::from_log(pool.clone(), Ledger::default(), &log)
                .segments(segments)
                .batch_size(batch)
                .start()
                .await
                .unwrap();
            let head = i64::try_from(entries.len()).unwrap();
            runner.wait_until(head).await.unwrap();
            assert_eq!(runner.rebuild().await.unwrap(), 2);
            assert_eq!(runner.rebuild().await.unwrap(), 3);
            let v1 = read_model(&pool, "ledger_v1").await;
            let v2 = read_model(&pool, "ledger_v2").await;
            let v3 = read_model(&pool, "ledger_v3").await;
            assert_eq!(&v2, &v3);
            assert_eq!(&v1, &v3);
            assert_eq!(v3, fold(&entries));
            runner.shutdown().await.unwrap();
        });
    }
}
