//! Metrics through the [`metrics`] facade (feature `metrics`): breaker state and
//! calls by outcome, retries, bulkhead and rate-limit rejections.
//!
//! ```
//! use ms_resilience::circuit_breaker::CircuitBreaker;
//! use ms_resilience::classify::Outcome;
//! use ms_resilience::metrics::{CIRCUIT_BREAKER_CALLS, CIRCUIT_BREAKER_STATE};
//! use metrics_util::debugging::{DebugValue, DebuggingRecorder};
//!
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! metrics::with_local_recorder(&recorder, || {
//!     let breaker = CircuitBreaker::builder().name("payments").build();
//!     breaker.try_acquire().unwrap().record(Outcome::Failure { retryable: true });
//!     breaker.force_open(); // a state change exports the state and the counts
//!     assert!(breaker.try_acquire().is_err());
//!     breaker.export_metrics(); // as a scrape would, to bring the counts up to date
//! });
//! let metrics = snapshotter.snapshot().into_vec();
//! let value = |name: &str, outcome: Option<&str>| {
//!     metrics.iter().find(|(key, ..)| {
//!         key.key().name() == name
//!             && key.key().labels().any(|l| l.key() == "breaker" && l.value() == "payments")
//!             && outcome.is_none_or(|o| key.key().labels().any(|l| l.key() == "outcome" && l.value() == o))
//!     }).map(|(.., value)| value)
//! };
//! assert_eq!(value(CIRCUIT_BREAKER_STATE, None), Some(&DebugValue::Gauge(3.0.into())));
//! assert_eq!(value(CIRCUIT_BREAKER_CALLS, Some("failure")), Some(&DebugValue::Counter(1)));
//! assert_eq!(value(CIRCUIT_BREAKER_CALLS, Some("rejected")), Some(&DebugValue::Counter(1)));
//! ```
//!
//! # What is recorded, and when
//!
//! Nothing is added to a call that goes through: the breaker already counts its calls by
//! outcome ([`CircuitBreaker::metrics`](crate::circuit_breaker::CircuitBreaker::metrics)), and
//! those counts are published as absolute counter values when the state changes and whenever
//! [`export_metrics`](crate::circuit_breaker::CircuitBreaker::export_metrics) is called (from
//! a scrape handler or an interval). The other metrics are counted where the rare event
//! happens (a retry, a rejection). Without a recorder installed, the facade drops them.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | [`CIRCUIT_BREAKER_STATE`] | gauge: 0 closed, 1 open, 2 half-open, 3 forced open, 4 forced closed | `breaker` |
//! | [`CIRCUIT_BREAKER_CALLS`] | counter | `breaker`, `outcome`: `success` (only with [`count_successful_calls`](crate::circuit_breaker::CircuitBreakerBuilder::count_successful_calls)), `failure`, `rejected`, `ignored` |
//! | [`CIRCUIT_BREAKER_SLOW_CALLS`] | counter (slow calls are also counted by outcome) | `breaker` |
//! | [`RETRY_ATTEMPTS`] | counter of retries made (attempts after the first) | none |
//! | [`RETRY_BUDGET_EXHAUSTED`] | counter of retries not made because the budget was spent | none |
//! | [`BULKHEAD_REJECTIONS`] | counter | none |
//! | [`RATE_LIMIT_REJECTIONS`] | counter | none |

use std::sync::Arc;

use crate::circuit_breaker::snapshot::CircuitBreakerMetrics;
use crate::circuit_breaker::state::State;

/// The breaker's state, as a gauge.
pub const CIRCUIT_BREAKER_STATE: &str = "ms_resilience_circuit_breaker_state";
/// The breaker's calls by outcome.
pub const CIRCUIT_BREAKER_CALLS: &str = "ms_resilience_circuit_breaker_calls_total";
/// The breaker's slow calls.
pub const CIRCUIT_BREAKER_SLOW_CALLS: &str = "ms_resilience_circuit_breaker_slow_calls_total";
/// Retries made.
pub const RETRY_ATTEMPTS: &str = "ms_resilience_retry_attempts_total";
/// Retries not made because the retry budget was spent.
pub const RETRY_BUDGET_EXHAUSTED: &str = "ms_resilience_retry_budget_exhausted_total";
/// Calls a bulkhead turned away.
pub const BULKHEAD_REJECTIONS: &str = "ms_resilience_bulkhead_rejections_total";
/// Calls a rate limiter turned away.
pub const RATE_LIMIT_REJECTIONS: &str = "ms_resilience_rate_limit_rejections_total";

/// The gauge value of a state.
fn state_value(state: State) -> f64 {
    match state {
        State::Closed => 0.0,
        State::Open => 1.0,
        State::HalfOpen => 2.0,
        State::ForcedOpen => 3.0,
        State::ForcedClosed => 4.0,
    }
}

/// Publishes a breaker's snapshot.
pub(crate) fn export_circuit_breaker(name: &Arc<str>, snapshot: &CircuitBreakerMetrics) {
    metrics::gauge!(CIRCUIT_BREAKER_STATE, "breaker" => name.clone())
        .set(state_value(snapshot.state));
    let outcomes = [
        ("success", snapshot.successful_calls),
        ("failure", Some(snapshot.failed_calls)),
        ("rejected", Some(snapshot.rejected_calls)),
        ("ignored", Some(snapshot.ignored_calls)),
    ];
    for (outcome, count) in outcomes {
        if let Some(count) = count {
            metrics::counter!(CIRCUIT_BREAKER_CALLS, "breaker" => name.clone(), "outcome" => outcome)
                .absolute(count);
        }
    }
    metrics::counter!(CIRCUIT_BREAKER_SLOW_CALLS, "breaker" => name.clone())
        .absolute(snapshot.slow_calls);
}

/// Counts one event.
pub(crate) fn increment(name: &'static str) {
    metrics::counter!(name).increment(1);
}
