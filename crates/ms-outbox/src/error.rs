//! The crate's error type.

use ms_bus::BusError;

/// Why an outbox, inbox or relay operation failed. Each variant says what the caller can do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The database refused the statement or could not be reached. Inside the caller's
    /// transaction this means the transaction must be rolled back (the business change and
    /// its events go together, so neither happened); elsewhere the operation may be retried.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A topic or command destination is not a valid bus name; nothing was written. Fix the
    /// name: the relay could never publish it.
    #[error("invalid destination: {0}")]
    InvalidDestination(#[source] BusError),
    /// The database holds a newer schema of this table than this version of ms-outbox knows:
    /// a newer release migrated it. Upgrade this service rather than run old code against it.
    #[error("{table} is at schema version {found}; this ms-outbox knows up to {known}")]
    SchemaTooNew {
        /// The table.
        table: String,
        /// The version recorded in the database.
        found: i64,
        /// The latest version this crate ships.
        known: i64,
    },
    /// A recurring schedule is not valid (no name, an interval under a millisecond); nothing
    /// was registered. Fix the schedule.
    #[error("invalid schedule: {0}")]
    InvalidSchedule(String),
    /// The relay task stopped abnormally (it panicked); its last batch was rolled back, so
    /// nothing was lost. Start a new relay.
    #[error("the relay task stopped abnormally: {0}")]
    RelayStopped(String),
}

impl OutboxError {
    /// Whether the database could not be reached (see
    /// [`is_database_unavailable`](crate::is_database_unavailable)): retry later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Database(error) if crate::is_database_unavailable(error))
    }
}
