//! Waiting for a publish's ack, and publishing the same message again when a failover ate it.
//!
//! On a cluster, a stream's leader stores and acknowledges its publishes. When the leader
//! dies, the publishes it had not acknowledged get no answer (the ack times out), and until
//! the other replicas have elected a new leader the stream has no responder at all (the
//! server answers "no responders" at once, which async-nats reports as
//! [`StreamNotFound`](async_nats::jetstream::context::PublishErrorKind::StreamNotFound)).
//! Neither says whether the message was stored: the old leader may have replicated it before
//! it died. So the message is published again, unchanged: its `Nats-Msg-Id` lets the new
//! leader drop the copy if the first one was stored (the ids of the duplicate window are
//! part of the replicated stream state), so a retried publish is stored once.
//!
//! Retrying one message does not break its key's order: a batch keeps at most one
//! unconfirmed message per ordering key (see `pipeline`), so nothing of its key is sent
//! until this one is confirmed.

use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use ms_resilience::backoff::{Delays, ExponentialBackoff, Jitter};
use tokio::time::Instant;

use super::Inner;
use crate::{BoxError, BusError, Envelope};

/// The first pause before publishing again after a fast failure (no responders while a new
/// leader is elected), doubled after each such failure up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// The longest pause between two attempts.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(500);

impl Inner {
    /// Waits for `ack`, the answer to publishing `envelope` on `subject`; publishes it again
    /// (same `Nats-Msg-Id`) after a failure a failover explains, until it is confirmed or the
    /// [publish timeout](super::NatsBusBuilder::publish_timeout) counted from `started` (when
    /// `ack`'s publish was sent) is over.
    pub(super) async fn confirm(
        &self,
        name: &str,
        subject: &Subject,
        envelope: &Envelope,
        ack: PublishAckFuture,
        started: Instant,
    ) -> Result<(), BusError> {
        self.confirm_with(envelope.id(), ack, started, || {
            self.start_publish(name, subject, envelope)
        })
        .await
    }

    /// [`confirm`](Self::confirm) for any message: `republish` sends the same message again
    /// (a dead letter's headers and body, say, which carry their own `Nats-Msg-Id`); `id`
    /// names it in the logs.
    pub(super) async fn confirm_with<F, Fut>(
        &self,
        id: &str,
        ack: PublishAckFuture,
        started: Instant,
        republish: F,
    ) -> Result<(), BusError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<PublishAckFuture, BusError>>,
    {
        let deadline = started + self.publish_timeout;
        let mut pauses = ExponentialBackoff::new(FIRST_RETRY_PAUSE, MAX_RETRY_PAUSE)
            .with_jitter(Jitter::None)
            .delays();
        let mut ack = Some(ack);
        // An attempt's ack timeout counts from when it was sent, not from when it is awaited:
        // a batch awaits its acks one after the other, and after a failover every one still
        // pending has been waiting as long as the first. Counted from the await, each would
        // wait its own full timeout in turn, and publishing would stall for the sum.
        let mut sent = started;
        loop {
            let error: BoxError = match ack.take() {
                Some(ack) => {
                    let attempt_deadline = (sent + self.ack_timeout).min(deadline);
                    match tokio::time::timeout_at(attempt_deadline, ack).await {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(e)) if !retryable(e.kind()) => {
                            return Err(BusError::NotConfirmed(e.into()));
                        }
                        Ok(Err(e)) => {
                            // Answered at once: give the cluster a moment to elect.
                            pause_before_retry(&mut pauses, deadline).await;
                            e.into()
                        }
                        Err(_elapsed) => format!(
                            "no ack within {:?}",
                            attempt_deadline.saturating_duration_since(sent)
                        )
                        .into(),
                    }
                }
                None => {
                    pause_before_retry(&mut pauses, deadline).await;
                    "not sent".into()
                }
            };
            if Instant::now() >= deadline {
                return Err(BusError::NotConfirmed(error));
            }
            tracing::debug!(id, %error, "publishing again after an unconfirmed publish");
            sent = Instant::now();
            match republish().await {
                Ok(next) => ack = Some(next),
                Err(BusError::NotConfirmed(_)) => {}
                Err(other) => return Err(other),
            }
        }
    }
}

/// Whether publishing the same message again may succeed: everything but a message the
/// server can never take.
fn retryable(kind: PublishErrorKind) -> bool {
    !matches!(kind, PublishErrorKind::MaxPayloadExceeded)
}

/// Sleeps the next of `pauses` (doubling from [`FIRST_RETRY_PAUSE`] up to
/// [`MAX_RETRY_PAUSE`], no jitter), or until `deadline`.
async fn pause_before_retry(pauses: &mut Delays, deadline: Instant) {
    let pause = pauses.next().unwrap_or(MAX_RETRY_PAUSE);
    tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
}
