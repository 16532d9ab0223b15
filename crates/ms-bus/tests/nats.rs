//! NATS-specific behaviour beyond the conformance suite: broker-side dedup by source and id,
//! structured-mode publishing, events from a foreign producer in structured mode, and the
//! hand-over of prefetched messages on shutdown.
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

/// JetStream drops a republished envelope (same source, same id), and keeps another
/// producer's event that happens to use the same id: CloudEvents identifies an event by
/// source and id together. Both single publishes and batches.
#[tokio::test]
async fn an_event_is_deduplicated_by_its_source_and_id_not_its_id_alone() {
    let Some(test) = ms_testkit::nats().await else {
        return;
    };
    let bus = bus(&test, Mode::Binary).await;
    let (handle, seen) = collect(&bus, "dedup").await;
    let from = |source: &str| {
        Envelope::builder("test.thing.happened", source)
            .id("order-42") // a business-derived id, as forwarders and producers choose them
            .build()
            .unwrap()
    };
    let (a, b) = (from("/producer-a"), from("/producer-b"));
    let long = Envelope::builder("test.thing.happened", "/producer-a")
        .id("x".repeat(300)) // past MAX_DEDUP_KEY_LEN: deduplicated by digest
        .build()
        .unwrap();
    let marker = Envelope::builder("test.marker.sent", "/test")
        .build()
        .unwrap();
    bus.publish("dedup", &a).await.unwrap();
    bus.publish("dedup", &b).await.unwrap();
    bus.publish("dedup", &a).await.unwrap(); // a retry after a lost ack, say
    bus.publish_batch("dedup", &[b.clone(), long.clone(), long.clone()])
        .await
        .unwrap();
    bus.publish("dedup", &marker).await.unwrap();
    until(|| seen.lock().unwrap().iter().any(|e| e.id() == marker.id())).await;
    handle.shutdown().await.unwrap();
    let mut got: Vec<(String, String)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.source().to_owned(), e.id().to_owned()))
        .collect();
    got.sort();
    let mut expected: Vec<(String, String)> = [&a, &b, &long, &marker]
        .iter()
        .map(|e| (e.source().to_owned(), e.id().to_owned()))
        .collect();
    expected.sort();
    assert_eq!(got, expected);
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
        // Numbers past u64 and f64: structured mode carries the JSON text, every digit.
        .data(
            "application/json",
            &br#"{"a":[1,2,3],"big":12345678901234567890123,"long":1234567890.123456789}"#[..],
        )
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

/// A consumer that shuts down hands its prefetched messages back at once: with an ack wait
/// of ten minutes, the group's other instance can only receive them within this test's
/// timeout if they were nak'ed, not left to expire.
#[tokio::test]
async fn shutdown_hands_prefetched_messages_to_the_group_at_once() {
    const COUNT: usize = 20;
    let Some(test) = ms_testkit::nats().await else {
        return;
    };
    let client = test.client().await;
    let bus = NatsBus::builder(client.clone())
        .prefix(test.prefix())
        .unwrap()
        .build();
    let subscription = || {
        Subscription::events("handover", "g")
            .unwrap()
            .prefetch(64)
            .ack_wait(Duration::from_secs(600))
    };
    let mut ids = Vec::new();
    // The group's consumer exists before the events, so that it gets them all.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let handle_a = Consumer::new(subscription())
        .concurrency(1)
        .serve(&bus, {
            let (gate, first) = (gate.clone(), first.clone());
            tower::service_fn(move |m: Message| {
                first
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| m.id().to_owned());
                let gate = gate.clone();
                // Holds the one message it took until the test lets it go.
                async move {
                    let _permit = gate.acquire().await;
                    Ok::<_, Infallible>(())
                }
            })
        })
        .await
        .unwrap();
    for _ in 0..COUNT {
        let event = Envelope::builder("test.thing.happened", "/test")
            .build()
            .unwrap();
        bus.publish("handover", &event).await.unwrap();
        ids.push(event.id().to_owned());
    }
    // The server has handed every message to instance A (one in its handler, the rest in its
    // pull stream's buffer) ...
    let jetstream = async_nats::jetstream::new(client.clone());
    let stream_name = format!("{}_EV_handover", test.prefix().replace('.', "_"));
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = jetstream
        .get_stream(&stream_name)
        .await
        .unwrap()
        .get_consumer("g")
        .await
        .unwrap();
    for _ in 0..6000 {
        if consumer.info().await.unwrap().num_ack_pending == COUNT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(consumer.info().await.unwrap().num_ack_pending, COUNT);
    // ... and the client has read them all: the server answers this PING after them.
    client.flush().await.unwrap();

    let shutdown_a = tokio::spawn(handle_a.shutdown());
    let seen_b: Arc<Mutex<Vec<String>>> = Arc::default();
    let handle_b = Consumer::new(subscription())
        .serve(&bus, {
            let seen_b = seen_b.clone();
            tower::service_fn(move |m: Message| {
                seen_b.lock().unwrap().push(m.id().to_owned());
                async { Ok::<_, Infallible>(()) }
            })
        })
        .await
        .unwrap();
    // A still holds its one message: B gets the other nineteen, long before the ack wait.
    until(|| seen_b.lock().unwrap().len() == COUNT - 1).await;
    gate.add_permits(1);
    shutdown_a.await.unwrap().unwrap();
    handle_b.shutdown().await.unwrap();

    let first = first
        .lock()
        .unwrap()
        .clone()
        .expect("A handled one message");
    let mut received = seen_b.lock().unwrap().clone();
    received.push(first);
    received.sort();
    ids.sort();
    assert_eq!(received, ids);
}

/// The streams' duplicate window is the bus's setting: within it a republished envelope is
/// dropped, after it stored again; a bus with another setting changes an existing stream's.
#[tokio::test]
async fn the_duplicate_window_is_a_setting_of_the_streams() {
    let Some(test) = ms_testkit::nats().await else {
        return;
    };
    // The client type is ms-bus's re-export: no separate async-nats version to match.
    let client: ms_bus::nats::async_nats::Client = test.client().await;
    let window = Duration::from_secs(1);
    let bus = NatsBus::builder(client.clone())
        .prefix(test.prefix())
        .unwrap()
        .duplicate_window(window)
        .build();
    bus.ensure_topic("window").await.unwrap();
    let js = ms_bus::nats::async_nats::jetstream::new(client.clone());
    let stream_name = bus.event_stream("window");
    assert_eq!(stream_name, test.stream("EV_window"));
    let info = || {
        let js = js.clone();
        let name = stream_name.clone();
        async move {
            js.get_stream(&name)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .clone()
        }
    };
    assert_eq!(info().await.config.duplicate_window, window);

    let event = Envelope::builder("test.thing.happened", "/test")
        .build()
        .unwrap();
    bus.publish("window", &event).await.unwrap();
    bus.publish("window", &event).await.unwrap();
    assert_eq!(info().await.state.messages, 1, "dropped within the window");
    tokio::time::sleep(window * 2).await;
    bus.publish("window", &event).await.unwrap();
    assert_eq!(
        info().await.state.messages,
        2,
        "stored again after the window"
    );

    let default = NatsBus::builder(client)
        .prefix(test.prefix())
        .unwrap()
        .build();
    default.ensure_topic("window").await.unwrap();
    assert_eq!(
        info().await.config.duplicate_window,
        ms_bus::nats::DEFAULT_DUPLICATE_WINDOW
    );
}
