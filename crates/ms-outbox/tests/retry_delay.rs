//! A retry delay from configuration too long for the database's clock: PostgreSQL cannot add
//! more than about 290,000 years to `now()`, and a relay configured to wait "forever" after a
//! failure must still record the failure (and the rest of its batch).
#![cfg(feature = "postgres")]

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use ms_bus::memory::MemoryBus;
use ms_bus::{BusError, CommandSender, Envelope, EventPublisher, Subscriber, Subscription};
use ms_outbox::{Outbox, OutboxMessage, Relay};
use sqlx::Postgres;

/// The memory bus, except that it refuses every event for [`REFUSED`].
#[derive(Clone)]
struct Refusing(MemoryBus);

const REFUSED: &str = "test.refused";

impl EventPublisher for Refusing {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        event: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        if topic == REFUSED {
            Box::pin(async { Err(BusError::broker("refused")) })
        } else {
            self.0.publish(topic, event)
        }
    }
}

impl CommandSender for Refusing {
    fn send<'a>(
        &'a self,
        destination: &'a str,
        command: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        self.0.send(destination, command)
    }
}

fn event(topic: &str, key: &str) -> OutboxMessage {
    let envelope = Envelope::builder("test.happened", "/test")
        .subject(key)
        .build()
        .expect("valid envelope");
    OutboxMessage::event(topic, envelope)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_delay_of_duration_max_still_records_the_failure_and_its_batch() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let outbox = Outbox::<Postgres>::builder(ms_outbox::TableName::new("forever_outbox").unwrap())
        .shards(1)
        .build();
    outbox.migrate(&pool).await.unwrap();
    let bus = MemoryBus::new();
    let mut deliveries = bus
        .subscribe(&Subscription::events("test.events", "checker").unwrap())
        .await
        .unwrap();

    // Both rows in one batch: one published, one failed, finished in one transaction.
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue_all(
            &mut *tx,
            vec![event("test.events", "fine"), event(REFUSED, "refused")],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let relay = Relay::builder(&outbox, &pool, Refusing(bus.clone()))
        .retry_delay(Duration::MAX, Duration::MAX)
        .build()
        .spawn();

    let delivery = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
        .await
        .expect("published in time")
        .expect("stream open")
        .unwrap();
    assert_eq!(delivery.message().unwrap().subject(), Some("fine"));
    delivery.acker().ack().await.unwrap();
    // Had the failure not been recorded, its batch would roll back and be published again.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), deliveries.next())
            .await
            .is_err(),
        "published once"
    );
    relay.shutdown().await.unwrap();
    let backlog = outbox.backlog(&pool).await.unwrap();
    assert_eq!(backlog.pending, 1, "the refused row waits for its retry");
    let (attempts, waits_about_a_century): (i32, bool) = sqlx::query_as(
        "SELECT attempts, available_at > now() + interval '99 years' FROM forever_outbox",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(attempts, 1);
    assert!(waits_about_a_century);
}
