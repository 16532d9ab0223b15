//! An ms-health check of a saga's instances: none parked, none stuck.

use std::time::Duration;

use ms_health::{BoxFuture, Check, CheckResult};

use crate::{SagaBackend, SagaStore, Status};

/// The default idle time after which an unfinished instance counts as stuck.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(3600);

/// Warns while instances of a saga are parked (a message failed and waits for an operator)
/// or stuck (not completed, no progress for [`stuck_after`](Self::stuck_after)); fails when
/// the store cannot be read. Parked instances do not make a service unready (the others
/// flow), so the check warns rather than fails: alert on it.
#[derive(Debug, Clone)]
pub struct SagaCheck<DB: SagaBackend> {
    store: SagaStore<DB>,
    saga: &'static str,
    stuck_after: Duration,
}

impl<DB: SagaBackend> SagaCheck<DB> {
    /// A check of saga `saga` (its [`NAME`](crate::Saga::NAME)) in `store`, with
    /// [`DEFAULT_STUCK_AFTER`].
    pub fn new(store: SagaStore<DB>, saga: &'static str) -> Self {
        Self {
            store,
            saga,
            stuck_after: DEFAULT_STUCK_AFTER,
        }
    }

    /// The idle time after which an unfinished instance counts as stuck.
    #[must_use]
    pub fn stuck_after(mut self, idle: Duration) -> Self {
        self.stuck_after = idle;
        self
    }

    async fn evaluate(&self) -> CheckResult {
        let parked = match self.store.count(self.saga, Status::Parked).await {
            Ok(n) => n,
            Err(e) => return CheckResult::fail(format!("saga `{}`: {e}", self.saga)),
        };
        let stuck = match self
            .store
            .stuck::<serde_json::Value>(self.saga, self.stuck_after, 1)
            .await
        {
            Ok(rows) => rows.len(),
            Err(e) => return CheckResult::fail(format!("saga `{}`: {e}", self.saga)),
        };
        if parked > 0 {
            CheckResult::warn(format!(
                "saga `{}` has {parked} parked instances: see its parked messages",
                self.saga
            ))
        } else if stuck > 0 {
            CheckResult::warn(format!(
                "saga `{}` has instances without progress for {:.0}s",
                self.saga,
                self.stuck_after.as_secs_f64()
            ))
        } else {
            CheckResult::pass()
        }
        .with_observed_value(parked, "parked")
    }
}

impl<DB: SagaBackend> Check for SagaCheck<DB> {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        Box::pin(self.evaluate())
    }

    fn component_type(&self) -> Option<&str> {
        Some("datastore")
    }

    fn measurement(&self) -> Option<&str> {
        Some("parked")
    }
}
