//! The axum router serving `/healthz` (liveness), `/readyz` (readiness) and `/startupz`
//! (startup): 200 for `pass` and `warn`, 503 for `fail`, `application/health+json` bodies.
//!
//! Query parameters behave like kube-apiserver's: `?verbose` asks for the per-check details
//! (shown only if the registry's [`Details`] setting allows), `?exclude=name` (repeatable) skips
//! a check.
//!
//! ```
//! use axum::body::Body;
//! use axum::http::{Request, StatusCode};
//! use ms_health::{check_fn, CheckResult, Details, HealthRegistry};
//! use tower::ServiceExt as _;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = HealthRegistry::builder()
//!     .readiness("db", check_fn(|| async { CheckResult::fail("connection refused") }))
//!     .details(Details::OnRequest)
//!     .build()?;
//! let app: axum::Router = ms_health::router(registry);
//!
//! let response = app.clone().oneshot(Request::get("/readyz").body(Body::empty())?).await?;
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(response.headers()["content-type"], "application/health+json");
//!
//! let response = app.oneshot(Request::get("/readyz?exclude=db").body(Body::empty())?).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::probe::Probe;
use crate::registry::HealthRegistry;
use crate::report::{Details, HEALTH_JSON_CONTENT_TYPE, HealthReport};

/// The path of the liveness probe.
pub const LIVENESS_PATH: &str = "/healthz";
/// The path of the readiness probe.
pub const READINESS_PATH: &str = "/readyz";
/// The path of the startup probe.
pub const STARTUP_PATH: &str = "/startupz";

/// A router serving the three probes of `registry` at [`LIVENESS_PATH`], [`READINESS_PATH`]
/// and [`STARTUP_PATH`]. It carries its own state, so it merges into a router of any state
/// type: `app.merge(ms_health::router(registry))`.
pub fn router<S>(registry: HealthRegistry) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route(LIVENESS_PATH, get(liveness))
        .route(READINESS_PATH, get(readiness))
        .route(STARTUP_PATH, get(startup))
        .with_state(registry)
}

type Params = Query<Vec<(String, String)>>;

async fn liveness(State(registry): State<HealthRegistry>, Query(params): Params) -> Response {
    probe(&registry, Probe::Liveness, &params).await
}

async fn readiness(State(registry): State<HealthRegistry>, Query(params): Params) -> Response {
    probe(&registry, Probe::Readiness, &params).await
}

async fn startup(State(registry): State<HealthRegistry>, Query(params): Params) -> Response {
    probe(&registry, Probe::Startup, &params).await
}

async fn probe(registry: &HealthRegistry, probe: Probe, params: &[(String, String)]) -> Response {
    // kube-apiserver treats the mere presence of `verbose` as a request for details.
    let verbose = params.iter().any(|(k, _)| k == "verbose");
    let exclude: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "exclude")
        .map(|(_, v)| v.as_str())
        .collect();
    let report = registry.evaluate(probe, &exclude).await;
    render(report, registry.details(), verbose)
}

fn render(report: HealthReport, details: Details, verbose: bool) -> Response {
    let status = if report.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let report = if details.shown(verbose) {
        report
    } else {
        report.without_details()
    };
    let body = match serde_json::to_vec(&report) {
        Ok(body) => body,
        // Only a non-string map key could make serialization fail, and reports have none; still,
        // a probe must answer, and the status code alone carries the verdict.
        Err(_) => format!(r#"{{"status":"{}"}}"#, report.status).into_bytes(),
    };
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(HEALTH_JSON_CONTENT_TYPE),
            ),
            // A cached probe answer is a wrong probe answer.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}
