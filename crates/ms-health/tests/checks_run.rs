//! How one check runs: timeout, panic isolation, caching with single-flight, failure threshold,
//! criticality.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ms_health::{CheckOptions, CheckResult, HealthRegistry, Status, check_fn};
use tokio::time::Instant;

/// A check that counts its runs and sleeps `delay` before passing.
fn slow_counting_check(runs: &Arc<AtomicUsize>, delay: Duration) -> impl ms_health::Check + use<> {
    let runs = Arc::clone(runs);
    check_fn(move || {
        let runs = Arc::clone(&runs);
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            CheckResult::pass()
        }
    })
}

/// Sets its flag when dropped: tells whether a hung check's future was torn down.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn hung_check_fails_when_its_timeout_elapses() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&dropped);
    let registry = HealthRegistry::builder()
        .register(
            "hung",
            check_fn(move || {
                let guard = DropFlag(Arc::clone(&flag));
                async move {
                    let _guard = guard;
                    std::future::pending::<CheckResult>().await
                }
            }),
            CheckOptions::readiness().timeout(Duration::from_millis(200)),
        )
        .build()
        .unwrap();

    let started = Instant::now();
    let report = registry.readiness().await;

    assert_eq!(started.elapsed(), Duration::from_millis(200));
    assert_eq!(report.status, Status::Fail);
    let output = report.checks["hung"][0].output.clone().unwrap();
    assert!(output.contains("timed out after 200ms"), "{output}");
    // The abandoned run is aborted, not left hanging in the background.
    tokio::task::yield_now().await;
    assert!(dropped.load(Ordering::SeqCst));
}

fn explode() -> CheckResult {
    panic!("the check exploded")
}

#[tokio::test]
async fn panicking_check_is_a_failed_result() {
    let registry = HealthRegistry::builder()
        .readiness("boom", check_fn(|| async { explode() }))
        .readiness("fine", check_fn(|| async { CheckResult::pass() }))
        .build()
        .unwrap();

    let report = registry.readiness().await;

    assert_eq!(report.status, Status::Fail);
    let boom = &report.checks["boom"][0];
    assert_eq!(boom.status, Status::Fail);
    let output = boom.output.as_deref().unwrap();
    assert!(
        output.contains("panicked") && output.contains("the check exploded"),
        "{output}"
    );
    assert_eq!(report.checks["fine"][0].status, Status::Pass);
}

#[tokio::test(start_paused = true)]
async fn thousand_concurrent_probes_run_a_slow_check_once_per_ttl() {
    let runs = Arc::new(AtomicUsize::new(0));
    let ttl = Duration::from_secs(1);
    let registry = HealthRegistry::builder()
        .register(
            "slow",
            slow_counting_check(&runs, Duration::from_millis(50)),
            CheckOptions::readiness().cache_ttl(ttl),
        )
        .build()
        .unwrap();
    let probe_all = || async {
        let probes: Vec<_> = (0..1000)
            .map(|_| {
                let registry = registry.clone();
                tokio::spawn(async move { registry.readiness().await })
            })
            .collect();
        for probe in probes {
            assert_eq!(probe.await.unwrap().status, Status::Pass);
        }
    };

    probe_all().await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "first wave");

    // Still within the TTL (the result was stored 50 ms in): served from the cache.
    tokio::time::sleep(ttl / 2).await;
    probe_all().await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "within the TTL");

    tokio::time::sleep(ttl).await;
    probe_all().await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "after the TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_holds_across_worker_threads() {
    let runs = Arc::new(AtomicUsize::new(0));
    let registry = HealthRegistry::builder()
        .register(
            "slow",
            slow_counting_check(&runs, Duration::from_millis(50)),
            CheckOptions::readiness().cache_ttl(Duration::from_secs(60)),
        )
        .build()
        .unwrap();

    let probes: Vec<_> = (0..1000)
        .map(|_| {
            let registry = registry.clone();
            tokio::spawn(async move { registry.readiness().await.status })
        })
        .collect();
    for probe in probes {
        assert_eq!(probe.await.unwrap(), Status::Pass);
    }

    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn zero_ttl_still_shares_one_run_among_concurrent_probes() {
    let runs = Arc::new(AtomicUsize::new(0));
    let registry = HealthRegistry::builder()
        .register(
            "slow",
            slow_counting_check(&runs, Duration::from_millis(50)),
            CheckOptions::readiness().cache_ttl(Duration::ZERO),
        )
        .build()
        .unwrap();

    let (a, b, c) = tokio::join!(
        registry.readiness(),
        registry.readiness(),
        registry.readiness()
    );
    assert!([a, b, c].iter().all(|r| r.status == Status::Pass));
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    registry.readiness().await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "a later probe runs the check again"
    );
}

#[tokio::test]
async fn check_turns_red_only_after_threshold_consecutive_failures() {
    let failing = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&failing);
    let registry = HealthRegistry::builder()
        .register(
            "flaky",
            check_fn(move || {
                let failing = flag.load(Ordering::SeqCst);
                async move {
                    if failing {
                        CheckResult::fail("connection reset")
                    } else {
                        CheckResult::pass()
                    }
                }
            }),
            CheckOptions::readiness()
                .failure_threshold(3)
                .cache_ttl(Duration::ZERO),
        )
        .build()
        .unwrap();
    let status_and_output = || async {
        let report = registry.readiness().await;
        let check = report.checks["flaky"][0].clone();
        (
            report.status,
            check.status,
            check.output.unwrap_or_default(),
        )
    };

    let (probe, check, output) = status_and_output().await;
    assert_eq!((probe, check), (Status::Warn, Status::Warn));
    assert!(
        output.contains("failure 1 of 3") && output.contains("connection reset"),
        "{output}"
    );
    let (_, check, output) = status_and_output().await;
    assert_eq!(check, Status::Warn);
    assert!(output.contains("failure 2 of 3"), "{output}");
    let (probe, check, output) = status_and_output().await;
    assert_eq!((probe, check), (Status::Fail, Status::Fail));
    assert_eq!(output, "connection reset");

    // A success resets the streak.
    failing.store(false, Ordering::SeqCst);
    assert_eq!(status_and_output().await.0, Status::Pass);
    failing.store(true, Ordering::SeqCst);
    assert_eq!(status_and_output().await.0, Status::Warn);
}

#[tokio::test]
async fn non_critical_failure_degrades_to_warn() {
    let registry = HealthRegistry::builder()
        .register(
            "search",
            check_fn(|| async { CheckResult::fail("index unavailable") }),
            CheckOptions::readiness().non_critical(),
        )
        .readiness("db", check_fn(|| async { CheckResult::pass() }))
        .build()
        .unwrap();

    let report = registry.readiness().await;

    assert_eq!(report.status, Status::Warn);
    assert!(report.is_healthy());
    let search = &report.checks["search"][0];
    assert_eq!(search.status, Status::Warn);
    assert_eq!(search.output.as_deref(), Some("index unavailable"));
}

#[tokio::test]
async fn warn_from_a_check_makes_the_probe_warn() {
    let registry = HealthRegistry::builder()
        .readiness(
            "disk",
            check_fn(|| async { CheckResult::warn("85% full").with_observed_value(85, "percent") }),
        )
        .build()
        .unwrap();

    let report = registry.readiness().await;

    assert_eq!(report.status, Status::Warn);
    let disk = &report.checks["disk"][0];
    assert_eq!(disk.observed_value, Some(serde_json::json!(85)));
    assert_eq!(disk.observed_unit.as_deref(), Some("percent"));
}

#[tokio::test(start_paused = true)]
async fn abandoned_probe_aborts_its_run_and_the_next_probe_runs_afresh() {
    let runs = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let (counter, flag) = (Arc::clone(&runs), Arc::clone(&dropped));
    let registry = HealthRegistry::builder()
        .register(
            "slow",
            check_fn(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let guard = DropFlag(Arc::clone(&flag));
                async move {
                    let _guard = guard;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    CheckResult::pass()
                }
            }),
            CheckOptions::readiness().timeout(Duration::from_secs(1)),
        )
        .build()
        .unwrap();

    // The caller gives up (a client disconnects) while the check runs.
    let abandoned = tokio::time::timeout(Duration::from_millis(10), registry.readiness()).await;
    assert!(abandoned.is_err());
    tokio::task::yield_now().await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "the orphaned run was not aborted"
    );

    // Nothing half-done was cached: the next probe runs the check and gets its result.
    let report = registry.readiness().await;
    assert_eq!(report.status, Status::Pass);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A TTL too long for the clock means "cache for good", not "do not cache".
#[tokio::test(start_paused = true)]
async fn a_cache_ttl_of_duration_max_keeps_the_result() {
    let runs = Arc::new(AtomicUsize::new(0));
    let registry = HealthRegistry::builder()
        .register(
            "slow",
            slow_counting_check(&runs, Duration::from_millis(50)),
            CheckOptions::readiness().cache_ttl(Duration::MAX),
        )
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(registry.readiness().await.status, Status::Pass);
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
