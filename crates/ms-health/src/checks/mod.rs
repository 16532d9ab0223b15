//! Ready-made checks for third-party clients, each behind the cargo feature of its client.
//!
//! | check | feature | runs |
//! |---|---|---|
//! | [`SqlxPoolCheck`] | `postgres`, `sqlite` | `SELECT 1` through the pool, reports the response time |
//! | [`NatsCheck`] | `nats` | connection state, then a round trip through the server |
//! | [`AmqpCheck`] | `amqp` | lapin connection state (connected, not blocked) |
//!
//! Checks for this project's own components do not live here: the crate that owns a component
//! implements [`Check`](crate::Check) for it behind its own `health` feature, so that this crate
//! never depends on the rest of the project.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_health::{checks::SqlxPoolCheck, HealthRegistry, Status};
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let registry = HealthRegistry::builder()
//!     .readiness("sqlite", SqlxPoolCheck::new(pool))
//!     .build()?;
//! assert_eq!(registry.readiness().await.status, Status::Pass);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```

#[cfg(feature = "amqp")]
mod amqp;
#[cfg(feature = "nats")]
mod nats;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sqlx;

#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use self::amqp::AmqpCheck;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use self::nats::NatsCheck;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use self::sqlx::PgPoolCheck;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use self::sqlx::SqlitePoolCheck;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
pub use self::sqlx::{SQLX_DEFAULT_QUERY, SqlxPoolCheck};

/// The IETF `componentType` of checks against a database.
pub const DATASTORE: &str = "datastore";
/// The IETF `componentType` of checks against a broker or another service.
pub const COMPONENT: &str = "component";
/// The measurement name of checks that report a response time in milliseconds.
pub const RESPONSE_TIME: &str = "responseTime";

/// Elapsed milliseconds with microsecond resolution, which is what a dashboard wants to plot.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "nats"))]
fn millis_since(since: std::time::Instant) -> f64 {
    let micros = u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX);
    f64::from(micros) / 1000.0
}
