//! NATS-specific behaviour beyond the conformance suite: broker-side dedup by envelope id,
//! structured-mode publishing, and events from a foreign producer in structured mode.
#![cfg(feature = "nats")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ms_bus::codec::{self, Mode};
use ms_bus::consumer::{Consumer, ConsumerHandle, Message};
use ms_bus::nats::NatsBus;
use ms_bus::{Envelope, EventPublisher, Subscription};

async fn bus(test: &ms_testkit::TestNats, mode: Mode) -> NatsBus {
    NatsBus::builder(test.client().await)
        .prefix(test.prefix())
        .unwrap()
        .mode(mode)
        .build()
}

async fn collect(bus: &NatsBus, topic: &str) -> (ConsumerHandle, Arc<Mutex<Vec<Envelope>>>) {
    let seen: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    let handle = Consumer::new(Subscription::events(topic, "g").unwrap())
        .serve(bus, {
            let seen = seen.clone();
            tower::service_fn(move |m: Message| {
                seen.lock().unwrap().push(m.into_envelope());
                async { Ok::<_, Infallible>(()) }
            })
        })
        .await
        .unwrap();
    (handle, seen)
}

async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within a minute");
}

#[tokio::test]
async fn republishing_an_envelope_is_deduplicated_by_its_id() {
    let Some(test) = ms_testkit::nats().await else {
        return;
    };
    let bus = bus(&test, Mode::Binary).await;
    let (handle, seen) = collect(&bus, "dedup").await;
    let event = Envelope::builder("test.thing.happened", "/test")
        .build()
        .unwrap();
    let marker = Envelope::builder("test.marker.sent", "/test")
        .build()
        .unwrap();
    bus.publish("dedup", &event).await.unwrap();
    bus.publish("dedup", &event).await.unwrap(); // a retry after a lost ack, say
    bus.publish("dedup", &marker).await.unwrap();
    until(|| seen.lock().unwrap().iter().any(|e| e.id() == marker.id())).await;
    handle.shutdown().await.unwrap();
    let ids: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.id().to_owned())
        .collect();
    assert_eq!(ids, [event.id(), marker.id()]);
}

#[tokio::test]
async fn structured_mode_and_foreign_structured_events_round_trip() {
    let Some(test) = ms_testkit::nats().await else {
        return;
    };
    let structured = bus(&test, Mode::Structured).await;
    let (handle, seen) = collect(&structured, "structured").await;
    let ours = Envelope::builder("test.thing.happened", "/test")
        .subject("ünïcode subject")
        .json_data(&serde_json::json!({"a": [1, 2, 3]}))
        .unwrap()
        .build()
        .unwrap();
    structured.publish("structured", &ours).await.unwrap();

    // A foreign producer: the JSON event format as the only payload and no headers at all,
    // which is how the NATS binding's structured mode looks on the wire.
    let foreign = Envelope::builder("test.foreign.event", "/elsewhere")
        .data("text/plain", "hello")
        .build()
        .unwrap();
    let js = async_nats::jetstream::new(structured.client().clone());
    js.publish(
        structured.event_subject("structured"),
        codec::to_json(&foreign),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    until(|| seen.lock().unwrap().len() == 2).await;
    handle.shutdown().await.unwrap();
    assert_eq!(*seen.lock().unwrap(), [ours, foreign]);
}
