//! Server and client trace layers over real sockets: axum on loopback through a hyper-util
//! client, and a tonic health service through a tonic channel.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ms_tracing::testing::TestTracing;
use ms_tracing::{ClientTraceLayer, ServerTraceLayer};
use opentelemetry::trace::{SpanId, Status};
use opentelemetry_sdk::trace::SpanData;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Service, ServiceBuilder, ServiceExt};

async fn serve_axum() -> SocketAddr {
    let app = axum::Router::new()
        .route("/orders/{id}", axum::routing::get(|| async { "order" }))
        .route(
            "/broken",
            axum::routing::get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "broken") }),
        )
        .layer(ServerTraceLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

async fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> StatusCode {
    let mut client = ServiceBuilder::new()
        .layer(ClientTraceLayer::new())
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let mut request = Request::get(format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .ready()
        .await
        .unwrap()
        .call(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

/// Waits (yielding to the server tasks) until `count` spans named `name` have ended.
async fn spans_named(tracing: &TestTracing, name: &str, count: usize) -> Vec<SpanData> {
    for _ in 0..2_000 {
        let found: Vec<SpanData> = tracing
            .spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect();
        if found.len() >= count {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "no {count} spans named {name:?} among {:?}",
        tracing.names()
    );
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    TestTracing::attribute(span, key)
}

#[tokio::test]
async fn http_server_span_has_the_route_and_is_the_child_of_the_client_span() {
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let address = serve_axum().await;
    assert_eq!(get(address, "/orders/42", &[]).await, StatusCode::OK);

    let server = spans_named(&tracing, "GET /orders/{id}", 1).await.remove(0);
    let client = spans_named(&tracing, "GET", 1).await.remove(0);
    assert_eq!(
        server.span_context.trace_id(),
        client.span_context.trace_id()
    );
    assert_eq!(server.parent_span_id, client.span_context.span_id());
    assert!(server.parent_span_is_remote);
    assert_eq!(
        attribute(&server, "http.route").as_deref(),
        Some("/orders/{id}")
    );
    assert_eq!(
        attribute(&server, "url.path").as_deref(),
        Some("/orders/42")
    );
    assert_eq!(
        attribute(&server, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        attribute(&server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(server.status, Status::Unset);
    assert_eq!(format!("{:?}", server.span_kind), "Server");
    assert_eq!(format!("{:?}", client.span_kind), "Client");
    assert_eq!(
        attribute(&client, "url.full"),
        Some(format!("http://{address}/orders/42"))
    );
    assert_eq!(
        attribute(&client, "server.address").as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn server_errors_mark_the_span_client_errors_only_mark_the_client() {
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let address = serve_axum().await;
    assert_eq!(
        get(address, "/broken", &[]).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let server = spans_named(&tracing, "GET /broken", 1).await.remove(0);
    assert!(matches!(server.status, Status::Error { .. }));
    assert_eq!(
        attribute(&server, "http.response.status_code").as_deref(),
        Some("500")
    );

    tracing.reset();
    assert_eq!(get(address, "/missing", &[]).await, StatusCode::NOT_FOUND);
    // Unrouted: named by the method alone, no http.route, and a 404 is not a server failure.
    let spans = spans_named(&tracing, "GET", 2).await;
    let kind = |s: &SpanData| format!("{:?}", s.span_kind);
    let server = spans.iter().find(|s| kind(s) == "Server").unwrap();
    let client = spans.iter().find(|s| kind(s) == "Client").unwrap();
    assert_eq!(attribute(server, "http.route"), None);
    assert_eq!(server.status, Status::Unset);
    assert!(matches!(client.status, Status::Error { .. }));
}

#[tokio::test]
async fn hostile_trace_headers_start_a_new_trace_and_never_fail_the_request() {
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let address = serve_axum().await;
    let hostile = [
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "garbage",
    ];
    for (n, traceparent) in hostile.into_iter().enumerate() {
        // Sent raw (no client layer), so the only trace context is the hostile one.
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let request = Request::get(format!("http://{address}/orders/1"))
            .header("traceparent", traceparent)
            .header("tracestate", "rojo=1")
            .body(Empty::new())
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{traceparent}");
        let servers = spans_named(&tracing, "GET /orders/{id}", n + 1).await;
        let server = &servers[n];
        assert_eq!(server.parent_span_id, SpanId::INVALID, "{traceparent}");
        assert_ne!(
            server.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "{traceparent}"
        );
        assert_eq!(
            server.span_context.trace_state().header(),
            "",
            "{traceparent}"
        );
    }
}

#[tokio::test]
async fn grpc_spans_carry_rpc_attributes_and_classify_status_by_side() {
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("billing", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(ServerTraceLayer::new())
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    let mut client = HealthClient::new(
        ServiceBuilder::new()
            .layer(ClientTraceLayer::new())
            .service(channel),
    );

    let ok = client
        .check(HealthCheckRequest {
            service: "billing".into(),
        })
        .await
        .unwrap();
    assert_eq!(ok.into_inner().status, 1); // SERVING
    let spans = spans_named(&tracing, "grpc.health.v1.Health/Check", 2).await;
    let kind = |s: &SpanData| format!("{:?}", s.span_kind);
    let server = spans.iter().find(|s| kind(s) == "Server").unwrap();
    let client_span = spans.iter().find(|s| kind(s) == "Client").unwrap();
    assert_eq!(server.parent_span_id, client_span.span_context.span_id());
    for span in [server, client_span] {
        assert_eq!(attribute(span, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(
            attribute(span, "rpc.service").as_deref(),
            Some("grpc.health.v1.Health")
        );
        assert_eq!(attribute(span, "rpc.method").as_deref(), Some("Check"));
        assert_eq!(
            attribute(span, "rpc.grpc.status_code").as_deref(),
            Some("0")
        );
        assert_eq!(span.status, Status::Unset);
    }

    // NOT_FOUND (5) is the caller's problem: an error for the client span only.
    tracing.reset();
    let missing = client
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let spans = spans_named(&tracing, "grpc.health.v1.Health/Check", 2).await;
    let server = spans.iter().find(|s| kind(s) == "Server").unwrap();
    let client_span = spans.iter().find(|s| kind(s) == "Client").unwrap();
    assert_eq!(
        attribute(server, "rpc.grpc.status_code").as_deref(),
        Some("5")
    );
    assert_eq!(
        attribute(client_span, "rpc.grpc.status_code").as_deref(),
        Some("5")
    );
    assert_eq!(server.status, Status::Unset);
    assert!(matches!(client_span.status, Status::Error { .. }));
}

#[tokio::test]
async fn baggage_received_by_a_server_goes_out_with_its_calls() {
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    // The downstream "network" answers with the baggage header it was sent.
    let downstream = ServiceBuilder::new()
        .layer(ClientTraceLayer::new())
        .service_fn(|request: Request<()>| async move {
            let baggage = request.headers().get("baggage").cloned();
            Ok::<_, std::convert::Infallible>(http::Response::new(baggage))
        });
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || {
                let mut downstream = downstream.clone();
                async move {
                    let request = Request::get("http://downstream/").body(()).unwrap();
                    let response = downstream
                        .ready()
                        .await
                        .unwrap()
                        .call(request)
                        .await
                        .unwrap();
                    let sent = response.into_body().into_inner();
                    sent.map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default()
                }
            }),
        )
        .layer(ServerTraceLayer::new());
    let request = Request::get("/")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("baggage", "tenant=acme")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "tenant=acme");
}

#[tokio::test]
async fn a_trailers_only_grpc_error_is_classified_on_both_sides() {
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(ServerTraceLayer::new())
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    // A method the server does not have: tonic answers UNIMPLEMENTED (12) in the headers.
    let mut client = ServiceBuilder::new()
        .layer(ClientTraceLayer::new())
        .service(
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http::<Empty<Bytes>>(),
        );
    let request = Request::post(format!("http://{address}/grpc.health.v1.Health/Nope"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Empty::new())
        .unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "12");
    response.into_body().collect().await.unwrap();

    let spans = spans_named(&tracing, "grpc.health.v1.Health/Nope", 2).await;
    for span in &spans {
        assert_eq!(
            attribute(span, "rpc.grpc.status_code").as_deref(),
            Some("12"),
            "{:?}",
            span.span_kind
        );
        // UNIMPLEMENTED points at the server: an error on both sides.
        assert!(
            matches!(span.status, Status::Error { .. }),
            "{:?}",
            span.span_kind
        );
    }
}

#[tokio::test]
async fn the_correlation_id_reaches_the_span_whichever_layer_is_outside() {
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let handler =
        |_: Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(())) };
    let mut correlation_outside = ServiceBuilder::new()
        .layer(ms_tracing::CorrelationIdLayer::new())
        .layer(ServerTraceLayer::new())
        .service_fn(handler);
    let mut trace_outside = ServiceBuilder::new()
        .layer(ServerTraceLayer::new())
        .layer(ms_tracing::CorrelationIdLayer::new())
        .service_fn(handler);
    for (n, id) in ["outer-1", "inner-2"].into_iter().enumerate() {
        let request = Request::get("/")
            .header("x-correlation-id", id)
            .body(())
            .unwrap();
        let response = if n == 0 {
            correlation_outside
                .ready()
                .await
                .unwrap()
                .call(request)
                .await
                .unwrap()
        } else {
            trace_outside
                .ready()
                .await
                .unwrap()
                .call(request)
                .await
                .unwrap()
        };
        drop(response);
        let span = tracing.span("GET");
        assert_eq!(attribute(&span, "correlation.id").as_deref(), Some(id));
        tracing.reset();
    }
}

#[tokio::test]
async fn skipped_paths_get_no_span_and_still_answer() {
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/orders/{id}", axum::routing::get(|| async { "order" }))
        .layer(ServerTraceLayer::new().skip_path("/healthz"));
    for (path, body) in [("/healthz", "ok"), ("/orders/1", "order")] {
        let request = Request::get(path).body(axum::body::Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, body);
    }
    assert_eq!(tracing.names(), ["GET /orders/{id}"]);
}
