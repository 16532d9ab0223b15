//! The NATS connection check against real servers: the shared one, and a private one the test
//! kills and restarts.
#![cfg(feature = "nats")]

use std::time::Duration;

use ms_health::checks::NatsCheck;
use ms_health::{Check, CheckOptions, HealthRegistry, Status};

/// How long the client waits between reconnect attempts: short, so the test does not wait
/// on async-nats' default backoff (which grows to seconds).
const RECONNECT_DELAY: Duration = Duration::from_millis(50);
/// How long the check may take to turn once the server state changed.
const SETTLE: Duration = Duration::from_secs(15);

/// How long one run may take: while the client reconnects, `flush` and requests wait for the
/// new connection, so a run that started just before the server died hangs until this timeout.
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// Probes readiness until it reports `status`; returns the NATS check's output.
async fn until_status(registry: &HealthRegistry, status: Status) -> String {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let report = registry.readiness().await;
        let output = report.checks["nats:responseTime"][0]
            .output
            .clone()
            .unwrap_or_default();
        if report.status == status {
            return output;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {:?} ({output}) after {SETTLE:?}, expected {status:?}",
            report.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn check_passes_against_the_shared_server_with_a_round_trip_time() {
    let Some(nats) = ms_testkit::nats().await else {
        return;
    };
    let check = NatsCheck::new(nats.client().await);

    let result = check.check().await;

    assert_eq!(result.status(), Status::Pass, "{:?}", result.output());
    assert_eq!(result.observed_unit(), Some("ms"));
    assert!(
        result
            .observed_value()
            .and_then(serde_json::Value::as_f64)
            .unwrap()
            > 0.0
    );
}

#[tokio::test]
async fn check_fails_while_the_server_is_down_and_recovers_after_restart() {
    let mut server = match ms_testkit::NatsServer::start().await {
        Ok(server) => server,
        Err(e) if !ms_testkit::require_services() => {
            eprintln!(
                "SKIPPED check_fails_while_the_server_is_down_and_recovers_after_restart: {e}"
            );
            return;
        }
        Err(e) => panic!("starting a private nats-server: {e}"),
    };
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_attempts| RECONNECT_DELAY)
        .connect(server.url())
        .await
        .unwrap();
    let registry = HealthRegistry::builder()
        .register(
            "nats",
            NatsCheck::new(client),
            CheckOptions::readiness()
                .timeout(CHECK_TIMEOUT)
                .cache_ttl(Duration::ZERO),
        )
        .build()
        .unwrap();
    assert_eq!(registry.readiness().await.status, Status::Pass);

    server.kill().await.unwrap();
    let output = until_status(&registry, Status::Fail).await;
    assert!(
        output == "NATS connection is disconnected" || output == "check timed out after 500ms",
        "{output}"
    );

    server.restart().await.unwrap();
    let output = until_status(&registry, Status::Pass).await;
    assert_eq!(output, "");
}
