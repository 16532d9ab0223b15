//! A transactional outbox and inbox on sqlx, and a relay that moves committed events to any
//! ms-bus publisher.
//!
//! ```
//! use ms_outbox::TableName;
//!
//! // The outbox table's name is configurable, and checked before it goes anywhere near SQL.
//! let table = TableName::new("billing.outbox_events")?;
//! assert_eq!(table.quoted(), r#""billing"."outbox_events""#);
//! assert!(TableName::new("outbox; DROP TABLE invoices").is_err());
//! # Ok::<(), ms_outbox::InvalidTableName>(())
//! ```
//!
//! This crate is at its first brick: the validated [`TableName`]. The migrations, `Outbox`
//! and `Inbox`, and the relay are not here yet.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod table_name;

pub use table_name::{InvalidTableName, MAX_IDENTIFIER_LEN, TableName};
