//! [`RetryBudgets`]: one [`RetryBudget`] per destination, so that retries to a failing
//! destination stop while the others keep theirs.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use super::RetryBudget;

/// Retry budgets keyed by destination (an authority, an endpoint, a cluster name).
///
/// ```
/// use ms_resilience::retry::RetryBudgets;
///
/// let budgets: RetryBudgets<String> = RetryBudgets::new(10, 0.1);
/// let orders = budgets.get("orders.internal:8080");
/// for _ in 0..5 {
///     orders.record_failure();
/// }
/// // The failing destination may not retry any more ...
/// assert!(!budgets.get("orders.internal:8080").can_retry());
/// // ... while another one still may.
/// assert!(budgets.get("billing.internal:8080").can_retry());
/// assert_eq!(budgets.len(), 2);
/// ```
///
/// Give each destination's retry layer its budget when building that destination's client:
/// `RetryLayer::http().budget(budgets.get(&authority))`. Every `get` of a key returns the same
/// bucket (clones of one [`RetryBudget`]), and clones of the registry share it.
///
/// # Bounded
///
/// At most [`max_destinations`](Self::with_max_destinations) keys get a bucket of their own
/// ([`DEFAULT_MAX_DESTINATIONS`](Self::DEFAULT_MAX_DESTINATIONS) unless told); keys beyond
/// that share one overflow bucket, so retries to them are throttled together rather than not
/// at all. The bound keeps the registry's memory bounded however many keys it is asked
/// for. A key's bucket is never replaced while the registry lives, so a destination's
/// throttling is not reset by dropping and rebuilding its clients. Key by something stable (a
/// service's authority), not by something that churns (a pod's address): churning keys fill
/// the registry and then share the overflow bucket.
#[derive(Clone)]
pub struct RetryBudgets<K> {
    inner: Arc<Registry<K>>,
}

struct Registry<K> {
    max_tokens: u32,
    token_ratio: f64,
    max_destinations: usize,
    budgets: Mutex<HashMap<K, RetryBudget>>,
    overflow: RetryBudget,
}

impl<K> fmt::Debug for RetryBudgets<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudgets")
            .field("max_tokens", &self.inner.max_tokens)
            .field("token_ratio", &self.inner.token_ratio)
            .field("max_destinations", &self.inner.max_destinations)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq> RetryBudgets<K> {
    /// How many destinations get a bucket of their own unless told otherwise.
    pub const DEFAULT_MAX_DESTINATIONS: usize = 1024;

    /// Budgets like [`RetryBudget::new`]`(max_tokens, token_ratio)`, one per destination, for
    /// up to [`DEFAULT_MAX_DESTINATIONS`](Self::DEFAULT_MAX_DESTINATIONS) destinations.
    pub fn new(max_tokens: u32, token_ratio: f64) -> Self {
        Self::with_max_destinations(max_tokens, token_ratio, Self::DEFAULT_MAX_DESTINATIONS)
    }

    /// As [`new`](Self::new), with at most `max_destinations` buckets of their own.
    pub fn with_max_destinations(
        max_tokens: u32,
        token_ratio: f64,
        max_destinations: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Registry {
                max_tokens,
                token_ratio,
                max_destinations,
                budgets: Mutex::new(HashMap::new()),
                overflow: RetryBudget::new(max_tokens, token_ratio),
            }),
        }
    }

    /// The budget of `destination`: its own bucket (made on first use), or the shared
    /// overflow bucket once the registry is full.
    pub fn get<Q>(&self, destination: &Q) -> RetryBudget
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let registry = &*self.inner;
        // Only inserts write the map, so a panic while it was held left it whole.
        let mut budgets = registry
            .budgets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(budget) = budgets.get(destination) {
            return budget.clone();
        }
        if budgets.len() >= registry.max_destinations {
            return registry.overflow.clone();
        }
        let budget = RetryBudget::new(registry.max_tokens, registry.token_ratio);
        budgets.insert(destination.to_owned(), budget.clone());
        budget
    }

    /// How many destinations have a bucket of their own.
    pub fn len(&self) -> usize {
        self.inner
            .budgets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no destination has a bucket yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
