//! `CorrelationIdLayer` against hostile and ordinary headers, in process and over a real socket.

use std::convert::Infallible;

use http::{HeaderName, Request, Response};
use ms_tracing::correlation::{
    CorrelationId, CorrelationIdLayer, IncomingIds, MAX_CORRELATION_ID_LEN, X_CORRELATION_ID,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Service, ServiceBuilder, ServiceExt};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the handler saw, and what the response said.
struct Outcome {
    echoed: String,
    seen_by_handler: String,
}

async fn send(layer: &CorrelationIdLayer, headers: &[(&str, &[u8])]) -> Outcome {
    let mut service =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(|request: Request<()>| async move {
                let current = CorrelationId::current().expect("current inside the handler");
                assert_eq!(request.extensions().get::<CorrelationId>(), Some(&current));
                Ok::<_, Infallible>(Response::new(current.to_string()))
            });
    let mut request = Request::builder();
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request.body(()).unwrap())
        .await
        .unwrap();
    let echoed = response
        .headers()
        .get_all(X_CORRELATION_ID)
        .iter()
        .collect::<Vec<_>>();
    assert_eq!(echoed.len(), 1, "exactly one echoed header");
    Outcome {
        echoed: echoed[0].to_str().unwrap().to_owned(),
        seen_by_handler: response.into_body(),
    }
}

fn is_fresh(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok_and(|uuid| uuid.get_version_num() == 7)
}

#[tokio::test]
async fn a_well_formed_id_is_kept_echoed_and_current() {
    let layer = CorrelationIdLayer::new();
    let outcome = send(&layer, &[("x-correlation-id", b"svc:order-42_retry.1")]).await;
    assert_eq!(outcome.echoed, "svc:order-42_retry.1");
    assert_eq!(outcome.seen_by_handler, "svc:order-42_retry.1");
    assert_eq!(layer.rejected(), 0);
}

#[tokio::test]
async fn a_missing_id_is_generated_without_counting_a_rejection() {
    let layer = CorrelationIdLayer::new();
    let outcome = send(&layer, &[]).await;
    assert!(is_fresh(&outcome.echoed), "{}", outcome.echoed);
    assert_eq!(outcome.echoed, outcome.seen_by_handler);
    assert_eq!(layer.rejected(), 0);
}

#[tokio::test]
async fn hostile_ids_are_replaced_counted_and_never_echoed() {
    let long = "a".repeat(MAX_CORRELATION_ID_LEN + 1);
    let hostile: [&[u8]; 5] = [
        long.as_bytes(),
        "caf\u{e9}".as_bytes(), // non-ASCII (UTF-8 é)
        b"\xff\xfe",            // not UTF-8 at all
        b"id with spaces",
        b"a\"b",
    ];
    let layer = CorrelationIdLayer::new();
    for (n, value) in hostile.into_iter().enumerate() {
        let outcome = send(&layer, &[("x-correlation-id", value)]).await;
        assert!(is_fresh(&outcome.echoed), "{value:?} -> {}", outcome.echoed);
        assert_eq!(outcome.echoed, outcome.seen_by_handler);
        assert_eq!(layer.rejected(), n as u64 + 1);
    }
    // The longest accepted ID is kept.
    let longest = "b".repeat(MAX_CORRELATION_ID_LEN);
    let outcome = send(&layer, &[("x-correlation-id", longest.as_bytes())]).await;
    assert_eq!(outcome.echoed, longest);
}

#[tokio::test]
async fn a_repeated_header_is_ambiguous_and_replaced() {
    let layer = CorrelationIdLayer::new();
    let outcome = send(
        &layer,
        &[
            ("x-correlation-id", b"first"),
            ("x-correlation-id", b"second"),
        ],
    )
    .await;
    assert!(is_fresh(&outcome.echoed), "{}", outcome.echoed);
    assert_eq!(layer.rejected(), 1);
    // Even two identical copies: a proxy that appends rather than replaces is misconfigured,
    // and the rule stays simple.
    let outcome = send(
        &layer,
        &[("x-correlation-id", b"same"), ("x-correlation-id", b"same")],
    )
    .await;
    assert!(is_fresh(&outcome.echoed));
    assert_eq!(layer.rejected(), 2);
}

#[tokio::test]
async fn aliases_are_read_in_order_only_when_the_main_header_is_absent() {
    let layer = CorrelationIdLayer::builder()
        .alias(X_REQUEST_ID)
        .alias(HeaderName::from_static("x-amzn-trace-id"))
        .build();
    let outcome = send(&layer, &[("x-request-id", b"from-alias")]).await;
    assert_eq!(outcome.echoed, "from-alias");
    let outcome = send(
        &layer,
        &[
            ("x-amzn-trace-id", b"second-alias"),
            ("x-request-id", b"first-alias"),
        ],
    )
    .await;
    assert_eq!(outcome.echoed, "first-alias");
    let outcome = send(
        &layer,
        &[
            ("x-request-id", b"from-alias"),
            ("x-correlation-id", b"main"),
        ],
    )
    .await;
    assert_eq!(outcome.echoed, "main");
    // A bad main header is not rescued by a good alias: the caller said something wrong.
    let outcome = send(
        &layer,
        &[
            ("x-request-id", b"from-alias"),
            ("x-correlation-id", b"bad value"),
        ],
    )
    .await;
    assert!(is_fresh(&outcome.echoed));
    assert_eq!(layer.rejected(), 1);
}

#[tokio::test]
async fn a_custom_header_is_read_and_echoed() {
    let layer = CorrelationIdLayer::builder().header(X_REQUEST_ID).build();
    let mut service = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let request = Request::builder()
        .header(X_REQUEST_ID, "r-1")
        .body(())
        .unwrap();
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.headers()[X_REQUEST_ID], "r-1");
    assert!(!response.headers().contains_key(X_CORRELATION_ID));
}

#[tokio::test]
async fn ignoring_incoming_ids_always_generates_and_rejects_nothing() {
    let layer = CorrelationIdLayer::builder()
        .incoming(IncomingIds::Ignore)
        .build();
    let outcome = send(&layer, &[("x-correlation-id", b"outside-id")]).await;
    assert!(is_fresh(&outcome.echoed));
    assert_eq!(layer.rejected(), 0);
}

/// Header names are case-insensitive on the wire: a raw HTTP/1.1 request with mixed-case names,
/// through a real hyper server on loopback.
#[tokio::test]
async fn mixed_case_header_names_on_the_wire_are_the_same_header() {
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|| async { CorrelationId::current().unwrap().to_string() }),
        )
        .layer(CorrelationIdLayer::builder().alias(X_REQUEST_ID).build());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let raw = |headers: &str| {
        format!("GET / HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n")
    };
    let exchange = |request: String| async move {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };

    let response = exchange(raw("X-Correlation-ID: Mixed-Case-1\r\n")).await;
    assert!(response.ends_with("Mixed-Case-1"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("x-correlation-id: mixed-case-1"),
        "{response}"
    );

    let response = exchange(raw("X-REQUEST-ID: upper-alias\r\n")).await;
    assert!(response.ends_with("upper-alias"), "{response}");

    // The same header twice under two spellings is still a repeated header.
    let response = exchange(raw("x-correlation-id: one\r\nX-Correlation-Id: two\r\n")).await;
    let body = response.rsplit("\r\n\r\n").next().unwrap();
    assert!(is_fresh(body), "{response}");

    server.abort();
}
