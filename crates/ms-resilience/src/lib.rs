//! Resilience layers for tower services: circuit breaker, retry with backoff, jitter and a
//! shared budget, keyed rate limit, timeout and bulkhead, with one outcome classifier that the
//! breaker and the retry layer share.
//!
//! ```
//! use std::time::Duration;
//! use ms_resilience::bulkhead::BulkheadLayer;
//! use ms_resilience::circuit_breaker::{CircuitBreaker, State};
//! use ms_resilience::retry::{RetryBudget, RetryLayer};
//! use ms_resilience::timeout::TimeoutLayer;
//! use ms_resilience::{BoxError, Error};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let breaker = CircuitBreaker::builder()
//!     .name("inventory")
//!     .minimum_number_of_calls(5)
//!     .build();
//! // Outermost first: retry (with a budget shared by every client of this destination),
//! // then the breaker that each attempt passes, a bulkhead, and a per-attempt timeout.
//! let service = ServiceBuilder::new()
//!     .layer(RetryLayer::new().max_attempts(3).budget(RetryBudget::new(10, 0.1)))
//!     .layer(breaker.layer())
//!     .layer(BulkheadLayer::new(64))
//!     .layer(TimeoutLayer::new(Duration::from_millis(300)))
//!     .service_fn(|sku: u32| async move {
//!         if sku == 0 { Err::<u32, BoxError>("inventory is down".into()) } else { Ok(sku * 2) }
//!     });
//!
//! assert_eq!(service.clone().oneshot(21).await.unwrap(), 42);
//! // A failing call is retried; each attempt counts in the breaker's window: 1 success and 4
//! // failures make 80 % of the 5 calls it needs to judge, and it opens.
//! for _ in 0..2 {
//!     let _ = service.clone().oneshot(0).await;
//! }
//! assert_eq!(breaker.state(), State::Open);
//! let error = service.clone().oneshot(21).await.unwrap_err();
//! assert!(matches!(Error::find(&*error), Some(Error::CircuitOpen { .. })));
//! # }
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`circuit_breaker`] | Resilience4j's breaker (count or time window, slow calls, half-open trials, backoff open duration), lock-free when closed; keyed breakers; events, metrics, manual control |
//! | [`retry`] | backoff with full, equal or decorrelated jitter; per-try timeout within a deadline; `Retry-After` and `grpc-retry-pushback-ms`; gRPC-style retry budget; bounded replay of HTTP bodies; idempotent methods only unless told |
//! | [`classify`] | what an outcome means (success, failure, retryable), built on tower-http's `classify`, for HTTP and gRPC |
//! | [`rate_limit`] (feature `rate-limit`) | keyed GCRA (`governor`), fails fast with the wait; idle keys expire |
//! | [`timeout`], [`bulkhead`] | a time limit and a concurrency limit with typed errors |
//! | [`backoff`] | the jitter maths |
//! | `metrics` (feature `metrics`) | breaker state and calls by outcome, retries and rejections through the `metrics` facade, recorded off the hot path |
//!
//! Every layer's own failure is an [`Error`] inside the `BoxError` it returns;
//! [`Error::find`] gets it back, [`Error::is_retryable`] and [`Error::retry_after`] say what
//! to do.
//!
//! # Not here yet
//!
//! - Metrics go through the `metrics` facade (feature `metrics`); there is no OpenTelemetry
//!   exporter of our own (`metrics` has bridges). State changes reach callbacks, `tracing`, a
//!   `watch` channel (the latest state) and the state gauge, not a broadcast of every
//!   transition.
//! - The replay buffer reads the body (up to its limit) before the first attempt, rather than
//!   recording it as the first attempt streams it.
//! - The gRPC classifier reads `grpc-status` from the response head (trailers-only errors,
//!   which is how unary errors arrive); a status in trailers after a streamed body is not
//!   classified.
//! - [`RetryBudgets`](retry::RetryBudgets) gives each destination its budget when its client
//!   is built; the retry layer does not pick a budget per request from the request's
//!   authority.
//! - The lock-free windows are covered by a model-based property test and multi-threaded tests,
//!   not by `loom`.
//!
//! # Feature flags
//!
#![doc = document_features::document_features!()]
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The README's examples run as doctests, so its quick start cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod backoff;
pub mod bulkhead;
pub mod circuit_breaker;
pub mod classify;
mod error;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub mod rate_limit;
pub mod retry;
pub mod timeout;

pub use self::error::{BoxError, Error};
