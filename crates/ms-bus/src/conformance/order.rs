//! Cases of order: per partition key, per subject, and through retries in the key's lane.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Fixture;
use super::support::{Seen, lock, serve, shutdown, sub_events, wait_until};
use crate::consumer::{Consumer, Message, Outcome, RetryPolicy};
use crate::{BoxError, Envelope, EventPublisher};

/// One consumer handling 8 messages at once still sees each partition key's events in
/// publish order (handlers of different keys overlap, with uneven durations).
pub async fn per_partition_key_order<F: Fixture>(fixture: &F) {
    if !fixture.capabilities().ordered_per_key {
        eprintln!("SKIPPED per_partition_key_order: the broker does not promise order");
        return;
    }
    let (publisher, bus) = (fixture.connect().await, fixture.connect().await);
    let topic = fixture.name("ordered");
    let seen = Seen::default();
    let handle = Consumer::new(sub_events(&topic, "g"))
        .concurrency(8)
        .serve(&bus, {
            let seen = seen.clone();
            tower::service_fn(move |m: Message| {
                let seen = seen.clone();
                async move {
                    // Uneven handler times: without the lanes, later messages would overtake.
                    let pause = m.id().bytes().last().map_or(0, |b| u64::from(b % 3));
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    seen.push(m.id(), m.attempt(), 0);
                    Ok::<_, Infallible>(())
                }
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut events = Vec::new();
    for n in 0..300 {
        let key = format!("key{}", n % 3);
        let e = Envelope::builder("conformance.thing.happened", "/conformance")
            .partition_key(key.clone())
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        sent.entry(key).or_default().push(e.id().to_owned());
        events.push(e);
    }
    publisher
        .publish_batch(&topic, &events)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until("300 events", || seen.len() >= 300).await;
    shutdown(handle).await;
    let key_of: BTreeMap<&str, &str> = events
        .iter()
        .map(|e| (e.id(), e.partition_key().unwrap_or_default()))
        .collect();
    let mut received: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, _, _) in seen.all() {
        received
            .entry(key_of[id.as_str()].to_owned())
            .or_default()
            .push(id);
    }
    assert_eq!(received, sent);
}

/// Events that carry a subject but no `partitionkey` (as most do) are kept in order per subject
/// by a consumer handling 8 at once, although the handler is slow on each subject's first
/// event: one ordering rule, [`Envelope::ordering_key`].
pub async fn subject_only_events_keep_their_order<F: Fixture>(fixture: &F) {
    if !fixture.capabilities().ordered_per_key {
        eprintln!(
            "SKIPPED subject_only_events_keep_their_order: the broker does not promise order"
        );
        return;
    }
    let (publisher, bus) = (fixture.connect().await, fixture.connect().await);
    let topic = fixture.name("subjects");
    let handled = Arc::new(Mutex::new(Vec::<(String, usize)>::new()));
    let handle = Consumer::new(sub_events(&topic, "g"))
        .concurrency(8)
        .serve(&bus, {
            let handled = handled.clone();
            tower::service_fn(move |m: Message| {
                let handled = handled.clone();
                async move {
                    let n: usize = m.json_data::<serde_json::Value>()?["n"]
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or("no n")?;
                    if n < 4 {
                        // Each subject's first event is slow: without a lane per subject, the
                        // next ones would overtake it.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    let subject = m.subject().unwrap_or_default().to_owned();
                    lock(&handled).push((subject, n));
                    Ok::<_, BoxError>(())
                }
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Four subjects, five events each, interleaved: event n is about subject n % 4.
    let events: Vec<Envelope> = (0..20)
        .map(|n| {
            Envelope::builder("conformance.thing.happened", "/conformance")
                .subject(format!("thing-{}", n % 4))
                .json_data(&serde_json::json!({ "n": n }))
                .and_then(crate::EnvelopeBuilder::build)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    publisher
        .publish_batch(&topic, &events)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until("20 events", || lock(&handled).len() >= 20).await;
    shutdown(handle).await;
    let handled = lock(&handled).clone();
    for subject in 0..4 {
        let order: Vec<usize> = handled
            .iter()
            .filter(|(s, _)| *s == format!("thing-{subject}"))
            .map(|(_, n)| *n)
            .collect();
        let sent: Vec<usize> = (0..20).filter(|n| n % 4 == subject).collect();
        assert_eq!(order, sent, "subject thing-{subject}: {handled:?}");
    }
}

/// A message whose handler fails is retried in its key's lane: the later messages of its key
/// wait until it succeeds, so every key's successful calls come in publish order, while the
/// other keys flow meanwhile.
pub async fn a_retry_keeps_the_later_messages_of_its_key_behind_it<F: Fixture>(fixture: &F) {
    if !fixture.capabilities().ordered_per_key {
        eprintln!(
            "SKIPPED a_retry_keeps_the_later_messages_of_its_key_behind_it: the broker does not promise order"
        );
        return;
    }
    let (publisher, bus) = (fixture.connect().await, fixture.connect().await);
    let topic = fixture.name("retryorder");
    let seen = Seen::default();
    let retry = RetryPolicy::default()
        .initial_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(100));
    let events: Vec<Envelope> = (0..60)
        .map(|n| {
            Envelope::builder("conformance.thing.happened", "/conformance")
                .partition_key(format!("key{}", n % 3))
                .json_data(&serde_json::json!({ "n": n }))
                .and_then(crate::EnvelopeBuilder::build)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    // Every seventh event fails its first two deliveries.
    let failing: BTreeSet<String> = events
        .iter()
        .step_by(7)
        .map(|e| e.id().to_owned())
        .collect();
    let calls = events.len() + 2 * failing.len();
    let handle = serve(
        &bus,
        Consumer::new(sub_events(&topic, "g"))
            .concurrency(8)
            .retry(retry),
        &seen,
        0,
        move |m: &Message| {
            if failing.contains(m.id()) && m.attempt() <= 2 {
                Err("not yet".into())
            } else {
                Ok(Outcome::Ack)
            }
        },
    )
    .await;
    publisher
        .publish_batch(&topic, &events)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until("every call, retries included", || seen.len() >= calls).await;
    shutdown(handle).await;
    let all = seen.all();
    let attempts = |id: &str| all.iter().filter(|(i, _, _)| i == id).count();
    assert_eq!(attempts(events[7].id()), 3, "{all:?}");
    assert_eq!(attempts(events[8].id()), 1, "{all:?}");
    // The last call of each event is its successful one: per key, those are in publish order.
    let mut last_call: BTreeMap<&str, usize> = BTreeMap::new();
    for (position, (id, _, _)) in all.iter().enumerate() {
        last_call.insert(id, position);
    }
    for key in 0..3 {
        let of_key: Vec<usize> = events
            .iter()
            .skip(key)
            .step_by(3)
            .map(|e| last_call[e.id()])
            .collect();
        assert!(of_key.is_sorted(), "key{key} out of order: {all:?}");
    }
}
