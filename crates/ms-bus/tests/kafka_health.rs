//! The Kafka health check: it passes with each watched group's lag per partition (on the
//! shared broker), and fails once a private broker is killed.
#![cfg(all(feature = "health", feature = "kafka"))]

use std::time::Duration;

use ms_bus::kafka::KafkaBus;
use ms_bus::{Envelope, EventPublisher, Subscriber, Subscription};
use ms_health::{Check, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_lag_per_partition_and_fails_when_a_broker_is_killed() {
    // Only where Kafka is expected at all.
    let Some(shared) = ms_testkit::kafka().await else {
        return;
    };
    let bus = KafkaBus::builder(shared.bootstrap_servers())
        .prefix(shared.prefix())
        .unwrap()
        .consumer_set("session.timeout.ms", "6000")
        .build()
        .unwrap();
    // The group exists (at the end of the empty topic) once subscribed; then 10 records.
    let deliveries = bus
        .subscribe(&Subscription::events("health", "g").unwrap())
        .await
        .unwrap();
    drop(deliveries);
    let events: Vec<Envelope> = (0..10)
        .map(|n| {
            Envelope::builder("test.thing.happened", "/test")
                .partition_key(format!("k{n}"))
                .build()
                .unwrap()
        })
        .collect();
    // One record per request: tansu's high watermark counts batches (see `tests/kafka.rs`),
    // Apache Kafka's records; with one record per batch both agree.
    for event in &events {
        bus.publish("health", event).await.unwrap();
    }
    let check = bus
        .check()
        .group("health", "g")
        .deadline(Duration::from_secs(5));
    let result = check.check().await;
    assert_eq!(result.status(), Status::Pass, "{result:?}");
    let lags = result.observed_value().unwrap()[bus.event_group("health", "g")]
        .as_object()
        .unwrap()
        .clone();
    assert_eq!(lags.len(), 4, "{lags:?}");
    let total: i64 = lags.values().map(|v| v.as_i64().unwrap()).sum();
    assert_eq!(total, 10, "{lags:?}");

    let mut server = ms_testkit::KafkaServer::start().await.unwrap();
    let private = KafkaBus::builder(&server.bootstrap_servers())
        .build()
        .unwrap();
    let check = private.check().deadline(Duration::from_secs(5));
    let result = check.check().await;
    assert_eq!(result.status(), Status::Pass, "{result:?}");
    server.kill().await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), check.check())
        .await
        .expect("the check is bounded by its deadline");
    assert_eq!(result.status(), Status::Fail, "{result:?}");
}
