//! CQRS building blocks: a write side that commits an aggregate's change and its events in one
//! transaction, and projection runners that build read models from those events with
//! checkpoints committed alongside, rebuilds beside the live version, and per-key parallelism.
//!
//! The whole path on the embedded defaults (SQLite): a command appends its event to the
//! [`EventLog`] (and the outbox, for other services), a [`ProjectionRunner`] applies it to a read
//! model, and the caller reads its own write.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_bus::Envelope;
//! use ms_cqrs::command::{CommandExecutor, Decision, Repository, Versioned};
//! use ms_cqrs::{ApplyContext, ApplyError, BusinessRuleError, EventLog, Projection, ProjectionRunner};
//! use ms_outbox::Outbox;
//! use sqlx::{AssertSqlSafe, Sqlite, SqliteConnection};
//!
//! /// Write side: an invoice's total, with its version (the application's table).
//! struct Invoices;
//! # impl Repository<Sqlite> for Invoices {
//! #     type State = i64;
//! #     async fn load(&self, conn: &mut SqliteConnection, id: &str) -> Result<Option<Versioned<i64>>, sqlx::Error> {
//! #         let row: Option<(i64, i64)> = sqlx::query_as("SELECT total, version FROM invoices WHERE id = ?")
//! #             .bind(id).fetch_optional(conn).await?;
//! #         Ok(row.map(|(total, version)| Versioned::new(total, version.cast_unsigned())))
//! #     }
//! #     async fn save(&self, conn: &mut SqliteConnection, id: &str, total: &i64, expected: Option<u64>, version: u64)
//! #         -> Result<bool, sqlx::Error> {
//! #         let done = sqlx::query("INSERT INTO invoices (id, total, version) VALUES (?1, ?2, ?3)
//! #              ON CONFLICT (id) DO UPDATE SET total = ?2, version = ?3 WHERE invoices.version = ?4")
//! #             .bind(id).bind(total).bind(version.cast_signed()).bind(expected.map_or(-1, u64::cast_signed))
//! #             .execute(conn).await?;
//! #         Ok(done.rows_affected() == 1)
//! #     }
//! # }
//!
//! /// Read side: how many invoices were created.
//! struct Count;
//!
//! impl Projection<Sqlite> for Count {
//!     fn name(&self) -> &str { "invoice_count" }
//!     fn tables(&self) -> &[&str] { &["invoice_count"] } // readers query the view
//!
//!     async fn setup(&self, conn: &mut SqliteConnection, ctx: &ApplyContext) -> Result<(), ApplyError> {
//!         let table = ctx.table("invoice_count"); // "invoice_count_v1", "_v2" after a rebuild
//!         let sql = format!("CREATE TABLE IF NOT EXISTS {table} (n INTEGER NOT NULL);
//!                            INSERT INTO {table} SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM {table})");
//!         sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
//!         Ok(())
//!     }
//!
//!     async fn apply(&self, conn: &mut SqliteConnection, _: &Envelope, ctx: &ApplyContext) -> Result<(), ApplyError> {
//!         let sql = format!("UPDATE {} SET n = n + 1", ctx.table("invoice_count"));
//!         sqlx::query(AssertSqlSafe(sql)).execute(conn).await?; // same transaction as the checkpoint
//!         Ok(())
//!     }
//! }
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE invoices (id TEXT PRIMARY KEY, total INTEGER, version INTEGER)")
//!     .execute(&pool).await?;
//! let (outbox, log) = (Outbox::<Sqlite>::default(), EventLog::<Sqlite>::default());
//! outbox.migrate(&pool).await?;
//! log.migrate(&pool).await?;
//!
//! let commands = CommandExecutor::new(pool.clone(), outbox).event_log(log.clone());
//! let runner = ProjectionRunner::from_log(pool.clone(), Count, &log).start().await?;
//!
//! commands
//!     .execute(&Invoices, "inv-7", |current| match current {
//!         Some(_) => Err(BusinessRuleError::conflict("INVOICE_EXISTS", "inv-7 exists")),
//!         None => Ok(Decision::new(120)
//!             .event("invoicing.invoice", Envelope::builder("invoicing.invoice.created", "/invoicing"))),
//!     })
//!     .await?;
//! runner.wait_until(log.head(&pool).await?).await?; // read your own write
//! let n: i64 = sqlx::query_scalar("SELECT n FROM invoice_count").fetch_one(&pool).await?;
//! assert_eq!(n, 1);
//! runner.shutdown().await?;
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```
//!
//! # Layout
//!
//! - Write side: [`command`] (load, decide, save and enqueue the events through ms-outbox in
//!   one transaction; optionally append them to an [`EventLog`]) and [`BusinessRuleError`]
//!   (HTTP 409/422, gRPC `FAILED_PRECONDITION`, RFC 9457 problem details).
//! - [`EventLog`] (`event_log.rs`): an append-only table of envelopes with gap-free positions
//!   (a sequencer on PostgreSQL, so a late commit is never skipped).
//! - [`Projection`] (`projection.rs`): a read model's versioned tables, `setup` and `apply`.
//! - [`runner`]: [`ProjectionRunner`] and its [`ProjectionHandle`]: segments, batches,
//!   checkpoints in the read model's transaction, the [`ErrorPolicy`] and dead letters with
//!   replay, bus sources with per-key sequences, blue/green rebuilds with side effects off
//!   during replay, status and `wait_until`.
//! - `health` (feature `health`): an ms-health check that a projection is caught up.
//! - The databases: [`Store`] is PostgreSQL (feature `postgres`) or SQLite (feature `sqlite`,
//!   the default).
//!
//! # Feature flags
//!
#![doc = document_features::document_features!()]
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The README's examples run as doctests, so its quick start cannot rot (it uses SQLite).
#[cfg(all(doctest, feature = "sqlite"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

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

pub use command::{
    CommandError, CommandExecutor, Decision, Executed, PROBLEM_JSON_CONTENT_TYPE, ProblemDetails,
    Repository, Versioned,
};
/// The CloudEvents extension that numbers an event among its partition key's events: ms-bus's
/// `SEQUENCE_EXTENSION`, beside the other extension names.
pub use ms_bus::SEQUENCE_EXTENSION;
