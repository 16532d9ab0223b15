//! The bus's metrics (feature `metrics`), recorded through ms-tracing's [`ms_tracing::metrics`]
//! (one set of names and labels for the family, OpenTelemetry's messaging conventions):
//!
//! | metric | when | labels |
//! |---|---|---|
//! | `messaging.process.duration` (histogram, s) | a handler finished with a message (the consumer runtime) | `messaging.system`, `messaging.destination.name` (the topic or destination), `messaging.operation.name` = `process`, `error.type`: `retry`, `dead_letter`, `rejected` or `handler_error` (an `Err` or a panic) |
//! | `messaging.client.sent.messages` (counter) | a publish or send returned (after the broker's confirmation) | `messaging.system`, `messaging.destination.name`, `messaging.operation.name` = `send`, `error.type`: the [`BusError`] kind (`not_confirmed`, `connection`, …) |
//!
//! `messaging.system` is the adapter's ([`Subscriber::messaging_system`](crate::Subscriber::messaging_system)):
//! `nats`, `rabbitmq`, `memory`. Nothing is recorded until the application installs a
//! `metrics` recorder; without the feature these hooks compile to nothing.

use crate::consumer::{Outcome, Reject};
use crate::{BoxError, BusError};

/// A message being processed; [`Processing::finish`] records how long it took.
pub(crate) struct Processing {
    #[cfg(feature = "metrics")]
    start: std::time::Instant,
}

impl Processing {
    pub(crate) fn start() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            start: std::time::Instant::now(),
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables, clippy::unused_self))]
    pub(crate) fn finish(
        self,
        system: &'static str,
        origin: &str,
        result: &Result<Outcome, BoxError>,
    ) {
        #[cfg(feature = "metrics")]
        ms_tracing::metrics::record_process(
            system,
            origin,
            self.start.elapsed(),
            process_error_type(result),
        );
    }
}

/// Counts `count` messages sent to `destination`, with the error the publish ended with.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn sent(
    system: &'static str,
    destination: &str,
    count: usize,
    error: Option<&BusError>,
) {
    #[cfg(feature = "metrics")]
    ms_tracing::metrics::count_sent(
        system,
        destination,
        u64::try_from(count).unwrap_or(u64::MAX),
        error.map(sent_error_type),
    );
}

#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn process_error_type(result: &Result<Outcome, BoxError>) -> Option<&'static str> {
    match result {
        Ok(Outcome::Ack) => None,
        Ok(Outcome::RetryAfter(_)) => Some("retry"),
        Ok(Outcome::DeadLetter(_)) => Some("dead_letter"),
        Err(error) if error.is::<Reject>() => Some("rejected"),
        Err(_) => Some("handler_error"),
    }
}

#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn sent_error_type(error: &BusError) -> &'static str {
    match error {
        BusError::InvalidName { .. } => "invalid_name",
        BusError::Connection(_) => "connection",
        BusError::NotConfirmed(_) => "not_confirmed",
        BusError::Ack(_) => "ack",
        BusError::Unencodable(_) => "unencodable",
        BusError::Closed => "closed",
        BusError::Broker(_) => "broker",
    }
}
