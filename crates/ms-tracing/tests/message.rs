//! Message propagation: producer and consumer spans across a header map.

use std::collections::{BTreeMap, HashMap};

use ms_tracing::CorrelationId;
use ms_tracing::correlation::InvalidCorrelationId;
use ms_tracing::message::{self, ConsumerRelation, MessageHeaders};
use ms_tracing::testing::TestTracing;

fn published(tracing: &TestTracing, id: Option<&str>) -> BTreeMap<String, String> {
    let _guard = tracing.set_default();
    let mut headers = BTreeMap::new();
    let mut publish = || {
        // Created inside the correlation scope, so it records the ID.
        let span = message::producer_span("orders");
        span.in_scope(|| message::inject(&mut headers));
    };
    match id {
        Some(id) => CorrelationId::parse(id).unwrap().sync_scope(publish),
        None => publish(),
    }
    headers
}

#[test]
fn outside_any_span_or_scope_nothing_is_written() {
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let mut headers = HashMap::new();
    message::inject(&mut headers);
    assert!(headers.is_empty(), "{headers:?}");
}

#[test]
fn a_child_consumer_continues_the_trace_and_the_correlation_id() {
    let tracing = TestTracing::new();
    let headers = published(&tracing, Some("c-1"));
    let received = message::extract(&headers);
    {
        let _guard = tracing.set_default();
        let span = received.consumer_span("orders", ConsumerRelation::default());
        span.in_scope(|| {});
    }
    let producer = tracing.span("publish orders");
    let consumer = tracing.span("process orders");
    assert_eq!(
        consumer.span_context.trace_id(),
        producer.span_context.trace_id()
    );
    assert_eq!(consumer.parent_span_id, producer.span_context.span_id());
    assert!(consumer.parent_span_is_remote);
    assert_eq!(
        TestTracing::attribute(&consumer, "correlation.id").as_deref(),
        Some("c-1")
    );
    assert_eq!(
        TestTracing::attribute(&producer, "correlation.id").as_deref(),
        Some("c-1")
    );
    assert_eq!(
        TestTracing::attribute(&consumer, "messaging.destination.name").as_deref(),
        Some("orders")
    );
    assert_eq!(format!("{:?}", consumer.span_kind), "Consumer");
    assert_eq!(format!("{:?}", producer.span_kind), "Producer");
}

#[test]
fn a_link_only_consumer_starts_its_own_trace_linked_to_the_producer() {
    let tracing = TestTracing::new();
    let headers = published(&tracing, None);
    assert!(!headers.contains_key(message::CORRELATION_ID));
    let received = message::extract(&headers);
    {
        let _guard = tracing.set_default();
        received
            .consumer_span("orders", ConsumerRelation::LinkOnly)
            .in_scope(|| {});
    }
    let producer = tracing.span("publish orders");
    let consumer = tracing.span("process orders");
    assert_ne!(
        consumer.span_context.trace_id(),
        producer.span_context.trace_id()
    );
    assert_eq!(consumer.links.links.len(), 1);
    assert_eq!(
        consumer.links.links[0].span_context,
        *received.span_context().unwrap()
    );
    assert_eq!(TestTracing::attribute(&consumer, "correlation.id"), None);
}

#[test]
fn malformed_headers_give_a_new_trace_and_a_fresh_correlation_id() {
    let mut headers = BTreeMap::new();
    headers.set(
        "traceparent",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
    );
    headers.set("correlationid", "x".repeat(300));
    let received = message::extract(&headers);
    assert!(received.span_context().is_none());
    assert_eq!(received.correlation_id(), None);
    assert_eq!(
        received.rejected_correlation_id(),
        Some(&InvalidCorrelationId::TooLong { len: 300 })
    );
    assert_eq!(received.correlation_id_or_new().as_str().len(), 36);

    let tracing = TestTracing::new();
    {
        let _guard = tracing.set_default();
        received
            .consumer_span("orders", ConsumerRelation::default())
            .in_scope(|| {});
    }
    let consumer = tracing.span("process orders");
    assert!(consumer.links.links.is_empty());
    assert_eq!(
        consumer.parent_span_id,
        opentelemetry::trace::SpanId::INVALID
    );
}

#[test]
fn tracestate_travels_with_the_message() {
    let mut headers = HashMap::new();
    headers.set(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    );
    headers.set("tracestate", "rojo=00f067aa0ba902b7".to_owned());
    let received = message::extract(&headers);
    let cx = opentelemetry::Context::new()
        .with_remote_span_context(received.span_context().unwrap().clone());
    let mut forwarded = HashMap::new();
    message::inject_context(&cx, received.correlation_id(), &mut forwarded);
    assert_eq!(forwarded, headers);
}

use opentelemetry::trace::TraceContextExt as _;
