//! The NATS connection check.
//!
//! ```no_run
//! # #[cfg(feature = "nats")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_health::{checks::NatsCheck, HealthRegistry};
//!
//! let client = async_nats::connect("127.0.0.1:4222").await?;
//! let registry = HealthRegistry::builder()
//!     .readiness("nats", NatsCheck::new(client))
//!     .build()?;
//! assert!(registry.readiness().await.is_healthy());
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "nats"))]
//! # fn main() {}
//! ```

use std::time::Instant;

use async_nats::client::RequestErrorKind;
use async_nats::connection::State;
use bytes::Bytes;

use super::{COMPONENT, RESPONSE_TIME, millis_since};
use crate::check::{BoxFuture, Check, CheckResult};

/// Checks an `async_nats::Client`: the connection state must be `Connected`, pending writes must
/// flush, and a request must make a round trip through the server.
///
/// `Client::flush` only empties the client's write buffer, which succeeds against a server that
/// has silently gone away; the round trip is what proves the server is answering. It sends an
/// empty request to a fresh inbox subject nobody listens on: the server's "no responders" reply
/// is the answer (async-nats always announces no-responders support). Passes with the round-trip
/// time in milliseconds as observed value.
///
/// While the client is reconnecting, `flush` and the request wait for the new connection
/// rather than fail; the registry's timeout turns that wait into a failed check.
#[derive(Clone, Debug)]
pub struct NatsCheck {
    client: async_nats::Client,
}

impl NatsCheck {
    /// A check of `client` (a clone shares the connection).
    pub fn new(client: async_nats::Client) -> Self {
        Self { client }
    }
}

impl Check for NatsCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        Box::pin(async move {
            let state = self.client.connection_state();
            if state != State::Connected {
                return CheckResult::fail(format!("NATS connection is {state}"));
            }
            let started = Instant::now();
            if let Err(e) = self.client.flush().await {
                return CheckResult::fail(format!("NATS flush failed: {e}"));
            }
            let subject = self.client.new_inbox();
            match self.client.request(subject, Bytes::new()).await {
                // Either a reply or the server's "no responders": both came back from the server.
                Ok(_) => CheckResult::pass().with_observed_value(millis_since(started), "ms"),
                Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                    CheckResult::pass().with_observed_value(millis_since(started), "ms")
                }
                Err(e) => CheckResult::fail(format!("NATS round trip failed: {e}")),
            }
        })
    }

    fn component_type(&self) -> Option<&str> {
        Some(COMPONENT)
    }

    fn measurement(&self) -> Option<&str> {
        Some(RESPONSE_TIME)
    }
}
