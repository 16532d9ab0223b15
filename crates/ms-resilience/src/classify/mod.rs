//! Deciding what an outcome means: a success, a failure the circuit breaker counts, and whether
//! retrying could help. One classifier serves the breaker and the retry layer, so both agree.
//!
//! ```
//! use ms_resilience::classify::{Classify, ErrorsAsFailures, Outcome};
//! use ms_resilience::{BoxError, Error};
//! use std::time::Duration;
//!
//! let classifier = ErrorsAsFailures;
//! let ok: Result<u32, BoxError> = Ok(7);
//! assert_eq!(classifier.classify(&ok), Outcome::Success);
//!
//! // Our own errors say whether they are retryable; any other error is a retryable failure.
//! let timeout: Result<u32, BoxError> = Err(Error::Timeout { after: Duration::from_secs(1) }.into());
//! assert_eq!(classifier.classify(&timeout), Outcome::Failure { retryable: true });
//! let io: Result<u32, std::io::Error> = Err(std::io::ErrorKind::ConnectionReset.into());
//! assert_eq!(classifier.classify(&io), Outcome::Failure { retryable: true });
//! ```
//!
//! The HTTP and gRPC classifiers ([`HttpClassifier`], [`GrpcClassifier`]) are built on
//! tower-http's [`classify`](tower_http::classify) module (`StatusInRangeAsFailures`,
//! `GrpcErrorsAsFailures`), so a response the breaker counts as failed is the response
//! tower-http's `TraceLayer` logs as failed. They add what tower-http leaves out: which failures
//! are worth retrying, and the server's own retry hints (`Retry-After`,
//! `grpc-retry-pushback-ms`). Slow calls are not the classifier's business: the breaker times
//! calls itself.
//!
//! Both also implement tower-http's own [`ClassifyResponse`](tower_http::classify::ClassifyResponse),
//! so the very classifier a breaker uses can be handed to anything that takes tower-http's
//! kind, such as tower-http's `TraceLayer` or ms-tracing's trace layers: a span, a metric's
//! `error.type` and the breaker then agree on what failed.

mod grpc;
mod grpc_codes;
mod http;

pub use self::grpc::GrpcClassifier;
pub use self::grpc_codes::grpc_code_name;
pub use self::http::{HttpClassifier, TooManyRequests};

use std::time::Duration;

use crate::Error;

/// What one call's result means to the resilience layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The service did its job (this includes answers such as HTTP 404 that are the caller's
    /// problem, not the service's). Counts as a success in the breaker; never retried.
    Success,
    /// The service failed. Counts as a failure in the breaker; retried only if `retryable`.
    Failure {
        /// Whether another attempt could succeed (the request was not processed, or repeating
        /// it is harmless and the failure is transient).
        retryable: bool,
    },
    /// Says nothing about the service's health (for example our own rate limiter refused the
    /// call before it left the process). The breaker does not count it; never retried.
    Ignored,
}

impl Outcome {
    /// Whether the breaker counts this outcome as a failure.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failure { .. })
    }

    /// Whether the retry layer may try again.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Failure { retryable: true })
    }
}

/// When the server asked us to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetryHint {
    /// The server said nothing: use the backoff schedule.
    #[default]
    None,
    /// Wait at least this long (HTTP `Retry-After`, gRPC `grpc-retry-pushback-ms`).
    After(Duration),
    /// The server asked us not to retry (a negative or malformed `grpc-retry-pushback-ms`,
    /// as gRFC A6 specifies).
    DoNotRetry,
}

/// Classifies the result of one call. Implemented for any `Fn(&Result<Res, E>) -> Outcome`.
///
/// Classifiers are cloned into each response future, so keep them small (a few flags).
pub trait Classify<Res, E> {
    /// What the result means.
    fn classify(&self, result: &Result<Res, E>) -> Outcome;

    /// The server's retry hint, if any. The default reads none.
    fn retry_hint(&self, result: &Result<Res, E>) -> RetryHint {
        let _ = result;
        RetryHint::None
    }
}

impl<Res, E, F> Classify<Res, E> for F
where
    F: Fn(&Result<Res, E>) -> Outcome,
{
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        self(result)
    }
}

/// Every `Ok` is a success and every `Err` a failure. Errors from this crate's layers are
/// classified by [`classify_error`]; all other errors are retryable failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorsAsFailures;

impl<Res, E: 'static> Classify<Res, E> for ErrorsAsFailures {
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(error) => classify_error(error),
        }
    }

    fn retry_hint(&self, result: &Result<Res, E>) -> RetryHint {
        error_hint(result)
    }
}

/// How an error (not a response) counts: our own [`Error`]s say whether they are retryable;
/// a [`CircuitOpen`](Error::CircuitOpen) or [`RateLimited`](Error::RateLimited) from a layer
/// further in is [`Ignored`](Outcome::Ignored), because the remote service never saw the
/// call. Any other error (connection refused, reset, TLS, ...) is a retryable failure.
pub fn classify_error<E: 'static>(error: &E) -> Outcome {
    match Error::find_in(error) {
        Some(Error::CircuitOpen { .. } | Error::RateLimited { .. }) => Outcome::Ignored,
        Some(ours) => Outcome::Failure {
            retryable: ours.is_retryable(),
        },
        None => Outcome::Failure { retryable: true },
    }
}

fn error_hint<Res, E: 'static>(result: &Result<Res, E>) -> RetryHint {
    match result {
        Err(error) => match Error::find_in(error).and_then(Error::retry_after) {
            Some(after) => RetryHint::After(after),
            None => RetryHint::None,
        },
        Ok(_) => RetryHint::None,
    }
}
