//! Interned retry settings: one `&'static` copy per distinct [`Config`], up to
//! [`MAX_INTERNED_RETRY_SETTINGS`], so that a call's future refers to its settings without
//! touching a reference count.
//!
//! An `Arc` shared by every call costs two atomic read-modify-writes on one cache line per
//! call (raise the count, lower it), more than the rest of a call that needs no retry; a
//! `&'static` costs nothing. The price: each interned set of settings stays allocated for the
//! life of the process (about a hundred bytes, plus its budget's bucket). Layers built with
//! the same settings (every connection of a server, every client of one kind) share one copy.
//! A budget is part of the settings (compared by identity), so a program that builds a layer
//! with a fresh budget per connection would intern a new copy per connection: the table is
//! therefore bounded, and settings that find it full are held in an `Arc` instead (same
//! behaviour, one reference-count round trip per call), which is freed with the last layer.

use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use super::Config;

/// How many distinct sets of retry settings (a budget counts by identity) are kept for the
/// life of the process. [`RetryLayer`](super::RetryLayer)s built with the first this many
/// distinct settings take the fast path (a call copies a `&'static`); later ones hold their
/// settings in an `Arc` (a call clones and drops it, a few nanoseconds more) and free them
/// with their last service. This bounds the memory the table holds to about this many times a
/// hundred bytes, however many layers a program builds.
pub const MAX_INTERNED_RETRY_SETTINGS: usize = 256;

/// Every set of settings interned so far, at most [`MAX_INTERNED_RETRY_SETTINGS`]. Looked up
/// only when a layer wraps a service.
static INTERNED: Mutex<Vec<&'static Config>> = Mutex::new(Vec::new());

/// A layer's settings: the process-wide copy when the table had room, else its own `Arc`.
#[derive(Debug, Clone)]
pub(crate) enum Settings {
    /// The interned copy: a clone copies a reference.
    Interned(&'static Config),
    /// Beyond the bound: a clone raises a reference count.
    Shared(Arc<Config>),
}

impl Deref for Settings {
    type Target = Config;

    #[inline]
    fn deref(&self) -> &Config {
        match self {
            Self::Interned(config) => config,
            Self::Shared(config) => config,
        }
    }
}

/// The process-wide copy of `config`, or an `Arc` of it once the table is full.
pub(super) fn intern(config: &Config) -> Settings {
    // A panic elsewhere while holding the lock cannot leave the list half-written (a push is
    // the only write), so a poisoned lock is still good to use.
    let mut interned = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    intern_in(&mut interned, MAX_INTERNED_RETRY_SETTINGS, config)
}

/// `config`'s copy in `interned`, added there while it holds fewer than `bound`; an `Arc` of
/// it when `interned` is full.
fn intern_in(interned: &mut Vec<&'static Config>, bound: usize, config: &Config) -> Settings {
    if let Some(known) = interned.iter().find(|known| **known == config) {
        return Settings::Interned(known);
    }
    if interned.len() >= bound {
        return Settings::Shared(Arc::new(config.clone()));
    }
    let leaked: &'static Config = Box::leak(Box::new(config.clone()));
    interned.push(leaked);
    Settings::Interned(leaked)
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

    fn address(settings: &Settings) -> *const Config {
        &raw const **settings
    }

    #[test]
    fn equal_plans_share_one_copy_and_different_ones_do_not() {
        // A table of its own, so that tests running alongside cannot fill it.
        let mut table = Vec::new();
        let mut intern = |config: &Config| intern_in(&mut table, 16, config);
        let budget = RetryBudget::new(10, 0.1);
        let no_budget = intern(&plan(1234, None));
        let same = intern(&plan(1234, None));
        let other_attempts = intern(&plan(1235, None));
        let with_budget = intern(&plan(1234, Some(budget.clone())));
        let same_budget = intern(&plan(1234, Some(budget.clone())));
        let other_budget = intern(&plan(1234, Some(RetryBudget::new(10, 0.1))));
        assert!(matches!(no_budget, Settings::Interned(_)));
        assert_eq!(address(&no_budget), address(&same));
        assert_ne!(address(&no_budget), address(&other_attempts));
        assert_eq!(other_attempts.max_attempts, 1235);
        assert_eq!(address(&with_budget), address(&same_budget));
        assert_ne!(address(&no_budget), address(&with_budget));
        assert_ne!(address(&with_budget), address(&other_budget));
        assert_eq!(table.len(), 4);
    }

    #[test]
    fn the_table_stops_growing_at_its_bound_and_settings_beyond_it_are_shared() {
        let mut table = Vec::new();
        let bound = MAX_INTERNED_RETRY_SETTINGS;
        // A fresh budget per layer, as a layer stack built per connection would make.
        let settings: Vec<Settings> = (0..bound + 10)
            .map(|_| intern_in(&mut table, bound, &plan(3, Some(RetryBudget::new(10, 0.1)))))
            .collect();
        assert_eq!(table.len(), bound);
        assert!(
            settings[..bound]
                .iter()
                .all(|s| matches!(s, Settings::Interned(_)))
        );
        assert!(
            settings[bound..]
                .iter()
                .all(|s| matches!(s, Settings::Shared(_)))
        );
        assert!(settings.iter().all(|s| s.max_attempts == 3));
        // Settings already interned still take the fast path once the table is full.
        let known = intern_in(&mut table, bound, &settings[0]);
        assert!(matches!(known, Settings::Interned(_)));
        assert_eq!(address(&known), address(&settings[0]));
        // The fallback is freed with its last holder: its budget is not kept alive.
        let Settings::Shared(fallback) = intern_in(&mut table, bound, &plan(5, None)) else {
            panic!("the table is full");
        };
        assert_eq!(Arc::strong_count(&fallback), 1);
        assert_eq!(table.len(), bound);
    }
}
