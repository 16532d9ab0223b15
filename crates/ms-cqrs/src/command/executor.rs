//! [`CommandExecutor`]: one command, one transaction, retried on conflicts.

use crate::EventLog;
use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use ms_bus::Envelope;
use ms_outbox::{Outbox, OutboxError};
use ms_resilience::backoff::{ExponentialBackoff, Jitter};
use sqlx::{Pool, Transaction};

use super::{CommandError, Decision, Repository, Versioned};
use crate::BusinessRuleError;

/// How many times [`CommandExecutor::execute`] tries a command before reporting
/// [`CommandError::Conflict`]: enough to ride out a burst of writers on one aggregate, few
/// enough that a hot spot surfaces as an error rather than as latency.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// The backoff before the second attempt; it doubles per attempt up to
/// [`DEFAULT_MAX_BACKOFF`], and each wait is drawn uniformly below it (full jitter) so that
/// the losers of one race do not meet again.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(5);
/// The longest wait between two attempts.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_millis(200);

/// A database commands run on: [`sqlx::Postgres`] (feature `postgres`) or [`sqlx::Sqlite`]
/// (feature `sqlite`, the default). Sealed.
pub trait CommandBackend: ms_outbox::Backend + crate::Store + sealed::Sealed {}

impl<DB: ms_outbox::Backend + crate::Store + sealed::Sealed> CommandBackend for DB {}

pub(crate) mod sealed {
    use super::{BoxFuture, Pool, Transaction};

    /// What differs between the databases.
    #[allow(unreachable_pub)]
    pub trait Sealed: sqlx::Database {
        /// Opens the command's transaction.
        #[doc(hidden)]
        fn begin(
            pool: &Pool<Self>,
        ) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>>;

        /// Whether a database error means "a concurrent transaction got in the way, try
        /// again" (a unique violation is judged by the caller).
        #[doc(hidden)]
        fn is_transient(error: &dyn sqlx::error::DatabaseError) -> bool;
    }
}

#[cfg(feature = "postgres")]
impl sealed::Sealed for sqlx::Postgres {
    fn begin(pool: &Pool<Self>) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>> {
        Box::pin(pool.begin())
    }

    fn is_transient(error: &dyn sqlx::error::DatabaseError) -> bool {
        // serialization_failure, deadlock_detected: PostgreSQL aborted us in favour of
        // another transaction; it asks for the transaction to be retried.
        matches!(error.code().as_deref(), Some("40001" | "40P01"))
    }
}

#[cfg(feature = "sqlite")]
impl sealed::Sealed for sqlx::Sqlite {
    fn begin(pool: &Pool<Self>) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>> {
        // Take the write lock up front: a deferred transaction that reads and then writes
        // fails with SQLITE_BUSY when another one wrote in between, without waiting; an
        // immediate one waits (busy timeout) and then reads the latest state.
        Box::pin(pool.begin_with("BEGIN IMMEDIATE"))
    }

    fn is_transient(error: &dyn sqlx::error::DatabaseError) -> bool {
        // SQLITE_BUSY and SQLITE_LOCKED, with their extended codes (the low byte).
        error
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6))
    }
}

/// Runs commands: load an aggregate's state, decide, save the new state and enqueue the
/// resulting events through the outbox, all in one transaction, retried on conflicts.
///
/// Cloning is cheap (the pool and outbox are shared). See the [module docs](super) for an
/// example.
pub struct CommandExecutor<DB: CommandBackend> {
    pool: Pool<DB>,
    outbox: Outbox<DB>,
    event_log: Option<EventLog<DB>>,
    max_attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
}

impl<DB: CommandBackend> Clone for CommandExecutor<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            outbox: self.outbox.clone(),
            event_log: self.event_log.clone(),
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            max_backoff: self.max_backoff,
        }
    }
}

impl<DB: CommandBackend> fmt::Debug for CommandExecutor<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandExecutor")
            .field("outbox", &self.outbox)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("max_backoff", &self.max_backoff)
            .finish_non_exhaustive()
    }
}

/// A command that went through.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Executed<S> {
    /// The aggregate's state now: the decision's when events were saved, else the stored one
    /// (`None` if the aggregate does not exist).
    pub state: Option<S>,
    /// The aggregate's version now (0 if it does not exist).
    pub version: u64,
    /// The events enqueued, stamped, in order.
    pub events: Vec<Envelope>,
    /// The commands enqueued, stamped, in order.
    pub commands: Vec<Envelope>,
    /// How many attempts it took (1 without conflicts).
    pub attempts: u32,
}

/// Why one attempt failed.
enum Failure {
    /// A concurrent writer got in the way: try again.
    Conflict,
    /// Anything else: give up.
    Error(CommandError),
}

impl From<BusinessRuleError> for Failure {
    fn from(e: BusinessRuleError) -> Self {
        Self::Error(e.into())
    }
}

impl From<ms_bus::EnvelopeError> for Failure {
    fn from(e: ms_bus::EnvelopeError) -> Self {
        Self::Error(e.into())
    }
}

impl<DB: CommandBackend> CommandExecutor<DB> {
    /// Commands on `pool`, their messages enqueued through `outbox` (in the same database).
    pub fn new(pool: Pool<DB>, outbox: Outbox<DB>) -> Self {
        Self {
            pool,
            outbox,
            event_log: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }

    /// Also appends every event to `log`, in the same transaction, so that projections can
    /// be fed from it and rebuilt from history (none by default: events go to the outbox
    /// only).
    #[must_use]
    pub fn event_log(mut self, log: EventLog<DB>) -> Self {
        self.event_log = Some(log);
        self
    }

    /// How many times a command is tried before [`CommandError::Conflict`]
    /// ([`DEFAULT_MAX_ATTEMPTS`], at least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The backoff before the second attempt ([`DEFAULT_BACKOFF`]) and the longest one
    /// ([`DEFAULT_MAX_BACKOFF`]); waits double per attempt, each drawn uniformly below.
    #[must_use]
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max.max(first);
        self
    }

    /// The pool commands run on.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// The outbox messages are enqueued through.
    pub fn outbox(&self) -> &Outbox<DB> {
        &self.outbox
    }

    /// Runs a command on aggregate `id`: begins a transaction, loads the state with `repo`,
    /// calls `decide` with it (`None`: the aggregate does not exist yet), and, if the
    /// decision has events, saves the new state at the old version plus the number of
    /// events and enqueues its messages through the outbox, then commits. A decision without
    /// events saves no state (see [`Decision`]).
    ///
    /// When a concurrent writer got in the way (the save returned `false`, a racing create
    /// hit a unique violation, PostgreSQL aborted a serialization failure or deadlock, SQLite
    /// was busy), the transaction is rolled back and everything runs again, after a jittered
    /// backoff, up to [`max_attempts`](Self::max_attempts) times. `decide` may therefore run
    /// more than once: it must be pure (no I/O, no side effects; compute from its argument).
    pub async fn execute<R, F>(
        &self,
        repo: &R,
        id: &str,
        mut decide: F,
    ) -> Result<Executed<R::State>, CommandError>
    where
        R: Repository<DB>,
        F: FnMut(Option<&R::State>) -> Result<Decision<R::State>, BusinessRuleError>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.attempt(repo, id, &mut decide).await {
                Ok(mut executed) => {
                    executed.attempts = attempts;
                    return Ok(executed);
                }
                Err(Failure::Conflict) if attempts < self.max_attempts => {
                    tracing::debug!(aggregate = id, attempts, "command conflicted, retrying");
                    tokio::time::sleep(jittered(self.backoff, self.max_backoff, attempts)).await;
                }
                Err(Failure::Conflict) => {
                    tracing::warn!(aggregate = id, attempts, "command gave up after conflicts");
                    return Err(CommandError::Conflict {
                        id: id.to_owned(),
                        attempts,
                    });
                }
                Err(Failure::Error(e)) => return Err(e),
            }
        }
    }

    /// One try, in one transaction: committed when the decision wrote something, else rolled
    /// back at once (an error leaves PostgreSQL's transaction aborted and SQLite's write lock
    /// held until then: neither waits for the connection's next use).
    async fn attempt<R, F>(
        &self,
        repo: &R,
        id: &str,
        decide: &mut F,
    ) -> Result<Executed<R::State>, Failure>
    where
        R: Repository<DB>,
        F: FnMut(Option<&R::State>) -> Result<Decision<R::State>, BusinessRuleError>,
    {
        let mut tx = DB::begin(&self.pool)
            .await
            .map_err(|e| classify::<DB>(e, false))?;
        match self.write(&mut tx, repo, id, decide).await {
            Ok((executed, true)) => {
                // The version was 0 before these events: a create, whose unique violation
                // (from a deferred constraint) means a racing creator won.
                let creating = u64::try_from(executed.events.len()) == Ok(executed.version);
                tx.commit().await.map_err(|e| classify::<DB>(e, creating))?;
                Ok(executed)
            }
            Ok((executed, false)) => {
                tx.rollback().await.map_err(|e| classify::<DB>(e, false))?;
                Ok(executed)
            }
            Err(failure) => {
                if let Err(e) = tx.rollback().await {
                    // The connection is dropped rather than reused; the outcome stands.
                    tracing::debug!(aggregate = id, error = %e, "rollback failed");
                }
                Err(failure)
            }
        }
    }

    /// Loads, decides, saves and enqueues in `conn`'s transaction; `true` when something
    /// was written.
    async fn write<R, F>(
        &self,
        conn: &mut DB::Connection,
        repo: &R,
        id: &str,
        decide: &mut F,
    ) -> Result<(Executed<R::State>, bool), Failure>
    where
        R: Repository<DB>,
        F: FnMut(Option<&R::State>) -> Result<Decision<R::State>, BusinessRuleError>,
    {
        let loaded = repo
            .load(&mut *conn, id)
            .await
            .map_err(|e| classify::<DB>(e, false))?;
        let (current, version) = match loaded {
            Some(Versioned { state, version }) => (Some(state), version),
            None => (None, 0),
        };
        let decision = decide(current.as_ref())?;
        if decision.is_empty() {
            let executed = Executed {
                state: current,
                version,
                events: Vec::new(),
                commands: Vec::new(),
                attempts: 1,
            };
            return Ok((executed, false));
        }
        let stamped = decision.stamp(id, version)?;
        // A racing creator's row shows up as a unique violation: a conflict, not a failure.
        let creating = version == 0;
        let state = if stamped.events.is_empty() {
            current
        } else {
            // Events that leave the state as it was still move the version.
            let Some(state) = stamped.state.or(current) else {
                return Err(Failure::Error(CommandError::InvalidDecision(
                    "events for an aggregate that does not exist, without a state",
                )));
            };
            let expected = (!creating).then_some(version);
            let saved = repo
                .save(&mut *conn, id, &state, expected, stamped.version)
                .await
                .map_err(|e| classify::<DB>(e, creating))?;
            if !saved {
                return Err(Failure::Conflict);
            }
            Some(state)
        };
        self.outbox
            .enqueue_all(&mut *conn, stamped.messages)
            .await
            .map_err(|e| match e {
                OutboxError::Database(e) => classify::<DB>(e, creating),
                e => Failure::Error(e.into()),
            })?;
        if let Some(log) = &self.event_log {
            log.append(&mut *conn, &stamped.events)
                .await
                .map_err(|e| match e {
                    crate::ProjectionError::Database(e) => classify::<DB>(e, creating),
                    e => Failure::Error(CommandError::EventLog(e)),
                })?;
        }
        let executed = Executed {
            state,
            version: stamped.version,
            events: stamped.events,
            commands: stamped.commands,
            attempts: 1,
        };
        Ok((executed, true))
    }
}

/// The wait after failed attempt number `attempts`: drawn uniformly below `first` doubled per
/// attempt and capped at `max` (full jitter).
fn jittered(first: Duration, max: Duration, attempts: u32) -> Duration {
    ExponentialBackoff::new(first.min(max), max)
        .with_jitter(Jitter::Full)
        .delay(attempts.saturating_sub(1))
}

/// Sorts a database error into "retry" and "give up"; a unique violation is a conflict when
/// the attempt was creating the aggregate.
fn classify<DB: CommandBackend>(error: sqlx::Error, creating: bool) -> Failure {
    match &error {
        sqlx::Error::Database(db)
            if DB::is_transient(db.as_ref()) || (creating && db.is_unique_violation()) =>
        {
            Failure::Conflict
        }
        _ => Failure::Error(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_below_the_doubling_cap() {
        let (first, max) = (Duration::from_millis(4), Duration::from_millis(20));
        for _ in 0..1000 {
            assert!(jittered(first, max, 1) <= first);
            assert!(jittered(first, max, 2) <= first * 2);
            assert!(jittered(first, max, 30) <= max);
        }
        assert_eq!(jittered(Duration::ZERO, Duration::ZERO, 3), Duration::ZERO);
    }
}
