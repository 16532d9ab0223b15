//! [`SagaRunner`]: handles each message of a saga in one transaction.
//!
//! One message, one transaction, which:
//!
//! 1. records the envelope in the [inbox](ms_outbox::Inbox) (consumer `saga:` + the saga's
//!    name): a redelivered message finds itself recorded and is settled without effect;
//! 2. loads the instance (a message of a completed instance, or a timeout that was cancelled
//!    or replaced, is settled without effect; one of a parked instance is parked behind it;
//!    one of an unknown instance goes to the [`UnknownInstance`] policy);
//! 3. calls [`Saga::handle`] with the state;
//! 4. saves the new state at the loaded version + 1 (an insert for a new instance): another
//!    runner that got there first makes the save find nothing, and everything runs again
//!    after a jittered backoff (so the decide step may run more than once: it is pure);
//! 5. cancels and schedules the timeouts and enqueues the commands and events through the
//!    [outbox](ms_outbox::Outbox);
//! 6. commits.
//!
//! A crash anywhere before the commit leaves nothing behind, and the bus redelivers; after it,
//! the redelivery is settled by step 1. Every effect of every step therefore happens once.
//!
//! A `handle` that fails is retried with the [`backoff`](SagaRunnerBuilder::backoff) (from
//! ms-resilience) up to [`max_attempts`](SagaRunnerBuilder::max_attempts) times; then the
//! instance is parked with the message and the reason, and its later messages wait behind it
//! until [`replay`](SagaRunner::replay) or [`discard`](SagaRunner::discard).
//!
//! The runner is a `tower::Service<ms_bus::consumer::Message>`: serve it with an ms-bus
//! [`Consumer`](ms_bus::consumer::Consumer), whose per-key lanes keep one instance's
//! messages in order when their partition key (or subject) is the instance id; across
//! consumers, the version serializes them.

mod builder;
mod effects;
mod park;
mod step;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use ms_bus::Envelope;
use ms_bus::consumer::{Message, Outcome};
use ms_outbox::{Inbox, Outbox};
use ms_resilience::backoff::ExponentialBackoff;

use crate::error::Failure;
use crate::store::SagaBackend;
use crate::{Route, Saga, SagaError, SagaStore};

/// How many times a failing `handle` is tried before the instance is parked.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// How many times a message is tried against concurrent writers of its instance before
/// [`SagaError::Conflict`] (the consumer then retries the delivery).
pub const DEFAULT_MAX_CONFLICTS: u32 = 20;
/// The first wait between attempts; it doubles up to [`DEFAULT_MAX_BACKOFF`], full jitter.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait between attempts.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The destination timeouts are sent to unless
/// [`timeout_destination`](SagaRunnerBuilder::timeout_destination) says otherwise: the
/// saga's name with `.timeouts`.
pub const TIMEOUT_DESTINATION_SUFFIX: &str = ".timeouts";

/// What to do with a non-initiating message for an instance that does not exist (never
/// started, or completed and purged). The default is [`Park`](Self::Park): nothing is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnknownInstance {
    /// Keep it in the parked table with the reason "unknown instance": it overtook the
    /// message that starts its instance, and is handled right after that start, in arrival
    /// order (the started instance is saved parked behind such messages until they are
    /// replayed, so a crash in between loses nothing and lets no later message overtake
    /// them: see [`SagaRunner::replay`]). One whose instance never starts stays for an
    /// operator.
    #[default]
    Park,
    /// Settle it without effect (recorded in the inbox).
    Discard,
    /// Send it to the bus's dead letter with the reason (not recorded: a replay from the
    /// dead letter is handled afresh).
    DeadLetter,
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handled {
    /// The instance took the decision; its version is now `version`.
    Applied {
        /// The instance.
        instance: String,
        /// Its version after the message.
        version: u64,
        /// Whether the decision completed it.
        completed: bool,
    },
    /// Recorded before: settled without effect.
    Duplicate,
    /// Not for this saga ([`Route::Ignore`]), for a completed instance, a stale timeout, or
    /// answered with [`Decision::ignore`](crate::Decision::ignore): settled without effect.
    NoEffect,
    /// Parked (after its retries, behind a parked message, or as an unknown instance's).
    Parked {
        /// The reason stored with it.
        reason: String,
    },
    /// To the dead letter with this reason ([`Route::Reject`], [`UnknownInstance::DeadLetter`]).
    Rejected(String),
}

impl From<Handled> for Outcome {
    fn from(handled: Handled) -> Self {
        match handled {
            Handled::Rejected(reason) => Outcome::DeadLetter(reason),
            _ => Outcome::Ack,
        }
    }
}

pub use builder::SagaRunnerBuilder;

/// Runs one saga: see the [module docs](self). Cloning is cheap (shared).
pub struct SagaRunner<S: Saga, DB: SagaBackend> {
    inner: Arc<Inner<S, DB>>,
}

struct Inner<S: Saga, DB: SagaBackend> {
    saga: S,
    store: SagaStore<DB>,
    outbox: Outbox<DB>,
    inbox: Inbox<DB>,
    consumer: String,
    unknown: UnknownInstance,
    max_attempts: u32,
    max_conflicts: u32,
    backoff: ExponentialBackoff,
    timeout_destination: String,
}

impl<S: Saga, DB: SagaBackend> Clone for SagaRunner<S, DB> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Saga, DB: SagaBackend> fmt::Debug for SagaRunner<S, DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaRunner")
            .field("saga", &S::NAME)
            .field("store", &self.inner.store)
            .field("unknown", &self.inner.unknown)
            .field("max_attempts", &self.inner.max_attempts)
            .field("timeout_destination", &self.inner.timeout_destination)
            .finish_non_exhaustive()
    }
}

/// The message being handled: fresh from the bus, or a parked one being replayed (recorded
/// in the inbox already, deleted from the parked table in the same transaction).
#[derive(Clone, Copy)]
enum Source {
    Bus,
    Parked(i64),
}

/// One message on its way to its instance.
struct Target<'a, M> {
    envelope: &'a Envelope,
    instance: &'a str,
    message: &'a M,
    starts: bool,
}

impl<S: Saga, DB: SagaBackend> SagaRunner<S, DB> {
    /// The store.
    pub fn store(&self) -> &SagaStore<DB> {
        &self.inner.store
    }

    /// The destination its timeouts are sent to.
    pub fn timeout_destination(&self) -> &str {
        &self.inner.timeout_destination
    }

    /// Handles one message (what the `Service` impl does for each delivery).
    pub async fn handle(&self, envelope: &Envelope) -> Result<Handled, SagaError> {
        let (instance, message, starts) = match self.inner.saga.route(envelope) {
            Route::Start { instance, message } => (instance, message, true),
            Route::Correlate { instance, message } => (instance, message, false),
            Route::Ignore => return Ok(Handled::NoEffect),
            Route::Reject(reason) => return Ok(Handled::Rejected(reason)),
        };
        let target = Target {
            envelope,
            instance: &instance,
            message: &message,
            starts,
        };
        let handled = self.run(&target, Source::Bus).await?;
        if starts && matches!(handled, Handled::Applied { version: 1, .. }) {
            self.replay_waiting(&instance).await;
        }
        Ok(handled)
    }

    /// Retries `target` on conflicts and handle failures, then parks it.
    async fn run(
        &self,
        target: &Target<'_, S::Message>,
        source: Source,
    ) -> Result<Handled, SagaError> {
        let inner = &*self.inner;
        let mut delays = inner.backoff.delays();
        let (mut conflicts, mut failures) = (0, 0);
        loop {
            match self.attempt(target, source).await {
                Ok(handled) => return Ok(handled),
                Err(Failure::Conflict) => {
                    conflicts += 1;
                    if conflicts >= inner.max_conflicts {
                        return Err(SagaError::Conflict {
                            instance: target.instance.to_owned(),
                            attempts: conflicts,
                        });
                    }
                    tracing::debug!(
                        saga = S::NAME,
                        instance = target.instance,
                        conflicts,
                        "conflict, retrying"
                    );
                }
                Err(Failure::Handle(error)) => {
                    failures += 1;
                    if failures >= inner.max_attempts {
                        tracing::warn!(saga = S::NAME, instance = target.instance, error = %error, "parking the instance");
                        return self.park(target, source, error.reason()).await;
                    }
                    tracing::debug!(saga = S::NAME, instance = target.instance, failures, error = %error, "handle failed, retrying");
                }
                Err(Failure::Error(e)) => return Err(e),
            }
            tokio::time::sleep(delays.next().unwrap_or(DEFAULT_MAX_BACKOFF)).await;
        }
    }
}

impl<S: Saga, DB: SagaBackend> tower::Service<Message> for SagaRunner<S, DB> {
    type Response = Handled;
    type Error = SagaError;
    type Future = BoxFuture<'static, Result<Handled, SagaError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), SagaError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let runner = self.clone();
        Box::pin(async move { runner.handle(message.envelope()).await })
    }
}
