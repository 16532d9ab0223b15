//! How one check is registered: its probes, timeout, cache TTL, failure threshold and
//! criticality, plus the defaults that apply when a registration leaves them unset.
//!
//! ```
//! use std::time::Duration;
//! use ms_health::{check_fn, CheckOptions, CheckResult, HealthRegistry, Status};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ms_health::BuildError> {
//! let registry = HealthRegistry::builder()
//!     .register(
//!         "recommendations",
//!         check_fn(|| async { CheckResult::fail("connection refused") }),
//!         CheckOptions::readiness()
//!             .timeout(Duration::from_millis(200))
//!             .cache_ttl(Duration::from_secs(5))
//!             .non_critical(),
//!     )
//!     .build()?;
//!
//! // A non-critical failure degrades readiness to `warn`: still 200, but visible.
//! assert_eq!(registry.readiness().await.status, Status::Warn);
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use crate::probe::{Probe, ProbeSet};

/// How long a check may run before it counts as failed, unless configured otherwise.
///
/// Half of Kubernetes' default probe timeout (1 s), so that a hung dependency shows up as a
/// failed check in a 503 the kubelet still receives, instead of a probe timeout that says
/// nothing about the cause.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a check result is reused before the check runs again, unless configured otherwise.
///
/// Probes arrive from several sources (kubelet, load balancers, humans); one second keeps the
/// load on a dependency at one check per second per replica however many probes arrive, while
/// still reflecting a change well within one Kubernetes probe period (10 s by default).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(1);

/// How many consecutive failures turn a check red, unless configured otherwise.
///
/// One: orchestrators already apply their own threshold (Kubernetes' `failureThreshold`), and
/// stacking a second one on top would silently multiply the time to react.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 1;

/// The registration options of one check. Start from [`CheckOptions::readiness`],
/// [`CheckOptions::liveness`] or [`CheckOptions::startup`] and override what you need; anything
/// left unset takes the registry builder's default, which in turn defaults to the
/// `DEFAULT_*` constants of this module.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    pub(crate) probes: ProbeSet,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cache_ttl: Option<Duration>,
    pub(crate) failure_threshold: Option<u32>,
    pub(crate) critical: bool,
    pub(crate) component_id: Option<String>,
    pub(crate) component_type: Option<String>,
    pub(crate) measurement: Option<String>,
}

impl CheckOptions {
    /// Options for a check that belongs to `probe` only.
    pub fn new(probe: Probe) -> Self {
        Self {
            probes: ProbeSet::of(probe),
            timeout: None,
            cache_ttl: None,
            failure_threshold: None,
            critical: true,
            component_id: None,
            component_type: None,
            measurement: None,
        }
    }

    /// A readiness-only check: the right place for dependencies.
    pub fn readiness() -> Self {
        Self::new(Probe::Readiness)
    }

    /// A liveness-only check. Keep dependencies out of it (see [`Probe::Liveness`]).
    pub fn liveness() -> Self {
        Self::new(Probe::Liveness)
    }

    /// A one-shot startup check: once it passes it is not run again for the startup probe.
    pub fn startup() -> Self {
        Self::new(Probe::Startup)
    }

    /// Adds the check to `probe` as well. Each probe keeps its own semantics: a check in both
    /// startup and readiness is latched for the startup probe and keeps running for readiness.
    #[must_use]
    pub fn also(mut self, probe: Probe) -> Self {
        self.probes = self.probes.with(probe);
        self
    }

    /// How long the check may run before it counts as failed.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long a result is reused. `Duration::ZERO` runs the check on every probe (concurrent
    /// probes still share one run).
    #[must_use]
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = Some(ttl);
        self
    }

    /// How many consecutive failures it takes for the check to report `fail`; before that it
    /// reports `warn` with the error in its output. Must be at least 1.
    #[must_use]
    pub fn failure_threshold(mut self, threshold: u32) -> Self {
        self.failure_threshold = Some(threshold);
        self
    }

    /// Marks the check as non-critical: it reports `warn` where it would report `fail`, so it
    /// degrades the probe without failing it.
    #[must_use]
    pub fn non_critical(mut self) -> Self {
        self.critical = false;
        self
    }

    /// Sets the IETF `componentId` (defaults to the check's name).
    #[must_use]
    pub fn component_id(mut self, id: impl Into<String>) -> Self {
        self.component_id = Some(id.into());
        self
    }

    /// Sets the IETF `componentType`, overriding [`Check::component_type`](crate::Check::component_type).
    #[must_use]
    pub fn component_type(mut self, component_type: impl Into<String>) -> Self {
        self.component_type = Some(component_type.into());
        self
    }

    /// Sets the measurement name, overriding [`Check::measurement`](crate::Check::measurement).
    #[must_use]
    pub fn measurement(mut self, measurement: impl Into<String>) -> Self {
        self.measurement = Some(measurement.into());
        self
    }

    /// The probes this check belongs to, in [`Probe::ALL`] order.
    pub fn probes(&self) -> Vec<Probe> {
        self.probes.to_vec()
    }
}
