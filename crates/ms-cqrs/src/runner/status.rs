//! What a runner reports about itself.

use std::time::Duration;

use time::OffsetDateTime;

/// The state of a projection runner.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunnerState {
    /// Setting up and loading checkpoints.
    Starting,
    /// Applying events; `caught_up` when nothing readable is left to apply (log sources) or
    /// no delivery waits in the runner (bus sources).
    Running {
        /// Whether the runner has applied everything it can see.
        caught_up: bool,
    },
    /// Stopped by the error policy: the event and its error.
    Failed(String),
    /// Shut down.
    Stopped,
}

/// A snapshot of a runner: where it is, how far behind, what it has done.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunnerStatus {
    /// The projection.
    pub name: String,
    /// The live version of its read model.
    pub version: i32,
    /// The state.
    pub state: RunnerState,
    /// Every event up to this log position has been applied (log sources; 0 for bus sources).
    pub position: i64,
    /// The log's highest readable position when last looked at (log sources).
    pub head: i64,
    /// When the oldest event not yet applied was recorded in the log, or created (its
    /// `time`, else its arrival) for a bus delivery waiting in the runner; `None` when caught
    /// up. A bus source's backlog still on the broker is not seen here: watch the broker's.
    pub oldest_pending_at: Option<OffsetDateTime>,
    /// Events applied since start.
    pub applied: u64,
    /// Events skipped: not handled by the projection, or duplicates (bus sources).
    pub skipped: u64,
    /// Events parked since start.
    pub parked: u64,
    /// Deliveries that arrived ahead of their key's previous event and were put back (bus
    /// sources).
    pub out_of_order: u64,
    /// The last error met, even if a retry then succeeded.
    pub last_error: Option<String>,
    /// A rebuild in progress: the version being built and its position.
    pub rebuilding: Option<(i32, i64)>,
}

impl RunnerStatus {
    /// Events readable but not yet applied (log sources).
    pub fn lag_events(&self) -> u64 {
        u64::try_from(self.head.saturating_sub(self.position)).unwrap_or(0)
    }

    /// How long the oldest event not yet applied has waited; zero when caught up.
    pub fn lag(&self) -> Duration {
        self.oldest_pending_at.map_or(Duration::ZERO, |at| {
            Duration::try_from(OffsetDateTime::now_utc() - at).unwrap_or(Duration::ZERO)
        })
    }
}
