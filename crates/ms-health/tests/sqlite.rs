//! The sqlx SQLite pool check.
#![cfg(feature = "sqlite")]

use ms_health::checks::SqlitePoolCheck;
use ms_health::{Check, HealthRegistry, Status};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

#[tokio::test]
async fn pool_check_passes_on_an_in_memory_database() {
    let pool = SqlitePoolOptions::new()
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let registry = HealthRegistry::builder()
        .readiness("sqlite", SqlitePoolCheck::new(pool))
        .build()
        .unwrap();

    let report = registry.readiness().await;

    assert_eq!(report.status, Status::Pass, "{report:?}");
    assert_eq!(
        report.checks["sqlite:responseTime"][0]
            .observed_unit
            .as_deref(),
        Some("ms")
    );
}

#[tokio::test]
async fn pool_check_passes_on_a_temp_file_database_and_fails_once_closed() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("health.db"))
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .unwrap();
    let check = SqlitePoolCheck::new(pool.clone());
    assert_eq!(check.check().await.status(), Status::Pass);

    pool.close().await;

    let result = check.check().await;
    assert_eq!(result.status(), Status::Fail);
    assert_eq!(result.output(), Some("SQLite pool is closed"));
}
