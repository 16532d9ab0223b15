//! One registered check with its result cache: TTL, single-flight, failure threshold,
//! criticality and the startup latch.
//!
//! The fast path (a fresh result exists) is one `ArcSwap` load, no lock. The slow path takes an
//! async mutex, so at most one run of a check is in flight; callers that queued behind that run
//! take its result instead of starting another, even with a TTL of zero.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::check::{Check, CheckResult, Status};
use crate::probe::{Probe, ProbeSet};
use crate::report::CheckReport;
use crate::run::run_isolated;

/// The result of one completed run, after the failure threshold and criticality were applied.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) result: CheckResult,
    pub(crate) time: SystemTime,
    expires_at: Instant,
    /// Increases with every completed run; tells a caller that queued on the run lock whether a
    /// run finished while it waited.
    seq: u64,
    consecutive_failures: u32,
}

/// Settings resolved at build time; nothing here changes afterwards.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) component_id: String,
    pub(crate) component_type: Option<String>,
    pub(crate) probes: ProbeSet,
    pub(crate) timeout: Duration,
    pub(crate) ttl: Duration,
    pub(crate) failure_threshold: u32,
    pub(crate) critical: bool,
}

pub(crate) struct CachedCheck {
    pub(crate) settings: Settings,
    check: Arc<dyn Check>,
    last: ArcSwapOption<Snapshot>,
    run_lock: Mutex<()>,
    next_seq: AtomicU64,
    /// Set once the startup probe has seen this check pass; the startup probe then reuses it.
    startup_passed: OnceLock<Arc<Snapshot>>,
}

impl std::fmt::Debug for CachedCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedCheck")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl CachedCheck {
    pub(crate) fn new(settings: Settings, check: Arc<dyn Check>) -> Self {
        Self {
            settings,
            check,
            last: ArcSwapOption::empty(),
            run_lock: Mutex::new(()),
            next_seq: AtomicU64::new(1),
            startup_passed: OnceLock::new(),
        }
    }

    /// The result this check contributes to `probe`.
    pub(crate) async fn evaluate(&self, probe: Probe) -> Arc<Snapshot> {
        if probe != Probe::Startup {
            return self.current().await;
        }
        if let Some(passed) = self.startup_passed.get() {
            return Arc::clone(passed);
        }
        let snapshot = self.current().await;
        if snapshot.result.status().is_healthy() {
            // A concurrent startup probe may have latched first; either snapshot passed.
            let _ = self.startup_passed.set(Arc::clone(&snapshot));
        }
        snapshot
    }

    /// A fresh result: the cached one while its TTL lasts, otherwise the result of a new run
    /// shared with every concurrent caller.
    async fn current(&self) -> Arc<Snapshot> {
        let seen = self.last.load_full();
        if let Some(fresh) = seen.as_ref().filter(|s| Instant::now() < s.expires_at) {
            return Arc::clone(fresh);
        }
        let seen_seq = seen.as_ref().map_or(0, |s| s.seq);

        let _running = self.run_lock.lock().await;
        // Re-check under the lock: whoever held it before us may have just refreshed the result,
        // and that result is as fresh as anything we could produce now.
        let latest = self.last.load_full();
        if let Some(shared) = latest.filter(|s| s.seq != seen_seq || Instant::now() < s.expires_at)
        {
            return shared;
        }

        let raw = run_isolated(Arc::clone(&self.check), self.settings.timeout).await;
        let previous = self.last.load_full();
        let snapshot = Arc::new(self.judge(raw, previous.as_deref()));
        self.log_transition(previous.as_deref(), &snapshot);
        self.last.store(Some(Arc::clone(&snapshot)));
        snapshot
    }

    /// Applies the failure threshold and criticality to a raw result.
    fn judge(&self, mut result: CheckResult, previous: Option<&Snapshot>) -> Snapshot {
        let settings = &self.settings;
        let consecutive_failures = if result.status() == Status::Fail {
            previous
                .map_or(0, |p| p.consecutive_failures)
                .saturating_add(1)
        } else {
            0
        };
        if result.status() == Status::Fail {
            if consecutive_failures < settings.failure_threshold {
                let output = result.output().unwrap_or("failed").to_owned();
                result = result.with_output(format!(
                    "failure {consecutive_failures} of {} before this check fails: {output}",
                    settings.failure_threshold
                ));
                result.set_status(Status::Warn);
            } else if !settings.critical {
                result.set_status(Status::Warn);
            }
        }
        let completed = Instant::now();
        Snapshot {
            result,
            time: SystemTime::now(),
            // A TTL too long for the clock (`Duration::MAX`: "cache for good") keeps the result
            // for a century, not for no time at all.
            expires_at: completed
                .checked_add(settings.ttl)
                .unwrap_or_else(|| completed + crate::shutdown::FAR_FUTURE),
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            consecutive_failures,
        }
    }

    fn log_transition(&self, previous: Option<&Snapshot>, next: &Snapshot) {
        let from = previous.map(|p| p.result.status());
        let to = next.result.status();
        if from == Some(to) {
            return;
        }
        let name = &self.settings.name;
        let output = next.result.output().unwrap_or_default();
        match to {
            Status::Fail => {
                tracing::warn!(check = %name, status = %to, %output, "health check failing");
            }
            Status::Warn => {
                tracing::warn!(check = %name, status = %to, %output, "health check degraded");
            }
            Status::Pass => {
                tracing::info!(check = %name, status = %to, "health check passing");
            }
        }
    }

    pub(crate) fn report(&self, snapshot: &Snapshot) -> CheckReport {
        let result = &snapshot.result;
        CheckReport {
            component_id: Some(self.settings.component_id.clone()),
            component_type: self.settings.component_type.clone(),
            observed_value: result.observed_value().cloned(),
            observed_unit: result.observed_unit().map(str::to_owned),
            status: result.status(),
            time: Some(snapshot.time),
            output: result.output().map(str::to_owned),
        }
    }
}
