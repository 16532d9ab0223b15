//! Memory-adapter behaviour beyond the conformance suite: fault injection, propagation
//! through a handler, and the consumer runtime's ack model details.
#![cfg(feature = "memory")]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ms_bus::consumer::{Consumer, ConsumerHandle, Message, Outcome, Reject, RetryPolicy};
use ms_bus::memory::{Faults, MemoryBus};
use ms_bus::{Envelope, EventPublisher, Subscription, dead_letter};
use ms_tracing::CorrelationId;

type Log = Arc<Mutex<Vec<(String, u32)>>>;

async fn record(bus: &MemoryBus, subscription: Subscription, log: &Log) -> ConsumerHandle {
    let log = log.clone();
    Consumer::new(subscription)
        .concurrency(1)
        .serve(
            bus,
            tower::service_fn(move |m: Message| {
                log.lock().unwrap().push((m.id().to_owned(), m.attempt()));
                async { Ok::<_, Infallible>(()) }
            }),
        )
        .await
        .unwrap()
}

fn events(n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|_| {
            Envelope::builder("test.thing.happened", "/test")
                .build()
                .unwrap()
        })
        .collect()
}

async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..20_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("condition not reached");
}

fn counts(log: &Log) -> BTreeMap<String, usize> {
    log.lock()
        .unwrap()
        .iter()
        .fold(BTreeMap::new(), |mut m, (id, _)| {
            *m.entry(id.clone()).or_default() += 1;
            m
        })
}

#[tokio::test]
async fn duplicate_fault_delivers_twice() {
    let bus = MemoryBus::builder()
        .faults(Faults::seeded(1).duplicate(1.0))
        .build();
    let log = Log::default();
    let h = record(&bus, Subscription::events("t", "g").unwrap(), &log).await;
    let sent = events(10);
    bus.publish_batch("t", &sent).await.unwrap();
    until(|| log.lock().unwrap().len() == 20).await;
    h.shutdown().await.unwrap();
    assert!(counts(&log).values().all(|&n| n == 2));
}

#[tokio::test]
async fn lost_acks_redeliver_and_nothing_is_lost_under_reorder_and_delay() {
    let faults = Faults::seeded(42)
        .drop_before_ack(0.3)
        .reorder(0.5)
        .delay(0.3, Duration::from_millis(5));
    let bus = MemoryBus::builder().faults(faults).build();
    let log = Log::default();
    let h = record(&bus, Subscription::events("t", "g").unwrap(), &log).await;
    let sent = events(200);
    bus.publish_batch("t", &sent).await.unwrap();
    until(|| counts(&log).len() == 200).await;
    h.shutdown().await.unwrap();
    let log = log.lock().unwrap();
    assert!(
        log.iter().any(|(_, attempt)| *attempt > 1),
        "no ack was lost"
    );
    let order: Vec<&str> = log
        .iter()
        .filter(|(_, a)| *a == 1)
        .map(|(id, _)| id.as_str())
        .collect();
    let published: Vec<&str> = sent.iter().map(Envelope::id).collect();
    assert_ne!(order, published, "nothing was reordered");
}

#[tokio::test]
async fn handlers_publish_with_the_incoming_correlation_id() {
    let bus = MemoryBus::new();
    let correlation = CorrelationId::generate();
    let log = Log::default();
    let out = record(&bus, Subscription::events("replies", "g").unwrap(), &log).await;
    let replies: Arc<Mutex<Vec<Option<CorrelationId>>>> = Arc::default();
    let relay = Consumer::new(Subscription::events("requests", "g").unwrap())
        .serve(&bus, {
            let bus = bus.clone();
            tower::service_fn(move |_m: Message| {
                let bus = bus.clone();
                async move {
                    let reply = Envelope::builder("test.reply.sent", "/test")
                        .build()
                        .unwrap();
                    bus.publish("replies", &reply).await?;
                    Ok::<_, ms_bus::BusError>(())
                }
            })
        })
        .await
        .unwrap();
    let reader = Consumer::new(Subscription::events("replies", "reader").unwrap())
        .serve(&bus, {
            let replies = replies.clone();
            tower::service_fn(move |m: Message| {
                replies.lock().unwrap().push(m.correlation_id());
                async { Ok::<_, Infallible>(()) }
            })
        })
        .await
        .unwrap();
    let request = Envelope::builder("test.request.made", "/test")
        .correlation_id(&correlation)
        .build()
        .unwrap();
    bus.publish("requests", &request).await.unwrap();
    until(|| replies.lock().unwrap().len() == 1).await;
    for h in [out, relay, reader] {
        h.shutdown().await.unwrap();
    }
    assert_eq!(replies.lock().unwrap()[0].as_ref(), Some(&correlation));
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_handlers_call_is_retried_and_the_consumer_keeps_running() {
    let bus = MemoryBus::new();
    let handled: Log = Arc::default();
    let sent = events(2);
    let first = sent[0].id().to_owned();
    let h = Consumer::new(Subscription::events("t", "g").unwrap())
        .concurrency(1)
        .retry(RetryPolicy::default().max_deliveries(3))
        .serve(&bus, {
            let handled = handled.clone();
            let first = first.clone();
            tower::service_fn(move |m: Message| {
                // This runs in `call` itself, before any future exists.
                assert!(
                    !(m.id() == first && m.attempt() == 1),
                    "handler bug in call"
                );
                handled
                    .lock()
                    .unwrap()
                    .push((m.id().to_owned(), m.attempt()));
                async { Ok::<_, Infallible>(()) }
            })
        })
        .await
        .unwrap();
    bus.publish_batch("t", &sent).await.unwrap();
    until(|| handled.lock().unwrap().len() == 2).await;
    h.shutdown().await.unwrap();
    let handled = handled.lock().unwrap().clone();
    assert!(handled.contains(&(first, 2)), "{handled:?}");
    assert!(
        handled.contains(&(sent[1].id().to_owned(), 1)),
        "{handled:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn rejects_dead_letter_at_once_and_panics_are_retried() {
    let bus = MemoryBus::new();
    let attempts: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let sent = events(2);
    let (reject_id, panic_id) = (sent[0].id().to_owned(), sent[1].id().to_owned());
    let subscription = Subscription::events("t", "g").unwrap();
    let dead = subscription.dead_letter_destination().to_owned();
    let h = Consumer::new(subscription)
        .retry(RetryPolicy::default().max_deliveries(2))
        .serve(&bus, {
            let attempts = attempts.clone();
            let reject_id = reject_id.clone();
            tower::service_fn(move |m: Message| {
                attempts
                    .lock()
                    .unwrap()
                    .push((m.id().to_owned(), m.attempt()));
                let reject = m.id() == reject_id;
                async move {
                    if reject {
                        return Err::<Outcome, _>(Reject::new("negative total"));
                    }
                    panic!("handler bug");
                }
            })
        })
        .await
        .unwrap();
    bus.publish_batch("t", &sent).await.unwrap();
    // Time is paused: retries after the (jittered, about 1 s) delay happen as soon as the
    // runtime is idle.
    until(|| bus.pending_commands(&dead) == 2).await;
    h.shutdown().await.unwrap();
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(
        attempts.iter().filter(|(id, _)| *id == reject_id).count(),
        1
    );
    assert_eq!(attempts.iter().filter(|(id, _)| *id == panic_id).count(), 2);

    let reasons: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = Consumer::new(Subscription::commands(&dead).unwrap())
        .serve(&bus, {
            let reasons = reasons.clone();
            tower::service_fn(move |m: Message| {
                reasons.lock().unwrap().push(
                    m.info()
                        .header(dead_letter::REASON_HEADER)
                        .unwrap()
                        .to_owned(),
                );
                async { Ok::<_, Infallible>(()) }
            })
        })
        .await
        .unwrap();
    until(|| reasons.lock().unwrap().len() == 2).await;
    reader.shutdown().await.unwrap();
    let mut reasons = reasons.lock().unwrap().clone();
    reasons.sort();
    assert_eq!(
        reasons,
        ["handler panicked: handler bug", "rejected: negative total"]
    );
}

/// tower layers apply to handlers: a timeout turns a stuck handler into a retried error, and
/// a concurrency limit's readiness is respected (the runtime keeps driving in-flight handlers
/// while it waits for the limit, so it does not deadlock).
#[tokio::test(start_paused = true)]
async fn tower_timeout_and_concurrency_limit_apply_to_handlers() {
    use tower::ServiceBuilder;

    let bus = MemoryBus::new();
    let subscription = Subscription::events("t", "g").unwrap();
    let dead = subscription.dead_letter_destination().to_owned();
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let completed: Log = Log::default();
    let handler = ServiceBuilder::new()
        .concurrency_limit(2)
        .timeout(Duration::from_secs(5))
        .service_fn({
            let (running, peak, completed) = (running.clone(), peak.clone(), completed.clone());
            move |m: Message| {
                let (running, peak, completed) = (running.clone(), peak.clone(), completed.clone());
                async move {
                    let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    let stuck = m.subject() == Some("stuck");
                    tokio::time::sleep(if stuck {
                        Duration::from_secs(60)
                    } else {
                        Duration::from_millis(10)
                    })
                    .await;
                    running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    completed
                        .lock()
                        .unwrap()
                        .push((m.id().to_owned(), m.attempt()));
                    Ok::<_, Infallible>(())
                }
            }
        });
    let consumer = Consumer::new(subscription)
        .concurrency(16)
        .retry(RetryPolicy::default().max_deliveries(2))
        .serve(&bus, handler)
        .await
        .unwrap();
    let mut sent = events(10);
    sent.push(
        Envelope::builder("test.thing.happened", "/test")
            .subject("stuck")
            .build()
            .unwrap(),
    );
    bus.publish_batch("t", &sent).await.unwrap();
    until(|| bus.pending_commands(&dead) == 1 && completed.lock().unwrap().len() == 10).await;
    consumer.shutdown().await.unwrap();
    assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
}
