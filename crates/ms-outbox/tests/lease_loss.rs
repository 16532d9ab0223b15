//! A relay that loses its database connection in the middle of a batch: PostgreSQL ends its
//! transaction (and with it the shard lock) while the relay is still publishing, so another
//! relay can take the shard and publish the same rows at the same time. The relay docs promise
//! duplicates at most, never a loss, and never a row published for the first time after a later
//! row of its key.

#![cfg(feature = "postgres")]

mod common;

use std::str::FromStr as _;
use std::time::{Duration, Instant};

use ms_bus::Subscription;
use ms_bus::nats::NatsBus;
use ms_outbox::{Outbox, Relay, TableName};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use common::{Consumer, TOPIC, Tap};

const EVENTS: u32 = 10_000;
const WRITERS: u32 = 4;
const PER_TX: u32 = 5;
const KEYS: u32 = 30;
const RELAYS: usize = 2;
/// How many mid-batch connections the test terminates.
const TERMINATIONS: usize = 15;
const APPLICATION: &str = "ms-outbox-lease-relay";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_losing_its_connection_mid_batch_loses_and_reorders_nothing() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let Some(nats) = ms_testkit::nats().await else {
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(WRITERS + 2)
        .connect(db.url())
        .await
        .unwrap();
    let outbox = Outbox::<Postgres>::new(TableName::new("lease").unwrap());
    outbox.migrate(&pool).await.unwrap();
    common::create_counters(&pool).await;
    let bus = NatsBus::builder(nats.client().await)
        .prefix(nats.prefix())
        .unwrap()
        .build();
    let tap = Tap::start(nats.client().await, bus.event_subject(TOPIC)).await;
    let mut consumer = Consumer::start(&bus, Subscription::events(TOPIC, "checker").unwrap()).await;

    // Most events first, so the relays have full batches in flight when connections go.
    let started = Instant::now();
    common::join_writers(common::spawn_writers(
        &pool,
        &outbox,
        WRITERS,
        EVENTS / 2 / WRITERS,
        PER_TX,
        KEYS,
    ))
    .await;
    let writers =
        common::spawn_writers(&pool, &outbox, WRITERS, EVENTS / 2 / WRITERS, PER_TX, KEYS);
    let mut relays = Vec::new();
    for _ in 0..RELAYS {
        let options = PgConnectOptions::from_str(db.url())
            .unwrap()
            .application_name(APPLICATION);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap();
        let bus = NatsBus::builder(nats.client().await)
            .prefix(nats.prefix())
            .unwrap()
            .build();
        relays.push(
            Relay::builder(&outbox, &pool, bus)
                .batch_size(200)
                .concurrency(2)
                .build()
                .spawn(),
        );
    }

    let terminated = terminate_mid_batch(&pool, &outbox).await;
    let terminations_done = started.elapsed();
    common::join_writers(writers).await;
    consumer
        .wait_for(u64::from(EVENTS), Duration::from_secs(120))
        .await;
    common::wait_drained(&outbox, &pool, Duration::from_secs(30)).await;
    let statuses: Vec<_> = relays.iter().map(ms_outbox::RelayHandle::status).collect();
    for relay in relays {
        relay.shutdown().await.unwrap();
    }

    let (received, unique, duplicates) = consumer.counts();
    let tapped = tap.counts();
    let batch_errors: Vec<u64> = statuses.iter().map(|s| s.batch_errors).collect();
    println!(
        "lease loss: {terminated} terminations by {terminations_done:?}; {EVENTS} events in \
         {:?}; batch errors {batch_errors:?}; {} messages on the wire ({} republished); \
         consumer received {received} ({duplicates} duplicates)",
        started.elapsed(),
        tapped.messages,
        tapped.republished()
    );
    let counters = common::counters(&pool).await;
    consumer.arrivals.lock().unwrap().assert_complete(&counters);
    assert_eq!(unique, u64::from(EVENTS));
    assert!(
        batch_errors.iter().sum::<u64>() > 0,
        "the terminations cut batches"
    );
}

/// Terminates the backend of a relay that holds a shard lock, i.e. one between its claim and
/// its commit, again and again while there is work; returns how many it terminated.
async fn terminate_mid_batch(pool: &PgPool, outbox: &Outbox<Postgres>) -> usize {
    let mut terminated = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while terminated < TERMINATIONS && Instant::now() < deadline {
        let done: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1 \
             LIMIT 1",
        )
        .bind(APPLICATION)
        .fetch_all(pool)
        .await
        .unwrap();
        terminated += done.into_iter().filter(|&t| t).count();
        if common::pending(outbox, pool).await == 0 {
            break;
        }
        // Nothing signals "a batch is in flight" to another process: poll.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        terminated >= TERMINATIONS / 3,
        "only {terminated} mid-batch terminations"
    );
    terminated
}
