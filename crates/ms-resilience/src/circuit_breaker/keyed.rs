//! [`KeyedCircuitBreakerLayer`]: one breaker per key (endpoint, authority, tenant) from one
//! layer.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{CircuitBreaker, CircuitBreakerBuilder, ResponseFuture};
use crate::BoxError;
use crate::classify::{Classify, ErrorsAsFailures};

/// One breaker per key, all built from the same [`CircuitBreakerBuilder`] and named after their
/// key. The key comes from each request, e.g. its URI's authority:
///
/// ```
/// use ms_resilience::circuit_breaker::{CircuitBreaker, KeyedCircuitBreakerLayer, State};
/// use ms_resilience::BoxError;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = KeyedCircuitBreakerLayer::new(
///     CircuitBreaker::builder().minimum_number_of_calls(2),
///     |uri: &http::Uri| uri.authority().map(|a| a.to_string()).unwrap_or_default(),
/// );
/// let service = ServiceBuilder::new().layer(layer.clone()).service_fn(|uri: http::Uri| async move {
///     if uri.host() == Some("down.internal") { Err::<(), BoxError>("refused".into()) } else { Ok(()) }
/// });
/// for uri in ["http://down.internal/a", "http://down.internal/b", "http://up.internal/"] {
///     let _ = service.clone().oneshot(uri.parse().unwrap()).await;
/// }
/// assert_eq!(layer.breaker("down.internal").unwrap().state(), State::Open);
/// assert_eq!(layer.breaker("up.internal").unwrap().state(), State::Closed);
/// # }
/// ```
///
/// Breakers are created on first use and kept for the layer's lifetime: key by something with
/// a bounded number of values (endpoints, not user IDs). The lookup takes a read lock on a
/// map, so a keyed call costs a hash and an uncontended `RwLock` read more than a plain one;
/// admission happens in `call`, since the key is only known there.
pub struct KeyedCircuitBreakerLayer<K, F, C = ErrorsAsFailures> {
    registry: Arc<Registry<K>>,
    key: F,
    classifier: C,
}

struct Registry<K> {
    template: CircuitBreakerBuilder,
    breakers: RwLock<HashMap<K, CircuitBreaker>>,
}

impl<K, F> KeyedCircuitBreakerLayer<K, F, ErrorsAsFailures> {
    /// Breakers built from `template`, keyed by `key(&request)`.
    pub fn new(template: CircuitBreakerBuilder, key: F) -> Self {
        Self {
            registry: Arc::new(Registry {
                template,
                breakers: RwLock::new(HashMap::new()),
            }),
            key,
            classifier: ErrorsAsFailures,
        }
    }
}

impl<K, F, C> KeyedCircuitBreakerLayer<K, F, C> {
    /// Uses `classifier` to decide which results are failures.
    pub fn with_classifier<C2>(self, classifier: C2) -> KeyedCircuitBreakerLayer<K, F, C2> {
        KeyedCircuitBreakerLayer {
            registry: self.registry,
            key: self.key,
            classifier,
        }
    }
}

impl<K: Eq + Hash, F, C> KeyedCircuitBreakerLayer<K, F, C> {
    /// The breaker for `key`, if a call has created it (for metrics and manual control).
    pub fn breaker<Q>(&self, key: &Q) -> Option<CircuitBreaker>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.registry
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Every breaker created so far, with its key.
    pub fn breakers(&self) -> Vec<(K, CircuitBreaker)>
    where
        K: Clone,
    {
        self.registry
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect()
    }
}

impl<K: Eq + Hash + fmt::Display> Registry<K> {
    fn get_or_create(&self, key: K) -> CircuitBreaker {
        if let Some(breaker) = self
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return breaker.clone();
        }
        let mut breakers = self
            .breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        breakers
            .entry(key)
            .or_insert_with_key(|key| self.template.clone().name(key.to_string()).build())
            .clone()
    }
}

impl<K, F: Clone, C: Clone> Clone for KeyedCircuitBreakerLayer<K, F, C> {
    fn clone(&self) -> Self {
        Self {
            registry: self.registry.clone(),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<K, F, C: fmt::Debug> fmt::Debug for KeyedCircuitBreakerLayer<K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<S, K, F: Clone, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<K, F, C> {
    type Service = KeyedCircuitBreakerService<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreakerService {
            inner,
            registry: self.registry.clone(),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service with one breaker per request key. Made by [`KeyedCircuitBreakerLayer`].
pub struct KeyedCircuitBreakerService<S, K, F, C> {
    inner: S,
    registry: Arc<Registry<K>>,
    key: F,
    classifier: C,
}

impl<S: Clone, K, F: Clone, C: Clone> Clone for KeyedCircuitBreakerService<S, K, F, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            registry: self.registry.clone(),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, K, F, C> fmt::Debug for KeyedCircuitBreakerService<S, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, C, Req> Service<Req> for KeyedCircuitBreakerService<S, K, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Eq + Hash + fmt::Display,
    F: Fn(&Req) -> K,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let breaker = self.registry.get_or_create((self.key)(&request));
        let word = breaker.shared.admit();
        if word.is_rejected() {
            return ResponseFuture::rejected(breaker.shared.rejection(), self.classifier.clone());
        }
        ResponseFuture::called(
            self.inner.call(request),
            breaker.into_permit(word),
            self.classifier.clone(),
        )
    }
}
