//! The write side: load an aggregate's state, decide, save the change and enqueue the
//! resulting events through ms-outbox, all in one transaction.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_bus::Envelope;
//! use ms_cqrs::BusinessRuleError;
//! use ms_cqrs::command::{CommandExecutor, Decision, Repository, Versioned};
//! use ms_outbox::Outbox;
//! use sqlx::{Sqlite, SqliteConnection};
//!
//! /// The application's table of invoices: a total and a version.
//! struct Invoices;
//!
//! impl Repository<Sqlite> for Invoices {
//!     type State = i64;
//!
//!     async fn load(&self, conn: &mut SqliteConnection, id: &str)
//!         -> Result<Option<Versioned<i64>>, sqlx::Error> {
//!         let row: Option<(i64, i64)> =
//!             sqlx::query_as("SELECT total, version FROM invoices WHERE id = ?")
//!                 .bind(id).fetch_optional(conn).await?;
//!         Ok(row.map(|(total, version)| Versioned::new(total, version.cast_unsigned())))
//!     }
//!
//!     async fn save(&self, conn: &mut SqliteConnection, id: &str, total: &i64,
//!         expected: Option<u64>, new_version: u64) -> Result<bool, sqlx::Error> {
//!         let result = sqlx::query(
//!             "INSERT INTO invoices (id, total, version) VALUES (?1, ?2, ?3)
//!              ON CONFLICT (id) DO UPDATE SET total = ?2, version = ?3
//!              WHERE invoices.version = ?4",
//!         )
//!         .bind(id).bind(total).bind(new_version.cast_signed())
//!         // -1 matches no stored version: a create must not overwrite a racing one.
//!         .bind(expected.map_or(-1, u64::cast_signed))
//!         .execute(conn).await?;
//!         Ok(result.rows_affected() == 1)
//!     }
//! }
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE invoices (id TEXT PRIMARY KEY, total INTEGER, version INTEGER)")
//!     .execute(&pool).await?;
//! let outbox = Outbox::<Sqlite>::default();
//! outbox.migrate(&pool).await?;
//! let commands = CommandExecutor::new(pool.clone(), outbox.clone());
//!
//! // Create: the state and its event commit together.
//! let created = commands
//!     .execute(&Invoices, "inv-7", |current| match current {
//!         Some(_) => Err(BusinessRuleError::conflict("INVOICE_EXISTS", "inv-7 exists")),
//!         None => Ok(Decision::new(120)
//!             .event("invoicing.invoice", Envelope::builder("invoicing.invoice.created", "/invoicing"))),
//!     })
//!     .await?;
//! assert_eq!((created.state, created.version), (Some(120), 1));
//! // Stamped: the aggregate is the subject and partition key, the version the sequence.
//! assert_eq!(created.events[0].subject(), Some("inv-7"));
//! assert_eq!(created.events[0].extension("sequence"), Some("1"));
//!
//! // A broken rule writes nothing and maps to a status.
//! let refused = commands
//!     .execute(&Invoices, "inv-7", |_| {
//!         Err::<Decision<i64>, _>(BusinessRuleError::unprocessable("NEGATIVE_TOTAL", "total < 0"))
//!     })
//!     .await
//!     .unwrap_err();
//! assert_eq!(refused.http_status(), 422);
//! assert_eq!(outbox.backlog(&pool).await?.pending, 1);
//! # Ok(())
//! # }
//! ```
//!
//! - A [`Repository`] (the application's) loads and saves one kind of aggregate with its
//!   version; the library holds no domain logic.
//! - The decide function turns the current state into a [`Decision`] (the new state and the
//!   events that carry it) or a [`BusinessRuleError`](crate::BusinessRuleError).
//! - [`CommandExecutor::execute`] runs both in one transaction and retries on conflicts: the
//!   decide function may run more than once and must be pure.
//!
//! # The stamping contract
//!
//! Projections rely on it. Every event is stamped with the aggregate id as its `subject` and
//! `partitionkey` (unless the decision set them) and with the CloudEvents
//! [`sequence`](SEQUENCE_EXTENSION) extension: the aggregate's version after that event, in
//! decimal. The events of one aggregate therefore carry 1, 2, 3, … with no gap and no
//! repeat, and the outbox relays them in that order. Commands get the aggregate id as
//! partition key and no sequence.

mod decision;
mod error;
mod executor;
mod repository;

pub use crate::SEQUENCE_EXTENSION;
pub use crate::business_rule::{PROBLEM_JSON_CONTENT_TYPE, ProblemDetails};
pub use decision::Decision;
pub use error::{CONFLICT_CODE, CommandError};
pub use executor::{
    CommandBackend, CommandExecutor, DEFAULT_BACKOFF, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_BACKOFF,
    Executed,
};
pub use repository::{Repository, Versioned};
