//! The database crashes under the relay: a private PostgreSQL killed with SIGKILL (postmaster and
//! every backend) while relays publish and writers write, then restarted with crash recovery.
//! The relays reconnect by themselves; every committed event arrives, per key in order, nothing
//! is parked, the backlog drains.

#![cfg(feature = "postgres")]

mod common;

use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ms_bus::Subscription;
use ms_bus::nats::NatsBus;
use ms_outbox::{Outbox, Relay, TableName};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use common::{Consumer, TOPIC};

const WRITERS: u32 = 4;
const KEYS: u32 = 20;
const PER_TX: u32 = 5;
/// A writer's pause between two transactions.
const WRITE_EVERY: Duration = Duration::from_millis(10);
/// How long the database stays down.
const DOWN: Duration = Duration::from_secs(3);
/// How long the writers go on after the restart.
const AFTER: Duration = Duration::from_secs(2);
/// The relays' connections' `application_name`.
const RELAY_APPLICATION: &str = "ms-outbox-relay";

/// Writers enqueueing until `stop`; a transaction that fails (the database is down) is retried,
/// as an application would. Counts the failed attempts.
fn spawn_writers(
    pool: &PgPool,
    outbox: &Outbox<Postgres>,
    stop: &Arc<AtomicBool>,
    failed: &Arc<AtomicU64>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (pool, outbox) = (pool.clone(), outbox.clone());
        let (stop, failed) = (stop.clone(), failed.clone());
        set.spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{}", (i * 7 + w * 13) % KEYS);
                if common::try_write(&pool, &outbox, &key, PER_TX)
                    .await
                    .is_ok()
                {
                    i += 1;
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                // Pacing, not synchronisation: a steady stream of writes.
                tokio::time::sleep(WRITE_EVERY).await;
            }
        });
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_under_the_relays_loses_nothing_and_reorders_nothing() {
    // Only where PostgreSQL is expected at all: the shared server's presence says so.
    let Some(_shared) = ms_testkit::postgres().await else {
        return;
    };
    let Some(nats) = ms_testkit::nats().await else {
        return;
    };
    let mut server = ms_testkit::PostgresServer::start().await.unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(WRITERS + 2)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&server.url())
        .await
        .unwrap();
    let outbox = Outbox::<Postgres>::new(TableName::new("crashing").unwrap());
    outbox.migrate(&pool).await.unwrap();
    common::create_counters(&pool).await;
    let bus = NatsBus::builder(nats.client().await)
        .prefix(nats.prefix())
        .unwrap()
        .build();
    let mut consumer = Consumer::start(&bus, Subscription::events(TOPIC, "checker").unwrap()).await;
    let mut relays = Vec::new();
    for _ in 0..2 {
        let options = PgConnectOptions::from_str(&server.url())
            .unwrap()
            .application_name(RELAY_APPLICATION);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2))
            .connect_with(options)
            .await
            .unwrap();
        relays.push(
            Relay::builder(&outbox, &pool, bus.clone())
                .batch_size(200)
                .build()
                .spawn(),
        );
    }

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let writers = spawn_writers(&pool, &outbox, &stop, &failed);
    consumer.wait_for(1_000, Duration::from_secs(30)).await;
    // Most likely mid-batch: a relay held a shard a moment ago (batches are short).
    batch_in_flight(&pool).await;
    server.kill().await.unwrap();
    let killed = started.elapsed();
    tokio::time::sleep(DOWN).await;
    server.restart().await.unwrap();
    let restarted = started.elapsed();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    common::join_writers(writers).await;

    // What crash recovery kept is what was committed: every one of those events must arrive.
    let counters = common::counters(&pool).await;
    let total: u64 = counters.values().map(|&n| u64::from(n)).sum();
    consumer.wait_for(total, Duration::from_secs(60)).await;
    let drained = started.elapsed();
    common::wait_drained(&outbox, &pool, Duration::from_secs(10)).await;
    let dead = outbox.dead_letters(&pool, 100).await.unwrap();
    let statuses: Vec<_> = relays.iter().map(ms_outbox::RelayHandle::status).collect();
    for relay in relays {
        relay.shutdown().await.unwrap();
    }

    let (received, unique, duplicates) = consumer.counts();
    let batch_errors: Vec<u64> = statuses.iter().map(|s| s.batch_errors).collect();
    println!(
        "database crash: killed at {killed:?}, restarted at {restarted:?}; {} writer \
         transactions failed meanwhile; all {total} committed events arrived at {drained:?}; \
         relay batch errors {batch_errors:?}; consumer received {received} ({duplicates} \
         duplicates)",
        failed.load(Ordering::Relaxed)
    );
    assert!(dead.is_empty(), "parked: {dead:?}");
    assert!(failed.load(Ordering::Relaxed) > 0, "writers saw the crash");
    consumer.arrivals.lock().unwrap().assert_complete(&counters);
    assert_eq!(unique, total);
    for status in &statuses {
        assert!(status.running, "{status:?}");
    }
}

/// Waits until a relay holds a shard lock: a batch is between its claim and its commit.
async fn batch_in_flight(pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1",
        )
        .bind(RELAY_APPLICATION)
        .fetch_one(pool)
        .await
        .unwrap();
        if held > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no relay ever held a shard");
        // Nothing signals "a batch is in flight" to another connection: poll.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
