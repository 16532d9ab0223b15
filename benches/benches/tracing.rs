//! Per-request cost of the ms-tracing layers, each next to its peer in the same run:
//!
//! - `correlation_id/*`: `CorrelationIdLayer` against tower-http's `SetRequestIdLayer` +
//!   `PropagateRequestIdLayer` (the usual request-ID pair), with an incoming ID and without one;
//! - `server_trace/*`: `ServerTraceLayer` against axum-tracing-opentelemetry's `OtelAxumLayer`
//!   on the same axum router, same subscriber and exporter, with a `traceparent` to continue;
//!   and the bare router (floor);
//! - `server_trace_metrics/*`: `ServerTraceLayer` with its RED metrics into a Prometheus
//!   recorder against the same layer with `.metrics(false)`, and the bare router (so the
//!   layer's own cost is `off - floor` and the metrics' is `on - off`);
//! - `tail_sampling/*`: a 5-span trace through `TailSamplingProcessor` (dropped or kept) against
//!   the same pipeline without it.
//!
//! Run: `cargo bench -p ms-benches --bench tracing -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::hint::black_box;

use axum::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderName, Request, Response};
use ms_tracing::tail_sampling::{TailSampling, TailSamplingProcessor};
use ms_tracing::{CorrelationIdLayer, ServerTraceLayer};
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    SdkTracerProvider, SimpleSpanProcessor, SpanData, SpanExporter, SpanProcessor,
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt as _};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing_subscriber::layer::SubscriberExt as _;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
}

/// An exporter that receives spans and lets them go: what is measured is the pipeline in front
/// of it, not an exporter's I/O.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

fn request(id: Option<&'static str>) -> Request<()> {
    let mut request = Request::get("/orders/7");
    if let Some(id) = id {
        request = request.header(X_REQUEST_ID, id);
    }
    request.body(()).expect("request")
}

fn correlation_id(c: &mut Criterion) {
    let rt = runtime();
    let inner =
        tower::service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let ours = CorrelationIdLayer::builder()
        .header(X_REQUEST_ID)
        .build()
        .layer(inner);
    let peer = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .service(inner);
    let mut group = c.benchmark_group("correlation_id");
    for (label, id) in [
        ("incoming", Some("0190f7c4-7f3a-7cc2-9d0e-3b1f3e0c2a11")),
        ("generated", None),
    ] {
        group.bench_function(format!("ms_correlation_id_layer/{label}"), |b| {
            b.to_async(&rt).iter(|| {
                let mut service = ours.clone();
                async move { black_box(service.ready().await.unwrap().call(request(id)).await) }
            });
        });
        group.bench_function(
            format!("tower_http_set_and_propagate_request_id/{label}"),
            |b| {
                b.to_async(&rt).iter(|| {
                    let mut service = peer.clone();
                    async move { black_box(service.ready().await.unwrap().call(request(id)).await) }
                });
            },
        );
    }
    group.finish();
}

fn traced_dispatch(provider: &SdkTracerProvider) -> tracing::Dispatch {
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench")));
    tracing::Dispatch::new(subscriber)
}

async fn get(app: &axum::Router) {
    let request = Request::get("/orders/7")
        .header("traceparent", TRACEPARENT)
        .body(Body::empty())
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    // Dropping the body ends the server span in both layers.
    black_box(response);
}

fn server_trace(c: &mut Criterion) {
    let rt = runtime();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(SimpleSpanProcessor::new(Discard))
        .build();
    let dispatch = traced_dispatch(&provider);
    // axum-tracing-opentelemetry extracts with the global propagator.
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let route =
        || axum::Router::new().route("/orders/{id}", axum::routing::get(|| async { "order" }));
    // The peer records no metrics; neither does ours here (see `server_trace_metrics`).
    let ours = route().layer(ServerTraceLayer::new().metrics(false));
    let peer = route().layer(axum_tracing_opentelemetry::middleware::OtelAxumLayer::default());
    let bare = route();
    let _guard = tracing::dispatcher::set_default(&dispatch);
    let mut group = c.benchmark_group("server_trace");
    group.bench_function("ms_server_trace_layer", |b| {
        b.to_async(&rt).iter(|| get(&ours));
    });
    group.bench_function("axum_tracing_opentelemetry_layer", |b| {
        b.to_async(&rt).iter(|| get(&peer));
    });
    group.bench_function("bare_router_floor", |b| b.to_async(&rt).iter(|| get(&bare)));
    group.finish();
}

fn server_trace_metrics(c: &mut Criterion) {
    let rt = runtime();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(SimpleSpanProcessor::new(Discard))
        .build();
    let dispatch = traced_dispatch(&provider);
    // What a service installs to serve `/metrics`; the histograms get buckets, as there.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
        .expect("buckets")
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder of this bench");
    let plain =
        || axum::Router::new().route("/orders/{id}", axum::routing::get(|| async { "order" }));
    let with_metrics = plain().layer(ServerTraceLayer::new());
    let without = plain().layer(ServerTraceLayer::new().metrics(false));
    let bare = plain();
    let _guard = tracing::dispatcher::set_default(&dispatch);
    let mut group = c.benchmark_group("server_trace_metrics");
    group.bench_function("metrics_on", |b| {
        b.to_async(&rt).iter(|| get(&with_metrics));
    });
    group.bench_function("metrics_off", |b| b.to_async(&rt).iter(|| get(&without)));
    group.bench_function("bare_router_floor", |b| b.to_async(&rt).iter(|| get(&bare)));
    group.finish();
    // The samples really went somewhere.
    assert!(handle.render().contains("http_server_request_duration"));
}

/// One trace of five spans: a root and four children.
fn five_span_trace(provider: &SdkTracerProvider) {
    let tracer = provider.tracer("bench");
    let root = tracer.start("root");
    let cx = opentelemetry::Context::new().with_span(root);
    for _ in 0..4 {
        tracer.start_with_context("child", &cx).end();
    }
    cx.span().end();
}

fn provider_with<P: SpanProcessor + 'static>(processor: P) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_span_processor(processor)
        .build()
}

fn tail_sampling(c: &mut Criterion) {
    let mut group = c.benchmark_group("tail_sampling");
    group.throughput(criterion::Throughput::Elements(5));
    let without = provider_with(SimpleSpanProcessor::new(Discard));
    let dropped = provider_with(TailSamplingProcessor::new(
        TailSampling::errors_only(),
        SimpleSpanProcessor::new(Discard),
    ));
    let kept = provider_with(TailSamplingProcessor::new(
        TailSampling::builder().ratio(1.0).build(),
        SimpleSpanProcessor::new(Discard),
    ));
    let kept_no_cache = provider_with(TailSamplingProcessor::new(
        TailSampling::builder().ratio(1.0).decision_cache(0).build(),
        SimpleSpanProcessor::new(Discard),
    ));
    group.bench_function("tail_sampling_trace_kept_no_decision_cache", |b| {
        b.iter(|| five_span_trace(&kept_no_cache));
    });
    group.bench_function("without_tail_sampling_all_exported", |b| {
        b.iter(|| five_span_trace(&without));
    });
    group.bench_function("tail_sampling_trace_dropped", |b| {
        b.iter(|| five_span_trace(&dropped));
    });
    group.bench_function("tail_sampling_trace_kept", |b| {
        b.iter(|| five_span_trace(&kept));
    });
    group.finish();
}

criterion_group!(
    benches,
    correlation_id,
    server_trace,
    server_trace_metrics,
    tail_sampling
);
criterion_main!(benches);
