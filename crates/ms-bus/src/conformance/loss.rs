//! Cases of loss: ten thousand messages, a graceful shutdown, a broker restart.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use super::support::{Seen, ack, event, serve, shutdown, sub_events, wait_until};
use super::{Fixture, RestartableFixture, WAIT_LIMIT};
use crate::consumer::{Consumer, Message};
use crate::{Envelope, EventPublisher};

/// 10,000 events published in batches all arrive.
pub async fn ten_thousand_messages_none_lost<F: Fixture>(fixture: &F) {
    let (publisher, bus) = (fixture.connect().await, fixture.connect().await);
    let topic = fixture.name("many");
    let seen = Seen::default();
    let handle = serve(&bus, Consumer::new(sub_events(&topic, "g")), &seen, 0, ack).await;
    let events: Vec<Envelope> = (0..10_000).map(event).collect();
    for chunk in events.chunks(500) {
        publisher
            .publish_batch(&topic, chunk)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    wait_until("10,000 events", || seen.len() >= 10_000).await;
    shutdown(handle).await;
    assert_eq!(seen.ids().len(), 10_000);
}

/// Shutting a consumer down mid-stream finishes what it holds; a new consumer of the group
/// gets the rest: every event is handled.
pub async fn graceful_shutdown_loses_nothing<F: Fixture>(fixture: &F) {
    let (publisher, bus) = (fixture.connect().await, fixture.connect().await);
    let topic = fixture.name("shutdown");
    let subscription = sub_events(&topic, "g").ack_wait(fixture.capabilities().ack_wait);
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Seen::default();
    let handle = Consumer::new(subscription.clone())
        .concurrency(8)
        .serve(&bus, {
            let (seen, started) = (seen.clone(), started.clone());
            tower::service_fn(move |m: Message| {
                let (seen, started) = (seen.clone(), started.clone());
                async move {
                    started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    seen.push(m.id(), m.attempt(), 0);
                    Ok::<_, Infallible>(())
                }
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let events: Vec<Envelope> = (0..400).map(event).collect();
    publisher
        .publish_batch(&topic, &events)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until("some events to be handled", || seen.len() >= 50).await;
    shutdown(handle).await;
    assert_eq!(
        started.load(std::sync::atomic::Ordering::SeqCst),
        seen.len(),
        "shutdown returned with handlers still running"
    );
    let second = fixture.connect().await;
    let handle = serve(&second, Consumer::new(subscription), &seen, 1, ack).await;
    let expected: BTreeSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
    wait_until("every event", || seen.ids() == expected).await;
    shutdown(handle).await;
}

/// Events confirmed before the broker was killed are delivered after it restarts, and
/// publishing resumes once it is back.
pub async fn broker_restart_loses_nothing_confirmed<F: RestartableFixture>(fixture: &mut F) {
    let publisher = fixture.connect().await;
    let bus = fixture.connect().await;
    let topic = fixture.name("restart");
    let seen = Seen::default();
    let subscription = sub_events(&topic, "g").ack_wait(fixture.capabilities().ack_wait);
    let handle = serve(&bus, Consumer::new(subscription), &seen, 0, ack).await;
    let before: Vec<Envelope> = (0..200).map(event).collect();
    publisher
        .publish_batch(&topic, &before)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    fixture.restart_broker().await;
    let after: Vec<Envelope> = (200..400).map(event).collect();
    for e in &after {
        // The client reconnects in the background; an unconfirmed publish is retried.
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        while let Err(error) = publisher.publish(&topic, e).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publishing after the restart: {error}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let expected: BTreeSet<String> = before
        .iter()
        .chain(&after)
        .map(|e| e.id().to_owned())
        .collect();
    wait_until("every confirmed event after the restart", || {
        seen.ids() == expected
    })
    .await;
    shutdown(handle).await;
}
