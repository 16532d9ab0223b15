//! A keyed rate limiter (GCRA, through `governor`): per client, API key or tier, failing fast
//! with [`Error::RateLimited`] that carries the wait, so an HTTP layer can answer `429` with
//! `Retry-After`. Idle keys are forgotten, so memory stays bounded.
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use ms_resilience::rate_limit::{Quota, RateLimitLayer};
//! use ms_resilience::{BoxError, Error};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // 2 requests per second per API key.
//! let quota = Quota::per_second(NonZeroU32::new(2).unwrap());
//! let service = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(quota, |api_key: &&str| api_key.to_string()))
//!     .service_fn(|_: &str| async { Ok::<_, BoxError>("ok") });
//!
//! for _ in 0..2 {
//!     service.clone().oneshot("alice").await.unwrap();
//! }
//! let error = service.clone().oneshot("alice").await.unwrap_err();
//! let Some(Error::RateLimited { retry_after }) = Error::find(&*error) else { panic!() };
//! assert_eq!(*retry_after, Duration::from_millis(500));
//! // Another key has its own allowance.
//! service.clone().oneshot("bob").await.unwrap();
//! # }
//! ```
//!
//! tower's `RateLimit` is one global limit that makes callers wait; this one keeps one GCRA
//! state per key (a `governor` keyed limiter on a `DashMap`) and rejects at once. A key's
//! state is one 8-byte word; a key whose allowance is full again carries no information, and
//! [`RateLimitLayer::retain_recent`] (or [`RateLimitLayer::spawn_housekeeping`]) drops it.
//! Time comes from tokio's clock, so `tokio::time::pause` drives it in tests.

use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use governor::RateLimiter;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use tower::{Layer, Service};

pub use governor::Quota;

use crate::{BoxError, Error};

/// governor's clock, read from tokio's (which `tokio::time::pause` controls).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

type Limiter<K> = RateLimiter<K, DashMapStateStore<K>, TokioClock, NoOpMiddleware<Duration>>;

/// Limits each key's rate. Clones (and every service it makes) share the limiter.
pub struct RateLimitLayer<K: Hash + Eq + Clone, F> {
    limiter: Arc<Limiter<K>>,
    clock: TokioClock,
    key: F,
}

impl<K: Hash + Eq + Clone, F> RateLimitLayer<K, F> {
    /// One `quota` per key, the key taken from each request by `key`.
    pub fn new(quota: Quota, key: F) -> Self {
        let clock = TokioClock {
            origin: tokio::time::Instant::now(),
        };
        Self {
            limiter: Arc::new(RateLimiter::new(quota, DashMapStateStore::default(), clock)),
            clock,
            key,
        }
    }

    /// Forgets every key whose allowance is full again (it would behave exactly like a new
    /// key), and gives the memory back.
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// The keys remembered now.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }

    /// Runs [`retain_recent`](Self::retain_recent) every `interval` on the current tokio
    /// runtime, until the layer and all its services are dropped. A zero interval is raised to
    /// one millisecond, since a zero-period timer cannot exist.
    pub fn spawn_housekeeping(&self, interval: Duration) -> tokio::task::JoinHandle<()>
    where
        K: Send + Sync + 'static,
    {
        let limiter: Weak<Limiter<K>> = Arc::downgrade(&self.limiter);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(1)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(limiter) = limiter.upgrade() else {
                    return;
                };
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        })
    }
}

impl<K: Hash + Eq + Clone, F: Clone> Clone for RateLimitLayer<K, F> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            clock: self.clock,
            key: self.key.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone, F> fmt::Debug for RateLimitLayer<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer").finish_non_exhaustive()
    }
}

impl<S, K: Hash + Eq + Clone, F: Clone> Layer<S> for RateLimitLayer<K, F> {
    type Service = RateLimit<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
            clock: self.clock,
            key: self.key.clone(),
        }
    }
}

/// A service with a rate per key. Made by [`RateLimitLayer`].
pub struct RateLimit<S, K: Hash + Eq + Clone, F> {
    inner: S,
    limiter: Arc<Limiter<K>>,
    clock: TokioClock,
    key: F,
}

impl<S: Clone, K: Hash + Eq + Clone, F: Clone> Clone for RateLimit<S, K, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            clock: self.clock,
            key: self.key.clone(),
        }
    }
}

impl<S: fmt::Debug, K: Hash + Eq + Clone, F> fmt::Debug for RateLimit<S, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, Req> Service<Req> for RateLimit<S, K, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone,
    F: Fn(&Req) -> K,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = (self.key)(&request);
        match self.limiter.check_key(&key) {
            Ok(()) => ResponseFuture::allowed(self.inner.call(request)),
            Err(not_until) => ResponseFuture::limited(not_until.wait_time_from(self.clock.now())),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RateLimit`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        retry_after: Duration,
    }
}

impl<F> ResponseFuture<F> {
    fn allowed(inner: F) -> Self {
        Self {
            inner: Some(inner),
            retry_after: Duration::ZERO,
        }
    }

    fn limited(retry_after: Duration) -> Self {
        Self {
            inner: None,
            retry_after,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll(cx).map_err(Into::into),
            None => {
                #[cfg(feature = "metrics")]
                crate::metrics::increment(crate::metrics::RATE_LIMIT_REJECTIONS);
                Poll::Ready(Err(Error::RateLimited {
                    retry_after: *this.retry_after,
                }
                .into()))
            }
        }
    }
}

/// The answer an HTTP server gives a rate-limited caller: `429 Too Many Requests` with
/// `Retry-After` in whole seconds, rounded up (RFC 9110 allows no fractions).
///
/// ```
/// use std::time::Duration;
/// let response = ms_resilience::rate_limit::too_many_requests::<()>(Duration::from_millis(1_200));
/// assert_eq!(response.status(), 429);
/// assert_eq!(response.headers()["retry-after"], "2");
/// ```
pub fn too_many_requests<B: Default>(retry_after: Duration) -> http::Response<B> {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut response = http::Response::new(B::default());
    *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
    response
}
