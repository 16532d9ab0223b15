//! The [`HealthRegistry`]: named checks assigned to probes, and the evaluation of a probe into
//! a [`HealthReport`].
//!
//! ```
//! use ms_health::{check_fn, CheckResult, HealthRegistry, Latch, Probe, Status};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ms_health::BuildError> {
//! let warmed = Latch::new();
//! let registry = HealthRegistry::builder()
//!     .readiness("cache", check_fn(|| async { CheckResult::pass() }))
//!     .startup("warm-up", warmed.clone())
//!     .build()?;
//!
//! assert_eq!(registry.startup().await.status, Status::Fail);
//! warmed.set();
//! assert_eq!(registry.startup().await.status, Status::Pass);
//!
//! // `exclude` skips a check, as kube-apiserver's `?exclude=` does.
//! let report = registry.evaluate(Probe::Readiness, &["cache"]).await;
//! assert!(report.checks.is_empty());
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use crate::cache::{CachedCheck, Settings};
use crate::check::{Check, Status};
use crate::drain::{DEFAULT_DRAIN_DELAY, ShutdownState};
use crate::error::BuildError;
use crate::options::{
    CheckOptions, DEFAULT_CACHE_TTL, DEFAULT_CHECK_TIMEOUT, DEFAULT_FAILURE_THRESHOLD,
};
use crate::probe::Probe;
use crate::report::{Details, HealthReport};

/// The output of a readiness report while the service shuts down.
pub const SHUTTING_DOWN_OUTPUT: &str = "shutting down";

/// The longest check name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// The checks of a service, evaluated per probe.
///
/// Cloning is cheap and every clone shares the same checks, caches and shutdown state: hand one
/// clone to the router, one to the gRPC reporter and keep one for shutdown.
#[derive(Clone)]
pub struct HealthRegistry {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    checks: Vec<CachedCheck>,
    pub(crate) details: Details,
    pub(crate) shutdown: ShutdownState,
}

impl fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthRegistry")
            .field("checks", &self.check_names().collect::<Vec<_>>())
            .field("details", &self.inner.details)
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}

impl HealthRegistry {
    /// A builder with no checks and all defaults.
    pub fn builder() -> HealthRegistryBuilder {
        HealthRegistryBuilder::default()
    }

    /// Evaluates the liveness probe.
    pub async fn liveness(&self) -> HealthReport {
        self.evaluate(Probe::Liveness, &[] as &[&str]).await
    }

    /// Evaluates the readiness probe. Fails with output [`SHUTTING_DOWN_OUTPUT`] once shutdown
    /// has begun, without running any check.
    pub async fn readiness(&self) -> HealthReport {
        self.evaluate(Probe::Readiness, &[] as &[&str]).await
    }

    /// Evaluates the startup probe. Checks that passed once are not run again.
    pub async fn startup(&self) -> HealthReport {
        self.evaluate(Probe::Startup, &[] as &[&str]).await
    }

    /// Evaluates `probe`, skipping the checks named in `exclude`. The checks run concurrently;
    /// the report's status is the worst of theirs (`pass` if none). An excluded name that matches
    /// no check of the probe is reported in `notes`.
    pub async fn evaluate<S: AsRef<str>>(&self, probe: Probe, exclude: &[S]) -> HealthReport {
        if probe == Probe::Readiness && self.is_shutting_down() {
            let mut report = HealthReport::new(Status::Fail);
            report.output = Some(SHUTTING_DOWN_OUTPUT.to_owned());
            return report;
        }
        let excluded: HashSet<&str> = exclude.iter().map(AsRef::as_ref).collect();
        let selected: Vec<&CachedCheck> = self
            .inner
            .checks
            .iter()
            .filter(|c| c.settings.probes.contains(probe))
            .filter(|c| !excluded.contains(c.settings.name.as_str()))
            .collect();
        let snapshots = join_all(selected.iter().map(|c| c.evaluate(probe))).await;

        let mut report = HealthReport::new(Status::Pass);
        for (check, snapshot) in selected.iter().zip(&snapshots) {
            report.status = report.status.max(snapshot.result.status());
            report
                .checks
                .entry(check.settings.key.clone())
                .or_default()
                .push(check.report(snapshot));
        }
        let mut unmatched: Vec<&str> = excluded
            .into_iter()
            .filter(|name| {
                !self
                    .inner
                    .checks
                    .iter()
                    .any(|c| c.settings.probes.contains(probe) && c.settings.name == *name)
            })
            .collect();
        unmatched.sort_unstable();
        report.notes.extend(
            unmatched
                .into_iter()
                .map(|name| format!("exclude: no {probe} check named {name:?}")),
        );
        report
    }

    /// The names of all registered checks, in registration order.
    pub fn check_names(&self) -> impl Iterator<Item = &str> {
        self.inner.checks.iter().map(|c| c.settings.name.as_str())
    }

    /// The details setting the HTTP and other front ends apply.
    pub fn details(&self) -> Details {
        self.inner.details
    }
}

struct Registration {
    name: String,
    check: Arc<dyn Check>,
    options: CheckOptions,
}

/// Configures a [`HealthRegistry`]: the checks, and the defaults for options a registration
/// leaves unset.
pub struct HealthRegistryBuilder {
    registrations: Vec<Registration>,
    timeout: Duration,
    cache_ttl: Duration,
    failure_threshold: u32,
    details: Details,
    drain_delay: Duration,
}

impl Default for HealthRegistryBuilder {
    fn default() -> Self {
        Self {
            registrations: Vec::new(),
            timeout: DEFAULT_CHECK_TIMEOUT,
            cache_ttl: DEFAULT_CACHE_TTL,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            details: Details::default(),
            drain_delay: DEFAULT_DRAIN_DELAY,
        }
    }
}

impl fmt::Debug for HealthRegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthRegistryBuilder")
            .field(
                "checks",
                &self
                    .registrations
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("cache_ttl", &self.cache_ttl)
            .field("failure_threshold", &self.failure_threshold)
            .field("details", &self.details)
            .field("drain_delay", &self.drain_delay)
            .finish()
    }
}

impl HealthRegistryBuilder {
    /// Registers `check` under `name` with `options`.
    #[must_use]
    pub fn register(
        mut self,
        name: impl Into<String>,
        check: impl Check,
        options: CheckOptions,
    ) -> Self {
        self.registrations.push(Registration {
            name: name.into(),
            check: Arc::new(check),
            options,
        });
        self
    }

    /// Registers a readiness check with default options.
    #[must_use]
    pub fn readiness(self, name: impl Into<String>, check: impl Check) -> Self {
        self.register(name, check, CheckOptions::readiness())
    }

    /// Registers a liveness check with default options. Keep dependencies out of liveness.
    #[must_use]
    pub fn liveness(self, name: impl Into<String>, check: impl Check) -> Self {
        self.register(name, check, CheckOptions::liveness())
    }

    /// Registers a one-shot startup check with default options.
    #[must_use]
    pub fn startup(self, name: impl Into<String>, check: impl Check) -> Self {
        self.register(name, check, CheckOptions::startup())
    }

    /// The timeout of checks that do not set one
    /// (default [`DEFAULT_CHECK_TIMEOUT`]).
    #[must_use]
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The cache TTL of checks that set none themselves
    /// (default [`DEFAULT_CACHE_TTL`]).
    #[must_use]
    pub fn default_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// The failure threshold of checks that do not set one
    /// (default [`DEFAULT_FAILURE_THRESHOLD`]).
    #[must_use]
    pub fn default_failure_threshold(mut self, threshold: u32) -> Self {
        self.failure_threshold = threshold;
        self
    }

    /// Which details the probes show (default [`Details::Hidden`]).
    #[must_use]
    pub fn details(mut self, details: Details) -> Self {
        self.details = details;
        self
    }

    /// How long [`HealthRegistry::shutdown`] waits between failing readiness and returning
    /// (default [`DEFAULT_DRAIN_DELAY`]).
    #[must_use]
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// Validates the configuration and builds the registry.
    pub fn build(self) -> Result<HealthRegistry, BuildError> {
        let mut names = HashSet::new();
        let mut checks = Vec::with_capacity(self.registrations.len());
        for Registration {
            name,
            check,
            options,
        } in self.registrations
        {
            if !valid_name(&name) {
                return Err(BuildError::InvalidName { name });
            }
            if !names.insert(name.clone()) {
                return Err(BuildError::DuplicateName { name });
            }
            let failure_threshold = options.failure_threshold.unwrap_or(self.failure_threshold);
            if failure_threshold == 0 {
                return Err(BuildError::ZeroFailureThreshold { name });
            }
            let timeout = options.timeout.unwrap_or(self.timeout);
            if timeout.is_zero() {
                return Err(BuildError::ZeroTimeout { name, timeout });
            }
            let measurement = options
                .measurement
                .or_else(|| check.measurement().map(str::to_owned));
            let key = match measurement {
                Some(m) => format!("{name}:{m}"),
                None => name.clone(),
            };
            let settings = Settings {
                key,
                component_id: options.component_id.unwrap_or_else(|| name.clone()),
                component_type: options
                    .component_type
                    .or_else(|| check.component_type().map(str::to_owned)),
                probes: options.probes,
                timeout,
                ttl: options
                    .cache_ttl
                    .or_else(|| check.cache_ttl())
                    .unwrap_or(self.cache_ttl),
                failure_threshold,
                critical: options.critical,
                name,
            };
            checks.push(CachedCheck::new(settings, check));
        }
        Ok(HealthRegistry {
            inner: Arc::new(Inner {
                checks,
                details: self.details,
                shutdown: ShutdownState::new(self.drain_delay),
            }),
        })
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
