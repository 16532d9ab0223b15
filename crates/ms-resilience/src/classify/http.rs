//! HTTP responses: 5xx and transport errors fail, 429 as configured, `Retry-After` honoured.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Response, StatusCode, header::RETRY_AFTER};
use tower_http::classify::{
    ClassifiedResponse, ClassifyResponse, NeverClassifyEos, StatusInRangeAsFailures,
    StatusInRangeFailureClass,
};

use super::{Classify, Outcome, RetryHint, classify_error, error_hint};

/// How a `429 Too Many Requests` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TooManyRequests {
    /// A retryable failure: the server is shedding load, so the breaker counts it and the
    /// retry layer waits for `Retry-After` before trying again.
    #[default]
    RetryableFailure,
    /// A success: the server is healthy and only this caller is over its quota, so the breaker
    /// ignores it and nothing is retried.
    Success,
}

/// Classifies `http::Response`s and the errors of an HTTP client (hyper, hyper-util, axum).
///
/// ```
/// use http::{Response, StatusCode};
/// use ms_resilience::classify::{Classify, HttpClassifier, Outcome, RetryHint, TooManyRequests};
/// use std::time::Duration;
///
/// let classifier = HttpClassifier::new();
/// let answer = |status: u16| -> Result<Response<()>, std::io::Error> {
///     Ok(Response::builder().status(status).header("retry-after", "3").body(()).unwrap())
/// };
/// assert_eq!(classifier.classify(&answer(200)), Outcome::Success);
/// assert_eq!(classifier.classify(&answer(404)), Outcome::Success);
/// assert_eq!(classifier.classify(&answer(503)), Outcome::Failure { retryable: true });
/// assert_eq!(classifier.classify(&answer(501)), Outcome::Failure { retryable: false });
/// assert_eq!(classifier.retry_hint(&answer(503)), RetryHint::After(Duration::from_secs(3)));
///
/// let quota = classifier.too_many_requests(TooManyRequests::Success);
/// assert_eq!(quota.classify(&answer(429)), Outcome::Success);
/// ```
///
/// Which statuses fail comes from tower-http's `StatusInRangeAsFailures` over `500..=599`, so
/// this agrees with tower-http's `TraceLayer` configured the same way. Every 5xx is retryable
/// except `501 Not Implemented` and `505 HTTP Version Not Supported`, which will not change on
/// a second try. Errors (connection refused or reset, timeouts) are retryable failures, except
/// this crate's own errors that say otherwise (see [`classify_error`]). Whether the *request*
/// may be repeated (its method is idempotent) is the retry layer's decision, not this one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HttpClassifier {
    too_many_requests: TooManyRequests,
}

impl HttpClassifier {
    /// 5xx and errors fail; 429 is a retryable failure.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how `429 Too Many Requests` counts.
    #[must_use]
    pub fn too_many_requests(mut self, how: TooManyRequests) -> Self {
        self.too_many_requests = how;
        self
    }

    fn classify_status(self, status: StatusCode) -> Outcome {
        if status == StatusCode::TOO_MANY_REQUESTS {
            return match self.too_many_requests {
                TooManyRequests::RetryableFailure => Outcome::Failure { retryable: true },
                TooManyRequests::Success => Outcome::Success,
            };
        }
        Outcome::Success
    }
}

impl<B, E: 'static> Classify<Response<B>, E> for HttpClassifier {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        let response = match result {
            Ok(response) => response,
            Err(error) => return classify_error(error),
        };
        match StatusInRangeAsFailures::new(500..=599).classify_response(response) {
            ClassifiedResponse::Ready(Err(_)) => Outcome::Failure {
                retryable: !matches!(
                    response.status(),
                    StatusCode::NOT_IMPLEMENTED | StatusCode::HTTP_VERSION_NOT_SUPPORTED
                ),
            },
            _ => self.classify_status(response.status()),
        }
    }

    fn retry_hint(&self, result: &Result<Response<B>, E>) -> RetryHint {
        match result {
            Ok(response) => retry_after(response.headers(), SystemTime::now()),
            Err(_) => error_hint(result),
        }
    }
}

/// Reads `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date, relative to `now`.
/// A malformed value is no hint at all (the backoff schedule applies); a date in the past means
/// "now".
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> RetryHint {
    let Some(value) = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()) else {
        return RetryHint::None;
    };
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return RetryHint::After(Duration::from_secs(seconds));
    }
    match httpdate::parse_http_date(value) {
        Ok(when) => RetryHint::After(when.duration_since(now).unwrap_or(Duration::ZERO)),
        Err(_) => RetryHint::None,
    }
}

/// tower-http's kind of classifier, with the same rule: a 5xx fails, and a 429 unless
/// [`TooManyRequests::Success`].
impl ClassifyResponse for HttpClassifier {
    type FailureClass = StatusInRangeFailureClass;
    type ClassifyEos = NeverClassifyEos<StatusInRangeFailureClass>;

    fn classify_response<B>(
        self,
        response: &Response<B>,
    ) -> ClassifiedResponse<Self::FailureClass, Self::ClassifyEos> {
        let status = response.status();
        if status.is_server_error() || self.classify_status(status).is_failure() {
            ClassifiedResponse::Ready(Err(StatusInRangeFailureClass::StatusCode(status)))
        } else {
            ClassifiedResponse::Ready(Ok(()))
        }
    }

    fn classify_error<E: std::fmt::Display + 'static>(self, error: &E) -> Self::FailureClass {
        StatusInRangeFailureClass::Error(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, value.parse().unwrap());
        headers
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_ignores_garbage() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            retry_after(&headers("120"), now),
            RetryHint::After(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after(&headers("Wed, 21 Oct 2015 07:28:30 GMT"), now),
            RetryHint::After(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(&headers("Wed, 21 Oct 2015 07:27:00 GMT"), now),
            RetryHint::After(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers("-5"), now), RetryHint::None);
        assert_eq!(retry_after(&headers("soon"), now), RetryHint::None);
        assert_eq!(retry_after(&HeaderMap::new(), now), RetryHint::None);
    }

    #[test]
    fn as_a_tower_http_classifier_it_agrees_with_classify() {
        for (status, how) in [
            (200, TooManyRequests::RetryableFailure),
            (404, TooManyRequests::RetryableFailure),
            (429, TooManyRequests::RetryableFailure),
            (429, TooManyRequests::Success),
            (500, TooManyRequests::RetryableFailure),
            (501, TooManyRequests::Success),
        ] {
            let c = HttpClassifier::new().too_many_requests(how);
            let response = Response::builder().status(status).body(()).unwrap();
            let tower = matches!(
                c.classify_response(&response),
                ClassifiedResponse::Ready(Err(_))
            );
            let ours = c.classify(&Ok::<_, std::io::Error>(response)).is_failure();
            assert_eq!(tower, ours, "{status} {how:?}");
        }
    }

    #[test]
    fn transport_errors_fail_retryably_and_429_is_configurable() {
        let c = HttpClassifier::new();
        let refused: Result<Response<()>, std::io::Error> =
            Err(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(c.classify(&refused), Outcome::Failure { retryable: true });
        let too_many: Result<Response<()>, std::io::Error> =
            Ok(Response::builder().status(429).body(()).unwrap());
        assert_eq!(c.classify(&too_many), Outcome::Failure { retryable: true });
        assert_eq!(
            c.too_many_requests(TooManyRequests::Success)
                .classify(&too_many),
            Outcome::Success
        );
        for ok in [200, 201, 301, 400, 401, 404, 409] {
            let r: Result<Response<()>, std::io::Error> =
                Ok(Response::builder().status(ok).body(()).unwrap());
            assert_eq!(c.classify(&r), Outcome::Success, "{ok}");
        }
    }
}
