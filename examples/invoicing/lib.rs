//! The invoicing example as a library: four services (gateway, invoicing, payments,
//! reporting), each on its own loopback port with its own database, talking over REST, gRPC,
//! events and commands; a scripted scenario; and the trace of one request across all of them.
//!
//! `cargo run --example invoicing` runs it (see `examples/README.md`); the end-to-end tests
//! drive the same code:
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), ms_examples::Error> {
//! use ms_examples::{Config, System, scenario};
//!
//! let system = System::start(Config::default()).await?; // SQLite per service, memory bus
//! let report = scenario::run(&system, &mut std::io::stdout(), false).await?;
//! assert_eq!(report.dashboard["invoices"]["by_status"]["paid"]["count"], 2);
//! system.shutdown().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]

/// Writes `$messages` into the outbox in transaction `$tx`, under a span of its own (the
/// stored trace context is that span's, so the tree shows the hop through the outbox).
macro_rules! enqueue {
    ($service:literal, $db:ident, $tx:ident, $messages:expr) => {{
        let messages: Vec<ms_outbox::OutboxMessage> = $messages;
        let span = $crate::outbox_span($service, &messages);
        tracing::Instrument::instrument($db.outbox.enqueue_all(&mut *$tx, messages), span).await?;
    }};
}
pub(crate) use enqueue;

pub mod bff;
mod bus;
pub mod config;
mod db;
pub mod gateway;
/// The payments service's gRPC API (`payments.v1.Payments`), generated at build time from
/// `proto/payments.proto`: a client for it is `grpc::payments_client::PaymentsClient`.
#[allow(missing_docs, unreachable_pub, clippy::pedantic)]
pub mod grpc {
    tonic::include_proto!("payments.v1");
}
pub mod http;
pub mod invoicing_service;
pub mod metrics;
pub mod payments;
pub mod reporting;
pub mod scenario;
mod system;
pub mod trace_tree;

pub use config::{Config, Options};
pub use system::{Addresses, System};

/// The largest request body the gateway forwards.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What went wrong starting or running the system.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A flag, variable or URL is wrong.
    #[error("{0}")]
    Config(String),
    /// A database call failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The outbox or inbox failed.
    #[error("outbox: {0}")]
    Outbox(#[from] ms_outbox::OutboxError),
    /// The bus failed.
    #[error("bus: {0}")]
    Bus(#[from] ms_bus::BusError),
    /// An envelope could not be built.
    #[error("envelope: {0}")]
    Envelope(#[from] ms_bus::EnvelopeError),
    /// An event's data was not what its type promises.
    #[error("event data: {0}")]
    Data(#[from] ms_bus::DataError),
    /// A socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A health registry did not build.
    #[error("health: {0}")]
    Health(#[from] ms_health::BuildError),
    /// JSON did not (de)serialize.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A command on the write side did not go through.
    #[error("command: {0}")]
    Command(#[from] ms_cqrs::command::CommandError),
    /// An HTTP call failed.
    #[error("http: {0}")]
    Http(String),
    /// The scenario saw something it did not expect.
    #[error("scenario: {0}")]
    Scenario(String),
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A span of one service's own work, named `label`, with the service and the current
/// correlation ID as attributes (the trace tree labels spans by service from it).
pub(crate) fn service_span(service: &'static str, label: impl Into<String>) -> tracing::Span {
    let label: String = label.into();
    tracing::info_span!(
        "service",
        otel.name = label,
        ms.service = service,
        correlation.id = ms_tracing::CorrelationId::current().map(|c| c.to_string()),
    )
}

/// The span around an outbox write, naming what it enqueues.
pub(crate) fn outbox_span(
    service: &'static str,
    messages: &[ms_outbox::OutboxMessage],
) -> tracing::Span {
    let what: Vec<&str> = messages.iter().map(|m| m.envelope().ty()).collect();
    service_span(service, format!("outbox: enqueue {}", what.join(", ")))
}
