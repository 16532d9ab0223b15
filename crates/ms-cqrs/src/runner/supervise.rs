//! A runner's tasks under watch: a task that panics (a projection's `apply` that panics, on
//! either feed) fails the runner with the panic's message and stops its other tasks, instead
//! of vanishing while the runner still says it runs.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::progress::Progress;
use super::status::RunnerState;

/// Spawns `task`; if it panics, the runner goes [`RunnerState::Failed`] with
/// "`what` panicked: `message`" and every task of the pipeline is told to stop.
pub(crate) fn spawn<F>(
    what: String,
    progress: Arc<Progress>,
    stop: watch::Sender<bool>,
    task: F,
) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    // Unwind safety: after a panic nothing of the task is used again; the state it shares
    // (progress, channels) is only read to report the failure, and the open transaction, if
    // any, rolls back when dropped.
    tokio::spawn(async move {
        if let Err(panic) = AssertUnwindSafe(task).catch_unwind().await {
            let reason = format!("{what} panicked: {}", panic_message(panic.as_ref()));
            tracing::error!(%reason, "projection runner failed");
            progress.set_state(RunnerState::Failed(reason));
            stop.send_replace(true);
        }
    })
}

/// The message of a panic payload (`panic!("…")` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)")
}
