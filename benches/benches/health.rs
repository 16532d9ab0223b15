//! Probe latency of `ms-health` when every check result is cached, which is the steady state:
//! the plain async API (`registry.readiness()`) and a full `/readyz` request through the axum
//! router, next to a bare axum route that answers a constant body (the floor).
//!
//! Run: `cargo bench -p ms-benches --bench health -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt as _;
use ms_health::{CheckOptions, CheckResult, Details, HealthRegistry, check_fn};
use tower::ServiceExt as _;

/// Five readiness checks whose results stay cached for the whole run.
const CHECKS: [&str; 5] = ["postgres", "nats", "rabbitmq", "cache", "search"];

fn registry(details: Details) -> HealthRegistry {
    CHECKS
        .iter()
        .fold(HealthRegistry::builder(), |builder, name| {
            builder.register(
                *name,
                check_fn(|| async { CheckResult::pass().with_observed_value(1.25, "ms") }),
                CheckOptions::readiness()
                    .measurement("responseTime")
                    .cache_ttl(Duration::from_secs(3600)),
            )
        })
        .details(details)
        .build()
        .expect("valid registry")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

/// One `GET` through the router, body read to the end, as a probe client would.
async fn get_ok(app: &axum::Router, uri: &str) -> axum::body::Bytes {
    let request = Request::get(uri).body(Body::empty()).expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

fn probes(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("health");

    let plain = registry(Details::Hidden);
    rt.block_on(plain.readiness()); // fill the caches
    group.bench_function("readiness_5_cached_checks", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(plain.readiness().await) });
    });

    for (name, details, uri) in [
        ("readyz_router_oneshot", Details::Hidden, "/readyz"),
        (
            "readyz_router_oneshot_verbose",
            Details::OnRequest,
            "/readyz?verbose",
        ),
    ] {
        let registry = registry(details);
        rt.block_on(registry.readiness());
        let app: axum::Router = ms_health::router(registry);
        group.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(get_ok(&app, uri).await) });
        });
    }

    // The floor, in the same run: a bare axum route answering a constant health+json body,
    // with no registry behind it. What `readyz_router_oneshot` costs above this is ms-health.
    let bare: axum::Router = axum::Router::new().route(
        "/readyz",
        axum::routing::get(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "application/health+json")],
                r#"{"status":"pass"}"#,
            )
        }),
    );
    group.bench_function("baseline_bare_axum_static_body", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(get_ok(&bare, "/readyz").await) });
    });
    group.finish();
}

criterion_group!(benches, probes);
criterion_main!(benches);
