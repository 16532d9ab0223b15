//! The web BFF behind `GET /api/web/v1/dashboard`: calls invoicing, reporting (REST) and
//! payments (gRPC, through a retry layer and a circuit breaker) in parallel and shapes one
//! response, which is still served, marked `partial`, when a backend is down.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use ms_resilience::BoxError;
use ms_resilience::circuit_breaker::CircuitBreaker;
use ms_resilience::retry::RetryLayer;
use ms_tracing::ClientTraceLayer;
use serde_json::{Value, json};
use tonic::transport::Endpoint;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt as _};

use crate::Error;
use crate::grpc::payments_client::PaymentsClient;
use crate::grpc::{GetPaymentSummaryRequest, PaymentSummary};
use crate::http::{HttpClient, json_request, send};

/// Attempts per payments call (the first included).
pub const PAYMENTS_ATTEMPTS: u32 = 2;
/// The time limit of one attempt.
pub const PAYMENTS_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(800);
/// How long the breaker stays open before it lets a trial call through.
pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(2);

type PaymentsCall = BoxCloneSyncService<GetPaymentSummaryRequest, PaymentSummary, BoxError>;

/// The BFF's clients.
pub(crate) struct Bff {
    http: HttpClient,
    invoicing: String,
    reporting: String,
    payments: PaymentsCall,
    breaker: CircuitBreaker,
}

impl std::fmt::Debug for Bff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bff")
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

impl Bff {
    /// Clients of the backends at these addresses; the gRPC channel connects lazily, so the
    /// BFF starts whether or not payments is up.
    pub(crate) fn new(
        http: HttpClient,
        invoicing: String,
        reporting: String,
        payments_grpc: &str,
    ) -> Result<Arc<Self>, Error> {
        let channel = Endpoint::from_shared(payments_grpc.to_owned())
            .map_err(|e| Error::Config(e.to_string()))?
            .connect_timeout(PAYMENTS_ATTEMPT_TIMEOUT)
            .connect_lazy();
        let client = PaymentsClient::new(
            ServiceBuilder::new()
                .layer(ClientTraceLayer::new())
                .service(channel),
        );
        let breaker = CircuitBreaker::builder()
            .name("payments")
            .minimum_number_of_calls(3)
            .failure_rate_threshold(50.0)
            .open_duration(BREAKER_OPEN_FOR)
            .build();
        // Outermost first: each retry attempt passes the breaker, so an open breaker fails the
        // call at once instead of waiting on a dead backend.
        let payments = ServiceBuilder::new()
            .layer(
                RetryLayer::new()
                    .max_attempts(PAYMENTS_ATTEMPTS)
                    .per_try_timeout(PAYMENTS_ATTEMPT_TIMEOUT),
            )
            .layer(breaker.layer())
            .service_fn(move |request: GetPaymentSummaryRequest| {
                let mut client = client.clone();
                async move {
                    client
                        .get_payment_summary(request)
                        .await
                        .map(tonic::Response::into_inner)
                        // The code and message say enough; the transport's chain of sources
                        // would fill the dashboard.
                        .map_err(|status| {
                            BoxError::from(format!("{:?}: {}", status.code(), status.message()))
                        })
                }
            });
        Ok(Arc::new(Self {
            http,
            invoicing,
            reporting,
            payments: BoxCloneSyncService::new(payments),
            breaker,
        }))
    }

    /// The breaker's state, for the dashboard and the chaos printout.
    pub(crate) fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The dashboard: every part fetched at once; a part that fails is `null` and named in
    /// `unavailable`.
    pub(crate) async fn dashboard(&self) -> Value {
        let invoicing = self.get_json(format!("{}/v1/summary", self.invoicing));
        let reporting = self.get_json(format!("{}/v1/summary", self.reporting));
        let recent = self.get_json(format!(
            "{}/v1/invoices?sort=-created_at&limit=5",
            self.reporting
        ));
        let payments = self
            .payments
            .clone()
            .oneshot(GetPaymentSummaryRequest::default());
        let (invoicing, reporting, recent, payments) =
            tokio::join!(invoicing, reporting, recent, payments);
        let mut unavailable = Vec::new();
        let mut part = |name: &str, result: Result<Value, String>| match result {
            Ok(value) => value,
            Err(error) => {
                unavailable.push(json!({ "backend": name, "error": error }));
                Value::Null
            }
        };
        let invoicing = part("invoicing", invoicing);
        let reporting = part("reporting", reporting);
        let recent = part("reporting", recent);
        let payments = part(
            "payments",
            payments
                .map(|s| {
                    json!({
                        "succeeded_count": s.succeeded_count, "succeeded_cents": s.succeeded_cents,
                        "failed_count": s.failed_count, "failed_cents": s.failed_cents,
                    })
                })
                .map_err(|e| e.to_string()),
        );
        json!({
            "partial": !unavailable.is_empty(),
            "unavailable": unavailable,
            "invoices": invoicing,
            "read_model": reporting,
            "recent": recent.get("items").cloned().unwrap_or(Value::Null),
            "payments": payments,
            "payments_breaker": format!("{:?}", self.breaker.state()),
        })
    }

    async fn get_json(&self, url: String) -> Result<Value, String> {
        let request = json_request(Method::GET, &url, None).map_err(|e| e.to_string())?;
        let reply = send(&self.http, request).await.map_err(|e| e.to_string())?;
        if !reply.status.is_success() {
            return Err(format!("{} answered {}", url, reply.status));
        }
        reply.json().map_err(|e| e.to_string())
    }
}
