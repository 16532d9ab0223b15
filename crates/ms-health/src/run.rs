//! Running one check in isolation: its own task, under a timeout.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::check::{Check, CheckResult};

/// Aborts the task when dropped, so that a probe whose caller went away (or a check that timed
/// out) does not leave the check running in the background for ever.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `check` once in a task of its own and turns a timeout or a panic into a failed result.
///
/// The task is what makes a panicking check a failed result instead of a crashed probe: the
/// panic unwinds that task only and surfaces here as a `JoinError`.
pub(crate) async fn run_isolated(check: Arc<dyn Check>, timeout: Duration) -> CheckResult {
    let mut task = AbortOnDrop(tokio::spawn(async move { check.check().await }));
    match tokio::time::timeout(timeout, &mut task.0).await {
        Ok(Ok(result)) => result,
        Ok(Err(join_error)) => match join_error.try_into_panic() {
            Ok(payload) => {
                CheckResult::fail(format!("check panicked: {}", panic_message(&*payload)))
            }
            Err(_) => CheckResult::fail("check was cancelled"),
        },
        Err(_elapsed) => CheckResult::fail(format!(
            "check timed out after {}",
            humantime::format_duration(timeout)
        )),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}
