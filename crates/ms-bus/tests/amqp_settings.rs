//! Settings too long for the clock: a publish timeout or a reconnection delay of
//! `Duration::MAX` ("keep trying", "wait as long as you like") is added to the clock and
//! doubled; neither may panic.
#![cfg(feature = "amqp")]

use std::time::Duration;

use futures_util::StreamExt as _;
use ms_bus::amqp::AmqpBus;
use ms_bus::{Envelope, EventPublisher, Subscriber, Subscription};

#[tokio::test]
async fn a_publish_timeout_of_duration_max_connects_and_publishes() {
    let Some(amqp) = ms_testkit::amqp().await else {
        return;
    };
    let bus = AmqpBus::builder(amqp.url())
        .publish_timeout(Duration::MAX)
        .connect()
        .await
        .unwrap();
    // Unique names: without the management API the test shares the default virtual host.
    let topic = format!("{}.settings", amqp.prefix());
    let subscription = Subscription::events(&topic, "checker").unwrap();
    let mut deliveries = bus.subscribe(&subscription).await.unwrap();
    let event = Envelope::builder("billing.settings.checked", "/billing")
        .build()
        .unwrap();
    bus.publish(&topic, &event).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(30), deliveries.next())
        .await
        .expect("delivered in time")
        .expect("stream open")
        .unwrap();
    assert_eq!(delivery.message().unwrap().id(), event.id());
    delivery.acker().ack().await.unwrap();
    bus.close().await;
}

#[tokio::test]
async fn a_reconnect_delay_of_duration_max_gives_up_at_the_publish_timeout() {
    // Nothing listens on port 1: every connection attempt is refused at once.
    let connecting = AmqpBus::builder("amqp://guest:guest@127.0.0.1:1/%2f")
        .publish_timeout(Duration::from_secs(1))
        .reconnect_delay(Duration::MAX, Duration::MAX)
        .connect();
    let outcome = tokio::time::timeout(Duration::from_secs(30), connecting)
        .await
        .expect("gave up instead of waiting for the delay");
    assert!(outcome.is_err());
}
