//! Timeout and bulkhead rules, on paused time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ms_resilience::bulkhead::BulkheadLayer;
use ms_resilience::timeout::TimeoutLayer;
use ms_resilience::{BoxError, Error};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

fn sleeper() -> impl Service<Duration, Response = (), Error = BoxError, Future: Send> + Clone {
    tower::service_fn(|d: Duration| async move {
        tokio::time::sleep(d).await;
        Ok::<_, BoxError>(())
    })
}

#[tokio::test(start_paused = true)]
async fn the_bulkhead_waits_at_most_max_wait_for_a_slot() {
    let layer = BulkheadLayer::new(1).max_wait(Duration::from_secs(1));
    let mut service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(sleeper());
    let busy = tokio::spawn(
        service
            .ready()
            .await
            .unwrap()
            .call(Duration::from_millis(500)),
    );
    tokio::task::yield_now().await;
    assert_eq!(layer.available(), 0);

    // The slot frees after 500 ms, within the wait.
    let started = Instant::now();
    let mut second = service.clone();
    second
        .ready()
        .await
        .unwrap()
        .call(Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(500));
    busy.await.unwrap().unwrap();

    // A slot that stays busy: the wait ends after exactly 1 s with the typed error.
    let busy = tokio::spawn(service.ready().await.unwrap().call(Duration::from_secs(60)));
    tokio::task::yield_now().await;
    let started = Instant::now();
    let error = second
        .ready()
        .await
        .unwrap()
        .call(Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(
        Error::find(&*error),
        Some(&Error::BulkheadFull { max_concurrent: 1 })
    );
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    busy.abort();
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_gives_its_slot_back() {
    let layer = BulkheadLayer::new(2);
    let mut service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(sleeper());
    let first = service.ready().await.unwrap().call(Duration::from_secs(60));
    let second = service.ready().await.unwrap().call(Duration::from_secs(60));
    assert_eq!(layer.available(), 0);
    let error = service
        .ready()
        .await
        .unwrap()
        .call(Duration::ZERO)
        .await
        .unwrap_err();
    assert!(Error::find(&*error).is_some_and(Error::is_retryable));
    drop(first);
    assert_eq!(layer.available(), 1);
    service
        .ready()
        .await
        .unwrap()
        .call(Duration::ZERO)
        .await
        .unwrap();
    drop(second);
    assert_eq!(layer.available(), 2);
}

/// Sets its flag when dropped.
struct Flag(Arc<AtomicBool>);

impl Drop for Flag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_timeout_drops_the_inner_call() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let service = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service_fn(move |()| {
            let guard = Flag(flag.clone());
            async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(guard);
                Ok::<_, BoxError>(())
            }
        });
    let started = Instant::now();
    let error = service.oneshot(()).await.unwrap_err();
    assert_eq!(
        Error::find(&*error),
        Some(&Error::Timeout {
            after: Duration::from_secs(2)
        })
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert!(dropped.load(Ordering::SeqCst));
}
