//! The conformance suite against a private three-node JetStream cluster
//! (`ms_testkit::NatsCluster`), streams stored on all three nodes (`replicas(3)`): every case
//! in turn on one cluster (starting one per case would cost a second or more each), each case
//! under its own subject and stream prefix; the restart case kills and restarts each node in
//! turn, the leaders among them.
#![cfg(all(feature = "nats", feature = "testkit"))]

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use ms_bus::conformance::{self, Capabilities, Fixture, RestartableFixture};
use ms_bus::nats::NatsBus;
use tokio::sync::Mutex;

/// The ack deadline the crash and shutdown cases wait out: short, so they run quickly.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// Longer than a leader election (about 5 s), as the module docs advise for a cluster.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

struct Cluster {
    nodes: Arc<Mutex<ms_testkit::NatsCluster>>,
    urls: Vec<String>,
    prefix: String,
}

async fn connect(urls: &[String]) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        // Back as soon as a node is: the default backoff grows to seconds.
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(urls.to_vec())
        .await
        .unwrap_or_else(|e| panic!("connecting to {urls:?}: {e}"))
}

impl Fixture for Cluster {
    type Bus = NatsBus;

    fn connect(&self) -> BoxFuture<'_, NatsBus> {
        Box::pin(async {
            NatsBus::builder(connect(&self.urls).await)
                .prefix(&self.prefix)
                .unwrap()
                .replicas(3)
                .publish_timeout(PUBLISH_TIMEOUT)
                .build()
        })
    }

    fn name(&self, name: &str) -> String {
        name.to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        capabilities.ack_wait = ACK_WAIT;
        capabilities
    }

    fn publish_garbage<'a>(&'a self, topic: &'a str) -> Option<BoxFuture<'a, ()>> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("ce-specversion", "1.0");
        headers.insert("ce-id", "%ZZ");
        Some(Box::pin(self.publish_raw(
            topic,
            headers,
            b"garbage".to_vec(),
        )))
    }

    fn publish_structured<'a>(
        &'a self,
        topic: &'a str,
        body: Vec<u8>,
    ) -> Option<BoxFuture<'a, ()>> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("content-type", "application/cloudevents+json");
        Some(Box::pin(self.publish_raw(topic, headers, body)))
    }
}

impl Cluster {
    /// Publishes a message as a foreign producer would, past the adapter's encoder.
    async fn publish_raw(&self, topic: &str, headers: async_nats::HeaderMap, body: Vec<u8>) {
        let bus = self.connect().await;
        bus.ensure_topic(topic).await.unwrap();
        let js = async_nats::jetstream::new(bus.client().clone());
        js.publish_with_headers(bus.event_subject(topic), headers, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

impl RestartableFixture for Cluster {
    /// Every node killed (SIGKILL) and restarted in turn, so whichever node leads the
    /// case's streams dies once; the others keep a quorum meanwhile.
    fn restart_broker(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {
            let mut cluster = self.nodes.lock().await;
            for node in 0..ms_testkit::NATS_CLUSTER_NODES {
                cluster.kill(node).await.unwrap();
                cluster.restart(node).await.unwrap();
            }
        })
    }
}

macro_rules! run_cases {
    ($cluster:expr, $urls:expr; $($case:ident),* $(,)?) => {
        $(
            let started = std::time::Instant::now();
            let fixture = Cluster {
                nodes: $cluster.clone(),
                urls: $urls.clone(),
                prefix: stringify!($case).replace('_', "-"),
            };
            conformance::$case(&fixture).await;
            println!("{} passed in {:?}", stringify!($case), started.elapsed());
        )*
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_on_a_three_node_cluster() {
    // Only where NATS is expected at all: the shared server's presence says so.
    let Some(_shared) = ms_testkit::nats().await else {
        return;
    };
    let cluster = ms_testkit::NatsCluster::start().await.unwrap();
    let urls = cluster.urls();
    let cluster = Arc::new(Mutex::new(cluster));
    run_cases!(cluster, urls;
        round_trip,
        groups_get_one_copy_each_and_share_within,
        commands_reach_one_consumer,
        nack_redelivers,
        crashed_handler_redelivers,
        in_progress_extends_the_deadline,
        poison_goes_to_dead_letter_while_the_rest_flow,
        undecodable_goes_to_dead_letter,
        foreign_line_breaks_go_to_dead_letter_never_to_a_forwarding_handler,
        ten_thousand_messages_none_lost,
        per_partition_key_order,
        subject_only_events_keep_their_order,
        a_retry_keeps_the_later_messages_of_its_key_behind_it,
        graceful_shutdown_loses_nothing,
    );
    let started = std::time::Instant::now();
    let mut fixture = Cluster {
        nodes: cluster.clone(),
        urls: urls.clone(),
        prefix: "broker-restart".to_owned(),
    };
    conformance::broker_restart_loses_nothing_confirmed(&mut fixture).await;
    println!(
        "broker_restart_loses_nothing_confirmed passed in {:?}",
        started.elapsed()
    );
}
