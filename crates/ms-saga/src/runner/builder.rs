//! [`SagaRunnerBuilder`]: the runner's settings and their defaults.

use std::sync::Arc;

use ms_outbox::{Inbox, Outbox};
use ms_resilience::backoff::ExponentialBackoff;

use super::{
    DEFAULT_BACKOFF, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_BACKOFF, DEFAULT_MAX_CONFLICTS,
    TIMEOUT_DESTINATION_SUFFIX,
};
use super::{Inner, SagaRunner, UnknownInstance};
use crate::store::SagaBackend;
use crate::{Saga, SagaStore};

/// Configures a [`SagaRunner`]; every setting has a documented default.
#[must_use]
pub struct SagaRunnerBuilder<S: Saga, DB: SagaBackend> {
    saga: S,
    store: SagaStore<DB>,
    outbox: Outbox<DB>,
    inbox: Inbox<DB>,
    unknown: UnknownInstance,
    max_attempts: u32,
    max_conflicts: u32,
    backoff: ExponentialBackoff,
    timeout_destination: String,
}

impl<S: Saga, DB: SagaBackend> SagaRunnerBuilder<S, DB> {
    /// The inbox that deduplicates deliveries ([`Inbox::default`]).
    pub fn inbox(mut self, inbox: Inbox<DB>) -> Self {
        self.inbox = inbox;
        self
    }

    /// The [`UnknownInstance`] policy ([`UnknownInstance::Park`]).
    pub fn unknown_instance(mut self, policy: UnknownInstance) -> Self {
        self.unknown = policy;
        self
    }

    /// How many times a failing `handle` is tried before parking ([`DEFAULT_MAX_ATTEMPTS`],
    /// at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// How many conflicts with other runners a message rides out ([`DEFAULT_MAX_CONFLICTS`]).
    pub fn max_conflicts(mut self, attempts: u32) -> Self {
        self.max_conflicts = attempts.max(1);
        self
    }

    /// The waits between attempts ([`DEFAULT_BACKOFF`] doubling to [`DEFAULT_MAX_BACKOFF`],
    /// full jitter).
    pub fn backoff(mut self, backoff: ExponentialBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The command destination timeouts are sent to when due (the saga's name +
    /// [`TIMEOUT_DESTINATION_SUFFIX`]); serve a consumer of it with this runner.
    pub fn timeout_destination(mut self, destination: impl Into<String>) -> Self {
        self.timeout_destination = destination.into();
        self
    }

    /// The runner.
    pub fn build(self) -> SagaRunner<S, DB> {
        SagaRunner {
            inner: Arc::new(Inner {
                consumer: format!("saga:{}", S::NAME),
                saga: self.saga,
                store: self.store,
                outbox: self.outbox,
                inbox: self.inbox,
                unknown: self.unknown,
                max_attempts: self.max_attempts,
                max_conflicts: self.max_conflicts,
                backoff: self.backoff,
                timeout_destination: self.timeout_destination,
            }),
        }
    }
}

impl<S: Saga, DB: SagaBackend> SagaRunner<S, DB> {
    /// A runner of `saga` on `store`, sending through `outbox` (in the same database); the
    /// tables of both must be migrated.
    pub fn builder(saga: S, store: SagaStore<DB>, outbox: Outbox<DB>) -> SagaRunnerBuilder<S, DB> {
        SagaRunnerBuilder {
            saga,
            store,
            outbox,
            inbox: Inbox::default(),
            unknown: UnknownInstance::default(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_conflicts: DEFAULT_MAX_CONFLICTS,
            backoff: ExponentialBackoff::new(DEFAULT_BACKOFF, DEFAULT_MAX_BACKOFF),
            timeout_destination: format!("{}{TIMEOUT_DESTINATION_SUFFIX}", S::NAME),
        }
    }
}
