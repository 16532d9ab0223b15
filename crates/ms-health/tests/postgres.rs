//! The sqlx PostgreSQL pool check against the real server.
#![cfg(feature = "postgres")]

use std::time::Duration;

use ms_health::checks::PgPoolCheck;
use ms_health::{Check, CheckOptions, HealthRegistry, Status};
use sqlx::postgres::PgPoolOptions;

/// A loopback port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn pool_check_passes_against_the_real_server_with_a_response_time() {
    let Some(pg) = ms_testkit::postgres().await else {
        return;
    };
    let registry = HealthRegistry::builder()
        .readiness("postgres", PgPoolCheck::new(pg.pool().await))
        .build()
        .unwrap();

    let report = registry.readiness().await;

    assert_eq!(report.status, Status::Pass, "{report:?}");
    let check = &report.checks["postgres:responseTime"][0];
    assert_eq!(check.component_type.as_deref(), Some("datastore"));
    assert_eq!(check.observed_unit.as_deref(), Some("ms"));
    let millis = check
        .observed_value
        .as_ref()
        .and_then(serde_json::Value::as_f64)
        .unwrap();
    assert!(millis > 0.0 && millis < 5_000.0, "{millis}");
}

#[tokio::test]
async fn pool_check_fails_with_the_sqlx_error_against_a_closed_port() {
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", closed_port());
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&url)
        .unwrap();
    let registry = HealthRegistry::builder()
        .register(
            "postgres",
            PgPoolCheck::new(pool),
            CheckOptions::readiness().timeout(Duration::from_secs(10)),
        )
        .build()
        .unwrap();

    let report = registry.readiness().await;

    assert_eq!(report.status, Status::Fail);
    let output = report.checks["postgres:responseTime"][0]
        .output
        .clone()
        .unwrap();
    // sqlx's own error text, not our timeout: the refused connection is the cause.
    // sqlx retries a refused connection until the pool's acquire timeout, then reports that;
    // with the acquire timeout below the check's, sqlx's error is what the report shows.
    assert_eq!(
        output,
        "pool timed out while waiting for an open connection"
    );
}

#[tokio::test]
async fn pool_check_fails_fast_with_the_server_error_for_a_missing_database() {
    let Some(pg) = ms_testkit::postgres().await else {
        return;
    };
    let mut url = url_without_database(pg.url());
    url.push_str("/ms_health_no_such_database");
    let pool = PgPoolOptions::new().connect_lazy(&url).unwrap();
    let check = PgPoolCheck::new(pool);

    let result = check.check().await;

    assert_eq!(result.status(), Status::Fail);
    let output = result.output().unwrap();
    assert!(
        output.contains("ms_health_no_such_database") && output.contains("does not exist"),
        "{output}"
    );
}

/// `postgres://user@host:port` of a `postgres://user@host:port/database?params` URL.
fn url_without_database(url: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let path_start = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    url[..path_start].to_owned()
}

#[tokio::test]
async fn pool_check_fails_once_the_pool_is_closed() {
    let Some(pg) = ms_testkit::postgres().await else {
        return;
    };
    let pool = pg.pool().await;
    let check = PgPoolCheck::new(pool.clone());
    assert_eq!(check.check().await.status(), Status::Pass);

    pool.close().await;

    let result = check.check().await;
    assert_eq!(result.status(), Status::Fail);
    assert_eq!(result.output(), Some("PostgreSQL pool is closed"));
}

#[tokio::test]
async fn custom_query_errors_are_reported() {
    let Some(pg) = ms_testkit::postgres().await else {
        return;
    };
    let check = PgPoolCheck::new(pg.pool().await).with_query("SELECT 1 FROM no_such_table");

    let result = check.check().await;

    assert_eq!(result.status(), Status::Fail);
    assert!(
        result.output().unwrap().contains("no_such_table"),
        "{:?}",
        result.output()
    );
}
