//! The RabbitMQ adapter against a real broker: each test has its own virtual host
//! (`ms_testkit::amqp()`) and the bus's default names, or, where the management API is not
//! there (or `MS_TEST_AMQP_PRIVATE_VHOSTS=0`), the shared vhost and a namespace of its own.
//! What a test reads or writes on the broker directly goes by the bus's own names for it
//! (`AmqpBus::queue`), so both ways run every test.
#![cfg(feature = "amqp")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use ms_bus::amqp::{AmqpBus, AmqpBusBuilder};
use ms_bus::consumer::{Consumer, ConsumerHandle, Message, Outcome, Reject, RetryPolicy};
use ms_bus::dead_letter::{DELIVERIES_HEADER, GROUP_HEADER, ORIGIN_HEADER, REASON_HEADER};
use ms_bus::{BoxError, CommandSender, Envelope, EventPublisher, Subscriber, Subscription};
use ms_testkit::TestAmqp;

/// A hang guard only: every wait below ends as soon as its condition holds.
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Seen {
    id: String,
    attempt: u32,
    headers: Vec<(String, String)>,
    envelope: Envelope,
}

/// What handlers saw, shared with the test.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn record(&self, message: &Message) {
        self.0.lock().unwrap().push(Seen {
            id: message.id().to_owned(),
            attempt: message.attempt(),
            headers: message.info().headers.clone(),
            envelope: message.envelope().clone(),
        });
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn ids(&self) -> BTreeSet<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.id.clone())
            .collect()
    }
    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

/// A handler that records every message and then does what `decide` says.
fn recording<F>(
    log: Log,
    decide: F,
) -> impl tower::Service<Message, Response = Outcome, Error = BoxError, Future = impl Send>
+ Send
+ 'static
where
    F: Fn(&Message) -> Result<Outcome, BoxError> + Clone + Send + Sync + 'static,
{
    tower::service_fn(move |message: Message| {
        let log = log.clone();
        let decide = decide.clone();
        async move {
            log.record(&message);
            decide(&message)
        }
    })
}

#[allow(clippy::unnecessary_wraps)] // the shape of every `decide` function
fn ack(_: &Message) -> Result<Outcome, BoxError> {
    Ok(Outcome::Ack)
}

async fn wait_until(handle: ConsumerHandle, done: impl FnMut() -> bool) {
    tokio::time::timeout(PATIENCE, handle.shutdown_when(done))
        .await
        .expect("the condition held before the hang guard")
        .expect("the consumer shut down cleanly");
}

/// A builder for the test's vhost, with its namespace (if it has no vhost of its own).
fn builder(rabbit: &TestAmqp) -> AmqpBusBuilder {
    AmqpBus::builder(rabbit.url())
        .namespace(rabbit.namespace())
        .unwrap()
}

async fn bus(rabbit: &TestAmqp) -> AmqpBus {
    builder(rabbit).connect().await.expect("connecting")
}

/// The broker's queue for a command destination.
fn queue(bus: &AmqpBus, destination: &str) -> lapin::types::ShortString {
    bus.queue(&Subscription::commands(destination).unwrap())
        .unwrap()
        .into()
}

fn event(n: usize) -> Envelope {
    Envelope::builder("invoicing.invoice.created", "/invoicing")
        .subject(format!("inv-{n}"))
        .data("application/json", format!(r#"{{"n":{n}}}"#))
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_event_round_trips_with_every_attribute() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    let bus = bus(&rabbit).await;
    let log = Log::default();
    let consumer = Consumer::new(Subscription::events("invoicing.invoice", "reporting").unwrap())
        .serve(&bus, recording(log.clone(), ack))
        .await
        .unwrap();
    let sent = Envelope::builder("invoicing.invoice.created", "/invoicing")
        .subject("inv 1001 — ü")
        .time(time::OffsetDateTime::now_utc())
        .dataschema("https://example.com/invoice.json")
        .partition_key("inv-1001")
        .tenant_id("acme")
        .extension("custom", "a \"quoted\" value")
        .unwrap()
        .data("application/json", &br#"{"total":4200}"#[..])
        .build()
        .unwrap();
    bus.publish("invoicing.invoice", &sent).await.unwrap();
    wait_until(consumer, || log.len() == 1).await;
    let seen = &log.all()[0];
    assert_eq!(seen.envelope, sent);
    assert_eq!(seen.attempt, 1);
    assert!(
        seen.headers.iter().all(|(k, _)| !k.starts_with("ce-")),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn the_wire_format_is_the_cloudevents_rabbitmq_binding() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    let bus = bus(&rabbit).await;
    let command = Envelope::builder("billing.invoice.issue", "/api")
        .subject("inv 7")
        .data("application/json", &br#"{"n":7}"#[..])
        .build()
        .unwrap();
    // No consumer yet: the command waits in the destination's queue.
    bus.send("billing.invoice", &command).await.unwrap();

    let connection = rabbit.connection().await;
    let channel = connection.create_channel().await.unwrap();
    let got = channel
        .basic_get(
            queue(&bus, "billing.invoice"),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the command is in its queue");
    let properties = &got.delivery.properties;
    assert_eq!(
        properties
            .content_type()
            .as_ref()
            .map(lapin::types::ShortString::as_str),
        Some("application/json")
    );
    assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
    let headers = properties.headers().as_ref().unwrap().inner();
    let text = |name: &str| match headers.get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).unwrap(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(text("ce-specversion"), "1.0");
    assert_eq!(text("ce-id"), command.id());
    assert_eq!(text("ce-type"), "billing.invoice.issue");
    assert_eq!(text("ce-source"), "/api");
    assert_eq!(
        text("ce-subject"),
        "inv 7",
        "values are not percent-encoded on AMQP"
    );
    assert!(
        !headers.contains_key("ce-datacontenttype"),
        "it is the content_type property"
    );
    assert_eq!(got.delivery.data, br#"{"n":7}"#);
}

#[tokio::test]
async fn groups_get_one_copy_each_and_share_within() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    let bus = bus(&rabbit).await;
    let (a1, a2, b) = (Log::default(), Log::default(), Log::default());
    let sub_a = Subscription::events("invoicing.invoice", "a")
        .unwrap()
        .prefetch(1);
    let sub_b = Subscription::events("invoicing.invoice", "b").unwrap();
    let ca1 = Consumer::new(sub_a.clone())
        .serve(&bus, recording(a1.clone(), ack))
        .await
        .unwrap();
    let ca2 = Consumer::new(sub_a)
        .serve(&bus, recording(a2.clone(), ack))
        .await
        .unwrap();
    let cb = Consumer::new(sub_b)
        .serve(&bus, recording(b.clone(), ack))
        .await
        .unwrap();

    let events: Vec<Envelope> = (0..200).map(event).collect();
    bus.publish_batch("invoicing.invoice", &events)
        .await
        .unwrap();
    let all: BTreeSet<String> = events.iter().map(|e| e.id().to_owned()).collect();

    wait_until(cb, || b.len() >= 200).await;
    wait_until(ca1, || a1.len() + a2.len() >= 200).await;
    ca2.shutdown().await.unwrap();
    assert_eq!(b.ids(), all);
    assert_eq!(b.len(), 200, "one copy per group");
    let mut a = a1.ids();
    a.extend(a2.ids());
    assert_eq!(a, all);
    assert_eq!(a1.len() + a2.len(), 200);
    // RabbitMQ hands a queue's messages round-robin to its consumers.
    assert!(a1.len() > 0 && a2.len() > 0, "{} / {}", a1.len(), a2.len());
}

#[tokio::test]
async fn commands_reach_one_consumer_and_wait_for_one() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    let bus = bus(&rabbit).await;
    let commands: Vec<Envelope> = (0..50).map(event).collect();
    bus.send_batch("billing.invoice", &commands).await.unwrap();

    let (one, two) = (Log::default(), Log::default());
    let sub = Subscription::commands("billing.invoice").unwrap();
    let c1 = Consumer::new(sub.clone())
        .serve(&bus, recording(one.clone(), ack))
        .await
        .unwrap();
    let c2 = Consumer::new(sub)
        .serve(&bus, recording(two.clone(), ack))
        .await
        .unwrap();
    wait_until(c1, || one.len() + two.len() >= 50).await;
    c2.shutdown().await.unwrap();
    let mut ids = one.ids();
    ids.extend(two.ids());
    assert_eq!(ids, commands.iter().map(|c| c.id().to_owned()).collect());
    assert_eq!(one.len() + two.len(), 50, "each command handled once");
}

#[tokio::test]
async fn a_retry_comes_back_after_its_delay_with_the_attempt_counted() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    let bus = bus(&rabbit).await;
    let log = Log::default();
    let first_seen = Arc::new(Mutex::new(None::<Instant>));
    let delay = Duration::from_millis(400);
    let handler = recording(log.clone(), {
        let first_seen = first_seen.clone();
        move |m: &Message| {
            if m.attempt() == 1 {
                *first_seen.lock().unwrap() = Some(Instant::now());
                Ok(Outcome::RetryAfter(delay))
            } else {
                Ok(Outcome::Ack)
            }
        }
    });
    let consumer = Consumer::new(Subscription::commands("work").unwrap())
        .serve(&bus, handler)
        .await
        .unwrap();
    bus.send("work", &event(1)).await.unwrap();
    wait_until(consumer, || log.len() == 2).await;
    let back = Instant::now();
    let seen = log.all();
    assert_eq!(seen.iter().map(|s| s.attempt).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(seen[0].envelope, seen[1].envelope);
    let waited = back - first_seen.lock().unwrap().unwrap();
    // The retry queue's TTL is the delay rounded down by at most a fifth.
    assert!(waited >= delay * 4 / 5, "came back after {waited:?}");
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_with_its_reason_while_the_rest_flow() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    let bus = bus(&rabbit).await;
    let log = Log::default();
    let poison = event(0);
    let poison_id = poison.id().to_owned();
    let handler = recording(log.clone(), move |m: &Message| {
        if m.id() == poison_id {
            Err("the invoice cannot be parsed".into())
        } else {
            Ok(Outcome::Ack)
        }
    });
    let retry = RetryPolicy::default()
        .max_deliveries(3)
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(40));
    let subscription = Subscription::events("invoicing.invoice", "ledger").unwrap();
    let consumer = Consumer::new(subscription.clone())
        .retry(retry)
        .serve(&bus, handler)
        .await
        .unwrap();
    let dead = Log::default();
    let dead_consumer =
        Consumer::new(Subscription::commands(subscription.dead_letter_destination()).unwrap())
            .serve(&bus, recording(dead.clone(), ack))
            .await
            .unwrap();

    let mut events = vec![poison.clone()];
    events.extend((1..=20).map(event));
    bus.publish_batch("invoicing.invoice", &events)
        .await
        .unwrap();

    wait_until(dead_consumer, || dead.len() == 1).await;
    wait_until(consumer, || log.ids().len() == 21).await;
    let attempts: Vec<u32> = log
        .all()
        .iter()
        .filter(|s| s.id == poison.id())
        .map(|s| s.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    let letter = &dead.all()[0];
    assert_eq!(letter.envelope, poison, "the original, untouched");
    assert_eq!(
        letter.attempt, 1,
        "the dead-letter queue counts its own deliveries"
    );
    let header = |name: &str| {
        letter
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header(REASON_HEADER), Some("the invoice cannot be parsed"));
    assert_eq!(header(DELIVERIES_HEADER), Some("3"));
    assert_eq!(header(ORIGIN_HEADER), Some("invoicing.invoice"));
    assert_eq!(header(GROUP_HEADER), Some("ledger"));
}

#[tokio::test]
async fn a_message_that_is_not_a_cloudevent_is_dead_lettered_with_the_decoding_error() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    let bus = bus(&rabbit).await;
    let log = Log::default();
    let subscription = Subscription::commands("work").unwrap();
    let consumer = Consumer::new(subscription.clone())
        .serve(&bus, recording(log.clone(), ack))
        .await
        .unwrap();

    let connection = rabbit.connection().await;
    let channel = connection.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert("ce-specversion".into(), AMQPValue::LongString("1.0".into()));
    headers.insert("ce-type".into(), AMQPValue::LongString("t".into()));
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(vec![AMQPValue::Boolean(true)].into()),
    );
    channel
        .basic_publish(
            "".into(),
            queue(&bus, "work"),
            BasicPublishOptions::default(),
            b"\xff\x00 not an event",
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap();

    // The dead letter is the message as received: read it raw. (Declared here so that polling
    // it before the adapter does is not a 404, which would close the channel.)
    channel
        .queue_declare(
            queue(&bus, "work.dead-letter"),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let got = loop {
        if let Some(got) = channel
            .basic_get(
                queue(&bus, "work.dead-letter"),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            break got;
        }
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    consumer.shutdown().await.unwrap();
    assert_eq!(log.len(), 0, "the handler never saw it");
    assert_eq!(got.delivery.data, b"\xff\x00 not an event");
    let headers = got.delivery.properties.headers().as_ref().unwrap().inner();
    match headers.get(REASON_HEADER) {
        Some(AMQPValue::LongString(s)) => {
            let reason = String::from_utf8_lossy(s.as_bytes());
            assert!(reason.contains("`id` is missing"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        headers.contains_key("x-death"),
        "the original headers are kept"
    );
}

/// A message whose consumer crashed is redelivered in its place, counted one up: the messages
/// of its key behind it, and those published after the crash, still come after it. (Moving a
/// counted copy to the back, as the adapter used to, put it behind them.)
#[tokio::test]
async fn a_crashed_handlers_message_comes_again_in_its_place_counted() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    let bus = bus(&rabbit).await;
    let subscription = Subscription::commands("work").unwrap();
    let keyed = |n: usize| {
        Envelope::builder("test.thing.happened", "/test")
            .partition_key("thing-1")
            .json_data(&serde_json::json!({ "n": n }))
            .unwrap()
            .build()
            .unwrap()
    };
    let (first, second, third) = (keyed(1), keyed(2), keyed(3));
    bus.send_batch("work", &[first.clone(), second.clone()])
        .await
        .unwrap();

    // A consumer takes the first message and "crashes" (is aborted) while handling it; the
    // second waits behind it in its key's lane.
    let crashed = Log::default();
    let (started, mut on_start) = tokio::sync::mpsc::unbounded_channel();
    let handler = tower::service_fn({
        let crashed = crashed.clone();
        move |message: Message| {
            crashed.record(&message);
            let _ = started.send(());
            async move { std::future::pending::<Result<Outcome, BoxError>>().await }
        }
    });
    let consumer = Consumer::new(subscription.clone())
        .serve(&bus, handler)
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, on_start.recv())
        .await
        .unwrap();
    consumer.abort();
    // The aborted consumer's channel closes once its last delivery is dropped; then the broker
    // requeues both, and only then is the third sent.
    let channel = rabbit.connection().await.create_channel().await.unwrap();
    // The bus's name for the queue: under the test kit's namespace when private vhosts are off.
    let work_queue = bus.queue(&subscription).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let queue = channel
            .queue_declare(
                work_queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..lapin::options::QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        if queue.message_count() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the crashed consumer's messages were not requeued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bus.send("work", &third).await.unwrap();

    let log = Log::default();
    let consumer = Consumer::new(subscription)
        .serve(&bus, recording(log.clone(), ack))
        .await
        .unwrap();
    wait_until(consumer, || log.len() == 3).await;
    let seen: Vec<(String, u32)> = log.all().into_iter().map(|m| (m.id, m.attempt)).collect();
    assert_eq!(crashed.all()[0].attempt, 1);
    assert_eq!(
        seen,
        [
            (first.id().to_owned(), 2),
            (second.id().to_owned(), 2),
            (third.id().to_owned(), 1),
        ]
    );
}

#[tokio::test]
async fn a_rejected_message_is_dead_lettered_at_once() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    let bus = bus(&rabbit).await;
    let log = Log::default();
    let consumer = Consumer::new(Subscription::commands("work").unwrap())
        .serve(
            &bus,
            recording(log.clone(), |_: &Message| {
                Err(Reject::new("negative total").into())
            }),
        )
        .await
        .unwrap();
    let dead = Log::default();
    let dead_consumer = Consumer::new(Subscription::commands("work.dead-letter").unwrap())
        .serve(&bus, recording(dead.clone(), ack))
        .await
        .unwrap();
    bus.send("work", &event(1)).await.unwrap();
    wait_until(dead_consumer, || dead.len() == 1).await;
    consumer.shutdown().await.unwrap();
    assert_eq!(log.len(), 1);
    let headers: BTreeMap<_, _> = dead.all()[0].headers.iter().cloned().collect();
    assert_eq!(
        headers.get(REASON_HEADER).map(String::as_str),
        Some("rejected: negative total")
    );
    assert_eq!(
        headers.get(DELIVERIES_HEADER).map(String::as_str),
        Some("1")
    );
}

#[tokio::test]
async fn a_closed_bus_ends_its_subscriptions_and_refuses_to_publish() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    let bus = bus(&rabbit).await;
    let mut deliveries = bus
        .subscribe(&Subscription::commands("work").unwrap())
        .await
        .unwrap();
    bus.close().await;
    assert!(matches!(
        bus.send("work", &event(1)).await,
        Err(ms_bus::BusError::Closed)
    ));
    let end = tokio::time::timeout(PATIENCE, async {
        while let Some(item) = deliveries.next().await {
            assert!(item.is_err());
        }
    });
    end.await.expect("the stream ends");
}

#[tokio::test]
async fn a_deleted_queue_is_declared_again_by_senders_and_consumers() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    let bus = bus(&rabbit).await;
    let log = Log::default();
    let consumer = Consumer::new(Subscription::commands("work").unwrap())
        .serve(&bus, recording(log.clone(), ack))
        .await
        .unwrap();
    bus.send("work", &event(1)).await.unwrap();

    // An operator deletes the queue: RabbitMQ cancels the consumer, and the sender's
    // knowledge that the queue exists is stale.
    let connection = rabbit.connection().await;
    let channel = connection.create_channel().await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while log.len() < 1 {
        assert!(Instant::now() < deadline, "the first command never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    channel
        .queue_delete(
            queue(&bus, "work"),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();

    // The send is returned as unroutable, declares the queue again and is republished; the
    // consumer's stream reopens on the declared queue.
    bus.send("work", &event(2)).await.unwrap();
    wait_until(consumer, || log.len() == 2).await;
    assert_eq!(log.all()[1].envelope.subject(), Some("inv-2"));
}

#[tokio::test]
async fn structured_mode_publishes_one_json_document_and_reads_back_equal() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    let bus = builder(&rabbit)
        .mode(ms_bus::codec::Mode::Structured)
        .connect()
        .await
        .unwrap();
    let command = Envelope::builder("billing.invoice.issue", "/api")
        .subject("inv 7")
        .partition_key("inv-7")
        .data("application/json", &br#"{"n":7}"#[..])
        .build()
        .unwrap();
    bus.send("billing.invoice", &command).await.unwrap();

    let connection = rabbit.connection().await;
    let channel = connection.create_channel().await.unwrap();
    let got = channel
        .basic_get(
            queue(&bus, "billing.invoice"),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("the command is in its queue");
    let properties = &got.delivery.properties;
    assert_eq!(
        properties
            .content_type()
            .as_ref()
            .map(lapin::types::ShortString::as_str),
        Some("application/cloudevents+json")
    );
    let headers = properties.headers().clone().unwrap_or_default();
    assert!(
        headers
            .inner()
            .keys()
            .all(|k| !k.as_str().starts_with("ce-")),
        "{headers:?}"
    );
    let document: serde_json::Value = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(document["id"], command.id());
    assert_eq!(document["data"]["n"], 7);
    // Back to the queue, and through the adapter.
    got.delivery
        .acker
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let log = Log::default();
    let consumer = Consumer::new(Subscription::commands("billing.invoice").unwrap())
        .serve(&bus, recording(log.clone(), ack))
        .await
        .unwrap();
    wait_until(consumer, || log.len() == 1).await;
    assert_eq!(log.all()[0].envelope, command);
}

#[tokio::test]
async fn a_command_sent_from_a_handler_carries_the_incoming_correlation_id() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    let bus = bus(&rabbit).await;
    let correlation = ms_tracing::CorrelationId::generate();
    let forwarded = Log::default();
    let forward = Consumer::new(Subscription::commands("first").unwrap())
        .serve(&bus, {
            let bus = bus.clone();
            tower::service_fn(move |_m: Message| {
                let bus = bus.clone();
                async move {
                    // No correlation id set here: the bus adds the one being handled.
                    let next = Envelope::builder("work.step.two", "/work").build()?;
                    bus.send("second", &next).await?;
                    Ok::<_, BoxError>(Outcome::Ack)
                }
            })
        })
        .await
        .unwrap();
    let second = Consumer::new(Subscription::commands("second").unwrap())
        .serve(&bus, recording(forwarded.clone(), ack))
        .await
        .unwrap();
    let first = Envelope::builder("work.step.one", "/work")
        .correlation_id(&correlation)
        .build()
        .unwrap();
    bus.send("first", &first).await.unwrap();
    wait_until(second, || forwarded.len() == 1).await;
    forward.shutdown().await.unwrap();
    assert_eq!(
        forwarded.all()[0].envelope.correlation_id(),
        Some(correlation)
    );
}

/// Whether `queue` exists on the broker (a passive declare; its failure closes the channel,
/// so each check has its own).
async fn queue_exists(connection: &lapin::Connection, queue: &str) -> bool {
    let channel = connection.create_channel().await.unwrap();
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .is_ok()
}

async fn exchange_exists(connection: &lapin::Connection, exchange: &str) -> bool {
    let channel = connection.create_channel().await.unwrap();
    let options = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
        .is_ok()
}

/// The topic, group and destination both systems of the namespace test use.
const SHARED_TOPIC: &str = "namespaced.topic";
const SHARED_DESTINATION: &str = "namespaced.work";

/// One system in the namespace test: a group on [`SHARED_TOPIC`], a consumer of
/// [`SHARED_DESTINATION`] and one of its dead letters, each recording what it saw.
struct System {
    bus: AmqpBus,
    events: Log,
    commands: Log,
    dead: Log,
    consumers: Vec<ConsumerHandle>,
}

impl System {
    fn group() -> Subscription {
        Subscription::events(SHARED_TOPIC, "g").unwrap()
    }

    fn commands() -> Subscription {
        Subscription::commands(SHARED_DESTINATION).unwrap()
    }

    fn dead_letters() -> Subscription {
        Subscription::commands(Self::commands().dead_letter_destination()).unwrap()
    }

    /// Connects in `namespace`; its command handler retries once after 20 ms and then rejects
    /// (to its dead letters) when `retry_then_reject`, else acks.
    async fn start(rabbit: &TestAmqp, namespace: &str, retry_then_reject: bool) -> Self {
        let bus = AmqpBus::builder(rabbit.url())
            .namespace(namespace)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (events, commands, dead) = (Log::default(), Log::default(), Log::default());
        let handle = move |m: &Message| match m.attempt() {
            _ if !retry_then_reject => Ok(Outcome::Ack),
            1 => Ok(Outcome::RetryAfter(Duration::from_millis(20))),
            _ => Err(Reject::new("no").into()),
        };
        let consumers = vec![
            Consumer::new(Self::group())
                .serve(&bus, recording(events.clone(), ack))
                .await
                .unwrap(),
            // Unordered, so that its retry goes through the broker's retry queue, whose name
            // must be namespaced too (a retry in a key's lane never leaves the process).
            Consumer::new(Self::commands())
                .partition_key_order(false)
                .serve(&bus, recording(commands.clone(), handle))
                .await
                .unwrap(),
            Consumer::new(Self::dead_letters())
                .serve(&bus, recording(dead.clone(), ack))
                .await
                .unwrap(),
        ];
        Self {
            bus,
            events,
            commands,
            dead,
            consumers,
        }
    }

    async fn shutdown(self) {
        for consumer in self.consumers {
            consumer.shutdown().await.unwrap();
        }
    }
}

fn subjects(log: &Log) -> Vec<String> {
    log.all()
        .iter()
        .map(|s| s.envelope.subject().unwrap_or_default().to_owned())
        .collect()
}

/// The names a leak of the namespace test's system would create on the broker.
fn bare_names() -> [String; 4] {
    [
        format!("{SHARED_TOPIC}:g"),
        SHARED_DESTINATION.to_owned(),
        System::commands().dead_letter_destination().to_owned(),
        format!("{SHARED_DESTINATION}:retry:20"),
    ]
}

#[tokio::test]
async fn namespaces_keep_two_systems_on_one_vhost_apart_down_to_retries_and_dead_letters() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    // What a leak would create under the bare names is gone before the test starts.
    let connection = rabbit.connection().await;
    let channel = connection.create_channel().await.unwrap();
    for queue in bare_names() {
        let options = lapin::options::QueueDeleteOptions::default();
        channel
            .queue_delete(queue.as_str().into(), options)
            .await
            .unwrap();
    }
    // Two systems using the same topic, group and destination names on one vhost.
    let ns_a = format!("{}.a", rabbit.prefix());
    let a = System::start(&rabbit, &ns_a, true).await;
    let b = System::start(&rabbit, &format!("{}.b", rabbit.prefix()), false).await;
    a.bus.publish(SHARED_TOPIC, &event(1)).await.unwrap();
    a.bus.send(SHARED_DESTINATION, &event(2)).await.unwrap();
    b.bus.publish(SHARED_TOPIC, &event(3)).await.unwrap();
    b.bus.send(SHARED_DESTINATION, &event(4)).await.unwrap();

    let deadline = Instant::now() + PATIENCE;
    let done =
        || a.dead.len() == 1 && a.events.len() == 1 && b.events.len() == 1 && b.commands.len() == 1;
    while !done() {
        assert!(Instant::now() < deadline, "the hang guard");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(subjects(&a.events), ["inv-1"]);
    assert_eq!(subjects(&a.commands), ["inv-2", "inv-2"], "tried, retried");
    assert_eq!(subjects(&a.dead), ["inv-2"]);
    assert_eq!(subjects(&b.events), ["inv-3"]);
    assert_eq!(subjects(&b.commands), ["inv-4"]);
    assert_eq!(b.dead.len(), 0, "a's dead letter is not b's");

    // On the broker: everything a used is behind its namespace, nothing under the bare names.
    assert_eq!(a.bus.events_exchange(), format!("{ns_a}/ms.events"));
    assert!(exchange_exists(&connection, a.bus.events_exchange()).await);
    let a_queue = a.bus.queue(&System::commands()).unwrap();
    assert_eq!(a_queue, format!("{ns_a}/{SHARED_DESTINATION}"));
    for queue in [
        a.bus.queue(&System::group()).unwrap(),
        format!("{a_queue}:retry:20"),
        a.bus.queue(&System::dead_letters()).unwrap(),
        a_queue,
    ] {
        assert!(queue_exists(&connection, &queue).await, "{queue}");
    }
    for queue in bare_names() {
        assert!(!queue_exists(&connection, &queue).await, "{queue} leaked");
    }
    if rabbit.namespace().is_none() {
        // The vhost is this test's alone: no bus here used the bare exchange.
        assert!(!exchange_exists(&connection, "ms.events").await);
    }
    a.shutdown().await;
    b.shutdown().await;
}
