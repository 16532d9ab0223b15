//! The [`Check`] trait, its [`CheckResult`], and the two checks every service needs: a closure
//! ([`check_fn`]) and a [`Latch`] the application flips itself.
//!
//! ```
//! use ms_health::{check_fn, Check, CheckResult, Latch, Status};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let disk = check_fn(|| async {
//!     CheckResult::pass().with_observed_value(42.5, "percent")
//! });
//! assert_eq!(disk.check().await.status(), Status::Pass);
//!
//! let migrations = Latch::new();
//! assert_eq!(migrations.check().await.status(), Status::Fail);
//! migrations.set();
//! assert_eq!(migrations.check().await.status(), Status::Pass);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A boxed, `Send` future: what [`Check::check`] returns, so that the trait stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The health of a check or of a whole probe, as the IETF health-check draft spells it.
///
/// The order is meaningful: `Pass < Warn < Fail`, so the status of a probe is the maximum of its
/// checks' statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Healthy.
    Pass,
    /// Healthy, with a concern (a non-critical check failed, or a failure streak has not yet
    /// reached its threshold). Probes still answer 200.
    Warn,
    /// Unhealthy. Probes answer 503.
    Fail,
}

impl Status {
    /// `true` for [`Status::Pass`] and [`Status::Warn`]: the states a probe answers 200 for.
    pub fn is_healthy(self) -> bool {
        self != Status::Fail
    }

    /// The lowercase name used on the wire (`"pass"`, `"warn"`, `"fail"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one run of a [`Check`] found.
///
/// Build one with [`CheckResult::pass`], [`CheckResult::warn`] or [`CheckResult::fail`] and add
/// an observed value with [`CheckResult::with_observed_value`].
#[derive(Clone, Debug, PartialEq)]
pub struct CheckResult {
    status: Status,
    output: Option<String>,
    observed_value: Option<serde_json::Value>,
    observed_unit: Option<String>,
}

impl CheckResult {
    /// A passing result with no output.
    pub fn pass() -> Self {
        Self::new(Status::Pass)
    }

    /// A degraded-but-serving result; `output` says what is wrong.
    pub fn warn(output: impl Into<String>) -> Self {
        Self::new(Status::Warn).with_output(output)
    }

    /// A failing result; `output` says what failed (an error message, typically).
    pub fn fail(output: impl Into<String>) -> Self {
        Self::new(Status::Fail).with_output(output)
    }

    /// A result with `status` and nothing else.
    pub fn new(status: Status) -> Self {
        Self {
            status,
            output: None,
            observed_value: None,
            observed_unit: None,
        }
    }

    /// Replaces the human-readable output.
    #[must_use]
    pub fn with_output(mut self, output: impl Into<String>) -> Self {
        self.output = Some(output.into());
        self
    }

    /// Records a measurement (`observedValue`, `observedUnit` in the report), e.g. a response
    /// time of `3.2` `"ms"`.
    #[must_use]
    pub fn with_observed_value(
        mut self,
        value: impl Into<serde_json::Value>,
        unit: impl Into<String>,
    ) -> Self {
        self.observed_value = Some(value.into());
        self.observed_unit = Some(unit.into());
        self
    }

    /// The status of this result.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The human-readable output, if any.
    pub fn output(&self) -> Option<&str> {
        self.output.as_deref()
    }

    /// The observed value, if any.
    pub fn observed_value(&self) -> Option<&serde_json::Value> {
        self.observed_value.as_ref()
    }

    /// The unit of the observed value, if any.
    pub fn observed_unit(&self) -> Option<&str> {
        self.observed_unit.as_deref()
    }

    pub(crate) fn set_status(&mut self, status: Status) {
        self.status = status;
    }
}

/// Converts what a closure returns into a [`CheckResult`], so [`check_fn`] accepts
/// `CheckResult`, `Status`, `Result<(), E>` and `Result<CheckResult, E>` alike.
///
/// An `Err` becomes [`CheckResult::fail`] with the error's `Display` text as output.
pub trait IntoCheckResult {
    /// Performs the conversion.
    fn into_check_result(self) -> CheckResult;
}

impl IntoCheckResult for CheckResult {
    fn into_check_result(self) -> CheckResult {
        self
    }
}

impl IntoCheckResult for Status {
    fn into_check_result(self) -> CheckResult {
        CheckResult::new(self)
    }
}

impl<E: fmt::Display> IntoCheckResult for Result<(), E> {
    fn into_check_result(self) -> CheckResult {
        match self {
            Ok(()) => CheckResult::pass(),
            Err(e) => CheckResult::fail(e.to_string()),
        }
    }
}

impl<E: fmt::Display> IntoCheckResult for Result<CheckResult, E> {
    fn into_check_result(self) -> CheckResult {
        self.unwrap_or_else(|e| CheckResult::fail(e.to_string()))
    }
}

/// One health check: something that can tell whether a dependency or a part of the service is
/// healthy.
///
/// The trait is object safe; the registry stores checks as `Arc<dyn Check>` and runs each call
/// in its own task, under a timeout, so an implementation need not guard against hanging or
/// panicking itself. Implementations for services of this project live in the crate that owns
/// the service, behind its `health` feature.
///
/// ```
/// use ms_health::{BoxFuture, Check, CheckResult};
///
/// struct QueueDepth(std::sync::Arc<std::sync::atomic::AtomicUsize>);
///
/// impl Check for QueueDepth {
///     fn check(&self) -> BoxFuture<'_, CheckResult> {
///         Box::pin(async move {
///             let depth = self.0.load(std::sync::atomic::Ordering::Relaxed);
///             let result = if depth > 10_000 {
///                 CheckResult::warn("queue is backing up")
///             } else {
///                 CheckResult::pass()
///             };
///             result.with_observed_value(depth, "messages")
///         })
///     }
///
///     fn measurement(&self) -> Option<&str> {
///         Some("depth")
///     }
/// }
/// ```
pub trait Check: Send + Sync + 'static {
    /// Runs the check once.
    fn check(&self) -> BoxFuture<'_, CheckResult>;

    /// The IETF `componentType` (`"datastore"`, `"component"`, `"system"`, or a URI), used when
    /// the registration does not set one.
    fn component_type(&self) -> Option<&str> {
        None
    }

    /// The measurement name, the part after `:` in the report key (`"postgres:responseTime"`),
    /// used when the registration does not set one.
    fn measurement(&self) -> Option<&str> {
        None
    }

    /// How long a result may be reused, used when the registration does not set a TTL. `None`
    /// defers to the registry's default. Checks that only read memory (like [`Latch`]) return
    /// `Some(Duration::ZERO)`, so that flipping them shows up on the next probe.
    fn cache_ttl(&self) -> Option<Duration> {
        None
    }
}

impl<T: Check + ?Sized> Check for Arc<T> {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        (**self).check()
    }

    fn component_type(&self) -> Option<&str> {
        (**self).component_type()
    }

    fn measurement(&self) -> Option<&str> {
        (**self).measurement()
    }

    fn cache_ttl(&self) -> Option<Duration> {
        (**self).cache_ttl()
    }
}

impl<T: Check + ?Sized> Check for Box<T> {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        (**self).check()
    }

    fn component_type(&self) -> Option<&str> {
        (**self).component_type()
    }

    fn measurement(&self) -> Option<&str> {
        (**self).measurement()
    }

    fn cache_ttl(&self) -> Option<Duration> {
        (**self).cache_ttl()
    }
}

/// A [`Check`] made from an async closure; see [`check_fn`].
#[derive(Clone)]
pub struct FnCheck<F> {
    f: F,
}

impl<F> fmt::Debug for FnCheck<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCheck").finish_non_exhaustive()
    }
}

/// Turns an async closure into a [`Check`].
///
/// The closure may return anything that implements [`IntoCheckResult`]: a [`CheckResult`], a
/// [`Status`], or a `Result` whose error becomes the failure output.
///
/// ```
/// # use ms_health::{check_fn, Check, Status};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let check = check_fn(|| async { "42".parse::<u8>().map(|_| ()) });
/// assert_eq!(check.check().await.status(), Status::Pass);
/// # }
/// ```
pub fn check_fn<F, Fut>(f: F) -> FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoCheckResult,
{
    FnCheck { f }
}

impl<F, Fut> Check for FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoCheckResult,
{
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        let fut = (self.f)();
        Box::pin(async move { fut.await.into_check_result() })
    }
}

/// The output a [`Latch`] reports while it is not set.
pub const LATCH_PENDING_OUTPUT: &str = "not done yet";

/// A one-way switch the application flips when something it waits for has happened
/// ("migrations ran", "caches warmed"). As a [`Check`] it fails until [`Latch::set`] is called
/// and passes for ever after.
///
/// Clones share the same switch: keep one clone in the registry and hand another to the code
/// that does the work.
#[derive(Clone, Debug, Default)]
pub struct Latch {
    set: Arc<AtomicBool>,
}

impl Latch {
    /// A latch that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the latch. Idempotent; there is no way back.
    pub fn set(&self) {
        // Release pairs with the Acquire in `is_set`: whatever the application did before
        // setting the latch is visible to whoever observes it set.
        self.set.store(true, Ordering::Release);
    }

    /// Whether [`Latch::set`] has been called on this latch or a clone of it.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }
}

impl Check for Latch {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        let result = if self.is_set() {
            CheckResult::pass()
        } else {
            CheckResult::fail(LATCH_PENDING_OUTPUT)
        };
        Box::pin(std::future::ready(result))
    }

    fn cache_ttl(&self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}
