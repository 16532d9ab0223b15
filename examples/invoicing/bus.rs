//! The bus every service shares: in memory (the embedded default), NATS JetStream, RabbitMQ or
//! Kafka.

use std::sync::Arc;

use ms_bus::amqp::AmqpBus;
use ms_bus::kafka::KafkaBus;
use ms_bus::memory::MemoryBus;
use ms_bus::nats::NatsBus;
use ms_bus::{CommandSender, EventPublisher, Subscriber};
use ms_health::check::Check;

use crate::Error;
use crate::config::Config;

/// What a service needs from the bus: publish events, send commands, subscribe.
pub(crate) trait AppBus: EventPublisher + CommandSender + Subscriber {}

impl<T: EventPublisher + CommandSender + Subscriber + ?Sized> AppBus for T {}

/// The bus, shared by every service of the process (each would have its own connection in
/// its own process).
pub(crate) type SharedBus = Arc<dyn AppBus>;

/// The connected bus, with what the health probes need.
pub(crate) struct Connected {
    pub(crate) bus: SharedBus,
    pub(crate) kind: String,
    /// A readiness check of the broker connection (none in memory).
    pub(crate) check: Option<Arc<dyn Check>>,
}

/// Connects the bus the configuration names: Kafka if a Kafka URL is set, RabbitMQ if an AMQP
/// URL is, NATS if a NATS URL is, the memory bus otherwise.
pub(crate) async fn connect(config: &Config) -> Result<Connected, Error> {
    if let Some(url) = &config.kafka_url {
        let servers = url
            .split(',')
            .map(|one| {
                one.trim()
                    .trim_start_matches("kafka://")
                    .trim_end_matches('/')
            })
            .collect::<Vec<_>>()
            .join(",");
        let bus = KafkaBus::builder(&servers)
            .prefix(&config.bus_prefix)?
            // A new group's first join is slow at librdkafka's 45 s default on some brokers
            // (tansu); 10 s is within what Apache Kafka's group coordinator allows by default.
            .consumer_set("session.timeout.ms", "10000")
            .consumer_set("heartbeat.interval.ms", "1000")
            .build()?;
        let check: Arc<dyn Check> = Arc::new(bus.check());
        return Ok(Connected {
            bus: Arc::new(bus),
            kind: "Kafka".to_owned(),
            check: Some(check),
        });
    }
    if let Some(url) = &config.amqp_url {
        let bus = AmqpBus::builder(url)
            .namespace(config.bus_prefix.as_str())?
            .connect()
            .await?;
        let check: Arc<dyn Check> = Arc::new(bus.check());
        return Ok(Connected {
            bus: Arc::new(bus),
            kind: "RabbitMQ".to_owned(),
            check: Some(check),
        });
    }
    if let Some(url) = &config.nats_url {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| Error::Config(format!("NATS at {url}: {e}")))?;
        let bus = NatsBus::builder(client).prefix(&config.bus_prefix)?.build();
        let check: Arc<dyn Check> = Arc::new(bus.check());
        return Ok(Connected {
            bus: Arc::new(bus),
            kind: "NATS JetStream".to_owned(),
            check: Some(check),
        });
    }
    let mut memory = MemoryBus::builder();
    if let Some(faults) = &config.memory_faults {
        memory = memory.faults(faults.clone());
    }
    Ok(Connected {
        bus: Arc::new(memory.build()),
        kind: "in-memory bus".to_owned(),
        check: None,
    })
}
