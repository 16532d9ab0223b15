//! [`RetryBudget`]: gRPC's retry throttling, a token bucket shared by every call to one
//! destination, so that retries cannot multiply the load on a service that is failing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The token bucket of gRPC's retry throttling (gRFC A6, `retryThrottling`).
///
/// ```
/// use ms_resilience::retry::RetryBudget;
///
/// let budget = RetryBudget::new(10, 0.1);
/// assert!(budget.can_retry());
/// for _ in 0..5 {
///     budget.record_failure();
/// }
/// // 10 - 5 = 5 tokens: not more than half of 10, so retries stop.
/// assert!(!budget.can_retry());
/// // Each success puts back 0.1 token.
/// budget.record_success();
/// assert!(budget.can_retry());
/// ```
///
/// The bucket starts full at `max_tokens`. Every failed attempt takes one token, every
/// successful call gives back `token_ratio` (up to the maximum), and a retry is allowed only
/// while more than half the tokens are left. With the common `(10, 0.1)`, about one failure
/// in ten calls keeps the bucket level; during an outage retries stop after five failures
/// and come back once successes have refilled it.
///
/// Clones share one bucket: give every client of one destination (host, authority, cluster)
/// the same budget. A success while the bucket is full writes nothing (one load), so a healthy
/// destination pays no shared write per call.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    inner: Arc<Bucket>,
}

/// Tokens are kept in thousandths.
const SCALE: f64 = 1000.0;

#[derive(Debug)]
struct Bucket {
    tokens: AtomicU64,
    max: u64,
    ratio: u64,
}

/// Two budgets are equal when they share one bucket (one is a clone of the other).
impl PartialEq for RetryBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for RetryBudget {}

impl RetryBudget {
    /// A full bucket of `max_tokens` (at least 1) that each success refills by `token_ratio`
    /// (clamped to `0.001..=max_tokens`).
    pub fn new(max_tokens: u32, token_ratio: f64) -> Self {
        let max = u64::from(max_tokens.max(1)) * 1000;
        let ratio = if token_ratio.is_finite() {
            (token_ratio * SCALE).clamp(1.0, f64::from(max_tokens.max(1)) * SCALE)
        } else {
            1.0
        };
        Self {
            inner: Arc::new(Bucket {
                tokens: AtomicU64::new(max),
                max,
                // Clamped to `1..=max` above, so the conversion is exact enough.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                ratio: ratio as u64,
            }),
        }
    }

    /// Whether a retry is allowed now: more than half the tokens are left.
    pub fn can_retry(&self) -> bool {
        self.inner.tokens.load(Relaxed) * 2 > self.inner.max
    }

    /// A call succeeded: give back `token_ratio` tokens.
    #[inline]
    pub fn record_success(&self) {
        let bucket = &*self.inner;
        if bucket.tokens.load(Relaxed) >= bucket.max {
            return;
        }
        let _ = bucket.tokens.fetch_update(Relaxed, Relaxed, |t| {
            Some((t + bucket.ratio).min(bucket.max))
        });
    }

    /// An attempt failed: take one token.
    pub fn record_failure(&self) {
        let _ = self
            .inner
            .tokens
            .fetch_update(Relaxed, Relaxed, |t| Some(t.saturating_sub(1000)));
    }

    /// The tokens left (for metrics).
    pub fn tokens(&self) -> f64 {
        // Tokens are at most `u32::MAX * 1000`, well within f64's exact range.
        #[allow(clippy::cast_precision_loss)]
        let tokens = self.inner.tokens.load(Relaxed) as f64;
        tokens / SCALE
    }
}
