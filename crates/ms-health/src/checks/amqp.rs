//! The AMQP (lapin) connection check.
//!
//! ```no_run
//! # #[cfg(feature = "amqp")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_health::{checks::AmqpCheck, HealthRegistry};
//!
//! let connection = lapin::Connection::connect(
//!     "amqp://guest:guest@127.0.0.1:5672/%2f",
//!     lapin::ConnectionProperties::default(),
//! )
//! .await?;
//! let registry = HealthRegistry::builder()
//!     .readiness("rabbitmq", AmqpCheck::new(&connection))
//!     .build()?;
//! assert!(registry.readiness().await.is_healthy());
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "amqp"))]
//! # fn main() {}
//! ```

use lapin::{Connection, ConnectionStatus};

use super::COMPONENT;
use crate::check::{BoxFuture, Check, CheckResult};

/// Checks a lapin connection's state: passes while it is connected, warns while the broker
/// blocks publishing (a RabbitMQ resource alarm: consumers still work, publishers stall), fails
/// otherwise (connecting, reconnecting, closing, closed, errored).
///
/// It reads the state lapin keeps up to date from the connection's own traffic and heartbeats,
/// so it costs no round trip and holds only the connection's shared status, not the connection.
#[derive(Clone)]
pub struct AmqpCheck {
    status: ConnectionStatus,
}

impl AmqpCheck {
    /// A check of `connection`.
    pub fn new(connection: &Connection) -> Self {
        Self {
            status: connection.status().clone(),
        }
    }
}

impl std::fmt::Debug for AmqpCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpCheck")
            .field("vhost", &self.status.vhost())
            .field("connected", &self.status.connected())
            .finish()
    }
}

impl Check for AmqpCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        let status = &self.status;
        let result = if !status.connected() {
            CheckResult::fail(format!(
                "AMQP connection to vhost {:?} is {}",
                status.vhost().as_str(),
                state_name(status)
            ))
        } else if status.blocked() {
            CheckResult::warn("AMQP broker has blocked publishing (resource alarm)")
        } else {
            CheckResult::pass()
        };
        Box::pin(std::future::ready(result))
    }

    fn component_type(&self) -> Option<&str> {
        Some(COMPONENT)
    }
}

/// lapin keeps the state enum private and exposes one predicate per state.
fn state_name(status: &ConnectionStatus) -> &'static str {
    if status.connecting() {
        "connecting"
    } else if status.reconnecting() {
        "reconnecting"
    } else if status.closing() {
        "closing"
    } else if status.closed() {
        "closed"
    } else if status.errored() {
        "in error"
    } else {
        "not connected"
    }
}
