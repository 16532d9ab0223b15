//! The relay's basic promises on a real PostgreSQL and the memory bus.
#![cfg(feature = "postgres")]

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use ms_bus::memory::MemoryBus;
use ms_bus::{Envelope, Subscriber, Subscription};
use ms_outbox::{Outbox, OutboxMessage, Relay};
use sqlx::Postgres;

fn event(key: &str, seq: u32) -> OutboxMessage {
    let envelope = Envelope::builder("test.happened", "/test")
        .subject(key)
        .extension("seq", seq.to_string())
        .expect("valid extension")
        .build()
        .expect("valid envelope");
    OutboxMessage::event("test.events", envelope)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_event_is_never_published_and_a_committed_one_once() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let outbox = Outbox::<Postgres>::default();
    outbox.migrate(&pool).await.unwrap();
    outbox
        .migrate(&pool)
        .await
        .expect("migrating twice is harmless");

    let bus = MemoryBus::new();
    let mut deliveries = bus
        .subscribe(&Subscription::events("test.events", "checker").unwrap())
        .await
        .unwrap();
    let relay = Relay::builder(&outbox, &pool, bus.clone()).build().spawn();

    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut *tx, event("rolled-back", 1))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut *tx, event("committed", 2))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let delivery = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
        .await
        .expect("published in time")
        .expect("stream open")
        .unwrap();
    assert_eq!(delivery.message().unwrap().subject(), Some("committed"));
    delivery.acker().ack().await.unwrap();
    // Nothing else arrives: not the rolled-back event, not a second copy.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), deliveries.next())
            .await
            .is_err()
    );
    let status = relay.status();
    assert_eq!(status.published, 1);
    relay.shutdown().await.unwrap();
    assert_eq!(outbox.backlog(&pool).await.unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_keep_each_key_in_commit_order() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let outbox = Outbox::<Postgres>::builder(ms_outbox::TableName::new("ordered").unwrap())
        .shards(4)
        .build();
    outbox.migrate(&pool).await.unwrap();
    let bus = MemoryBus::new();
    let mut deliveries = bus
        .subscribe(&Subscription::events("test.events", "checker").unwrap())
        .await
        .unwrap();
    let relays: Vec<_> = (0..2)
        .map(|_| {
            Relay::builder(&outbox, &pool, bus.clone())
                .batch_size(50)
                .concurrency(2)
                .build()
                .spawn()
        })
        .collect();

    // Writers take a per-key counter row lock before enqueueing, as an aggregate update
    // would; the counter value is the commit order of the key.
    sqlx::query("CREATE TABLE counters (key TEXT PRIMARY KEY, n INT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let keys = 10;
    let per_writer = 200;
    let mut writers = Vec::new();
    for w in 0..4 {
        let (pool, outbox) = (pool.clone(), outbox.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let key = format!("k{}", (i * 7 + w) % keys);
                let mut tx = pool.begin().await.unwrap();
                let n: i32 = sqlx::query_scalar(
                    "INSERT INTO counters VALUES ($1, 1) ON CONFLICT (key) \
                     DO UPDATE SET n = counters.n + 1 RETURNING n",
                )
                .bind(&key)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                outbox
                    .enqueue(&mut *tx, event(&key, n.cast_unsigned()))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let total = 4 * per_writer;
    let mut last: HashMap<String, u32> = HashMap::new();
    for _ in 0..total {
        let delivery = tokio::time::timeout(Duration::from_secs(20), deliveries.next())
            .await
            .expect("all published")
            .unwrap()
            .unwrap();
        let key = delivery.message().unwrap().subject().unwrap().to_owned();
        let seq: u32 = delivery
            .message()
            .unwrap()
            .extension("seq")
            .unwrap()
            .parse()
            .unwrap();
        let previous = last.insert(key.clone(), seq).unwrap_or(0);
        assert_eq!(seq, previous + 1, "key {key}: {seq} after {previous}");
        delivery.acker().ack().await.unwrap();
    }
    for relay in relays {
        relay.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transaction_can_enqueue_twenty_thousand_distinct_keys() {
    // One advisory lock per key would exhaust PostgreSQL's shared lock table (6,400 entries
    // by default): keys share a bounded number of lock slots.
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let outbox = Outbox::<Postgres>::default();
    outbox.migrate(&pool).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue_all(&mut *tx, (0..20_000).map(|i| event(&format!("key-{i}"), 1)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(outbox.backlog(&pool).await.unwrap().pending, 20_000);
}
