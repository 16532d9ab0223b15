//! The relay's timer: moves scheduled rows into the outbox when they are due.
//!
//! It sleeps until the earliest due time (read from the scheduled and recurring tables' due
//! indexes), or until told that a scheduled row was written or moved (a notification, or
//! in-process on SQLite), and never longer than the poll interval (a missed notification, a
//! writer in another process). While nothing is due, a wake-up costs that one read; the moves
//! run only when something is due.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;

use super::queue::ShardQueue;
use super::worker::Shared;
use crate::backend::Promoted;

/// How soon to look again when due rows were left behind: locked by a caller's cancel or
/// reschedule in progress, or their key held by a writer. Short, since they are due, and not
/// zero, so that a long transaction is not polled in a busy loop.
pub(super) const SKIPPED_RETRY: Duration = Duration::from_millis(50);

pub(super) async fn run(ctx: Arc<Shared>, queue: Arc<ShardQueue>, wake: Arc<Notify>) {
    let limit = i64::try_from(ctx.config.batch_size).unwrap_or(i64::MAX);
    loop {
        // One index probe per wake-up while nothing is due: the moves run only when it is.
        let sleep = match ctx.store.next_due().await {
            Ok(Some(Duration::ZERO)) => {
                if move_due(&ctx, &queue, limit).await {
                    // Look again at once: the next due time has changed.
                    continue;
                }
                // Due but left behind: locked by a caller, or its key busy.
                SKIPPED_RETRY
            }
            Ok(Some(until)) => until.min(ctx.config.poll_interval),
            Ok(None) => ctx.config.poll_interval,
            Err(error) => {
                ctx.state.error(error.to_string());
                tracing::warn!(%error, "outbox relay: reading the next due time failed");
                ctx.config.poll_interval
            }
        };
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = wake.notified() => {}
        }
    }
}

/// Fires the due recurring ticks and moves the due scheduled rows into the outbox; whether
/// anything was done.
async fn move_due(ctx: &Shared, queue: &ShardQueue, limit: i64) -> bool {
    let mut done = false;
    // Recurring ticks first: they become scheduled rows, due now, moved just below.
    loop {
        match ctx.store.fire_recurring(limit).await {
            // A round fires at most `limit` schedules; more may be due.
            Ok(ticks) if ticks > 0 => {
                done = true;
                ctx.state.ticks.fetch_add(ticks as u64, Ordering::Relaxed);
                record_ticks(ctx, ticks);
            }
            Ok(_) => break,
            Err(error) => {
                ctx.state.error(error.to_string());
                tracing::warn!(%error, "outbox relay: firing recurring schedules failed");
                break;
            }
        }
    }
    // Full rounds, one after another, until a short one: after downtime the due rows move
    // in bounded transactions.
    loop {
        match ctx.store.promote_due(limit).await {
            Ok(promoted) => {
                let moved = promoted.lateness.len();
                done |= moved > 0;
                record(ctx, queue, &promoted);
                if moved < ctx.config.batch_size {
                    break;
                }
            }
            Err(error) => {
                ctx.state.error(error.to_string());
                tracing::warn!(%error, "outbox relay: moving due scheduled rows failed");
                break;
            }
        }
    }
    done
}

fn record(ctx: &Shared, queue: &ShardQueue, promoted: &Promoted) {
    if promoted.lateness.is_empty() {
        return;
    }
    ctx.state.heartbeat();
    ctx.state
        .promoted
        .fetch_add(promoted.lateness.len() as u64, Ordering::Relaxed);
    for shard in &promoted.shards {
        queue.mark(*shard);
    }
    record_metrics(ctx, promoted);
}

#[cfg(feature = "metrics")]
fn record_metrics(ctx: &Shared, promoted: &Promoted) {
    let table = ctx.table.clone();
    metrics::counter!("ms_outbox_scheduled_due_total", "table" => table.clone())
        .increment(promoted.lateness.len() as u64);
    let histogram = metrics::histogram!("ms_outbox_scheduled_lateness_seconds", "table" => table);
    for late in &promoted.lateness {
        histogram.record(late.as_secs_f64());
    }
}

#[cfg(not(feature = "metrics"))]
fn record_metrics(_: &Shared, _: &Promoted) {}

#[cfg(feature = "metrics")]
fn record_ticks(ctx: &Shared, ticks: usize) {
    metrics::counter!("ms_outbox_recurring_ticks_total", "table" => ctx.table.clone())
        .increment(ticks as u64);
}

#[cfg(not(feature = "metrics"))]
fn record_ticks(_: &Shared, _: usize) {}
