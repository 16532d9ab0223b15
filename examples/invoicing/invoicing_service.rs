//! The invoicing service, the write side: create, send and cancel invoices under business
//! rules, each change committed with its events (and the `payments.charge` command) through
//! the outbox; a local copy of the customer directory, kept from the customers context's
//! events; invoices marked paid from payments' events, and overdue when their due date passes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use ms_bus::consumer::{Consumer, ConsumerHandle, Message};
use ms_bus::{Envelope, Subscription};
use ms_cqrs::BusinessRuleError;
use ms_cqrs::command::{CommandError, CommandExecutor, Decision, Repository, Versioned};
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
/// How often sent invoices are checked for a passed due date.
const OVERDUE_SWEEP_INTERVAL: Duration = Duration::from_millis(200);
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
        payment_error TEXT, version BIGINT NOT NULL)",
];

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
}

/// The invoices table as an ms-cqrs repository: one row per invoice, with its version.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Invoices;

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
    Option<String>,
);

/// `Repository` for one backend; the SQL is the same for both.
macro_rules! invoice_repository {
    ($db:ty) => {
        impl Repository<$db> for Invoices {
            type State = InvoiceState;

            async fn load(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                id: &str,
            ) -> Result<Option<Versioned<InvoiceState>>, sqlx::Error> {
                let row: Option<StateRow> = sqlx::query_as(
                    "SELECT i.id, i.tenant_id, i.customer_id, i.customer_name, i.total_cents, \
                     i.status, i.created_at, i.due_at, i.payment_error, i.version, t.status \
                     FROM invoices i LEFT JOIN tenants t ON t.tenant_id = i.tenant_id \
                     WHERE i.id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
                Ok(row.map(|(id, tenant_id, customer_id, customer_name, total_cents, status, created_at, due_at, payment_error, version, tenant_status)| {
                    let invoice = Invoice { id, tenant_id, customer_id, customer_name, total_cents, status, created_at, due_at, payment_error };
                    Versioned::new(InvoiceState { invoice, tenant_status }, version.cast_unsigned())
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
                             version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
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
                        .bind(new_version.cast_signed())
                        .execute(&mut *conn)
                        .await?
                    }
                    Some(expected) => {
                        sqlx::query(
                            "UPDATE invoices SET status = $1, payment_error = $2, updated_at = $3, \
                             version = $4 WHERE id = $5 AND version = $6",
                        )
                        .bind(&i.status)
                        .bind(&i.payment_error)
                        .bind(now_ms())
                        .bind(new_version.cast_signed())
                        .bind(id)
                        .bind(expected.cast_signed())
                        .execute(&mut *conn)
                        .await?
                    }
                };
                Ok(done.rows_affected() == 1)
            }
        }
    };
}

invoice_repository!(sqlx::Sqlite);
invoice_repository!(sqlx::Postgres);

/// The running service's state.
#[derive(Debug)]
pub(crate) struct Invoicing {
    db: Db,
}

/// The consumers and the sweeper the service runs besides its HTTP server.
pub(crate) struct Workers {
    pub(crate) consumers: Vec<ConsumerHandle>,
    pub(crate) sweeper: tokio::task::JoinHandle<()>,
}

impl Invoicing {
    pub(crate) fn new(db: Db) -> Arc<Self> {
        Arc::new(Self { db })
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

    /// Subscribes to the customers context and to payments, and starts the overdue sweeper.
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
        let sweeper = tokio::spawn(async move {
            let mut every = tokio::time::interval(OVERDUE_SWEEP_INTERVAL);
            loop {
                every.tick().await;
                if let Err(error) = service.sweep_overdue(now_ms()).await {
                    tracing::warn!(%error, "overdue sweep failed");
                }
            }
        });
        Ok(Workers { consumers, sweeper })
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
            CommandExecutor::new(db.pool.clone(), db.outbox.clone())
                .execute(&Invoices, id, decide)
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
        let due_at = now.saturating_add(command.due_in_days.max(0).saturating_mul(DAY_MS));
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
                };
                transition(
                    InvoiceState {
                        invoice,
                        tenant_status,
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
                let charge = Charge {
                    invoice_id: id.to_owned(),
                    tenant_id: next.invoice.tenant_id.clone(),
                    customer_id: next.invoice.customer_id.clone(),
                    amount_cents: next.invoice.total_cents,
                };
                let command = Envelope::builder("payments.charge", "/invoicing")
                    .tenant_id(&charge.tenant_id)
                    .json_data(&charge)
                    .map_err(|e| unserializable(&e))?;
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
                transition(next, "invoicing.invoice.cancelled")
            })
            .await?;
        cancelled_invoice.ok_or_else(|| Refused::NotFound(id.to_owned()))
    }

    async fn fetch(&self, id: &str) -> Result<Invoice, Refused> {
        let state: Option<Versioned<InvoiceState>> =
            with_db!(&self.db, |db| { load(&db.pool, id).await? });
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
                    match self
                        .execute(&result.invoice_id, |current| settle(current, &result, paid))
                        .await
                    {
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

    /// Marks every sent invoice whose due date has passed as overdue, one command (and one
    /// `invoicing.invoice.overdue` event) each.
    pub(crate) async fn sweep_overdue(&self, now: i64) -> Result<usize, Error> {
        let due: Vec<String> = with_db!(&self.db, |db| {
            sqlx::query_scalar("SELECT id FROM invoices WHERE status = 'sent' AND due_at <= $1")
                .bind(now)
                .fetch_all(&db.pool)
                .await?
        });
        let mut marked = 0;
        for id in due {
            let overdue = self
                .execute(&id, |current| {
                    // Paid or cancelled since the query above: nothing to do.
                    let Some(state) =
                        current.filter(|s| s.invoice.status == "sent" && s.invoice.due_at <= now)
                    else {
                        return Ok(Decision::unchanged());
                    };
                    let mut next = state.clone();
                    "overdue".clone_into(&mut next.invoice.status);
                    transition(next, "invoicing.invoice.overdue")
                })
                .await;
            match overdue {
                Ok(_) => marked += 1,
                Err(Refused::Failed(error)) => return Err(error),
                Err(Refused::Command(error)) => return Err(Error::Command(error)),
                Err(Refused::NotFound(_)) => {}
            }
        }
        Ok(marked)
    }
}

/// Loads an invoice outside any command.
async fn load<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    id: &str,
) -> Result<Option<Versioned<InvoiceState>>, sqlx::Error>
where
    Invoices: Repository<DB, State = InvoiceState>,
{
    let mut conn = pool.acquire().await?;
    Invoices.load(&mut conn, id).await
}

/// A payment's result applied to its invoice: paid, or the failure noted (with an event, so
/// that the read side learns it too). Anything else leaves the invoice as it is.
fn settle(
    current: Option<&InvoiceState>,
    result: &PaymentResult,
    paid: bool,
) -> Result<Decision<InvoiceState>, BusinessRuleError> {
    let Some(state) =
        current.filter(|s| s.invoice.status == "sent" || s.invoice.status == "overdue")
    else {
        return Ok(Decision::unchanged());
    };
    let mut next = state.clone();
    if paid {
        "paid".clone_into(&mut next.invoice.status);
        next.invoice.payment_error = None;
        return transition(next, "invoicing.invoice.paid");
    }
    let reason = result
        .reason
        .clone()
        .unwrap_or_else(|| "declined".to_owned());
    if state.invoice.payment_error.as_deref() == Some(reason.as_str()) {
        return Ok(Decision::unchanged());
    }
    next.invoice.payment_error = Some(reason);
    transition(next, "invoicing.invoice.payment_failed")
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
