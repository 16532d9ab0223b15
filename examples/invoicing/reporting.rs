//! The reporting service, the query side: a read model of invoices projected from invoicing's
//! and payments' events, listed with filters, sorting and pagination.
//!
//! The projection is ms-cqrs's: two [`ProjectionRunner`]s (one per topic) feed
//! [`InvoiceViewProjection`], whose `apply` is the one function [`apply`]. The runner commits
//! each batch of events with what it has applied (each invoice's last `sequence`, each payment
//! event's id) in one transaction: a redelivered event changes nothing, and an invoice's events
//! are applied in the order they happened even when the bus reorders them.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use ms_bus::{Envelope, Subscriber, Subscription};
use ms_cqrs::{
    ApplyContext, ApplyError, Projection, ProjectionHandle, ProjectionMonitor, ProjectionRunner,
    Store,
};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Sqlite};
use tracing::Instrument as _;

use crate::bus::SharedBus;
use crate::db::{Db, with_db};
use crate::http::{Problem, internal};
use crate::invoicing_service::{INVOICE_TOPIC, Invoice, PAYMENT_TOPIC, PaymentResult};
use crate::{Error, service_span};

/// The largest page a caller may ask for.
pub const MAX_PAGE_SIZE: i64 = 100;
/// The page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: i64 = 20;

pub(crate) const DDL: &[&str] = &["CREATE TABLE IF NOT EXISTS invoice_view (
    invoice_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, customer_id TEXT NOT NULL,
    customer_name TEXT NOT NULL, total_cents BIGINT NOT NULL, status TEXT NOT NULL,
    created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
    payment_attempts BIGINT NOT NULL DEFAULT 0, paid_cents BIGINT NOT NULL DEFAULT 0,
    last_payment_error TEXT, version BIGINT NOT NULL DEFAULT 0)"];

/// Applies one event to the read model, inside the caller's transaction. Events it does not
/// know are ignored (a projection reads the types it cares about).
pub async fn apply<DB>(conn: &mut DB::Connection, event: &Envelope) -> Result<(), Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let at = event.time().map_or_else(crate::now_ms, |t| {
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
    });
    match event.ty() {
        "invoicing.invoice.created"
        | "invoicing.invoice.sent"
        | "invoicing.invoice.paid"
        | "invoicing.invoice.overdue"
        | "invoicing.invoice.cancelled"
        | "invoicing.invoice.payment_failed" => {
            let invoice: Invoice = event.json_data()?;
            // The write side stamps each event with the invoice's version (ms-cqrs's
            // `sequence`), and the runner applies them in that order; the guard keeps the row
            // right even for a projection fed without the runner.
            let version = event
                .extension(ms_cqrs::SEQUENCE_EXTENSION)
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0);
            sqlx::query(
                "INSERT INTO invoice_view (invoice_id, tenant_id, customer_id, customer_name, \
                 total_cents, status, created_at, updated_at, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (invoice_id) DO UPDATE SET tenant_id = excluded.tenant_id, \
                 customer_id = excluded.customer_id, customer_name = excluded.customer_name, \
                 total_cents = excluded.total_cents, status = excluded.status, \
                 created_at = excluded.created_at, updated_at = excluded.updated_at, \
                 version = excluded.version WHERE invoice_view.version < excluded.version",
            )
            .bind(invoice.id)
            .bind(invoice.tenant_id)
            .bind(invoice.customer_id)
            .bind(invoice.customer_name)
            .bind(invoice.total_cents)
            .bind(invoice.status)
            .bind(invoice.created_at)
            .bind(at)
            .bind(version)
            .execute(&mut *conn)
            .await?;
        }
        ty @ ("payments.payment.succeeded" | "payments.payment.failed") => {
            let payment: PaymentResult = event.json_data()?;
            let paid = if ty.ends_with("succeeded") {
                payment.amount_cents
            } else {
                0
            };
            // A payment may be projected before its invoice (they come on different topics):
            // the row starts with what the payment knows and the invoice's events fill it in.
            sqlx::query(
                "INSERT INTO invoice_view (invoice_id, tenant_id, customer_id, customer_name, \
                 total_cents, status, created_at, updated_at, payment_attempts, paid_cents, \
                 last_payment_error) VALUES ($1, $2, '', '', $3, 'unknown', $4, $5, 1, $6, $7) \
                 ON CONFLICT (invoice_id) DO UPDATE SET \
                 payment_attempts = invoice_view.payment_attempts + 1, \
                 paid_cents = invoice_view.paid_cents + excluded.paid_cents, \
                 last_payment_error = COALESCE(excluded.last_payment_error, invoice_view.last_payment_error)",
            )
            .bind(payment.invoice_id)
            .bind(payment.tenant_id)
            .bind(payment.amount_cents)
            .bind(at)
            .bind(at)
            .bind(paid)
            .bind(payment.reason)
            .execute(&mut *conn)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// The read model as an ms-cqrs projection. Its runners' names tell the topics apart: each
/// keeps its own record of what it applied.
#[derive(Debug, Clone, Copy)]
pub struct InvoiceViewProjection {
    name: &'static str,
}

/// The two runners of the projection, on the service's database.
pub(crate) enum Runners {
    Sqlite(Vec<ProjectionHandle<Sqlite, InvoiceViewProjection>>),
    Postgres(Vec<ProjectionHandle<Postgres, InvoiceViewProjection>>),
}

impl Runners {
    /// The runners' status views, for readiness ("caught up").
    pub(crate) fn monitors(&self) -> Vec<ProjectionMonitor> {
        match self {
            Self::Sqlite(runners) => runners.iter().map(ProjectionHandle::monitor).collect(),
            Self::Postgres(runners) => runners.iter().map(ProjectionHandle::monitor).collect(),
        }
    }

    /// Stops reading; each runner commits what it holds.
    pub(crate) async fn shutdown(self) -> Result<(), Error> {
        match self {
            Self::Sqlite(runners) => shutdown_all(runners).await,
            Self::Postgres(runners) => shutdown_all(runners).await,
        }
    }
}

async fn shutdown_all<DB: Store>(
    runners: Vec<ProjectionHandle<DB, InvoiceViewProjection>>,
) -> Result<(), Error>
where
    InvoiceViewProjection: Projection<DB>,
{
    for runner in runners {
        runner
            .shutdown()
            .await
            .map_err(|e| Error::Config(e.to_string()))?;
    }
    Ok(())
}

async fn start_runners<DB: Store>(
    pool: &sqlx::Pool<DB>,
    bus: &SharedBus,
) -> Result<Vec<ProjectionHandle<DB, InvoiceViewProjection>>, Error>
where
    InvoiceViewProjection: Projection<DB>,
{
    let subscriber: Arc<dyn Subscriber> = bus.clone();
    let mut runners = Vec::new();
    for (name, topic) in [
        ("invoice_view.invoices", INVOICE_TOPIC),
        ("invoice_view.payments", PAYMENT_TOPIC),
    ] {
        let runner = ProjectionRunner::from_bus(
            pool.clone(),
            InvoiceViewProjection { name },
            subscriber.clone(),
            Subscription::events(topic, "reporting")?,
        )
        // Invoices are independent: two lanes apply them in parallel, each in order.
        .segments(2)
        .batch_size(64)
        .start()
        .await
        .map_err(|e| Error::Config(format!("starting the {name} projection: {e}")))?;
        runners.push(runner);
    }
    Ok(runners)
}

/// Maps the example's errors onto the runner's policy: data that does not fit is permanent
/// (parked with its reason), the rest is retried.
fn apply_error(error: Error) -> ApplyError {
    match error {
        Error::Database(e) => ApplyError::transient(e),
        other => ApplyError::permanent(other.to_string()),
    }
}

macro_rules! projection_on {
    ($db:ty, $conn:ty) => {
        impl Projection<$db> for InvoiceViewProjection {
            fn name(&self) -> &str {
                self.name
            }

            fn event_types(&self) -> &[&str] {
                &["invoicing.invoice.*", "payments.payment.*"]
            }

            async fn setup(&self, conn: &mut $conn, _: &ApplyContext) -> Result<(), ApplyError> {
                for ddl in DDL {
                    sqlx::raw_sql(*ddl).execute(&mut *conn).await?;
                }
                Ok(())
            }

            async fn apply(
                &self,
                conn: &mut $conn,
                event: &Envelope,
                _: &ApplyContext,
            ) -> Result<(), ApplyError> {
                let span = service_span("reporting", format!("reporting: project {}", event.ty()));
                apply::<$db>(conn, event)
                    .instrument(span)
                    .await
                    .map_err(apply_error)
            }
        }
    };
}

projection_on!(Sqlite, sqlx::SqliteConnection);
projection_on!(Postgres, sqlx::PgConnection);

/// The reporting service's state.
#[derive(Debug)]
pub(crate) struct Reporting {
    db: Db,
}

/// `GET /v1/invoices` parameters.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListQuery {
    /// Only invoices in this status.
    pub status: Option<String>,
    /// Only this customer's invoices.
    pub customer_id: Option<String>,
    /// `created_at`, `total_cents`, `customer_name` or `status`, `-` in front for descending
    /// (default `-created_at`).
    pub sort: Option<String>,
    /// At most this many (default [`DEFAULT_PAGE_SIZE`], at most [`MAX_PAGE_SIZE`]).
    pub limit: Option<i64>,
    /// Skip this many (the previous page's `next_offset`).
    pub offset: Option<i64>,
}

/// One row of the read model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InvoiceView {
    /// The invoice.
    pub invoice_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its customer.
    pub customer_id: String,
    /// The customer's name.
    pub customer_name: String,
    /// The total, in cents.
    pub total_cents: i64,
    /// The invoice's status as last projected.
    pub status: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// How many charges were attempted.
    pub payment_attempts: i64,
    /// How much was collected, in cents.
    pub paid_cents: i64,
    /// Why the last charge failed.
    pub last_payment_error: Option<String>,
}

type ViewRow = (
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    i64,
    i64,
    Option<String>,
);

impl Reporting {
    pub(crate) fn new(db: Db) -> Arc<Self> {
        Arc::new(Self { db })
    }

    pub(crate) fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/invoices", get(list))
            .route("/v1/summary", get(summary))
            .with_state(self.clone())
    }

    /// Starts the projection's runners: one per topic, as consumer group `reporting`.
    pub(crate) async fn start(self: &Arc<Self>, bus: &SharedBus) -> Result<Runners, Error> {
        Ok(match &self.db {
            Db::Sqlite(db) => Runners::Sqlite(start_runners(&db.pool, bus).await?),
            Db::Postgres(db) => Runners::Postgres(start_runners(&db.pool, bus).await?),
        })
    }

    async fn list(&self, query: &ListQuery) -> Result<serde_json::Value, Problem> {
        let (column, descending) = match query.sort.as_deref().unwrap_or("-created_at") {
            s if s.starts_with('-') => (&s[1..], true),
            s => (s, false),
        };
        // Sorting by a column the caller names: only these, so nothing of theirs reaches SQL.
        let column = match column {
            "created_at" | "total_cents" | "customer_name" | "status" => column,
            other => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_SORT",
                    format!(
                        "cannot sort by {other:?}; use created_at, total_cents, customer_name or status"
                    ),
                ));
            }
        };
        let limit = query
            .limit
            .unwrap_or(DEFAULT_PAGE_SIZE)
            .clamp(1, MAX_PAGE_SIZE);
        let offset = query.offset.unwrap_or(0).max(0);
        let status = query.status.clone().unwrap_or_default();
        let customer = query.customer_id.clone().unwrap_or_default();
        let order = if descending { "DESC" } else { "ASC" };
        let filter = "WHERE ($1 = '' OR status = $2) AND ($3 = '' OR customer_id = $4)";
        let sql = format!(
            "SELECT invoice_id, tenant_id, customer_id, customer_name, total_cents, status, \
             created_at, payment_attempts, paid_cents, last_payment_error FROM invoice_view \
             {filter} ORDER BY {column} {order}, invoice_id {order} LIMIT $5 OFFSET $6"
        );
        let count_sql = format!("SELECT COUNT(*) FROM invoice_view {filter}");
        let fetched: Result<(Vec<ViewRow>, i64), sqlx::Error> = with_db!(&self.db, |db| {
            async {
                // Every part of `sql` is ours: the sort column is one of an allow-list, values are bound.
                let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(&status)
                    .bind(&status)
                    .bind(&customer)
                    .bind(&customer)
                    .bind(limit)
                    .bind(offset)
                    .fetch_all(&db.pool)
                    .await?;
                let total = sqlx::query_scalar(sqlx::AssertSqlSafe(count_sql.clone()))
                    .bind(&status)
                    .bind(&status)
                    .bind(&customer)
                    .bind(&customer)
                    .fetch_one(&db.pool)
                    .await?;
                Ok((rows, total))
            }
            .await
        });
        let (rows, total) = fetched.map_err(|e| internal(&e.into()))?;
        let items: Vec<InvoiceView> = rows.into_iter().map(view).collect();
        let next = offset + i64::try_from(items.len()).unwrap_or(0);
        Ok(serde_json::json!({
            "items": items,
            "total": total,
            "next_offset": (next < total).then_some(next),
        }))
    }

    async fn summary(&self) -> Result<serde_json::Value, Error> {
        let rows: Vec<(String, i64, i64, i64)> = with_db!(&self.db, |db| {
            sqlx::query_as(
                "SELECT status, COUNT(*), CAST(COALESCE(SUM(total_cents), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(paid_cents), 0) AS BIGINT) FROM invoice_view \
                 GROUP BY status ORDER BY status",
            )
            .fetch_all(&db.pool)
            .await?
        });
        let mut by_status = serde_json::Map::new();
        let (mut invoices, mut collected) = (0i64, 0i64);
        for (status, count, total, paid) in rows {
            invoices += count;
            collected += paid;
            by_status.insert(
                status,
                serde_json::json!({ "count": count, "total_cents": total }),
            );
        }
        Ok(serde_json::json!({
            "invoices": invoices, "collected_cents": collected, "by_status": by_status,
        }))
    }
}

fn view(row: ViewRow) -> InvoiceView {
    let (
        invoice_id,
        tenant_id,
        customer_id,
        customer_name,
        total_cents,
        status,
        created_at,
        payment_attempts,
        paid_cents,
        last_payment_error,
    ) = row;
    InvoiceView {
        invoice_id,
        tenant_id,
        customer_id,
        customer_name,
        total_cents,
        status,
        created_at,
        payment_attempts,
        paid_cents,
        last_payment_error,
    }
}

async fn list(State(service): State<Arc<Reporting>>, Query(query): Query<ListQuery>) -> Response {
    match service.list(&query).await {
        Ok(page) => Json(page).into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn summary(State(service): State<Arc<Reporting>>) -> Response {
    match service.summary().await {
        Ok(summary) => Json(summary).into_response(),
        Err(error) => internal(&error).into_response(),
    }
}
