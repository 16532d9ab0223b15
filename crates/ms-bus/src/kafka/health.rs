//! A ms-health [`Check`] for the Kafka bus (features `kafka` and `health`): the brokers
//! answer a metadata request within the deadline, and each watched group's lag per partition
//! is in the report.
//!
//! ```
//! use ms_health::{Check, Status};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let Some(kafka) = ms_testkit::kafka().await else { return Ok(()) };
//! let bus = ms_bus::kafka::KafkaBus::builder(kafka.bootstrap_servers())
//! #   .prefix(kafka.prefix())?
//!     .build()?;
//! bus.ensure_topic("invoicing.invoice").await?;
//! let check = bus.check().group("invoicing.invoice", "reporting");
//! let result = check.check().await;
//! assert_eq!(result.status(), Status::Pass);
//! // {"ms.ev.invoicing.invoice:reporting": {"0": 0, "1": 0, "2": 0, "3": 0}}
//! assert!(result.observed_value().is_some());
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use ms_health::{BoxFuture, Check, CheckResult};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::Producer as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::Inner;
use super::naming::{self, Kind};

/// How long the brokers have to answer, unless [`KafkaCheck::deadline`] says otherwise.
pub const DEFAULT_HEALTH_DEADLINE: Duration = Duration::from_secs(5);

/// Passes when the brokers answer a metadata request within the deadline, with the lag
/// (records not yet committed) of each watched group per partition as the observed value;
/// fails when they do not answer. Made by [`KafkaBus::check`](super::KafkaBus::check).
#[derive(Clone)]
pub struct KafkaCheck {
    inner: Arc<Inner>,
    deadline: Duration,
    /// (Kafka topic, Kafka group).
    groups: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaCheck")
            .field("deadline", &self.deadline)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl KafkaCheck {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        Self {
            inner,
            deadline: DEFAULT_HEALTH_DEADLINE,
            groups: Vec::new(),
        }
    }

    /// Sets how long the brokers have to answer (default [`DEFAULT_HEALTH_DEADLINE`]).
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Reports the lag of consumer group `group` on event topic `topic`.
    #[must_use]
    pub fn group(mut self, topic: &str, group: &str) -> Self {
        let kafka_topic = naming::topic(&self.inner.settings.prefix, Kind::Events, topic);
        let kafka_group = naming::group(&kafka_topic, group);
        self.groups.push((kafka_topic, kafka_group));
        self
    }

    /// Reports the lag of the consumers of command destination `destination`.
    #[must_use]
    pub fn commands(mut self, destination: &str) -> Self {
        let kafka_topic = naming::topic(&self.inner.settings.prefix, Kind::Commands, destination);
        let kafka_group = naming::group(&kafka_topic, naming::COMMAND_GROUP);
        self.groups.push((kafka_topic, kafka_group));
        self
    }

    /// The check itself, blocking (librdkafka's requests block): metadata, then each group's
    /// committed offsets against the partitions' high watermarks.
    fn run(&self) -> CheckResult {
        let started = Instant::now();
        let remaining = || self.deadline.saturating_sub(started.elapsed());
        if let Err(e) = self
            .inner
            .producer
            .client()
            .fetch_metadata(None, remaining())
        {
            return CheckResult::fail(format!("Kafka did not answer a metadata request: {e}"));
        }
        let mut lags = serde_json::Map::new();
        for (topic, group) in &self.groups {
            match self.lag(topic, group, &remaining) {
                Ok(lag) => {
                    lags.insert(group.clone(), lag);
                }
                Err(e) => {
                    return CheckResult::warn(format!("the lag of group {group} is unknown: {e}"));
                }
            }
        }
        if self.groups.is_empty() {
            CheckResult::pass().with_observed_value(started.elapsed().as_secs_f64() * 1000.0, "ms")
        } else {
            CheckResult::pass().with_observed_value(lags, "records")
        }
    }

    fn lag(
        &self,
        topic: &str,
        group: &str,
        remaining: &dyn Fn() -> Duration,
    ) -> Result<serde_json::Value, rdkafka::error::KafkaError> {
        let mut config = ClientConfig::new();
        for (key, value) in &self.inner.settings.common {
            config.set(key, value);
        }
        let consumer: BaseConsumer = config.set("group.id", group).create()?;
        let metadata = consumer.fetch_metadata(Some(topic), remaining())?;
        let mut tpl = TopicPartitionList::new();
        for partition in metadata
            .topics()
            .iter()
            .flat_map(rdkafka::metadata::MetadataTopic::partitions)
        {
            tpl.add_partition(topic, partition.id());
        }
        let committed = consumer.committed_offsets(tpl, remaining())?;
        let mut lag = serde_json::Map::new();
        for element in committed.elements() {
            let (low, high) = consumer.fetch_watermarks(topic, element.partition(), remaining())?;
            let from = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => low,
            };
            lag.insert(
                element.partition().to_string(),
                serde_json::Value::from((high - from).max(0)),
            );
        }
        Ok(serde_json::Value::Object(lag))
    }
}

impl Check for KafkaCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.run())
                .await
                .unwrap_or_else(|e| CheckResult::fail(format!("the Kafka check failed: {e}")))
        })
    }

    fn component_type(&self) -> Option<&str> {
        Some("component")
    }
}
