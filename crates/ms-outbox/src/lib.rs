//! A transactional outbox and inbox on sqlx, and a relay that moves committed events to any
//! ms-bus publisher, in order per key and in parallel across keys.
//!
//! - [`Outbox::enqueue`] writes an event into the caller's own transaction, with the trace
//!   context and correlation ID current at that moment.
//! - [`Relay`] publishes committed rows and removes them once the broker confirmed them
//!   (at least once; the envelope's source and id are the broker's dedup key). Its module docs explain the
//!   design: shards, advisory-lock leases, commit order per key, poison rows.
//! - Published rows are deleted per batch, kept for a while ([`Retention::Keep`]), or, on a
//!   PostgreSQL table [partitioned by time](OutboxBuilder::partitioned), dropped a whole
//!   partition at a time: no bloat.
//! - [Scheduled messages](schedule) ([`OutboxMessage::deliver_at`]) are published when due,
//!   never before; [`Outbox::cancel`] and [`Outbox::reschedule`] change them in the caller's
//!   transaction; [recurring schedules](recurring) send one message per tick of an interval,
//!   exactly once per tick across relays.
//! - [`Inbox`] records which envelopes a consumer has handled, in the consumer's transaction,
//!   by the same key (source and id).
//! - `health::RelayCheck` (feature `health`) is an ms-health check of a running relay: alive,
//!   heartbeat fresh, backlog moving.
//!
//! PostgreSQL (feature `postgres`) runs any number of relays at once; SQLite (feature
//! `sqlite`, the default) is the embedded choice, one relay per database.
//!
//! The whole path on the embedded defaults (SQLite, the memory bus): the invoice and its event
//! commit together, the relay publishes the event, a consumer group receives it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use futures_util::StreamExt;
//! use ms_bus::memory::MemoryBus;
//! use ms_bus::{Envelope, Subscriber, Subscription};
//! use ms_outbox::{Outbox, OutboxMessage, Relay};
//! use sqlx::Sqlite;
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE invoices (id TEXT PRIMARY KEY)").execute(&pool).await?;
//! let outbox = Outbox::<Sqlite>::default();
//! outbox.migrate(&pool).await?;
//!
//! let bus = MemoryBus::new();
//! let mut reporting = bus
//!     .subscribe(&Subscription::events("invoicing.invoice", "reporting")?)
//!     .await?;
//! let relay = Relay::builder(&outbox, &pool, bus.clone()).build().spawn();
//!
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO invoices (id) VALUES ('inv-7')").execute(&mut *tx).await?;
//! let created = Envelope::builder("invoicing.invoice.created", "/invoicing")
//!     .subject("inv-7")
//!     .build()?;
//! outbox.enqueue(&mut *tx, OutboxMessage::event("invoicing.invoice", created)).await?;
//! tx.commit().await?; // the invoice and its event, or neither
//!
//! let (event, _info, acker) = reporting.next().await.expect("relayed")?.into_parts();
//! assert_eq!(event?.subject(), Some("inv-7"));
//! acker.ack().await?;
//! relay.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
#![doc = document_features::document_features!()]
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Each database uses part of the shared machinery; the all-features build (CI's clippy) still
// finds code no database uses.
#![cfg_attr(not(all(feature = "postgres", feature = "sqlite")), allow(dead_code))]

// The README's examples run as doctests, so its quick start cannot rot (it uses SQLite).
#[cfg(all(doctest, feature = "sqlite"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod backend;
mod error;
#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
pub mod health;
pub mod inbox;
mod key;
mod message;
mod outbox;
mod outbox_config;
mod partition;
pub mod recurring;
pub mod relay;
pub mod schedule;
mod schema;
mod table_name;
mod unavailable;

pub use backend::{Backend, Backlog, DeadLetter};
pub use error::OutboxError;
#[cfg(feature = "health")]
pub use health::RelayCheck;
pub use inbox::{DEFAULT_INBOX_CLEANUP_BATCH, DEFAULT_INBOX_TABLE, Inbox};
pub use message::{DELIVER_AT_EXTENSION, MessageKind, OutboxMessage};
pub use outbox::{
    DEFAULT_KEY_LOCK_SLOTS, DEFAULT_SHARDS, DEFAULT_TABLE, MAX_SHARDS, Outbox, OutboxBuilder,
};
pub use partition::{PARTITIONS_AHEAD, PartitionInterval};
pub use recurring::{MissedTicks, Recurring};
pub use relay::{OnPoison, Relay, RelayBuilder, RelayHandle, RelayMonitor, RelayStatus, Retention};
pub use schedule::{Cancellation, Rescheduling, ScheduledMessage};
pub use schema::Migration;
pub use table_name::{InvalidTableName, MAX_IDENTIFIER_LEN, TableName};
pub use unavailable::is_database_unavailable;
