use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use tower::Layer;

use super::{CorrelationId, CorrelationIdService, InvalidCorrelationId};

/// The default header: `x-correlation-id`.
pub const X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// Whether IDs that arrive from outside are taken at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IncomingIds {
    /// A well-formed incoming ID is kept (the default: callers are inside the trust boundary).
    #[default]
    Accept,
    /// Every request gets a fresh ID, whatever it carries: for an edge service facing the
    /// internet, where an outside ID could be used to mingle a caller's requests with someone
    /// else's in the logs.
    Ignore,
}

/// Why an incoming ID was replaced by a fresh one. The rejected text itself is never kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectedCorrelationId {
    /// The value breaks the [`CorrelationId`] rules (length, character set).
    #[error(transparent)]
    Invalid(#[from] InvalidCorrelationId),
    /// The header came more than once: which one is meant is ambiguous, and a proxy and the
    /// service might each pick a different one.
    #[error("correlation ID header sent {count} times")]
    Repeated {
        /// How many times it came.
        count: usize,
    },
}

/// Layer that applies [`CorrelationIdService`]; see the [module docs](super).
///
/// Clones share the configuration and the rejection counter.
#[derive(Debug, Clone)]
pub struct CorrelationIdLayer {
    pub(crate) config: Arc<Config>,
}

#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) header: HeaderName,
    aliases: Vec<HeaderName>,
    incoming: IncomingIds,
    rejected: AtomicU64,
}

impl CorrelationIdLayer {
    /// The layer with the defaults: header [`X_CORRELATION_ID`], no aliases,
    /// [`IncomingIds::Accept`].
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to choose the header, aliases and trust setting.
    pub fn builder() -> CorrelationIdLayerBuilder {
        CorrelationIdLayerBuilder {
            header: X_CORRELATION_ID,
            aliases: Vec::new(),
            incoming: IncomingIds::default(),
        }
    }

    /// How many incoming IDs this layer (and its clones) replaced because they were malformed
    /// or repeated.
    pub fn rejected(&self) -> u64 {
        self.config.rejected.load(Ordering::Relaxed)
    }
}

impl Default for CorrelationIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for CorrelationIdLayer {
    type Service = CorrelationIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CorrelationIdService::new(inner, self.clone())
    }
}

/// Builder for [`CorrelationIdLayer`].
#[derive(Debug, Clone)]
pub struct CorrelationIdLayerBuilder {
    header: HeaderName,
    aliases: Vec<HeaderName>,
    incoming: IncomingIds,
}

impl CorrelationIdLayerBuilder {
    /// The header read from requests and written on responses (default [`X_CORRELATION_ID`]).
    #[must_use]
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// Another header to read the ID from when the main one is absent, such as `x-request-id`.
    /// Aliases are tried in the order they were added; the response always uses the main header.
    #[must_use]
    pub fn alias(mut self, header: HeaderName) -> Self {
        self.aliases.push(header);
        self
    }

    /// Whether incoming IDs are taken at all (default [`IncomingIds::Accept`]).
    #[must_use]
    pub fn incoming(mut self, incoming: IncomingIds) -> Self {
        self.incoming = incoming;
        self
    }

    /// The layer.
    pub fn build(self) -> CorrelationIdLayer {
        CorrelationIdLayer {
            config: Arc::new(Config {
                header: self.header,
                aliases: self.aliases,
                incoming: self.incoming,
                rejected: AtomicU64::new(0),
            }),
        }
    }
}

impl Config {
    /// The ID this request runs under, and the incoming header value when it was accepted (so
    /// the echo can reuse it rather than copy the text again): the first header present among
    /// the main one and the aliases, if it is well-formed and sent once; a fresh ID otherwise.
    pub(crate) fn resolve(&self, headers: &HeaderMap) -> (CorrelationId, Option<HeaderValue>) {
        if self.incoming == IncomingIds::Ignore {
            return (CorrelationId::generate(), None);
        }
        for name in std::iter::once(&self.header).chain(&self.aliases) {
            let mut values = headers.get_all(name).iter();
            let outcome = match (values.next(), values.next()) {
                (None, _) => continue,
                (Some(value), None) => CorrelationId::from_bytes(value.as_bytes())
                    .map(|id| (id, Some(value.clone())))
                    .map_err(RejectedCorrelationId::from),
                (Some(_), Some(_)) => Err(RejectedCorrelationId::Repeated {
                    count: headers.get_all(name).iter().count(),
                }),
            };
            return outcome.unwrap_or_else(|reason| (self.reject(name, &reason), None));
        }
        (CorrelationId::generate(), None)
    }

    fn reject(&self, name: &HeaderName, reason: &RejectedCorrelationId) -> CorrelationId {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let fresh = CorrelationId::generate();
        // The event names the header and the reason, never the rejected value: that is the
        // attacker's text, and logging it is exactly the injection being refused.
        tracing::warn!(
            target: "ms_tracing::correlation",
            header = %name,
            %reason,
            replacement = %fresh,
            "incoming correlation ID rejected"
        );
        fresh
    }
}
