//! Configuration of an [`AmqpBus`](super::AmqpBus), with its documented defaults.

use std::sync::Arc;
use std::time::Duration;

use super::AmqpBus;
use super::link::{Link, LinkConfig};
use super::topology::{DEFAULT_EVENTS_EXCHANGE, Names};
use crate::codec::Mode;
use crate::propagation::{Propagation, default_propagation};
use crate::{BusError, validate_name};

/// How many publisher confirms a batch keeps in flight, unless
/// [`AmqpBusBuilder::confirm_window`] says otherwise. Measured here: about 10k persistent
/// messages/s with 1024 in flight, against about 1k/s awaiting each confirm.
pub const DEFAULT_CONFIRM_WINDOW: usize = 1024;
/// How long a publish (or a retry's or dead letter's copy) keeps reconnecting and
/// republishing before it returns an error, unless [`AmqpBusBuilder::publish_timeout`] says
/// otherwise. Also the limit for connecting and for subscribing.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// The first pause between reconnection attempts, unless [`AmqpBusBuilder::reconnect_delay`]
/// says otherwise; it doubles after each failed attempt.
pub const DEFAULT_RECONNECT_INITIAL_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between reconnection attempts, unless
/// [`AmqpBusBuilder::reconnect_delay`] says otherwise.
pub const DEFAULT_RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);

/// Builds an [`AmqpBus`].
#[derive(Debug, Clone)]
#[must_use]
pub struct AmqpBusBuilder {
    url: String,
    namespace: Option<String>,
    exchange: String,
    mode: Mode,
    config: LinkConfig,
    propagation: Arc<dyn Propagation>,
}

impl AmqpBusBuilder {
    pub(super) fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            namespace: None,
            exchange: DEFAULT_EVENTS_EXCHANGE.to_owned(),
            mode: Mode::Binary,
            config: LinkConfig {
                reconnect_initial: DEFAULT_RECONNECT_INITIAL_DELAY,
                reconnect_max: DEFAULT_RECONNECT_MAX_DELAY,
                publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
                confirm_window: DEFAULT_CONFIRM_WINDOW,
            },
            propagation: default_propagation(),
        }
    }

    /// Sets the topic exchange events are published to (default
    /// [`DEFAULT_EVENTS_EXCHANGE`](super::DEFAULT_EVENTS_EXCHANGE)), behind the
    /// [namespace](Self::namespace) if one is set. Publishers and subscribers of one topic must
    /// agree on it.
    pub fn events_exchange(mut self, exchange: &str) -> Result<Self, BusError> {
        validate_name(exchange)?;
        exchange.clone_into(&mut self.exchange);
        Ok(self)
    }

    /// Puts every exchange and queue the bus declares, and every one it publishes to, behind
    /// `namespace` (a bus name): `{namespace}/ms.events`, `{namespace}/{topic}:{group}`,
    /// `{namespace}/{destination}`, and the retry and dead-letter queues derived from those.
    /// Default: no namespace, the names in the [module docs](super#on-the-broker).
    ///
    /// Two systems that share a virtual host, each with its own namespace, share nothing on
    /// it. Bus names cannot contain `/`, so namespaced names never meet un-namespaced ones.
    /// Every publisher and subscriber of a topic or destination must use the same namespace.
    /// A virtual host per system isolates more (permissions, limits, policies); this is for
    /// when there is one.
    ///
    /// Takes a `&str` or an `Option<&str>` (an optional setting from configuration; `None`
    /// means no namespace).
    pub fn namespace<'a>(
        mut self,
        namespace: impl Into<Option<&'a str>>,
    ) -> Result<Self, BusError> {
        self.namespace = match namespace.into() {
            Some(namespace) => {
                validate_name(namespace)?;
                Some(namespace.to_owned())
            }
            None => None,
        };
        Ok(self)
    }

    /// Sets the content mode written (default [`Mode::Binary`]); both are read.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets how many confirms a batch keeps in flight (at least 1; default
    /// [`DEFAULT_CONFIRM_WINDOW`]).
    pub fn confirm_window(mut self, window: usize) -> Self {
        self.config.confirm_window = window.max(1);
        self
    }

    /// Sets how long publishing keeps trying through a lost connection (default
    /// [`DEFAULT_PUBLISH_TIMEOUT`]).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.config.publish_timeout = timeout;
        self
    }

    /// Sets the first and the longest pause between reconnection attempts (defaults
    /// [`DEFAULT_RECONNECT_INITIAL_DELAY`], [`DEFAULT_RECONNECT_MAX_DELAY`]).
    pub fn reconnect_delay(mut self, initial: Duration, max: Duration) -> Self {
        self.config.reconnect_initial = initial;
        self.config.reconnect_max = max.max(initial);
        self
    }

    /// Sets the context propagation injected into published envelopes (ms-tracing plugs in
    /// here; default [`TraceContextPropagation`](crate::propagation::TraceContextPropagation)).
    pub fn propagation(mut self, propagation: Arc<dyn Propagation>) -> Self {
        self.propagation = propagation;
        self
    }

    /// Connects (retrying until the publish timeout) and declares the events exchange.
    pub async fn connect(self) -> Result<AmqpBus, BusError> {
        let names = Names::new(self.namespace.as_deref(), &self.exchange)?;
        let link = Arc::new(Link::new(self.url, names, self.config));
        let deadline = self.config.publish_deadline();
        link.session_before(deadline).await?;
        Ok(AmqpBus::from_parts(link, self.mode, self.propagation))
    }
}
