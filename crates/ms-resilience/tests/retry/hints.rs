//! Server retry hints and the clock: a hint is honoured up to `max_retry_hint`, a longer one
//! ends the retries, and no hint, backoff, timeout or deadline can overflow the clock. The
//! first two tests are the inputs that once hung and panicked a client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use ms_resilience::BoxError;
use ms_resilience::classify::{Classify, GrpcClassifier, HttpClassifier, RetryHint};
use ms_resilience::retry::{DEFAULT_MAX_RETRY_HINT, HttpRequests, RetryBody, RetryLayer};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

use super::fixed;

/// Far longer than any call below may take: on the paused clock a sleep of any length ends
/// at once, so a call that waits too long shows as a timeout here rather than as a hang.
const PATIENCE: Duration = Duration::from_secs(24 * 3600);

type Body = Empty<Bytes>;

/// A server that answers every request with `status`, the header `name: value` and, for gRPC,
/// `grpc-status: 14` (`UNAVAILABLE`) on all but the answer numbered `ok_from` (1-based) and
/// later ones, which succeed.
fn server(
    status: u16,
    header: (&'static str, String),
    grpc: bool,
    ok_from: u32,
) -> (
    Arc<AtomicU32>,
    impl tower::Service<
        Request<RetryBody<Body>>,
        Response = Response<()>,
        Error = BoxError,
        Future: Send,
    > + Clone,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let service = tower::service_fn(move |_: Request<RetryBody<Body>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let (name, value) = header.clone();
        async move {
            let ok = n >= ok_from;
            let mut response = Response::builder().header(name, value);
            response = if grpc {
                response.header("grpc-status", if ok { "0" } else { "14" })
            } else {
                response.status(if ok { 200 } else { status })
            };
            Ok::<_, BoxError>(response.body(()).unwrap())
        }
    });
    (calls, service)
}

fn get() -> Request<Body> {
    Request::get("http://inventory.internal/stock")
        .body(Empty::new())
        .unwrap()
}

fn post() -> Request<Body> {
    Request::post("http://inventory.internal/grpc.Stock/Get")
        .body(Empty::new())
        .unwrap()
}

/// The first input: `UNAVAILABLE` with a pushback of about 175 million years, no
/// deadline. The client used to sleep that long.
#[tokio::test(start_paused = true)]
async fn a_pushback_of_175_million_years_returns_the_answer_at_once() {
    let pushback = ("grpc-retry-pushback-ms", "5555155555551555155".to_owned());
    let (calls, server) = server(200, pushback, true, 2);
    let service = RetryLayer::grpc()
        .backoff(fixed(Duration::from_millis(1)))
        .layer(server);
    let started = Instant::now();
    let response = tokio::time::timeout(PATIENCE, service.oneshot(post()))
        .await
        .expect("the call must not wait for the pushback")
        .unwrap();
    assert_eq!(
        response.headers()["grpc-status"],
        "14",
        "the server's answer"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not retried");
    assert_eq!(started.elapsed(), Duration::ZERO);
}

/// The second input: a 503 with `Retry-After: 18446744073709551615` (seconds), which
/// used to panic with "overflow when adding duration to instant", without a deadline and with
/// one, and with the maximum hint lifted so that only the clock's range stops it.
#[tokio::test(start_paused = true)]
async fn a_retry_after_of_u64_max_seconds_neither_panics_nor_waits() {
    let layers = [
        RetryLayer::http(),
        RetryLayer::http().deadline(Duration::from_secs(30)),
        RetryLayer::http().max_retry_hint(Duration::MAX),
        RetryLayer::http()
            .max_retry_hint(Duration::MAX)
            .deadline(Duration::from_secs(30)),
    ];
    for (n, layer) in layers.into_iter().enumerate() {
        let retry_after = ("retry-after", u64::MAX.to_string());
        let (calls, server) = server(503, retry_after, false, 2);
        let service = layer.backoff(fixed(Duration::from_millis(1))).layer(server);
        let started = Instant::now();
        let response = tokio::time::timeout(PATIENCE, service.oneshot(get()))
            .await
            .expect("the call must not wait for the hint")
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "layer {n}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "layer {n}: not retried");
        assert_eq!(started.elapsed(), Duration::ZERO, "layer {n}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_hint_up_to_the_maximum_is_waited_for_and_a_longer_one_ends_the_retries() {
    let max = Duration::from_secs(5);
    for (seconds, retried) in [(5_u64, true), (6, false)] {
        let retry_after = ("retry-after", seconds.to_string());
        let (calls, server) = server(503, retry_after, false, 2);
        let service = RetryLayer::http()
            .max_retry_hint(max)
            .backoff(fixed(Duration::from_millis(1)))
            .layer(server);
        let started = Instant::now();
        let response = service.oneshot(get()).await.unwrap();
        if retried {
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(calls.load(Ordering::SeqCst), 2);
            assert_eq!(started.elapsed(), Duration::from_secs(seconds));
        } else {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            assert_eq!(started.elapsed(), Duration::ZERO);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_default_maximum_hint_is_a_minute() {
    assert_eq!(DEFAULT_MAX_RETRY_HINT, Duration::from_secs(60));
    for (ms, retried) in [(60_000_u64, true), (60_001, false)] {
        let pushback = ("grpc-retry-pushback-ms", ms.to_string());
        let (calls, server) = server(200, pushback, true, 2);
        let service = RetryLayer::grpc().layer(server);
        let started = Instant::now();
        service.oneshot(post()).await.unwrap();
        let expected = if retried { 2 } else { 1 };
        assert_eq!(calls.load(Ordering::SeqCst), expected, "{ms} ms");
        let waited = if retried { ms } else { 0 };
        assert_eq!(started.elapsed(), Duration::from_millis(waited), "{ms} ms");
    }
}

/// Limits from configuration: a timeout or deadline too long for the clock is no limit, and a
/// backoff too long for it ends the retries, rather than panicking.
#[tokio::test(start_paused = true)]
async fn settings_too_long_for_the_clock_neither_panic_nor_hang() {
    let (calls, flaky) = server(503, ("x-none", String::new()), false, 2);
    let service = RetryLayer::http()
        .per_try_timeout(Duration::MAX)
        .deadline(Duration::MAX)
        .backoff(fixed(Duration::from_millis(1)))
        .layer(flaky);
    let response = service.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let (calls, unlucky) = server(503, ("x-none", String::new()), false, 2);
    let service = RetryLayer::http()
        .backoff(fixed(Duration::MAX))
        .layer(unlucky);
    let response = tokio::time::timeout(PATIENCE, service.oneshot(get()))
        .await
        .expect("a wait that never ends is no retry")
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Any `Retry-After` value: delay-seconds of any size, HTTP dates from 1970 to 9999, and
/// arbitrary text.
fn retry_after_values() -> impl Strategy<Value = String> {
    // httpdate formats dates up to the end of year 9999.
    let last_date = 253_402_300_799_u64;
    prop_oneof![
        any::<u64>().prop_map(|s| s.to_string()),
        (0_u64..600).prop_map(|s| s.to_string()),
        "[0-9]{19,40}",
        (0..=last_date).prop_map(|s| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s))),
        // Near now: in the past, within the maximum, just past it.
        (-600_i64..600).prop_map(|offset| {
            let now = SystemTime::now();
            let at = if offset < 0 {
                now - Duration::from_secs(offset.unsigned_abs())
            } else {
                now + Duration::from_secs(offset.unsigned_abs())
            };
            httpdate::fmt_http_date(at)
        }),
        "[ -~]{0,40}",
    ]
}

/// Any `grpc-retry-pushback-ms` value: any `i64`, numbers past it, and arbitrary text.
fn pushback_values() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|ms| ms.to_string()),
        (0_i64..120_000).prop_map(|ms| ms.to_string()),
        "-?[0-9]{19,40}",
        "[ -~]{0,40}",
    ]
}

#[derive(Debug, Clone)]
struct Settings {
    max_attempts: u32,
    max_retry_hint: Duration,
    deadline: Option<Duration>,
    backoff: Duration,
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        1_u32..5,
        // No maximum (every hint the clock can represent is honoured) only with a deadline:
        // without either, the layer waits as long as the server asks, as told.
        prop_oneof![
            (0_u64..120_000).prop_map(|ms| (Duration::from_millis(ms), None)),
            (0_u64..300_000).prop_map(|ms| (Duration::MAX, Some(Duration::from_millis(ms)))),
        ],
        proptest::option::of(0_u64..300_000),
        0_u64..2_000,
    )
        .prop_map(
            |(max_attempts, (max_retry_hint, forced), deadline, backoff)| Settings {
                max_attempts,
                max_retry_hint,
                deadline: forced.or(deadline.map(Duration::from_millis)),
                backoff: Duration::from_millis(backoff),
            },
        )
}

/// What the settings promise for a server that always fails with the same hint, from the hint
/// as the classifier reads it: the number of attempts and the time they take. `None` when the
/// hint depends on the wall clock (an HTTP date), which moves while the call runs.
fn expected(settings: &Settings, hint: RetryHint) -> (u32, Duration) {
    let wait = match hint {
        RetryHint::None => settings.backoff,
        RetryHint::After(after) if after <= settings.max_retry_hint => after,
        RetryHint::After(_) | RetryHint::DoNotRetry => return (1, Duration::ZERO),
    };
    let mut attempts = 1;
    // Retry `k` starts at `k * wait`, and only if that is before the deadline.
    while attempts < settings.max_attempts
        && settings
            .deadline
            .is_none_or(|deadline| wait * attempts < deadline)
    {
        attempts += 1;
    }
    (attempts, wait * (attempts - 1))
}

/// Runs one call through `layer` with `settings` against a server that always fails with
/// `header`, on a paused clock. The call returns the server's answer, after at most
/// `max_attempts` attempts, and within the deadline or, without one, within every wait at its
/// longest; when the hint does not depend on the wall clock, exactly as [`expected`] says.
fn check_bounds<C>(
    layer: RetryLayer<C, HttpRequests>,
    settings: &Settings,
    header: (&'static str, String),
    grpc: bool,
) where
    C: Classify<Response<()>, BoxError> + Clone + Send + 'static,
{
    let mut layer = layer
        .max_attempts(settings.max_attempts)
        .max_retry_hint(settings.max_retry_hint)
        .backoff(fixed(settings.backoff));
    if let Some(deadline) = settings.deadline {
        layer = layer.deadline(deadline);
    }
    let clock_free =
        !(header.0 == "retry-after" && httpdate::parse_http_date(header.1.trim()).is_ok());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let (calls, server) = server(503, header, grpc, u32::MAX);
        let request = if grpc { post() } else { get() };
        let service = layer.layer(server);
        let started = Instant::now();
        let outcome = tokio::time::timeout(PATIENCE, service.oneshot(request)).await;
        let elapsed = started.elapsed();
        let attempts = calls.load(Ordering::SeqCst);

        let response = outcome
            .expect("the call returned")
            .expect("the server's answer, not an error");
        if grpc {
            assert_eq!(response.headers()["grpc-status"], "14");
        } else {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        assert!(
            (1..=settings.max_attempts).contains(&attempts),
            "{attempts} attempts"
        );
        let longest = settings
            .max_retry_hint
            .max(settings.backoff)
            .saturating_mul(settings.max_attempts - 1);
        let bound = settings.deadline.map_or(longest, |d| d.min(longest));
        assert!(elapsed <= bound, "{elapsed:?} > {bound:?}");
        if clock_free {
            let hint = layer_hint(&response, grpc);
            assert_eq!(
                (attempts, elapsed),
                expected(settings, hint),
                "hint {hint:?}"
            );
        }
    });
}

fn layer_hint(response: &Response<()>, grpc: bool) -> RetryHint {
    // The same response, as a result the classifiers read.
    let mut copy = Response::new(());
    *copy.headers_mut() = response.headers().clone();
    *copy.status_mut() = response.status();
    let result: Result<Response<()>, BoxError> = Ok(copy);
    if grpc {
        GrpcClassifier::new().retry_hint(&result)
    } else {
        HttpClassifier::new().retry_hint(&result)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_retry_after_ends_within_the_configured_bounds(
        settings in settings(),
        value in retry_after_values(),
    ) {
        check_bounds(RetryLayer::http(), &settings, ("retry-after", value), false);
    }

    #[test]
    fn any_pushback_ends_within_the_configured_bounds(
        settings in settings(),
        value in pushback_values(),
    ) {
        check_bounds(RetryLayer::grpc(), &settings, ("grpc-retry-pushback-ms", value), true);
    }
}
