//! A broker outage: a private nats-server killed with SIGKILL for some seconds while writers
//! keep enqueueing and the relay keeps trying, then restarted. Nothing is lost, every key stays
//! in order, nothing is parked in the dead letters, and the backlog drains.

#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ms_bus::Subscription;
use ms_bus::nats::NatsBus;
use ms_outbox::{Outbox, Relay, RelayBuilder, TableName};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

use common::{Consumer, TOPIC, Tap};

const WRITERS: u32 = 4;
/// Events per writer transaction, all of one key.
const PER_TX: u32 = 5;
/// A writer's pause between two transactions: enough events to fill batches, few enough that
/// the outage's backlog drains in seconds.
const WRITE_EVERY: Duration = Duration::from_millis(10);
/// How long the broker stays down.
const OUTAGE: Duration = Duration::from_secs(5);
/// How long the writers go on after the restart.
const AFTER: Duration = Duration::from_secs(2);

async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        // Back as soon as the server is: the default backoff grows to seconds.
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

async fn bus(url: &str) -> NatsBus {
    NatsBus::builder(connect(url).await)
        .prefix("outage")
        .unwrap()
        .build()
}

/// Writers enqueueing until `stop`, each transaction numbering its key's events.
fn spawn_writers(
    keys: u32,
    pool: &PgPool,
    outbox: &Outbox<Postgres>,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (pool, outbox, stop) = (pool.clone(), outbox.clone(), stop.clone());
        set.spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{}", (i * 7 + w * 13) % keys);
                common::write(&pool, &outbox, &key, PER_TX).await;
                i += 1;
                // Pacing, not synchronisation: a steady stream of writes.
                tokio::time::sleep(WRITE_EVERY).await;
            }
        });
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing_reorders_nothing_and_parks_nothing() {
    let failed = outage(
        "a_broker_outage_loses_nothing_reorders_nothing_and_parks_nothing",
        20,
        |relay| {
            // Shorter than the outage: the relay gives up on a batch and tries again while the
            // broker is down, so its failures are recorded, not just waited out.
            relay.publish_timeout(Duration::from_secs(1))
        },
    )
    .await;
    assert!(failed.rows > 0, "rows failed during the outage: {failed:?}");
    assert!(failed.most_strikes <= 1, "{failed:?}");
}

/// Rows that fail again and again during an outage: the relay retries fast, so the rows at the
/// head of their shards fail many times while the broker is down. Only a failure after the
/// relay published something since the row's previous failure counts, so each row takes at
/// most one count, and two allowed attempts park nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_costs_a_row_at_most_one_count() {
    // Two keys: the same few rows are at the head of their shards, round after round.
    let failed = outage("an_outage_costs_a_row_at_most_one_count", 2, |relay| {
        relay
            .publish_timeout(Duration::from_millis(200))
            .retry_delay(Duration::from_millis(10), Duration::from_millis(50))
            .max_attempts(2)
    })
    .await;
    assert!(
        failed.most_attempts >= 3,
        "rows failed again and again during the outage: {failed:?}"
    );
    assert!(failed.rows > 0, "rows failed during the outage: {failed:?}");
    assert!(failed.most_strikes <= 1, "{failed:?}");
}

/// What the failing rows carried when the broker came back.
#[derive(Debug, Default)]
struct FailedRows {
    /// Rows that failed at least once.
    rows: i64,
    /// The most failures that counted towards the dead letter, on one row.
    most_strikes: i32,
    /// The most failed attempts, on one row.
    most_attempts: i32,
}

async fn failed_rows(pool: &PgPool) -> FailedRows {
    let (rows, most_strikes, most_attempts) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE attempts > 0), coalesce(max(strikes), 0), \
                coalesce(max(attempts), 0) FROM outage",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    FailedRows {
        rows,
        most_strikes,
        most_attempts,
    }
}

/// Runs the outage with writers on `keys` keys and a relay configured by `configure`; returns
/// what the failed rows carried when the broker came back.
async fn outage(
    test: &str,
    keys: u32,
    configure: impl FnOnce(RelayBuilder) -> RelayBuilder,
) -> FailedRows {
    let Some(db) = ms_testkit::postgres().await else {
        return FailedRows::default();
    };
    let mut server = match ms_testkit::NatsServer::start().await {
        Ok(server) => server,
        Err(e) if !ms_testkit::require_services() => {
            eprintln!("SKIPPED {test}: {e}");
            return FailedRows::default();
        }
        Err(e) => panic!("starting a private nats-server: {e}"),
    };
    let pool = PgPoolOptions::new()
        .max_connections(WRITERS + 2)
        .connect(db.url())
        .await
        .unwrap();
    let outbox = Outbox::<Postgres>::new(TableName::new("outage").unwrap());
    outbox.migrate(&pool).await.unwrap();
    common::create_counters(&pool).await;

    let consumer_bus = bus(&server.url()).await;
    let tap = Tap::start(
        connect(&server.url()).await,
        consumer_bus.event_subject(TOPIC),
    )
    .await;
    let mut consumer = Consumer::start(
        &consumer_bus,
        // Short, so that a delivery whose ack the outage swallowed comes back soon.
        Subscription::events(TOPIC, "checker")
            .unwrap()
            .ack_wait(Duration::from_secs(2)),
    )
    .await;
    let relay = configure(Relay::builder(&outbox, &pool, bus(&server.url()).await))
        .build()
        .spawn();

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(keys, &pool, &outbox, &stop);
    // The relay is demonstrably publishing before the broker goes: the failures that follow
    // must still not count against the rows.
    consumer.wait_for(500, Duration::from_secs(30)).await;
    server.kill().await.unwrap();
    let killed = started.elapsed();
    let before = consumer.unique();
    tokio::time::sleep(OUTAGE).await;
    let during = common::pending(&outbox, &pool).await;
    let status = relay.status();
    let failed = failed_rows(&pool).await;
    assert!(during > 0, "rows waited for the broker");
    let parked = outbox.dead_letters(&pool, 100).await.unwrap();
    assert!(
        parked.is_empty(),
        "parked during the outage ({failed:?}): {parked:?}"
    );
    server.restart().await.unwrap();
    let restarted = started.elapsed();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    common::join_writers(writers).await;

    let counters = common::counters(&pool).await;
    let total: u64 = counters.values().map(|&n| u64::from(n)).sum();
    consumer.wait_for(total, Duration::from_secs(60)).await;
    let drained = started.elapsed();
    common::wait_drained(&outbox, &pool, Duration::from_secs(10)).await;
    let dead = outbox.dead_letters(&pool, 100).await.unwrap();
    let after = relay.status();
    relay.shutdown().await.unwrap();

    let (received, unique, duplicates) = consumer.counts();
    let tapped = tap.counts();
    println!(
        "outage: killed at {killed:?} after {before} events arrived; {during} rows pending \
         after {OUTAGE:?} down ({failed:?}; relay: {} failures, {} batch errors, last error {:?}); \
         restarted at {restarted:?}; all {total} arrived at {drained:?}; consumer received \
         {received} ({duplicates} duplicates); tap saw {} messages ({} republished); relay \
         at the end: {} published, {} failures, {} batch errors, {} parked",
        status.failures,
        status.batch_errors,
        status.last_error,
        tapped.messages,
        tapped.republished(),
        after.published,
        after.failures,
        after.batch_errors,
        after.parked,
    );
    assert!(dead.is_empty(), "parked during an outage: {dead:?}");
    assert_eq!(after.parked, 0);
    consumer.arrivals.lock().unwrap().assert_complete(&counters);
    assert_eq!(unique, total);
    assert_eq!(common::pending(&outbox, &pool).await, 0);
    failed
}

/// A relay started while its broker is down (deployed together, the broker slower to come
/// up) does not exit: with `retry_on_initial_connect` its client connects in the background,
/// the rows wait, and they are published once the broker is there, none parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_started_before_its_broker_publishes_once_the_broker_is_up() {
    const TEST: &str = "a_relay_started_before_its_broker_publishes_once_the_broker_is_up";
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
    server.stop().await.unwrap();
    let pool = db.pool().await;
    let outbox = Outbox::<Postgres>::new(TableName::new("early").unwrap());
    outbox.migrate(&pool).await.unwrap();
    common::create_counters(&pool).await;

    // `connect` returns at once although nothing listens: the client keeps trying.
    let relay_bus = bus(&server.url()).await;
    let stream = relay_bus.event_stream(TOPIC);
    let relay = Relay::builder(&outbox, &pool, relay_bus)
        .retry_delay(Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .spawn();
    common::write(&pool, &outbox, "k1", 20).await;
    // The relay waits for its publish (at most its publish timeout), the rows stay pending.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(common::pending(&outbox, &pool).await, 20);
    let waiting = relay.status();
    assert!(waiting.running, "{waiting:?}");

    server.restart().await.unwrap();
    common::wait_drained(&outbox, &pool, Duration::from_secs(60)).await;
    let status = relay.status();
    relay.shutdown().await.unwrap();
    assert_eq!(status.parked, 0);
    let js = async_nats::jetstream::new(connect(&server.url()).await);
    let stored = js
        .get_stream(&stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(stored, 20);
}
