//! Interoperability with the CloudEvents Python SDK's RabbitMQ binding, through a real broker:
//! what the adapter publishes, fetched from its queue as any AMQP client would see it, is read
//! by the SDK; what the SDK encodes, published as an AMQP message (`ce-` headers as long
//! strings, `content_type` property), is consumed by the adapter. The SDK has no AMQP client
//! of its own; the test moves the messages with lapin, as pika would hand them to the SDK.
//!
//! Skips loudly when python3 or the SDK is missing, and fails instead under
//! `MS_TEST_REQUIRE_SERVICES=1` (CI installs the SDK).
#![cfg(feature = "amqp")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use ms_bus::amqp::AmqpBus;
use ms_bus::codec::Mode;
use ms_bus::consumer::{Consumer, Message};
use ms_bus::{CommandSender, Envelope, Subscription};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

mod interop;

use interop::{PRECISE_NUMBERS, compact_json, peer, python_with_sdk};

fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).unwrap(),
        other => panic!("a ce- header that is not a long string: {other:?}"),
    }
}

fn ours() -> Vec<Envelope> {
    let time = OffsetDateTime::parse("2026-11-26T14:10:00.5+01:00", &Rfc3339).unwrap();
    vec![
        Envelope::builder("invoicing.invoice.created", "/invoicing")
            .subject("Euro € 😀 \"quoted\" 100% a+b")
            .time(time)
            .partition_key("inv-1001")
            .tenant_id("acme")
            .json_data(&json!({"number": "inv-1001", "total_cents": 4200}))
            .unwrap()
            .build()
            .unwrap(),
        Envelope::builder("files.blob.stored", "/files")
            .data("application/octet-stream", vec![0_u8, 1, 2, 250, 255])
            .build()
            .unwrap(),
        Envelope::builder("ledger.entry.posted", "/ledger")
            .time(time)
            .data("application/json", PRECISE_NUMBERS)
            .build()
            .unwrap(),
        // 10:00:00 at +05:30:15, an offset RFC 3339 cannot write: sent as 04:29:45Z.
        Envelope::builder("clock.tick.happened", "/clock")
            .time(
                OffsetDateTime::parse("2026-11-26T10:00:00Z", &Rfc3339)
                    .unwrap()
                    .replace_offset(time::UtcOffset::from_hms(5, 30, 15).unwrap()),
            )
            .build()
            .unwrap(),
    ]
}

/// In both content modes: every attribute arrives, a `time` as the instant it was (even one
/// whose offset RFC 3339 cannot write), JSON data to the digit.
#[tokio::test]
async fn the_python_sdk_reads_what_the_adapter_publishes() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    if !python_with_sdk("amqp_interop") {
        return;
    }
    for mode in [Mode::Binary, Mode::Structured] {
        sdk_reads(&rabbit, mode).await;
    }
}

async fn sdk_reads(rabbit: &ms_testkit::TestAmqp, mode: Mode) {
    let bus = AmqpBus::builder(rabbit.url())
        .namespace(rabbit.namespace())
        .unwrap()
        .mode(mode)
        .connect()
        .await
        .unwrap();
    let connection = rabbit.connection().await;
    let channel = connection.create_channel().await.unwrap();

    // Ours → the broker → the SDK.
    let sent = ours();
    bus.send_batch("interop.to-python", &sent).await.unwrap();
    let queue = bus
        .queue(&Subscription::commands("interop.to-python").unwrap())
        .unwrap();
    let mut messages = Vec::new();
    for _ in &sent {
        let got = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a message in the queue");
        let properties = &got.delivery.properties;
        let headers: serde_json::Map<String, Value> = properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("ce-"))
            .map(|(k, v)| (k.to_string(), Value::String(text(v))))
            .collect();
        messages.push(json!({
            "binding": "rabbitmq",
            "headers": headers,
            "content_type": properties.content_type().as_ref().map(ShortString::as_str),
            "body_b64": BASE64.encode(&got.delivery.data),
        }));
    }
    let answer = peer(&json!({ "decode": messages }));
    for (event, decoded) in sent.iter().zip(answer["decoded"].as_array().unwrap()) {
        let attributes = &decoded["attributes"];
        assert_eq!(attributes["id"], event.id(), "{mode:?}");
        assert_eq!(attributes["type"], event.ty());
        assert_eq!(attributes["source"], event.source());
        assert_eq!(attributes["subject"].as_str(), event.subject());
        assert_eq!(
            attributes["datacontenttype"].as_str(),
            event.datacontenttype()
        );
        assert_eq!(attributes["partitionkey"].as_str(), event.partition_key());
        if let Some(time) = event.time() {
            let theirs = OffsetDateTime::parse(attributes["time"].as_str().unwrap(), &Rfc3339);
            assert_eq!(theirs.unwrap(), time, "{mode:?} {}", event.ty());
        }
        let data = BASE64
            .decode(decoded["data_b64"].as_str().unwrap())
            .unwrap();
        if event.datacontenttype() == Some("application/json") {
            assert_eq!(compact_json(&data), compact_json(event.data()), "{mode:?}");
        } else {
            assert_eq!(data, event.data().as_ref(), "{mode:?}");
        }
    }
}

#[tokio::test]
async fn the_adapter_consumes_what_the_python_sdk_encodes() {
    let Some(rabbit) = ms_testkit::amqp().await else {
        return;
    };
    if !python_with_sdk("amqp_interop") {
        return;
    }
    let bus = AmqpBus::builder(rabbit.url())
        .namespace(rabbit.namespace())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let connection = rabbit.connection().await;
    let channel = connection.create_channel().await.unwrap();
    let answer = peer(&json!({ "decode": [] }));

    // The SDK's RabbitMQ messages (binary and structured) → the broker → ours.
    let theirs: Vec<Value> = answer["encoded"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["binding"] == "rabbitmq")
        .cloned()
        .collect();
    assert!(theirs.len() >= 4, "{theirs:?}");
    let subscription = Subscription::commands("interop.from-python").unwrap();
    let queue = bus.queue(&subscription).unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for message in &theirs {
        let mut headers = FieldTable::default();
        for (name, value) in message["headers"].as_object().unwrap() {
            headers.insert(
                name.as_str().into(),
                AMQPValue::LongString(value.as_str().unwrap().into()),
            );
        }
        let mut properties = lapin::BasicProperties::default().with_headers(headers);
        if let Some(content_type) = message["content_type"].as_str() {
            properties = properties.with_content_type(content_type.into());
        }
        let body = BASE64
            .decode(message["body_b64"].as_str().unwrap())
            .unwrap();
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .unwrap();
    }
    let received: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    let consumer = Consumer::new(subscription)
        .serve(&bus, {
            let received = received.clone();
            tower::service_fn(move |m: Message| {
                received.lock().unwrap().push(m.into_envelope());
                async { Ok::<_, std::convert::Infallible>(()) }
            })
        })
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        consumer.shutdown_when(|| received.lock().unwrap().len() == theirs.len()),
    )
    .await
    .expect("every SDK message was consumed (none dead-lettered)")
    .unwrap();
    let received = received.lock().unwrap();
    assert_eq!(received.len(), theirs.len());
    for message in &theirs {
        // The consumer handles messages concurrently: match them by id, not by position.
        let id = message["expected"]["attributes"]["id"].as_str().unwrap();
        // Each event was sent in both content modes: both copies must decode alike.
        let copies: Vec<&Envelope> = received.iter().filter(|e| e.id() == id).collect();
        assert_eq!(copies.len(), 2, "{id}");
        for envelope in copies {
            assert_matches(envelope, message);
        }
    }
}

/// `envelope` is what the SDK encoded in `message` (its `expected` attributes and data).
fn assert_matches(envelope: &Envelope, message: &Value) {
    let expected = &message["expected"];
    let attributes = &expected["attributes"];
    assert_eq!(attributes["id"], envelope.id(), "{message}");
    assert_eq!(attributes["type"], envelope.ty());
    assert_eq!(attributes["source"], envelope.source());
    assert_eq!(attributes["subject"].as_str(), envelope.subject());
    assert_eq!(
        attributes["datacontenttype"].as_str(),
        envelope.datacontenttype()
    );
    assert_eq!(
        attributes["partitionkey"].as_str(),
        envelope.partition_key()
    );
    let time = OffsetDateTime::parse(attributes["time"].as_str().unwrap(), &Rfc3339).unwrap();
    assert_eq!(envelope.time(), Some(time));
    // The peer reports JSON data compactly, to the digit; the SDK wrote it with spaces.
    let expected_data = BASE64
        .decode(expected["data_b64"].as_str().unwrap())
        .unwrap();
    if envelope.datacontenttype() == Some("application/json") {
        assert_eq!(
            compact_json(envelope.data()),
            compact_json(&expected_data),
            "{message}"
        );
    } else {
        assert_eq!(
            envelope.data().as_ref(),
            expected_data.as_slice(),
            "{message}"
        );
    }
}
