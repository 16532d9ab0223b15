//! Cases of plain delivery: round trip, groups, commands, nack, a crashed handler, `in_progress`.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::Fixture;
use super::support::{Seen, ack, event, serve, shutdown, sub_commands, sub_events, wait_until};
use crate::consumer::{Consumer, Message, Outcome};
use crate::{CommandSender, Envelope, EventPublisher};

/// An event published to a topic reaches the group's handler with every attribute intact;
/// a command reaches its destination's handler.
pub async fn round_trip<F: Fixture>(fixture: &F) {
    let (publisher, consumer_bus) = (fixture.connect().await, fixture.connect().await);
    let topic = fixture.name("round.trip");
    let seen = Seen::default();
    let received: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    let handle = Consumer::new(sub_events(&topic, "g1"))
        .serve(&consumer_bus, {
            let received = received.clone();
            tower::service_fn(move |m: Message| {
                let received = received.clone();
                async move {
                    received
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(m.into_envelope());
                    Ok::<_, Infallible>(())
                }
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sent = Envelope::builder("conformance.thing.happened", "/conformance")
        .subject("Euro € 😀 100%")
        .time(
            time::OffsetDateTime::from_unix_timestamp(1_800_000_000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        )
        .partition_key("k1")
        .tenant_id("acme")
        .correlation_id(&ms_tracing::CorrelationId::generate())
        .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .data("application/octet-stream", vec![0_u8, 159, 255])
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    publisher
        .publish(&topic, &sent)
        .await
        .unwrap_or_else(|e| panic!("publishing: {e}"));
    wait_until("the event", || {
        !received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    })
    .await;
    shutdown(handle).await;
    assert_eq!(
        received.lock().unwrap_or_else(PoisonError::into_inner)[0],
        sent
    );

    let destination = fixture.name("round.command");
    let command = event(1);
    publisher
        .send(&destination, &command)
        .await
        .unwrap_or_else(|e| panic!("sending: {e}"));
    let handle = serve(
        &consumer_bus,
        Consumer::new(sub_commands(&destination)),
        &seen,
        0,
        ack,
    )
    .await;
    wait_until("the command", || seen.len() == 1).await;
    shutdown(handle).await;
    assert_eq!(seen.ids(), BTreeSet::from([command.id().to_owned()]));
}

/// Two groups get every event each; the two instances of one group share the events.
pub async fn groups_get_one_copy_each_and_share_within<F: Fixture>(fixture: &F) {
    let publisher = fixture.connect().await;
    let topic = fixture.name("groups");
    let (a, b) = (Seen::default(), Seen::default());
    // One message at a time per instance, and a handler that takes a moment, so that both
    // instances of group A get work whatever the scheduling.
    let mut handles = Vec::new();
    for tag in 0..2 {
        let bus = fixture.connect().await;
        let consumer = Consumer::new(sub_events(&topic, "group-a").prefetch(1)).concurrency(1);
        // The handler waits (as one doing I/O would) instead of blocking its thread: a
        // blocking handler could keep the other instance's task from ever being scheduled.
        let handle = consumer
            .serve(&bus, {
                let a = a.clone();
                tower::service_fn(move |m: Message| {
                    let a = a.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        a.push(m.id(), m.attempt(), tag);
                        Ok::<_, Infallible>(())
                    }
                })
            })
            .await
            .unwrap_or_else(|e| panic!("subscribing: {e}"));
        handles.push(handle);
    }
    let bus_b = fixture.connect().await;
    handles.push(
        serve(
            &bus_b,
            Consumer::new(sub_events(&topic, "group-b")),
            &b,
            0,
            ack,
        )
        .await,
    );
    let events: Vec<Envelope> = (0..60).map(event).collect();
    for e in &events {
        publisher
            .publish(&topic, e)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let expected: BTreeSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
    wait_until("group A to get all events", || a.ids() == expected).await;
    wait_until("group B to get all events", || b.ids() == expected).await;
    for h in handles {
        shutdown(h).await;
    }
    assert_eq!(b.len(), 60, "group B got duplicates without any fault");
    assert_eq!(
        a.len(),
        60,
        "group A handled some events twice without any fault"
    );
    let per_instance: BTreeMap<usize, usize> =
        a.all().iter().fold(BTreeMap::new(), |mut m, (_, _, tag)| {
            *m.entry(*tag).or_default() += 1;
            m
        });
    assert_eq!(
        per_instance.len(),
        2,
        "one instance of group A got nothing: {per_instance:?}"
    );
}

/// Each command is handled by one of the destination's consumers, once.
pub async fn commands_reach_one_consumer<F: Fixture>(fixture: &F) {
    let sender = fixture.connect().await;
    let destination = fixture.name("commands");
    let seen = Seen::default();
    let mut handles = Vec::new();
    for tag in 0..2 {
        let bus = fixture.connect().await;
        handles.push(
            serve(
                &bus,
                Consumer::new(sub_commands(&destination)),
                &seen,
                tag,
                ack,
            )
            .await,
        );
    }
    let commands: Vec<Envelope> = (0..100).map(event).collect();
    sender
        .send_batch(&destination, &commands)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until("all commands", || seen.len() >= 100).await;
    for h in handles {
        shutdown(h).await;
    }
    assert_eq!(seen.len(), 100, "a command was handled twice");
    assert_eq!(seen.ids().len(), 100);
}

/// A handler's retry outcome brings the same message back with a higher attempt, through the
/// broker's retry (the adapter's [`Acker::retry`](crate::Acker::retry): ordering off).
pub async fn nack_redelivers<F: Fixture>(fixture: &F) {
    let (publisher, bus) = (fixture.connect().await, fixture.connect().await);
    let topic = fixture.name("nack");
    let seen = Seen::default();
    let handle = serve(
        &bus,
        Consumer::new(sub_events(&topic, "g")).partition_key_order(false),
        &seen,
        0,
        |m: &Message| {
            Ok(if m.attempt() == 1 {
                Outcome::RetryAfter(Duration::from_millis(20))
            } else {
                Outcome::Ack
            })
        },
    )
    .await;
    let e = event(0);
    publisher
        .publish(&topic, &e)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until("the redelivery", || seen.len() >= 2).await;
    shutdown(handle).await;
    let all = seen.all();
    assert_eq!(all[0].0, e.id());
    assert_eq!(all[1].0, e.id());
    assert_eq!((all[0].1, all[1].1), (1, 2));
}

/// A consumer that dies mid-message (never settles it) does not lose it: another instance of
/// the group gets it again.
pub async fn crashed_handler_redelivers<F: Fixture>(fixture: &F) {
    let publisher = fixture.connect().await;
    let topic = fixture.name("crash");
    let ack_wait = fixture.capabilities().ack_wait;
    let started = Seen::default();
    let crashing_bus = fixture.connect().await;
    let crashing = Consumer::new(sub_events(&topic, "g").ack_wait(ack_wait))
        .serve(&crashing_bus, {
            let started = started.clone();
            tower::service_fn(move |m: Message| {
                started.push(m.id(), m.attempt(), 0);
                async move {
                    // Never finishes: the process "dies" with the message in hand.
                    std::future::pending::<()>().await;
                    Ok::<_, Infallible>(())
                }
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let e = event(0);
    publisher
        .publish(&topic, &e)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until("the first delivery", || started.len() == 1).await;
    crashing.abort();
    drop(crashing_bus);

    let seen = Seen::default();
    let bus = fixture.connect().await;
    let handle = serve(
        &bus,
        Consumer::new(sub_events(&topic, "g").ack_wait(ack_wait)),
        &seen,
        1,
        ack,
    )
    .await;
    wait_until("the redelivery after the crash", || seen.len() == 1).await;
    shutdown(handle).await;
    let (id, attempt, _) = seen.all().remove(0);
    assert_eq!(id, e.id());
    if fixture.capabilities().counts_redeliveries {
        assert!(attempt >= 2, "redelivery reported attempt {attempt}");
    } else {
        eprintln!(
            "crashed_handler_redelivers: the broker does not let the adapter count deliveries across consumers; attempt {attempt} not checked"
        );
    }
}

/// A handler that runs longer than the ack deadline but reports progress keeps its message:
/// no second delivery happens meanwhile.
pub async fn in_progress_extends_the_deadline<F: Fixture>(fixture: &F) {
    let (publisher, bus) = (fixture.connect().await, fixture.connect().await);
    let topic = fixture.name("progress");
    let ack_wait = fixture.capabilities().ack_wait;
    let seen = Seen::default();
    let handle = Consumer::new(sub_events(&topic, "g").ack_wait(ack_wait))
        .serve(&bus, {
            let seen = seen.clone();
            tower::service_fn(move |m: Message| {
                seen.push(m.id(), m.attempt(), 0);
                async move {
                    // Three deadlines long, reporting progress four times per deadline.
                    for _ in 0..12 {
                        tokio::time::sleep(ack_wait / 4).await;
                        m.in_progress().await?;
                    }
                    Ok::<_, crate::BusError>(())
                }
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    publisher
        .publish(&topic, &event(0))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until("the delivery", || seen.len() == 1).await;
    // Shutdown waits for the handler: three deadlines pass while it holds the message.
    shutdown(handle).await;
    assert_eq!(
        seen.len(),
        1,
        "redelivered while the handler reported progress: {:?}",
        seen.all()
    );
}
