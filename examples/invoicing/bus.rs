//! The bus every service shares: in memory (the embedded default), NATS JetStream or RabbitMQ.

use std::sync::Arc;

use ms_bus::amqp::AmqpBus;
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

/// Connects the bus the configuration names: RabbitMQ if an AMQP URL is set, NATS if a NATS
/// URL is, the memory bus otherwise.
pub(crate) async fn connect(config: &Config) -> Result<Connected, Error> {
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
