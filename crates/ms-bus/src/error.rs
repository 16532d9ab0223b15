//! The bus's error type for publishing, subscribing and acknowledging.

/// A boxed error, as handlers and brokers return them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a bus operation failed. Each variant says what the caller can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// A topic, destination or group name is not valid for the bus (see
    /// [`validate_name`](crate::validate_name)); fix the name.
    #[error("`{name}` is not a valid bus name: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The broker is unreachable or the connection dropped; the operation may be retried
    /// (a publish that failed this way was not confirmed, so republishing is safe: the
    /// envelope's [`dedup_key`](crate::Envelope::dedup_key), its source and id, is what the
    /// broker deduplicates by where it does).
    #[error("broker connection: {0}")]
    Connection(#[source] BoxError),
    /// The broker refused or did not confirm a publish (nack, no stream for the subject,
    /// confirm timeout). The message must be considered not sent.
    #[error("publish not confirmed: {0}")]
    NotConfirmed(#[source] BoxError),
    /// Acknowledging a delivery failed; the broker will redeliver the message, so handlers
    /// must be idempotent (they must be anyway: delivery is at least once).
    #[error("acknowledgement failed: {0}")]
    Ack(#[source] BoxError),
    /// The envelope cannot be written on this transport (a header value the protocol cannot
    /// carry). Publishing it again fails again: change the envelope, or set it aside.
    #[error("the envelope cannot be encoded for this transport: {0}")]
    Unencodable(String),
    /// The bus (or the consumer) was shut down.
    #[error("the bus is closed")]
    Closed,
    /// Any other broker error (setting up streams, queues, consumers).
    #[error("broker: {0}")]
    Broker(#[source] BoxError),
}

impl BusError {
    /// Wraps any error as [`BusError::Broker`].
    pub fn broker(error: impl Into<BoxError>) -> Self {
        Self::Broker(error.into())
    }

    /// Whether the same operation could succeed if tried again: everything but an invalid
    /// name and an envelope the transport cannot carry, which fail the same way every time
    /// (set the message aside instead).
    ///
    /// ```
    /// use ms_bus::BusError;
    /// assert!(BusError::Closed.is_retryable());
    /// assert!(!BusError::Unencodable("a header with a newline".into()).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::InvalidName { .. } | Self::Unencodable(_))
    }

    /// Whether the broker could not be reached or the bus was closed: the failure says
    /// nothing about the message (a relay does not count it against the message).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Connection(_) | Self::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::BusError;

    #[test]
    fn only_the_message_s_own_faults_are_not_retryable() {
        let invalid = BusError::InvalidName {
            name: "a b".into(),
            reason: "space",
        };
        assert!(!invalid.is_retryable());
        assert!(!BusError::Unencodable("x".into()).is_retryable());
        for error in [
            BusError::Connection("down".into()),
            BusError::NotConfirmed("nack".into()),
            BusError::Ack("gone".into()),
            BusError::Closed,
            BusError::broker("no stream"),
        ] {
            assert!(error.is_retryable(), "{error}");
        }
        assert!(BusError::Closed.is_unavailable());
        assert!(BusError::Connection("down".into()).is_unavailable());
        assert!(!BusError::NotConfirmed("nack".into()).is_unavailable());
        assert!(!invalid.is_unavailable());
    }
}
