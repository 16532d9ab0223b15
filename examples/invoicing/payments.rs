//! The payments service: takes `payments.charge` commands (effectively once, through the
//! inbox), settles them, and emits `payments.payment.succeeded` / `.failed` through its own
//! outbox; serves `payments.v1.Payments/GetPaymentSummary` and gRPC health over tonic.

use std::net::SocketAddr;
use std::sync::Arc;

use ms_bus::consumer::{Consumer, ConsumerHandle, Message, Reject};
use ms_bus::{Envelope, Subscription};
use ms_health::{GrpcHealthReporter, HealthRegistry};
use ms_outbox::OutboxMessage;
use ms_tracing::ServerTraceLayer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::bus::SharedBus;
use crate::db::{Db, with_db};
use crate::grpc::payments_server::{Payments as PaymentsApi, PaymentsServer};
use crate::grpc::{GetPaymentSummaryRequest, PaymentSummary};
use crate::invoicing_service::{CHARGE_DESTINATION, Charge, PAYMENT_TOPIC, PaymentResult};
use crate::{Error, now_ms, service_span};

/// Charges above this many cents are declined (the toy's card limit).
pub const CARD_LIMIT_CENTS: i64 = 500_000;

pub(crate) const DDL: &[&str] = &["CREATE TABLE IF NOT EXISTS payments (
    payment_id TEXT PRIMARY KEY, invoice_id TEXT NOT NULL, tenant_id TEXT NOT NULL,
    amount_cents BIGINT NOT NULL, status TEXT NOT NULL, reason TEXT, created_at BIGINT NOT NULL)"];

/// The payments service's state.
#[derive(Debug)]
pub(crate) struct Payments {
    db: Db,
}

/// The running parts of payments, which `--chaos` stops and starts again.
pub(crate) struct Running {
    consumer: ConsumerHandle,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    stop_grpc: oneshot::Sender<()>,
    health: JoinHandle<()>,
}

impl Payments {
    pub(crate) fn new(db: Db) -> Arc<Self> {
        Arc::new(Self { db })
    }

    /// Starts the charge consumer and the gRPC server on `grpc_addr` (a port given by the
    /// first start is reused by the next).
    pub(crate) async fn start(
        self: &Arc<Self>,
        bus: &SharedBus,
        grpc_listener: TcpListener,
        registry: &HealthRegistry,
    ) -> Result<Running, Error> {
        let service = self.clone();
        let handler = tower::service_fn(move |message: Message| {
            let service = service.clone();
            async move { service.charge(message.envelope()).await }
        });
        let consumer = Consumer::new(Subscription::commands(CHARGE_DESTINATION)?)
            .serve(bus, handler)
            .await?;

        let reporter = tonic_health::server::HealthReporter::new();
        let health_service =
            tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let health = GrpcHealthReporter::new(registry.clone(), reporter)
            .named_service::<PaymentsServer<Api>>()
            .spawn();
        let (stop_grpc, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .layer(ServerTraceLayer::new())
            .add_service(tonic_health::pb::health_server::HealthServer::new(
                health_service,
            ))
            .add_service(PaymentsServer::new(Api(self.clone())));
        let incoming = TcpIncoming::from(grpc_listener);
        let grpc = tokio::spawn(server.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));
        Ok(Running {
            consumer,
            grpc,
            stop_grpc,
            health,
        })
    }

    /// Handles one charge command: record it in the inbox, settle it, and write the payment
    /// and its event in the same transaction.
    async fn charge(&self, command: &Envelope) -> Result<(), ms_bus::BoxError> {
        // Not a charge: no retry can fix it, so it goes to the dead letter at once.
        let charge: Charge = command
            .json_data()
            .map_err(|e| Reject::new(format!("not a charge: {e}")))?;
        let span = service_span(
            "payments",
            format!("payments: charge {}", charge.invoice_id),
        );
        self.settle(command, &charge)
            .instrument(span)
            .await
            // A database or outbox failure is worth retrying; the runtime does, with backoff.
            .map_err(Into::into)
    }

    async fn settle(&self, command: &Envelope, charge: &Charge) -> Result<(), Error> {
        let (status, reason) = if charge.amount_cents > CARD_LIMIT_CENTS {
            (
                "failed",
                Some(format!(
                    "CARD_LIMIT_EXCEEDED: {} cents is above the card limit",
                    charge.amount_cents
                )),
            )
        } else {
            ("succeeded", None)
        };
        let result = PaymentResult {
            payment_id: format!("pay-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
            invoice_id: charge.invoice_id.clone(),
            tenant_id: charge.tenant_id.clone(),
            amount_cents: charge.amount_cents,
            reason,
            attempt: charge.attempt,
        };
        let event = Envelope::builder(format!("payments.payment.{status}"), "/payments")
            .subject(&result.invoice_id)
            .partition_key(&result.invoice_id)
            .tenant_id(&result.tenant_id)
            .json_data(&result)?
            .build()?;
        with_db!(&self.db, |db| {
            let mut tx = db.pool.begin().await?;
            if !db.inbox.record(&mut *tx, "payments", command).await? {
                return Ok(());
            }
            sqlx::query(
                "INSERT INTO payments (payment_id, invoice_id, tenant_id, amount_cents, status, \
                 reason, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&result.payment_id)
            .bind(&result.invoice_id)
            .bind(&result.tenant_id)
            .bind(result.amount_cents)
            .bind(status)
            .bind(&result.reason)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            let messages = vec![OutboxMessage::event(PAYMENT_TOPIC, event)];
            crate::enqueue!("payments", db, tx, messages);
            tx.commit().await?;
            Ok(())
        })
    }

    async fn summary(&self, tenant: &str) -> Result<PaymentSummary, Error> {
        let rows: Vec<(String, i64, i64)> = with_db!(&self.db, |db| {
            sqlx::query_as(
                "SELECT status, COUNT(*), CAST(COALESCE(SUM(amount_cents), 0) AS BIGINT) \
                 FROM payments WHERE ($1 = '' OR tenant_id = $2) GROUP BY status",
            )
            .bind(tenant)
            .bind(tenant)
            .fetch_all(&db.pool)
            .await?
        });
        let mut summary = PaymentSummary::default();
        for (status, count, cents) in rows {
            if status == "succeeded" {
                summary.succeeded_count = count;
                summary.succeeded_cents = cents;
            } else {
                summary.failed_count = count;
                summary.failed_cents = cents;
            }
        }
        Ok(summary)
    }
}

impl Running {
    /// Stops the gRPC server and the consumer (in-flight charges finish first).
    pub(crate) async fn stop(self) -> Result<(), Error> {
        let _ = self.stop_grpc.send(());
        self.health.abort();
        let served = self.grpc.await.map_err(|e| Error::Config(e.to_string()))?;
        served.map_err(|e| Error::Config(format!("payments gRPC server: {e}")))?;
        self.consumer.shutdown().await?;
        Ok(())
    }
}

/// The gRPC API.
#[derive(Debug, Clone)]
pub(crate) struct Api(Arc<Payments>);

#[tonic::async_trait]
impl PaymentsApi for Api {
    async fn get_payment_summary(
        &self,
        request: Request<GetPaymentSummaryRequest>,
    ) -> Result<Response<PaymentSummary>, Status> {
        let tenant = request.into_inner().tenant_id;
        let span = service_span("payments", "payments: GetPaymentSummary");
        match self.0.summary(&tenant).instrument(span).await {
            Ok(summary) => Ok(Response::new(summary)),
            Err(error) => {
                tracing::error!(%error, "payment summary failed");
                Err(Status::unavailable("payments database unavailable"))
            }
        }
    }
}

/// The address a listener is bound to.
pub(crate) fn local(listener: &TcpListener) -> Result<SocketAddr, Error> {
    Ok(listener.local_addr()?)
}
