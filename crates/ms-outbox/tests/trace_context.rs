//! The trace context and correlation ID current at enqueue time travel with the row: the
//! relay publishes them, so the consumer's trace continues the request that wrote the event.
//! (Alone in its binary: it installs a thread-local tracing subscriber, and `tracing` caches
//! callsite interest process-wide.)
#![cfg(feature = "sqlite")]

use std::time::Duration;

use futures_util::StreamExt;
use ms_bus::memory::MemoryBus;
use ms_bus::{Envelope, Subscriber, Subscription};
use ms_outbox::{Outbox, OutboxMessage, Relay};
use ms_tracing::CorrelationId;
use ms_tracing::testing::TestTracing;
use opentelemetry::trace::SpanKind;
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tracing::Instrument;

#[tokio::test(flavor = "current_thread")]
async fn the_enqueueing_requests_trace_and_correlation_id_reach_the_consumer() {
    let tracing = TestTracing::new();
    let _guard = tracing.set_default();
    let path = std::env::temp_dir().join(format!("ms-outbox-trace-{}.db", std::process::id()));
    let pool = SqlitePoolOptions::new()
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
    let outbox = Outbox::<Sqlite>::default();
    outbox.migrate(&pool).await.unwrap();
    let bus = MemoryBus::new();
    let mut deliveries = bus
        .subscribe(&Subscription::events("orders.order", "checker").unwrap())
        .await
        .unwrap();
    let relay = Relay::builder(&outbox, &pool, bus.clone()).build().spawn();

    let correlation = CorrelationId::generate();
    let request = tracing::info_span!("handle request");
    correlation
        .clone()
        .scope(
            async {
                let mut tx = pool.begin().await.unwrap();
                let placed = Envelope::builder("orders.order.placed", "/orders")
                    .subject("order-7")
                    .build()
                    .unwrap();
                outbox
                    .enqueue(&mut *tx, OutboxMessage::event("orders.order", placed))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
            .instrument(request),
        )
        .await;

    // Delivered outside any request: what it carries came from the row.
    let delivery = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
        .await
        .expect("relayed")
        .unwrap()
        .unwrap();
    let (envelope, _, acker) = delivery.into_parts();
    let envelope = envelope.unwrap();
    acker.ack().await.unwrap();
    relay.shutdown().await.unwrap();
    pool.close().await;
    let _ = std::fs::remove_file(&path);

    assert_eq!(envelope.correlation_id(), Some(correlation));
    let request = tracing.span("handle request");
    let producer = tracing
        .spans()
        .into_iter()
        .find(|s| s.name == "publish orders.order" && s.span_kind == SpanKind::Producer)
        .expect("a producer span for the enqueue");
    assert_eq!(
        producer.span_context.trace_id(),
        request.span_context.trace_id()
    );
    assert_eq!(producer.parent_span_id, request.span_context.span_id());
    // The flags are the producer span's: sampled, and (W3C Level 2, since ms-tracing's
    // propagator sets it) the random trace-id flag.
    assert_eq!(
        envelope.traceparent(),
        Some(
            format!(
                "00-{}-{}-{:02x}",
                producer.span_context.trace_id(),
                producer.span_context.span_id(),
                producer.span_context.trace_flags().to_u8()
            )
            .as_str()
        )
    );
    assert!(producer.span_context.trace_flags().is_sampled());
}
