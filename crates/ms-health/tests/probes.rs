//! Which checks each probe runs: startup latches, liveness without dependencies, exclusions,
//! and the registry's validation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ms_health::{
    BuildError, CheckOptions, CheckResult, HealthRegistry, Latch, Probe, Status, check_fn,
};

fn counting_pass(runs: &Arc<AtomicUsize>) -> impl ms_health::Check + use<> {
    let runs = Arc::clone(runs);
    check_fn(move || {
        runs.fetch_add(1, Ordering::SeqCst);
        async { CheckResult::pass() }
    })
}

#[tokio::test]
async fn startup_check_runs_until_it_passes_then_never_again() {
    let runs = Arc::new(AtomicUsize::new(0));
    let healthy = Arc::new(AtomicBool::new(false));
    let (counter, flag) = (Arc::clone(&runs), Arc::clone(&healthy));
    let registry = HealthRegistry::builder()
        .register(
            "warm-up",
            check_fn(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let healthy = flag.load(Ordering::SeqCst);
                async move {
                    if healthy {
                        CheckResult::pass()
                    } else {
                        CheckResult::fail("cold")
                    }
                }
            }),
            CheckOptions::startup().cache_ttl(std::time::Duration::ZERO),
        )
        .build()
        .unwrap();

    assert_eq!(registry.startup().await.status, Status::Fail);
    assert_eq!(registry.startup().await.status, Status::Fail);
    healthy.store(true, Ordering::SeqCst);
    assert_eq!(registry.startup().await.status, Status::Pass);
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    // Once passed it stays passed, even though the check would now fail, and is not run again.
    healthy.store(false, Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(registry.startup().await.status, Status::Pass);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn latch_set_by_the_app_passes_startup_on_the_next_probe() {
    let migrations = Latch::new();
    let registry = HealthRegistry::builder()
        .startup("migrations", migrations.clone())
        .build()
        .unwrap();

    let report = registry.startup().await;
    assert_eq!(report.status, Status::Fail);
    assert_eq!(
        report.checks["migrations"][0].output.as_deref(),
        Some(ms_health::check::LATCH_PENDING_OUTPUT)
    );

    migrations.set();
    // No waiting for a cache TTL: a latch is never cached.
    assert_eq!(registry.startup().await.status, Status::Pass);
}

#[tokio::test]
async fn liveness_runs_no_dependency_checks_by_default() {
    let runs = Arc::new(AtomicUsize::new(0));
    let registry = HealthRegistry::builder()
        .readiness("db", counting_pass(&runs))
        .startup("migrations", Latch::new())
        .build()
        .unwrap();

    let report = registry.liveness().await;

    assert_eq!(report.status, Status::Pass);
    assert!(report.checks.is_empty());
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn dependency_check_joins_liveness_only_when_opted_in() {
    let registry = HealthRegistry::builder()
        .register(
            "event-loop",
            check_fn(|| async { CheckResult::fail("stalled") }),
            CheckOptions::readiness().also(Probe::Liveness),
        )
        .build()
        .unwrap();

    let report = registry.liveness().await;

    assert_eq!(report.status, Status::Fail);
    assert!(report.checks.contains_key("event-loop"));
}

#[tokio::test]
async fn excluded_check_is_not_run() {
    let runs = Arc::new(AtomicUsize::new(0));
    let registry = HealthRegistry::builder()
        .readiness("db", check_fn(|| async { CheckResult::fail("down") }))
        .readiness("cache", counting_pass(&runs))
        .build()
        .unwrap();

    let report = registry.evaluate(Probe::Readiness, &["db", "cache"]).await;

    assert_eq!(report.status, Status::Pass);
    assert!(report.checks.is_empty());
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn excluding_an_unknown_check_leaves_a_note() {
    let registry = HealthRegistry::builder()
        .readiness("db", check_fn(|| async { CheckResult::pass() }))
        .build()
        .unwrap();

    let report = registry.evaluate(Probe::Readiness, &["dbb"]).await;

    assert_eq!(report.status, Status::Pass);
    assert_eq!(report.notes, ["exclude: no readiness check named \"dbb\""]);
    assert!(report.checks.contains_key("db"));
}

#[tokio::test]
async fn report_key_is_component_colon_measurement() {
    let registry = HealthRegistry::builder()
        .register(
            "postgres",
            check_fn(|| async { CheckResult::pass().with_observed_value(2.5, "ms") }),
            CheckOptions::readiness()
                .measurement("responseTime")
                .component_type("datastore"),
        )
        .build()
        .unwrap();

    let report = registry.readiness().await;

    let check = &report.checks["postgres:responseTime"][0];
    assert_eq!(check.component_id.as_deref(), Some("postgres"));
    assert_eq!(check.component_type.as_deref(), Some("datastore"));
    assert!(check.time.is_some());
}

#[test]
fn duplicate_names_are_rejected() {
    let error = HealthRegistry::builder()
        .readiness("db", Latch::new())
        .liveness("db", Latch::new())
        .build()
        .unwrap_err();
    assert_eq!(error, BuildError::DuplicateName { name: "db".into() });
}

#[test]
fn names_that_cannot_appear_in_a_query_or_key_are_rejected() {
    for name in ["", "db:main", "a b", "ünïcode", &"x".repeat(129)] {
        let error = HealthRegistry::builder()
            .readiness(name, Latch::new())
            .build()
            .unwrap_err();
        assert_eq!(error, BuildError::InvalidName { name: name.into() });
    }
}

#[test]
fn zero_threshold_and_zero_timeout_are_rejected() {
    let error = HealthRegistry::builder()
        .register(
            "a",
            Latch::new(),
            CheckOptions::readiness().failure_threshold(0),
        )
        .build()
        .unwrap_err();
    assert!(matches!(error, BuildError::ZeroFailureThreshold { .. }));

    let error = HealthRegistry::builder()
        .default_timeout(std::time::Duration::ZERO)
        .readiness("a", Latch::new())
        .build()
        .unwrap_err();
    assert!(matches!(error, BuildError::ZeroTimeout { .. }));
}
