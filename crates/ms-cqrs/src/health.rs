//! An ms-health check that a projection is running and caught up within a bound.

use std::time::Duration;

use ms_health::{BoxFuture, Check, CheckResult, Status};

use crate::{ProjectionMonitor, RunnerState};

/// The default bound on how old the oldest unapplied event may be.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(30);

/// Fails when the runner has stopped or failed, or when the oldest event it has not applied
/// was recorded longer ago than the bound; warns while a rebuild runs or events are parked.
/// Use it in readiness: a read model that is far behind answers with stale data.
#[derive(Debug, Clone)]
pub struct CaughtUpCheck {
    monitor: ProjectionMonitor,
    max_lag: Duration,
}

impl CaughtUpCheck {
    /// A check on the runner behind `monitor`, with [`DEFAULT_MAX_LAG`].
    pub fn new(monitor: ProjectionMonitor) -> Self {
        Self {
            monitor,
            max_lag: DEFAULT_MAX_LAG,
        }
    }

    /// The bound on the lag.
    #[must_use]
    pub fn within(mut self, max_lag: Duration) -> Self {
        self.max_lag = max_lag;
        self
    }
}

impl CaughtUpCheck {
    fn evaluate(&self, status: &crate::RunnerStatus) -> CheckResult {
        match &status.state {
            RunnerState::Failed(reason) => {
                return CheckResult::fail(format!(
                    "projection `{}` stopped: {reason}",
                    status.name
                ));
            }
            RunnerState::Stopped => {
                return CheckResult::fail(format!("projection `{}` is shut down", status.name));
            }
            RunnerState::Starting | RunnerState::Running { .. } => {}
        }
        let lag = status.lag();
        let result = if lag > self.max_lag {
            CheckResult::fail(format!(
                "projection `{}` is {:.1}s behind (limit {:.1}s, {} events): readers see stale data",
                status.name,
                lag.as_secs_f64(),
                self.max_lag.as_secs_f64(),
                status.lag_events()
            ))
        } else if status.parked > 0 {
            CheckResult::new(Status::Warn).with_output(format!(
                "projection `{}` parked {} events since start: see its dead letters",
                status.name, status.parked
            ))
        } else if let Some((version, position)) = status.rebuilding {
            CheckResult::new(Status::Warn).with_output(format!(
                "projection `{}` is rebuilding version {version} (at position {position} of {})",
                status.name, status.head
            ))
        } else {
            CheckResult::pass()
        };
        result.with_observed_value(lag.as_secs_f64(), "s")
    }
}

impl Check for CaughtUpCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        let result = self.evaluate(&self.monitor.status());
        Box::pin(std::future::ready(result))
    }

    fn component_type(&self) -> Option<&str> {
        Some("component")
    }

    fn measurement(&self) -> Option<&str> {
        Some("lag")
    }

    fn cache_ttl(&self) -> Option<Duration> {
        // It reads memory.
        Some(Duration::ZERO)
    }
}

impl ProjectionMonitor {
    /// A caught-up check of this runner with [`DEFAULT_MAX_LAG`] (feature `health`).
    #[cfg_attr(docsrs, doc(cfg(feature = "health")))]
    pub fn check(&self) -> CaughtUpCheck {
        CaughtUpCheck::new(self.clone())
    }
}
