//! The reconnecting connection. lapin does not reconnect by itself (lapin#288), so the adapter
//! keeps one [`Session`] (a connection, its confirm-mode publishing channel and a channel for
//! declarations) and replaces it when it breaks; publishers republish what the broken session
//! had not confirmed, and subscriptions reopen their consumers on the new one.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::time::Instant;

use ms_resilience::backoff::{ExponentialBackoff, Jitter};

use super::topology::{self, Names};
use crate::{BoxError, BusError};

/// How the link waits between connection attempts, and for how long an operation keeps
/// trying before it gives up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkConfig {
    pub(crate) reconnect_initial: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) publish_timeout: Duration,
    pub(crate) confirm_window: usize,
}

/// A deadline for a timeout too long for the clock: a century away, later than any process
/// lives and well within the clock's range.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl LinkConfig {
    /// The pause after `failures` failed connection attempts in a row (at least one): from the
    /// initial delay, doubling, capped at the longest, without jitter (one process reconnects,
    /// there is no herd to spread).
    pub(crate) fn reconnect_delay(&self, failures: u32) -> Duration {
        ExponentialBackoff::new(self.reconnect_initial, self.reconnect_max)
            .with_jitter(Jitter::None)
            .ceiling(failures.saturating_sub(1))
    }

    /// When an operation started now stops trying: the publish timeout from now. The timeout
    /// comes from configuration and may be too long to add to the clock (`Duration::MAX` for
    /// "keep trying"), which is then as good as no deadline.
    pub(crate) fn publish_deadline(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.publish_timeout)
            .unwrap_or_else(|| now + FAR_FUTURE)
    }
}

/// One connection and its channels. Replaced as a whole when any part of it breaks.
pub(crate) struct Session {
    pub(crate) generation: u64,
    pub(crate) connection: Connection,
    publish: Channel,
    topology: tokio::sync::Mutex<Option<Channel>>,
    /// Queues this session has declared for senders (command and dead-letter destinations).
    declared: std::sync::Mutex<HashSet<String>>,
    broken: AtomicBool,
}

impl Session {
    /// Whether the connection and the publishing channel are up and nothing marked them broken.
    pub(crate) fn is_healthy(&self) -> bool {
        !self.broken.load(Ordering::Acquire)
            && self.connection.status().connected()
            && self.publish.status().connected()
    }

    /// Marks the session broken: the next [`Link::session`] replaces it.
    pub(crate) fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
    }

    /// The channel declarations go through, reopened when a refused declaration (different
    /// arguments for an existing queue) closed it: such errors end a channel, not the session.
    pub(crate) async fn topology(&self) -> Result<Channel, BusError> {
        let mut slot = self.topology.lock().await;
        if let Some(channel) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| BusError::Connection(e.into()))?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    async fn prepare(&self, prepare: &Prepare) -> Result<(), BusError> {
        match prepare {
            Prepare::Nothing => Ok(()),
            Prepare::Queue(queue) => {
                if self
                    .declared
                    .lock()
                    .is_ok_and(|d| d.contains(queue.as_str()))
                {
                    return Ok(());
                }
                topology::declare_queue(&self.topology().await?, queue, FieldTable::default())
                    .await?;
                if let Ok(mut declared) = self.declared.lock() {
                    declared.insert(queue.clone());
                }
                Ok(())
            }
            // Declared before every use: that resets the queue's idle expiry (see topology).
            Prepare::RetryQueue { queue, delay_ms } => {
                topology::declare_retry_queue(&self.topology().await?, queue, *delay_ms)
                    .await
                    .map(drop)
            }
        }
    }

    fn forget(&self, prepare: &Prepare) {
        if let (Prepare::Queue(queue), Ok(mut declared)) = (prepare, self.declared.lock()) {
            declared.remove(queue.as_str());
        }
    }
}

/// What must exist on the broker before a publish, declared once per session (or each time).
#[derive(Debug, Clone)]
pub(crate) enum Prepare {
    /// Nothing (the events exchange is declared with every session).
    Nothing,
    /// A durable queue: a command or dead-letter destination.
    Queue(String),
    /// The retry queue of a work queue for a delay.
    RetryQueue {
        /// The work queue.
        queue: String,
        /// The delay in milliseconds.
        delay_ms: u32,
    },
}

/// One message to publish.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) properties: BasicProperties,
    pub(crate) body: bytes::Bytes,
    /// Ask the broker to return the message if no queue takes it (sends to a queue by name,
    /// which must exist). Events are not mandatory: with no group subscribed the exchange
    /// drops them, as the publishing contract says.
    pub(crate) mandatory: bool,
}

/// Why a publishing round stopped.
enum Failure {
    /// The broker refused (a nack, a declaration it rejected): republishing will not help.
    Refused(BusError),
    /// The broker returned a mandatory message: no queue took it.
    Returned(BusError),
    /// The session broke: republish what is not confirmed on a new one.
    Broken(BoxError),
}

/// The connection manager.
pub(crate) struct Link {
    url: String,
    names: Names,
    pub(crate) config: LinkConfig,
    current: tokio::sync::Mutex<Option<Arc<Session>>>,
    generations: AtomicU64,
    closed: AtomicBool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("names", &self.names)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Link {
    pub(crate) fn new(url: String, names: Names, config: LinkConfig) -> Self {
        Self {
            url,
            names,
            config,
            current: tokio::sync::Mutex::new(None),
            generations: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// The events exchange (behind the namespace, if any).
    pub(crate) fn exchange(&self) -> &str {
        self.names.exchange()
    }

    /// The broker's names for this bus's exchange and queues.
    pub(crate) fn names(&self) -> &Names {
        &self.names
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The current session if it is healthy, else a new one (one connection attempt).
    pub(crate) async fn session(&self) -> Result<Arc<Session>, BusError> {
        if self.is_closed() {
            return Err(BusError::Closed);
        }
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref().filter(|s| s.is_healthy()) {
            return Ok(session.clone());
        }
        let session = Arc::new(self.open().await?);
        if let Some(previous) = current.replace(session.clone()) {
            tracing::info!(
                generation = session.generation,
                previous = previous.generation,
                "reconnected to RabbitMQ"
            );
        }
        Ok(session)
    }

    /// [`session`](Self::session), retried with backoff until `deadline`.
    pub(crate) async fn session_before(&self, deadline: Instant) -> Result<Arc<Session>, BusError> {
        let mut failures: u32 = 0;
        loop {
            failures = failures.saturating_add(1);
            let delay = self.config.reconnect_delay(failures);
            match self.session().await {
                Ok(session) => return Ok(session),
                Err(BusError::Closed) => return Err(BusError::Closed),
                Err(error)
                    if Instant::now()
                        .checked_add(delay)
                        .is_none_or(|wake| wake >= deadline) =>
                {
                    return Err(error);
                }
                Err(error) => {
                    tracing::debug!(%error, ?delay, "RabbitMQ unreachable; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn open(&self) -> Result<Session, BusError> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let connect = Connection::connect(&self.url, ConnectionProperties::default());
        let connection = tokio::time::timeout(self.config.publish_timeout, connect)
            .await
            .map_err(|_| BusError::Connection("connecting to RabbitMQ timed out".into()))?
            .map_err(|e| BusError::Connection(e.into()))?;
        let publish = connection
            .create_channel()
            .await
            .map_err(|e| BusError::Connection(e.into()))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| BusError::Connection(e.into()))?;
        topology::declare_events_exchange(&publish, self.names.exchange()).await?;
        Ok(Session {
            generation,
            connection,
            publish,
            topology: tokio::sync::Mutex::new(None),
            declared: std::sync::Mutex::default(),
            broken: AtomicBool::new(false),
        })
    }

    /// Publishes `messages` with up to `confirm_window` confirmations in flight and returns
    /// when the broker confirmed them all. When the session breaks, it reconnects and
    /// republishes those not yet confirmed (so a message may arrive twice, never zero times)
    /// until the publish timeout, then returns [`BusError::Connection`].
    pub(crate) async fn publish(
        &self,
        messages: &[Outgoing],
        prepare: &Prepare,
    ) -> Result<(), BusError> {
        let deadline = self.config.publish_deadline();
        let mut confirmed = vec![false; messages.len()];
        let mut redeclared = false;
        loop {
            let session = self.session_before(deadline).await?;
            let round = async {
                session.prepare(prepare).await.map_err(|e| {
                    if session.is_healthy() {
                        Failure::Refused(e)
                    } else {
                        Failure::Broken(e.into())
                    }
                })?;
                publish_round(
                    &session,
                    messages,
                    &mut confirmed,
                    self.config.confirm_window,
                )
                .await
            };
            let error = match tokio::time::timeout_at(deadline, round).await {
                Ok(Ok(())) => return Ok(()),
                // The destination's queue was deleted since this session declared it:
                // declare it again and republish, once.
                Ok(Err(Failure::Returned(error)))
                    if !redeclared && matches!(prepare, Prepare::Queue(_)) =>
                {
                    session.forget(prepare);
                    redeclared = true;
                    tracing::debug!(%error, "a queue declared earlier is gone; declaring it again");
                    continue;
                }
                Ok(Err(Failure::Refused(error) | Failure::Returned(error))) => {
                    session.forget(prepare);
                    return Err(error);
                }
                Ok(Err(Failure::Broken(error))) => error,
                Err(_) => {
                    return Err(BusError::NotConfirmed(
                        format!(
                            "no confirmation within the publish timeout of {:?}",
                            self.config.publish_timeout
                        )
                        .into(),
                    ));
                }
            };
            session.mark_broken();
            if Instant::now() >= deadline {
                return Err(BusError::Connection(error));
            }
            tracing::warn!(%error, "RabbitMQ session broke while publishing; republishing the unconfirmed messages");
        }
    }

    /// Whether the current session is healthy, without connecting.
    pub(crate) async fn is_connected(&self) -> bool {
        !self.is_closed()
            && self
                .current
                .lock()
                .await
                .as_ref()
                .is_some_and(|s| s.is_healthy())
    }

    /// Closes the connection; subscriptions end and publishing fails with [`BusError::Closed`].
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(session) = self.current.lock().await.take() {
            let _ = session
                .connection
                .close(200, "closed by the application".into())
                .await;
        }
    }
}

async fn publish_round(
    session: &Session,
    messages: &[Outgoing],
    confirmed: &mut [bool],
    window: usize,
) -> Result<(), Failure> {
    let mut pending = VecDeque::with_capacity(window.min(messages.len()));
    for (index, message) in messages.iter().enumerate() {
        if confirmed[index] {
            continue;
        }
        if pending.len() >= window.max(1)
            && let Some((done, confirm)) = pending.pop_front()
        {
            check(confirm.await, &messages[done])?;
            confirmed[done] = true;
        }
        let confirm = session
            .publish
            .basic_publish(
                message.exchange.clone(),
                message.routing_key.clone(),
                BasicPublishOptions {
                    mandatory: message.mandatory,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                message.properties.clone(),
            )
            .await
            .map_err(|e| Failure::Broken(e.into()))?;
        pending.push_back((index, confirm));
    }
    while let Some((done, confirm)) = pending.pop_front() {
        check(confirm.await, &messages[done])?;
        confirmed[done] = true;
    }
    Ok(())
}

fn check(confirmation: lapin::Result<Confirmation>, message: &Outgoing) -> Result<(), Failure> {
    match confirmation {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(returned))) => Err(Failure::Returned(BusError::NotConfirmed(
            format!(
                "RabbitMQ returned the message as unroutable (to `{}`): {} {}",
                message.routing_key, returned.reply_code, returned.reply_text
            )
            .into(),
        ))),
        Ok(Confirmation::Nack(_)) => Err(Failure::Refused(BusError::NotConfirmed(
            "RabbitMQ nacked the message (it could not store it)".into(),
        ))),
        Ok(Confirmation::NotRequested) => Err(Failure::Refused(BusError::NotConfirmed(
            "the channel is not in confirm mode".into(),
        ))),
        Err(error) => Err(Failure::Broken(error.into())),
    }
}
