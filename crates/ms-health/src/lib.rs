//! Liveness, readiness and startup probes for services: a registry of named checks, each run in
//! its own task under a timeout, cached for a TTL with single-flight so any number of probes cost
//! one check per TTL, with failure thresholds, non-critical (`warn`) checks, one-shot startup
//! latches, `application/health+json` reports (IETF draft-inadarei-api-health-check) served by
//! an axum router or by `tonic-health`, and a graceful shutdown that fails readiness before the
//! server stops.
//!
//! ```
//! use ms_health::{check_fn, CheckOptions, CheckResult, HealthRegistry, Latch, Status};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ms_health::BuildError> {
//! let migrations = Latch::new();
//! let registry = HealthRegistry::builder()
//!     .readiness("db", check_fn(|| async { CheckResult::pass().with_observed_value(1.5, "ms") }))
//!     .register(
//!         "search",
//!         check_fn(|| async { CheckResult::fail("connection refused") }),
//!         CheckOptions::readiness().non_critical(),
//!     )
//!     .startup("migrations", migrations.clone())
//!     .build()?;
//!
//! let report = registry.readiness().await;
//! assert_eq!(report.status, Status::Warn); // degraded, still ready (HTTP 200)
//! assert_eq!(report.checks["db"][0].status, Status::Pass);
//! assert_eq!(report.checks["search"][0].output.as_deref(), Some("connection refused"));
//!
//! // Liveness runs no dependency checks unless one is registered for it.
//! assert!(registry.liveness().await.checks.is_empty());
//!
//! assert_eq!(registry.startup().await.status, Status::Fail);
//! migrations.set();
//! assert_eq!(registry.startup().await.status, Status::Pass);
//! # Ok(())
//! # }
//! ```
//!
//! # Where things are
//!
//! - [`check`](mod@check): the [`Check`] trait, [`CheckResult`], [`check_fn`], [`Latch`].
//! - [`options`]: [`CheckOptions`] and the `DEFAULT_*` constants.
//! - [`registry`]: [`HealthRegistry`] and its builder; evaluation into a [`HealthReport`].
//! - [`report`]: the `application/health+json` types and the [`Details`] setting.
//! - [`shutdown`]: [`HealthRegistry::shutdown`] and [`HealthRegistry::shutdown_on`].
//! - [`router`](mod@router) (feature `axum`, default): `/healthz`, `/readyz`, `/startupz`.
//! - [`tonic`](mod@tonic) (feature `tonic`): [`GrpcHealthReporter`].
//! - [`checks`]: checks for third-party clients: sqlx pools (`postgres`, `sqlite`), NATS
//!   (`nats`), AMQP (`amqp`).
//!
//! Checks for this project's own components (the bus, the outbox, ...) live in the crate that
//! owns the component, behind that crate's `health` feature, implementing [`Check`]; this crate
//! defines the trait and ships checks only for third-party clients.
//!
//! # Feature flags
//!
#![doc = document_features::document_features!()]
#![deny(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The README's examples run as doctests, so its quick start cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod cache;
pub mod check;
pub mod checks;
mod drain;
mod error;
pub mod options;
pub mod probe;
pub mod registry;
pub mod report;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod router;
mod run;
pub mod shutdown;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod tonic;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use self::router::router;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub use self::tonic::GrpcHealthReporter;
pub use check::{BoxFuture, Check, CheckResult, FnCheck, IntoCheckResult, Latch, Status, check_fn};
pub use drain::DEFAULT_DRAIN_DELAY;
pub use error::BuildError;
pub use options::{
    CheckOptions, DEFAULT_CACHE_TTL, DEFAULT_CHECK_TIMEOUT, DEFAULT_FAILURE_THRESHOLD,
};
pub use probe::Probe;
pub use registry::{HealthRegistry, HealthRegistryBuilder};
pub use report::{CheckReport, Details, HEALTH_JSON_CONTENT_TYPE, HealthReport};
