//! The test service of the W3C Trace Context validation suite (`w3c/trace-context`, folder
//! `test/`), built as a new user would build a service on ms-tracing: axum with
//! `ServerTraceLayer` and `CorrelationIdLayer`, a hyper-util client in `ClientTraceLayer`, and
//! `ms_tracing::init`.
//!
//! The suite POSTs a JSON array of `{"url": …, "arguments": […]}` to `/test`; for each element
//! the service POSTs `arguments` to `url`, and the suite checks the trace headers of that call.
//!
//! ```sh
//! cargo run -p ms-tracing --features axum --example w3c_service -- 127.0.0.1:5000
//! # in the suite's test/ folder (it needs aiohttp from PyPI):
//! STRICT_LEVEL=2 SPEC_LEVEL=2 python test.py http://127.0.0.1:5000/test
//! ```
//!
//! The crate's own tests (`tests/w3c_suite.rs`) carry every case of the suite, so CI does not
//! need the suite's code.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ms_tracing::client::ClientTraceService;
use ms_tracing::{ClientTraceLayer, CorrelationIdLayer, ServerTraceLayer};
use tower::{Layer as _, ServiceExt as _};

type HttpClient = ClientTraceService<Client<HttpConnector, Full<Bytes>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _tracing = ms_tracing::init("w3c-test-service")?;
    let address: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5000".to_owned())
        .parse()?;
    let client: HttpClient =
        ClientTraceLayer::new().layer(Client::builder(TokioExecutor::new()).build_http());
    let app = Router::new()
        .route(
            "/test",
            post(move |body: Bytes| call_back(client.clone(), body)),
        )
        .layer(ServerTraceLayer::new())
        .layer(CorrelationIdLayer::new());
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(%address, "w3c test service listening");
    axum::serve(listener, app).await?;
    Ok(())
}

/// POSTs each action's `arguments` to its `url`, one after the other.
async fn call_back(client: HttpClient, body: Bytes) -> StatusCode {
    let Ok(serde_json::Value::Array(actions)) = serde_json::from_slice(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    for action in actions {
        let Some(url) = action.get("url").and_then(serde_json::Value::as_str) else {
            return StatusCode::BAD_REQUEST;
        };
        let arguments = action
            .get("arguments")
            .cloned()
            .unwrap_or(serde_json::Value::Array(Vec::new()));
        let request = Request::post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(arguments.to_string())));
        let Ok(request) = request else {
            return StatusCode::BAD_REQUEST;
        };
        match client.clone().oneshot(request).await {
            Ok(response) => {
                // Read the answer whole: the client span ends with the body.
                let _ = response.into_body().collect().await;
            }
            Err(error) => {
                tracing::warn!(%error, url, "call back failed");
                return StatusCode::BAD_GATEWAY;
            }
        }
    }
    StatusCode::OK
}
