//! The outbox's semantics on SQLite, the embedded default (one relay per database), with a
//! database file and the memory bus: the same promises as on PostgreSQL.
#![cfg(feature = "sqlite")]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use ms_bus::memory::MemoryBus;
use ms_bus::{
    BusError, CommandSender, Deliveries, Envelope, EventPublisher, Subscriber, Subscription,
};
use ms_outbox::{Outbox, OutboxMessage, Relay, RelayHandle, Retention};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Pool, Sqlite};
use tokio::sync::Semaphore;

/// Long enough that a test passing within [`WAIT`] cannot have been served by a poll.
const LONG_POLL: Duration = Duration::from_secs(30);
/// How long a test waits for something that should happen at once.
const WAIT: Duration = Duration::from_secs(10);

/// A SQLite file in the temp directory, removed (with its journal) when dropped.
struct TempDb {
    path: PathBuf,
}

impl TempDb {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "ms-outbox-sqlite-{}-{}.db",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        Self { path }
    }

    fn options(&self) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(true)
    }

    async fn pool(&self) -> Pool<Sqlite> {
        SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(self.options())
            .await
            .expect("open the SQLite file")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

fn event(key: &str, seq: u32) -> OutboxMessage {
    let envelope = Envelope::builder("test.happened", "/test")
        .subject(key)
        .extension("seq", seq.to_string())
        .expect("valid extension")
        .build()
        .expect("valid envelope");
    OutboxMessage::event("test.events", envelope)
}

async fn setup() -> (TempDb, Pool<Sqlite>, Outbox<Sqlite>, MemoryBus, Deliveries) {
    let db = TempDb::new();
    let pool = db.pool().await;
    let outbox = Outbox::<Sqlite>::default();
    outbox.migrate(&pool).await.unwrap();
    outbox
        .migrate(&pool)
        .await
        .expect("migrating twice is harmless");
    let bus = MemoryBus::new();
    let deliveries = bus
        .subscribe(&Subscription::events("test.events", "checker").unwrap())
        .await
        .unwrap();
    (db, pool, outbox, bus, deliveries)
}

/// The next delivery's (subject, seq), acknowledged.
async fn next(deliveries: &mut Deliveries) -> (String, u32, String) {
    let delivery = tokio::time::timeout(WAIT, deliveries.next())
        .await
        .expect("published in time")
        .expect("stream open")
        .expect("delivered");
    let message = delivery.message().expect("decodable");
    let key = message.subject().expect("a subject").to_owned();
    let seq = message.extension("seq").map_or(0, |s| s.parse().unwrap());
    let id = message.id().to_owned();
    delivery.acker().ack().await.unwrap();
    (key, seq, id)
}

async fn nothing_more(deliveries: &mut Deliveries) {
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), deliveries.next())
            .await
            .is_err(),
        "nothing else is published"
    );
}

/// Waits until the relay has polled once, so that what follows can only be found by a
/// wake-up or the next poll.
async fn polled_once(relay: &RelayHandle) {
    tokio::time::timeout(WAIT, async {
        while relay.status().last_heartbeat.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the relay polls at start");
}

async fn enqueue(pool: &Pool<Sqlite>, outbox: &Outbox<Sqlite>, message: OutboxMessage) {
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut *tx, message).await.unwrap();
    tx.commit().await.unwrap();
}

async fn count(pool: &Pool<Sqlite>, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_event_is_never_published_and_a_committed_one_once_at_once() {
    let (_db, pool, outbox, bus, mut deliveries) = setup().await;
    let relay = Relay::builder(&outbox, &pool, bus.clone())
        .poll_interval(LONG_POLL)
        .build()
        .spawn();
    polled_once(&relay).await;

    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut *tx, event("rolled-back", 1))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    enqueue(&pool, &outbox, event("committed", 2)).await;

    // Well before the next poll: the in-process wake-up found it.
    let (key, seq, _) = next(&mut deliveries).await;
    assert_eq!((key.as_str(), seq), ("committed", 2));
    nothing_more(&mut deliveries).await;
    assert_eq!(relay.status().published, 1);
    relay.shutdown().await.unwrap();
    assert_eq!(outbox.backlog(&pool).await.unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_events_over_several_keys_are_published_in_order_per_key() {
    let (_db, pool, outbox, bus, mut deliveries) = setup().await;
    let relay = Relay::builder(&outbox, &pool, bus.clone())
        .batch_size(50)
        .build()
        .spawn();
    sqlx::query("CREATE TABLE counters (key TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();

    // Writers bump a per-key counter in the transaction that enqueues, as an aggregate update
    // would; the counter value is the key's commit order.
    let (writers, per_writer, keys) = (4u32, 100u32, 7u32);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (pool, outbox) = (pool.clone(), outbox.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let key = format!("k{}", (i * 3 + w) % keys);
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
                let n: i64 = sqlx::query_scalar(
                    "INSERT INTO counters VALUES (?1, 1) ON CONFLICT (key) \
                     DO UPDATE SET n = n + 1 RETURNING n",
                )
                .bind(&key)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                outbox
                    .enqueue(&mut *tx, event(&key, u32::try_from(n).unwrap()))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut last: HashMap<String, u32> = HashMap::new();
    for _ in 0..writers * per_writer {
        let (key, seq, _) = next(&mut deliveries).await;
        let previous = last.insert(key.clone(), seq).unwrap_or(0);
        assert_eq!(seq, previous + 1, "key {key}: {seq} after {previous}");
    }
    assert_eq!(last.len(), 7, "every key published");
    nothing_more(&mut deliveries).await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_row_is_parked_at_once_while_the_others_flow() {
    let (_db, pool, outbox, bus, mut deliveries) = setup().await;
    enqueue(&pool, &outbox, event("poison", 1)).await;
    // A row no writer of this crate could produce: a damaged or hand-edited table.
    let bad_id = sqlx::query(
        "INSERT INTO ms_outbox (shard, partition_key, kind, destination, envelope, created_at) \
         VALUES (0, 'poison', 0, 'test.events', 'not json', \
                 CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))",
    )
    .execute(&pool)
    .await
    .unwrap()
    .last_insert_rowid();
    enqueue(&pool, &outbox, event("poison", 3)).await;
    enqueue(&pool, &outbox, event("a", 1)).await;
    enqueue(&pool, &outbox, event("b", 1)).await;

    let relay = Relay::builder(&outbox, &pool, bus.clone())
        .poll_interval(LONG_POLL)
        .build()
        .spawn();
    let mut seen = HashSet::new();
    for _ in 0..3 {
        let (key, seq, _) = next(&mut deliveries).await;
        seen.insert((key, seq));
    }
    let expected: HashSet<_> = [("poison", 1), ("a", 1), ("b", 1)]
        .into_iter()
        .map(|(k, s)| (k.to_owned(), s))
        .collect();
    assert_eq!(seen, expected);
    // The key's later row waits for the parked one (the default, `OnPoison::BlockKey`).
    nothing_more(&mut deliveries).await;

    let dead = outbox.dead_letters(&pool, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let parked = &dead[0];
    assert_eq!(parked.id, bad_id);
    assert_eq!(
        (parked.partition_key.as_str(), parked.envelope.as_str()),
        ("poison", "not json")
    );
    assert_eq!(parked.attempts, 1, "parked at the first attempt");
    assert!(
        parked.error.contains("cannot be decoded"),
        "{}",
        parked.error
    );
    assert!(parked.blocks_key);
    let status = relay.status();
    assert_eq!((status.published, status.parked), (3, 1));
    let backlog = outbox.backlog(&pool).await.unwrap();
    assert_eq!((backlog.pending, backlog.dead_letters), (1, 1));

    // Discarding it releases the key, and the relay hears of it at once.
    assert!(outbox.discard(&pool, bad_id).await.unwrap());
    assert!(!outbox.discard(&pool, bad_id).await.unwrap());
    let (key, seq, _) = next(&mut deliveries).await;
    assert_eq!((key.as_str(), seq), ("poison", 3));
    assert!(outbox.dead_letters(&pool, 10).await.unwrap().is_empty());
    relay.shutdown().await.unwrap();
    assert_eq!(outbox.backlog(&pool).await.unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_rows_are_marked_and_removed_after_the_retention() {
    let (_db, pool, outbox, bus, mut deliveries) = setup().await;
    // Cleanup runs every tenth of the retention (at least every second): every 3 s here.
    let retention = Duration::from_secs(30);
    let relay = Relay::builder(&outbox, &pool, bus.clone())
        .retention(Retention::Keep(retention))
        .build()
        .spawn();
    enqueue(&pool, &outbox, event("old", 1)).await;
    enqueue(&pool, &outbox, event("fresh", 1)).await;
    next(&mut deliveries).await;
    next(&mut deliveries).await;

    // Published: marked, not deleted, and no longer pending. The relay's batch is committed
    // once the status counts it.
    tokio::time::timeout(WAIT, async {
        while relay.status().published < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM ms_outbox WHERE published_at IS NOT NULL"
        )
        .await,
        2
    );
    assert_eq!(outbox.backlog(&pool).await.unwrap().pending, 0);

    // One row published long ago: the next cleanup removes it, and only it.
    sqlx::query(
        "UPDATE ms_outbox SET published_at = published_at - 3600000 WHERE partition_key = 'old'",
    )
    .execute(&pool)
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(15), async {
        while count(
            &pool,
            "SELECT count(*) FROM ms_outbox WHERE partition_key = 'old'",
        )
        .await
            > 0
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the old row is cleaned up");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM ms_outbox WHERE partition_key = 'fresh'"
        )
        .await,
        1
    );
    nothing_more(&mut deliveries).await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_the_current_batch_and_a_new_relay_goes_on_without_duplicates() {
    let (_db, pool, outbox, bus, mut deliveries) = setup().await;
    let total = 3000;
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue_all(
            &mut *tx,
            (1..=total).map(|i| event(&format!("k{}", i % 5), i)),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let relay = Relay::builder(&outbox, &pool, bus.clone())
        .batch_size(100)
        .build()
        .spawn();
    let monitor = relay.monitor();
    let mut ids = HashSet::new();
    let (_, _, id) = next(&mut deliveries).await;
    ids.insert(id);
    relay.shutdown().await.expect("a graceful stop");
    let status = monitor.status();
    assert!(!status.running);
    // Whatever was counted as published is gone from the table: no batch was cut.
    let pending = outbox.backlog(&pool).await.unwrap().pending;
    assert_eq!(pending + status.published, u64::from(total));
    eprintln!("stopped after {} of {total}", status.published);

    let relay = Relay::builder(&outbox, &pool, bus.clone())
        .batch_size(100)
        .build()
        .spawn();
    for _ in 1..total {
        let (_, _, id) = next(&mut deliveries).await;
        assert!(ids.insert(id), "published twice");
    }
    nothing_more(&mut deliveries).await;
    relay.shutdown().await.unwrap();
    assert_eq!(outbox.backlog(&pool).await.unwrap().pending, 0);
}

/// The memory bus behind a gate: each publication takes a permit, so a test holds the relay
/// mid-publication as a slow or unreachable broker would, and lets it go.
#[derive(Clone)]
struct GatedBus {
    bus: MemoryBus,
    gate: Arc<Semaphore>,
    entered: Arc<tokio::sync::Notify>,
}

impl GatedBus {
    async fn pass(&self) -> Result<(), BusError> {
        self.entered.notify_one();
        let permit = self.gate.acquire().await.map_err(|_| BusError::Closed)?;
        permit.forget();
        Ok(())
    }
}

impl EventPublisher for GatedBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        event: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.pass().await?;
            self.bus.publish(topic, event).await
        })
    }
}

impl CommandSender for GatedBus {
    fn send<'a>(
        &'a self,
        destination: &'a str,
        command: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.pass().await?;
            self.bus.send(destination, command).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broker_does_not_block_the_application_s_writes() {
    let (db, pool, outbox, bus, mut deliveries) = setup().await;
    let gated = GatedBus {
        bus,
        gate: Arc::new(Semaphore::new(0)),
        entered: Arc::new(tokio::sync::Notify::new()),
    };
    let relay = Relay::builder(&outbox, &pool, gated.clone())
        .build()
        .spawn();
    enqueue(&pool, &outbox, event("a", 1)).await;
    tokio::time::timeout(WAIT, gated.entered.notified())
        .await
        .expect("the relay publishes");

    // The relay is stuck publishing. The application writes on, with a short busy timeout so
    // that a held write lock shows up as "database is locked" rather than as a long wait.
    let app = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(db.options().busy_timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    let mut tx = app.begin().await.unwrap();
    outbox
        .enqueue(&mut *tx, event("a", 2))
        .await
        .expect("the outbox takes writes while the broker is slow");
    tx.commit().await.unwrap();

    gated.gate.add_permits(1000);
    let (_, first, _) = next(&mut deliveries).await;
    let (_, second, _) = next(&mut deliveries).await;
    assert_eq!((first, second), (1, 2));
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_batch_in_flight_and_commits_it() {
    let (_db, pool, outbox, bus, mut deliveries) = setup().await;
    let gated = GatedBus {
        bus,
        gate: Arc::new(Semaphore::new(0)),
        entered: Arc::new(tokio::sync::Notify::new()),
    };
    let relay = Relay::builder(&outbox, &pool, gated.clone())
        .build()
        .spawn();
    let monitor = relay.monitor();
    enqueue(&pool, &outbox, event("a", 1)).await;
    tokio::time::timeout(WAIT, gated.entered.notified())
        .await
        .expect("the relay publishes");

    let stopping = tokio::spawn(relay.shutdown());
    // The stop waits for the publication in flight rather than cutting it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stopping.is_finished(), "the stop waits for the batch");
    gated.gate.add_permits(1000);
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("stops once the batch is done")
        .unwrap()
        .expect("a graceful stop");
    let status = monitor.status();
    assert_eq!((status.running, status.published), (false, 1));
    assert_eq!(outbox.backlog(&pool).await.unwrap().pending, 0, "committed");
    next(&mut deliveries).await;
    nothing_more(&mut deliveries).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_qualified_outbox_migrates_and_relays() {
    let db = TempDb::new();
    let pool = db.pool().await;
    let outbox = Outbox::<Sqlite>::new(ms_outbox::TableName::new("main.events").unwrap());
    outbox.migrate(&pool).await.unwrap();
    outbox.migrate(&pool).await.unwrap();
    let bus = MemoryBus::new();
    let mut deliveries = bus
        .subscribe(&Subscription::events("test.events", "checker").unwrap())
        .await
        .unwrap();
    let relay = Relay::builder(&outbox, &pool, bus.clone()).build().spawn();
    enqueue(&pool, &outbox, event("a", 1)).await;
    let (key, seq, _) = next(&mut deliveries).await;
    assert_eq!((key.as_str(), seq), ("a", 1));
    relay.shutdown().await.unwrap();
    assert_eq!(outbox.backlog(&pool).await.unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repaired_dead_letter_replays_ahead_of_the_rows_of_its_key_that_waited() {
    let (_db, pool, outbox, bus, mut deliveries) = setup().await;
    // A damaged row: parked at its first attempt, holding back the later rows of its key.
    let parked_id = sqlx::query(
        "INSERT INTO ms_outbox (shard, partition_key, kind, destination, envelope, created_at) \
         VALUES (0, 'k', 0, 'test.events', 'not json', \
                 CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))",
    )
    .execute(&pool)
    .await
    .unwrap()
    .last_insert_rowid();
    enqueue(&pool, &outbox, event("k", 2)).await;
    enqueue(&pool, &outbox, event("k", 3)).await;
    enqueue(&pool, &outbox, event("x", 1)).await;

    let relay = Relay::builder(&outbox, &pool, bus.clone())
        .poll_interval(LONG_POLL)
        .build()
        .spawn();
    let (key, seq, _) = next(&mut deliveries).await;
    assert_eq!((key.as_str(), seq), ("x", 1));
    nothing_more(&mut deliveries).await;
    let dead = outbox.dead_letters(&pool, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id, dead[0].attempts), (parked_id, 1));

    // Repaired, and replayed under its own id: it goes out first, then the key's rows.
    let envelope = event("k", 1).envelope().clone();
    let json = String::from_utf8(ms_bus::codec::to_json(&envelope).to_vec()).unwrap();
    sqlx::query("UPDATE ms_outbox_dead_letters SET envelope = ?2 WHERE id = ?1")
        .bind(parked_id)
        .bind(json)
        .execute(&pool)
        .await
        .unwrap();
    assert!(outbox.replay(&pool, parked_id).await.unwrap());
    assert!(!outbox.replay(&pool, parked_id).await.unwrap());
    for expected in 1..=3 {
        let (key, seq, _) = next(&mut deliveries).await;
        assert_eq!((key.as_str(), seq), ("k", expected));
    }
    nothing_more(&mut deliveries).await;
    assert!(outbox.dead_letters(&pool, 10).await.unwrap().is_empty());
    relay.shutdown().await.unwrap();
    assert_eq!(outbox.backlog(&pool).await.unwrap().pending, 0);
}

/// The memory bus, unreachable while `down` is set: every publication fails as a lost
/// connection would.
#[derive(Clone)]
struct FlakyBus {
    bus: MemoryBus,
    down: Arc<std::sync::atomic::AtomicBool>,
    refused: Arc<AtomicU32>,
}

impl FlakyBus {
    fn reachable(&self) -> Result<(), BusError> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(BusError::Connection("broker unreachable".into()));
        }
        Ok(())
    }
}

impl EventPublisher for FlakyBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        event: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.reachable()?;
            self.bus.publish(topic, event).await
        })
    }
}

impl CommandSender for FlakyBus {
    fn send<'a>(
        &'a self,
        destination: &'a str,
        command: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.reachable()?;
            self.bus.send(destination, command).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_parks_nothing_and_each_key_resumes_in_order() {
    let (_db, pool, outbox, bus, mut deliveries) = setup().await;
    let flaky = FlakyBus {
        bus,
        down: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        refused: Arc::new(AtomicU32::new(0)),
    };
    // Few attempts and short delays: were outage failures counted, rows would be parked soon.
    let relay = Relay::builder(&outbox, &pool, flaky.clone())
        .max_attempts(2)
        .retry_delay(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .spawn();
    // The broker was up a moment ago: the relay's strike window is open.
    enqueue(&pool, &outbox, event("warm", 1)).await;
    next(&mut deliveries).await;
    flaky.down.store(true, Ordering::SeqCst);
    for seq in 1..=5 {
        for key in ["a", "b"] {
            enqueue(&pool, &outbox, event(key, seq)).await;
        }
    }
    // Many refused attempts, well past max_attempts.
    tokio::time::timeout(WAIT, async {
        while flaky.refused.load(Ordering::SeqCst) < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the relay keeps trying");
    assert!(outbox.dead_letters(&pool, 10).await.unwrap().is_empty());
    assert_eq!(relay.status().parked, 0);

    flaky.down.store(false, Ordering::SeqCst);
    let mut last: HashMap<String, u32> = HashMap::new();
    for _ in 0..10 {
        let (key, seq, _) = next(&mut deliveries).await;
        let previous = last.insert(key.clone(), seq).unwrap_or(0);
        assert_eq!(seq, previous + 1, "key {key}: {seq} after {previous}");
    }
    nothing_more(&mut deliveries).await;
    relay.shutdown().await.unwrap();
    let backlog = outbox.backlog(&pool).await.unwrap();
    assert_eq!((backlog.pending, backlog.dead_letters), (0, 0));
}
