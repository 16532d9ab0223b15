//! ms-tracing's context through the bus: an HTTP request (under `CorrelationIdLayer` and
//! `ServerTraceLayer`) publishes an event; a consumer handles it and publishes a follow-up
//! that a second consumer handles. One trace and one correlation ID end to end, read back
//! from the in-memory exporter; and hostile context on an incoming envelope never stops a
//! handler.
//!
//! ```text
//! POST /orders (server) ─ publish orders.order (producer) ─ process orders.order.placed
//!   ─ publish billing.invoice (producer) ─ process billing.invoice.created
//! ```
#![cfg(feature = "memory")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Request, StatusCode};
use ms_bus::consumer::{Consumer, ConsumerHandle, Message};
use ms_bus::memory::MemoryBus;
use ms_bus::propagation::TraceContextPropagation;
use ms_bus::{Envelope, EventPublisher, Subscription};
use ms_tracing::message::ConsumerRelation;
use ms_tracing::testing::TestTracing;
use ms_tracing::{CorrelationId, CorrelationIdLayer, ServerTraceLayer};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::SpanData;
use tower::ServiceExt as _;

/// What a handler's `call` saw: the correlation ID and trace ID current in it.
type InCall = Arc<Mutex<Vec<(Option<CorrelationId>, TraceId)>>>;

/// What a handler saw: the envelope and the correlation ID current while it ran.
type Seen = Arc<Mutex<Vec<(Envelope, Option<CorrelationId>)>>>;

/// A consumer that records what it saw and, when `follow_up` says so, publishes an event to
/// that topic from inside the handler (context passed by no one).
async fn consume(
    bus: &MemoryBus,
    topic: &str,
    seen: &Seen,
    follow_up: Option<(&'static str, &'static str)>,
) -> ConsumerHandle {
    let (bus_for_handler, seen) = (bus.clone(), seen.clone());
    Consumer::new(Subscription::events(topic, "tests").unwrap())
        .serve(
            bus,
            tower::service_fn(move |message: Message| {
                let (bus, seen) = (bus_for_handler.clone(), seen.clone());
                async move {
                    if let Some((topic, ty)) = follow_up {
                        let event = Envelope::builder(ty, "/billing").build().unwrap();
                        bus.publish(topic, &event).await.unwrap();
                    }
                    let envelope = message.into_envelope();
                    seen.lock()
                        .unwrap()
                        .push((envelope, CorrelationId::current()));
                    Ok::<_, Infallible>(())
                }
            }),
        )
        .await
        .unwrap()
}

fn only<'a>(spans: &'a [SpanData], name: &str, kind: &SpanKind) -> &'a SpanData {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.name == name && s.span_kind == *kind)
        .collect();
    assert_eq!(found.len(), 1, "{name} {kind:?} in {spans:#?}");
    found[0]
}

fn assert_child(child: &SpanData, parent: &SpanData) {
    assert_eq!(
        child.span_context.trace_id(),
        parent.span_context.trace_id(),
        "{} in the trace of {}",
        child.name,
        parent.name
    );
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "{} <- {}",
        parent.name,
        child.name
    );
}

/// `POST /orders` through an axum app under `CorrelationIdLayer` and `ServerTraceLayer`,
/// whose handler publishes `orders.order.placed`; returns the correlation ID the response
/// echoed.
/// The publisher's side of the messaging conventions on a producer span: its destination, the
/// system, and the message id its consumer span names too.
fn assert_publication(publish: &SpanData, destination: &str, process: &SpanData) {
    let attribute = |span, key| TestTracing::attribute(span, key);
    assert_eq!(
        attribute(publish, "messaging.destination.name").as_deref(),
        Some(destination)
    );
    assert_eq!(
        attribute(publish, "messaging.system").as_deref(),
        Some("memory")
    );
    let id = attribute(publish, "messaging.message.id");
    assert!(id.is_some(), "{publish:#?}");
    assert_eq!(id, attribute(process, "messaging.message.id"));
}

async fn post_order(bus: &MemoryBus) -> CorrelationId {
    let app = axum::Router::new()
        .route(
            "/orders",
            axum::routing::post({
                let bus = bus.clone();
                move || async move {
                    let event = Envelope::builder("orders.order.placed", "/orders")
                        .build()
                        .unwrap();
                    bus.publish("orders.order", &event).await.unwrap();
                    StatusCode::ACCEPTED
                }
            }),
        )
        .layer(ServerTraceLayer::new())
        .layer(CorrelationIdLayer::new());
    let response = app
        .oneshot(
            Request::post("/orders")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let echoed =
        CorrelationId::parse(response.headers()["x-correlation-id"].to_str().unwrap()).unwrap();
    // The server span ends with the response body.
    drop(response);

    echoed
}

#[tokio::test]
async fn one_trace_and_one_correlation_id_from_http_through_two_consumers() {
    // Single-threaded runtime: every task below runs under this subscriber.
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    // The default propagation, as every adapter and consumer gets it.
    let bus = MemoryBus::new();

    let (placed, invoiced): (Seen, Seen) = Default::default();
    let billing = consume(
        &bus,
        "orders.order",
        &placed,
        Some(("billing.invoice", "billing.invoice.created")),
    )
    .await;
    let reporting = consume(&bus, "billing.invoice", &invoiced, None).await;

    let echoed = post_order(&bus).await;

    billing
        .shutdown_when(|| placed.lock().unwrap().len() == 1)
        .await
        .unwrap();
    reporting
        .shutdown_when(|| invoiced.lock().unwrap().len() == 1)
        .await
        .unwrap();

    // One correlation ID: echoed on the response, in both envelopes, current in both handlers.
    for (envelope, current) in [&placed.lock().unwrap()[0], &invoiced.lock().unwrap()[0]] {
        assert_eq!(
            envelope.correlation_id().as_ref(),
            Some(&echoed),
            "{}",
            envelope.ty()
        );
        assert_eq!(current.as_ref(), Some(&echoed), "{}", envelope.ty());
        assert!(envelope.traceparent().is_some(), "{}", envelope.ty());
    }

    // One trace, with the right parents and links.
    let spans = tracing.spans();
    let server: Vec<_> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Server)
        .collect();
    assert_eq!(server.len(), 1, "{spans:#?}");
    let server = server[0];
    assert_eq!(
        server.parent_span_id,
        SpanId::INVALID,
        "the request starts the trace"
    );
    let placed_span = only(&spans, "process orders.order.placed", &SpanKind::Consumer);
    let invoiced_span = only(
        &spans,
        "process billing.invoice.created",
        &SpanKind::Consumer,
    );
    // Each publication is a producer span named after its destination, child of the span
    // that published; each consumer span is the child of, and linked to, that producer span.
    let publish_placed = only(&spans, "publish orders.order", &SpanKind::Producer);
    let publish_invoiced = only(&spans, "publish billing.invoice", &SpanKind::Producer);
    assert_child(publish_placed, server);
    assert_child(placed_span, publish_placed);
    assert_child(publish_invoiced, placed_span);
    assert_child(invoiced_span, publish_invoiced);
    assert_eq!(
        placed_span.links.links[0].span_context.span_id(),
        publish_placed.span_context.span_id()
    );
    assert_eq!(
        invoiced_span.links.links[0].span_context.span_id(),
        publish_invoiced.span_context.span_id()
    );
    assert_publication(publish_placed, "orders.order", placed_span);
    assert_publication(publish_invoiced, "billing.invoice", invoiced_span);
    for span in [publish_placed, placed_span, publish_invoiced, invoiced_span] {
        assert_eq!(
            TestTracing::attribute(span, "correlation.id").as_deref(),
            Some(echoed.as_str()),
            "{}",
            span.name
        );
    }
    // The envelopes carry their producer spans.
    let traceparent = |span: &SpanData| {
        format!(
            "00-{}-{}-{:02x}",
            span.span_context.trace_id(),
            span.span_context.span_id(),
            span.span_context.trace_flags().to_u8()
        )
    };
    assert_eq!(
        placed.lock().unwrap()[0].0.traceparent(),
        Some(traceparent(publish_placed).as_str())
    );
    assert_eq!(
        invoiced.lock().unwrap()[0].0.traceparent(),
        Some(traceparent(publish_invoiced).as_str())
    );
}

#[tokio::test]
async fn a_link_only_consumer_starts_its_own_trace_linked_to_the_producer() {
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let bus = MemoryBus::new();
    let seen = Seen::default();
    let handle = Consumer::new(Subscription::events("orders.order", "tests").unwrap())
        .propagation(Arc::new(
            TraceContextPropagation::new().relation(ConsumerRelation::LinkOnly),
        ))
        .serve(&bus, {
            let seen = seen.clone();
            tower::service_fn(move |message: Message| {
                seen.lock().unwrap().push((message.into_envelope(), None));
                async { Ok::<_, Infallible>(()) }
            })
        })
        .await
        .unwrap();

    let producer = tracing::info_span!("producer");
    let event = Envelope::builder("orders.order.placed", "/orders")
        .build()
        .unwrap();
    tracing::Instrument::instrument(bus.publish("orders.order", &event), producer.clone())
        .await
        .unwrap();
    drop(producer);
    handle
        .shutdown_when(|| seen.lock().unwrap().len() == 1)
        .await
        .unwrap();

    let spans = tracing.spans();
    let producer = only(&spans, "producer", &SpanKind::Internal);
    let publish = only(&spans, "publish orders.order", &SpanKind::Producer);
    let process = only(&spans, "process orders.order.placed", &SpanKind::Consumer);
    assert_child(publish, producer);
    assert_ne!(
        process.span_context.trace_id(),
        publish.span_context.trace_id()
    );
    assert_eq!(process.parent_span_id, SpanId::INVALID);
    assert_eq!(
        process.links.links[0].span_context.span_id(),
        publish.span_context.span_id()
    );
}

/// Extensions a foreign or hostile producer might send, each of which must leave the handler
/// running under a fresh correlation ID (its own envelope id) and, for a bad `traceparent`, a new trace.
fn hostile() -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let good_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned();
    vec![
        ("over-long id", vec![("correlationid", "a".repeat(129))]),
        // CR, LF and NUL cannot even reach a handler: the builder and the decoders refuse
        // control characters (see `control_characters_never_make_an_envelope` below). Unicode's
        // line separator is no control character, and some log viewers break lines on it.
        (
            "log injection",
            vec![("correlationid", "x\u{2028}level=error forged".into())],
        ),
        ("non-ASCII id", vec![("correlationid", "ürün-42".into())]),
        ("empty id", vec![("correlationid", String::new())]),
        (
            "version ff",
            vec![(
                "traceparent",
                "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            )],
        ),
        (
            "all-zero trace id",
            vec![(
                "traceparent",
                "00-00000000000000000000000000000000-b7ad6b7169203331-01".into(),
            )],
        ),
        (
            "all-zero parent id",
            vec![(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01".into(),
            )],
        ),
        (
            "uppercase hex",
            vec![(
                "traceparent",
                "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01".into(),
            )],
        ),
        (
            "garbage",
            vec![
                ("traceparent", "\u{fffd}not a traceparent".into()),
                ("tracestate", "=,=,=".into()),
            ],
        ),
        (
            "both bad",
            vec![
                ("correlationid", "💥".into()),
                ("traceparent", "00-xyz".into()),
            ],
        ),
        // A valid parent with a malformed tracestate: the trace is kept, the state dropped.
        (
            "bad tracestate only",
            vec![
                ("traceparent", good_parent),
                ("tracestate", "@@@".repeat(400)),
            ],
        ),
    ]
}

#[test]
fn control_characters_never_make_an_envelope() {
    for (key, value) in [
        ("correlationid", "x\r\nlevel=error forged"),
        ("traceparent", "\u{0}not a traceparent"),
    ] {
        let built = Envelope::builder("t", "/s")
            .extension(key, value)
            .unwrap()
            .build();
        assert!(
            matches!(built, Err(ms_bus::EnvelopeError::InvalidCharacter { .. })),
            "{key}: {built:?}"
        );
    }
}

#[tokio::test]
async fn hostile_context_on_an_incoming_envelope_gets_a_fresh_id_and_trace() {
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let bus = MemoryBus::new();
    let seen = Seen::default();
    let cases = hostile();
    let handle = consume(&bus, "foreign.thing", &seen, None).await;
    for (name, extensions) in &cases {
        let mut event = Envelope::builder(
            format!("foreign.thing.{}", name.replace(' ', "")),
            "/foreign",
        );
        for (key, value) in extensions {
            event = event.extension(*key, value.clone()).unwrap();
        }
        bus.publish("foreign.thing", &event.build().unwrap())
            .await
            .unwrap();
    }
    handle
        .shutdown_when(|| seen.lock().unwrap().len() == cases.len())
        .await
        .unwrap();

    let spans = tracing.spans();
    let seen = seen.lock().unwrap();
    let mut fresh_ids = Vec::new();
    for (name, extensions) in &cases {
        let ty = format!("foreign.thing.{}", name.replace(' ', ""));
        let (envelope, current) = seen
            .iter()
            .find(|(envelope, _)| envelope.ty() == ty)
            .unwrap_or_else(|| panic!("{name}: the handler did not run"));
        let current = current
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no current id"));
        let sent_id = envelope.extension("correlationid");
        if sent_id.is_some() {
            assert_ne!(Some(current.as_str()), sent_id, "{name}");
        }
        // A conversation of its own: correlated by the message's id.
        assert_eq!(current.as_str(), envelope.id(), "{name}");
        fresh_ids.push(current.clone());

        let process = only(&spans, &format!("process {ty}"), &SpanKind::Consumer);
        assert_ne!(process.span_context.trace_id(), TraceId::INVALID, "{name}");
        let parent_kept = *name == "bad tracestate only";
        if parent_kept {
            assert_eq!(
                process.span_context.trace_id().to_string(),
                "0af7651916cd43dd8448eb211c80319c",
                "{name}"
            );
            assert!(
                process.span_context.trace_state().header().is_empty(),
                "{name}"
            );
        } else if extensions.iter().any(|(key, _)| *key == "traceparent") {
            assert_eq!(
                process.parent_span_id,
                SpanId::INVALID,
                "{name}: a new trace"
            );
            assert!(process.links.links.is_empty(), "{name}: no link to garbage");
        }
    }
    // Fresh means fresh: no two handlers shared an id.
    fresh_ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    fresh_ids.dedup();
    assert_eq!(fresh_ids.len(), cases.len());
}

#[tokio::test]
async fn the_handlers_call_runs_in_the_messages_context_not_only_its_future() {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let bus = MemoryBus::new();
    // What `call` itself (before any future exists) saw: correlation ID and trace ID.
    let in_call = InCall::default();
    let handle = Consumer::new(Subscription::events("orders.order", "tests").unwrap())
        .serve(&bus, {
            let in_call = in_call.clone();
            // `service_fn` runs this closure in `Service::call`; the future does nothing.
            tower::service_fn(move |_: Message| {
                let trace_id = opentelemetry::trace::TraceContextExt::span(
                    &tracing::Span::current().context(),
                )
                .span_context()
                .trace_id();
                let span = tracing::info_span!("opened in call");
                drop(span);
                in_call
                    .lock()
                    .unwrap()
                    .push((CorrelationId::current(), trace_id));
                async { Ok::<_, Infallible>(()) }
            })
        })
        .await
        .unwrap();

    let sent_id = CorrelationId::parse("order-7").unwrap();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let event = Envelope::builder("orders.order.placed", "/orders")
        .correlation_id(&sent_id)
        .traceparent(traceparent)
        .build()
        .unwrap();
    bus.publish("orders.order", &event).await.unwrap();
    handle
        .shutdown_when(|| in_call.lock().unwrap().len() == 1)
        .await
        .unwrap();

    let (current, trace_id) = in_call.lock().unwrap()[0].clone();
    assert_eq!(current, Some(sent_id));
    assert_eq!(trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
    let spans = tracing.spans();
    let process = only(&spans, "process orders.order.placed", &SpanKind::Consumer);
    let opened = only(&spans, "opened in call", &SpanKind::Internal);
    assert_child(opened, process);
    // What only the consumer knows, by OpenTelemetry's messaging conventions; no log
    // position on a broker that is not a log.
    let attribute = |key| TestTracing::attribute(process, key);
    assert_eq!(attribute("messaging.system").as_deref(), Some("memory"));
    assert_eq!(
        attribute("messaging.consumer.group.name").as_deref(),
        Some("tests")
    );
    assert_eq!(
        attribute("messaging.message.id").as_deref(),
        Some(event.id())
    );
    assert_eq!(attribute("messaging.destination.partition.id"), None);
    assert_eq!(attribute("messaging.kafka.offset"), None);
}

/// On Kafka the consumer span also carries the partition, the record's offset and key. (Here,
/// not in `kafka.rs`: every test of this binary records spans under its own subscriber.)
#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_consumer_spans_carry_the_partition_offset_key_and_group() {
    use ms_bus::BoxError;
    use ms_bus::kafka::{KafkaBus, Topics};

    let Some(test) = ms_testkit::kafka().await else {
        return;
    };
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let bus = KafkaBus::builder(test.bootstrap_servers())
        .prefix(test.prefix())
        .unwrap()
        // tansu's first join of a new group takes ~23 s at librdkafka's default (45 s).
        .consumer_set("session.timeout.ms", "6000")
        .topics(Topics::Create {
            partitions: 1,
            replication_factor: -1,
        })
        .build()
        .unwrap();
    let keyed = |key: &str| {
        Envelope::builder("test.thing.happened", "/test")
            .partition_key(key)
            .build()
            .unwrap()
    };
    let events = [keyed("k1"), keyed("k2")];
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handle = Consumer::new(Subscription::events("spans", "g").unwrap())
        .serve(&bus, {
            let seen = seen.clone();
            tower::service_fn(move |_: Message| {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { Ok::<_, BoxError>(()) }
            })
        })
        .await
        .unwrap();
    bus.publish_batch("spans", &events).await.unwrap();
    handle
        .shutdown_when(|| seen.load(std::sync::atomic::Ordering::SeqCst) == 2)
        .await
        .unwrap();

    let spans = tracing.spans();
    let mut process: Vec<_> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Consumer)
        .map(|s| {
            let attribute = |key| TestTracing::attribute(s, key).unwrap_or_default();
            [
                attribute("messaging.system"),
                attribute("messaging.consumer.group.name"),
                attribute("messaging.destination.partition.id"),
                attribute("messaging.kafka.offset"),
                attribute("messaging.kafka.message.key"),
                attribute("messaging.message.id"),
            ]
        })
        .collect();
    process.sort();
    // The producer spans: one per record, on Kafka, naming the record's id.
    let mut publish: Vec<_> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Producer)
        .map(|s| {
            let attribute = |key| TestTracing::attribute(s, key).unwrap_or_default();
            [
                attribute("messaging.system"),
                attribute("messaging.message.id"),
            ]
        })
        .collect();
    publish.sort();
    let mut published: Vec<[String; 2]> = events
        .iter()
        .map(|event| ["kafka".into(), event.id().into()])
        .collect();
    published.sort();
    assert_eq!(publish, published, "{spans:#?}");
    let expected: Vec<[String; 6]> = events
        .iter()
        .enumerate()
        .map(|(offset, event)| {
            [
                "kafka".into(),
                "g".into(),
                "0".into(),
                offset.to_string(),
                event.ordering_key().into(),
                event.id().into(),
            ]
        })
        .collect();
    assert_eq!(process, expected, "{spans:#?}");
}
