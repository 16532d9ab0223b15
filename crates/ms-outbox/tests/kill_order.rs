//! Per-key order through broker crashes mid-batch: a relay drains a backlog of 12,000 rows over
//! 8 keys (so every batch holds many rows of one key), the broker is killed with SIGKILL while
//! the batches are in flight and started again at once, ten times over. Then what the broker
//! stored is read back and checked key by key: each row's first copy must come after the first
//! copies of every earlier row of its key, and none may be missing.
//!
//! - NATS JetStream: the stream is read back with an independent client. (Before the NATS
//!   adapter kept at most one unconfirmed publish per key, async-nats resent the commands it
//!   still had queued on the new connection while those in the dead connection's buffers were
//!   lost: a batch's tail was stored, then the relay republished its head behind it.)
//! - RabbitMQ: the group's queue is read by a `Consumer` (16 at once) whose handler fails the
//!   first delivery of one message in fifty; the order checked is the order of the handler's
//!   successful calls. (Retries used to go through a retry queue, behind the later messages.)

#![cfg(feature = "postgres")]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use ms_bus::amqp::AmqpBus;
use ms_bus::consumer::{Consumer, Message, RetryPolicy};
use ms_bus::nats::NatsBus;
use ms_bus::{BoxError, Subscriber as _, Subscription};
use ms_outbox::{Outbox, Relay, RelayHandle, TableName};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

use common::{TOPIC, Tap};

/// Keys the backlog is spread over: few, so that each batch is mostly one key.
const KEYS: u32 = 8;
/// Rows enqueued before the relays start.
const BACKLOG: u32 = 12_000;
/// Rows per enqueueing transaction (all of one key).
const PER_TX: u32 = 100;
/// Kills per broker.
const REPETITIONS: u32 = 10;
/// Relays draining at once, as in a deployment with three instances.
const RELAYS: usize = 3;
/// The broker is killed once this many rows reached it: mid-drain.
const KILL_AFTER: u64 = BACKLOG as u64 / 4;
/// The longest a drain may take, outage included.
const DRAIN_LIMIT: Duration = Duration::from_secs(180);

/// What the broker stored (or the handler saw) in one repetition, checked per key.
#[derive(Debug, Default)]
struct Report {
    /// Copies stored, duplicates included.
    stored: usize,
    /// Copies of a row already stored.
    duplicates: usize,
    /// First copies stored while an earlier row of their key was not stored yet.
    out_of_order: usize,
    /// Rows the counters number that never arrived.
    missing: usize,
    /// The first violation, for the failure message.
    first: Option<String>,
}

/// Checks `arrivals` (key, number), in arrival order, against the rows numbered between
/// `before` and `after` per key.
fn check(
    arrivals: &[(String, u32)],
    before: &HashMap<String, u32>,
    after: &HashMap<String, u32>,
) -> Report {
    let mut report = Report {
        stored: arrivals.len(),
        ..Report::default()
    };
    let mut seen: HashSet<(&str, u32)> = HashSet::new();
    // Per key, the lowest number not yet arrived.
    let mut next: HashMap<&str, u32> = HashMap::new();
    for (key, seq) in arrivals {
        if !seen.insert((key.as_str(), *seq)) {
            report.duplicates += 1;
            continue;
        }
        let low = next
            .entry(key.as_str())
            .or_insert_with(|| before.get(key).copied().unwrap_or(0) + 1);
        if *seq != *low {
            report.out_of_order += 1;
            report
                .first
                .get_or_insert_with(|| format!("key {key}: {seq} arrived while {} had not", *low));
        }
        while seen.contains(&(key.as_str(), *low)) {
            *low += 1;
        }
    }
    for (key, &last) in after {
        let first = before.get(key).copied().unwrap_or(0) + 1;
        report.missing += (first..=last)
            .filter(|seq| !seen.contains(&(key.as_str(), *seq)))
            .count();
    }
    report
}

/// One backlog: `BACKLOG` rows, `PER_TX` to a transaction, the keys taking turns.
async fn fill(pool: &PgPool, outbox: &Outbox<Postgres>) {
    for tx in 0..BACKLOG / PER_TX {
        common::write(pool, outbox, &format!("k{}", tx % KEYS), PER_TX).await;
    }
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(12)
        .connect(url)
        .await
        .unwrap()
}

async fn shutdown(relays: Vec<RelayHandle>) {
    for relay in relays {
        relay.shutdown().await.unwrap();
    }
}

/// Waits (bounded) until `reached` says so.
async fn wait_until(what: &str, limit: Duration, mut reached: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !reached() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn assert_in_order(broker: &str, reports: &[Report]) {
    let total: usize = reports.iter().map(|r| r.stored).sum();
    println!(
        "{broker}: {total} copies checked over {} kills",
        reports.len()
    );
    let failed: Vec<(usize, &Report)> = reports
        .iter()
        .enumerate()
        .filter(|(_, r)| r.out_of_order > 0 || r.missing > 0)
        .collect();
    assert!(
        failed.is_empty(),
        "{broker}: {} of {} kills broke a key's order or lost rows: {failed:?}",
        failed.len(),
        reports.len()
    );
}

async fn nats_client(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        // Back as soon as the server is: the default backoff grows to seconds.
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// Every message of `stream`, in stream order, as (key, number), read by a client of its own.
async fn read_stream(url: &str, stream: &str) -> Vec<(String, u32)> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    let js = async_nats::jetstream::new(nats_client(url).await);
    let mut stream = js.get_stream(stream).await.unwrap();
    let total = stream.info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..pull::Config::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut stored = Vec::new();
    while (stored.len() as u64) < total {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("the stream reads back")
            .expect("the stream goes on")
            .unwrap();
        let headers = message.headers.as_ref().expect("binary-mode headers");
        let header = |name: &str| headers.get(name).expect(name).as_str().to_owned();
        stored.push((header("ce-subject"), header("ce-seq").parse().unwrap()));
    }
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_mid_batch_stores_every_key_in_order() {
    const TEST: &str = "nats_killed_mid_batch_stores_every_key_in_order";
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let mut server = match ms_testkit::NatsServer::start().await {
        Ok(server) => server,
        Err(e) if !ms_testkit::require_services() => {
            eprintln!("SKIPPED {TEST}: {e}");
            return;
        }
        Err(e) => panic!("starting a private nats-server: {e}"),
    };
    let url = server.url();
    let pool = pool(db.url()).await;
    let outbox = Outbox::<Postgres>::new(TableName::new("kill_nats").unwrap());
    outbox.migrate(&pool).await.unwrap();
    common::create_counters(&pool).await;

    let mut reports = Vec::new();
    for repetition in 1..=REPETITIONS {
        // A stream per repetition: what is read back is this repetition's.
        let prefix = format!("kill{repetition}");
        let before = common::counters(&pool).await;
        fill(&pool, &outbox).await;
        let after = common::counters(&pool).await;
        let mut buses = Vec::new();
        for _ in 0..RELAYS {
            buses.push(
                NatsBus::builder(nats_client(&url).await)
                    .prefix(&prefix)
                    .unwrap()
                    .build(),
            );
        }
        buses[0].ensure_topic(TOPIC).await.unwrap();
        let stream = buses[0].event_stream(TOPIC);
        let tap = Tap::start(nats_client(&url).await, buses[0].event_subject(TOPIC)).await;
        let started = Instant::now();
        let relays: Vec<RelayHandle> = buses
            .into_iter()
            .map(|bus| Relay::builder(&outbox, &pool, bus).build().spawn())
            .collect();
        wait_until("rows reaching the broker", DRAIN_LIMIT, || {
            tap.counts().messages >= KILL_AFTER
        })
        .await;
        server.kill().await.unwrap();
        let (killed, reached) = (started.elapsed(), tap.counts().messages);
        server.restart().await.unwrap();
        common::wait_drained(&outbox, &pool, DRAIN_LIMIT).await;
        let drained = started.elapsed();
        shutdown(relays).await;
        let report = check(&read_stream(&url, &stream).await, &before, &after);
        println!(
            "{TEST} kill {repetition}: killed at {killed:?} after {reached} messages reached it, \
             drained at {drained:?}: {report:?}"
        );
        reports.push(report);
    }
    assert_in_order("NATS JetStream", &reports);
}

/// What the handler saw: the (key, number) of each successful call, in call order.
#[derive(Clone, Default)]
struct Handled(Arc<Mutex<Vec<(String, u32)>>>);

impl Handled {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, u32)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Fails the first delivery of every fiftieth number; records the successful calls.
fn failing_handler(
    handled: Handled,
) -> impl tower::Service<
    Message,
    Response = (),
    Error = BoxError,
    Future = std::pin::Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>,
> + Send
+ 'static {
    tower::service_fn(move |message: Message| {
        let handled = handled.clone();
        let fut: std::pin::Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> =
            Box::pin(async move {
                let key = message.subject().expect("a subject").to_owned();
                let seq: u32 = message.extension("seq").expect("a seq extension").parse()?;
                if seq.is_multiple_of(50) && message.attempt() == 1 {
                    return Err("the first delivery of every fiftieth event fails".into());
                }
                handled.lock().push((key, seq));
                Ok(())
            });
        fut
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_killed_mid_batch_then_a_failing_consumer_keep_every_key_in_order() {
    const TEST: &str = "rabbitmq_killed_mid_batch_then_a_failing_consumer_keep_every_key_in_order";
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let mut broker = match ms_testkit::RabbitMqServer::start().await {
        Ok(broker) => broker,
        Err(e) if !ms_testkit::require_services() => {
            eprintln!("SKIPPED {TEST}: {e}");
            return;
        }
        Err(e) => panic!("starting a private RabbitMQ: {e}"),
    };
    let url = broker.url();
    let pool = pool(db.url()).await;
    let outbox = Outbox::<Postgres>::new(TableName::new("kill_amqp").unwrap());
    outbox.migrate(&pool).await.unwrap();
    common::create_counters(&pool).await;

    let mut reports = Vec::new();
    for repetition in 1..=REPETITIONS {
        // A group (queue) per repetition: what the handler sees is this repetition's.
        let subscription = Subscription::events(TOPIC, &format!("checker{repetition}")).unwrap();
        let consumer_bus = AmqpBus::connect(&url).await.unwrap();
        // The queue and its binding exist (durably) before anything is published.
        drop(consumer_bus.subscribe(&subscription).await.unwrap());
        let before = common::counters(&pool).await;
        fill(&pool, &outbox).await;
        let after = common::counters(&pool).await;
        let mut relays = Vec::new();
        let started = Instant::now();
        for _ in 0..RELAYS {
            // Back soon after the broker is: the default backoff grows to seconds.
            let bus = AmqpBus::builder(&url)
                .reconnect_delay(Duration::from_millis(100), Duration::from_millis(500))
                .connect()
                .await
                .unwrap();
            relays.push(Relay::builder(&outbox, &pool, bus).build().spawn());
        }
        wait_until("rows reaching the broker", DRAIN_LIMIT, || {
            relays.iter().map(|r| r.status().published).sum::<u64>() >= KILL_AFTER
        })
        .await;
        broker.kill().await.unwrap();
        let killed = started.elapsed();
        broker.restart().await.unwrap();
        common::wait_drained(&outbox, &pool, DRAIN_LIMIT).await;
        let drained = started.elapsed();
        shutdown(relays).await;

        let handled = Handled::default();
        let consumer = Consumer::new(subscription)
            .concurrency(16)
            .retry(
                RetryPolicy::default()
                    .initial_delay(Duration::from_millis(10))
                    .max_delay(Duration::from_millis(20)),
            )
            .serve(&consumer_bus, failing_handler(handled.clone()))
            .await
            .unwrap();
        let rows = after.values().sum::<u32>() - before.values().sum::<u32>();
        let unique = || handled.lock().iter().collect::<HashSet<_>>().len();
        let deadline = Instant::now() + DRAIN_LIMIT;
        while unique() < rows as usize && Instant::now() < deadline && !consumer.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        consumer.shutdown().await.unwrap();
        consumer_bus.close().await;
        let report = check(&handled.lock(), &before, &after);
        println!(
            "{TEST} kill {repetition}: killed at {killed:?}, drained at {drained:?}, \
             consumed at {:?}: {report:?}",
            started.elapsed()
        );
        reports.push(report);
    }
    assert_in_order("RabbitMQ", &reports);
}
