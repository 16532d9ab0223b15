//! Reconnection against a private RabbitMQ node that the test kills and restarts while
//! messages are being published and consumed: nothing confirmed is lost, nothing unconfirmed
//! is dropped silently (it is republished, or the publish returns an error).
#![cfg(feature = "amqp")]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ms_bus::amqp::AmqpBus;
use ms_bus::consumer::{Consumer, Message};
use ms_bus::{BusError, Envelope, EventPublisher, Subscriber as _, Subscription};

/// A hang guard only: the waits end as soon as their condition holds.
const PATIENCE: Duration = Duration::from_secs(120);

fn event(n: usize) -> Envelope {
    Envelope::builder("invoicing.invoice.created", "/invoicing")
        .subject(format!("inv-{n}"))
        .build()
        .unwrap()
}

/// A private broker on which `subscription`'s queue exists and has survived a clean restart.
///
/// RabbitMQ 3.10 may lose a durable queue declared just before a SIGKILL (see
/// `RabbitMqServer::kill`), with the confirmed messages in it; what this test is about is the
/// adapter losing nothing, so the queue is made to outlive one clean restart first.
async fn broker_with_durable_topology(subscription: &Subscription) -> ms_testkit::RabbitMqServer {
    let mut server = ms_testkit::RabbitMqServer::start().await.unwrap();
    let bus = AmqpBus::connect(&server.url()).await.unwrap();
    drop(bus.subscribe(subscription).await.unwrap());
    bus.close().await;
    server.stop().await.unwrap();
    server.restart().await.unwrap();
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_crash_mid_publish_loses_nothing_and_an_outage_past_the_timeout_is_an_error() {
    // Only where RabbitMQ is expected at all: the shared broker's presence says so.
    let Some(_shared) = ms_testkit::amqp().await else {
        return;
    };
    let subscription = Subscription::events("invoicing.invoice", "ledger").unwrap();
    let mut server = broker_with_durable_topology(&subscription).await;
    let url = server.url();

    let publisher = AmqpBus::builder(&url)
        .publish_timeout(PATIENCE)
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let consumer_bus = AmqpBus::builder(&url)
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let consumer = Consumer::new(subscription)
        .serve(&consumer_bus, {
            let seen = seen.clone();
            tower::service_fn(move |m: Message| {
                seen.lock().unwrap().insert(m.id().to_owned());
                async { Ok::<_, std::convert::Infallible>(()) }
            })
        })
        .await
        .unwrap();

    let events: Vec<Envelope> = (0..3000).map(event).collect();
    let (batches_done_tx, mut batches_done) = tokio::sync::mpsc::unbounded_channel();
    let publishing = tokio::spawn({
        let events = events.clone();
        async move {
            for batch in events.chunks(100) {
                // Every batch must come back confirmed, through the crash: the adapter
                // republishes what the broken connection had not confirmed.
                publisher.publish_batch("invoicing.invoice", batch).await?;
                let _ = batches_done_tx.send(());
            }
            Ok::<_, BusError>(publisher)
        }
    });

    // Crash the broker once a few batches are through, while the rest are being published.
    for _ in 0..5 {
        tokio::time::timeout(PATIENCE, batches_done.recv())
            .await
            .unwrap();
    }
    server.kill().await.unwrap();
    server
        .restart()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail()));

    let publisher = tokio::time::timeout(PATIENCE, publishing)
        .await
        .expect("publishing finished")
        .unwrap()
        .unwrap_or_else(|e| panic!("a batch was not confirmed through the crash: {e}"));
    let expected: BTreeSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
    tokio::time::timeout(
        PATIENCE,
        consumer.shutdown_when(|| seen.lock().unwrap().is_superset(&expected)),
    )
    .await
    .unwrap_or_else(|_| {
        let missing = expected.difference(&seen.lock().unwrap()).count();
        panic!("{missing} confirmed events never arrived")
    })
    .unwrap();
    assert!(publisher.is_connected().await);

    // An outage longer than the publish timeout: the publish fails, it does not vanish.
    let impatient = AmqpBus::builder(&url)
        .publish_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    server.stop().await.unwrap();
    let result = impatient.publish("invoicing.invoice", &event(0)).await;
    assert!(
        matches!(
            result,
            Err(BusError::Connection(_) | BusError::NotConfirmed(_))
        ),
        "{result:?}"
    );
    assert!(!impatient.is_connected().await);
    #[cfg(feature = "health")]
    {
        use ms_health::{Check as _, Status};
        let check = impatient.check();
        assert_eq!(check.check().await.status(), Status::Fail, "broker down");
        server.restart().await.unwrap();
        assert_eq!(
            check.check().await.status(),
            Status::Pass,
            "the check reconnects"
        );
        assert!(impatient.is_connected().await);
    }
}
