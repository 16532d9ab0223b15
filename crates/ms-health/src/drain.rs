//! The drain's state: when shutdown began and how long readiness fails before the process
//! stops serving. Its own file so that the registry holds it without importing the shutdown
//! methods (which are `HealthRegistry`'s, in `shutdown.rs`).

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How long [`HealthRegistry::shutdown`](crate::HealthRegistry::shutdown) keeps serving after failing readiness, unless
/// configured otherwise.
///
/// Long enough for a Kubernetes endpoint update or two load-balancer health-check intervals to
/// take the replica out of rotation, short enough to fit in the default 30 s termination grace
/// period together with the server's own drain.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);

pub(crate) struct ShutdownState {
    pub(crate) drain_delay: Duration,
    pub(crate) began: OnceLock<Instant>,
    /// `true` once shutdown began; a watch channel so the gRPC reporter reacts immediately
    /// rather than at its next poll.
    pub(crate) flag: watch::Sender<bool>,
}

impl ShutdownState {
    pub(crate) fn new(drain_delay: Duration) -> Self {
        Self {
            drain_delay,
            began: OnceLock::new(),
            flag: watch::Sender::new(false),
        }
    }
}
