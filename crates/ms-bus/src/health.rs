//! Health checks for the bus (feature `health`), as [`ms_health::Check`]s: is the consumer
//! still running, and (with `nats`) does JetStream answer.
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_bus::consumer::{Consumer, Message};
//! use ms_bus::memory::MemoryBus;
//! use ms_bus::Subscription;
//! use ms_health::{Check, Status};
//!
//! let bus = MemoryBus::new();
//! let handler = tower::service_fn(|_m: Message| async { Ok::<_, std::convert::Infallible>(()) });
//! let consumer = Consumer::new(Subscription::events("invoicing.invoice", "reporting")?)
//!     .serve(&bus, handler)
//!     .await?;
//! let check = consumer.check();
//! assert_eq!(check.check().await.status(), Status::Pass);
//! consumer.shutdown().await?;
//! assert_eq!(check.check().await.status(), Status::Fail);
//! # Ok(()) }
//! # #[cfg(not(feature = "memory"))]
//! # fn main() {}
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ms_health::{BoxFuture, Check, CheckResult};

/// Fails once the consumer it came from has stopped (shut down, aborted, its service failed,
/// or its subscription ended): a liveness or readiness check for a service whose job is
/// consuming. Made by [`ConsumerHandle::check`](crate::consumer::ConsumerHandle::check).
#[derive(Debug, Clone)]
pub struct ConsumerCheck {
    pub(crate) running: Arc<AtomicBool>,
    pub(crate) name: Arc<str>,
}

impl Check for ConsumerCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        let running = self.running.load(Ordering::Acquire);
        Box::pin(async move {
            if running {
                CheckResult::pass()
            } else {
                CheckResult::fail(format!("the consumer of {} has stopped", self.name))
            }
        })
    }

    fn component_type(&self) -> Option<&str> {
        Some("component")
    }

    fn cache_ttl(&self) -> Option<Duration> {
        // It reads memory: show a stop on the next probe.
        Some(Duration::ZERO)
    }
}

/// Checks JetStream itself, not only the connection: a JetStream API request
/// (`$JS.API.INFO`) must make a round trip and answer without an error. Passes with the time it took, in milliseconds.
/// Made by [`NatsBus::check`](crate::nats::NatsBus::check).
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
#[derive(Debug, Clone)]
pub struct JetStreamCheck {
    pub(crate) client: async_nats::Client,
}

/// JetStream's account-info API subject: answered by the server only when JetStream is on.
#[cfg(feature = "nats")]
const JETSTREAM_INFO_SUBJECT: &str = "$JS.API.INFO";

#[cfg(feature = "nats")]
impl Check for JetStreamCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            // A raw request rather than async-nats's `query_account`: its typed response does
            // not parse the account info of every server version (2.9 here), and the check
            // must only prove that JetStream answers.
            let reply = match self
                .client
                .request(JETSTREAM_INFO_SUBJECT, bytes::Bytes::new())
                .await
            {
                Ok(reply) => reply,
                Err(e) => return CheckResult::fail(format!("JetStream did not answer: {e}")),
            };
            match serde_json::from_slice::<serde_json::Value>(&reply.payload) {
                Ok(info) if info.get("error").is_none() => CheckResult::pass()
                    .with_observed_value(started.elapsed().as_secs_f64() * 1000.0, "ms"),
                Ok(info) => CheckResult::fail(format!(
                    "JetStream answered with an error: {}",
                    info["error"]
                )),
                Err(e) => CheckResult::fail(format!("JetStream's answer is not JSON: {e}")),
            }
        })
    }

    fn component_type(&self) -> Option<&str> {
        Some("datastore")
    }

    fn measurement(&self) -> Option<&str> {
        Some("responseTime")
    }
}
