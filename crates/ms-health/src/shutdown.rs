//! Graceful shutdown: fail readiness first, give load balancers time to notice, then let the
//! caller stop its server. Liveness keeps passing throughout, so the orchestrator does not
//! restart a process that is merely draining.
//!
//! ```
//! use std::time::Duration;
//! use ms_health::{HealthRegistry, Status};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), ms_health::BuildError> {
//! let registry = HealthRegistry::builder()
//!     .drain_delay(Duration::from_secs(5))
//!     .build()?;
//!
//! // In a server: `axum::serve(listener, app).with_graceful_shutdown(
//! //     registry.shutdown_on(async { tokio::signal::ctrl_c().await.ok(); }))`.
//! let (trigger, signal) = tokio::sync::oneshot::channel::<()>();
//! let shutdown = tokio::spawn(registry.shutdown_on(async { signal.await.ok(); }));
//!
//! assert_eq!(registry.readiness().await.status, Status::Pass);
//! trigger.send(()).unwrap();
//! tokio::task::yield_now().await;
//! assert_eq!(registry.readiness().await.status, Status::Fail);
//! assert_eq!(registry.liveness().await.status, Status::Pass);
//! shutdown.await.unwrap(); // returns once the drain delay has passed
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

pub use crate::drain::DEFAULT_DRAIN_DELAY;
use crate::registry::HealthRegistry;

/// Where an instant too far away for the clock is put: a century on, later than any process
/// lives and well within the clock's range.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl HealthRegistry {
    /// Begins shutdown and waits out the drain delay: readiness fails immediately with output
    /// "shutting down", liveness is untouched, and the returned future completes once the drain
    /// delay has passed since shutdown first began, at which point the caller stops its server.
    ///
    /// Calling it again (or concurrently) does not extend the delay: every caller returns at the
    /// same deadline.
    pub async fn shutdown(&self) {
        let deadline = self.begin_shutdown();
        tokio::time::sleep_until(deadline).await;
    }

    /// Fails readiness now without waiting; returns when the drain delay ends. Use it when the
    /// drain is awaited elsewhere, or not at all.
    pub fn begin_shutdown(&self) -> Instant {
        let state = &self.inner.shutdown;
        let began = *state.began.get_or_init(Instant::now);
        state.flag.send_replace(true);
        tracing::info!(
            drain_delay = %humantime::format_duration(state.drain_delay),
            "shutdown began: readiness now fails"
        );
        // A delay too long for the clock (`Duration::MAX`) drains for a century, as asked,
        // rather than not at all.
        began
            .checked_add(state.drain_delay)
            .unwrap_or_else(|| began + FAR_FUTURE)
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.flag.borrow()
    }

    /// A future that waits for `trigger` (a signal, a cancellation token), then performs
    /// [`HealthRegistry::shutdown`]. It is `Send + 'static`, as axum's
    /// `with_graceful_shutdown` requires, so the server stops accepting connections only after
    /// load balancers had the drain delay to see readiness fail.
    pub fn shutdown_on<F>(&self, trigger: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future + Send + 'static,
    {
        let registry = self.clone();
        async move {
            trigger.await;
            registry.shutdown().await;
        }
    }

    /// A future that completes when shutdown begins (immediately if it already has), for work
    /// that should stop with readiness rather than with the server: consumers, schedulers.
    pub fn shutdown_begun(&self) -> impl Future<Output = ()> + Send + 'static {
        // The future holds a clone of the registry, so the channel outlives it and a dropped
        // registry cannot be mistaken for a shutdown.
        let registry = self.clone();
        let mut flag = self.inner.shutdown.flag.subscribe();
        async move {
            let _ = flag.wait_for(|began| *began).await;
            drop(registry);
        }
    }
}
