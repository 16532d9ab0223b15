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
//! # Layout
//!
//! - [`Envelope`] (`envelope.rs`) and [`codec`]: the CloudEvents 1.0 envelope, binary and
//!   structured content modes over a transport-neutral [`codec::TransportMessage`].
//! - [`EventPublisher`] / [`CommandSender`] (`publish.rs`), [`Subscriber`] and
//!   [`Subscription`] (`subscription.rs`), [`Delivery`] and [`Acker`] (`delivery.rs`): the
//!   contract every adapter implements. **These shapes are stable: changes are additive.**
//! - [`consumer`]: the runtime that drives a `tower::Service<Message>` over a subscription,
//!   with one ack model (ack, retry after a delay, dead letter, in progress).
//! - [`dead_letter`]: the headers a dead letter carries. [`propagation`]: the context hook.
//! - Adapters, each behind its cargo feature and in its own folder: `memory`, `nats`, `amqp`.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub mod amqp;
pub mod codec;
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod conformance;
pub mod consumer;
pub mod dead_letter;
mod delivery;
mod envelope;
mod error;
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub mod memory;
mod name;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
pub mod propagation;
mod publish;
mod subscription;

pub use delivery::{Acker, Delivery, DeliveryInfo};
pub use error::{BoxError, BusError};
pub use name::{MAX_NAME_LEN, validate_name};
pub use publish::{CommandBus, CommandSender, EventBus, EventPublisher};
pub use subscription::{
    DEAD_LETTER_SUFFIX, DEFAULT_ACK_WAIT, DEFAULT_PREFETCH, Deliveries, Source, Subscriber,
    Subscription,
};

pub use envelope::{
    CORRELATION_ID_EXTENSION, DataError, Envelope, EnvelopeBuilder, EnvelopeError,
    JSON_CONTENT_TYPE, PARTITION_KEY_EXTENSION, SPEC_VERSION, TENANT_ID_EXTENSION,
    TRACEPARENT_EXTENSION, TRACESTATE_EXTENSION,
};
