//! Correlation IDs, W3C trace-context propagation and sampling for services built on tower.
//!
//! ```
//! use ms_tracing::CorrelationId;
//!
//! // An ID from a trusted caller is kept as it is...
//! let id: CorrelationId = "order-42:retry.1".parse()?;
//! assert_eq!(id.as_str(), "order-42:retry.1");
//!
//! // ...one that could inject into logs or headers is refused, and a fresh one takes its place.
//! assert!(CorrelationId::parse("evil\r\nx-admin: 1").is_err());
//! let fresh = CorrelationId::generate();
//! assert_eq!(fresh.as_str().len(), 36); // a time-ordered UUID v7
//! # Ok::<(), ms_tracing::InvalidCorrelationId>(())
//! ```
//!
//! This crate is at its first brick: the [`CorrelationId`] type and its validation rules. The
//! tower layers (correlation ID, server and client trace propagation), message propagation and
//! the tail sampler are not here yet.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod correlation_id;

pub use correlation_id::{CorrelationId, InvalidCorrelationId, MAX_CORRELATION_ID_LEN};
