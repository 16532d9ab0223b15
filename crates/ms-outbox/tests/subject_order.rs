//! One ordering rule from commit to handler: events that carry a subject but no
//! `partitionkey` (as the crate's own example builds them) go outbox → relay → broker → a
//! `Consumer` handling 8 at once, whose handler is slow on each subject's first event. Every
//! subject's events must reach the handler in commit order, on the memory bus and on NATS.
//! (The relay ordered them by subject, but the consumer lanes used to order by `partitionkey`
//! only, so the later events of a subject overtook its slow first one.)

#![cfg(feature = "postgres")]

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ms_bus::consumer::{Consumer, Message};
use ms_bus::memory::MemoryBus;
use ms_bus::nats::NatsBus;
use ms_bus::{BoxError, CommandSender, Envelope, EventPublisher, Subscriber, Subscription};
use ms_outbox::{Outbox, OutboxMessage, Relay, TableName};
use sqlx::Postgres;

const TOPIC: &str = "test.subjects";
const SUBJECTS: usize = 4;
const PER_SUBJECT: usize = 10;
/// How long the handler takes for a subject's first event.
const SLOW: Duration = Duration::from_millis(300);

/// What the handler saw, in call order: (subject, number).
type Handled = Arc<Mutex<Vec<(String, usize)>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Event `n` is about subject `n % SUBJECTS`: the subjects interleave in commit order.
fn event(n: usize) -> OutboxMessage {
    let envelope = Envelope::builder("test.thing.changed", "/test")
        .subject(format!("thing-{}", n % SUBJECTS))
        .json_data(&serde_json::json!({ "n": n }))
        .unwrap()
        .build()
        .unwrap();
    OutboxMessage::event(TOPIC, envelope)
}

/// Runs the whole path on `bus` and checks each subject's order at the handler.
async fn check_path<B>(test: &str, bus: B)
where
    B: EventPublisher + CommandSender + Subscriber + Clone + 'static,
{
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let outbox = Outbox::<Postgres>::new(TableName::new("subject_order").unwrap());
    outbox.migrate(&pool).await.unwrap();

    let handled: Handled = Arc::default();
    let service = tower::service_fn({
        let handled = handled.clone();
        let started = Arc::new(Mutex::new(HashSet::new()));
        move |message: Message| {
            let (handled, started) = (handled.clone(), started.clone());
            async move {
                let subject = message.subject().ok_or("no subject")?.to_owned();
                let n = message.json_data::<serde_json::Value>()?["n"]
                    .as_u64()
                    .ok_or("no n")?;
                if lock(&started).insert(subject.clone()) {
                    tokio::time::sleep(SLOW).await;
                }
                lock(&handled).push((subject, usize::try_from(n)?));
                Ok::<_, BoxError>(())
            }
        }
    });
    let consumer = Consumer::new(Subscription::events(TOPIC, "checker").unwrap())
        .concurrency(8)
        .serve(&bus, service)
        .await
        .unwrap();
    let relay = Relay::builder(&outbox, &pool, bus.clone()).build().spawn();

    // A few events per transaction, in commit order 0, 1, 2, …
    let total = SUBJECTS * PER_SUBJECT;
    for chunk in (0..total).collect::<Vec<_>>().chunks(3) {
        let mut tx = pool.begin().await.unwrap();
        outbox
            .enqueue_all(&mut *tx, chunk.iter().map(|&n| event(n)))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while lock(&handled).len() < total {
        assert!(
            Instant::now() < deadline,
            "{test}: {} of {total} events handled",
            lock(&handled).len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();

    let handled = lock(&handled).clone();
    for subject in 0..SUBJECTS {
        let name = format!("thing-{subject}");
        let order: Vec<usize> = handled
            .iter()
            .filter(|(s, _)| *s == name)
            .map(|(_, n)| *n)
            .collect();
        let committed: Vec<usize> = (0..total).filter(|n| n % SUBJECTS == subject).collect();
        assert_eq!(order, committed, "{test}: {name} out of commit order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_only_events_reach_a_concurrent_consumer_in_commit_order_on_the_memory_bus() {
    check_path(
        "subject_only_events_reach_a_concurrent_consumer_in_commit_order_on_the_memory_bus",
        MemoryBus::new(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_only_events_reach_a_concurrent_consumer_in_commit_order_on_nats() {
    let Some(nats) = ms_testkit::nats().await else {
        return;
    };
    let bus = NatsBus::builder(nats.client().await)
        .prefix(nats.prefix())
        .unwrap()
        .build();
    check_path(
        "subject_only_events_reach_a_concurrent_consumer_in_commit_order_on_nats",
        bus,
    )
    .await;
}
