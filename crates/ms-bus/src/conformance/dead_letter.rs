//! Cases of dead letters: a poison message, an undecodable one, a foreign event with a line break.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::support::{Seen, ack, event, serve, shutdown, sub_commands, sub_events, wait_until};
use super::{Fixture, WAIT_LIMIT};
use crate::consumer::{Consumer, Message, Outcome, RetryPolicy};
use crate::{BoxError, Envelope, EventPublisher, Subscriber};

/// A message whose handler always fails is delivered `max_deliveries` times, then moved to the
/// dead letter with the error recorded; the other messages flow meanwhile.
pub async fn poison_goes_to_dead_letter_while_the_rest_flow<F: Fixture>(fixture: &F) {
    let (publisher, bus) = (fixture.connect().await, fixture.connect().await);
    let topic = fixture.name("poison");
    let subscription = sub_events(&topic, "g");
    let dead_letters = subscription.dead_letter_destination().to_owned();
    let events: Vec<Envelope> = (0..20).map(event).collect();
    let poison_id = events[3].id().to_owned();
    let seen = Seen::default();
    let retry = RetryPolicy::default()
        .max_deliveries(3)
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(50));
    let handle = serve(&bus, Consumer::new(subscription).retry(retry), &seen, 0, {
        let poison_id = poison_id.clone();
        move |m: &Message| {
            if m.id() == poison_id {
                Err("the poison pill".into())
            } else {
                Ok(Outcome::Ack)
            }
        }
    })
    .await;
    publisher
        .publish_batch(&topic, &events)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let dead = Arc::new(Mutex::new(Vec::new()));
    let dl_handle = Consumer::new(sub_commands(&dead_letters))
        .serve(&bus, {
            let dead = dead.clone();
            tower::service_fn(move |m: Message| {
                dead.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(m.clone());
                async { Ok::<_, Infallible>(()) }
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until("the dead letter", || {
        !dead
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    })
    .await;
    wait_until("the other 19 messages", || seen.ids().len() == 20).await;
    shutdown(handle).await;
    shutdown(dl_handle).await;

    let poison_attempts: Vec<u32> = seen
        .all()
        .iter()
        .filter(|(id, _, _)| *id == poison_id)
        .map(|(_, a, _)| *a)
        .collect();
    assert_eq!(poison_attempts, [1, 2, 3]);
    let dead = dead.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.id(), poison_id);
    assert_eq!(letter.envelope(), &events[3]);
    let reason = letter
        .info()
        .header(crate::dead_letter::REASON_HEADER)
        .unwrap_or_default();
    assert!(
        reason.contains("the poison pill"),
        "reason header: {reason:?}"
    );
    assert_eq!(
        letter.info().header(crate::dead_letter::DELIVERIES_HEADER),
        Some("3")
    );
    assert_eq!(
        letter.info().header(crate::dead_letter::ORIGIN_HEADER),
        Some(topic.as_str())
    );
    assert_eq!(
        letter.info().header(crate::dead_letter::GROUP_HEADER),
        Some("g")
    );
}

/// Bytes that are no CloudEvents event go to the dead letter with the decoding error, without
/// reaching the handler, and the next message flows.
pub async fn undecodable_goes_to_dead_letter<F: Fixture>(fixture: &F) {
    let (publisher, bus) = (fixture.connect().await, fixture.connect().await);
    let topic = fixture.name("garbage");
    let subscription = sub_events(&topic, "g");
    let dead_letters = subscription.dead_letter_destination().to_owned();
    let seen = Seen::default();
    let handle = serve(&bus, Consumer::new(subscription), &seen, 0, ack).await;
    let Some(garbage) = fixture.publish_garbage(&topic) else {
        eprintln!("SKIPPED undecodable_goes_to_dead_letter: the fixture cannot publish raw bytes");
        shutdown(handle).await;
        return;
    };
    garbage.await;
    let good = event(1);
    publisher
        .publish(&topic, &good)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until("the good message", || seen.len() == 1).await;
    shutdown(handle).await;
    assert_eq!(seen.ids(), BTreeSet::from([good.id().to_owned()]));

    // The dead letter keeps the original bytes, which still do not decode: read it below the
    // consumer runtime.
    let mut letters = bus
        .subscribe(&sub_commands(&dead_letters))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let letter = tokio::time::timeout(WAIT_LIMIT, futures_util::StreamExt::next(&mut letters))
        .await
        .unwrap_or_else(|_| panic!("no dead letter within {WAIT_LIMIT:?}"))
        .unwrap_or_else(|| panic!("the dead-letter stream ended"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(letter.message().is_err(), "the garbage decoded: {letter:?}");
    let reason = letter
        .info()
        .header(crate::dead_letter::REASON_HEADER)
        .unwrap_or_default();
    assert!(
        reason.contains("not a valid CloudEvents event"),
        "reason header: {reason:?}"
    );
    letter.acker().ack().await.unwrap_or_else(|e| panic!("{e}"));
}

/// Foreign events whose `id` or `datacontenttype` holds a line break (which JSON can carry and
/// no header can) go to the dead letter with the reason, and never reach the handler, which
/// here forwards what it gets to another topic, as a router or a bridge does: forwarding such
/// an event would put the line break into a header. The well-formed event is forwarded.
pub async fn foreign_line_breaks_go_to_dead_letter_never_to_a_forwarding_handler<F: Fixture>(
    fixture: &F,
) {
    let (router_bus, bus) = (Arc::new(fixture.connect().await), fixture.connect().await);
    let (topic, onward) = (fixture.name("foreign.in"), fixture.name("foreign.onward"));
    let subscription = sub_events(&topic, "router");
    let dead_letters = subscription.dead_letter_destination().to_owned();
    let arrived = Seen::default();
    let onward_handle = serve(
        &bus,
        Consumer::new(sub_events(&onward, "g")),
        &arrived,
        0,
        ack,
    )
    .await;
    let handled = Seen::default();
    let router = Consumer::new(subscription)
        .serve(&bus, {
            let (handled, onward) = (handled.clone(), onward.clone());
            tower::service_fn(move |m: Message| {
                handled.push(m.id(), m.attempt(), 0);
                let (publisher, onward) = (router_bus.clone(), onward.clone());
                async move {
                    publisher.publish(&onward, m.envelope()).await?;
                    Ok::<_, BoxError>(Outcome::Ack)
                }
            })
        })
        .await
        .unwrap_or_else(|e| panic!("subscribing: {e}"));
    let foreign = |id: &str, content_type: &str| {
        serde_json::to_vec(&serde_json::json!({
            "specversion": "1.0", "id": id, "source": "/foreign", "type": "foreign.thing.done",
            "datacontenttype": content_type, "data": {"n": 1},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    };
    for body in [
        foreign("line\r\nbreak", "application/json"),
        foreign("content-type", "application/json\nX-Injected: 1"),
        foreign("fine", "application/json"),
    ] {
        let Some(publish) = fixture.publish_structured(&topic, body) else {
            eprintln!(
                "SKIPPED foreign_line_breaks_go_to_dead_letter_never_to_a_forwarding_handler: \
                 the fixture cannot publish raw messages"
            );
            shutdown(router).await;
            shutdown(onward_handle).await;
            return;
        };
        publish.await;
    }
    wait_until("the well-formed event arrived", || arrived.len() >= 1).await;

    let mut letters = bus
        .subscribe(&sub_commands(&dead_letters))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..2 {
        let letter = tokio::time::timeout(WAIT_LIMIT, futures_util::StreamExt::next(&mut letters))
            .await
            .unwrap_or_else(|_| panic!("no dead letter within {WAIT_LIMIT:?}"))
            .unwrap_or_else(|| panic!("the dead-letter stream ended"))
            .unwrap_or_else(|e| panic!("{e}"));
        let reason = letter
            .info()
            .header(crate::dead_letter::REASON_HEADER)
            .unwrap_or_default();
        assert!(
            reason.contains("not a valid CloudEvents event") && reason.contains("may not contain"),
            "reason header: {reason:?}"
        );
        letter.acker().ack().await.unwrap_or_else(|e| panic!("{e}"));
    }
    shutdown(router).await;
    shutdown(onward_handle).await;
    assert_eq!(handled.ids(), BTreeSet::from(["fine".to_owned()]));
    assert_eq!(arrived.ids(), BTreeSet::from(["fine".to_owned()]));
}
