//! A relay process killed with SIGKILL in the middle of a batch, under load, then started
//! again: every event arrives, per key in commit order, and what was published twice is
//! bounded by what the killed process had in flight (one batch per worker).
//!
//! The relay runs in a child process: this test binary itself, run again with
//! [`CHILD_ENV`] set so that [`child_relay`] (a no-op in a normal run) runs a relay until it is
//! killed.

#![cfg(feature = "postgres")]

mod common;

use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use ms_bus::Subscription;
use ms_bus::nats::NatsBus;
use ms_outbox::{Outbox, Relay, TableName};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use common::{Consumer, TOPIC, Tap};

/// Set in the child: `<database url>|<nats url>|<prefix>|<application name>`.
const CHILD_ENV: &str = "MS_OUTBOX_CHILD_RELAY";
/// The name of the child's entry test, for `--exact`.
const CHILD_TEST: &str = "child_relay";
const TABLE: &str = "crash";
const EVENTS: u32 = 20_000;
const KEYS: u32 = 50;
const WRITERS: u32 = 4;
/// Events per writer transaction, all of one key.
const PER_TX: u32 = 5;
const BATCH: usize = 500;
const WORKERS: usize = 2;
/// Events committed before the first relay starts: it starts behind and claims full batches,
/// and rows are still pending at each kill (the kills come well before this many).
const PREFILL: u32 = 12_000;
/// Each relay process is killed once it has reported this many rows published.
const KILL_AFTER: [u64; 2] = [2_000, 3_000];

fn outbox() -> Outbox<Postgres> {
    Outbox::new(TableName::new(TABLE).unwrap())
}

/// The relay process: runs only when started by the test below, until killed (or until the
/// test closes its stdin, so that a test that fails leaves no relay behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_relay() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let [db, nats, prefix, name] = spec.split('|').collect::<Vec<_>>()[..] else {
        panic!("{CHILD_ENV}={spec}: want 4 fields");
    };
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let options = PgConnectOptions::from_str(db)
        .unwrap()
        .application_name(name);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let bus = NatsBus::builder(async_nats::connect(nats).await.unwrap())
        .prefix(prefix)
        .unwrap()
        .build();
    let relay = Relay::builder(&outbox(), &pool, bus)
        .batch_size(BATCH)
        .concurrency(WORKERS)
        .build()
        .spawn();
    // The parent reads the committed count; after SIGKILL its last line is a lower bound.
    loop {
        println!("published {}", relay.status().published);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A relay process and the count it last reported.
struct RelayProcess {
    child: Child,
    name: String,
    published: watch::Receiver<u64>,
}

impl RelayProcess {
    fn start(db: &str, nats: &str, prefix: &str, n: usize) -> Self {
        let name = format!("ms-outbox-crash-relay-{n}");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, format!("{db}|{nats}|{prefix}|{name}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tell, published) = watch::channel(0);
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(n) = line.strip_prefix("published ") {
                    tell.send_replace(n.parse().unwrap());
                }
            }
        });
        Self {
            child,
            name,
            published,
        }
    }

    /// Waits until the relay holds a shard lock, i.e. a batch is between its claim and its
    /// commit, and kills it there with SIGKILL.
    async fn kill_mid_batch(&mut self, pool: &PgPool) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let held: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1",
            )
            .bind(&self.name)
            .fetch_one(pool)
            .await
            .unwrap();
            if held > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never held a shard",
                self.name
            );
            // Nothing signals "a batch is in flight" to another process: poll.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.child.start_kill().unwrap();
        let status = self.child.wait().await.unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "{} was killed: {status}",
            self.name
        );
        *self.published.borrow()
    }

    /// Waits until the relay reported `n` rows published.
    async fn wait_published(&mut self, n: u64) {
        tokio::time::timeout(
            Duration::from_secs(60),
            self.published.wait_for(|&p| p >= n),
        )
        .await
        .unwrap_or_else(|_| panic!("{} did not publish {n} rows within a minute", self.name))
        .unwrap_or_else(|_| panic!("{} stopped", self.name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_batch_loses_nothing_and_duplicates_at_most_its_batches() {
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
    let outbox = outbox();
    outbox.migrate(&pool).await.unwrap();
    common::create_counters(&pool).await;
    let bus = NatsBus::builder(nats.client().await)
        .prefix(nats.prefix())
        .unwrap()
        .build();
    let tap = Tap::start(nats.client().await, bus.event_subject(TOPIC)).await;
    let mut consumer = Consumer::start(&bus, Subscription::events(TOPIC, "checker").unwrap()).await;

    // Most events first, so the relay starts behind and claims full batches; the rest while
    // it runs and is killed.
    let started = Instant::now();
    let per_writer = PREFILL / WRITERS;
    common::join_writers(common::spawn_writers(
        &pool, &outbox, WRITERS, per_writer, PER_TX, KEYS,
    ))
    .await;
    let per_writer = (EVENTS - PREFILL) / WRITERS;
    let writers = common::spawn_writers(&pool, &outbox, WRITERS, per_writer, PER_TX, KEYS);
    let start = |n| RelayProcess::start(db.url(), nats.url(), nats.prefix(), n);
    let mut relay = start(0);
    let mut kills = Vec::new();
    for (n, after) in KILL_AFTER.into_iter().enumerate() {
        relay.wait_published(after).await;
        let published = relay.kill_mid_batch(&pool).await;
        let pending = common::pending(&outbox, &pool).await;
        let tapped = tap.counts();
        kills.push(format!(
            "kill {n} after {:?}: the relay had reported {published} published; {pending} \
             rows pending; so far {} messages on the wire, {} republished",
            started.elapsed(),
            tapped.messages,
            tapped.republished()
        ));
        assert!(pending > 0, "killed while rows were pending");
        relay = start(n + 1);
    }
    common::join_writers(writers).await;
    consumer
        .wait_for(u64::from(EVENTS), Duration::from_secs(120))
        .await;
    common::wait_drained(&outbox, &pool, Duration::from_secs(10)).await;
    let last = *relay.published.borrow();
    drop(relay);

    let (received, unique, duplicates) = consumer.counts();
    let tapped = tap.counts();
    for kill in &kills {
        println!("crash: {kill}");
    }
    println!(
        "crash: {EVENTS} events in {:?}; the last relay reported {last}+ published; \
         published on the wire {} times ({} republished, {} distinct); consumer received \
         {received} ({duplicates} duplicates)",
        started.elapsed(),
        tapped.messages,
        tapped.republished(),
        tapped.distinct
    );
    let counters = common::counters(&pool).await;
    consumer.arrivals.lock().unwrap().assert_complete(&counters);
    assert_eq!(unique, u64::from(EVENTS));
    let bound = (BATCH * WORKERS * KILL_AFTER.len()) as u64;
    assert!(
        tapped.republished() <= bound,
        "{} republished, more than {bound}",
        tapped.republished()
    );
    assert!(duplicates <= bound, "{duplicates} duplicates");
}
