//! One request through an axum service, which calls a tonic service on loopback and publishes a
//! message that a consumer processes: one trace, one correlation ID, and the right parent/child
//! links, read back from the in-memory exporter.
//!
//! ```text
//! test root ─ GET (client) ─ GET /orders/{id} (server) ─┬─ Health/Check (client) ─ Health/Check (server)
//!                                                       └─ publish orders ─ process orders
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ms_tracing::message::{self, ConsumerRelation};
use ms_tracing::testing::TestTracing;
use ms_tracing::{ClientTraceLayer, CorrelationId, CorrelationIdLayer, ServerTraceLayer};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SpanData;
use tokio::sync::mpsc;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Service, ServiceBuilder, ServiceExt};
use tracing::Instrument as _;

/// The in-memory bus: a message is its headers.
type Bus = mpsc::UnboundedSender<BTreeMap<String, String>>;

async fn start_grpc() -> std::net::SocketAddr {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("billing", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let layers = ServiceBuilder::new()
        .layer(CorrelationIdLayer::new())
        .layer(ServerTraceLayer::new())
        .into_inner();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layers)
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    address
}

async fn start_http(grpc: std::net::SocketAddr, bus: Bus) -> std::net::SocketAddr {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect_lazy();
    let billing = HealthClient::new(
        ServiceBuilder::new()
            .layer(ClientTraceLayer::new())
            .service(channel),
    );
    let handler = move || {
        let (mut billing, bus) = (billing.clone(), bus.clone());
        async move {
            // Neither the trace nor the correlation ID is passed by hand below.
            let status = billing
                .check(HealthCheckRequest {
                    service: "billing".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            let span = message::producer_span("orders");
            let mut headers = BTreeMap::new();
            span.in_scope(|| message::inject(&mut headers));
            bus.send(headers).unwrap();
            format!("billing status {status}")
        }
    };
    let app = axum::Router::new()
        .route("/orders/{id}", axum::routing::post(handler))
        .layer(ServerTraceLayer::new())
        .layer(CorrelationIdLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

async fn wait_for(tracing: &TestTracing, names: &[&str]) -> Vec<SpanData> {
    for _ in 0..2_000 {
        let spans = tracing.spans();
        if names
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name))
        {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("waiting for {names:?}, have {:?}", tracing.names());
}

fn find<'a>(spans: &'a [SpanData], name: &str, kind: &SpanKind) -> &'a SpanData {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.name == name && s.span_kind == *kind)
        .collect();
    assert_eq!(found.len(), 1, "{name} {kind:?} in {spans:#?}");
    found[0]
}

#[tokio::test]
async fn one_trace_and_one_correlation_id_from_http_through_grpc_to_a_message() {
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();

    let (bus, mut inbox) = mpsc::unbounded_channel();
    let grpc = start_grpc().await;
    let http = start_http(grpc, bus).await;

    // The consumer: its own task, as a bus subscriber would be.
    let consumer = tokio::spawn(async move {
        let headers = inbox.recv().await.unwrap();
        let received = message::extract(&headers);
        let span = received.consumer_span("orders", ConsumerRelation::default());
        let id = received.correlation_id_or_new();
        id.scope(async { CorrelationId::current().unwrap() }.instrument(span))
            .await
    });

    // The caller: a root span and a traced hyper client, no correlation ID of its own.
    let root = tracing::info_span!("test root");
    let response = async {
        let mut client = ServiceBuilder::new()
            .layer(ClientTraceLayer::new())
            .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
        let request = Request::post(format!("http://{http}/orders/7"))
            .body(Empty::new())
            .unwrap();
        client.ready().await.unwrap().call(request).await.unwrap()
    }
    .instrument(root.clone())
    .await;
    let echoed = response.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "billing status 1");
    drop(root);
    let consumed_under = consumer.await.unwrap();

    let spans = wait_for(
        &tracing,
        &[
            "test root",
            "POST",
            "POST /orders/{id}",
            "grpc.health.v1.Health/Check",
            "publish orders",
            "process orders",
        ],
    )
    .await;
    let root = find(&spans, "test root", &SpanKind::Internal);
    let http_client = find(&spans, "POST", &SpanKind::Client);
    let http_server = find(&spans, "POST /orders/{id}", &SpanKind::Server);
    let grpc_client = find(&spans, "grpc.health.v1.Health/Check", &SpanKind::Client);
    let grpc_server = find(&spans, "grpc.health.v1.Health/Check", &SpanKind::Server);
    let publish = find(&spans, "publish orders", &SpanKind::Producer);
    let process = find(&spans, "process orders", &SpanKind::Consumer);

    // One trace.
    let trace = root.span_context.trace_id();
    for span in [
        http_client,
        http_server,
        grpc_client,
        grpc_server,
        publish,
        process,
    ] {
        assert_eq!(span.span_context.trace_id(), trace, "{}", span.name);
    }
    // The right parents.
    let parent_of = |child: &SpanData, parent: &SpanData| {
        assert_eq!(
            child.parent_span_id,
            parent.span_context.span_id(),
            "{} <- {}",
            parent.name,
            child.name
        );
    };
    parent_of(http_client, root);
    parent_of(http_server, http_client);
    parent_of(grpc_client, http_server);
    parent_of(grpc_server, grpc_client);
    parent_of(publish, http_server);
    parent_of(process, publish);
    assert_eq!(
        process.links.links[0].span_context.span_id(),
        publish.span_context.span_id()
    );
    for remote_child in [http_server, grpc_server, process] {
        assert!(remote_child.parent_span_is_remote, "{}", remote_child.name);
    }

    // One correlation ID: generated by the HTTP service, echoed, carried to gRPC and the message.
    assert!(CorrelationId::parse(&echoed).is_ok());
    assert_eq!(consumed_under.as_str(), echoed);
    for span in [http_server, grpc_client, grpc_server, publish, process] {
        assert_eq!(
            TestTracing::attribute(span, "correlation.id").as_deref(),
            Some(echoed.as_str()),
            "{}",
            span.name
        );
    }
}
