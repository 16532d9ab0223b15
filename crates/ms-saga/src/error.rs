//! [`SagaError`]: what can go wrong running a saga, and [`HandleError`], a saga's own refusal.

/// A saga's `handle` could not decide (the runner retries it with backoff, then parks the
/// instance with the message and this reason).
///
/// `handle` is pure, so the same input fails the same way: the retries are for the rest of
/// the attempt (the database), and the parking is what makes the failure visible and
/// repairable (fix the code, then [`replay`](crate::SagaRunner::replay)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct HandleError {
    reason: String,
}

impl HandleError {
    /// A failure with its reason (what an operator reads next to the parked message).
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Why the runner could not handle a message. Each variant says what the caller can do; the
/// consumer runtime retries any of them (the message stays unhandled: nothing was written).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// The database failed (connection lost, constraint of the application's, …): retry later.
    #[error("saga store: {0}")]
    Database(#[from] sqlx::Error),
    /// The outbox refused a message the decision asked for (an invalid destination, say): a
    /// bug in the saga; the message is unhandled.
    #[error("saga outbox: {0}")]
    Outbox(#[from] ms_outbox::OutboxError),
    /// An envelope the decision built is invalid (a bad extension, say): a bug in the saga.
    #[error("saga message: {0}")]
    Envelope(#[from] ms_bus::EnvelopeError),
    /// The stored state does not deserialize into the saga's `State` (a change of the type
    /// without a migration of the rows), or the state does not serialize.
    #[error("saga state of instance {instance}: {source}")]
    State {
        /// The instance.
        instance: String,
        /// The serde error.
        source: serde_json::Error,
    },
    /// Concurrent writers on one instance kept winning for this many attempts (a hot
    /// instance): retry later.
    #[error("saga instance {instance}: still conflicting after {attempts} attempts")]
    Conflict {
        /// The instance.
        instance: String,
        /// How many attempts were made.
        attempts: u32,
    },
}

/// Why one attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A concurrent writer got in the way: run the whole attempt again.
    Conflict,
    /// `handle` refused: retry with backoff, then park.
    Handle(HandleError),
    /// Anything else: give up this delivery.
    Error(SagaError),
}

impl From<SagaError> for Failure {
    fn from(e: SagaError) -> Self {
        Self::Error(e)
    }
}

impl From<ms_bus::EnvelopeError> for Failure {
    fn from(e: ms_bus::EnvelopeError) -> Self {
        Self::Error(e.into())
    }
}
