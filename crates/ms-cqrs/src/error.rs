//! The errors of the read side: what a projection's `apply` returns ([`ApplyError`]) and what
//! the runner and the event log return ([`ProjectionError`]).

use ms_bus::BoxError;

/// Why a projection could not apply an event. The runner's [`ErrorPolicy`] decides what
/// happens next: a transient error is retried with backoff, a permanent one is not.
///
/// `?` converts database errors (transient: a deadlock, a lost connection) and data errors
/// (permanent: the event's payload does not match the projection's type).
///
/// [`ErrorPolicy`]: crate::ErrorPolicy
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct ApplyError {
    source: BoxError,
    permanent: bool,
}

impl ApplyError {
    /// An error that may go away: retried as the policy says.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self {
            source: error.into(),
            permanent: false,
        }
    }

    /// An error that retrying cannot fix (the event is malformed for this projection): parked
    /// or stopped on at once, without retries.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self {
            source: error.into(),
            permanent: true,
        }
    }

    /// Whether retrying is pointless.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl From<sqlx::Error> for ApplyError {
    fn from(error: sqlx::Error) -> Self {
        Self::transient(error)
    }
}

impl From<ms_bus::DataError> for ApplyError {
    fn from(error: ms_bus::DataError) -> Self {
        Self::permanent(error)
    }
}

impl From<serde_json::Error> for ApplyError {
    fn from(error: serde_json::Error) -> Self {
        Self::permanent(error)
    }
}

/// What the runner, the event log and their handles return.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The database failed; the runner retries on its own, a direct call may be repeated.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A configured table or prefix is not a valid SQL name.
    #[error(transparent)]
    InvalidName(#[from] ms_outbox::InvalidTableName),
    /// The bus refused the subscription.
    #[error("bus error: {0}")]
    Bus(#[from] ms_bus::BusError),
    /// The projection's stored checkpoints were written with another number of segments.
    /// Events are assigned to segments by key, so changing the number would apply some
    /// events twice and skip others: rebuild into a new version with the new number instead.
    #[error(
        "projection `{name}` runs with {stored} segments; {configured} were configured (rebuild to change it)"
    )]
    SegmentsChanged {
        /// The projection.
        name: String,
        /// The number its checkpoints were written with.
        stored: u16,
        /// The number configured now.
        configured: u16,
    },
    /// Rebuilds replay the source from its start, which a bus subscription cannot do; feed
    /// the projection from an event log to rebuild it.
    #[error("projection `{0}` reads from a bus subscription, which cannot be replayed")]
    NotReplayable(String),
    /// Positions belong to an event log: a bus-fed runner has none to wait for. Wait for the
    /// read model itself instead (the event's effect), or feed the projection from a log.
    #[error("projection `{0}` reads from a bus subscription, which has no log positions")]
    NoPositions(String),
    /// A rebuild is already running for this projection.
    #[error("projection `{0}` is already being rebuilt")]
    RebuildInProgress(String),
    /// The runner stopped: shut down, or stopped by the `stop` error policy (the reason says
    /// which event). Fix the cause, then start it again: it resumes at its checkpoint.
    #[error("projection runner `{name}` stopped: {reason}")]
    Stopped {
        /// The projection.
        name: String,
        /// Why.
        reason: String,
    },
    /// The projection's `setup` failed.
    #[error("projection `{name}` could not set up version {version}: {source}")]
    Setup {
        /// The projection.
        name: String,
        /// The version being set up.
        version: i32,
        /// The projection's error.
        source: ApplyError,
    },
}
