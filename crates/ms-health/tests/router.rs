//! The axum router: status codes, content type, details policy, `?verbose`, `?exclude=`.
#![cfg(feature = "axum")]

use axum::http::StatusCode;
use ms_health::{
    CheckOptions, CheckResult, Details, HEALTH_JSON_CONTENT_TYPE, HealthRegistry, HealthReport,
    Status, check_fn,
};

mod common;
use common::get;

fn registry(details: Details, db: CheckResult) -> HealthRegistry {
    HealthRegistry::builder()
        .readiness(
            "db",
            check_fn(move || {
                let db = db.clone();
                async move { db }
            }),
        )
        .readiness("cache", check_fn(|| async { CheckResult::pass() }))
        .details(details)
        .build()
        .unwrap()
}

#[tokio::test]
async fn passing_readiness_answers_200_with_health_json() {
    let app = ms_health::router(registry(Details::Hidden, CheckResult::pass()));

    let answer = get(&app, "/readyz").await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type, HEALTH_JSON_CONTENT_TYPE);
    assert_eq!(answer.body, serde_json::json!({ "status": "pass" }));
}

#[tokio::test]
async fn failing_readiness_answers_503() {
    let app = ms_health::router(registry(Details::Hidden, CheckResult::fail("refused")));

    let answer = get(&app, "/readyz").await;

    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.content_type, HEALTH_JSON_CONTENT_TYPE);
    assert_eq!(answer.body["status"], "fail");
}

#[tokio::test]
async fn warn_answers_200() {
    let app = ms_health::router(registry(Details::Hidden, CheckResult::warn("slow")));

    let answer = get(&app, "/readyz").await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["status"], "warn");
}

#[tokio::test]
async fn liveness_and_startup_are_served_at_their_paths() {
    let registry = HealthRegistry::builder()
        .register(
            "db",
            check_fn(|| async { CheckResult::fail("refused") }),
            CheckOptions::readiness(),
        )
        .startup("migrations", ms_health::Latch::new())
        .build()
        .unwrap();
    let app = ms_health::router(registry);

    assert_eq!(get(&app, "/healthz").await.status, StatusCode::OK);
    assert_eq!(
        get(&app, "/startupz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn details_are_hidden_by_default_even_with_verbose() {
    let app = ms_health::router(registry(
        Details::default(),
        CheckResult::fail("10.0.0.7: refused"),
    ));

    let answer = get(&app, "/readyz?verbose").await;

    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body, serde_json::json!({ "status": "fail" }));
}

#[tokio::test]
async fn details_on_request_appear_only_with_verbose() {
    let app = ms_health::router(registry(Details::OnRequest, CheckResult::fail("refused")));

    let terse = get(&app, "/readyz").await;
    assert!(terse.body.get("checks").is_none());

    let verbose = get(&app, "/readyz?verbose").await;
    let report: HealthReport = serde_json::from_value(verbose.body).unwrap();
    assert_eq!(report.status, Status::Fail);
    assert_eq!(report.checks["db"][0].output.as_deref(), Some("refused"));
    assert_eq!(report.checks["cache"][0].status, Status::Pass);

    // Any value counts, as with kube-apiserver.
    let verbose = get(&app, "/readyz?verbose=1").await;
    assert!(verbose.body.get("checks").is_some());
}

#[tokio::test]
async fn details_always_appear_when_configured() {
    let app = ms_health::router(registry(Details::Always, CheckResult::pass()));

    let answer = get(&app, "/readyz").await;

    let checks = answer.body["checks"].as_object().unwrap();
    let db = &checks["db"][0];
    assert_eq!(db["componentId"], "db");
    assert_eq!(db["status"], "pass");
    // RFC 3339 in UTC, as the draft asks.
    let time = db["time"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
}

#[tokio::test]
async fn exclude_skips_a_failing_check_and_repeats() {
    let app = ms_health::router(registry(Details::OnRequest, CheckResult::fail("refused")));

    let answer = get(&app, "/readyz?exclude=db&verbose").await;
    assert_eq!(answer.status, StatusCode::OK);
    let checks = answer.body["checks"].as_object().unwrap();
    assert!(!checks.contains_key("db") && checks.contains_key("cache"));

    let answer = get(&app, "/readyz?exclude=db&exclude=cache&verbose").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.get("checks").is_none());
}

#[tokio::test]
async fn excluding_an_unknown_check_is_noted_in_verbose_output() {
    let app = ms_health::router(registry(Details::OnRequest, CheckResult::pass()));

    let answer = get(&app, "/readyz?exclude=nope&verbose").await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.body["notes"],
        serde_json::json!(["exclude: no readiness check named \"nope\""])
    );
}

#[tokio::test]
async fn undecodable_exclude_names_match_nothing_and_do_not_crash() {
    let app = ms_health::router(registry(Details::OnRequest, CheckResult::fail("refused")));

    // Invalid percent-escapes and bytes that are not UTF-8: decoded leniently, matching no check.
    let answer = get(&app, "/readyz?exclude=%ZZ&exclude=%FF%FE&verbose").await;

    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer.body["notes"].as_array().unwrap().len(),
        2,
        "{}",
        answer.body
    );
}
