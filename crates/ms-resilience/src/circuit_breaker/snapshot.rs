//! What a breaker has seen, as a value: its own file so that the crate's metrics export reads
//! it without importing the breaker (which calls the export).

use super::state::State;
use super::window::WindowCounts;

/// What a breaker has seen: its state, its window, and its calls by outcome since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitBreakerMetrics {
    /// The state now.
    pub state: State,
    /// The sliding window's counts now (closed state; the window is emptied when it closes).
    pub window: WindowCounts,
    /// Calls that went through and were classified a success, if the breaker counts them
    /// ([`count_successful_calls`](super::CircuitBreakerBuilder::count_successful_calls)): a healthy
    /// breaker's hot path otherwise writes nothing shared, and a counter would be its only
    /// atomic read-modify-write.
    pub successful_calls: Option<u64>,
    /// Calls that went through and were classified a failure.
    pub failed_calls: u64,
    /// Calls that were slow (whether they succeeded or failed).
    pub slow_calls: u64,
    /// Calls rejected without calling the service.
    pub rejected_calls: u64,
    /// Calls whose outcome was [`Outcome::Ignored`](crate::classify::Outcome::Ignored), and half-open trials that finished after
    /// the half-open state they were admitted in had ended (their trial was already decided,
    /// or the breaker was reset or forced meanwhile), which no longer count. A call admitted
    /// while closed that finishes after the breaker opened is not here: it is recorded in the
    /// closed state's window, as in Resilience4j.
    pub ignored_calls: u64,
}
