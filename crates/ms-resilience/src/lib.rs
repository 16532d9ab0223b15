//! Resilience layers for tower services: circuit breaker, retry with backoff and jitter, retry
//! budget, rate limit, timeout and bulkhead.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
pub mod bulkhead;
pub mod circuit_breaker;
pub mod classify;
mod error;
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub mod rate_limit;
pub mod retry;
pub mod timeout;

pub use self::error::{BoxError, Error};
