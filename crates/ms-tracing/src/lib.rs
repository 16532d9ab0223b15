//! Correlation IDs, W3C trace-context propagation and sampling for services built on tower.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod client;
pub mod correlation;
pub mod head_sampling;
pub mod init;
pub mod message;
pub mod propagation;
pub mod response;
pub mod server;
pub mod tail_sampling;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use client::ClientTraceLayer;
pub use correlation::{
    CorrelationId, CorrelationIdLayer, InvalidCorrelationId, MAX_CORRELATION_ID_LEN,
};
pub use init::TracingBuilder;
pub use server::ServerTraceLayer;
