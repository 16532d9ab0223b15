//! Resilience layers for tower services: circuit breaker, retry with backoff and jitter, retry
//! budget, rate limit, timeout and bulkhead.
//!
//! ```
//! use std::time::Duration;
//! use ms_resilience::backoff::{ExponentialBackoff, Jitter};
//!
//! // 100 ms, 200 ms, 400 ms, ... capped at 2 s, each delay drawn uniformly below its ceiling
//! // ("full jitter"), so that clients that failed together do not retry together.
//! let backoff = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(2))
//!     .with_jitter(Jitter::Full);
//! let delays: Vec<Duration> = backoff.delays().take(6).collect();
//! for (attempt, delay) in delays.iter().enumerate() {
//!     let ceiling = Duration::from_millis(100 << attempt).min(Duration::from_secs(2));
//!     assert!(*delay <= ceiling);
//! }
//! ```
//!
//! This crate is at its first brick: the backoff schedules with jitter that the retry layer
//! will use. The layers themselves (circuit breaker, retry, budget, rate limit, timeout,
//! bulkhead) and the failure classifiers are not here yet.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
