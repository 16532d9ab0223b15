//! A broker-agnostic event and command bus over CloudEvents 1.0 envelopes.
//!
//! ```
//! use ms_bus::Envelope;
//! use ms_tracing::CorrelationId;
//!
//! let correlation = CorrelationId::generate();
//! let event = Envelope::builder("invoicing.invoice.created", "/invoicing")
//!     .subject("inv-1001")
//!     .correlation_id(&correlation)
//!     .extension("partitionkey", "inv-1001")?
//!     .data("application/json", &br#"{"total":4200}"#[..])
//!     .build()?;
//!
//! assert_eq!(event.specversion(), "1.0");
//! assert_eq!(event.ty(), "invoicing.invoice.created");
//! assert_eq!(event.correlation_id().as_ref(), Some(&correlation));
//! assert_eq!(event.extension("partitionkey"), Some("inv-1001"));
//! # Ok::<(), ms_bus::EnvelopeError>(())
//! ```
//!
//! This crate is at its first brick: the [`Envelope`] with the CloudEvents attribute rules.
//! The codecs (binary and structured modes), the `EventBus`/`CommandBus` traits, the consumer
//! runtime and the memory, NATS JetStream and RabbitMQ adapters are not here yet.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod envelope;

pub use envelope::{Envelope, EnvelopeBuilder, EnvelopeError, SPEC_VERSION};
