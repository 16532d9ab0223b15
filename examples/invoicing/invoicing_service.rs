//! The invoicing service, the write side: create, send and cancel invoices under business
//! rules, each change committed with its events (and the `payments.charge` command) through
//! the outbox; a local copy of the customer directory, kept from the customers context's
//! events; invoices marked paid from payments' events, and overdue when their due date passes.
//!
//! **Timers are scheduled messages.** Sending an invoice schedules its overdue message (a
//! command to this service, due at the invoice's due date) in the transaction that sends it;
//! the transaction that marks it paid (or cancels it) cancels every scheduled message of the
//! invoice by key, so a paid invoice never gets one. A failed charge schedules the next
//! attempt after a backoff drawn from ms-resilience's [`ExponentialBackoff`], up to
//! [`MAX_CHARGE_ATTEMPTS`]; after the last, the invoice's overdue message marks it overdue at
//! its due date. ms-cqrs's
//! [`Decision`] carries events and immediate commands only, so the decide functions put the
//! timer changes on the new state and the repository's `save` writes them through the
//! outbox, in the command's transaction.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use ms_bus::consumer::{Consumer, ConsumerHandle, Message};
use ms_bus::{Envelope, EnvelopeBuilder, Subscription};
use ms_cqrs::BusinessRuleError;
use ms_cqrs::command::{CommandError, CommandExecutor, Decision, Repository, Versioned};
use ms_outbox::{Backend, Outbox, OutboxMessage};
use ms_resilience::backoff::ExponentialBackoff;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use crate::bus::SharedBus;
use crate::db::{Db, with_db};
use crate::http::{Problem, internal};
use crate::{Error, now_ms, service_span};

/// The topic of invoice events.
pub const INVOICE_TOPIC: &str = "invoicing.invoice";
/// The destination of the charge command.
pub const CHARGE_DESTINATION: &str = "payments.charge";
/// The topics of the customers context this service keeps a copy from.
pub const CUSTOMER_TOPIC: &str = "customers.customer";
/// The tenants' topic.
pub const TENANT_TOPIC: &str = "customers.tenant";
/// The payments' events topic.
pub const PAYMENT_TOPIC: &str = "payments.payment";
/// The destination of an invoice's overdue message: a command to this service itself,
/// scheduled at the invoice's due date.
pub const OVERDUE_DESTINATION: &str = "invoicing.overdue";
/// How many times an invoice's card is charged before the invoice is left overdue.
pub const MAX_CHARGE_ATTEMPTS: i64 = 3;
/// The wait before charging again after a failed charge (full jitter), short for the demo.
fn charge_retry_backoff() -> ExponentialBackoff {
    ExponentialBackoff::new(Duration::from_millis(200), Duration::from_secs(5))
}
const DAY_MS: i64 = 86_400_000;

pub(crate) const DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tenants (
        tenant_id TEXT PRIMARY KEY, status TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS customers (
        customer_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, name TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS invoices (
        id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, customer_id TEXT NOT NULL,
        customer_name TEXT NOT NULL, total_cents BIGINT NOT NULL, status TEXT NOT NULL,
        created_at BIGINT NOT NULL, due_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
        payment_error TEXT, charge_attempts BIGINT NOT NULL DEFAULT 0,
        version BIGINT NOT NULL)",
];

/// Brings a PostgreSQL schema of an earlier version up to date (a database that outlives a
/// run; SQLite files are new each run).
pub(crate) const POSTGRES_UPGRADE: &[&str] =
    &["ALTER TABLE invoices ADD COLUMN IF NOT EXISTS charge_attempts BIGINT NOT NULL DEFAULT 0"];

/// A line of a new invoice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    /// What was sold.
    pub description: String,
    /// How many.
    pub quantity: i64,
    /// The price of one, in cents.
    pub unit_price_cents: i64,
}

/// The body of `POST /v1/invoices`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateInvoice {
    /// The customer billed (known from the customers context's events).
    pub customer_id: String,
    /// The lines.
    pub lines: Vec<Line>,
    /// Days until payment is due (0: due now).
    #[serde(default = "default_due_days")]
    pub due_in_days: i64,
    /// The due date itself, Unix milliseconds; wins over `due_in_days` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<i64>,
}

fn default_due_days() -> i64 {
    30
}

/// An invoice as the write side holds it, and as its events carry it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Invoice {
    /// `inv-…`.
    pub id: String,
    /// The tenant (the business that bills).
    pub tenant_id: String,
    /// The customer billed.
    pub customer_id: String,
    /// The customer's name, copied from the customers context.
    pub customer_name: String,
    /// The total, in cents.
    pub total_cents: i64,
    /// `draft`, `sent`, `paid`, `overdue`, `cancelled`.
    pub status: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub due_at: i64,
    /// The last failed charge's reason, if any.
    pub payment_error: Option<String>,
    /// How many charges of this invoice failed.
    #[serde(default)]
    pub charge_attempts: i64,
}

/// The charge command's data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Charge {
    /// The invoice paid.
    pub invoice_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its customer.
    pub customer_id: String,
    /// The amount, in cents.
    pub amount_cents: i64,
    /// Which attempt this is, from 1.
    #[serde(default = "first_attempt")]
    pub attempt: i64,
}

fn first_attempt() -> i64 {
    1
}

/// A payment event's data (`payments.payment.succeeded` / `.failed`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentResult {
    /// The payment.
    pub payment_id: String,
    /// The invoice it pays.
    pub invoice_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// The amount, in cents.
    pub amount_cents: i64,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    /// The charge attempt it answers, from 1.
    #[serde(default = "first_attempt")]
    pub attempt: i64,
}

/// `customers.customer.registered`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CustomerRegistered {
    /// The customer.
    pub customer_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its name.
    pub name: String,
}

/// `customers.tenant.activated` / `.suspended`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantChanged {
    /// The tenant.
    pub tenant_id: String,
}

/// Why a request was refused.
#[derive(Debug)]
pub(crate) enum Refused {
    NotFound(String),
    Command(CommandError),
    Failed(Error),
}

impl<E: Into<Error>> From<E> for Refused {
    fn from(error: E) -> Self {
        Self::Failed(error.into())
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound(id) => {
                Problem::new(StatusCode::NOT_FOUND, NOT_FOUND, format!("no invoice {id}"))
                    .into_response()
            }
            Self::Command(error) => Problem::command(&error).into_response(),
            Self::Failed(error) => internal(&error).into_response(),
        }
    }
}

/// The code of the rule a command on a missing invoice breaks (answered 404).
const NOT_FOUND: &str = "INVOICE_NOT_FOUND";

/// An invoice as the write side loads it: the aggregate, and its tenant's standing from the
/// local copy of the customers context, read in the command's transaction.
#[derive(Debug, Clone)]
pub(crate) struct InvoiceState {
    invoice: Invoice,
    tenant_status: Option<String>,
    /// What the decision does to the invoice's scheduled messages, written by `save` in the
    /// command's transaction (never stored with the invoice).
    timers: Vec<Timer>,
}

/// A change to an invoice's scheduled messages.
#[derive(Debug, Clone)]
enum Timer {
    /// Every scheduled message of the invoice (its overdue message, a pending charge retry)
    /// is cancelled, by key.
    CancelAll,
    /// A message is scheduled.
    Schedule(OutboxMessage),
}

/// What the service's timers did, in order, as the scenario prints it and the tests check it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimerEvent {
    /// An invoice's overdue message arrived; `marked`: it turned the invoice overdue (false:
    /// the invoice was no longer `sent`).
    OverdueDelivered {
        /// The invoice.
        invoice_id: String,
        /// Whether the invoice became overdue.
        marked: bool,
    },
    /// A failed charge is tried again after `after`.
    ChargeRetry {
        /// The invoice.
        invoice_id: String,
        /// The attempt scheduled, from 2.
        attempt: i64,
        /// The backoff drawn.
        after: Duration,
    },
    /// The last attempt failed: no more charges; the overdue message decides.
    ChargeGaveUp {
        /// The invoice.
        invoice_id: String,
        /// How many charges failed.
        attempts: i64,
    },
}

/// The invoices table as an ms-cqrs repository: one row per invoice, with its version; its
/// `save` also writes the decision's [`Timer`] changes through `outbox`.
#[derive(Debug, Clone)]
pub(crate) struct Invoices<DB: Backend> {
    outbox: Outbox<DB>,
}

type StateRow = (
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    i64,
    Option<String>,
    i64,
    i64,
    Option<String>,
);

/// `Repository` for one backend; the SQL is the same for both.
macro_rules! invoice_repository {
    ($db:ty) => {
        impl Repository<$db> for Invoices<$db> {
            type State = InvoiceState;

            async fn load(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                id: &str,
            ) -> Result<Option<Versioned<InvoiceState>>, sqlx::Error> {
                let row: Option<StateRow> = sqlx::query_as(
                    "SELECT i.id, i.tenant_id, i.customer_id, i.customer_name, i.total_cents, \
                     i.status, i.created_at, i.due_at, i.payment_error, i.charge_attempts, \
                     i.version, t.status \
                     FROM invoices i LEFT JOIN tenants t ON t.tenant_id = i.tenant_id \
                     WHERE i.id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
                Ok(row.map(|(id, tenant_id, customer_id, customer_name, total_cents, status, created_at, due_at, payment_error, charge_attempts, version, tenant_status)| {
                    let invoice = Invoice { id, tenant_id, customer_id, customer_name, total_cents, status, created_at, due_at, payment_error, charge_attempts };
                    Versioned::new(InvoiceState { invoice, tenant_status, timers: Vec::new() }, version.cast_unsigned())
                }))
            }

            async fn save(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                id: &str,
                state: &InvoiceState,
                expected: Option<u64>,
                new_version: u64,
            ) -> Result<bool, sqlx::Error> {
                let i = &state.invoice;
                let done = match expected {
                    None => {
                        sqlx::query(
                            "INSERT INTO invoices (id, tenant_id, customer_id, customer_name, \
                             total_cents, status, created_at, due_at, updated_at, payment_error, \
                             charge_attempts, version) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                             ON CONFLICT (id) DO NOTHING",
                        )
                        .bind(id)
                        .bind(&i.tenant_id)
                        .bind(&i.customer_id)
                        .bind(&i.customer_name)
                        .bind(i.total_cents)
                        .bind(&i.status)
                        .bind(i.created_at)
                        .bind(i.due_at)
                        .bind(now_ms())
                        .bind(&i.payment_error)
                        .bind(i.charge_attempts)
                        .bind(new_version.cast_signed())
                        .execute(&mut *conn)
                        .await?
                    }
                    Some(expected) => {
                        sqlx::query(
                            "UPDATE invoices SET status = $1, payment_error = $2, updated_at = $3, \
                             charge_attempts = $4, version = $5 WHERE id = $6 AND version = $7",
                        )
                        .bind(&i.status)
                        .bind(&i.payment_error)
                        .bind(now_ms())
                        .bind(i.charge_attempts)
                        .bind(new_version.cast_signed())
                        .bind(id)
                        .bind(expected.cast_signed())
                        .execute(&mut *conn)
                        .await?
                    }
                };
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                for timer in &state.timers {
                    let written = match timer {
                        Timer::CancelAll => self.outbox.cancel_key(&mut *conn, id).await.map(drop),
                        Timer::Schedule(message) => {
                            self.outbox.enqueue(&mut *conn, message.clone()).await
                        }
                    };
                    written.map_err(outbox_to_sqlx)?;
                }
                Ok(true)
            }
        }
    };
}

invoice_repository!(sqlx::Sqlite);
invoice_repository!(sqlx::Postgres);

/// An outbox failure inside `save`, as the repository's error type: a database error stays
/// one (so the executor still sees conflicts), anything else is not retried.
fn outbox_to_sqlx(error: ms_outbox::OutboxError) -> sqlx::Error {
    match error {
        ms_outbox::OutboxError::Database(error) => error,
        other => sqlx::Error::Encode(Box::new(other)),
    }
}

/// The running service's state.
#[derive(Debug)]
pub(crate) struct Invoicing {
    db: Db,
    timer_log: Mutex<Vec<TimerEvent>>,
}

/// The consumers the service runs besides its HTTP server: customers, tenants, payments'
/// results, and its own overdue messages.
pub(crate) struct Workers {
    pub(crate) consumers: Vec<ConsumerHandle>,
}

impl Invoicing {
    pub(crate) fn new(db: Db) -> Arc<Self> {
        Arc::new(Self {
            db,
            timer_log: Mutex::new(Vec::new()),
        })
    }

    /// What the timers did so far, in order.
    pub(crate) fn timer_log(&self) -> Vec<TimerEvent> {
        self.timer_log
            .lock()
            .map_or_else(|poisoned| poisoned.into_inner().clone(), |log| log.clone())
    }

    fn log_timer(&self, event: TimerEvent) {
        tracing::info!(?event, "invoice timer");
        match self.timer_log.lock() {
            Ok(mut log) => log.push(event),
            Err(poisoned) => poisoned.into_inner().push(event),
        }
    }

    /// The scheduled messages not yet due, of invoice `key` or all, earliest first.
    pub(crate) async fn scheduled(
        &self,
        key: Option<&str>,
    ) -> Result<Vec<ms_outbox::ScheduledMessage>, Error> {
        Ok(with_db!(&self.db, |db| {
            db.outbox.scheduled(&db.pool, key, 1_000).await?
        }))
    }

    /// The service's routes (health routes are added by the caller).
    pub(crate) fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/invoices", post(create))
            .route("/v1/invoices/{id}", get(fetch))
            .route("/v1/invoices/{id}/send", post(send))
            .route("/v1/invoices/{id}/cancel", post(cancel))
            .route("/v1/customers", get(customers))
            .route("/v1/summary", get(summary))
            .with_state(self.clone())
    }

    /// Subscribes to the customers context, to payments and to its own overdue messages.
    pub(crate) async fn start_workers(self: &Arc<Self>, bus: &SharedBus) -> Result<Workers, Error> {
        let mut consumers = Vec::new();
        for topic in [CUSTOMER_TOPIC, TENANT_TOPIC, PAYMENT_TOPIC] {
            let service = self.clone();
            let handler = tower::service_fn(move |message: Message| {
                let service = service.clone();
                async move { service.on_event(message.envelope()).await }
            });
            consumers.push(
                Consumer::new(Subscription::events(topic, "invoicing")?)
                    .serve(bus, handler)
                    .await?,
            );
        }
        let service = self.clone();
        let handler = tower::service_fn(move |message: Message| {
            let service = service.clone();
            async move { service.on_overdue(message.envelope()).await }
        });
        consumers.push(
            Consumer::new(Subscription::commands(OVERDUE_DESTINATION)?)
                .serve(bus, handler)
                .await?,
        );
        Ok(Workers { consumers })
    }

    /// Runs a command on invoice `id` through ms-cqrs's executor: load (with the tenant's
    /// standing), decide, save at the next version and enqueue the decision's events and
    /// commands through the outbox, in one transaction, retried on conflicts.
    async fn execute<F>(&self, id: &str, decide: F) -> Result<Option<Invoice>, Refused>
    where
        F: FnMut(Option<&InvoiceState>) -> Result<Decision<InvoiceState>, BusinessRuleError>,
    {
        let span = service_span("invoicing", "ms-cqrs: load, decide, save + outbox");
        let executed = with_db!(&self.db, |db| {
            let invoices = Invoices {
                outbox: db.outbox.clone(),
            };
            CommandExecutor::new(db.pool.clone(), db.outbox.clone())
                .execute(&invoices, id, decide)
                .instrument(span)
                .await
        });
        match executed {
            Ok(executed) => Ok(executed.state.map(|state| state.invoice)),
            Err(CommandError::Rule(rule)) if rule.code() == NOT_FOUND => {
                Err(Refused::NotFound(id.to_owned()))
            }
            Err(error) => Err(Refused::Command(error)),
        }
    }

    async fn create(&self, command: CreateInvoice) -> Result<Invoice, Refused> {
        let total = total(&command.lines).map_err(|rule| Refused::Command(rule.into()))?;
        // The customer directory is a local copy of another context's data, read before the
        // command: it is eventually consistent anyway, and not part of the invoice aggregate.
        let customer: Option<(String, String, Option<String>)> = with_db!(&self.db, |db| {
            sqlx::query_as(
                "SELECT c.tenant_id, c.name, t.status FROM customers c \
                 LEFT JOIN tenants t ON t.tenant_id = c.tenant_id WHERE c.customer_id = $1",
            )
            .bind(&command.customer_id)
            .fetch_optional(&db.pool)
            .await?
        });
        let now = now_ms();
        let id = format!("inv-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let due_at = command.due_at.unwrap_or_else(|| {
            now.saturating_add(command.due_in_days.max(0).saturating_mul(DAY_MS))
        });
        let created = self
            .execute(&id, |current| {
                if current.is_some() {
                    return Err(BusinessRuleError::conflict(
                        "INVOICE_EXISTS",
                        "the invoice id is taken",
                    ));
                }
                let Some((tenant_id, customer_name, tenant_status)) = customer.clone() else {
                    return Err(BusinessRuleError::unprocessable(
                        "CUSTOMER_UNKNOWN",
                        format!("no customer {} in the directory", command.customer_id),
                    ));
                };
                tenant_active(&tenant_id, tenant_status.as_deref())?;
                let invoice = Invoice {
                    id: id.clone(),
                    tenant_id,
                    customer_id: command.customer_id.clone(),
                    customer_name,
                    total_cents: total,
                    status: "draft".to_owned(),
                    created_at: now,
                    due_at,
                    payment_error: None,
                    charge_attempts: 0,
                };
                transition(
                    InvoiceState {
                        invoice,
                        tenant_status,
                        timers: Vec::new(),
                    },
                    "invoicing.invoice.created",
                )
            })
            .await?;
        created.ok_or_else(|| Refused::NotFound(id))
    }

    async fn send(&self, id: &str) -> Result<Invoice, Refused> {
        let sent = self
            .execute(id, |current| {
                let state = existing(current, id)?;
                match state.invoice.status.as_str() {
                    "draft" => {}
                    "cancelled" => return Err(cancelled(&state.invoice)),
                    other => {
                        return Err(BusinessRuleError::conflict(
                            "INVOICE_ALREADY_SENT",
                            format!("invoice {id} is already {other}"),
                        ));
                    }
                }
                tenant_active(&state.invoice.tenant_id, state.tenant_status.as_deref())?;
                let mut next = state.clone();
                "sent".clone_into(&mut next.invoice.status);
                let command = charge(&next.invoice, 1)?;
                next.timers
                    .push(Timer::Schedule(overdue_message(&next.invoice)?));
                Ok(
                    transition(next, "invoicing.invoice.sent")?
                        .command(CHARGE_DESTINATION, command),
                )
            })
            .await?;
        sent.ok_or_else(|| Refused::NotFound(id.to_owned()))
    }

    async fn cancel(&self, id: &str) -> Result<Invoice, Refused> {
        let cancelled_invoice = self
            .execute(id, |current| {
                let state = existing(current, id)?;
                match state.invoice.status.as_str() {
                    "draft" | "sent" | "overdue" => {}
                    "cancelled" => return Err(cancelled(&state.invoice)),
                    _ => {
                        return Err(BusinessRuleError::conflict(
                            "INVOICE_ALREADY_PAID",
                            format!("invoice {id} is paid; refund it instead"),
                        ));
                    }
                }
                let mut next = state.clone();
                "cancelled".clone_into(&mut next.invoice.status);
                next.timers.push(Timer::CancelAll);
                transition(next, "invoicing.invoice.cancelled")
            })
            .await?;
        cancelled_invoice.ok_or_else(|| Refused::NotFound(id.to_owned()))
    }

    async fn fetch(&self, id: &str) -> Result<Invoice, Refused> {
        let state: Option<Versioned<InvoiceState>> =
            with_db!(&self.db, |db| { load(&db.pool, &db.outbox, id).await? });
        state
            .map(|versioned| versioned.state.invoice)
            .ok_or_else(|| Refused::NotFound(id.to_owned()))
    }

    async fn customers(&self) -> Result<Vec<serde_json::Value>, Error> {
        let rows: Vec<(String, String, String, Option<String>)> = with_db!(&self.db, |db| {
            sqlx::query_as(
                "SELECT c.customer_id, c.tenant_id, c.name, t.status FROM customers c \
                 LEFT JOIN tenants t ON t.tenant_id = c.tenant_id ORDER BY c.customer_id",
            )
            .fetch_all(&db.pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(customer_id, tenant_id, name, status)| {
                serde_json::json!({
                    "customer_id": customer_id, "tenant_id": tenant_id, "name": name,
                    "tenant_status": status.unwrap_or_else(|| "unknown".to_owned()),
                })
            })
            .collect())
    }

    async fn summary(&self) -> Result<serde_json::Value, Error> {
        let rows: Vec<(String, i64, i64)> = with_db!(&self.db, |db| {
            sqlx::query_as(
                "SELECT status, COUNT(*), CAST(COALESCE(SUM(total_cents), 0) AS BIGINT) \
                 FROM invoices GROUP BY status ORDER BY status",
            )
            .fetch_all(&db.pool)
            .await?
        });
        let mut by_status = serde_json::Map::new();
        let mut outstanding = 0i64;
        for (status, count, cents) in rows {
            if status == "sent" || status == "overdue" {
                outstanding = outstanding.saturating_add(cents);
            }
            by_status.insert(
                status,
                serde_json::json!({ "count": count, "total_cents": cents }),
            );
        }
        Ok(serde_json::json!({ "by_status": by_status, "outstanding_cents": outstanding }))
    }

    /// Applies an event of another context. The customer directory's copy is written with
    /// the event recorded in the inbox, in one transaction, so a redelivery is a no-op; a
    /// payment's result is a command on the invoice, idempotent by its state (an invoice
    /// already paid stays as it is).
    async fn on_event(&self, event: &Envelope) -> Result<(), Error> {
        let span = service_span("invoicing", format!("invoicing: apply {}", event.ty()));
        async {
            match event.ty() {
                "payments.payment.succeeded" | "payments.payment.failed" => {
                    let result: PaymentResult = event.json_data()?;
                    let paid = event.ty().ends_with("succeeded");
                    // Drawn once, outside `decide` (which must be pure and may run again).
                    let delays: Vec<Duration> = charge_retry_backoff()
                        .delays()
                        .take(usize::try_from(MAX_CHARGE_ATTEMPTS).unwrap_or(0))
                        .collect();
                    let mut outcome = None;
                    let settled = self
                        .execute(&result.invoice_id, |current| {
                            let (decision, timer) = settle(current, &result, paid, &delays)?;
                            outcome = timer;
                            Ok(decision)
                        })
                        .await;
                    if settled.is_ok()
                        && let Some(event) = outcome
                    {
                        self.log_timer(event);
                    }
                    match settled {
                        Ok(_) | Err(Refused::NotFound(_)) => Ok(()),
                        Err(Refused::Failed(error)) => Err(error),
                        Err(Refused::Command(error)) => Err(Error::Command(error)),
                    }
                }
                _ => self.copy_directory(event).await,
            }
        }
        .instrument(span)
        .await
    }

    /// The local copy of the customers context's directory.
    async fn copy_directory(&self, event: &Envelope) -> Result<(), Error> {
        with_db!(&self.db, |db| {
            let mut tx = db.pool.begin().await?;
            if !db.inbox.record(&mut *tx, "invoicing", event).await? {
                return Ok(());
            }
            match event.ty() {
                "customers.customer.registered" => {
                    let c: CustomerRegistered = event.json_data()?;
                    sqlx::query(
                        "INSERT INTO customers (customer_id, tenant_id, name) VALUES ($1, $2, $3) \
                         ON CONFLICT (customer_id) DO UPDATE SET tenant_id = excluded.tenant_id, \
                         name = excluded.name",
                    )
                    .bind(&c.customer_id)
                    .bind(&c.tenant_id)
                    .bind(&c.name)
                    .execute(&mut *tx)
                    .await?;
                }
                ty @ ("customers.tenant.activated" | "customers.tenant.suspended") => {
                    let t: TenantChanged = event.json_data()?;
                    let status = if ty.ends_with("activated") {
                        "active"
                    } else {
                        "suspended"
                    };
                    sqlx::query(
                        "INSERT INTO tenants (tenant_id, status) VALUES ($1, $2) \
                         ON CONFLICT (tenant_id) DO UPDATE SET status = excluded.status",
                    )
                    .bind(&t.tenant_id)
                    .bind(status)
                    .execute(&mut *tx)
                    .await?;
                }
                _ => {}
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// An invoice's overdue message: marks it overdue if it is still `sent` (one
    /// `invoicing.invoice.overdue` event); a paid or cancelled invoice cancelled the message,
    /// but one already on its way is a no-op, as is a redelivery.
    async fn on_overdue(&self, message: &Envelope) -> Result<(), Error> {
        let Some(id) = message.subject().map(str::to_owned) else {
            return Err(Error::Scenario(format!(
                "overdue message {} names no invoice",
                message.id()
            )));
        };
        let span = service_span("invoicing", format!("invoicing: {id} is due"));
        let mut marked = false;
        let overdue = self
            .execute(&id, |current| {
                marked = false;
                let Some(state) = current.filter(|s| s.invoice.status == "sent") else {
                    return Ok(Decision::unchanged());
                };
                let mut next = state.clone();
                "overdue".clone_into(&mut next.invoice.status);
                marked = true;
                transition(next, "invoicing.invoice.overdue")
            })
            .instrument(span)
            .await;
        match overdue {
            Ok(_) | Err(Refused::NotFound(_)) => {
                self.log_timer(TimerEvent::OverdueDelivered {
                    invoice_id: id,
                    marked,
                });
                Ok(())
            }
            Err(Refused::Failed(error)) => Err(error),
            Err(Refused::Command(error)) => Err(Error::Command(error)),
        }
    }
}

/// Loads an invoice outside any command.
async fn load<DB: Backend>(
    pool: &sqlx::Pool<DB>,
    outbox: &Outbox<DB>,
    id: &str,
) -> Result<Option<Versioned<InvoiceState>>, sqlx::Error>
where
    Invoices<DB>: Repository<DB, State = InvoiceState>,
{
    let mut conn = pool.acquire().await?;
    let invoices = Invoices {
        outbox: outbox.clone(),
    };
    invoices.load(&mut conn, id).await
}

/// A payment's result applied to its invoice. Paid: every scheduled message of the invoice
/// is cancelled (its overdue message, a pending retry). Failed: the next attempt is scheduled
/// after `delays[attempt - 1]`, up to [`MAX_CHARGE_ATTEMPTS`]; after the last, the invoice
/// waits for its overdue message. A result that is not the invoice's next one (a redelivery, a late duplicate)
/// leaves the invoice as it is, as does anything on an invoice neither sent nor overdue.
fn settle(
    current: Option<&InvoiceState>,
    result: &PaymentResult,
    paid: bool,
    delays: &[Duration],
) -> Result<(Decision<InvoiceState>, Option<TimerEvent>), BusinessRuleError> {
    let Some(state) =
        current.filter(|s| s.invoice.status == "sent" || s.invoice.status == "overdue")
    else {
        return Ok((Decision::unchanged(), None));
    };
    let mut next = state.clone();
    if paid {
        "paid".clone_into(&mut next.invoice.status);
        next.invoice.payment_error = None;
        next.timers.push(Timer::CancelAll);
        return Ok((transition(next, "invoicing.invoice.paid")?, None));
    }
    if result.attempt <= state.invoice.charge_attempts {
        return Ok((Decision::unchanged(), None));
    }
    let reason = result
        .reason
        .clone()
        .unwrap_or_else(|| "declined".to_owned());
    next.invoice.payment_error = Some(reason);
    next.invoice.charge_attempts = result.attempt;
    let invoice_id = state.invoice.id.clone();
    let retry = usize::try_from(result.attempt - 1)
        .ok()
        .and_then(|i| delays.get(i))
        .filter(|_| result.attempt < MAX_CHARGE_ATTEMPTS);
    if let Some(&after) = retry {
        let attempt = result.attempt + 1;
        let command = charge(&next.invoice, attempt)?
            .id(format!("{invoice_id}-charge-{attempt}"))
            .partition_key(&invoice_id)
            .build()
            .map_err(|e| unserializable(&e))?;
        next.timers.push(Timer::Schedule(
            OutboxMessage::command(CHARGE_DESTINATION, command).deliver_after(after),
        ));
        let event = TimerEvent::ChargeRetry {
            invoice_id,
            attempt,
            after,
        };
        return Ok((
            transition(next, "invoicing.invoice.payment_failed")?,
            Some(event),
        ));
    }
    // The last attempt failed: no more charges; the overdue message, still scheduled, marks
    // the invoice overdue at its due date unless it is paid another way first.
    let event = TimerEvent::ChargeGaveUp {
        invoice_id,
        attempts: result.attempt,
    };
    Ok((
        transition(next, "invoicing.invoice.payment_failed")?,
        Some(event),
    ))
}

/// The `payments.charge` command of attempt `attempt` for `invoice`.
fn charge(invoice: &Invoice, attempt: i64) -> Result<EnvelopeBuilder, BusinessRuleError> {
    let charge = Charge {
        invoice_id: invoice.id.clone(),
        tenant_id: invoice.tenant_id.clone(),
        customer_id: invoice.customer_id.clone(),
        amount_cents: invoice.total_cents,
        attempt,
    };
    Envelope::builder("payments.charge", "/invoicing")
        .tenant_id(&charge.tenant_id)
        .json_data(&charge)
        .map_err(|e| unserializable(&e))
}

/// The invoice's overdue message: a command to this service, due at the invoice's due date,
/// with an id of its own (`<invoice>-overdue`) and the invoice as key, so that the paying
/// transaction can cancel it.
fn overdue_message(invoice: &Invoice) -> Result<OutboxMessage, BusinessRuleError> {
    let envelope = Envelope::builder("invoicing.invoice.due", "/invoicing")
        .id(format!("{}-overdue", invoice.id))
        .subject(&invoice.id)
        .partition_key(&invoice.id)
        .tenant_id(&invoice.tenant_id)
        .build()
        .map_err(|e| unserializable(&e))?;
    let due = time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(invoice.due_at).saturating_mul(1_000_000),
    )
    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    Ok(OutboxMessage::command(OVERDUE_DESTINATION, envelope).deliver_at(due))
}

/// The new state and the event `ty` that carries it (the invoice, as JSON).
fn transition(next: InvoiceState, ty: &str) -> Result<Decision<InvoiceState>, BusinessRuleError> {
    let event = Envelope::builder(ty, "/invoicing")
        .tenant_id(&next.invoice.tenant_id)
        .json_data(&next.invoice)
        .map_err(|e| unserializable(&e))?;
    Ok(Decision::new(next).event(INVOICE_TOPIC, event))
}

/// A message whose data does not serialize: cannot happen with these types, but the decide
/// function must not panic.
fn unserializable(error: &ms_bus::EnvelopeError) -> BusinessRuleError {
    BusinessRuleError::unprocessable("UNSERIALIZABLE", error.to_string())
}

fn existing<'a>(
    current: Option<&'a InvoiceState>,
    id: &str,
) -> Result<&'a InvoiceState, BusinessRuleError> {
    current.ok_or_else(|| BusinessRuleError::unprocessable(NOT_FOUND, format!("no invoice {id}")))
}

/// The invoice's total from its lines, or the rule they break.
fn total(lines: &[Line]) -> Result<i64, BusinessRuleError> {
    if lines.is_empty() {
        return Err(BusinessRuleError::unprocessable(
            "INVOICE_EMPTY",
            "an invoice needs at least one line",
        ));
    }
    let mut total: i64 = 0;
    for line in lines {
        total = (line.quantity > 0 && line.unit_price_cents >= 0)
            .then(|| line.quantity.checked_mul(line.unit_price_cents))
            .flatten()
            .and_then(|amount| total.checked_add(amount))
            .ok_or_else(|| {
                BusinessRuleError::unprocessable(
                    "LINE_INVALID",
                    format!(
                        "line {:?}: quantity must be positive, the price not negative, the amount fit",
                        line.description
                    ),
                )
            })?;
    }
    Ok(total)
}

fn tenant_active(tenant_id: &str, status: Option<&str>) -> Result<(), BusinessRuleError> {
    if status == Some("active") {
        return Ok(());
    }
    Err(BusinessRuleError::unprocessable(
        "TENANT_INACTIVE",
        format!(
            "tenant {tenant_id} is {}",
            status.unwrap_or("not activated")
        ),
    ))
}

fn cancelled(invoice: &Invoice) -> BusinessRuleError {
    BusinessRuleError::conflict(
        "INVOICE_CANCELLED",
        format!("invoice {} was cancelled", invoice.id),
    )
}

async fn create(
    State(service): State<Arc<Invoicing>>,
    body: Result<Json<CreateInvoice>, JsonRejection>,
) -> Response {
    let Json(command) = match body {
        Ok(body) => body,
        Err(rejection) => return Problem::bad_json(&rejection).into_response(),
    };
    let span = service_span("invoicing", "invoicing: create invoice");
    match service.create(command).instrument(span).await {
        Ok(invoice) => (StatusCode::CREATED, Json(invoice)).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn fetch(State(service): State<Arc<Invoicing>>, Path(id): Path<String>) -> Response {
    match service.fetch(&id).await {
        Ok(invoice) => Json(invoice).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn send(State(service): State<Arc<Invoicing>>, Path(id): Path<String>) -> Response {
    let span = service_span("invoicing", format!("invoicing: send {id}"));
    match service.send(&id).instrument(span).await {
        Ok(invoice) => Json(invoice).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn cancel(State(service): State<Arc<Invoicing>>, Path(id): Path<String>) -> Response {
    let span = service_span("invoicing", format!("invoicing: cancel {id}"));
    match service.cancel(&id).instrument(span).await {
        Ok(invoice) => Json(invoice).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn customers(State(service): State<Arc<Invoicing>>) -> Response {
    match service.customers().await {
        Ok(customers) => Json(serde_json::json!({ "customers": customers })).into_response(),
        Err(error) => internal(&error).into_response(),
    }
}

async fn summary(State(service): State<Arc<Invoicing>>) -> Response {
    match service.summary().await {
        Ok(summary) => Json(summary).into_response(),
        Err(error) => internal(&error).into_response(),
    }
}
