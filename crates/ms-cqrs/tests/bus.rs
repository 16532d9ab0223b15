//! Runners fed from a bus subscription: duplicated, delayed and reordered deliveries (the
//! memory bus's fault injection) give the same read model as clean ones, each event applied
//! once and each key in order; the same through NATS JetStream.

#![cfg(feature = "postgres")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Entry, Ledger, Row, entry_event, eventually, fold, read_model};
use ms_bus::memory::{Faults, MemoryBus};
use ms_bus::{EventPublisher, Subscriber, Subscription};
use ms_cqrs::ProjectionRunner;
use sqlx::PgPool;

const TOPIC: &str = "ledger.entries";
const KEYS: i64 = 10;
const PER_KEY: i64 = 60;

fn entries() -> Vec<Entry> {
    let mut entries = Vec::new();
    for seq in 1..=PER_KEY {
        for k in 0..KEYS {
            entries.push(Entry {
                key: format!("k{k}"),
                seq,
                amount: seq * 100 + k,
                poison: false,
            });
        }
    }
    entries
}

async fn applied(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>("SELECT sum(applied)::bigint FROM ledger_v1")
        .fetch_one(pool)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Runs the ledger from `subscriber` into a fresh database, publishing through `publisher`;
/// returns the read model once every event is applied, and the runner's status.
async fn run(
    subscriber: Arc<dyn Subscriber>,
    publisher: &dyn EventPublisher,
    topic: &str,
    entries: &[Entry],
) -> Option<(BTreeMap<String, Row>, ms_cqrs::RunnerStatus)> {
    let db = ms_testkit::postgres().await?;
    let pool = db.pool().await;
    let runner = ProjectionRunner::from_bus(
        pool.clone(),
        Ledger::default(),
        subscriber,
        Subscription::events(topic, "ledger").unwrap(),
    )
    .segments(3)
    .batch_size(32)
    .start()
    .await
    .unwrap();
    for entry in entries {
        publisher.publish(topic, &entry_event(entry)).await.unwrap();
    }
    let total = i64::try_from(entries.len()).unwrap();
    eventually(Duration::from_secs(60), "every event applied", || {
        let pool = pool.clone();
        async move { applied(&pool).await >= total }
    })
    .await;
    // Let late duplicates arrive: they must change nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let model = read_model(&pool, "ledger").await;
    let status = runner.status();
    runner.shutdown().await.unwrap();
    Some((model, status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_delayed_and_reordered_deliveries_give_the_same_read_model() {
    let entries = entries();
    let clean = MemoryBus::new();
    let Some((clean_model, clean_status)) =
        run(Arc::new(clean.clone()), &clean, TOPIC, &entries).await
    else {
        return;
    };
    assert_eq!(clean_model, fold(&entries));
    assert_eq!(clean_status.applied, u64::try_from(entries.len()).unwrap());

    for seed in [1, 2] {
        let faulty = MemoryBus::builder()
            .faults(
                Faults::seeded(seed)
                    .duplicate(0.2)
                    .delay(0.2, Duration::from_millis(30))
                    .reorder(0.3)
                    .drop_before_ack(0.05),
            )
            .build();
        let (model, status) = run(Arc::new(faulty.clone()), &faulty, TOPIC, &entries)
            .await
            .unwrap();
        assert_eq!(model, clean_model, "seed {seed}");
        assert!(
            model.values().all(|row| row.in_order),
            "seed {seed}: {model:?}"
        );
        assert_eq!(
            status.applied,
            u64::try_from(entries.len()).unwrap(),
            "seed {seed}"
        );
        // The faults did happen, and were absorbed.
        assert!(
            status.skipped > 0,
            "seed {seed}: no duplicate was seen: {status:?}"
        );
        assert!(
            status.out_of_order > 0,
            "seed {seed}: nothing arrived early: {status:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_without_a_sequence_are_applied_once_per_source_and_id() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let bus = MemoryBus::new();
    let runner = ProjectionRunner::from_bus(
        pool.clone(),
        Ledger::default(),
        Arc::new(bus.clone()),
        Subscription::events(TOPIC, "ledger").unwrap(),
    )
    .start()
    .await
    .unwrap();
    let event = ms_bus::Envelope::builder(common::EVENT_TYPE, "/tests")
        .subject("solo")
        .json_data(&Entry {
            key: "solo".into(),
            seq: 1,
            amount: 5,
            poison: false,
        })
        .unwrap()
        .build()
        .unwrap();
    // The same id from another producer: another event (CloudEvents: source + id).
    let other_source = ms_bus::Envelope::builder(common::EVENT_TYPE, "/other-tests")
        .id(event.id())
        .subject("solo")
        .json_data(&Entry {
            key: "solo".into(),
            seq: 1,
            amount: 7,
            poison: false,
        })
        .unwrap()
        .build()
        .unwrap();
    for _ in 0..3 {
        bus.publish(TOPIC, &event).await.unwrap();
    }
    bus.publish(TOPIC, &other_source).await.unwrap();
    eventually(Duration::from_secs(10), "four deliveries settled", || {
        let status = runner.status();
        async move { status.applied + status.skipped >= 4 }
    })
    .await;
    assert_eq!(read_model(&pool, "ledger").await["solo"].total, 12);
    let status = runner.status();
    assert_eq!(status.skipped, 2);
    // Nothing waits in the runner: caught up, no lag, and the health check passes.
    assert_eq!(
        status.state,
        ms_cqrs::RunnerState::Running { caught_up: true }
    );
    assert_eq!(status.lag(), Duration::ZERO);
    runner.shutdown().await.unwrap();
    assert!(
        runner.rebuild().await.is_err(),
        "a bus source cannot be replayed"
    );

    // A bus source keeps its state per key: another number of segments is fine, and what
    // was applied stays applied.
    let runner = ProjectionRunner::from_bus(
        pool.clone(),
        Ledger::default(),
        Arc::new(bus.clone()),
        Subscription::events(TOPIC, "ledger").unwrap(),
    )
    .segments(3)
    .start()
    .await
    .unwrap();
    // A row from before keys were source + id holds the bare id: its event still counts as
    // applied.
    sqlx::query(
        "INSERT INTO ms_cqrs_seen (name, version, event_id, seen_at) \
         SELECT name, live_version, 'legacy-1', 0 FROM ms_cqrs_projections",
    )
    .execute(&pool)
    .await
    .unwrap();
    let legacy = ms_bus::Envelope::builder(common::EVENT_TYPE, "/tests")
        .id("legacy-1")
        .subject("solo")
        .json_data(&Entry {
            key: "solo".into(),
            seq: 1,
            amount: 1000,
            poison: false,
        })
        .unwrap()
        .build()
        .unwrap();
    bus.publish(TOPIC, &event).await.unwrap();
    bus.publish(TOPIC, &legacy).await.unwrap();
    eventually(Duration::from_secs(10), "the repeats settled", || {
        let status = runner.status();
        async move { status.skipped >= 2 }
    })
    .await;
    assert_eq!(read_model(&pool, "ledger").await["solo"].total, 12);
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_predecessor_never_comes_is_parked_as_a_sequence_gap() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let bus = MemoryBus::new();
    let runner = ProjectionRunner::from_bus(
        pool.clone(),
        Ledger::default(),
        Arc::new(bus.clone()),
        Subscription::events(TOPIC, "ledger").unwrap(),
    )
    .error_policy(ms_cqrs::ErrorPolicy::park_event())
    .start()
    .await
    .unwrap();
    bus.publish(TOPIC, &common::event("gap", 2, 5))
        .await
        .unwrap();
    bus.publish(TOPIC, &common::event("fine", 1, 7))
        .await
        .unwrap();
    eventually(Duration::from_secs(40), "the early event parked", || {
        let status = runner.status();
        async move { status.parked == 1 }
    })
    .await;
    let parked = runner.dead_letters(10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert!(
        parked[0].error.contains("sequence gap"),
        "{}",
        parked[0].error
    );
    assert_eq!(parked[0].key, "gap");
    let model = read_model(&pool, "ledger").await;
    assert_eq!(model.keys().collect::<Vec<_>>(), ["fine"]);
    assert!(runner.status().out_of_order >= 100);
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_bus_fed_runner_reports_its_lag_until_it_catches_up() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let bus = MemoryBus::new();
    let slow = Ledger {
        delay: Some(Duration::from_millis(100)),
        ..Ledger::default()
    };
    let runner = ProjectionRunner::from_bus(
        pool.clone(),
        slow,
        Arc::new(bus.clone()),
        Subscription::events(TOPIC, "ledger").unwrap(),
    )
    .batch_size(1)
    .start()
    .await
    .unwrap();
    let an_hour_ago = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    for seq in 1..=10 {
        let entry = Entry {
            key: "late".into(),
            seq,
            amount: 1,
            poison: false,
        };
        let event = ms_bus::Envelope::builder(common::EVENT_TYPE, "/tests")
            .subject("late")
            .time(an_hour_ago)
            .extension(ms_cqrs::SEQUENCE_EXTENSION, seq.to_string())
            .unwrap()
            .json_data(&entry)
            .unwrap()
            .build()
            .unwrap();
        bus.publish(TOPIC, &event).await.unwrap();
    }
    eventually(
        Duration::from_secs(10),
        "the lag of an hour-old event",
        || {
            let status = runner.status();
            async move {
                status.lag() > Duration::from_secs(3000)
                    && status.state == ms_cqrs::RunnerState::Running { caught_up: false }
            }
        },
    )
    .await;
    eventually(Duration::from_secs(30), "caught up", || {
        let status = runner.status();
        async move { status.applied == 10 && status.lag() == Duration::ZERO }
    })
    .await;
    assert_eq!(
        runner.status().state,
        ms_cqrs::RunnerState::Running { caught_up: true }
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_subscription_feeds_the_read_model() {
    let Some(nats) = ms_testkit::nats().await else {
        return;
    };
    let bus = ms_bus::nats::NatsBus::builder(nats.client().await)
        .prefix(nats.prefix())
        .unwrap()
        .build();
    let entries = entries();
    let Some((model, status)) = run(Arc::new(bus.clone()), &bus, TOPIC, &entries).await else {
        return;
    };
    assert_eq!(model, fold(&entries));
    assert_eq!(status.applied, u64::try_from(entries.len()).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_that_panics_fails_the_bus_fed_runner_with_the_panic_message() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let bus = MemoryBus::new();
    let ledger = Ledger {
        panic_on_poison: true,
        ..Ledger::default()
    };
    let runner = ProjectionRunner::from_bus(
        pool.clone(),
        ledger,
        Arc::new(bus.clone()),
        Subscription::events(TOPIC, "ledger").unwrap(),
    )
    .segments(2)
    .start()
    .await
    .unwrap();
    bus.publish(TOPIC, &common::event("k1", 1, 100))
        .await
        .unwrap();
    let poison = Entry {
        key: "k2".into(),
        seq: 1,
        amount: 7,
        poison: true,
    };
    bus.publish(TOPIC, &entry_event(&poison)).await.unwrap();
    eventually(Duration::from_secs(30), "the runner failed", || {
        let state = runner.status().state;
        async move { matches!(state, ms_cqrs::RunnerState::Failed(_)) }
    })
    .await;
    let ms_cqrs::RunnerState::Failed(reason) = runner.status().state else {
        unreachable!()
    };
    assert!(
        reason.contains("panicked") && reason.contains("entry 1 of k2 makes the projection panic"),
        "{reason}"
    );
    // Shutting down keeps the failure: it is not overwritten by `Stopped`.
    let stopped = runner.shutdown().await.unwrap_err();
    assert!(
        stopped.to_string().contains("makes the projection panic"),
        "{stopped}"
    );
}
