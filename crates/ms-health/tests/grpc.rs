//! The registry drives `tonic-health` serving status.
#![cfg(feature = "tonic")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ms_health::{CheckOptions, CheckResult, GrpcHealthReporter, HealthRegistry, check_fn};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::server::{HealthReporter, HealthService};

const SERVICE: &str = "shop.v1.Orders";
const POLL: Duration = Duration::from_millis(10);

/// The status of `name`, `None` while the reporter task has not registered it yet.
async fn serving_status(service: &HealthService, name: &str) -> Option<ServingStatus> {
    let request = tonic::Request::new(HealthCheckRequest {
        service: name.into(),
    });
    match service.check(request).await {
        Ok(response) => Some(ServingStatus::try_from(response.into_inner().status).unwrap()),
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => panic!("health check call failed: {status}"),
    }
}

/// Polls until `name` reports `expected`, for at most a second (a hundred poll intervals).
async fn wait_for(service: &HealthService, name: &str, expected: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let status = serving_status(service, name).await;
        if status == Some(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name:?} stayed {status:?}, expected {expected:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn registry(healthy: &Arc<AtomicBool>) -> HealthRegistry {
    let healthy = Arc::clone(healthy);
    HealthRegistry::builder()
        .register(
            "db",
            check_fn(move || {
                let healthy = healthy.load(Ordering::SeqCst);
                async move {
                    if healthy {
                        CheckResult::pass()
                    } else {
                        CheckResult::fail("refused")
                    }
                }
            }),
            CheckOptions::readiness().cache_ttl(Duration::ZERO),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn serving_status_follows_readiness() {
    let healthy = Arc::new(AtomicBool::new(true));
    let registry = registry(&healthy);
    let reporter = HealthReporter::new();
    let service = HealthService::from_health_reporter(reporter.clone());
    let _task = GrpcHealthReporter::new(registry, reporter)
        .service(SERVICE)
        .interval(POLL)
        .spawn();

    wait_for(&service, SERVICE, ServingStatus::Serving).await;
    wait_for(&service, "", ServingStatus::Serving).await;

    healthy.store(false, Ordering::SeqCst);
    wait_for(&service, SERVICE, ServingStatus::NotServing).await;
    wait_for(&service, "", ServingStatus::NotServing).await;

    healthy.store(true, Ordering::SeqCst);
    wait_for(&service, SERVICE, ServingStatus::Serving).await;
}

#[tokio::test]
async fn shutdown_sets_not_serving_at_once_and_ends_the_task() {
    let healthy = Arc::new(AtomicBool::new(true));
    let registry = registry(&healthy);
    let reporter = HealthReporter::new();
    let service = HealthService::from_health_reporter(reporter.clone());
    // A poll interval far longer than the test: only the shutdown signal can explain a change.
    let task = GrpcHealthReporter::new(registry.clone(), reporter)
        .service(SERVICE)
        .interval(Duration::from_secs(3600))
        .spawn();
    wait_for(&service, SERVICE, ServingStatus::Serving).await;

    registry.begin_shutdown();

    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the reporter did not stop on shutdown")
        .unwrap();
    assert_eq!(
        serving_status(&service, SERVICE).await,
        Some(ServingStatus::NotServing)
    );
    assert_eq!(
        serving_status(&service, "").await,
        Some(ServingStatus::NotServing)
    );
}
