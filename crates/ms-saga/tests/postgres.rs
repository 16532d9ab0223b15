//! The runner on a real PostgreSQL (ms-testkit's own database per test): two runners on one
//! instance serialized by the version, and a timeout that fires through the relay and the
//! memory bus when the reply never comes; concurrent migrators on a fresh schema.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use common::{Order, State, event};
use ms_bus::Subscription;
use ms_bus::consumer::Consumer;
use ms_bus::memory::MemoryBus;
use ms_outbox::{Inbox, Outbox, Relay, TableName};
use ms_saga::{SagaRunner, SagaStore, Status};
use sqlx::{AssertSqlSafe, PgPool, Postgres};

/// Concurrent messages for one instance, alternating between two runners.
const NOTES: u32 = 40;
/// Runners migrating one fresh schema at once, and how many fresh schemas.
const MIGRATORS: usize = 8;
const MIGRATION_ROUNDS: usize = 5;

async fn setup(
    pool: &PgPool,
    reply_within: Duration,
) -> (Outbox<Postgres>, SagaRunner<Order, Postgres>) {
    let outbox = Outbox::<Postgres>::default();
    outbox.migrate(pool).await.expect("outbox");
    Inbox::<Postgres>::default()
        .migrate(pool)
        .await
        .expect("inbox");
    let store = SagaStore::<Postgres>::new(pool.clone());
    store.migrate().await.expect("saga tables");
    store.migrate().await.expect("idempotent");
    let runner = SagaRunner::builder(Order { reply_within }, store, outbox.clone()).build();
    (outbox, runner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_on_one_instance_are_serialized_by_the_version() {
    let Some(pg) = ms_testkit::postgres().await else {
        return;
    };
    let pool = pg.pool().await;
    let (_, a) = setup(&pool, Duration::from_secs(600)).await;
    // A second runner: its own pool, as another process would have.
    let (_, b) = setup(&pg.pool().await, Duration::from_secs(600)).await;
    a.handle(&event("shop.order.placed", "o-1"))
        .await
        .expect("placed");
    let mut tasks = Vec::new();
    for i in 0..NOTES {
        let runner = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            runner.handle(&event("shop.order.noted", "o-1")).await
        }));
    }
    for task in tasks {
        task.await.expect("joined").expect("handled");
    }
    let order = a
        .store()
        .instance::<State>("order", "o-1")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(order.state, State::Charging { notes: NOTES });
    assert_eq!(order.version, u64::from(NOTES) + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_fires_when_the_reply_never_comes_and_not_after_it_came() {
    let Some(pg) = ms_testkit::postgres().await else {
        return;
    };
    let pool = pg.pool().await;
    let (outbox, runner) = setup(&pool, Duration::from_millis(300)).await;
    let bus = MemoryBus::new();
    let relay = Relay::builder(&outbox, &pool, bus.clone()).build().spawn();
    let timeouts =
        Consumer::new(Subscription::commands(runner.timeout_destination()).expect("name"))
            .serve(&bus, runner.clone())
            .await
            .expect("consumer");

    // o-late never gets its reply; o-paid is paid before its timeout is due.
    runner
        .handle(&event("shop.order.placed", "o-late"))
        .await
        .expect("placed");
    runner
        .handle(&event("shop.order.placed", "o-paid"))
        .await
        .expect("placed");
    runner
        .handle(&event("payments.paid", "o-paid"))
        .await
        .expect("paid");

    let store = runner.store().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let late = store
            .instance::<State>("order", "o-late")
            .await
            .expect("read")
            .expect("exists");
        if late.status == Status::Completed {
            assert_eq!(late.state, State::TimedOut);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the timeout never fired: {late:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past o-paid's due time too: no late timeout effect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paid = store
        .instance::<State>("order", "o-paid")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!((paid.state, paid.version), (State::Paid { notes: 0 }, 2));
    assert_eq!(outbox.backlog(&pool).await.expect("backlog").scheduled, 0);
    timeouts.shutdown().await.expect("consumer down");
    relay.shutdown().await.expect("relay down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_of_a_fresh_schema_take_turns() {
    let Some(pg) = ms_testkit::postgres().await else {
        return;
    };
    let admin = pg.pool().await;
    for round in 0..MIGRATION_ROUNDS {
        let schema = format!("saga_migrate_{round}");
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .expect("schema");
        let table = TableName::new(&format!("{schema}.ms_saga")).expect("name");
        let mut tasks = Vec::new();
        for _ in 0..MIGRATORS {
            // Each its own pool, as separate processes starting at once would have.
            let store = SagaStore::<Postgres>::with_table(pg.pool().await, table.clone());
            tasks.push(tokio::spawn(async move { store.migrate().await }));
        }
        for task in tasks {
            // Without the lock, concurrent `CREATE TABLE IF NOT EXISTS` fail on the catalog's
            // unique index (pg_type_typname_nsp_index) or find the relation created.
            task.await.expect("joined").expect("migrated");
        }
        let store = SagaStore::<Postgres>::with_table(admin.clone(), table);
        assert_eq!(
            store.count("order", Status::Active).await.expect("table"),
            0
        );
    }
}
