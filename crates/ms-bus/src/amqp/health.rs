//! A ms-health [`Check`] for the bus's RabbitMQ connection (features `amqp` and `health`).
//!
//! ```
//! use ms_health::{Check, Status};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let Some(rabbit) = ms_testkit::amqp().await else { return Ok(()) };
//! let bus = ms_bus::amqp::AmqpBus::builder(rabbit.url())
//! #   .namespace(rabbit.namespace())? // the test's own, where it has no vhost of its own
//!     .connect()
//!     .await?;
//! let check = bus.check();
//! assert_eq!(check.check().await.status(), Status::Pass);
//!
//! bus.close().await;
//! assert_eq!(check.check().await.status(), Status::Fail);
//! # Ok(()) }
//! ```
//!
//! Unlike `ms_health::checks::AmqpCheck`, which watches one lapin connection, this one follows
//! the bus across reconnections: it checks whichever connection the bus has now.

use std::sync::Arc;

use ms_health::{BoxFuture, Check, CheckResult};

use super::link::Link;
use crate::BusError;

/// Passes while the bus's RabbitMQ connection is up; warns while the broker blocks publishing
/// (a resource alarm: consumers still work, publishers stall); fails when the connection is
/// down and one attempt to reconnect fails, or when the bus was closed.
///
/// A failing check makes one connection attempt, so an idle service reconnects (and turns
/// healthy) without waiting for its next publish; the registry runs checks under a timeout and
/// caches their results, which bounds how often that happens.
#[derive(Debug, Clone)]
pub struct RabbitMqCheck {
    link: Arc<Link>,
}

impl RabbitMqCheck {
    pub(super) fn new(link: Arc<Link>) -> Self {
        Self { link }
    }
}

impl Check for RabbitMqCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        Box::pin(async move {
            match self.link.session().await {
                Ok(session) if session.connection.status().blocked() => {
                    CheckResult::warn("RabbitMQ blocks publishing (resource alarm)")
                }
                Ok(_) => CheckResult::pass(),
                Err(BusError::Closed) => CheckResult::fail("the bus is closed"),
                Err(error) => CheckResult::fail(format!("RabbitMQ unreachable: {error}")),
            }
        })
    }

    fn component_type(&self) -> Option<&str> {
        Some("component")
    }
}
