//! Four relays and eight concurrent writers, 100,000 events through NATS JetStream: none lost,
//! none published twice, every key in commit order, checked at the consumer.

#![cfg(feature = "postgres")]

mod common;

use std::time::{Duration, Instant};

use ms_bus::Subscription;
use ms_bus::nats::NatsBus;
use ms_outbox::{Outbox, Relay, TableName};
use sqlx::Postgres;
use sqlx::postgres::PgPoolOptions;

use common::{Consumer, TOPIC, Tap};

const EVENTS: u32 = 100_000;
const WRITERS: u32 = 8;
/// Events per writer transaction, all of one key.
const PER_TX: u32 = 20;
const KEYS: u32 = 100;
const RELAYS: usize = 4;
const BATCH: usize = 500;
const CONCURRENCY: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_relays_and_eight_writers_lose_nothing_duplicate_nothing_and_keep_key_order() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let Some(nats) = ms_testkit::nats().await else {
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(WRITERS)
        .connect(db.url())
        .await
        .unwrap();
    let outbox = Outbox::<Postgres>::new(TableName::new("scale").unwrap());
    outbox.migrate(&pool).await.unwrap();
    common::create_counters(&pool).await;

    let bus = NatsBus::builder(nats.client().await)
        .prefix(nats.prefix())
        .unwrap()
        .build();
    let tap = Tap::start(nats.client().await, bus.event_subject(TOPIC)).await;
    let mut consumer = Consumer::start(
        &bus,
        Subscription::events(TOPIC, "checker")
            .unwrap()
            .prefetch(1000),
    )
    .await;

    let mut relays = Vec::new();
    for _ in 0..RELAYS {
        // Each relay with its own pool and NATS connection, as separate processes would have.
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(db.url())
            .await
            .unwrap();
        let bus = NatsBus::builder(nats.client().await)
            .prefix(nats.prefix())
            .unwrap()
            .build();
        relays.push(
            Relay::builder(&outbox, &pool, bus)
                .batch_size(BATCH)
                .concurrency(CONCURRENCY)
                .build()
                .spawn(),
        );
    }

    let started = Instant::now();
    let writers = common::spawn_writers(&pool, &outbox, WRITERS, EVENTS / WRITERS, PER_TX, KEYS);
    common::join_writers(writers).await;
    let written = started.elapsed();
    consumer
        .wait_for(u64::from(EVENTS), Duration::from_secs(120))
        .await;
    let drained = started.elapsed();
    common::wait_drained(&outbox, &pool, Duration::from_secs(10)).await;

    let statuses: Vec<_> = relays.iter().map(ms_outbox::RelayHandle::status).collect();
    for relay in relays {
        relay.shutdown().await.unwrap();
    }
    let (received, unique, duplicates) = consumer.counts();
    let tapped = tap.counts();
    let published: Vec<u64> = statuses.iter().map(|s| s.published).collect();
    println!(
        "scale: {EVENTS} events written in {written:?}, all consumed after {drained:?}; \
         relays published {published:?}; consumer received {received} ({duplicates} \
         duplicates); tap saw {} messages, {} distinct",
        tapped.messages, tapped.distinct
    );

    // None lost, in commit order per key: checked by the consumer as they arrived, and here
    // against the committed counters.
    let counters = common::counters(&pool).await;
    consumer.arrivals.lock().unwrap().assert_complete(&counters);
    assert_eq!(unique, u64::from(EVENTS));
    // None published twice: each row committed as published by exactly one relay, no batch
    // rolled back after publishing, no envelope seen twice on the wire or by the consumer.
    assert_eq!(published.iter().sum::<u64>(), u64::from(EVENTS));
    for status in &statuses {
        assert_eq!(status.batch_errors, 0, "{status:?}");
        assert_eq!(status.failures, 0, "{status:?}");
    }
    assert!(
        published.iter().filter(|&&p| p > 0).count() > 1,
        "the relays shared the work: {published:?}"
    );
    assert_eq!(tapped.republished(), 0, "{tapped:?}");
    assert_eq!(duplicates, 0);
    assert_eq!(received, u64::from(EVENTS));
    assert_eq!(consumer.ids.lock().unwrap().len(), EVENTS as usize);
}
