//! The consumer runtime times each message's processing and the publishers count what they
//! send, through ms-tracing's metric names (feature `metrics`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use ms_bus::consumer::{Consumer, Message, Outcome};
use ms_bus::memory::MemoryBus;
use ms_bus::{Envelope, EventPublisher, Subscription};
use ms_tracing::metrics::{MESSAGING_CLIENT_SENT_MESSAGES, MESSAGING_PROCESS_DURATION};

#[tokio::test]
async fn processing_is_timed_by_outcome_and_publishing_is_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The runtime is single-threaded: the consumer's task records into this recorder too.
    let _local = metrics::set_default_local_recorder(&recorder);
    let bus = MemoryBus::new();
    let seen = Arc::new(AtomicUsize::new(0));
    let handler = tower::service_fn({
        let seen = seen.clone();
        move |message: Message| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(if message.ty() == "billing.bad" {
                    Outcome::DeadLetter("unreadable".to_owned())
                } else {
                    Outcome::Ack
                })
            }
        }
    });
    let consumer = Consumer::new(Subscription::events("billing.invoice", "reports").unwrap())
        .serve(&bus, handler)
        .await
        .unwrap();
    for ty in ["billing.good", "billing.bad", "billing.good"] {
        let event = Envelope::builder(ty, "/billing").build().unwrap();
        bus.publish("billing.invoice", &event).await.unwrap();
    }
    consumer
        .shutdown_when(|| seen.load(Ordering::SeqCst) == 3)
        .await
        .unwrap();

    let mut process = Vec::new();
    let mut sent = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<(String, String)> = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        let label = |name: &str| {
            labels
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(label("messaging.system").as_deref(), Some("memory"));
        assert_eq!(
            label("messaging.destination.name").as_deref(),
            Some("billing.invoice")
        );
        match (key.key().name(), value) {
            (MESSAGING_PROCESS_DURATION, DebugValue::Histogram(samples)) => {
                process.push((label("error.type"), samples.len()));
            }
            (MESSAGING_CLIENT_SENT_MESSAGES, DebugValue::Counter(n)) => {
                sent.push((label("error.type"), n));
            }
            other => panic!("unexpected metric {other:?}"),
        }
    }
    process.sort();
    assert_eq!(process, [(None, 2), (Some("dead_letter".to_owned()), 1)]);
    assert_eq!(sent, [(None, 3)]);
}
