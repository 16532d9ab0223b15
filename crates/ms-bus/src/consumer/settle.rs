//! What becomes of a handled message: the decision (ack, retry after a delay, dead letter)
//! and carrying it out on the broker, or, for a retry in a key's lane, waiting it out.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Outcome, Reject, RetryPolicy};
use crate::{Acker, BoxError, DeliveryInfo, Envelope, LogPosition};

/// The longest a lane waits between two `in_progress` signals while a message waits for its
/// retry, whatever the ack deadline: a deadline the runtime does not know (zero, say) is
/// still kept alive.
const MAX_HEARTBEAT: Duration = Duration::from_secs(10);
/// The shortest pause between two `in_progress` signals.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// What to do with a message the handler is done with.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decision {
    Ack,
    Retry(Duration),
    DeadLetter(String),
}

/// The decision for a handler's `result` on delivery `attempt`.
pub(super) fn decide(
    retry: RetryPolicy,
    attempt: u32,
    result: Result<Outcome, BoxError>,
) -> Decision {
    match result {
        Ok(Outcome::Ack) => Decision::Ack,
        Ok(Outcome::RetryAfter(delay)) if !retry.gives_up(attempt) => Decision::Retry(delay),
        Ok(Outcome::RetryAfter(_)) => Decision::DeadLetter(format!(
            "handler asked for a retry on delivery {attempt}, the maximum"
        )),
        Ok(Outcome::DeadLetter(reason)) => Decision::DeadLetter(reason),
        Err(error) if error.is::<Reject>() || retry.gives_up(attempt) => {
            Decision::DeadLetter(error_chain(&*error))
        }
        Err(error) => {
            tracing::debug!(error = %error_chain(&*error), attempt, "handler failed; retrying");
            Decision::Retry(retry.delay(attempt))
        }
    }
}

/// A message on its way through its lane: what the handler is called with, again on a retry.
pub(super) struct Attempt {
    pub(super) envelope: Arc<Envelope>,
    pub(super) info: Arc<DeliveryInfo>,
    pub(super) acker: Arc<dyn Acker>,
    /// The ordering key whose lane it holds; `None` outside the lanes (ordering off, or a
    /// message that did not decode).
    pub(super) key: Option<String>,
    /// Where it sits in a partitioned log (Kafka), for the span.
    pub(super) position: Option<LogPosition>,
}

impl Attempt {
    /// The same message for its next delivery, counted by the runtime.
    fn next(self) -> Self {
        let mut info = Arc::unwrap_or_clone(self.info);
        info.attempt = info.attempt.saturating_add(1);
        Self {
            info: Arc::new(info),
            ..self
        }
    }
}

/// How an in-flight message ends for the run loop.
pub(super) enum Step {
    /// Settled on the broker: the lane of the key (if any) moves on.
    Settled(Option<String>),
    /// Waited out its retry delay in its lane: call the handler again (the lane stays held).
    Again(Attempt),
}

/// Carries out `decision` for `attempt`. A retry of a message in a lane waits in the lane,
/// keeping the broker's deadline alive every half `ack_wait`, and comes back as
/// [`Step::Again`]; if the consumer stops meanwhile, the broker retries it after what is left
/// of the delay. Outside a lane, a retry is the broker's ([`Acker::retry`]).
pub(super) async fn conclude(
    attempt: Attempt,
    decision: Decision,
    ack_wait: Duration,
    mut stopping: watch::Receiver<bool>,
) -> Step {
    let acker = &*attempt.acker;
    let info = &*attempt.info;
    let settled = match decision {
        Decision::Ack => acker.ack().await,
        Decision::DeadLetter(reason) => {
            dead_letter(acker, info, &reason).await;
            return Step::Settled(attempt.key);
        }
        Decision::Retry(delay) if attempt.key.is_some() => {
            let heartbeat = (ack_wait / 2).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT);
            match wait_in_lane(acker, delay, heartbeat, &mut stopping).await {
                None => return Step::Again(attempt.next()),
                Some(left) => acker.retry(left).await,
            }
        }
        Decision::Retry(delay) => acker.retry(delay).await,
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, origin = %info.origin, "settling a message failed; the broker redelivers it");
    }
    Step::Settled(attempt.key)
}

/// Waits `delay`, telling the broker every `heartbeat` that the message is still being
/// worked on. Returns what is left of the delay if the consumer stops first.
async fn wait_in_lane(
    acker: &dyn Acker,
    delay: Duration,
    heartbeat: Duration,
    stopping: &mut watch::Receiver<bool>,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let left = delay.saturating_sub(start.elapsed());
        if left.is_zero() {
            return None;
        }
        tokio::select! {
            // The guard `wait_for` returns is not `Send`: dropped inside.
            () = async { drop(stopping.wait_for(|stop| *stop).await) } => return Some(left),
            () = tokio::time::sleep(left.min(heartbeat)) => {
                if left > heartbeat
                    && let Err(e) = acker.in_progress().await
                {
                    tracing::debug!(error = %e, "extending the deadline of a message waiting for its retry failed");
                }
            }
        }
    }
}

/// Dead-letters with `reason`, recording the runtime's count of deliveries.
pub(super) async fn dead_letter(acker: &dyn Acker, info: &DeliveryInfo, reason: &str) {
    tracing::warn!(origin = %info.origin, attempt = info.attempt, reason, "dead-lettering a message");
    if let Err(e) = acker.dead_letter_after(reason, info.attempt).await {
        tracing::warn!(error = %e, origin = %info.origin, "dead-lettering failed; the broker redelivers the message");
    }
}

/// An error and its sources, `outer: inner: root`.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_retry_until_the_maximum_then_dead_letter() {
        let retry = RetryPolicy::default()
            .max_deliveries(3)
            .initial_delay(Duration::from_millis(10));
        assert!(matches!(
            decide(retry, 1, Err("boom".into())),
            Decision::Retry(_)
        ));
        assert_eq!(
            decide(retry, 3, Err("boom".into())),
            Decision::DeadLetter("boom".to_owned())
        );
        assert_eq!(
            decide(retry, 1, Err(Reject::new("bad").into())),
            Decision::DeadLetter("rejected: bad".to_owned())
        );
        assert_eq!(
            decide(retry, 2, Ok(Outcome::RetryAfter(Duration::from_secs(7)))),
            Decision::Retry(Duration::from_secs(7))
        );
        assert!(matches!(
            decide(retry, 3, Ok(Outcome::RetryAfter(Duration::from_secs(7)))),
            Decision::DeadLetter(_)
        ));
        assert_eq!(decide(retry, 1, Ok(Outcome::Ack)), Decision::Ack);
    }
}
