//! One event that failed in its batch, applied on its own: retried with the policy's
//! backoff, then the last resort (stop or park).

use std::collections::HashMap;

use ms_bus::Envelope;

use super::{Failure, MAX_INFRA_DELAY, Outcome, Segment, Work};
use crate::runner::policy::LastResort;
use crate::runner::status::RunnerState;
use crate::store::Store;
use crate::{ApplyError, Projection};

impl<DB: Store, P: Projection<DB>> Segment<DB, P> {
    /// Handles one event in its own transaction, retrying as the policy says; false when
    /// the runner must stop.
    pub(super) async fn process_one(&mut self, work: &mut Work) -> bool {
        let policy = self.shared.config.policy;
        let mut attempt: u32 = 0;
        let mut infra_attempt: u32 = 0;
        loop {
            if *self.stop.borrow() {
                // Shutting down: leave the event to the next start (not committed, not acked).
                return false;
            }
            let result = async {
                let mut tx = self.shared.pool.begin().await?;
                let outcome = self.step(&mut tx, work, &mut HashMap::new()).await?;
                if let Some(position) = work.position {
                    self.save_checkpoint(&mut tx, position).await?;
                }
                tx.commit().await?;
                Ok::<_, Failure>(outcome)
            }
            .await;
            match result {
                Ok(outcome) => {
                    self.settle(std::slice::from_ref(work), &[outcome]).await;
                    if let Some(position) = work.position {
                        self.advance(position);
                    }
                    return true;
                }
                Err(Failure::Infra(e)) => {
                    // The database, not the event: wait for it, however long.
                    self.progress.error(&e);
                    infra_attempt = infra_attempt.saturating_add(1);
                    let delay = policy.delay(infra_attempt).min(MAX_INFRA_DELAY);
                    tokio::time::sleep(delay).await;
                }
                Err(Failure::Apply(e)) => {
                    self.progress
                        .error(&format!("applying {}: {e}", describe(work)));
                    if !e.is_permanent() && is_connection_error(&e) {
                        infra_attempt = infra_attempt.saturating_add(1);
                        tokio::time::sleep(policy.delay(infra_attempt).min(MAX_INFRA_DELAY)).await;
                        continue;
                    }
                    if e.is_permanent() || attempt >= policy.retries {
                        return self.last_resort(work, &e, attempt).await;
                    }
                    attempt += 1;
                    tokio::time::sleep(policy.delay(attempt)).await;
                }
            }
        }
    }

    /// The policy's last resort for an event that failed for good.
    pub(super) async fn last_resort(
        &mut self,
        work: &mut Work,
        error: &ApplyError,
        attempts: u32,
    ) -> bool {
        match self.shared.config.policy.last_resort {
            LastResort::Stop => {
                let reason = format!("{} failed: {error}", describe(work));
                tracing::error!(projection = %self.shared.name, %reason, "projection stopped");
                self.progress.set_state(RunnerState::Failed(reason));
                self.stop.send_replace(true);
                false
            }
            LastResort::Park { block_key } => {
                let mut infra_attempt = 0_u32;
                loop {
                    match self.park(work, error, attempts).await {
                        Ok(()) => break,
                        Err(e) => {
                            self.progress.error(&e);
                            if *self.stop.borrow() {
                                return false;
                            }
                            infra_attempt = infra_attempt.saturating_add(1);
                            tokio::time::sleep(
                                self.shared
                                    .config
                                    .policy
                                    .delay(infra_attempt)
                                    .min(MAX_INFRA_DELAY),
                            )
                            .await;
                        }
                    }
                }
                tracing::warn!(projection = %self.shared.name, event = %describe(work), %error, "event parked");
                if block_key {
                    self.parked_keys.insert(work.key.clone());
                }
                self.settle(std::slice::from_ref(work), &[Outcome::Parked])
                    .await;
                if let Some(position) = work.position {
                    self.advance(position);
                }
                true
            }
        }
    }
}

pub(super) fn describe(work: &Work) -> String {
    let id = work.envelope.as_ref().map_or("?", Envelope::id);
    match work.position {
        Some(position) => format!("event {id} at position {position} (key `{}`)", work.key),
        None => format!("event {id} (key `{}`)", work.key),
    }
}

/// Whether a projection's error is the database connection failing rather than the event.
pub(super) fn is_connection_error(error: &ApplyError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(sqlx) = e.downcast_ref::<sqlx::Error>() {
            // Inside a projection a protocol error is most often the connection cut in the
            // middle of a message: retried as the database's failure, never charged to the
            // event (the command side answers it 500 instead).
            return ms_outbox::is_database_unavailable(sqlx)
                || matches!(sqlx, sqlx::Error::Protocol(_));
        }
        source = e.source();
    }
    false
}
