//! Every case of the W3C Trace Context validation suite (`w3c/trace-context`, `test/test.py`,
//! commit acab820, `STRICT_LEVEL` 2, `SPEC_LEVEL` 2), run the way the suite runs them: a raw HTTP
//! request reaches a service built as a user would build one (axum, `ServerTraceLayer`,
//! `CorrelationIdLayer`, a hyper-util client in `ClientTraceLayer`, a parent-based sampler),
//! whose handler calls back a harness over real loopback HTTP; the harness's view of that
//! call's `traceparent` and `tracestate` is checked as the suite checks it. CI cannot reach the
//! suite, so its cases live here, one test per case, named after it.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ms_tracing::client::ClientTraceService;
use ms_tracing::head_sampling::HeadSampler;
use ms_tracing::testing::TestTracing;
use ms_tracing::{ClientTraceLayer, CorrelationIdLayer, ServerTraceLayer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer as _, ServiceExt as _};

const TRACE_ID: &str = "12345678901234567890123456789012";
const PARENT_ID: &str = "1234567890123456";
const SAMPLED: &str = "00-12345678901234567890123456789012-1234567890123456-01";
const UNSAMPLED: &str = "00-12345678901234567890123456789012-1234567890123456-00";

type HttpClient = ClientTraceService<Client<HttpConnector, Full<Bytes>>>;

/// A running harness and service, with the test's span pipeline as the thread's subscriber
/// (the runtime is single-threaded, so every task of the test sees it).
struct Suite {
    tracing: TestTracing,
    _guard: tracing::dispatcher::DefaultGuard,
    service: std::net::SocketAddr,
    harness: std::net::SocketAddr,
    callbacks: Arc<Mutex<Vec<(usize, HeaderMap)>>>,
}

impl Suite {
    async fn start() -> Self {
        // `init`'s default sampler: a caller's decision is followed, so an unsampled caller
        // means dropped spans here, the case where the SDK loses the `random` flag.
        let tracing = TestTracing::with(|b| b.sampler(HeadSampler::ParentBasedAlwaysOn));
        let guard = tracing.set_default();

        let callbacks: Arc<Mutex<Vec<(usize, HeaderMap)>>> = Arc::default();
        let seen = callbacks.clone();
        let harness = Router::new().route(
            "/callback/{n}",
            post(
                move |axum::extract::Path(n): axum::extract::Path<usize>, headers: HeaderMap| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push((n, headers));
                        "null"
                    }
                },
            ),
        );
        let harness = serve(harness).await;

        let client: HttpClient =
            ClientTraceLayer::new().layer(Client::builder(TokioExecutor::new()).build_http());
        let service = Router::new()
            .route(
                "/test",
                post(move |body: Bytes| call_back(client.clone(), body)),
            )
            .layer(ServerTraceLayer::new())
            .layer(CorrelationIdLayer::new());
        let service = serve(service).await;
        Self {
            tracing,
            _guard: guard,
            service,
            harness,
            callbacks,
        }
    }

    /// Sends the suite's request with `headers` (names and values as written, repeats kept)
    /// and asks for `count` callbacks; returns each callback's headers, in order.
    async fn make_request(&self, headers: &[(&str, &str)], count: usize) -> Vec<HeaderMap> {
        self.callbacks.lock().unwrap().clear();
        let actions: Vec<serde_json::Value> = (0..count)
            .map(|n| {
                serde_json::json!({
                    "url": format!("http://{}/callback/{n}", self.harness),
                    "arguments": [],
                })
            })
            .collect();
        let body = serde_json::Value::Array(actions).to_string();
        let mut raw = format!(
            "POST /test HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n",
            self.service,
            body.len()
        );
        for (name, value) in headers {
            raw.push_str(name);
            raw.push_str(": ");
            raw.push_str(value);
            raw.push_str("\r\n");
        }
        raw.push_str("\r\n");
        raw.push_str(&body);
        let mut stream = TcpStream::connect(self.service).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let mut callbacks = std::mem::take(&mut *self.callbacks.lock().unwrap());
        callbacks.sort_by_key(|(n, _)| *n);
        assert_eq!(
            callbacks.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            (0..count).collect::<Vec<_>>(),
            "the service must call back once per action"
        );
        callbacks.into_iter().map(|(_, headers)| headers).collect()
    }

    async fn single(&self, headers: &[(&str, &str)]) -> (Traceparent, Tracestate) {
        let callback = self.make_request(headers, 1).await.remove(0);
        (traceparent(&callback), tracestate(&callback))
    }
}

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// The suite's test service: POSTs each action's `arguments` to its `url`.
async fn call_back(client: HttpClient, body: Bytes) -> &'static str {
    let actions: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    for action in actions {
        let request = Request::post(action["url"].as_str().unwrap())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(action["arguments"].to_string())))
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    "ok"
}

/// The callback's `traceparent` as the suite reads it: exactly one header, matching
/// `^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$`.
#[derive(Debug)]
struct Traceparent {
    trace_id: String,
    parent_id: String,
    flags: u8,
}

fn traceparent(headers: &HeaderMap) -> Traceparent {
    let values: Vec<_> = headers.get_all("traceparent").iter().collect();
    assert_eq!(values.len(), 1, "expect one traceparent header: {values:?}");
    let value = values[0].to_str().unwrap();
    let fields: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(
        fields.len() == 4
            && hex(fields[0], 2)
            && hex(fields[1], 32)
            && hex(fields[2], 16)
            && hex(fields[3], 2),
        "malformed traceparent {value:?}"
    );
    assert_ne!(fields[0], "ff", "{value}");
    Traceparent {
        trace_id: fields[1].to_owned(),
        parent_id: fields[2].to_owned(),
        flags: u8::from_str_radix(fields[3], 16).unwrap(),
    }
}

/// The callback's `tracestate` as the suite reads it: every header split on `OWS "," OWS`,
/// every non-empty member matching the suite's key and value patterns (else the suite errors),
/// a repeated key keeping its first value.
#[derive(Debug, Default)]
struct Tracestate(Vec<(String, String)>);

impl Tracestate {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        let members: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        members.join(",")
    }
}

fn tracestate(headers: &HeaderMap) -> Tracestate {
    let mut state = Tracestate::default();
    for value in &headers.get_all("tracestate") {
        let value = value.to_str().unwrap();
        for member in value.split(',') {
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            let (key, val) = member
                .split_once('=')
                .unwrap_or_else(|| panic!("illegal key-value format {member:?}"));
            let key_ok = (1..=256).contains(&key.len())
                && key.bytes().enumerate().all(|(i, b)| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || (i > 0 && matches!(b, b'_' | b'-' | b'*' | b'/' | b'@'))
                });
            let val_ok = (1..=256).contains(&val.len())
                && val
                    .bytes()
                    .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
                && !val.ends_with(' ');
            assert!(key_ok && val_ok, "illegal key-value format {member:?}");
            if state.get(key).is_none() {
                state.0.push((key.to_owned(), val.to_owned()));
            }
        }
    }
    state
}

// ---- TraceContextTest ---------------------------------------------------------------------

#[tokio::test]
async fn test_both_traceparent_and_tracestate_missing() {
    let suite = Suite::start().await;
    let (parent, _) = suite.single(&[]).await;
    // A trace started here: its ID is random, and the Level 2 flag says so.
    assert_eq!(parent.flags, 0x03, "{parent:?}");
}

#[tokio::test]
async fn test_traceparent_included_tracestate_missing() {
    let suite = Suite::start().await;
    let (parent, _) = suite.single(&[("traceparent", SAMPLED)]).await;
    assert_eq!(parent.trace_id, TRACE_ID);
    assert_ne!(parent.parent_id, PARENT_ID);
    // The chain is real: the harness saw the client span, a child of the server span, a child
    // of the caller's span.
    let client = suite.tracing.span("POST");
    assert_eq!(client.span_context.span_id().to_string(), parent.parent_id);
    let server = suite
        .tracing
        .spans()
        .into_iter()
        .find(|s| s.span_context.span_id() == client.parent_span_id)
        .expect("the client span's parent is the server span");
    assert_eq!(server.parent_span_id.to_string(), PARENT_ID);
    assert!(server.parent_span_is_remote);
}

#[tokio::test]
async fn test_traceparent_duplicated() {
    let suite = Suite::start().await;
    let (parent, _) = suite
        .single(&[
            (
                "traceparent",
                "00-12345678901234567890123456789011-1234567890123456-01",
            ),
            ("traceparent", SAMPLED),
        ])
        .await;
    assert_ne!(parent.trace_id, "12345678901234567890123456789011");
    assert_ne!(parent.trace_id, TRACE_ID);
}

#[tokio::test]
async fn test_traceparent_header_name() {
    let suite = Suite::start().await;
    for name in ["trace-parent", "trace.parent"] {
        let (parent, _) = suite.single(&[(name, SAMPLED)]).await;
        assert_ne!(parent.trace_id, TRACE_ID, "{name}");
    }
}

#[tokio::test]
async fn test_traceparent_header_name_valid_casing() {
    let suite = Suite::start().await;
    for name in ["TraceParent", "TrAcEpArEnT", "TRACEPARENT"] {
        let (parent, _) = suite.single(&[(name, SAMPLED)]).await;
        assert_eq!(parent.trace_id, TRACE_ID, "{name}");
    }
}

/// Each value must start a new trace.
async fn restarts(values: &[&str]) {
    let suite = Suite::start().await;
    for value in values {
        let (parent, _) = suite.single(&[("traceparent", value)]).await;
        assert_ne!(parent.trace_id, TRACE_ID, "{value}");
        assert_ne!(parent.trace_id, "0".repeat(32), "{value}");
    }
}

/// Each value must be continued.
async fn continues(values: &[&str]) {
    let suite = Suite::start().await;
    for value in values {
        let (parent, _) = suite.single(&[("traceparent", value)]).await;
        assert_eq!(parent.trace_id, TRACE_ID, "{value:?}");
    }
}

#[tokio::test]
async fn test_traceparent_version_0x00() {
    restarts(&[
        "00-12345678901234567890123456789012-1234567890123456-01.",
        "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
    ])
    .await;
}

#[tokio::test]
async fn test_traceparent_version_0xcc() {
    continues(&[
        "cc-12345678901234567890123456789012-1234567890123456-01",
        "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
    ])
    .await;
    restarts(&[
        "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like",
    ])
    .await;
}

#[tokio::test]
async fn test_traceparent_version_0xff() {
    restarts(&["ff-12345678901234567890123456789012-1234567890123456-01"]).await;
}

#[tokio::test]
async fn test_traceparent_version_illegal_characters() {
    restarts(&[
        ".0-12345678901234567890123456789012-1234567890123456-01",
        "0.-12345678901234567890123456789012-1234567890123456-01",
    ])
    .await;
}

#[tokio::test]
async fn test_traceparent_version_too_long() {
    restarts(&[
        "000-12345678901234567890123456789012-1234567890123456-01",
        "0000-12345678901234567890123456789012-1234567890123456-01",
    ])
    .await;
}

#[tokio::test]
async fn test_traceparent_version_too_short() {
    restarts(&["0-12345678901234567890123456789012-1234567890123456-01"]).await;
}

#[tokio::test]
async fn test_traceparent_trace_id_all_zero() {
    restarts(&["00-00000000000000000000000000000000-1234567890123456-01"]).await;
}

#[tokio::test]
async fn test_traceparent_trace_id_illegal_characters() {
    let suite = Suite::start().await;
    for (value, id) in [
        (
            "00-.2345678901234567890123456789012-1234567890123456-01",
            ".2345678901234567890123456789012",
        ),
        (
            "00-1234567890123456789012345678901.-1234567890123456-01",
            "1234567890123456789012345678901.",
        ),
    ] {
        let (parent, _) = suite.single(&[("traceparent", value)]).await;
        assert_ne!(parent.trace_id, id);
    }
}

#[tokio::test]
async fn test_traceparent_trace_id_too_long() {
    let suite = Suite::start().await;
    let (parent, _) = suite
        .single(&[(
            "traceparent",
            "00-123456789012345678901234567890123-1234567890123456-01",
        )])
        .await;
    for id in [
        "123456789012345678901234567890123",
        TRACE_ID,
        "23456789012345678901234567890123",
    ] {
        assert_ne!(parent.trace_id, id);
    }
}

#[tokio::test]
async fn test_traceparent_trace_id_too_short() {
    let suite = Suite::start().await;
    let (parent, _) = suite
        .single(&[(
            "traceparent",
            "00-1234567890123456789012345678901-1234567890123456-01",
        )])
        .await;
    assert_ne!(parent.trace_id, "1234567890123456789012345678901");
}

#[tokio::test]
async fn test_traceparent_parent_id_all_zero() {
    restarts(&["00-12345678901234567890123456789012-0000000000000000-01"]).await;
}

#[tokio::test]
async fn test_traceparent_parent_id_illegal_characters() {
    restarts(&[
        "00-12345678901234567890123456789012-.234567890123456-01",
        "00-12345678901234567890123456789012-123456789012345.-01",
    ])
    .await;
}

#[tokio::test]
async fn test_traceparent_parent_id_too_long() {
    restarts(&["00-12345678901234567890123456789012-12345678901234567-01"]).await;
}

#[tokio::test]
async fn test_traceparent_parent_id_too_short() {
    restarts(&["00-12345678901234567890123456789012-123456789012345-01"]).await;
}

#[tokio::test]
async fn test_traceparent_trace_flags_illegal_characters() {
    restarts(&[
        "00-12345678901234567890123456789012-1234567890123456-.0",
        "00-12345678901234567890123456789012-1234567890123456-0.",
    ])
    .await;
}

#[tokio::test]
async fn test_traceparent_trace_flags_too_long() {
    restarts(&["00-12345678901234567890123456789012-1234567890123456-001"]).await;
}

#[tokio::test]
async fn test_traceparent_trace_flags_too_short() {
    restarts(&["00-12345678901234567890123456789012-1234567890123456-1"]).await;
}

#[tokio::test]
async fn test_traceparent_ows_handling() {
    continues(&[
        " 00-12345678901234567890123456789012-1234567890123456-01",
        "\t00-12345678901234567890123456789012-1234567890123456-01",
        "00-12345678901234567890123456789012-1234567890123456-01 ",
        "00-12345678901234567890123456789012-1234567890123456-01\t",
        "\t 00-12345678901234567890123456789012-1234567890123456-01 \t",
    ])
    .await;
}

#[tokio::test]
async fn test_tracestate_included_traceparent_missing() {
    let suite = Suite::start().await;
    let (_, one) = suite.single(&[("tracestate", "foo=1")]).await;
    let (_, two) = suite.single(&[("tracestate", "foo=1,bar=2")]).await;
    assert_eq!(one.0.len(), two.0.len());
    assert_eq!(
        one.0.len(),
        0,
        "a tracestate without a traceparent is ignored"
    );
}

#[tokio::test]
async fn test_tracestate_included_traceparent_included() {
    let suite = Suite::start().await;
    let (parent, state) = suite
        .single(&[("traceparent", UNSAMPLED), ("tracestate", "foo=1,bar=2")])
        .await;
    assert_eq!(parent.trace_id, TRACE_ID);
    assert_eq!(state.get("foo"), Some("1"));
    assert_eq!(state.get("bar"), Some("2"));
}

#[tokio::test]
async fn test_tracestate_header_name() {
    let suite = Suite::start().await;
    for name in ["trace-state", "trace.state"] {
        let (_, state) = suite
            .single(&[("traceparent", UNSAMPLED), (name, "foo=1")])
            .await;
        assert_eq!(state.get("foo"), None, "{name}");
    }
}

#[tokio::test]
async fn test_tracestate_header_name_valid_casing() {
    let suite = Suite::start().await;
    for name in ["TraceState", "TrAcEsTaTe", "TRACESTATE"] {
        let (_, state) = suite
            .single(&[("traceparent", UNSAMPLED), (name, "foo=1")])
            .await;
        assert_eq!(state.get("foo"), Some("1"), "{name}");
    }
}

#[tokio::test]
async fn test_tracestate_empty_header() {
    let suite = Suite::start().await;
    let (parent, state) = suite
        .single(&[("traceparent", UNSAMPLED), ("tracestate", "")])
        .await;
    assert_eq!(parent.trace_id, TRACE_ID);
    assert!(state.0.is_empty());
    for headers in [
        [("tracestate", "foo=1"), ("tracestate", "")],
        [("tracestate", ""), ("tracestate", "foo=1")],
    ] {
        let mut all = vec![("traceparent", UNSAMPLED)];
        all.extend(headers);
        let (parent, state) = suite.single(&all).await;
        assert_eq!(parent.trace_id, TRACE_ID);
        assert_eq!(state.get("foo"), Some("1"));
    }
}

#[tokio::test]
async fn test_tracestate_multiple_headers_different_keys() {
    let suite = Suite::start().await;
    let (parent, state) = suite
        .single(&[
            ("traceparent", UNSAMPLED),
            ("tracestate", "foo=1,bar=2"),
            ("tracestate", "rojo=1,congo=2"),
            ("tracestate", "baz=3"),
        ])
        .await;
    assert_eq!(parent.trace_id, TRACE_ID);
    // In order, nothing lost.
    assert_eq!(state.text(), "foo=1,bar=2,rojo=1,congo=2,baz=3");
}

#[tokio::test]
async fn test_tracestate_duplicated_keys() {
    let suite = Suite::start().await;
    for (headers, allowed) in [
        (&[("tracestate", "foo=1,foo=1")][..], &["foo=1"][..]),
        (&[("tracestate", "foo=1,foo=2")], &["foo=1", "foo=2"]),
        (
            &[("tracestate", "foo=1"), ("tracestate", "foo=1")],
            &["foo=1"],
        ),
        (
            &[("tracestate", "foo=1"), ("tracestate", "foo=2")],
            &["foo=1", "foo=2"],
        ),
    ] {
        let mut all = vec![("traceparent", UNSAMPLED)];
        all.extend_from_slice(headers);
        let (parent, state) = suite.single(&all).await;
        assert_eq!(parent.trace_id, TRACE_ID);
        let text = state.text();
        assert!(
            allowed.iter().any(|member| text.contains(member)),
            "{headers:?} went out as {text:?}"
        );
    }
}

#[tokio::test]
async fn test_tracestate_all_allowed_characters() {
    let suite = Suite::start().await;
    let value: String = (0x20u8..=0x7e)
        .filter(|c| *c != b',' && *c != b'=')
        .map(char::from)
        .collect();
    for key in [
        "abcdefghijklmnopqrstuvwxyz0123456789_-*/",
        "abcdefghijklmnopqrstuvwxyz0123456789_-*/@a-z0-9_-*/",
    ] {
        let member = format!("{key}={value}");
        let (_, state) = suite
            .single(&[("traceparent", UNSAMPLED), ("tracestate", &member)])
            .await;
        assert_eq!(state.get(key), Some(value.as_str()), "{key}");
    }
}

#[tokio::test]
async fn test_tracestate_ows_handling() {
    let suite = Suite::start().await;
    for value in [
        "foo=1 \t , \t bar=2, \t baz=3",
        "foo=1\t \t,\t \tbar=2,\t \tbaz=3",
    ] {
        let (_, state) = suite
            .single(&[("traceparent", UNSAMPLED), ("tracestate", value)])
            .await;
        assert_eq!(state.text(), "foo=1,bar=2,baz=3", "{value:?}");
    }
    for value in [" foo=1", "\tfoo=1", "foo=1 ", "foo=1\t", "\t foo=1 \t"] {
        let (parent, state) = suite
            .single(&[("traceparent", UNSAMPLED), ("tracestate", value)])
            .await;
        assert_eq!(parent.trace_id, TRACE_ID);
        assert_eq!(state.get("foo"), Some("1"), "{value:?}");
    }
}

/// Each `tracestate` must be discarded (the trace is still continued).
async fn discards(values: &[&str], keys: &[&str]) {
    let suite = Suite::start().await;
    for value in values {
        let (parent, state) = suite
            .single(&[("traceparent", UNSAMPLED), ("tracestate", value)])
            .await;
        assert_eq!(parent.trace_id, TRACE_ID);
        for key in keys {
            assert_eq!(state.get(key), None, "{value:?} kept {key}");
        }
    }
}

#[tokio::test]
async fn test_tracestate_key_illegal_characters() {
    discards(
        &["foo =1", "FOO=1", "foo.bar=1"],
        &["foo ", "FOO", "foo.bar"],
    )
    .await;
}

#[tokio::test]
async fn test_tracestate_key_illegal_vendor_format() {
    let suite = Suite::start().await;
    for (value, key) in [
        ("foo@=1,bar=2", "foo@"),
        ("foo@@bar=1,bar=2", "foo@@bar"),
        ("foo@bar@baz=1,bar=2", "foo@bar@baz"),
    ] {
        let (_, state) = suite
            .single(&[("traceparent", UNSAMPLED), ("tracestate", value)])
            .await;
        assert_eq!(state.get(key), Some("1"), "{value}");
        assert_eq!(state.get("bar"), Some("2"), "{value}");
    }
    let (_, state) = suite
        .single(&[("traceparent", UNSAMPLED), ("tracestate", "@foo=1,bar=2")])
        .await;
    assert_eq!(state.get("bar"), None);
}

#[tokio::test]
async fn test_tracestate_member_count_limit() {
    let suite = Suite::start().await;
    let member = |n: usize| format!("bar{n:02}={n:02}");
    let list =
        |range: std::ops::RangeInclusive<usize>| range.map(member).collect::<Vec<_>>().join(",");
    let (first, second, third) = (list(1..=10), list(11..=20), list(21..=30));
    let (fourth_32, fourth_33) = (list(31..=32), list(31..=33));
    let (_, state) = suite
        .single(&[
            ("traceparent", UNSAMPLED),
            ("tracestate", &first),
            ("tracestate", &second),
            ("tracestate", &third),
            ("tracestate", &fourth_32),
        ])
        .await;
    assert_eq!(state.get("bar01"), Some("01"));
    assert_eq!(state.0.len(), 32);
    let (_, state) = suite
        .single(&[
            ("traceparent", UNSAMPLED),
            ("tracestate", &first),
            ("tracestate", &second),
            ("tracestate", &third),
            ("tracestate", &fourth_33),
        ])
        .await;
    assert_eq!(state.get("bar01"), None);
}

#[tokio::test]
async fn test_tracestate_key_length_limit() {
    let suite = Suite::start().await;
    for key in [
        "z".repeat(256),
        format!("{}@{}", "t".repeat(241), "v".repeat(14)),
        format!("{}@v", "t".repeat(242)),
        format!("t@{}", "v".repeat(15)),
    ] {
        let (_, state) = suite
            .single(&[
                ("traceparent", UNSAMPLED),
                ("tracestate", "foo=1"),
                ("tracestate", &format!("{key}=1")),
            ])
            .await;
        assert_eq!(state.get("foo"), Some("1"), "{key}");
        assert_eq!(state.get(&key), Some("1"), "{key}");
    }
    let (_, state) = suite
        .single(&[
            ("traceparent", UNSAMPLED),
            ("tracestate", "foo=1"),
            ("tracestate", &format!("{}=1", "z".repeat(257))),
        ])
        .await;
    assert_eq!(state.get("foo"), None);
}

#[tokio::test]
async fn test_tracestate_value_illegal_characters() {
    discards(&["foo=bar=baz"], &["foo"]).await;
    discards(&["foo=,bar=3"], &["foo", "bar"]).await;
}

// ---- AdvancedTest -------------------------------------------------------------------------

async fn three_callbacks(headers: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
    let suite = Suite::start().await;
    let parents: Vec<Traceparent> = suite
        .make_request(headers, 3)
        .await
        .iter()
        .map(traceparent)
        .collect();
    let mut trace_ids: Vec<String> = parents.iter().map(|p| p.trace_id.clone()).collect();
    let mut parent_ids: Vec<String> = parents.iter().map(|p| p.parent_id.clone()).collect();
    trace_ids.dedup();
    parent_ids.sort();
    parent_ids.dedup();
    (trace_ids, parent_ids)
}

#[tokio::test]
async fn test_multiple_requests_with_valid_traceparent() {
    let (trace_ids, parent_ids) = three_callbacks(&[("traceparent", SAMPLED)]).await;
    assert_eq!(trace_ids, [TRACE_ID]);
    assert_eq!(parent_ids.len(), 3);
}

#[tokio::test]
async fn test_multiple_requests_without_traceparent() {
    let (trace_ids, parent_ids) = three_callbacks(&[]).await;
    // One request, one new trace: each call back is a child span in it.
    assert_eq!(trace_ids.len(), 1);
    assert_eq!(parent_ids.len(), 3);
}

#[tokio::test]
async fn test_multiple_requests_with_illegal_traceparent() {
    let (trace_ids, parent_ids) = three_callbacks(&[(
        "traceparent",
        "00-00000000000000000000000000000000-1234567890123456-01",
    )])
    .await;
    assert!(!trace_ids.contains(&"0".repeat(32)));
    assert_eq!(parent_ids.len(), 3);
}

// ---- TraceContext2Test (Level 2) ----------------------------------------------------------

#[tokio::test]
async fn test_propagates_random_flag() {
    let suite = Suite::start().await;
    let (parent, _) = suite
        .single(&[(
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-02",
        )])
        .await;
    assert_eq!(parent.trace_id, TRACE_ID);
    assert_ne!(parent.parent_id, PARENT_ID);
    assert_eq!(parent.flags & 0x02, 0x02, "random flag not set: {parent:?}");
    // Not sampled by the caller, so not sampled here either: the spans were dropped, and the
    // flag still went out.
    assert_eq!(parent.flags & 0x01, 0);
    assert!(suite.tracing.spans().is_empty());
}

#[tokio::test]
async fn an_unset_random_flag_stays_unset_and_unknown_flags_are_cleared() {
    // §3.2.2.5.2: unset in, unset out for the same trace; §3.2.2.5.3: unknown flags are zeroed.
    let suite = Suite::start().await;
    for (flags, out) in [("00", 0x00), ("01", 0x01), ("ff", 0x03), ("fd", 0x01)] {
        let value = format!("00-{TRACE_ID}-{PARENT_ID}-{flags}");
        let (parent, _) = suite.single(&[("traceparent", &value)]).await;
        assert_eq!(parent.trace_id, TRACE_ID);
        assert_eq!(parent.flags, out, "{value}");
    }
}
