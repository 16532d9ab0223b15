//! HTTP plumbing the services share: the traced client they call each other with, and
//! `application/problem+json` errors (RFC 9457).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ms_cqrs::BusinessRuleError;
use ms_cqrs::command::{CommandError, PROBLEM_JSON_CONTENT_TYPE, ProblemDetails};
use ms_tracing::ClientTraceLayer;
use ms_tracing::client::ClientTraceService;
use tower::{Layer as _, ServiceExt as _};

use crate::Error;

pub use ms_cqrs::command::PROBLEM_JSON_CONTENT_TYPE as PROBLEM_JSON;

/// How long one service waits for another over HTTP.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A hyper client whose calls carry the current trace context and correlation ID.
pub(crate) type HttpClient = ClientTraceService<Client<HttpConnector, Full<Bytes>>>;

/// A new traced client.
pub(crate) fn client() -> HttpClient {
    let client = Client::builder(TokioExecutor::new()).build_http();
    ClientTraceLayer::new().layer(client)
}

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::Http(format!(
                "{} answered with a body that is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            ))
        })
    }
}

/// Sends `request` and reads the whole answer, within [`CALL_TIMEOUT`].
pub(crate) async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> Result<Reply, Error> {
    let call = async {
        let response = client
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| Error::Http(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Error::Http(e.to_string()))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| Error::Http(format!("no answer within {CALL_TIMEOUT:?}")))?
}

/// A JSON request (`body` `None`: no body).
pub(crate) fn json_request(
    method: Method,
    url: &str,
    body: Option<&serde_json::Value>,
) -> Result<Request<Full<Bytes>>, Error> {
    let mut builder = Request::builder().method(method).uri(url);
    let body = match body {
        Some(json) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(json.to_string())
        }
        None => Bytes::new(),
    };
    builder
        .body(Full::new(body))
        .map_err(|e| Error::Http(e.to_string()))
}

/// A problem details answer (RFC 9457, ms-cqrs's [`ProblemDetails`]) with the code a client
/// branches on.
#[derive(Debug, Clone)]
pub struct Problem(pub ProblemDetails);

impl Problem {
    /// A problem with `status`, `code` and `detail`; its type is `urn:problem:<code>`.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        let ty = format!(
            "urn:problem:{}",
            code.to_ascii_lowercase().replace('_', "-")
        );
        Self(
            ProblemDetails::new(status.as_u16(), detail)
                .problem_type(ty, status.canonical_reason().unwrap_or("Error"))
                .code(code),
        )
    }

    /// A broken business rule, with the status the rule chose (409 or 422).
    pub fn rule(error: &BusinessRuleError) -> Self {
        Self(error.problem())
    }

    /// A command that did not go through (a rule, a conflict, the database).
    pub fn command(error: &CommandError) -> Self {
        if !matches!(error, CommandError::Rule(_) | CommandError::Conflict { .. }) {
            tracing::error!(%error, "command failed");
        }
        Self(error.problem())
    }

    /// The 400 for a body that is not the JSON the route expects.
    pub fn bad_json(rejection: &JsonRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MALFORMED_JSON",
            rejection.body_text(),
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.0)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_JSON_CONTENT_TYPE),
        );
        response
    }
}

/// The answer for an internal failure: logged, and a 500 that says nothing of the internals.
pub(crate) fn internal(error: &Error) -> Problem {
    tracing::error!(%error, "request failed");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        "the request failed; see the service's logs",
    )
}

/// Logs each request once it is answered (target `access`; `RUST_LOG=access=info` shows it).
pub(crate) async fn access_log(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    tracing::info!(
        target: "access",
        %method,
        path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1_000.0,
        correlation_id = ms_tracing::CorrelationId::current().map(|c| c.to_string()),
        "request"
    );
    response
}
