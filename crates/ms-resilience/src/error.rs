//! The typed errors of every layer in this crate, and how to find them inside a [`BoxError`].
//!
//! ```
//! use std::time::Duration;
//! use ms_resilience::{BoxError, Error};
//!
//! let boxed: BoxError = Error::Timeout { after: Duration::from_millis(250) }.into();
//! let found = Error::find(&*boxed).expect("our error");
//! assert!(found.is_retryable());
//! assert_eq!(found.retry_after(), None);
//!
//! let limited = Error::RateLimited { retry_after: Duration::from_secs(2) };
//! assert!(!limited.is_retryable());
//! assert_eq!(limited.retry_after(), Some(Duration::from_secs(2)));
//! ```

use std::time::Duration;

/// The error type tower services in this crate return: inner errors are boxed unchanged, our own
/// are an [`Error`] inside the box. Use [`Error::find`] to get ours back.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a resilience layer, and so what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The circuit breaker rejected the call without calling the service. Retrying before
    /// `retry_in` hits the same open circuit; route to another endpoint or degrade.
    #[error("circuit breaker `{name}` is open{}", retry_in.map(|d| format!(", calls permitted again in {d:.1?}")).unwrap_or_default())]
    CircuitOpen {
        /// The breaker's name (its key for keyed breakers).
        name: std::sync::Arc<str>,
        /// How long until the breaker lets trial calls through, if known (`None` while the
        /// half-open state's trial calls are all taken).
        retry_in: Option<Duration>,
    },
    /// The call did not finish in time and was dropped. Another attempt may succeed.
    #[error("call timed out after {after:?}")]
    Timeout {
        /// The time limit that was exceeded.
        after: Duration,
    },
    /// The retry layer's overall deadline passed; no further attempt will be made.
    #[error("retry deadline of {deadline:?} exceeded")]
    DeadlineExceeded {
        /// The overall deadline.
        deadline: Duration,
    },
    /// The bulkhead was full (and its bounded wait, if any, ran out). Back off and try again.
    #[error("bulkhead full: {max_concurrent} calls already in flight")]
    BulkheadFull {
        /// The bulkhead's concurrency limit.
        max_concurrent: usize,
    },
    /// The caller exceeded its rate. Answer `429 Too Many Requests` with a `Retry-After` of
    /// `retry_after`, or wait that long.
    #[error("rate limited: retry after {retry_after:?}")]
    RateLimited {
        /// The earliest time a call could be admitted.
        retry_after: Duration,
    },
}

impl Error {
    /// Whether another attempt of the same call could succeed soon: timeouts and a full
    /// bulkhead are transient; an open circuit, a rate limit, and an exceeded deadline
    /// are not (retrying would only hit the same wall).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::BulkheadFull { .. })
    }

    /// How long the caller should wait before trying again, when the layer knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::CircuitOpen { retry_in, .. } => *retry_in,
            Self::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// Finds one of our errors in `error` or its chain of sources.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(ours) = error.downcast_ref::<Self>() {
                return Some(ours);
            }
            current = error.source();
        }
        None
    }

    /// Finds one of our errors in any error value: `E` may be an [`Error`], a [`BoxError`] or
    /// any `std::error::Error`. Classifiers use this to tell our own errors from the inner
    /// service's without knowing the service's error type.
    pub fn find_in<E: 'static>(error: &E) -> Option<&Self> {
        let any: &dyn std::any::Any = error;
        if let Some(ours) = any.downcast_ref::<Self>() {
            return Some(ours);
        }
        if let Some(boxed) = any.downcast_ref::<BoxError>() {
            return Self::find(&**boxed);
        }
        if let Some(boxed) = any.downcast_ref::<Box<dyn std::error::Error + 'static>>() {
            return Self::find(&**boxed);
        }
        None
    }
}
