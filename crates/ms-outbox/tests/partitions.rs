//! Partitioned outboxes on a real PostgreSQL: partitions created ahead, old published ones
//! dropped whole, pending rows pin theirs, replays and late rows land in the default
//! partition, and the relay's promises (once, in order per key, nothing lost) hold across
//! partitions.
#![cfg(feature = "postgres")]

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use ms_bus::memory::MemoryBus;
use ms_bus::{Delivery, Envelope, Subscriber, Subscription};
use ms_outbox::{Outbox, OutboxMessage, PartitionInterval, Relay, Retention, TableName};
use sqlx::{PgPool, Postgres};
use time::OffsetDateTime;

const TOPIC: &str = "parts.events";
const WAIT: Duration = Duration::from_secs(20);

fn event(key: &str, seq: u32) -> OutboxMessage {
    let envelope = Envelope::builder("test.happened", "/test")
        .subject(key)
        .extension("seq", seq.to_string())
        .unwrap()
        .build()
        .unwrap();
    OutboxMessage::event(TOPIC, envelope)
}

fn outbox(table: &str, interval: PartitionInterval) -> Outbox<Postgres> {
    Outbox::<Postgres>::builder(TableName::new(table).unwrap())
        .shards(4)
        .partitioned(interval)
        .build()
}

async fn enqueue(pool: &PgPool, outbox: &Outbox<Postgres>, messages: Vec<OutboxMessage>) {
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_all(&mut *tx, messages).await.unwrap();
    tx.commit().await.unwrap();
}

/// The partitions of `table`, by name.
async fn partitions(pool: &PgPool, table: &str) -> Vec<String> {
    let mut names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = to_regclass($1)",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap();
    names.sort();
    names
}

/// Where each row of `key` is stored, in id order.
async fn homes(pool: &PgPool, table: &str, key: &str) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT tableoid::regclass::text FROM {table} WHERE partition_key = $1 ORDER BY id"
    )))
    .bind(key)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The start of the UTC hour `hours` before the current one, and the partition name (suffix)
/// this crate gives it.
async fn hour(pool: &PgPool, hours: i32) -> (OffsetDateTime, String) {
    let row: (OffsetDateTime, String) = sqlx::query_as(
        "SELECT t AT TIME ZONE 'UTC', to_char(t, 'YYYYMMDDHH24') \
         FROM (SELECT date_trunc('hour', now() AT TIME ZONE 'UTC') \
                      - $1 * interval '1 hour' AS t) AS s",
    )
    .bind(hours)
    .fetch_one(pool)
    .await
    .unwrap();
    (row.0, format!("_p{}", row.1))
}

/// Creates the partition of an hour in the past, as a relay running back then did.
async fn past_partition(pool: &PgPool, table: &str, hours: i32) -> (OffsetDateTime, String) {
    let (start, suffix) = hour(pool, hours).await;
    let name = format!("{table}{suffix}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ('{from}') TO ('{to}')",
        from = start,
        to = start + Duration::from_secs(3600),
    )))
    .execute(pool)
    .await
    .unwrap();
    (start, name)
}

async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let waited = tokio::time::timeout(WAIT, async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

async fn next(
    deliveries: &mut (impl StreamExt<Item = Result<Delivery, ms_bus::BusError>> + Unpin),
) -> (String, u32) {
    let delivery = tokio::time::timeout(WAIT, deliveries.next())
        .await
        .expect("published in time")
        .expect("stream open")
        .unwrap();
    let (envelope, _, acker) = delivery.into_parts();
    let envelope = envelope.unwrap();
    acker.ack().await.unwrap();
    (
        envelope.subject().unwrap().to_owned(),
        envelope.extension("seq").unwrap().parse().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_table_partitioned_with_partitions_ahead_and_only_when_new() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let outbox = outbox("parts", PartitionInterval::Day);
    // Several processes migrating at once do not fail each other.
    let migrations: Vec<_> = (0..4)
        .map(|_| {
            let (pool, outbox) = (pool.clone(), outbox.clone());
            tokio::spawn(async move { outbox.migrate(&pool).await })
        })
        .collect();
    for migration in migrations {
        migration.await.unwrap().unwrap();
    }
    let kind: String =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = 'parts'::regclass")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kind, "p");
    let names = partitions(&pool, "parts").await;
    // The default partition, today's and the next ones.
    assert_eq!(
        names.len(),
        2 + ms_outbox::PARTITIONS_AHEAD as usize,
        "{names:?}"
    );
    assert!(names.contains(&"parts_default".to_owned()));
    assert!(
        outbox.migrations()[0]
            .sql
            .contains("PARTITION BY RANGE (created_at)")
    );

    // A table created unpartitioned stays so: the option does not rewrite it.
    Outbox::<Postgres>::new(TableName::new("plain").unwrap())
        .migrate(&pool)
        .await
        .unwrap();
    outbox_named("plain").migrate(&pool).await.unwrap();
    let kind: String =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = 'plain'::regclass")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kind, "r");
    assert!(partitions(&pool, "plain").await.is_empty());
}

fn outbox_named(table: &str) -> Outbox<Postgres> {
    outbox(table, PartitionInterval::Hour)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_published_partition_is_dropped_one_with_a_pending_row_is_kept() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let outbox = outbox_named("parts");
    outbox.migrate(&pool).await.unwrap();
    // Two partitions of days ago, as a relay back then made them.
    let (published_hour, published) = past_partition(&pool, "parts", 72).await;
    let (pinned_hour, pinned) = past_partition(&pool, "parts", 48).await;
    enqueue(
        &pool,
        &outbox,
        vec![
            event("a", 1),
            event("a", 2),
            event("a", 3),
            event("b", 1),
            event("c", 1),
        ],
    )
    .await;
    // Key a's rows were written back then (the update moves them into that partition).
    sqlx::query("UPDATE parts SET created_at = $1 WHERE partition_key = 'a'")
        .bind(published_hour + Duration::from_secs(60))
        .execute(&pool)
        .await
        .unwrap();
    // Key b's row too, and it is not due for a day (a failing row waiting for its retry).
    sqlx::query(
        "UPDATE parts SET created_at = $1, available_at = now() + interval '1 day' \
         WHERE partition_key = 'b'",
    )
    .bind(pinned_hour + Duration::from_secs(60))
    .execute(&pool)
    .await
    .unwrap();
    // Key c's row was parked back then.
    sqlx::query(
        "WITH m AS (DELETE FROM parts WHERE partition_key = 'c' RETURNING *) \
         INSERT INTO parts_dead_letters (id, shard, partition_key, kind, destination, envelope, \
             created_at, attempts, error, blocks_key) \
         SELECT id, shard, partition_key, kind, destination, envelope, $1, 1, 'test', false \
         FROM m",
    )
    .bind(published_hour + Duration::from_secs(120))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(homes(&pool, "parts", "a").await, vec![published.clone(); 3]);
    assert_eq!(homes(&pool, "parts", "b").await, vec![pinned.clone()]);

    let bus = MemoryBus::new();
    let mut deliveries = bus
        .subscribe(&Subscription::events(TOPIC, "checker").unwrap())
        .await
        .unwrap();
    let relay = Relay::builder(&outbox, &pool, bus.clone())
        .retention(Retention::Keep(Duration::from_secs(1)))
        .build()
        .spawn();
    for seq in 1..=3 {
        assert_eq!(next(&mut deliveries).await, ("a".to_owned(), seq));
    }
    until("the published partition to be dropped", async || {
        !partitions(&pool, "parts").await.contains(&published)
    })
    .await;
    // The pending row pins its partition, past retention or not.
    assert!(partitions(&pool, "parts").await.contains(&pinned));
    assert_eq!(homes(&pool, "parts", "b").await, vec![pinned.clone()]);

    // The dead letter's partition is gone: replayed, it lands in the default partition, is
    // published, and is deleted from there after the retention.
    let id: i64 = sqlx::query_scalar("SELECT id FROM parts_dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(outbox.replay(&pool, id).await.unwrap());
    assert_eq!(next(&mut deliveries).await, ("c".to_owned(), 1));
    until("the replayed row to be cleaned up", async || {
        homes(&pool, "parts", "c").await.is_empty()
    })
    .await;
    assert!(partitions(&pool, "parts").await.contains(&pinned));
    relay.shutdown().await.unwrap();
    assert_eq!(outbox.backlog(&pool).await.unwrap().pending, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_landed_in_the_default_partition_move_into_a_new_partition() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let outbox = outbox_named("late");
    outbox.migrate(&pool).await.unwrap();
    // A partition is missing (say every process was down for hours): the rows of its range
    // land in the default partition. (A partition ahead rather than the current one, so that the
    // test holds across an hour boundary.)
    let (start, suffix) = hour(&pool, -2).await;
    let missing = format!("late{suffix}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {missing}")))
        .execute(&pool)
        .await
        .unwrap();
    enqueue(&pool, &outbox, vec![event("k", 1), event("k", 2)]).await;
    sqlx::query("UPDATE late SET created_at = $1")
        .bind(start + Duration::from_secs(60))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        homes(&pool, "late", "k").await,
        vec!["late_default".to_owned(); 2]
    );

    // The next upkeep (here a migrate; the relay's does the same) creates it and moves them.
    outbox.migrate(&pool).await.unwrap();
    assert_eq!(homes(&pool, "late", "k").await, vec![missing; 2]);

    let bus = MemoryBus::new();
    let mut deliveries = bus
        .subscribe(&Subscription::events(TOPIC, "checker").unwrap())
        .await
        .unwrap();
    let relay = Relay::builder(&outbox, &pool, bus.clone()).build().spawn();
    assert_eq!(next(&mut deliveries).await, ("k".to_owned(), 1));
    assert_eq!(next(&mut deliveries).await, ("k".to_owned(), 2));
    relay.shutdown().await.unwrap();
    assert_eq!(outbox.backlog(&pool).await.unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_rows_are_published_in_order_across_partitions() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let outbox = outbox_named("ordered");
    outbox.migrate(&pool).await.unwrap();
    let (previous_hour, previous) = past_partition(&pool, "ordered", 2).await;
    let keys = ["k0", "k1", "k2"];
    for seq in 1..=60 {
        enqueue(&pool, &outbox, keys.iter().map(|k| event(k, seq)).collect()).await;
    }
    // Each key's first 20 rows belong to two hours ago, the next 10 to a time no
    // partition covers (the default partition), the rest to the current hour.
    sqlx::query(
        "WITH ranked AS (SELECT id, row_number() OVER (PARTITION BY partition_key ORDER BY id) \
                         AS n FROM ordered) \
         UPDATE ordered o SET created_at = CASE WHEN r.n <= 20 THEN $1 \
                                                ELSE now() - interval '30 days' END \
         FROM ranked r WHERE o.id = r.id AND r.n <= 30",
    )
    .bind(previous_hour + Duration::from_secs(60))
    .execute(&pool)
    .await
    .unwrap();
    let homes_k0 = homes(&pool, "ordered", "k0").await;
    assert_eq!(homes_k0[0], previous);
    assert_eq!(homes_k0[25], "ordered_default");
    assert!(homes_k0[59] != previous && homes_k0[59] != "ordered_default");

    let bus = MemoryBus::new();
    let mut deliveries = bus
        .subscribe(&Subscription::events(TOPIC, "checker").unwrap())
        .await
        .unwrap();
    let relay = Relay::builder(&outbox, &pool, bus.clone())
        .batch_size(7)
        .build()
        .spawn();
    let mut last: HashMap<String, u32> = HashMap::new();
    for _ in 0..keys.len() * 60 {
        let (key, seq) = next(&mut deliveries).await;
        let previous = last.insert(key.clone(), seq).unwrap_or(0);
        assert_eq!(seq, previous + 1, "key {key}: {seq} after {previous}");
    }
    relay.shutdown().await.unwrap();
    assert_eq!(outbox.backlog(&pool).await.unwrap().pending, 0);
}

async fn every_row_once(retention: Retention) {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let outbox = outbox_named("busy");
    outbox.migrate(&pool).await.unwrap();
    let bus = MemoryBus::new();
    let mut deliveries = bus
        .subscribe(&Subscription::events(TOPIC, "checker").unwrap())
        .await
        .unwrap();
    let relays: Vec<_> = (0..2)
        .map(|_| {
            Relay::builder(&outbox, &pool, bus.clone())
                .batch_size(50)
                .concurrency(2)
                .retention(retention)
                .build()
                .spawn()
        })
        .collect();
    let (writers, per_writer, keys) = (4, 150, 10);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (pool, outbox) = (pool.clone(), outbox.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                // Each writer owns its keys: its order is the keys' commit order.
                let key = format!("w{w}-k{}", i % keys);
                enqueue(&pool, &outbox, vec![event(&key, i / keys + 1)]).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut last: HashMap<String, u32> = HashMap::new();
    for _ in 0..writers * per_writer {
        let (key, seq) = next(&mut deliveries).await;
        let previous = last.insert(key.clone(), seq).unwrap_or(0);
        assert_eq!(seq, previous + 1, "key {key}: {seq} after {previous}");
    }
    // Nothing more arrives: every row once.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), deliveries.next())
            .await
            .is_err()
    );
    for relay in relays {
        relay.shutdown().await.unwrap();
    }
    assert_eq!(outbox.backlog(&pool).await.unwrap().pending, 0);
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM busy WHERE published_at IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    let expected = if matches!(retention, Retention::Keep(_)) {
        i64::from(writers * per_writer)
    } else {
        0
    };
    assert_eq!(kept, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_is_published_once_in_order_with_rows_kept() {
    every_row_once(Retention::Keep(Duration::from_secs(3600))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_is_published_once_in_order_with_rows_deleted() {
    every_row_once(Retention::Delete).await;
}

/// A partition kept past the retention for a pending row shows on a gauge; dropped ones on
/// a counter (metrics-util's debugging recorder, local to the test's thread, which runs every
/// task of the relay).
#[cfg(feature = "metrics")]
#[test]
fn pinned_and_dropped_partitions_show_in_the_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let test = async {
        let Some(db) = ms_testkit::postgres().await else {
            return;
        };
        let pool = db.pool().await;
        let outbox = outbox_named("pins");
        outbox.migrate(&pool).await.unwrap();
        let (empty_hour, _) = past_partition(&pool, "pins", 30).await;
        let (pinned_hour, pinned) = past_partition(&pool, "pins", 20).await;
        enqueue(&pool, &outbox, vec![event("a", 1), event("b", 1)]).await;
        sqlx::query("UPDATE pins SET created_at = $1 WHERE partition_key = 'a'")
            .bind(empty_hour + Duration::from_secs(60))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "UPDATE pins SET created_at = $1, available_at = now() + interval '1 day' \
             WHERE partition_key = 'b'",
        )
        .bind(pinned_hour + Duration::from_secs(60))
        .execute(&pool)
        .await
        .unwrap();
        let relay = Relay::builder(&outbox, &pool, MemoryBus::new())
            .retention(Retention::Keep(Duration::from_secs(1)))
            .build()
            .spawn();
        let (mut pinned_gauge, mut dropped) = (None, 0);
        let waited = tokio::time::timeout(WAIT, async {
            while !(pinned_gauge == Some(1.0) && dropped >= 1) {
                for (key, _, _, value) in snapshotter.snapshot().into_vec() {
                    let key = key.key();
                    if !key
                        .labels()
                        .any(|l| l.key() == "table" && l.value() == "pins")
                    {
                        continue;
                    }
                    match (key.name(), value) {
                        ("ms_outbox_pinned_partitions", DebugValue::Gauge(v)) => {
                            pinned_gauge = Some(v.0);
                        }
                        ("ms_outbox_partitions_dropped_total", DebugValue::Counter(n)) => {
                            dropped += n;
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "pinned gauge {pinned_gauge:?}, dropped {dropped}"
        );
        assert!(partitions(&pool, "pins").await.contains(&pinned));
        relay.shutdown().await.unwrap();
    };
    metrics::with_local_recorder(&recorder, || runtime.block_on(test));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_table_does_not_fail_migrate_the_partitions_come_later() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let outbox = outbox_named("busy_parts");
    outbox.migrate(&pool).await.unwrap();
    let (_, suffix) = hour(&pool, -2).await;
    let missing = format!("busy_parts{suffix}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {missing}")))
        .execute(&pool)
        .await
        .unwrap();
    // A long transaction reading the table (a relay's batch, a report) holds a lock that
    // creating a partition must wait for.
    let mut reader = pool.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM busy_parts")
        .execute(&mut *reader)
        .await
        .unwrap();
    outbox
        .migrate(&pool)
        .await
        .expect("a busy table only postpones the partitions");
    assert!(!partitions(&pool, "busy_parts").await.contains(&missing));
    reader.commit().await.unwrap();
    outbox.migrate(&pool).await.unwrap();
    assert!(partitions(&pool, "busy_parts").await.contains(&missing));
}
