//! Configuring a [`KafkaBus`]: what the adapter names, with documented defaults, and the
//! librdkafka settings it passes through for everything else.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;

use super::{Inner, KafkaBus};
use crate::codec::Mode;
use crate::propagation::{Propagation, default_propagation};
use crate::{BusError, validate_name};

/// The first token of every topic name unless [`KafkaBusBuilder::prefix`] says otherwise.
pub const DEFAULT_PREFIX: &str = "ms";
/// How many partitions a topic the bus creates gets, unless [`KafkaBusBuilder::topics`] says
/// otherwise. Partitions bound how many members of a group share the work; within a member,
/// records of different keys run in parallel whatever the count.
pub const DEFAULT_PARTITIONS: i32 = 4;
/// The replication factor of the topics the bus creates: `-1` asks for the broker's
/// `default.replication.factor` (Apache Kafka 2.4+, KIP-464).
pub const DEFAULT_REPLICATION_FACTOR: i32 = -1;
/// How often a consumer commits the offsets its settled records allow, unless
/// [`KafkaBusBuilder::commit_interval`] says otherwise. A crash redelivers at most what was
/// settled in the last interval.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a revocation (a rebalance, a shutdown) waits for handlers to settle the
/// partition's records before it lets the partition go, unless
/// [`KafkaBusBuilder::revoke_timeout`] says otherwise. Records settled later are redelivered
/// to the partition's next owner.
pub const DEFAULT_REVOKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Subscriber::subscribe`](crate::Subscriber::subscribe) waits for the group to
/// assign the new member its first partitions, unless [`KafkaBusBuilder::join_timeout`] says
/// otherwise. Past it the subscription goes on and joins in the background.
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a metadata, offset or admin request to the brokers may take.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the bus creates the topics it publishes to and subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topics {
    /// Create missing topics with this many partitions and this replication factor (`-1`:
    /// the broker's default). The default, with [`DEFAULT_PARTITIONS`] and
    /// [`DEFAULT_REPLICATION_FACTOR`].
    Create {
        /// Partitions per topic.
        partitions: i32,
        /// Replicas per partition (`-1`: the broker's `default.replication.factor`).
        replication_factor: i32,
    },
    /// The operator creates topics: publishing to a missing one fails (or, where the broker
    /// has `auto.create.topics.enable`, creates it with the broker's defaults).
    Existing,
}

impl Default for Topics {
    fn default() -> Self {
        Topics::Create {
            partitions: DEFAULT_PARTITIONS,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
        }
    }
}

/// Builds a [`KafkaBus`]. Made by [`KafkaBus::builder`].
///
/// The producer always runs with `enable.idempotence=true` and `acks=all` (a retried or
/// reconnected send neither duplicates nor reorders a key), and consumers with
/// `enable.auto.commit=false`, `enable.auto.offset.store=false` (the adapter commits what is
/// settled), `auto.offset.reset=earliest` (a group never skips records it has no offset for)
/// and `partition.assignment.strategy=cooperative-sticky`; [`set`](Self::set) cannot turn
/// those off. Everything else is librdkafka's default unless set here.
#[derive(Debug, Clone)]
#[must_use]
pub struct KafkaBusBuilder {
    pub(super) common: Vec<(String, String)>,
    pub(super) producer: Vec<(String, String)>,
    pub(super) consumer: Vec<(String, String)>,
    pub(super) prefix: String,
    pub(super) mode: Mode,
    pub(super) topics: Topics,
    pub(super) commit_interval: Duration,
    pub(super) revoke_timeout: Duration,
    pub(super) join_timeout: Duration,
    pub(super) propagation: Arc<dyn Propagation>,
}

/// Settings the adapter's guarantees rest on, applied after the caller's.
const PRODUCER_FIXED: [(&str, &str); 2] = [("enable.idempotence", "true"), ("acks", "all")];
const CONSUMER_FIXED: [(&str, &str); 5] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("enable.partition.eof", "false"),
];

impl KafkaBusBuilder {
    pub(super) fn new(bootstrap_servers: &str) -> Self {
        Self {
            common: vec![("bootstrap.servers".to_owned(), bootstrap_servers.to_owned())],
            producer: Vec::new(),
            consumer: Vec::new(),
            prefix: DEFAULT_PREFIX.to_owned(),
            mode: Mode::Binary,
            topics: Topics::default(),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            revoke_timeout: DEFAULT_REVOKE_TIMEOUT,
            join_timeout: DEFAULT_JOIN_TIMEOUT,
            propagation: default_propagation(),
        }
    }

    /// Sets a librdkafka setting on every client the bus makes (producer, consumers, admin):
    /// `security.protocol`, `sasl.*`, `ssl.*`, `client.id`, timeouts. TLS and SASL need
    /// rdkafka's `ssl` / `sasl` cargo features, which an application turns on in its own
    /// manifest (features unify). See librdkafka's `CONFIGURATION.md` for the names.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.common.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets a librdkafka setting on the producer only (`compression.type`, `linger.ms`,
    /// `batch.size`, `message.timeout.ms`).
    pub fn producer_set(mut self, key: &str, value: &str) -> Self {
        self.producer.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets a librdkafka setting on consumers only (`session.timeout.ms`,
    /// `max.poll.interval.ms`, `fetch.max.bytes`, `group.instance.id`).
    pub fn consumer_set(mut self, key: &str, value: &str) -> Self {
        self.consumer.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets the first token of every topic name (default [`DEFAULT_PREFIX`]); a
    /// [`validate_name`]-valid name.
    pub fn prefix(mut self, prefix: &str) -> Result<Self, BusError> {
        validate_name(prefix)?;
        prefix.clone_into(&mut self.prefix);
        Ok(self)
    }

    /// Sets the content mode records are published in (default binary).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets whether the bus creates topics (default [`Topics::Create`] with
    /// [`DEFAULT_PARTITIONS`] and [`DEFAULT_REPLICATION_FACTOR`]).
    pub fn topics(mut self, topics: Topics) -> Self {
        self.topics = topics;
        self
    }

    /// Sets how often consumers commit (default [`DEFAULT_COMMIT_INTERVAL`]).
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets how long a revocation waits for in-flight handlers (default
    /// [`DEFAULT_REVOKE_TIMEOUT`]). Keep it below the group's `max.poll.interval.ms`
    /// (librdkafka's default: 300 s), or the member is dropped from the group meanwhile.
    pub fn revoke_timeout(mut self, timeout: Duration) -> Self {
        self.revoke_timeout = timeout;
        self
    }

    /// Sets how long subscribing waits for the first assignment (default
    /// [`DEFAULT_JOIN_TIMEOUT`]).
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// Sets the context propagation applied on publish (ms-tracing plugs in here).
    pub fn propagation(mut self, propagation: Arc<dyn Propagation>) -> Self {
        self.propagation = propagation;
        self
    }

    /// The client configuration of a consumer (the settings in the order they win).
    pub(super) fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in self.common.iter().chain(&self.consumer) {
            config.set(key, value);
        }
        config.set("group.id", group);
        for (key, value) in CONSUMER_FIXED {
            config.set(key, value);
        }
        config
    }

    fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in self.common.iter().chain(&self.producer) {
            config.set(key, value);
        }
        for (key, value) in PRODUCER_FIXED {
            config.set(key, value);
        }
        config
    }

    /// Makes the producer and admin clients. librdkafka connects in the background: a broker
    /// that is down is not an error here, only a setting librdkafka refuses is.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the clients' callbacks are driven from it).
    pub fn build(self) -> Result<KafkaBus, BusError> {
        let producer: FutureProducer = self
            .producer_config()
            .create()
            .map_err(|e| BusError::broker(format!("creating the Kafka producer: {e}")))?;
        let mut admin_config = ClientConfig::new();
        for (key, value) in &self.common {
            admin_config.set(key, value);
        }
        let admin: AdminClient<DefaultClientContext> = admin_config
            .create()
            .map_err(|e| BusError::broker(format!("creating the Kafka admin client: {e}")))?;
        Ok(KafkaBus {
            inner: Arc::new(Inner {
                producer,
                admin,
                topics_made: Mutex::default(),
                settings: self,
            }),
        })
    }
}
