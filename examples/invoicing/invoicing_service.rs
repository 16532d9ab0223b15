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
use ms_outbox::OutboxMessage;
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
        payment_error TEXT)",
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

type InvoiceRow = (
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    i64,
    Option<String>,
);

impl From<InvoiceRow> for Invoice {
    fn from(row: InvoiceRow) -> Self {
        let (
            id,
            tenant_id,
            customer_id,
            customer_name,
            total_cents,
            status,
            created_at,
            due_at,
            payment_error,
        ) = row;
        Self {
            id,
            tenant_id,
            customer_id,
            customer_name,
            total_cents,
            status,
            created_at,
            due_at,
            payment_error,
        }
    }
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

/// Why a command was refused.
#[derive(Debug)]
pub(crate) enum Refused {
    Rule(BusinessRuleError),
    NotFound(String),
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
            Self::Rule(rule) => Problem::rule(&rule).into_response(),
            Self::NotFound(id) => Problem::new(
                StatusCode::NOT_FOUND,
                "INVOICE_NOT_FOUND",
                format!("no invoice {id}"),
            )
            .into_response(),
            Self::Failed(error) => internal(&error).into_response(),
        }
    }
}

/// Loads invoice `$id` in transaction `$tx` (either backend).
macro_rules! load {
    ($tx:ident, $id:expr) => {{
        let row: Option<InvoiceRow> = sqlx::query_as(
            "SELECT id, tenant_id, customer_id, customer_name, total_cents, status, created_at, \
             due_at, payment_error FROM invoices WHERE id = $1",
        )
        .bind($id)
        .fetch_optional(&mut *$tx)
        .await?;
        row.map(Invoice::from)
            .ok_or_else(|| Refused::NotFound($id.to_owned()))
    }};
}

/// Writes `$invoice`'s status in transaction `$tx`.
macro_rules! set_status {
    ($tx:ident, $invoice:ident) => {
        sqlx::query("UPDATE invoices SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(&$invoice.status)
            .bind(now_ms())
            .bind(&$invoice.id)
            .execute(&mut *$tx)
            .await?
    };
}

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

    async fn create(&self, command: CreateInvoice) -> Result<Invoice, Refused> {
        if command.lines.is_empty() {
            return Err(Refused::Rule(BusinessRuleError::unprocessable(
                "INVOICE_EMPTY",
                "an invoice needs at least one line",
            )));
        }
        let mut total: i64 = 0;
        for line in &command.lines {
            let amount = (line.quantity > 0 && line.unit_price_cents >= 0)
                .then(|| line.quantity.checked_mul(line.unit_price_cents))
                .flatten()
                .and_then(|amount| total.checked_add(amount));
            total = amount.ok_or_else(|| {
                Refused::Rule(BusinessRuleError::unprocessable(
                    "LINE_INVALID",
                    format!(
                        "line {:?}: quantity must be positive and the amount fit",
                        line.description
                    ),
                ))
            })?;
        }
        let now = now_ms();
        let id = format!("inv-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let due_at = now.saturating_add(command.due_in_days.max(0).saturating_mul(DAY_MS));
        with_db!(&self.db, |db| {
            let mut tx = db.pool.begin().await?;
            let customer: Option<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT c.tenant_id, c.name, t.status FROM customers c \
                 LEFT JOIN tenants t ON t.tenant_id = c.tenant_id WHERE c.customer_id = $1",
            )
            .bind(&command.customer_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((tenant_id, customer_name, tenant_status)) = customer else {
                return Err(Refused::Rule(BusinessRuleError::unprocessable(
                    "CUSTOMER_UNKNOWN",
                    format!("no customer {} in the directory", command.customer_id),
                )));
            };
            tenant_active(&tenant_id, tenant_status.as_deref())?;
            let invoice = Invoice {
                id,
                tenant_id,
                customer_id: command.customer_id.clone(),
                customer_name,
                total_cents: total,
                status: "draft".to_owned(),
                created_at: now,
                due_at,
                payment_error: None,
            };
            sqlx::query(
                "INSERT INTO invoices (id, tenant_id, customer_id, customer_name, total_cents, \
                 status, created_at, due_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&invoice.id)
            .bind(&invoice.tenant_id)
            .bind(&invoice.customer_id)
            .bind(&invoice.customer_name)
            .bind(invoice.total_cents)
            .bind(&invoice.status)
            .bind(invoice.created_at)
            .bind(invoice.due_at)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let messages = vec![invoice_event("invoicing.invoice.created", &invoice)?];
            crate::enqueue!("invoicing", db, tx, messages);
            tx.commit().await?;
            Ok(invoice)
        })
    }

    async fn send(&self, id: &str) -> Result<Invoice, Refused> {
        with_db!(&self.db, |db| {
            let mut tx = db.pool.begin().await?;
            let mut invoice = load!(tx, id)?;
            match invoice.status.as_str() {
                "draft" => {}
                "cancelled" => return Err(cancelled(&invoice)),
                _ => {
                    return Err(Refused::Rule(BusinessRuleError::conflict(
                        "INVOICE_ALREADY_SENT",
                        format!("invoice {} is already {}", invoice.id, invoice.status),
                    )));
                }
            }
            let tenant: Option<String> =
                sqlx::query_scalar("SELECT status FROM tenants WHERE tenant_id = $1")
                    .bind(&invoice.tenant_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            tenant_active(&invoice.tenant_id, tenant.as_deref())?;
            "sent".clone_into(&mut invoice.status);
            set_status!(tx, invoice);
            let charge = Charge {
                invoice_id: invoice.id.clone(),
                tenant_id: invoice.tenant_id.clone(),
                customer_id: invoice.customer_id.clone(),
                amount_cents: invoice.total_cents,
            };
            let command = Envelope::builder("payments.charge", "/invoicing")
                .subject(&invoice.id)
                .partition_key(&invoice.id)
                .tenant_id(&invoice.tenant_id)
                .json_data(&charge)?
                .build()?;
            let messages = vec![
                invoice_event("invoicing.invoice.sent", &invoice)?,
                OutboxMessage::command(CHARGE_DESTINATION, command),
            ];
            crate::enqueue!("invoicing", db, tx, messages);
            tx.commit().await?;
            Ok(invoice)
        })
    }

    async fn cancel(&self, id: &str) -> Result<Invoice, Refused> {
        with_db!(&self.db, |db| {
            let mut tx = db.pool.begin().await?;
            let mut invoice = load!(tx, id)?;
            match invoice.status.as_str() {
                "draft" | "sent" | "overdue" => {}
                "cancelled" => return Err(cancelled(&invoice)),
                _ => {
                    return Err(Refused::Rule(BusinessRuleError::conflict(
                        "INVOICE_ALREADY_PAID",
                        format!("invoice {} is paid; refund it instead", invoice.id),
                    )));
                }
            }
            "cancelled".clone_into(&mut invoice.status);
            set_status!(tx, invoice);
            let messages = vec![invoice_event("invoicing.invoice.cancelled", &invoice)?];
            crate::enqueue!("invoicing", db, tx, messages);
            tx.commit().await?;
            Ok(invoice)
        })
    }

    async fn fetch(&self, id: &str) -> Result<Invoice, Refused> {
        with_db!(&self.db, |db| {
            let mut tx = db.pool.begin().await?;
            load!(tx, id)
        })
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

    /// Applies an event of another context: the customer directory's copy, or a payment's
    /// result. Each is recorded in the inbox in the same transaction, so a redelivery is a
    /// no-op.
    async fn on_event(&self, event: &Envelope) -> Result<(), Error> {
        let span = service_span("invoicing", format!("invoicing: apply {}", event.ty()));
        async {
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
                        let status = if ty.ends_with("activated") { "active" } else { "suspended" };
                        sqlx::query(
                            "INSERT INTO tenants (tenant_id, status) VALUES ($1, $2) \
                             ON CONFLICT (tenant_id) DO UPDATE SET status = excluded.status",
                        )
                        .bind(&t.tenant_id)
                        .bind(status)
                        .execute(&mut *tx)
                        .await?;
                    }
                    "payments.payment.succeeded" => {
                        let paid: PaymentResult = event.json_data()?;
                        let mut invoice = match load!(tx, &paid.invoice_id) {
                            Ok(invoice) => invoice,
                            Err(Refused::NotFound(_)) => return Ok(tx.commit().await?),
                            Err(Refused::Failed(e)) => return Err(e),
                            Err(Refused::Rule(rule)) => return Err(Error::Scenario(rule.to_string())),
                        };
                        if invoice.status == "sent" || invoice.status == "overdue" {
                            "paid".clone_into(&mut invoice.status);
                            set_status!(tx, invoice);
                            let messages = vec![invoice_event("invoicing.invoice.paid", &invoice)?];
                            crate::enqueue!("invoicing", db, tx, messages);
                        }
                    }
                    "payments.payment.failed" => {
                        let failed: PaymentResult = event.json_data()?;
                        sqlx::query("UPDATE invoices SET payment_error = $1, updated_at = $2 WHERE id = $3")
                            .bind(failed.reason.as_deref().unwrap_or("declined"))
                            .bind(now_ms())
                            .bind(&failed.invoice_id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    _ => {}
                }
                tx.commit().await?;
                Ok(())
            })
        }
        .instrument(span)
        .await
    }

    /// Marks every sent invoice whose due date has passed as overdue, one transaction (and
    /// one `invoicing.invoice.overdue` event) each.
    pub(crate) async fn sweep_overdue(&self, now: i64) -> Result<usize, Error> {
        let due: Vec<String> = with_db!(&self.db, |db| {
            sqlx::query_scalar("SELECT id FROM invoices WHERE status = 'sent' AND due_at <= $1")
                .bind(now)
                .fetch_all(&db.pool)
                .await?
        });
        let mut marked = 0;
        for id in due {
            let done: Result<bool, Error> = async {
                with_db!(&self.db, |db| {
                    let mut tx = db.pool.begin().await?;
                    let mut invoice = match load!(tx, &id) {
                        Ok(invoice) => invoice,
                        Err(Refused::Failed(e)) => return Err(e),
                        Err(_) => return Ok(false),
                    };
                    // Paid or cancelled since the query above: nothing to do.
                    if invoice.status != "sent" {
                        return Ok(false);
                    }
                    "overdue".clone_into(&mut invoice.status);
                    set_status!(tx, invoice);
                    let messages = vec![invoice_event("invoicing.invoice.overdue", &invoice)?];
                    crate::enqueue!("invoicing", db, tx, messages);
                    tx.commit().await?;
                    Ok(true)
                })
            }
            .await;
            if done? {
                marked += 1;
            }
        }
        Ok(marked)
    }
}

fn tenant_active(tenant_id: &str, status: Option<&str>) -> Result<(), Refused> {
    if status == Some("active") {
        return Ok(());
    }
    Err(Refused::Rule(BusinessRuleError::unprocessable(
        "TENANT_INACTIVE",
        format!(
            "tenant {tenant_id} is {}",
            status.unwrap_or("not activated")
        ),
    )))
}

fn cancelled(invoice: &Invoice) -> Refused {
    Refused::Rule(BusinessRuleError::conflict(
        "INVOICE_CANCELLED",
        format!("invoice {} was cancelled", invoice.id),
    ))
}

fn invoice_event(ty: &str, invoice: &Invoice) -> Result<OutboxMessage, Error> {
    let event = Envelope::builder(ty, "/invoicing")
        .subject(&invoice.id)
        .partition_key(&invoice.id)
        .tenant_id(&invoice.tenant_id)
        .json_data(invoice)?
        .build()?;
    Ok(OutboxMessage::event(INVOICE_TOPIC, event))
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
