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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use ms_bus::consumer::{Message, Outcome};
use ms_bus::{Envelope, PARTITION_KEY_EXTENSION};
use ms_outbox::{Inbox, Outbox, OutboxError, OutboxMessage};
use ms_resilience::backoff::ExponentialBackoff;

use crate::error::Failure;
use crate::saga::{INSTANCE_EXTENSION, TIMEOUT_EXTENSION};
use crate::store::{RawInstance, SagaBackend, now_ms};
use crate::{Decision, Route, Saga, SagaError, SagaStore, Status};

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
    /// Keep it in the parked table with the reason "unknown instance", for an operator.
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
    /// answered with [`Decision::ignore`]: settled without effect.
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
        self.run(&target, Source::Bus).await
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

    /// One try in one transaction.
    async fn attempt(
        &self,
        target: &Target<'_, S::Message>,
        source: Source,
    ) -> Result<Handled, Failure> {
        let mut tx = DB::begin(self.inner.store.pool())
            .await
            .map_err(classify::<DB>)?;
        match self.write(&mut tx, target, source).await {
            Ok((handled, true)) => {
                tx.commit().await.map_err(classify::<DB>)?;
                Ok(handled)
            }
            Ok((handled, false)) => {
                tx.rollback().await.map_err(classify::<DB>)?;
                Ok(handled)
            }
            Err(failure) => {
                if let Err(e) = tx.rollback().await {
                    tracing::debug!(saga = S::NAME, error = %e, "rollback failed");
                }
                Err(failure)
            }
        }
    }

    /// Everything of one attempt; `true` when it is to be committed.
    async fn write(
        &self,
        conn: &mut DB::Connection,
        target: &Target<'_, S::Message>,
        source: Source,
    ) -> Result<(Handled, bool), Failure> {
        let inner = &*self.inner;
        let st = inner.store.statements();
        let (envelope, instance) = (target.envelope, target.instance);
        match source {
            Source::Bus => {
                let first = inner
                    .inbox
                    .record(&mut *conn, &inner.consumer, envelope)
                    .await
                    .map_err(outbox_failure::<DB>)?;
                if !first {
                    return Ok((Handled::Duplicate, false));
                }
            }
            Source::Parked(id) => DB::parked_delete(&mut *conn, st, id)
                .await
                .map_err(classify::<DB>)?,
        }
        let row = DB::load(&mut *conn, st, S::NAME, instance)
            .await
            .map_err(classify::<DB>)?;
        match &row {
            None if !target.starts => return self.unknown(conn, target).await,
            Some(row) if row.status() == Status::Completed => return Ok((Handled::NoEffect, true)),
            Some(row) if row.status() == Status::Parked && matches!(source, Source::Bus) => {
                let reason = "waiting behind a parked message of the instance";
                park_row::<DB>(conn, st, S::NAME, instance, envelope, reason).await?;
                return Ok((
                    Handled::Parked {
                        reason: reason.to_owned(),
                    },
                    true,
                ));
            }
            _ => {}
        }
        let (state, version, mut timeouts, created_at) = match &row {
            Some(row) => {
                let state: S::State = serde_json::from_str(&row.state).map_err(|source| {
                    Failure::Error(SagaError::State {
                        instance: instance.to_owned(),
                        source,
                    })
                })?;
                (state, row.version, row.timeouts()?, row.created_at)
            }
            None => (S::State::default(), 0, BTreeMap::new(), now_ms()),
        };
        // A timeout counts only while it is the pending one of its name: one that fired after
        // it was cancelled or replaced (its cancel came too late) has no effect.
        if let Some(name) = envelope.extension(TIMEOUT_EXTENSION)
            && envelope.extension(INSTANCE_EXTENSION) == Some(instance)
        {
            if timeouts.get(name).map(String::as_str) != Some(envelope.id()) {
                return Ok((Handled::NoEffect, true));
            }
            timeouts.remove(name);
        }
        let decision = inner
            .saga
            .handle(&state, target.message)
            .map_err(Failure::Handle)?;
        if decision.is_ignore() {
            return Ok((Handled::NoEffect, true));
        }
        let new_version = version + 1;
        let completed = decision.is_complete();
        let messages = self
            .apply(conn, instance, new_version, &mut timeouts, &decision)
            .await?;
        let next = decision.state.as_ref().unwrap_or(&state);
        let raw = encode::<S>(
            instance,
            next,
            new_version,
            completed,
            &timeouts,
            created_at,
        )?;
        let saved = if row.is_some() {
            DB::update(&mut *conn, st, &raw, version).await
        } else {
            DB::insert(&mut *conn, st, &raw).await
        }
        .map_err(classify::<DB>)?;
        if !saved {
            return Err(Failure::Conflict);
        }
        inner
            .outbox
            .enqueue_all(&mut *conn, messages)
            .await
            .map_err(outbox_failure::<DB>)?;
        let handled = Handled::Applied {
            instance: instance.to_owned(),
            version: new_version.cast_unsigned(),
            completed,
        };
        Ok((handled, true))
    }

    /// Cancels and schedules the decision's timeouts (updating `timeouts`) and returns the
    /// outbox messages to enqueue.
    async fn apply(
        &self,
        conn: &mut DB::Connection,
        instance: &str,
        version: i64,
        timeouts: &mut BTreeMap<String, String>,
        decision: &Decision<S::State>,
    ) -> Result<Vec<OutboxMessage>, Failure> {
        let outbox = &self.inner.outbox;
        let mut stale = Vec::new();
        for name in &decision.cancels {
            stale.extend(timeouts.remove(name));
        }
        let mut messages = Vec::with_capacity(decision.message_count());
        for outgoing in &decision.messages {
            let mut envelope = outgoing.envelope.clone().build()?;
            if envelope.partition_key().is_none() {
                envelope.set_extension(PARTITION_KEY_EXTENSION, instance)?;
            }
            messages.push(if outgoing.event {
                OutboxMessage::event(outgoing.destination.clone(), envelope)
            } else {
                OutboxMessage::command(outgoing.destination.clone(), envelope)
            });
        }
        for timeout in &decision.schedules {
            // The id names the timeout and the step that set it: unique per scheduling (the
            // inbox would take a second firing of a reused id for a redelivery), and what
            // the instance row remembers to recognize and cancel it.
            let id = format!("{}/{instance}/{}/{version}", S::NAME, timeout.name);
            let envelope = timeout
                .envelope
                .clone()
                .id(id.clone())
                .partition_key(instance)
                .extension(INSTANCE_EXTENSION, instance)?
                .extension(TIMEOUT_EXTENSION, timeout.name.clone())?
                .build()?;
            stale.extend(timeouts.insert(timeout.name.clone(), id));
            messages.push(
                OutboxMessage::command(self.inner.timeout_destination.clone(), envelope)
                    .deliver_after(timeout.after)
                    .partition_key(instance),
            );
        }
        if decision.complete {
            stale.extend(std::mem::take(timeouts).into_values());
        }
        for id in stale {
            // Already due (NotScheduled) is fine: the instance no longer lists it, so its
            // firing is settled without effect.
            let _ = outbox
                .cancel(&mut *conn, &id)
                .await
                .map_err(outbox_failure::<DB>)?;
        }
        Ok(messages)
    }

    /// Handles a non-initiating message of an unknown instance by the policy.
    async fn unknown(
        &self,
        conn: &mut DB::Connection,
        target: &Target<'_, S::Message>,
    ) -> Result<(Handled, bool), Failure> {
        let reason = format!("unknown instance {} of saga {}", target.instance, S::NAME);
        match self.inner.unknown {
            UnknownInstance::Discard => Ok((Handled::NoEffect, true)),
            UnknownInstance::DeadLetter => Ok((Handled::Rejected(reason), false)),
            UnknownInstance::Park => {
                let st = self.inner.store.statements();
                park_row::<DB>(conn, st, S::NAME, target.instance, target.envelope, &reason)
                    .await?;
                Ok((Handled::Parked { reason }, true))
            }
        }
    }

    /// Parks `target` and its instance after its retries, in a transaction of its own.
    async fn park(
        &self,
        target: &Target<'_, S::Message>,
        source: Source,
        reason: &str,
    ) -> Result<Handled, SagaError> {
        let inner = &*self.inner;
        let mut conflicts = 0;
        loop {
            let mut tx = DB::begin(inner.store.pool()).await?;
            let result = self.park_in(&mut tx, target, source, reason).await;
            match result {
                Ok(handled) => {
                    tx.commit().await?;
                    return Ok(handled);
                }
                Err(failure) => {
                    let _ = tx.rollback().await;
                    match failure {
                        Failure::Conflict if conflicts < inner.max_conflicts => conflicts += 1,
                        Failure::Conflict | Failure::Handle(_) => {
                            return Err(SagaError::Conflict {
                                instance: target.instance.to_owned(),
                                attempts: conflicts,
                            });
                        }
                        Failure::Error(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// The parking transaction's work.
    async fn park_in(
        &self,
        conn: &mut DB::Connection,
        target: &Target<'_, S::Message>,
        source: Source,
        reason: &str,
    ) -> Result<Handled, Failure> {
        let inner = &*self.inner;
        let st = inner.store.statements();
        match source {
            Source::Bus => {
                let first = inner
                    .inbox
                    .record(&mut *conn, &inner.consumer, target.envelope)
                    .await
                    .map_err(outbox_failure::<DB>)?;
                if !first {
                    return Ok(Handled::Duplicate);
                }
                park_row::<DB>(
                    &mut *conn,
                    st,
                    S::NAME,
                    target.instance,
                    target.envelope,
                    reason,
                )
                .await?;
            }
            // Already in the parked table, first of its instance: only the reason is new.
            Source::Parked(id) => {
                DB::parked_delete(&mut *conn, st, id)
                    .await
                    .map_err(classify::<DB>)?;
                park_row::<DB>(
                    &mut *conn,
                    st,
                    S::NAME,
                    target.instance,
                    target.envelope,
                    reason,
                )
                .await?;
            }
        }
        let row = DB::load(&mut *conn, st, S::NAME, target.instance)
            .await
            .map_err(classify::<DB>)?;
        match row {
            Some(_) => {
                DB::set_status(
                    &mut *conn,
                    st,
                    S::NAME,
                    target.instance,
                    Status::Active,
                    Status::Parked,
                )
                .await
                .map_err(classify::<DB>)?;
            }
            None => {
                // A start that fails: the instance exists from now on, parked, so that
                // its later messages wait behind the start.
                let now = now_ms();
                let raw = RawInstance {
                    saga: S::NAME.to_owned(),
                    instance: target.instance.to_owned(),
                    state: serde_json::to_string(&S::State::default()).map_err(|source| {
                        Failure::Error(SagaError::State {
                            instance: target.instance.to_owned(),
                            source,
                        })
                    })?,
                    version: 0,
                    status: Status::Parked.code().to_owned(),
                    timeouts: "{}".to_owned(),
                    created_at: now,
                    updated_at: now,
                    completed_at: None,
                };
                if !DB::insert(&mut *conn, st, &raw)
                    .await
                    .map_err(classify::<DB>)?
                {
                    return Err(Failure::Conflict);
                }
            }
        }
        Ok(Handled::Parked {
            reason: reason.to_owned(),
        })
    }

    /// Un-parks `instance`: handles its parked messages in arrival order (after a fix of the
    /// saga, say), each in its own transaction, until none is left (the instance is active
    /// again) or one fails again after its retries (parked again, with the new reason).
    /// Returns how many were handled.
    pub async fn replay(&self, instance: &str) -> Result<u64, SagaError> {
        let inner = &*self.inner;
        let st = inner.store.statements();
        let mut handled = 0;
        loop {
            let mut conn = inner.store.pool().acquire().await?;
            let first = DB::parked_first(&mut conn, st, S::NAME, instance).await?;
            drop(conn);
            let Some(parked) = first else {
                let mut tx = DB::begin(inner.store.pool()).await?;
                DB::set_status(
                    &mut *tx,
                    st,
                    S::NAME,
                    instance,
                    Status::Parked,
                    Status::Active,
                )
                .await?;
                tx.commit().await?;
                return Ok(handled);
            };
            let route = inner.saga.route(&parked.envelope);
            let (message, starts) = match route {
                Route::Start { message, .. } => (message, true),
                Route::Correlate { message, .. } => (message, false),
                // No longer for this saga: drop it.
                Route::Ignore | Route::Reject(_) => {
                    let mut tx = DB::begin(inner.store.pool()).await?;
                    DB::parked_delete(&mut *tx, st, parked.id).await?;
                    tx.commit().await?;
                    continue;
                }
            };
            let target = Target {
                envelope: &parked.envelope,
                instance,
                message: &message,
                starts,
            };
            match self.run(&target, Source::Parked(parked.id)).await? {
                Handled::Parked { .. } => return Ok(handled),
                _ => handled += 1,
            }
        }
    }

    /// Drops the first parked message of `instance` (the one that failed) without handling
    /// it; the others stay parked until [`replay`](Self::replay). Returns whether there was one.
    pub async fn discard(&self, instance: &str) -> Result<bool, SagaError> {
        let inner = &*self.inner;
        let st = inner.store.statements();
        let mut tx = DB::begin(inner.store.pool()).await?;
        let first = DB::parked_first(&mut *tx, st, S::NAME, instance).await?;
        if let Some(parked) = &first {
            DB::parked_delete(&mut *tx, st, parked.id).await?;
        }
        tx.commit().await?;
        Ok(first.is_some())
    }
}

/// The row that stores `state` after a step.
fn encode<S: Saga>(
    instance: &str,
    state: &S::State,
    version: i64,
    completed: bool,
    timeouts: &BTreeMap<String, String>,
    created_at: i64,
) -> Result<RawInstance, Failure> {
    let invalid = |source| {
        Failure::Error(SagaError::State {
            instance: instance.to_owned(),
            source,
        })
    };
    let now = now_ms();
    let status = if completed {
        Status::Completed
    } else {
        Status::Active
    };
    Ok(RawInstance {
        saga: S::NAME.to_owned(),
        instance: instance.to_owned(),
        state: serde_json::to_string(state).map_err(invalid)?,
        version,
        status: status.code().to_owned(),
        timeouts: serde_json::to_string(timeouts).map_err(invalid)?,
        created_at,
        updated_at: now,
        completed_at: completed.then_some(now),
    })
}

/// One message on its way to its instance.
struct Target<'a, M> {
    envelope: &'a Envelope,
    instance: &'a str,
    message: &'a M,
    starts: bool,
}

async fn park_row<DB: SagaBackend>(
    conn: &mut DB::Connection,
    st: &crate::store::Statements,
    saga: &str,
    instance: &str,
    envelope: &Envelope,
    reason: &str,
) -> Result<(), Failure> {
    let json = String::from_utf8_lossy(&ms_bus::codec::to_json(envelope)).into_owned();
    DB::park(conn, st, saga, instance, json, reason)
        .await
        .map_err(classify::<DB>)
}

/// Sorts a database error into "retry" and "give up".
fn classify<DB: SagaBackend>(error: sqlx::Error) -> Failure {
    match &error {
        sqlx::Error::Database(db) if DB::is_transient(db.as_ref()) => Failure::Conflict,
        _ => Failure::Error(error.into()),
    }
}

fn outbox_failure<DB: SagaBackend>(error: OutboxError) -> Failure {
    match error {
        OutboxError::Database(e) => classify::<DB>(e),
        e => Failure::Error(e.into()),
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
