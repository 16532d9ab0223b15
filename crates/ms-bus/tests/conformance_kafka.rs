//! The conformance suite against Kafka: the shared broker (`ms_testkit::kafka()`: the
//! environment's Kafka, or a tansu the kit starts; a topic prefix per test) and, for the
//! restart case, a private tansu on durable storage, killed and restarted.
#![cfg(all(feature = "kafka", feature = "testkit"))]

use std::time::Duration;

use futures_util::future::BoxFuture;
use ms_bus::conformance::{Capabilities, Fixture, RestartableFixture};
use ms_bus::kafka::KafkaBus;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

/// tansu takes about 23 s for a new group's first join with librdkafka's default session
/// timeout (45 s), about 1 s at 6 s (see the adapter's docs).
const SESSION_TIMEOUT_MS: &str = "6000";

struct Kafka {
    servers: String,
    prefix: String,
    server: Option<ms_testkit::KafkaServer>,
    counts_redeliveries: bool,
}

impl Kafka {
    async fn shared() -> Option<Self> {
        let test = ms_testkit::kafka().await?;
        let servers = test.bootstrap_servers().to_owned();
        Some(Self {
            counts_redeliveries: !is_tansu(&servers).await,
            servers,
            prefix: test.prefix().to_owned(),
            server: None,
        })
    }
}

/// tansu 0.6 drops a commit's metadata, in which the adapter carries delivery counts across
/// members (see `tests/kafka.rs`, `commit_metadata_is_kept_except_on_tansu`).
async fn is_tansu(servers: &str) -> bool {
    let servers = servers.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .create()
            .unwrap();
        consumer
            .client()
            .fetch_cluster_id(Duration::from_secs(10))
            .as_deref()
            == Some("tansu_cluster")
    })
    .await
    .unwrap()
}

impl Fixture for Kafka {
    type Bus = KafkaBus;

    fn connect(&self) -> BoxFuture<'_, KafkaBus> {
        Box::pin(async {
            KafkaBus::builder(&self.servers)
                .prefix(&self.prefix)
                .unwrap()
                .consumer_set("session.timeout.ms", SESSION_TIMEOUT_MS)
                // Members learn of a rebalance at their next heartbeat (default every 3 s).
                .consumer_set("heartbeat.interval.ms", "500")
                .commit_interval(Duration::from_millis(100))
                .build()
                .unwrap()
        })
    }

    fn name(&self, name: &str) -> String {
        name.to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        // Kafka has no ack deadline: the crash case's redelivery comes from the member
        // leaving the group, not from a timer.
        let mut capabilities = Capabilities::default();
        capabilities.counts_redeliveries = self.counts_redeliveries;
        capabilities
    }

    fn publish_garbage<'a>(&'a self, topic: &'a str) -> Option<BoxFuture<'a, ()>> {
        Some(Box::pin(async move {
            let bus = self.connect().await;
            bus.ensure_topic(topic).await.unwrap();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "ce_specversion",
                    value: Some("1.0"),
                })
                .insert(Header {
                    key: "ce_type",
                    value: Some("x"),
                });
            let name = bus.event_topic(topic);
            let record = FutureRecord::to(&name)
                .key("garbage")
                .payload("garbage")
                .headers(headers);
            bus.producer()
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }))
    }
}

impl RestartableFixture for Kafka {
    fn restart_broker(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {
            let server = self.server.as_mut().expect("a private broker");
            server.kill().await.unwrap();
            server
                .restart()
                .await
                .unwrap_or_else(|e| panic!("restarting: {e}\n{}", server.log_tail()));
        })
    }
}

ms_bus::conformance_tests!(Kafka::shared());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_confirmed() {
    // Only where Kafka is expected at all: the shared broker's presence says so.
    let Some(_shared) = ms_testkit::kafka().await else {
        return;
    };
    let server = ms_testkit::KafkaServer::start().await.unwrap();
    let mut fixture = Kafka {
        counts_redeliveries: false,
        servers: server.bootstrap_servers(),
        prefix: "restart".to_owned(),
        server: Some(server),
    };
    ms_bus::conformance::broker_restart_loses_nothing_confirmed(&mut fixture).await;
}
