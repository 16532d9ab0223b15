//! The public gateway: authenticates (API key or bearer token), rate-limits per client (`429`
//! with `Retry-After`), continues or starts the trace and the correlation ID, logs each
//! request, routes to the services, and serves the web BFF's dashboard.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use ms_resilience::rate_limit::{Quota, RateLimitLayer, too_many_requests};
use ms_resilience::{BoxError, Error as ResilienceError};
use tower::ServiceBuilder;
use tracing::Instrument as _;

use crate::bff::Bff;
use crate::config::Config;
use crate::http::{HttpClient, PROBLEM_JSON, Problem, send};
use crate::service_span;

/// The header carrying an API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// The header telling a backend which client called.
pub const CLIENT_HEADER: &str = "x-client-id";

/// The client a request was authenticated as.
#[derive(Debug, Clone)]
struct ClientId(String);

/// Where the gateway routes.
pub(crate) struct Gateway {
    pub(crate) http: HttpClient,
    pub(crate) invoicing: String,
    pub(crate) reporting: String,
    pub(crate) bff: Arc<Bff>,
}

/// The gateway's public routes, with authentication and the per-client rate limit.
pub(crate) fn router(gateway: Arc<Gateway>, config: &Config) -> Router {
    let credentials: Arc<HashMap<String, String>> = Arc::new(
        config
            .credentials
            .iter()
            .map(|c| (c.secret.clone(), c.client.clone()))
            .collect(),
    );
    let per_second = NonZeroU32::new(config.rate_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(config.rate_burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::per_second(per_second).allow_burst(burst);
    let limit = RateLimitLayer::new(quota, |request: &Request| {
        request
            .extensions()
            .get::<ClientId>()
            .map(|client| client.0.clone())
            .unwrap_or_default()
    });
    Router::new()
        .route("/api/v1/invoices", any(to_invoicing))
        .route("/api/v1/invoices/{*rest}", any(to_invoicing))
        .route("/api/v1/customers", get(to_invoicing))
        .route("/api/v1/reports/invoices", get(to_reporting))
        .route("/api/web/v1/dashboard", get(dashboard))
        .with_state(gateway)
        // Outermost last: authenticate, then count the request against its client's quota.
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(rate_limited))
                .layer(limit),
        )
        .layer(middleware::from_fn_with_state(credentials, authenticate))
}

/// Finds the caller's credential; answers 401 without one.
async fn authenticate(
    State(credentials): State<Arc<HashMap<String, String>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let presented = headers
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    match presented.and_then(|secret| credentials.get(secret.trim())) {
        Some(client) => {
            let client = ClientId(client.clone());
            request.extensions_mut().insert(client);
            next.run(request).await
        }
        None => {
            let mut response = Problem::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                format!("send a valid `{API_KEY_HEADER}` header or `Authorization: Bearer` token"),
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"invoicing\""),
            );
            response
        }
    }
}

/// The rate limiter's refusal as `429` with `Retry-After` and a problem body.
async fn rate_limited(error: BoxError) -> Response {
    match ResilienceError::find(&*error) {
        Some(ResilienceError::RateLimited { retry_after }) => {
            let mut response = too_many_requests::<Body>(*retry_after);
            let problem = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!("too many requests; retry after {retry_after:?}"),
            );
            *response.body_mut() = Body::from(serde_json::to_vec(&problem.0).unwrap_or_default());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
            response
        }
        _ => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            error.to_string(),
        )
        .into_response(),
    }
}

async fn to_invoicing(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let base = gateway.invoicing.clone();
    forward(&gateway, &base, ("/api", ""), "invoicing", request).await
}

async fn to_reporting(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let base = gateway.reporting.clone();
    forward(
        &gateway,
        &base,
        ("/api/v1/reports", "/v1"),
        "reporting",
        request,
    )
    .await
}

/// Sends `request` on to `base`, its path's front `rewrite.0` replaced by `rewrite.1`, with
/// the caller's client id; the traced client adds the trace context and the correlation ID.
async fn forward(
    gateway: &Gateway,
    base: &str,
    rewrite: (&str, &str),
    to: &str,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let client = parts
        .extensions
        .get::<ClientId>()
        .map(|c| c.0.clone())
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let path = path.strip_prefix(rewrite.0).unwrap_or(path);
    let path = format!("{}{path}", rewrite.1);
    let span = service_span(
        "gateway",
        format!("gateway: {} {} → {to}", parts.method, parts.uri.path()),
    );
    async {
        let Ok(body) = axum::body::to_bytes(body, crate::MAX_BODY_BYTES).await else {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BODY_TOO_LARGE",
                "the body is too large",
            )
            .into_response();
        };
        let mut outgoing = http::Request::builder()
            .method(parts.method.clone())
            .uri(format!("{base}{path}"))
            .header(CLIENT_HEADER, client);
        if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
            outgoing = outgoing.header(header::CONTENT_TYPE, content_type);
        }
        let Ok(outgoing) = outgoing.body(Full::new(body)) else {
            return Problem::new(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "the request cannot be forwarded",
            )
            .into_response();
        };
        match send(&gateway.http, outgoing).await {
            Ok(reply) => {
                let mut response = Response::new(Body::from(reply.body));
                *response.status_mut() = reply.status;
                if let Some(content_type) = reply.headers.get(header::CONTENT_TYPE) {
                    response
                        .headers_mut()
                        .insert(header::CONTENT_TYPE, content_type.clone());
                }
                response
            }
            Err(error) => Problem::new(
                StatusCode::BAD_GATEWAY,
                "BACKEND_UNAVAILABLE",
                format!("{to} did not answer: {error}"),
            )
            .into_response(),
        }
    }
    .instrument(span)
    .await
}

async fn dashboard(State(gateway): State<Arc<Gateway>>) -> Response {
    let span = service_span("gateway", "gateway: web BFF dashboard");
    Json(gateway.bff.dashboard().instrument(span).await).into_response()
}
