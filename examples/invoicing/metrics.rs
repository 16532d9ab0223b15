//! `GET /metrics` in Prometheus text format: every ms crate records through the `metrics`
//! facade (ms-tracing's RED metrics for HTTP and gRPC, ms-bus's processing and publishing,
//! ms-resilience's breakers), and one Prometheus recorder renders them.
//!
//! The four services share this process, so each one's `/metrics` shows the whole process's
//! registry; as separate deployments each would show its own.

use std::sync::OnceLock;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The path every service serves its metrics on.
pub const METRICS_PATH: &str = "/metrics";

/// Bucket bounds of the duration histograms in seconds (`http.*.request.duration`,
/// `messaging.process.duration`), from 1 ms to 10 s as OpenTelemetry's conventions advise.
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

/// The same bounds in milliseconds, for `rpc.*.duration`.
const MILLISECONDS_BUCKETS: [f64; 14] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1_000.0, 2_500.0, 5_000.0,
    10_000.0,
];

/// The process's Prometheus recorder, installed on first use. `None` when another global
/// recorder was installed first (a test harness's): then `/metrics` says so.
fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Prefix("rpc.".to_owned()), &MILLISECONDS_BUCKETS)
                .and_then(|b| b.set_buckets(&SECONDS_BUCKETS))
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            ms_tracing::metrics::describe();
            Some(handle)
        })
        .as_ref()
}

/// Installs the recorder (if not yet) and returns the `/metrics` route.
pub(crate) fn router() -> Router {
    let handle = handle();
    Router::new().route(
        METRICS_PATH,
        get(move || async move {
            match handle {
                Some(handle) => handle.render(),
                None => "# another metrics recorder is installed in this process\n".to_owned(),
            }
        }),
    )
}
