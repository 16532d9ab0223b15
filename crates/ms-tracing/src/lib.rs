//! Correlation IDs, W3C trace-context propagation and sampling for services built on tower.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod correlation;
pub mod propagation;

pub use correlation::{
    CorrelationId, CorrelationIdLayer, InvalidCorrelationId, MAX_CORRELATION_ID_LEN,
};
