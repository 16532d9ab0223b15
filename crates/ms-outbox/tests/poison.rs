//! A row the broker refuses (an envelope over NATS's payload limit) is parked with its error;
//! its key waits or not, as configured; other keys keep flowing; parked rows can be replayed
//! or discarded. Real PostgreSQL, real NATS JetStream.
#![cfg(feature = "postgres")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use ms_bus::nats::NatsBus;
use ms_bus::{Envelope, Subscriber, Subscription};
use ms_outbox::{OnPoison, Outbox, OutboxMessage, Relay, RelayHandle};
use sqlx::{PgPool, Postgres};

const TOPIC: &str = "poison.events";

fn event(key: &str, seq: u32, bytes: usize) -> OutboxMessage {
    let envelope = Envelope::builder("test.happened", "/test")
        .subject(key)
        .extension("seq", seq.to_string())
        .unwrap()
        .data("application/octet-stream", vec![b'x'; bytes])
        .build()
        .unwrap();
    OutboxMessage::event(TOPIC, envelope)
}

/// Everything delivered to a consumer group, per key, in arrival order.
type Seen = Arc<Mutex<HashMap<String, Vec<u32>>>>;

async fn consume(bus: &NatsBus) -> Seen {
    let seen: Seen = Arc::default();
    let mut deliveries = bus
        .subscribe(&Subscription::events(TOPIC, "checker").unwrap())
        .await
        .unwrap();
    let sink = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            let (envelope, _, acker) = delivery.into_parts();
            let envelope = envelope.unwrap();
            let seq = envelope.extension("seq").unwrap().parse().unwrap();
            sink.lock()
                .unwrap()
                .entry(envelope.subject().unwrap().to_owned())
                .or_default()
                .push(seq);
            acker.ack().await.unwrap();
        }
    });
    seen
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn enqueue(pool: &PgPool, outbox: &Outbox<Postgres>, messages: Vec<OutboxMessage>) {
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_all(&mut *tx, messages).await.unwrap();
    tx.commit().await.unwrap();
}

struct Setup {
    pool: PgPool,
    outbox: Outbox<Postgres>,
    seen: Seen,
    relay: RelayHandle,
    healthy: std::sync::atomic::AtomicU32,
    _db: ms_testkit::TestPostgres,
    _nats: ms_testkit::TestNats,
}

async fn setup(policy: OnPoison) -> Option<Setup> {
    let db = ms_testkit::postgres().await?;
    let nats = ms_testkit::nats().await?;
    let pool = db.pool().await;
    let outbox = Outbox::<Postgres>::builder(ms_outbox::TableName::new("poison_outbox").unwrap())
        .shards(1)
        .build();
    outbox.migrate(&pool).await.unwrap();
    let bus = NatsBus::builder(nats.client().await)
        .prefix(nats.prefix())
        .unwrap()
        .build();
    bus.ensure_topic(TOPIC).await.unwrap();
    let seen = consume(&bus).await;
    let relay = Relay::builder(&outbox, &pool, bus)
        .max_attempts(3)
        .retry_delay(Duration::from_millis(50), Duration::from_millis(200))
        .publish_timeout(Duration::from_secs(5))
        .on_poison(policy)
        .build()
        .spawn();
    Some(Setup {
        pool,
        outbox,
        seen,
        relay,
        healthy: std::sync::atomic::AtomicU32::new(0),
        _db: db,
        _nats: nats,
    })
}

/// Keeps a healthy key flowing (a failure only counts while the broker demonstrably works)
/// until `done`.
async fn flow_until(s: &Setup, what: &str, mut done: impl FnMut(&Setup) -> bool) {
    for _ in 0..300 {
        if done(s) {
            return;
        }
        let seq = s.healthy.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        enqueue(&s.pool, &s.outbox, vec![event("healthy", seq, 10)]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn parked(s: &Setup) -> bool {
    s.relay.status().parked >= 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_row_is_parked_and_holds_back_only_its_own_key() {
    let Some(s) = setup(OnPoison::BlockKey).await else {
        return;
    };
    enqueue(
        &s.pool,
        &s.outbox,
        vec![
            event("poisoned", 1, 2 * 1024 * 1024),
            event("poisoned", 2, 10),
            event("poisoned", 3, 10),
            event("other", 1, 10),
            event("other", 2, 10),
        ],
    )
    .await;
    // Other keys flow while the poisoned row is still being retried.
    until("the other key", || {
        s.seen.lock().unwrap().get("other").map(Vec::len) == Some(2)
    })
    .await;
    flow_until(&s, "the oversized row to be parked", parked).await;

    let dead = s.outbox.dead_letters(&s.pool, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].partition_key, "poisoned");
    assert!(dead[0].blocks_key);
    assert!(dead[0].attempts >= 3, "{dead:?}");
    assert!(dead[0].error.contains("payload"), "{}", dead[0].error);
    // The poisoned key's later rows wait behind the parked one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.seen.lock().unwrap().get("poisoned"), None);
    assert_eq!(s.outbox.backlog(&s.pool).await.unwrap().pending, 2);

    // Replaying puts it back first in line: it fails again and is parked again.
    assert!(s.outbox.replay(&s.pool, dead[0].id).await.unwrap());
    assert!(s.outbox.dead_letters(&s.pool, 10).await.unwrap().is_empty());
    flow_until(&s, "the replayed row to be parked again", |s| {
        s.relay.status().parked >= 2
    })
    .await;
    assert_eq!(s.seen.lock().unwrap().get("poisoned"), None);

    // Discarding it releases the key, in order.
    let dead = s.outbox.dead_letters(&s.pool, 10).await.unwrap();
    assert!(s.outbox.discard(&s.pool, dead[0].id).await.unwrap());
    assert!(!s.outbox.discard(&s.pool, dead[0].id).await.unwrap());
    until("the poisoned key's later rows", || {
        s.seen.lock().unwrap().get("poisoned").map(Vec::len) == Some(2)
    })
    .await;
    assert_eq!(s.seen.lock().unwrap()["poisoned"], vec![2, 3]);
    let healthy = s.seen.lock().unwrap()["healthy"].clone();
    assert!(healthy.windows(2).all(|w| w[0] < w[1]), "{healthy:?}");
    s.relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_block_nothing_the_poisoned_keys_later_rows_flow() {
    let Some(s) = setup(OnPoison::BlockNothing).await else {
        return;
    };
    enqueue(
        &s.pool,
        &s.outbox,
        vec![
            event("poisoned", 1, 2 * 1024 * 1024),
            event("poisoned", 2, 10),
            event("poisoned", 3, 10),
        ],
    )
    .await;
    // While the first row is retried, the later ones of its key go out.
    until("the later rows", || {
        s.seen.lock().unwrap().get("poisoned").map(Vec::len) == Some(2)
    })
    .await;
    flow_until(&s, "the oversized row to be parked", parked).await;
    let dead = s.outbox.dead_letters(&s.pool, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(!dead[0].blocks_key);
    assert_eq!(s.seen.lock().unwrap()["poisoned"], vec![2, 3]);
    s.relay.shutdown().await.unwrap();
}
