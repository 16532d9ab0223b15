//! What a handler decides about a message: the one ack model.

use std::time::Duration;

/// How a handler settles a message. A handler's `Ok(())` is [`Outcome::Ack`]; its `Err` is
/// retried by the [`RetryPolicy`](crate::consumer::RetryPolicy) until the maximum number of deliveries,
/// then dead-lettered with the error as the reason ([`Reject`] dead-letters at once).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Outcome {
    /// Done: the broker forgets the message.
    #[default]
    Ack,
    /// Deliver it again after this delay (still bounded by the maximum number of deliveries).
    RetryAfter(Duration),
    /// Move it to the dead-letter destination with this reason.
    DeadLetter(String),
}

impl From<()> for Outcome {
    fn from((): ()) -> Self {
        Outcome::Ack
    }
}

/// A handler error that must not be retried (the message is invalid for this handler, not
/// the world temporarily broken): the message goes to the dead letter at once, with this
/// error as the reason.
///
/// ```
/// use ms_bus::consumer::Reject;
/// let error: ms_bus::BoxError = Reject::new("invoice total is negative").into();
/// assert!(error.is::<Reject>());
/// ```
#[derive(Debug, thiserror::Error)]
#[error("rejected: {reason}")]
pub struct Reject {
    reason: String,
}

impl Reject {
    /// A rejection with a reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}
