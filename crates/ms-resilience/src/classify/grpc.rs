//! gRPC responses at the HTTP level (what a tonic `Channel` sees): status codes from the
//! `grpc-status` header, `grpc-retry-pushback-ms` honoured.

use std::time::Duration;

use http::{HeaderMap, Response};
use tower_http::classify::{
    ClassifiedResponse, ClassifyResponse, GrpcCode, GrpcEosErrorsAsFailures, GrpcErrorsAsFailures,
    GrpcFailureClass,
};

use super::grpc_codes::{GRPC_CODES, SERVER_FAULT_CODES};
use super::{Classify, Outcome, RetryHint, classify_error, error_hint};

/// Codes that say the server (not the request) is in trouble.
const DEFAULT_FAILURE_CODES: [GrpcCode; 4] = [
    GrpcCode::Unavailable,
    GrpcCode::DeadlineExceeded,
    GrpcCode::ResourceExhausted,
    GrpcCode::Internal,
];

/// The header a gRPC server uses to tell a client when to retry (gRFC A6).
const PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

fn bit(code: GrpcCode) -> u32 {
    1 << (code as u32)
}

/// Classifies gRPC calls made over HTTP/2 (`http::Response` from a tonic `Channel` or any
/// tower gRPC client).
///
/// ```
/// use http::Response;
/// use ms_resilience::classify::{Classify, GrpcClassifier, Outcome, RetryHint};
/// use std::time::Duration;
///
/// let grpc = GrpcClassifier::new();
/// let status = |code: &str| -> Result<Response<()>, std::io::Error> {
///     Ok(Response::builder()
///         .header("grpc-status", code)
///         .header("grpc-retry-pushback-ms", "250")
///         .body(())
///         .unwrap())
/// };
/// assert_eq!(grpc.classify(&status("0")), Outcome::Success);
/// assert_eq!(grpc.classify(&status("14")), Outcome::Failure { retryable: true }); // UNAVAILABLE
/// assert_eq!(grpc.classify(&status("13")), Outcome::Failure { retryable: false }); // INTERNAL
/// assert_eq!(grpc.classify(&status("3")), Outcome::Success); // INVALID_ARGUMENT: the caller's fault
/// assert_eq!(grpc.retry_hint(&status("14")), RetryHint::After(Duration::from_millis(250)));
/// ```
///
/// Failures by default: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL`.
/// Every other code (`INVALID_ARGUMENT`, `NOT_FOUND`, `PERMISSION_DENIED`, ...) is the caller's
/// problem and counts as a success for the breaker. Retryable by default: `UNAVAILABLE` only,
/// the one code gRPC promises means "not processed, try again"; add others with
/// [`retry_on`](Self::retry_on).
///
/// The code is read from the response head with tower-http's `GrpcErrorsAsFailures`. A
/// handler's error reaches the client as a "trailers-only" response whose head carries
/// `grpc-status`, so unary failures are seen here. A status sent in trailers after a streamed
/// body is not: the response counts as a success when its head arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcClassifier {
    failures: u32,
    retryable: u32,
}

impl Default for GrpcClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcClassifier {
    /// The default failure and retryable codes (see the type's docs).
    pub fn new() -> Self {
        Self {
            failures: DEFAULT_FAILURE_CODES.iter().fold(0, |m, c| m | bit(*c)),
            retryable: bit(GrpcCode::Unavailable),
        }
    }

    /// Also counts `code` as a failure.
    #[must_use]
    pub fn fail_on(mut self, code: GrpcCode) -> Self {
        if code != GrpcCode::Ok {
            self.failures |= bit(code);
        }
        self
    }

    /// Counts `code` as a success (it no longer opens the breaker nor is retried).
    #[must_use]
    pub fn succeed_on(mut self, code: GrpcCode) -> Self {
        self.failures &= !bit(code);
        self.retryable &= !bit(code);
        self
    }

    /// Makes `code` a retryable failure.
    #[must_use]
    pub fn retry_on(mut self, code: GrpcCode) -> Self {
        self = self.fail_on(code);
        self.retryable |= bit(code);
        self
    }

    /// Failures: the codes OpenTelemetry's conventions count as a server span's errors
    /// (`UNKNOWN`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`,
    /// `DATA_LOSS`); the other codes are the caller's doing. Retryable: `UNAVAILABLE`. The
    /// default of ms-tracing's server spans.
    pub fn server_faults() -> Self {
        Self {
            failures: SERVER_FAULT_CODES.iter().fold(0, |m, c| m | bit(*c)),
            retryable: bit(GrpcCode::Unavailable),
        }
    }

    fn tower_http(self) -> GrpcErrorsAsFailures {
        GRPC_CODES
            .iter()
            .map(|(code, _)| code)
            .filter(|code| self.failures & bit(**code) == 0)
            .fold(GrpcErrorsAsFailures::new(), |c, code| c.with_success(*code))
    }
}

impl<B, E: 'static> Classify<Response<B>, E> for GrpcClassifier {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        let response = match result {
            Ok(response) => response,
            Err(error) => return classify_error(error),
        };
        match self.tower_http().classify_response(response) {
            ClassifiedResponse::Ready(Err(GrpcFailureClass::Status(status))) => {
                let raw = status.code_raw();
                let retryable = u32::try_from(raw)
                    .ok()
                    .and_then(|raw| 1u32.checked_shl(raw))
                    .is_some_and(|b| self.retryable & b != 0);
                Outcome::Failure { retryable }
            }
            // A malformed status (non-exhaustive: future variants too) is a failure we do not
            // understand, so not one to repeat.
            ClassifiedResponse::Ready(Err(_)) => Outcome::Failure { retryable: false },
            ClassifiedResponse::Ready(Ok(())) | ClassifiedResponse::RequiresEos(_) => {
                Outcome::Success
            }
        }
    }

    fn retry_hint(&self, result: &Result<Response<B>, E>) -> RetryHint {
        match result {
            Ok(response) => pushback(response.headers()),
            Err(_) => error_hint(result),
        }
    }
}

/// Reads `grpc-retry-pushback-ms`: a non-negative integer is a delay; a negative or malformed
/// value means "do not retry" (gRFC A6).
pub(crate) fn pushback(headers: &HeaderMap) -> RetryHint {
    let Some(value) = headers.get(PUSHBACK_HEADER) else {
        return RetryHint::None;
    };
    match value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
    {
        Some(ms) if ms >= 0 => RetryHint::After(Duration::from_millis(ms.unsigned_abs())),
        _ => RetryHint::DoNotRetry,
    }
}

/// tower-http's kind of classifier, with the same failure codes: a streamed response's status
/// in the trailers is classified too (which [`Classify`] cannot see).
impl ClassifyResponse for GrpcClassifier {
    type FailureClass = GrpcFailureClass;
    type ClassifyEos = GrpcEosErrorsAsFailures;

    fn classify_response<B>(
        self,
        response: &Response<B>,
    ) -> ClassifiedResponse<Self::FailureClass, Self::ClassifyEos> {
        self.tower_http().classify_response(response)
    }

    fn classify_error<E: std::fmt::Display + 'static>(self, error: &E) -> Self::FailureClass {
        GrpcFailureClass::Error(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::unnecessary_wraps)] // The shape `Classify` takes.
    fn with(code: &str) -> Result<Response<()>, std::io::Error> {
        Ok(Response::builder()
            .header("grpc-status", code)
            .body(())
            .unwrap())
    }

    #[test]
    fn the_four_server_codes_fail_and_caller_codes_do_not() {
        let c = GrpcClassifier::new();
        for code in ["14", "4", "8", "13"] {
            assert!(c.classify(&with(code)).is_failure(), "{code}");
        }
        for code in ["0", "1", "3", "5", "6", "7", "9", "12", "16"] {
            assert_eq!(c.classify(&with(code)), Outcome::Success, "{code}");
        }
        // No grpc-status in the head: the status comes in trailers after the body.
        let streaming: Result<Response<()>, std::io::Error> = Ok(Response::new(()));
        assert_eq!(c.classify(&streaming), Outcome::Success);
    }

    #[test]
    fn codes_can_be_reconfigured() {
        let c = GrpcClassifier::new()
            .retry_on(GrpcCode::ResourceExhausted)
            .succeed_on(GrpcCode::Internal)
            .fail_on(GrpcCode::DataLoss);
        assert_eq!(c.classify(&with("8")), Outcome::Failure { retryable: true });
        assert_eq!(c.classify(&with("13")), Outcome::Success);
        assert_eq!(
            c.classify(&with("15")),
            Outcome::Failure { retryable: false }
        );
    }

    #[test]
    fn as_a_tower_http_classifier_it_reads_the_trailers_too() {
        use tower_http::classify::ClassifyEos as _;
        let trailers = |code: &str| {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", code.parse().unwrap());
            trailers
        };
        let head = with("13").unwrap();
        assert!(matches!(
            GrpcClassifier::new().classify_response(&head),
            ClassifiedResponse::Ready(Err(_))
        ));
        let ClassifiedResponse::RequiresEos(eos) =
            GrpcClassifier::server_faults().classify_response(&Response::new(()))
        else {
            panic!("a response without grpc-status waits for its trailers");
        };
        assert!(eos.clone().classify_eos(Some(&trailers("12"))).is_err()); // UNIMPLEMENTED
        assert!(eos.classify_eos(Some(&trailers("5"))).is_ok()); // NOT_FOUND: the caller's
        // The breaker's default does not count UNIMPLEMENTED; the server spans' default does.
        assert_eq!(
            GrpcClassifier::new().classify(&with("12")),
            Outcome::Success
        );
        assert!(
            GrpcClassifier::server_faults()
                .classify(&with("12"))
                .is_failure()
        );
    }

    #[test]
    fn pushback_is_a_delay_or_a_refusal() {
        let mut h = HeaderMap::new();
        assert_eq!(pushback(&h), RetryHint::None);
        h.insert(PUSHBACK_HEADER, "100".parse().unwrap());
        assert_eq!(pushback(&h), RetryHint::After(Duration::from_millis(100)));
        h.insert(PUSHBACK_HEADER, "-1".parse().unwrap());
        assert_eq!(pushback(&h), RetryHint::DoNotRetry);
        h.insert(PUSHBACK_HEADER, "later".parse().unwrap());
        assert_eq!(pushback(&h), RetryHint::DoNotRetry);
    }
}
