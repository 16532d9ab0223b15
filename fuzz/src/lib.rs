//! The fuzz targets of the ms family, one function per public decoder: each takes arbitrary
//! bytes, must not panic, and checks what the decoder promises beyond that (what it accepts
//! encodes back to the same thing, what it bounds stays bounded).
//!
//! The binaries in `fuzz_targets/` hand these functions to libFuzzer when cargo-fuzz builds
//! them (`RUSTC_BOOTSTRAP=1 cargo fuzz run <target>`, see the README's "Working on ms"); an
//! ordinary build makes them programs that replay the files they are given, and
//! `cargo test -p ms-fuzz` runs every target over its seeds in `seeds/<target>/`.
//!
//! Inputs that carry headers are text in the shape of an HTTP message head: one
//! `name: value` line per header, then an empty line and the body.
//!
//! ```
//! ms_fuzz::traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//! ms_fuzz::cloudevents_binary(b"ce-specversion: 1.0\nce-id: 1\nce-type: t\nce-source: /s\n\n{}");
//! ```
//!
//! # Panics
//!
//! Every target panics when a decoder breaks a promise: that is how libFuzzer learns of it.
// Panicking is these functions' way of reporting; each says what it checks.
#![allow(clippy::missing_panics_doc)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use ms_bus::codec::{self, HeaderValues, Mode, STRUCTURED_JSON_CONTENT_TYPE, TransportMessage};
use ms_resilience::BoxError;
use ms_resilience::backoff::{ExponentialBackoff, Jitter};
use ms_resilience::classify::{Classify, GrpcClassifier, HttpClassifier};
use ms_resilience::retry::{HttpRequests, RetryBody, RetryLayer};
use ms_tracing::correlation::{CorrelationId, MAX_CORRELATION_ID_LEN};
use ms_tracing::propagation::{HeaderExtractor, HeaderInjector, Traceparent, propagator};
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use tower::{Layer, ServiceExt};

/// Header lines as `(name, value)` byte slices.
type Lines<'a> = Vec<(&'a [u8], &'a [u8])>;

/// Splits an input into header lines (`name: value`, up to the first empty line) and a body.
/// Lines without a colon are skipped; nothing is rejected.
fn message(data: &[u8]) -> (Lines<'_>, &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &data[data.len()..]),
    };
    let headers = head
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            let value = &line[colon + 1..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            Some((&line[..colon], value))
        })
        .collect();
    (headers, body)
}

/// The header lines of `data` as an `http::HeaderMap`, repeated names kept in order; lines
/// that are not a valid header are skipped.
fn header_map(data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in message(data).0 {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

/// Structured-mode CloudEvents: `codec::from_json` and `codec::decode` with the
/// `application/cloudevents+json` content type. An event either decoder accepts is encoded
/// again in both modes and decodes to the same event.
pub fn cloudevents_structured(data: &[u8]) {
    let direct = codec::from_json(data);
    let message = TransportMessage {
        headers: Vec::new(),
        content_type: Some(STRUCTURED_JSON_CONTENT_TYPE.to_owned()),
        body: Bytes::copy_from_slice(data),
    };
    let through_decode = codec::decode(&message, HeaderValues::Raw);
    assert_eq!(
        direct.as_ref().ok(),
        through_decode.as_ref().ok(),
        "from_json and decode disagree"
    );
    if let Ok(event) = direct {
        assert_round_trips(&event);
    }
}

/// Binary-mode (and header-less structured) CloudEvents through `codec::decode`, with the
/// header values percent-encoded (NATS, HTTP) and raw (AMQP). The input's header lines are the
/// message's headers (`content-type` is its content type) and the rest is its body.
pub fn cloudevents_binary(data: &[u8]) {
    let (lines, body) = message(data);
    let mut headers = Vec::new();
    let mut content_type = None;
    for (name, value) in lines {
        let name = String::from_utf8_lossy(name).into_owned();
        let value = String::from_utf8_lossy(value).into_owned();
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value);
        } else {
            headers.push((name, value));
        }
    }
    let message = TransportMessage {
        headers,
        content_type,
        body: Bytes::copy_from_slice(body),
    };
    for values in [HeaderValues::PercentEncoded, HeaderValues::Raw] {
        if let Ok(event) = codec::decode(&message, values) {
            assert_round_trips(&event);
        }
    }
}

/// A decoded event encodes, in either mode and either header convention, to a message that
/// decodes to the same event; its data may come back re-serialized (structured mode writes
/// JSON data as JSON, not as the bytes it read), but then as the same JSON value, and from
/// there on the round trip is exact.
fn assert_round_trips(event: &ms_bus::Envelope) {
    for mode in [Mode::Binary, Mode::Structured] {
        for values in [HeaderValues::PercentEncoded, HeaderValues::Raw] {
            let encoded = codec::encode(event, mode, values);
            let decoded = codec::decode(&encoded, values)
                .unwrap_or_else(|e| panic!("{mode:?} {values:?}: {e}: {encoded:?}"));
            assert_same_event(event, &decoded);
            let again = codec::decode(&codec::encode(&decoded, mode, values), values);
            assert_eq!(
                again.as_ref(),
                Ok(&decoded),
                "{mode:?} {values:?} is not stable"
            );
        }
    }
}

fn assert_same_event(expected: &ms_bus::Envelope, got: &ms_bus::Envelope) {
    assert_eq!(
        (got.id(), got.source(), got.ty(), got.subject(), got.time()),
        (
            expected.id(),
            expected.source(),
            expected.ty(),
            expected.subject(),
            expected.time()
        )
    );
    assert_eq!(
        (got.datacontenttype(), got.dataschema()),
        (expected.datacontenttype(), expected.dataschema())
    );
    assert_eq!(
        got.extensions().collect::<Vec<_>>(),
        expected.extensions().collect::<Vec<_>>()
    );
    if got.data() != expected.data() {
        let as_json = |data: &Bytes| serde_json::from_slice::<serde_json::Value>(data).ok();
        let (got_json, expected_json) = (as_json(got.data()), as_json(expected.data()));
        assert!(
            got_json.is_some() && got_json == expected_json,
            "data {:?} became {:?}",
            expected.data(),
            got.data()
        );
    }
}

/// `Traceparent::parse`: a value it accepts is written back by `to_header` in a form that
/// parses to the same value, and that form is canonical (writing it again changes nothing).
pub fn traceparent(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = Traceparent::parse(text) {
        let header = parsed.to_header();
        assert_eq!(Traceparent::parse(&header), Ok(parsed), "{header}");
        assert_eq!(header.len(), 55, "{header}");
    }
}

/// The W3C propagator (with baggage) extracting from request headers (`traceparent`,
/// `tracestate`, `baggage`, repeated or not): the context it accepts is injected again, and
/// extracting that gives the same remote span context; injecting a second time writes the
/// same `traceparent` and `tracestate`.
pub fn trace_context(data: &[u8]) {
    let incoming = header_map(data);
    let cx = propagator().extract_with_context(&Context::new(), &HeaderExtractor(&incoming));
    let mut first = HeaderMap::new();
    propagator().inject_context(&cx, &mut HeaderInjector(&mut first));
    let again = propagator().extract_with_context(&Context::new(), &HeaderExtractor(&first));
    let remote = cx.span().span_context().clone();
    if remote.is_valid() {
        assert_same_span(&remote, again.span().span_context());
    }
    let mut second = HeaderMap::new();
    propagator().inject_context(&again, &mut HeaderInjector(&mut second));
    for name in ["traceparent", "tracestate"] {
        assert_eq!(first.get(name), second.get(name), "{name} is not stable");
    }
}

fn assert_same_span(expected: &SpanContext, got: &SpanContext) {
    assert_eq!(got.trace_id(), expected.trace_id());
    assert_eq!(got.span_id(), expected.span_id());
    assert_eq!(got.trace_flags(), expected.trace_flags());
    assert_eq!(got.trace_state().header(), expected.trace_state().header());
}

/// Correlation IDs: `CorrelationId::from_bytes` on the whole input, and `message::extract`
/// on its header lines (a message's headers). An accepted ID is short, parses again from its
/// text, and survives `inject_context` and `extract` with the trace context beside it.
pub fn correlation_id(data: &[u8]) {
    if let Ok(id) = CorrelationId::from_bytes(data) {
        assert!(id.as_str().len() <= MAX_CORRELATION_ID_LEN);
        assert_eq!(CorrelationId::parse(id.as_str()).as_ref(), Ok(&id));
    }
    let headers: BTreeMap<String, String> = message(data)
        .0
        .into_iter()
        .map(|(name, value)| {
            (
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            )
        })
        .collect();
    let received = ms_tracing::message::extract(&headers);
    let cx = match received.span_context() {
        Some(remote) => Context::new().with_remote_span_context(remote.clone()),
        None => Context::new(),
    };
    let mut forwarded = BTreeMap::new();
    ms_tracing::message::inject_context(&cx, received.correlation_id(), &mut forwarded);
    let again = ms_tracing::message::extract(&forwarded);
    assert_eq!(again.correlation_id(), received.correlation_id());
    match (received.span_context(), again.span_context()) {
        (Some(expected), Some(got)) => assert_same_span(expected, got),
        (None, None) => {}
        (expected, got) => panic!("span context {expected:?} became {got:?}"),
    }
}

/// A current-thread runtime on a paused clock, one per thread, reused across inputs: waits end
/// at once and time is measured without waiting for it.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
    }
    RUNTIME.with(|runtime| runtime.block_on(future))
}

/// ms-health's router with a failing readiness check, a passing liveness check and details
/// on request.
fn health_app() -> &'static axum::Router {
    static APP: OnceLock<axum::Router> = OnceLock::new();
    APP.get_or_init(|| {
        let registry = ms_health::HealthRegistry::builder()
            .readiness(
                "db",
                ms_health::check_fn(|| async { ms_health::CheckResult::fail("refused") }),
            )
            .liveness(
                "loop",
                ms_health::check_fn(|| async { ms_health::CheckResult::pass() }),
            )
            .details(ms_health::Details::OnRequest)
            .build()
            .expect("a valid registry");
        ms_health::router(registry)
    })
}

/// ms-health's query strings (`?verbose`, `?exclude=name`, anything else) on each probe path:
/// the answer is a health verdict (200 or 503) in `application/health+json` that parses as
/// JSON, or axum's 400 for a query string it cannot read; never a panic.
pub fn health_query(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    for path in ["/healthz", "/readyz", "/startupz"] {
        let Ok(request) = Request::get(format!("{path}?{query}")).body(axum::body::Body::empty())
        else {
            return;
        };
        let response = block_on(health_app().clone().oneshot(request)).expect("infallible");
        let status = response.status();
        if status == StatusCode::BAD_REQUEST {
            continue;
        }
        assert!(
            status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
            "{path}?{query}: {status}"
        );
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            ms_health::HEALTH_JSON_CONTENT_TYPE
        );
        let body = block_on(http_body_util::BodyExt::collect(response.into_body()))
            .expect("a body")
            .to_bytes();
        let report: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert!(report["status"].is_string(), "{report}");
    }
}

/// The most attempts, the longest honoured hint, the backoff and the deadline of the retry
/// layers under test.
const ATTEMPTS: u32 = 3;
const MAX_HINT: Duration = Duration::from_secs(60);
const BACKOFF: Duration = Duration::from_millis(10);
const DEADLINE: Duration = Duration::from_secs(30);

/// Server retry hints: the input's header lines (`Retry-After`, `grpc-retry-pushback-ms`, any
/// others, repeated or not) on a 503 and on a gRPC `UNAVAILABLE`, read by the classifiers and
/// run through the retry layer on a paused clock, with and without a deadline. The layer
/// returns the server's answer after at most `ATTEMPTS` (3) attempts, within the deadline, or
/// without one within every wait at its longest.
pub fn retry_hints(data: &[u8]) {
    let headers = header_map(data);
    for grpc in [false, true] {
        let result: Result<Response<()>, BoxError> = Ok(failing(&headers, grpc));
        let _ = HttpClassifier::new().retry_hint(&result);
        let _ = GrpcClassifier::new().retry_hint(&result);
        for deadline in [None, Some(DEADLINE)] {
            if grpc {
                through_layer(RetryLayer::grpc(), &headers, true, deadline);
            } else {
                through_layer(RetryLayer::http(), &headers, false, deadline);
            }
        }
    }
}

/// A failed answer carrying `headers`: a 503, or for gRPC `grpc-status: 14` (`UNAVAILABLE`).
fn failing(headers: &HeaderMap, grpc: bool) -> Response<()> {
    let mut response = Response::new(());
    *response.headers_mut() = headers.clone();
    if grpc {
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from_static("14"));
    } else {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    response
}

fn through_layer<C>(
    layer: RetryLayer<C, HttpRequests>,
    headers: &HeaderMap,
    grpc: bool,
    deadline: Option<Duration>,
) where
    C: Classify<Response<()>, BoxError> + Clone + Send + 'static,
{
    let mut layer = layer
        .max_attempts(ATTEMPTS)
        .max_retry_hint(MAX_HINT)
        .backoff(ExponentialBackoff::new(BACKOFF, BACKOFF).with_jitter(Jitter::None));
    if let Some(deadline) = deadline {
        layer = layer.deadline(deadline);
    }
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = calls.clone();
    let headers = headers.clone();
    let server = tower::service_fn(move |_: Request<RetryBody<http_body_util::Empty<Bytes>>>| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let response = failing(&headers, grpc);
        async move { Ok::<_, BoxError>(response) }
    });
    let request = Request::post("http://upstream.internal/call")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("a request");
    let longest = MAX_HINT.max(BACKOFF) * (ATTEMPTS - 1);
    let bound = deadline.map_or(longest, |d| d.min(longest));
    let (outcome, elapsed) = block_on(async {
        let started = tokio::time::Instant::now();
        // On the paused clock any wait ends at once: a call that waits past its bound shows
        // as this timeout rather than as a hang.
        let outcome = tokio::time::timeout(
            bound + Duration::from_secs(1),
            layer.layer(server).oneshot(request),
        )
        .await;
        (outcome, started.elapsed())
    });
    let response = outcome
        .expect("the retry layer returned within its bound")
        .expect("the server's answer");
    assert!(elapsed <= bound, "{elapsed:?} > {bound:?}");
    let attempts = calls.load(std::sync::atomic::Ordering::Relaxed);
    assert!((1..=ATTEMPTS).contains(&attempts), "{attempts} attempts");
    if grpc {
        assert_eq!(response.headers()["grpc-status"], "14");
    } else {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

/// Runs `target` over every file named on the command line (a directory: every file in it),
/// as libFuzzer would, and says how many it ran. A failing input panics, like under libFuzzer.
pub fn replay(target: fn(&[u8])) -> ExitCode {
    let mut files = Vec::new();
    for arg in std::env::args_os().skip(1) {
        let path = std::path::PathBuf::from(arg);
        match std::fs::read_dir(&path) {
            Ok(entries) => files.extend(entries.filter_map(|e| e.ok().map(|e| e.path()))),
            Err(_) => files.push(path),
        }
    }
    if files.is_empty() {
        eprintln!(
            "usage: <target> FILE|DIR...  (this build replays inputs; fuzz with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target>`)"
        );
        return ExitCode::FAILURE;
    }
    files.sort();
    for file in &files {
        match std::fs::read(file) {
            Ok(data) => target(&data),
            Err(error) => {
                eprintln!("{}: {error}", file.display());
                return ExitCode::FAILURE;
            }
        }
    }
    eprintln!("{} inputs replayed", files.len());
    ExitCode::SUCCESS
}
