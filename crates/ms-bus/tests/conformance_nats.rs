//! The conformance suite against NATS JetStream: the shared server (`ms_testkit::nats()`,
//! a private subject and stream prefix per test) and, for the restart case, a private
//! `nats-server` killed and restarted.
#![cfg(all(feature = "nats", feature = "testkit"))]

use std::time::Duration;

use futures_util::future::BoxFuture;
use ms_bus::conformance::{Capabilities, Fixture, RestartableFixture};
use ms_bus::nats::NatsBus;

/// The ack deadline the crash and shutdown cases wait out: short, so they run quickly.
const ACK_WAIT: Duration = Duration::from_secs(2);

struct Nats {
    url: String,
    prefix: String,
    server: Option<ms_testkit::NatsServer>,
    _test: Option<ms_testkit::TestNats>,
}

impl Nats {
    async fn shared() -> Option<Self> {
        let test = ms_testkit::nats().await?;
        Some(Self {
            url: test.url().to_owned(),
            prefix: test.prefix().to_owned(),
            server: None,
            _test: Some(test),
        })
    }
}

async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        // Keep trying while a private server restarts.
        .retry_on_initial_connect()
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

impl Fixture for Nats {
    type Bus = NatsBus;

    fn connect(&self) -> BoxFuture<'_, NatsBus> {
        Box::pin(async {
            NatsBus::builder(connect(&self.url).await)
                .prefix(&self.prefix)
                .unwrap()
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

impl Nats {
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

impl RestartableFixture for Nats {
    fn restart_broker(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {
            let server = self.server.as_mut().expect("a private server");
            server.kill().await.unwrap();
            server.restart().await.unwrap();
        })
    }
}

ms_bus::conformance_tests!(Nats::shared());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_confirmed() {
    // Only where NATS is expected at all: the shared server's presence says so.
    let Some(_shared) = ms_testkit::nats().await else {
        return;
    };
    let server = ms_testkit::NatsServer::start().await.unwrap();
    let mut fixture = Nats {
        url: server.url(),
        prefix: "restart".to_owned(),
        server: Some(server),
        _test: None,
    };
    ms_bus::conformance::broker_restart_loses_nothing_confirmed(&mut fixture).await;
}
