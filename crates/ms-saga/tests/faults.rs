//! Duplicated, delayed, reordered and lost-ack deliveries (the memory bus's faults, three
//! seeds) end in the same instance states as a clean run (SQLite).
#![cfg(feature = "sqlite")]

mod common;

use std::time::Duration;

use common::{Order, State, event};
use ms_bus::consumer::Consumer;
use ms_bus::memory::{Faults, MemoryBus};
use ms_bus::{EventPublisher, Subscription};
use ms_outbox::{Inbox, Outbox};
use ms_saga::{SagaRunner, SagaStore};
use sqlx::{Sqlite, SqlitePool};

const TOPIC: &str = "shop.order";
const ORDERS: usize = 30;
const NOTES: u32 = 3;

/// Runs the scenario over `bus` and returns every instance's state, by id.
async fn run(bus: MemoryBus, seed: u64) -> Vec<(String, Option<State>)> {
    let path =
        std::env::temp_dir().join(format!("ms-saga-faults-{}-{seed}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let pool = SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("sqlite");
    let outbox = Outbox::<Sqlite>::default();
    outbox.migrate(&pool).await.expect("outbox");
    Inbox::<Sqlite>::default()
        .migrate(&pool)
        .await
        .expect("inbox");
    let store = SagaStore::<Sqlite>::new(pool.clone());
    store.migrate().await.expect("saga tables");
    let runner = SagaRunner::builder(
        Order {
            reply_within: Duration::from_secs(3600),
        },
        store.clone(),
        outbox,
    )
    .build();
    let consumer = Consumer::new(Subscription::events(TOPIC, "order-saga").expect("names"))
        .serve(&bus, runner)
        .await
        .expect("consumer");
    let ids: Vec<String> = (0..ORDERS).map(|i| format!("o-{i}")).collect();

    // Each phase waits for the previous one, as the replies of real services would.
    for id in &ids {
        bus.publish(TOPIC, &event("shop.order.placed", id))
            .await
            .expect("publish");
    }
    wait(&store, &ids, |s| matches!(s, Some(State::Charging { .. }))).await;
    for _ in 0..NOTES {
        for id in &ids {
            bus.publish(TOPIC, &event("shop.order.noted", id))
                .await
                .expect("publish");
        }
    }
    wait(
        &store,
        &ids,
        |s| matches!(s, Some(State::Charging { notes }) if *notes >= NOTES),
    )
    .await;
    for id in ids.iter().step_by(2) {
        bus.publish(TOPIC, &event("payments.paid", id))
            .await
            .expect("publish");
    }
    let paid: Vec<String> = ids.iter().step_by(2).cloned().collect();
    wait(&store, &paid, |s| matches!(s, Some(State::Paid { .. }))).await;
    // Let redeliveries of lost acks and delayed duplicates come in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.shutdown().await.expect("consumer down");
    let mut states = Vec::new();
    for id in ids {
        let state = store
            .instance::<State>("order", &id)
            .await
            .expect("read")
            .map(|i| i.state);
        states.push((id, state));
    }
    let _ = std::fs::remove_file(&path);
    states
}

async fn wait(store: &SagaStore<Sqlite>, ids: &[String], done: impl Fn(&Option<State>) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for id in ids {
        loop {
            let state = store
                .instance::<State>("order", id)
                .await
                .expect("read")
                .map(|i| i.state);
            if done(&state) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} stuck at {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_deliveries_end_in_the_states_of_a_clean_run() {
    let clean = run(MemoryBus::new(), 0).await;
    for (i, (_, state)) in clean.iter().enumerate() {
        let expected = if i % 2 == 0 {
            State::Paid { notes: NOTES }
        } else {
            State::Charging { notes: NOTES }
        };
        assert_eq!(state.as_ref(), Some(&expected));
    }
    for seed in [1, 2, 3] {
        let faults = Faults::seeded(seed)
            .duplicate(0.3)
            .delay(0.1, Duration::from_millis(20))
            .reorder(0.3)
            .drop_before_ack(0.2);
        let with_faults = run(MemoryBus::builder().faults(faults).build(), seed).await;
        assert_eq!(with_faults, clean, "seed {seed}");
    }
}
