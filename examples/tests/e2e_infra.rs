//! The invoicing example end to end on real infrastructure: each service its own schema in a
//! private PostgreSQL database, and NATS JetStream (private prefix), RabbitMQ (private
//! virtual host) or Kafka (private topic prefix), through ms-testkit. Skipped loudly without the servers, unless
//! `MS_TEST_REQUIRE_SERVICES=1`.

use ms_examples::config::Config;
use ms_examples::{System, scenario};

mod common;

async fn run_and_check(config: Config, database_url: &str, chaos: bool) {
    common::watch_panics();
    let system = System::start(config).await.expect("system starts");
    assert_eq!(system.database(), "PostgreSQL");
    let mut out = Vec::new();
    let report = scenario::run(&system, &mut out, chaos)
        .await
        .unwrap_or_else(|e| panic!("scenario failed: {e}\n{}", String::from_utf8_lossy(&out)));
    common::check_report(&report);
    system.shutdown().await.expect("graceful shutdown");
    assert_eq!(common::panics(), 0, "nothing panicked");

    // Each service's tables live in its own schema: no service reads another's.
    let pool = sqlx::PgPool::connect(database_url).await.unwrap();
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_name IN ('invoices', 'customers', 'payments', 'invoice_view') \
         ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let tables: Vec<(&str, &str)> = tables
        .iter()
        .map(|(s, t)| (s.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        tables,
        [
            ("invoicing", "customers"),
            ("invoicing", "invoices"),
            ("payments", "payments"),
            ("reporting", "invoice_view"),
        ]
    );
    pool.close().await;
}

/// The scenario on a private PostgreSQL database and NATS prefix; `chaos` as `--chaos`.
async fn on_postgres_and_nats(chaos: bool) {
    let Some(pg) = ms_testkit::postgres().await else {
        return;
    };
    let Some(nats) = ms_testkit::nats().await else {
        return;
    };
    let config = Config {
        database_url: Some(pg.url().to_owned()),
        nats_url: Some(nats.url().to_owned()),
        bus_prefix: nats.prefix().to_owned(),
        ..Config::default()
    };
    run_and_check(config, pg.url(), chaos).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_on_postgres_and_nats() {
    on_postgres_and_nats(false).await;
}

/// Payments is down while the invoices are sent: the charges wait in JetStream and are
/// settled once it is back, to the same numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chaos_scenario_on_postgres_and_nats() {
    on_postgres_and_nats(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_on_postgres_and_rabbitmq() {
    let Some(pg) = ms_testkit::postgres().await else {
        return;
    };
    let Some(amqp) = ms_testkit::amqp().await else {
        return;
    };
    let config = Config {
        database_url: Some(pg.url().to_owned()),
        amqp_url: Some(amqp.url().to_owned()),
        bus_prefix: amqp.prefix().to_owned(),
        ..Config::default()
    };
    run_and_check(config, pg.url(), false).await;
}

/// The whole scenario on PostgreSQL and Kafka (the environment's, or the tansu the test kit
/// starts), with a topic prefix of the test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_on_postgres_and_kafka() {
    let Some(pg) = ms_testkit::postgres().await else {
        return;
    };
    let Some(kafka) = ms_testkit::kafka().await else {
        return;
    };
    let config = Config {
        database_url: Some(pg.url().to_owned()),
        kafka_url: Some(kafka.bootstrap_servers().to_owned()),
        bus_prefix: kafka.prefix().to_owned(),
        ..Config::default()
    };
    run_and_check(config, pg.url(), false).await;
}
