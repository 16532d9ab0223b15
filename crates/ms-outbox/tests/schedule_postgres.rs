//! Scheduled messages on a real PostgreSQL and NATS: the scenarios shared with SQLite
//! (`common/schedule.rs`), and the relay's cost with many rows scheduled in the future: its
//! statements on the scheduled table stay index probes (checked with `EXPLAIN`).
#![cfg(feature = "postgres")]

#[path = "common/schedule.rs"]
mod schedule;

use std::time::Duration;

use ms_bus::nats::NatsBus;
use ms_outbox::{Outbox, Relay};
use sqlx::Postgres;

async fn nats_bus(nats: &ms_testkit::TestNats) -> NatsBus {
    NatsBus::builder(nats.client().await)
        .prefix(nats.prefix())
        .unwrap()
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_come_when_due_and_cancelled_ones_never() {
    let (Some(db), Some(nats)) = (ms_testkit::postgres().await, ms_testkit::nats().await) else {
        return;
    };
    schedule::due_cancel_reschedule(&db.pool().await, nats_bus(&nats).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_message_joins_its_key_at_its_due_time() {
    let (Some(db), Some(nats)) = (ms_testkit::postgres().await, ms_testkit::nats().await) else {
        return;
    };
    schedule::joins_its_key_at_its_due_time(&db.pool().await, nats_bus(&nats).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recurring_ticks_fire_once_each_and_all_after_downtime() {
    let (Some(db), Some(nats)) = (ms_testkit::postgres().await, ms_testkit::nats().await) else {
        return;
    };
    schedule::recurring_ticks_fire_once_each(&db.pool().await, nats_bus(&nats).await).await;
}

#[cfg(feature = "cron")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_ticks_every_second() {
    let (Some(db), Some(nats)) = (ms_testkit::postgres().await, ms_testkit::nats().await) else {
        return;
    };
    schedule::cron_ticks_every_second(&db.pool().await, nats_bus(&nats).await).await;
}

/// Rows scheduled for tomorrow, this many.
const FUTURE_ROWS: i64 = 200_000;

async fn plan(pool: &sqlx::PgPool, sql: &str) -> String {
    let lines: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
        .fetch_all(pool)
        .await
        .unwrap();
    lines.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_future_rows_leave_the_relay_on_index_probes() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let outbox = Outbox::<Postgres>::default();
    outbox.migrate(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO ms_outbox_scheduled (message_id, shard, partition_key, key_lock, kind, \
             destination, envelope, due_at) \
         SELECT 'f-' || n, n % 32, 'k-' || n, 0, 0, 'test.scheduled', '{}', \
             now() + interval '1 day' + n * interval '1 millisecond' \
         FROM generate_series(1, $1) AS n",
    )
    .bind(FUTURE_ROWS)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE ms_outbox_scheduled")
        .execute(&pool)
        .await
        .unwrap();

    let next = plan(&pool, "SELECT min(due_at) FROM ms_outbox_scheduled").await;
    assert!(
        next.contains("Index Only Scan using ms_outbox_scheduled_due_idx")
            && !next.contains("Seq Scan"),
        "{next}"
    );
    let due = plan(
        &pool,
        "SELECT id FROM ms_outbox_scheduled WHERE due_at <= now() \
         AND pg_try_advisory_xact_lock(1, key_lock) \
         ORDER BY due_at, id LIMIT 500 FOR UPDATE SKIP LOCKED",
    )
    .await;
    assert!(
        due.contains("Index Scan using ms_outbox_scheduled_due_idx") && !due.contains("Seq Scan"),
        "{due}"
    );
    println!("next due:\n{next}\n\nthe move's choice:\n{due}");

    // And the relay runs as on an empty outbox: nothing of tomorrow's moves, a message due
    // now is published at once.
    let bus = ms_bus::memory::MemoryBus::new();
    let mut deliveries = ms_bus::Subscriber::subscribe(
        &bus,
        &ms_bus::Subscription::events(schedule::SCHEDULED_TOPIC, "probe").unwrap(),
    )
    .await
    .unwrap();
    let relay = Relay::builder(&outbox, &pool, bus.clone()).build().spawn();
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue(
            &mut *tx,
            schedule::message("soon", "k").deliver_after(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let soon = schedule::next_checked(&mut deliveries, Duration::from_secs(10))
        .await
        .expect("published");
    assert_eq!(soon.id(), "soon");
    let backlog = outbox.backlog(&pool).await.unwrap();
    assert_eq!(backlog.scheduled, u64::try_from(FUTURE_ROWS).unwrap());
    assert_eq!(relay.status().scheduled_due, 1);
    relay.shutdown().await.unwrap();
}

/// A due message that no relay can move (a caller's transaction holds it) fails the relay's
/// health check once it is overdue by more than the backlog limit, and recovers once moved.
#[cfg(feature = "health")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_scheduled_message_fails_the_relay_check() {
    use ms_health::{Check, Status};

    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let outbox = Outbox::<Postgres>::default();
    outbox.migrate(&pool).await.unwrap();
    // The backlog is measured every ten polls.
    let relay = Relay::builder(&outbox, &pool, ms_bus::memory::MemoryBus::new())
        .poll_interval(Duration::from_millis(10))
        .build()
        .spawn();
    let due = time::OffsetDateTime::now_utc() + Duration::from_millis(300);
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut *tx, schedule::message("held", "k").deliver_at(due))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // A transaction that moved it (uncommitted) holds its row: the relays skip it.
    let mut holder = pool.begin().await.unwrap();
    assert_eq!(
        outbox.reschedule(&mut *holder, "held", due).await.unwrap(),
        ms_outbox::Rescheduling::Moved
    );
    let strict = relay.check().max_backlog_age(Duration::from_millis(200));
    let until = |want: Status, says: &'static str| {
        let strict = &strict;
        async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let result = strict.check().await;
                    if result.status() == want && result.output().unwrap_or("").contains(says) {
                        return result;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("never {want:?} saying {says:?}"))
        }
    };
    let failed = until(Status::Fail, "has been due for").await;
    assert!(
        failed.output().unwrap().contains("(1 scheduled)"),
        "{failed:?}"
    );
    holder.rollback().await.unwrap();
    until(Status::Pass, "").await;
    assert_eq!(relay.status().scheduled_due, 1);
    relay.shutdown().await.unwrap();
}
