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
//! This crate is at its first brick: the typed [`BusinessRuleError`]. The command-handling
//! helper, the `Projection` trait, the runner with its checkpoints, rebuilds and error
//! policies are not here yet.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod business_rule;
pub mod command;

pub use business_rule::{BusinessRuleError, RuleKind};
pub use command::{
    CommandError, CommandExecutor, Decision, Executed, PROBLEM_JSON_CONTENT_TYPE, ProblemDetails,
    Repository, Versioned,
};
