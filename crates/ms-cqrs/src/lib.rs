//! Projection runners that build read models from events, with atomic checkpoints, and a small
//! command-handling helper for the write side.
//!
//! ```
//! use ms_cqrs::{BusinessRuleError, RuleKind};
//!
//! // A business rule broken by a request: the caller gets a code it can branch on, and the
//! // transport a status it can send.
//! let err = BusinessRuleError::conflict("INVOICE_ALREADY_SENT", "invoice inv-7 was sent on 2026-11-02");
//! assert_eq!(err.code(), "INVOICE_ALREADY_SENT");
//! assert_eq!(err.kind(), RuleKind::Conflict);
//! assert_eq!(err.http_status(), 409);
//! assert_eq!(err.grpc_code_name(), "FAILED_PRECONDITION");
//! ```
//!
//! # Layout
//!
//! - Write side: [`command`] (load, decide, save and enqueue the events through ms-outbox in
//!   one transaction) and [`BusinessRuleError`].
//! - [`EventLog`] (`event_log.rs`): an append-only table of envelopes with gap-free positions.
//! - [`Projection`] (`projection.rs`): a read model's `setup` and `apply`.
//! - [`runner`]: [`ProjectionRunner`] and its [`ProjectionHandle`]: segments, batches,
//!   checkpoints, the error policy and dead letters, rebuilds, status and `wait_until`.
//! - `health` (feature `health`): an ms-health check that a projection is caught up.
//! - The databases: [`Store`] is PostgreSQL (feature `postgres`) or SQLite (feature `sqlite`,
//!   the default).
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod business_rule;
pub mod command;
mod error;
mod event_log;
#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
pub mod health;
mod key;
mod projection;
pub mod runner;
mod store;

pub use business_rule::{BusinessRuleError, RuleKind};
pub use error::{ApplyError, ProjectionError};
pub use event_log::{Appended, DEFAULT_EVENT_LOG_TABLE, EventLog};
pub use projection::{ApplyContext, Projection};
pub use runner::{
    ErrorPolicy, LastResort, ParkedEvent, ProjectionHandle, ProjectionMonitor, ProjectionRunner,
    RunnerBuilder, RunnerState, RunnerStatus,
};
pub use store::Store;

/// The CloudEvents extension that numbers an event among its partition key's events (1, 2,
/// 3, …): ms-cqrs's write side stamps it, and bus-fed projections use it to apply each key's
/// events once and in order.
pub const SEQUENCE_EXTENSION: &str = "sequence";
pub use command::{
    CommandError, CommandExecutor, Decision, Executed, PROBLEM_JSON_CONTENT_TYPE, ProblemDetails,
    Repository, Versioned,
};
