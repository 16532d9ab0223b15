//! What the system runs on and how the gateway admits clients: flags, then `INVOICING_*`
//! variables, then the embedded defaults.

use std::time::Duration;

use crate::Error;

/// The API key the scenario and the printed `curl` lines use.
pub const DEMO_API_KEY: &str = "demo-key-1";
/// The bearer token accepted for the same client.
pub const DEMO_BEARER_TOKEN: &str = "demo-token-1";
/// The client the demo key and token belong to.
pub const DEMO_CLIENT: &str = "demo";
/// Requests per second each client may make, on average.
pub const DEFAULT_RATE_PER_SECOND: u32 = 50;
/// Requests a client may make at once before the average applies.
pub const DEFAULT_RATE_BURST: u32 = 100;
/// The NATS subject prefix, or the RabbitMQ namespace, on a real broker.
pub const DEFAULT_BUS_PREFIX: &str = "invoicing";
/// How long `--chaos` keeps payments down.
pub const DEFAULT_CHAOS_OUTAGE: Duration = Duration::from_secs(6);

/// How a client may prove who it is to the gateway.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The `X-Api-Key` value or the `Authorization: Bearer` token.
    pub secret: String,
    /// The client it identifies (the rate limit's key).
    pub client: String,
}

/// The system's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// A PostgreSQL URL: each service gets its own schema in that database. `None`: a SQLite
    /// file per service in a temporary directory.
    pub database_url: Option<String>,
    /// A NATS server with JetStream.
    pub nats_url: Option<String>,
    /// A RabbitMQ server (wins over NATS when both are set).
    pub amqp_url: Option<String>,
    /// Kafka brokers, `host:port[,host:port…]` (`kafka://` allowed; wins over RabbitMQ and
    /// NATS).
    pub kafka_url: Option<String>,
    /// On a real broker: the NATS subject and stream prefix, or the RabbitMQ namespace in
    /// front of every exchange and queue name.
    pub bus_prefix: String,
    /// Who may call the gateway.
    pub credentials: Vec<Credential>,
    /// Per-client average rate.
    pub rate_per_second: u32,
    /// Per-client burst.
    pub rate_burst: u32,
    /// How long graceful shutdown keeps serving after readiness fails.
    pub drain_delay: Duration,
    /// Faults the memory bus injects (duplicates, delays, reordering, lost acks), to show
    /// that the system's numbers do not depend on a well-behaved broker. `None`: none.
    pub memory_faults: Option<ms_bus::memory::Faults>,
}

impl Default for Config {
    /// The embedded defaults: SQLite, the memory bus, the demo credentials,
    /// [`DEFAULT_RATE_PER_SECOND`] / [`DEFAULT_RATE_BURST`], a one-second drain.
    fn default() -> Self {
        Self {
            database_url: None,
            nats_url: None,
            amqp_url: None,
            kafka_url: None,
            bus_prefix: DEFAULT_BUS_PREFIX.to_owned(),
            credentials: vec![
                Credential {
                    secret: DEMO_API_KEY.to_owned(),
                    client: DEMO_CLIENT.to_owned(),
                },
                Credential {
                    secret: DEMO_BEARER_TOKEN.to_owned(),
                    client: DEMO_CLIENT.to_owned(),
                },
            ],
            rate_per_second: DEFAULT_RATE_PER_SECOND,
            rate_burst: DEFAULT_RATE_BURST,
            drain_delay: Duration::from_secs(1),
            memory_faults: None,
        }
    }
}

/// What the program was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Run the scenario and exit.
    pub once: bool,
    /// Stop payments for a while during the scenario.
    pub chaos: bool,
    /// The system's configuration.
    pub config: Config,
}

impl Options {
    /// Reads `args` (without the program name), falling back to `env` for each URL
    /// (`INVOICING_DATABASE_URL`, `INVOICING_NATS_URL`, `INVOICING_AMQP_URL`,
    /// `INVOICING_KAFKA_URL`).
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        let mut options = Self::default();
        let config = &mut options.config;
        config.database_url = env("INVOICING_DATABASE_URL").filter(|v| !v.is_empty());
        config.nats_url = env("INVOICING_NATS_URL").filter(|v| !v.is_empty());
        config.amqp_url = env("INVOICING_AMQP_URL").filter(|v| !v.is_empty());
        config.kafka_url = env("INVOICING_KAFKA_URL").filter(|v| !v.is_empty());
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| Error::Config(format!("{name} needs a value")))
            };
            match flag.as_str() {
                "--once" => options.once = true,
                "--chaos" => options.chaos = true,
                "--database-url" => config.database_url = Some(value("--database-url")?),
                "--nats-url" => config.nats_url = Some(value("--nats-url")?),
                "--amqp-url" => config.amqp_url = Some(value("--amqp-url")?),
                "--kafka-url" => config.kafka_url = Some(value("--kafka-url")?),
                "--help" | "-h" => return Err(Error::Config(USAGE.to_owned())),
                other => return Err(Error::Config(format!("unknown flag {other}\n{USAGE}"))),
            }
        }
        Ok(options)
    }
}

/// The flags, as `--help` prints them.
pub const USAGE: &str = "usage: cargo run --example invoicing -- [--once] [--chaos] \
[--database-url postgres://…] [--nats-url nats://…] [--amqp-url amqp://…] [--kafka-url host:port]
  --once           run the scenario and exit (CI)
  --chaos          stop payments for a while: the breaker opens, the dashboard degrades, all catches up
  --database-url   PostgreSQL: one schema per service (env INVOICING_DATABASE_URL)
  --nats-url       NATS JetStream (env INVOICING_NATS_URL)
  --amqp-url       RabbitMQ (env INVOICING_AMQP_URL)
  --kafka-url      Kafka (env INVOICING_KAFKA_URL)";
