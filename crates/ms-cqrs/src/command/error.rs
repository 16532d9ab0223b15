//! [`CommandError`]: why a command did not go through, and what to answer the caller.

use ms_bus::EnvelopeError;
use ms_outbox::OutboxError;

use crate::BusinessRuleError;
use crate::business_rule::ProblemDetails;

/// The `code` of a [`CommandError::Conflict`]'s problem details.
pub const CONFLICT_CODE: &str = "CONCURRENT_MODIFICATION";

/// Why [`CommandExecutor::execute`](super::CommandExecutor::execute) did not go through. In
/// every case the transaction was rolled back: the state and the messages are as before.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The decision refused the command. Answer the caller with it (HTTP 409 or 422, gRPC
    /// `FAILED_PRECONDITION`); the same request will fail again until the state changes.
    #[error(transparent)]
    Rule(#[from] BusinessRuleError),
    /// Concurrent writers changed the aggregate on every one of `attempts` tries. Answer
    /// HTTP 409 / gRPC `ABORTED`: the client may retry; if it happens often, load with a row
    /// lock (`SELECT … FOR UPDATE`) or raise [`max_attempts`](super::CommandExecutor::max_attempts).
    #[error("aggregate {id} was modified concurrently on each of {attempts} attempts")]
    Conflict {
        /// The aggregate id.
        id: String,
        /// How many times the command was tried.
        attempts: u32,
    },
    /// The database failed or could not be reached (the repository, the begin or the
    /// commit). Answer HTTP 503 / gRPC `UNAVAILABLE` when it was unreachable, else 500 /
    /// `INTERNAL`; retrying later may work.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The outbox refused a message (an invalid destination: a bug to fix) or its database
    /// statement failed.
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    /// An envelope the decision built is invalid (a bug in the decide function: an empty
    /// type or source, a bad extension name). Nothing to retry.
    #[error("envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The decision cannot be carried out (it emits events for an aggregate that does not
    /// exist without giving it a state): a bug in the decide function. Nothing to retry.
    #[error("invalid decision: {0}")]
    InvalidDecision(&'static str),
    /// Appending the events to the event log failed (not on the database: a name refused).
    #[error("event log: {0}")]
    EventLog(crate::ProjectionError),
}

impl CommandError {
    /// The HTTP status to answer with: 409/422 for a broken rule, 409 for a conflict, 503
    /// when the database is unreachable, 500 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Rule(rule) => rule.http_status(),
            Self::Conflict { .. } => 409,
            _ if self.is_unavailable() => 503,
            _ => 500,
        }
    }

    /// The gRPC status code's number: `FAILED_PRECONDITION` (9) for a broken rule, `ABORTED`
    /// (10) for a conflict, `UNAVAILABLE` (14) when the database is unreachable, `INTERNAL`
    /// (13) otherwise.
    pub fn grpc_code(&self) -> i32 {
        match self {
            Self::Rule(rule) => rule.grpc_code(),
            Self::Conflict { .. } => 10,
            _ if self.is_unavailable() => 14,
            _ => 13,
        }
    }

    /// [`grpc_code`](Self::grpc_code)'s canonical name.
    pub fn grpc_code_name(&self) -> &'static str {
        match self.grpc_code() {
            9 => "FAILED_PRECONDITION",
            10 => "ABORTED",
            14 => "UNAVAILABLE",
            _ => "INTERNAL",
        }
    }

    /// The RFC 9457 problem details to answer an HTTP request with. Infrastructure failures
    /// say only what happened in general terms: database messages stay in the logs.
    ///
    /// ```
    /// use ms_cqrs::command::CommandError;
    ///
    /// let err = CommandError::Conflict { id: "inv-7".into(), attempts: 5 };
    /// let problem = err.problem();
    /// assert_eq!(problem.status, 409);
    /// assert_eq!(problem.code.as_deref(), Some("CONCURRENT_MODIFICATION"));
    /// ```
    pub fn problem(&self) -> ProblemDetails {
        let status = self.http_status();
        match self {
            Self::Rule(rule) => rule.problem(),
            Self::Conflict { id, .. } => ProblemDetails::new(
                status,
                format!("{id} was modified concurrently; retry the request"),
            )
            .code(CONFLICT_CODE),
            _ if status == 503 => {
                ProblemDetails::new(status, "the service is unavailable; retry later")
            }
            _ => ProblemDetails::new(status, "the command failed on an internal error"),
        }
    }

    /// Whether the database could not be reached (as opposed to refusing a statement).
    fn is_unavailable(&self) -> bool {
        let (Self::Database(sqlx) | Self::Outbox(OutboxError::Database(sqlx))) = self else {
            return false;
        };
        ms_outbox::is_database_unavailable(sqlx)
    }
}
