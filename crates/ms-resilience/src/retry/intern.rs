//! Interned retry settings: one `&'static` copy per distinct [`Config`], so that a call's future
//! refers to its settings without touching a reference count.
//!
//! An `Arc` shared by every call costs two atomic read-modify-writes on one cache line per
//! call (raise the count, lower it), more than the rest of a call that needs no retry; a
//! `&'static` costs nothing. The price: each distinct set of settings built into a layer stays
//! allocated for the life of the process (about a hundred bytes). Layers built with the same
//! settings (every connection of a server, every client of one kind) share one copy, so the
//! memory is bounded by the settings a program spells out, not by how often it builds layers.
//! A budget is part of the settings (compared by identity): build layers for a destination
//! with one budget, not a new one per layer.

use std::sync::{Mutex, PoisonError};

use super::Config;

/// Every plan interned so far. Looked up only when a layer wraps a service.
static PLANS: Mutex<Vec<&'static Config>> = Mutex::new(Vec::new());

/// The process-wide copy of `config`.
pub(super) fn intern(config: &Config) -> &'static Config {
    // A panic elsewhere while holding the lock cannot leave the list half-written (a push is
    // the only write), so a poisoned lock is still good to use.
    let mut plans = PLANS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = plans.iter().find(|known| **known == config) {
        return known;
    }
    let leaked: &'static Config = Box::leak(Box::new(config.clone()));
    plans.push(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backoff::ExponentialBackoff;
    use crate::retry::RetryBudget;

    fn plan(max_attempts: u32, budget: Option<RetryBudget>) -> Config {
        Config {
            max_attempts,
            backoff: ExponentialBackoff::new(Duration::from_millis(7), Duration::from_secs(3)),
            per_try_timeout: None,
            deadline: None,
            budget,
        }
    }

    #[test]
    fn equal_plans_share_one_copy_and_different_ones_do_not() {
        let budget = RetryBudget::new(10, 0.1);
        let no_budget = intern(&plan(1234, None));
        let same = intern(&plan(1234, None));
        let other_attempts = intern(&plan(1235, None));
        let with_budget = intern(&plan(1234, Some(budget.clone())));
        let same_budget = intern(&plan(1234, Some(budget.clone())));
        let other_budget = intern(&plan(1234, Some(RetryBudget::new(10, 0.1))));
        assert!(std::ptr::eq(no_budget, same));
        assert!(!std::ptr::eq(no_budget, other_attempts));
        assert_eq!(other_attempts.max_attempts, 1235);
        assert!(std::ptr::eq(with_budget, same_budget));
        assert!(!std::ptr::eq(no_budget, with_budget));
        assert!(!std::ptr::eq(with_budget, other_budget));
    }
}
