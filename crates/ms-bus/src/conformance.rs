//! The conformance suite every adapter runs against its real broker (feature `testkit`).
//!
//! An adapter's test file implements [`Fixture`] (a fresh namespace on the real broker, and a
//! way to connect to it) and generates one test per case with [`conformance_tests!`](crate::conformance_tests):
//!
//! ```
//! # #[cfg(feature = "memory")] {
//! use ms_bus::conformance::{Capabilities, Fixture};
//! use ms_bus::memory::MemoryBus;
//!
//! struct Memory(MemoryBus);
//!
//! impl Fixture for Memory {
//!     type Bus = MemoryBus;
//!     fn connect(&self) -> futures_util::future::BoxFuture<'_, MemoryBus> {
//!         Box::pin(async { self.0.clone() })
//!     }
//!     fn name(&self, name: &str) -> String {
//!         name.to_owned()
//!     }
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities::default()
//!     }
//! }
//!
//! // In tests/conformance_memory.rs:
//! // ms_bus::conformance_tests!(async { Some(Memory(MemoryBus::new())) });
//! # }
//! ```
//!
//! Each case publishes through one connection and consumes through others, as separate
//! processes would, and asserts what the issue promises: round trip; one copy per group,
//! shared within a group; commands to one consumer; nack redelivers; a crashed handler's
//! message is redelivered; a poison message goes to the dead letter after N deliveries while
//! the rest flow; a foreign event with a line break where a header must carry it is
//! dead-lettered, never handed to a handler; 10,000 messages none lost; per-partition-key
//! order, per-subject order, and order through retries (kept in the key's lane); graceful
//! shutdown loses nothing; and (with [`RestartableFixture`]) a broker restart loses nothing
//! confirmed.
//!
//! Waits are bounded by [`WAIT_LIMIT`], long enough for a loaded 2-core CI machine: the cases
//! wait for conditions, never for fixed times.
//!
//! # Panics
//!
//! Every case panics (fails its test) when the adapter breaks a promise; that is what they
//! are for, so the individual cases do not repeat it.
#![allow(clippy::missing_panics_doc)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::consumer::{Consumer, ConsumerHandle, Message, Outcome, RetryPolicy};
use crate::{BoxError, CommandSender, Envelope, EventPublisher, Subscriber, Subscription};

/// The longest a case waits for a condition before it fails.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// What a broker promises beyond the common semantics; cases for promises a broker does not
/// make are skipped (loudly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// A single consumer receives one partition key's messages in publish order.
    pub ordered_per_key: bool,
    /// How long the broker waits for a settlement before redelivering; the crash case
    /// subscribes with it (keep it short: the case waits that long).
    pub ack_wait: Duration,
    /// A message redelivered to another consumer after its first consumer crashed reports
    /// a higher [`attempt`](crate::consumer::Message::attempt) (the broker or the adapter
    /// counts across consumers). Without it the crash case checks only the redelivery.
    pub counts_redeliveries: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            ordered_per_key: true,
            ack_wait: Duration::from_secs(1),
            counts_redeliveries: true,
        }
    }
}

/// A fresh namespace on a real broker.
pub trait Fixture: Send + Sync + 'static {
    /// The adapter's bus.
    type Bus: EventPublisher + CommandSender + Subscriber + Send + Sync + 'static;

    /// A new connection (a separate process would have its own).
    fn connect(&self) -> BoxFuture<'_, Self::Bus>;

    /// `name` inside this fixture's namespace, a valid bus name.
    fn name(&self, name: &str) -> String;

    /// What the broker promises.
    fn capabilities(&self) -> Capabilities;

    /// Publishes bytes that are no CloudEvents event to `topic`, if the fixture can; the
    /// poison-decoding case is skipped when it returns `None`.
    fn publish_garbage<'a>(&'a self, _topic: &'a str) -> Option<BoxFuture<'a, ()>> {
        None
    }

    /// Publishes `body`, a JSON document, to `topic` in structured mode as a foreign producer
    /// would (content type `application/cloudevents+json`, no `ce-` headers), if the fixture
    /// can; the foreign-event cases are skipped when it returns `None`.
    fn publish_structured<'a>(
        &'a self,
        _topic: &'a str,
        _body: Vec<u8>,
    ) -> Option<BoxFuture<'a, ()>> {
        None
    }
}

/// A fixture whose broker is a private process the case may kill and restart.
pub trait RestartableFixture: Fixture {
    /// Kills the broker (SIGKILL, as a crash) and starts it again on the same address and
    /// storage.
    fn restart_broker(&mut self) -> BoxFuture<'_, ()>;
}

/// Generates one `#[tokio::test]` per conformance case. `$fixture` is an expression
/// evaluating to a future of `Option<impl Fixture>` (`None`: the broker is not there, and
/// the fixture already printed its `SKIPPED` line).
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:expr) => {
        $crate::conformance_tests!(@cases $fixture;
            round_trip,
            groups_get_one_copy_each_and_share_within,
            commands_reach_one_consumer,
            nack_redelivers,
            crashed_handler_redelivers,
            in_progress_extends_the_deadline,
            poison_goes_to_dead_letter_while_the_rest_flow,
            undecodable_goes_to_dead_letter,
            foreign_line_breaks_go_to_dead_letter_never_to_a_forwarding_handler,
            ten_thousand_messages_none_lost,
            per_partition_key_order,
            subject_only_events_keep_their_order,
            a_retry_keeps_the_later_messages_of_its_key_behind_it,
            graceful_shutdown_loses_nothing,
        );
    };
    (@cases $fixture:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(fixture) = $fixture.await {
                    $crate::conformance::$case(&fixture).await;
                }
            }
        )*
    };
}

/// What handlers saw: (envelope id, attempt, consumer tag), in order.
#[derive(Debug, Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, u32, usize)>>>);

impl Seen {
    fn push(&self, id: &str, attempt: u32, tag: usize) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id.to_owned(), attempt, tag));
    }

    fn all(&self) -> Vec<(String, u32, usize)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn ids(&self) -> BTreeSet<String> {
        self.all().into_iter().map(|(id, _, _)| id).collect()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// A handler that records each message and then does what `decide` says.
fn recorder<F>(
    seen: &Seen,
    tag: usize,
    decide: F,
) -> impl tower::Service<
    Message,
    Response = Outcome,
    Error = BoxError,
    Future = BoxFuture<'static, Result<Outcome, BoxError>>,
> + Send
+ 'static
where
    F: Fn(&Message) -> Result<Outcome, BoxError> + Send + Sync + 'static,
{
    let seen = seen.clone();
    let decide = Arc::new(decide);
    tower::service_fn(move |message: Message| {
        let seen = seen.clone();
        let decide = decide.clone();
        let fut: BoxFuture<'static, Result<Outcome, BoxError>> = Box::pin(async move {
            let outcome = decide(&message);
            seen.push(message.id(), message.attempt(), tag);
            outcome
        });
        fut
    })
}

#[allow(clippy::unnecessary_wraps)] // the shape every `decide` closure has
fn ack(_: &Message) -> Result<Outcome, BoxError> {
    Ok(Outcome::Ack)
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT_LIMIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn event(n: usize) -> Envelope {
    Envelope::builder("conformance.thing.happened", "/conformance")
        .subject(format!("thing-{n}"))
        .json_data(&serde_json::json!({ "n": n }))
        .and_then(crate::EnvelopeBuilder::build)
        .unwrap_or_else(|e| panic!("building a test event: {e}"))
}

fn sub_events(topic: &str, group: &str) -> Subscription {
    Subscription::events(topic, group).unwrap_or_else(|e| panic!("{e}"))
}

fn sub_commands(destination: &str) -> Subscription {
    Subscription::commands(destination).unwrap_or_else(|e| panic!("{e}"))
}

async fn serve<B: Subscriber>(
    bus: &B,
    consumer: Consumer,
    seen: &Seen,
    tag: usize,
    decide: impl Fn(&Message) -> Result<Outcome, BoxError> + Send + Sync + 'static,
) -> ConsumerHandle {
    consumer
        .serve(bus, recorder(seen, tag, decide))
        .await
        .unwrap_or_else(|e| panic!("subscribing: {e}"))
}

async fn shutdown(handle: ConsumerHandle) {
    handle
        .shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutting down: {e}"));
}

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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
