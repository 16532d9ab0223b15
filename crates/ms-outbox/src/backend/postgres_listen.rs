//! PostgreSQL: the relay's LISTEN connection, which turns each commit's NOTIFY into a wake-up
//! of the shard it wrote to; it reconnects with backoff, and polling covers the gaps.

use std::sync::Arc;
use std::time::Duration;

use ms_resilience::backoff::{ExponentialBackoff, Jitter};
use sqlx::postgres::{PgListener, PgPool};

use super::Wake;
use super::postgres_schedule as schedule;

/// The first pause before the relay's listener tries to connect again.
const LISTEN_RETRY_INITIAL: Duration = Duration::from_millis(100);
/// The longest pause between the listener's connection attempts.
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(5);

/// Listens on `channel` until the relay drops the future, calling `wake` per notification
/// (and with [`Wake::All`] after each (re)connection: commits meanwhile went unheard).
pub(super) async fn listen(pool: PgPool, channel: String, wake: Arc<dyn Fn(Wake) + Send + Sync>) {
    // Reconnection pauses: doubling, no jitter (one listener per relay), polling covers
    // the gap meanwhile.
    let pauses =
        ExponentialBackoff::new(LISTEN_RETRY_INITIAL, LISTEN_RETRY_MAX).with_jitter(Jitter::None);
    let mut failures: u32 = 0;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "outbox relay: cannot connect its listener; polling meanwhile");
                tokio::time::sleep(pauses.ceiling(failures)).await;
                failures = failures.saturating_add(1);
                continue;
            }
        };
        if let Err(error) = listener.listen(&channel).await {
            tracing::warn!(%error, "outbox relay: LISTEN failed; polling meanwhile");
            tokio::time::sleep(pauses.ceiling(failures)).await;
            failures = failures.saturating_add(1);
            continue;
        }
        failures = 0;
        // Anything committed while we were not listening is found by a full scan.
        wake(Wake::All);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let payload = notification.payload();
                    wake(if payload == schedule::NOTIFY_SCHEDULED {
                        Wake::Scheduled
                    } else {
                        payload.parse::<i16>().map_or(Wake::All, Wake::Shard)
                    });
                }
                // The connection dropped; `try_recv` reconnects on the next call.
                Ok(None) => wake(Wake::All),
                Err(error) => {
                    tracing::warn!(%error, "outbox relay: listener failed; reconnecting");
                    break;
                }
            }
        }
    }
}
