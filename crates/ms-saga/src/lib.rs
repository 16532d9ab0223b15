//! Long-running business processes (sagas, process managers) on ms-bus and ms-outbox that
//! survive crashes: a persisted state machine per instance that reacts to events, sends
//! commands, sets timeouts and completes, each step's effects exactly once.
//!
//! A saga is a [`Saga`]: a state (an enum, serde), a [`route`](Saga::route) that says once
//! which messages start or belong to an instance, and a pure [`handle`](Saga::handle) that
//! turns a state and a message into a [`Decision`]. The [`SagaRunner`] does the rest in one
//! transaction per message: the [inbox](ms_outbox::Inbox) check, the optimistic version, the
//! commands, events and timeouts through the [outbox](ms_outbox::Outbox).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use ms_bus::Envelope;
//! use ms_outbox::Outbox;
//! use ms_saga::{Decision, HandleError, Handled, Route, Saga, SagaRunner, SagaStore, Status};
//! use serde::{Deserialize, Serialize};
//! use sqlx::Sqlite;
//!
//! /// Charge an invoice; give up when payments does not answer in time.
//! struct Payment;
//!
//! #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
//! enum State { #[default] New, Charging, Paid, Unanswered }
//!
//! enum Message { InvoiceSent, Charged, NoReply }
//!
//! impl Saga for Payment {
//!     const NAME: &'static str = "payment";
//!     type State = State;
//!     type Message = Message;
//!
//!     fn route(&self, e: &Envelope) -> Route<Message> {
//!         match e.ty() {
//!             "invoicing.invoice.sent" => Route::start_by(e.subject(), Message::InvoiceSent),
//!             "payments.charge.succeeded" => Route::correlate_by(e.subject(), Message::Charged),
//!             "payment.no-reply" => Route::correlate_by(ms_saga::timeout_instance(e), Message::NoReply),
//!             _ => Route::Ignore,
//!         }
//!     }
//!
//!     fn handle(&self, state: &State, message: &Message) -> Result<Decision<State>, HandleError> {
//!         Ok(match (state, message) {
//!             (State::New, Message::InvoiceSent) => Decision::to(State::Charging)
//!                 .send("payments", Envelope::builder("payments.charge", "/invoicing"))
//!                 .schedule("no-reply", Duration::from_secs(30), Envelope::builder("payment.no-reply", "/invoicing")),
//!             // Completing cancels the pending timeout.
//!             (State::Charging, Message::Charged) => Decision::to(State::Paid).complete(),
//!             (State::Charging, Message::NoReply) => Decision::to(State::Unanswered).complete(),
//!             _ => Decision::ignore(),
//!         })
//!     }
//! }
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let outbox = Outbox::<Sqlite>::default();
//! outbox.migrate(&pool).await?;
//! ms_outbox::Inbox::<Sqlite>::default().migrate(&pool).await?;
//! let store = SagaStore::<Sqlite>::new(pool.clone());
//! store.migrate().await?;
//! let runner = SagaRunner::builder(Payment, store.clone(), outbox.clone()).build();
//!
//! let sent = Envelope::builder("invoicing.invoice.sent", "/invoicing").subject("inv-7").build()?;
//! runner.handle(&sent).await?;
//! assert_eq!(runner.handle(&sent).await?, Handled::Duplicate); // redelivered: no effect
//! let backlog = outbox.backlog(&pool).await?;
//! assert_eq!((backlog.pending, backlog.scheduled), (1, 1)); // the charge, the timeout
//!
//! let charged = Envelope::builder("payments.charge.succeeded", "/payments").subject("inv-7").build()?;
//! runner.handle(&charged).await?;
//! let paid = store.instance::<State>("payment", "inv-7").await?.expect("stored");
//! assert_eq!((paid.state, paid.status, paid.version), (State::Paid, Status::Completed, 2));
//! assert_eq!(outbox.backlog(&pool).await?.scheduled, 0); // the timeout was cancelled
//! # Ok(())
//! # }
//! ```
//!
//! In a service the runner is an ms-bus handler: serve it with a
//! [`Consumer`](ms_bus::consumer::Consumer) of each subscription the saga reacts to, and of
//! its [timeout destination](SagaRunner::timeout_destination); run an ms-outbox
//! [`Relay`](ms_outbox::Relay) for what it sends. See [`runner`] for the transaction, the
//! retries and parking, and [`store`] for the tables and inspection.
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

mod decision;
mod error;
#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
pub mod health;
#[cfg(feature = "health")]
pub use health::SagaCheck;
pub mod runner;
mod saga;
pub mod store;

pub use decision::Decision;
pub use error::{HandleError, SagaError};
pub use runner::{Handled, SagaRunner, SagaRunnerBuilder, UnknownInstance};
pub use saga::{
    INSTANCE_EXTENSION, Route, Saga, TIMEOUT_EXTENSION, timeout_instance, timeout_name,
};
pub use store::{DEFAULT_TABLE, Instance, ParkedMessage, SagaBackend, SagaStore, Status};
