//! The keyed rate limiter: per-key allowances, typed errors with the wait, bounded memory.
#![cfg(feature = "rate-limit")]

use std::num::NonZeroU32;
use std::time::Duration;

use ms_resilience::rate_limit::{Quota, RateLimitLayer};
use ms_resilience::{BoxError, Error};
use tower::{ServiceBuilder, ServiceExt};

fn per_second(n: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(n).unwrap())
}

fn retry_after(error: &BoxError) -> Duration {
    match Error::find(&**error) {
        Some(Error::RateLimited { retry_after }) => *retry_after,
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn each_key_gets_its_own_allowance_and_it_refills() {
    let layer = RateLimitLayer::new(per_second(4), |key: &u32| *key);
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(|key: u32| async move { Ok::<_, BoxError>(key) });
    for _ in 0..4 {
        service.clone().oneshot(1).await.unwrap();
    }
    let error = service.clone().oneshot(1).await.unwrap_err();
    assert_eq!(retry_after(&error), Duration::from_millis(250));
    assert!(!Error::find(&*error).unwrap().is_retryable());
    service.clone().oneshot(2).await.unwrap();

    tokio::time::advance(Duration::from_millis(249)).await;
    let error = service.clone().oneshot(1).await.unwrap_err();
    assert_eq!(retry_after(&error), Duration::from_millis(1));
    tokio::time::advance(Duration::from_millis(1)).await;
    service.clone().oneshot(1).await.unwrap();
    assert_eq!(layer.keys(), 2);
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_forgotten_so_memory_stays_bounded() {
    let layer = RateLimitLayer::new(per_second(10), |key: &u32| *key);
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(|key: u32| async move { Ok::<_, BoxError>(key) });
    for key in 0..10_000 {
        service.clone().oneshot(key).await.unwrap();
    }
    assert_eq!(layer.keys(), 10_000);
    layer.retain_recent();
    assert_eq!(
        layer.keys(),
        10_000,
        "each key's last call is too recent to forget"
    );

    tokio::time::advance(Duration::from_secs(1)).await;
    // One key keeps calling; its state is still informative.
    for _ in 0..10 {
        service.clone().oneshot(7).await.unwrap();
    }
    layer.retain_recent();
    assert_eq!(layer.keys(), 1);
}

/// A layer with one allowance per second per key, and a service through it that 100 keys
/// have called once.
async fn hundred_keys() -> (
    RateLimitLayer<u32, impl Fn(&u32) -> u32 + Clone>,
    impl tower::Service<u32, Response = u32, Error = BoxError> + Clone,
) {
    let layer = RateLimitLayer::new(per_second(1), |key: &u32| *key);
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(|key: u32| async move { Ok::<_, BoxError>(key) });
    for key in 0..100 {
        service.clone().oneshot(key).await.unwrap();
    }
    (layer, service)
}

#[tokio::test(start_paused = true)]
async fn housekeeping_runs_until_the_layer_is_gone() {
    let (layer, service) = hundred_keys().await;
    let housekeeping = layer.spawn_housekeeping(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(layer.keys(), 0);
    drop((layer, service));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(housekeeping.is_finished());
}

/// A zero interval from configuration: `tokio::time::interval` panics on it, inside the
/// spawned task, and housekeeping would silently never run.
#[tokio::test(start_paused = true)]
async fn housekeeping_with_a_zero_interval_runs() {
    let (layer, service) = hundred_keys().await;
    let housekeeping = layer.spawn_housekeeping(Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!housekeeping.is_finished(), "still running");
    assert_eq!(layer.keys(), 0);
    drop((layer, service));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(housekeeping.await.is_ok(), "ended without panicking");
}
