//! Interoperability with the CloudEvents Python SDK (the machine's, else the one ms-testkit
//! installs from PyPI): what we encode it reads, and what it encodes we read, in both content
//! modes, over the HTTP header mapping (which the NATS adapter's percent-encoded `ce-` headers
//! follow) and the RabbitMQ binding.
//! Awkward cases included: JSON numbers past `u64` and `f64` (compared to the digit), and a
//! `time` whose UTC offset has seconds (which must arrive as the same instant, not vanish).
//!
//! Skips loudly when python3 or the SDK is missing, and fails instead under
//! `MS_TEST_REQUIRE_SERVICES=1` (CI installs the SDK).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ms_bus::Envelope;
use ms_bus::codec::{self, HeaderValues, Mode, TransportMessage};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

mod interop;

use interop::{PRECISE_NUMBERS, compact_json, python_with_sdk};

fn ours() -> Vec<Envelope> {
    let time = OffsetDateTime::parse("2026-11-26T14:10:00.5+01:00", &Rfc3339).unwrap();
    vec![
        Envelope::builder("invoicing.invoice.created", "/invoicing")
            .id("rs-json-1")
            .subject("Euro € 😀 \"quoted\" 100% a+b")
            .time(time)
            .partition_key("inv-1001")
            .tenant_id("acme")
            .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .json_data(&json!({"number": "inv-1001", "total_cents": 4200, "lines": [1, 2]}))
            .unwrap()
            .build()
            .unwrap(),
        Envelope::builder("files.blob.stored", "/files")
            .id("rs-bytes-2")
            .data("application/octet-stream", vec![0_u8, 1, 2, 250, 255])
            .build()
            .unwrap(),
        Envelope::builder("notes.note.written", "/notes")
            .id("rs-text-3")
            .dataschema("https://example.com/note.json")
            .data("text/plain", "plain text, ünïcode")
            .build()
            .unwrap(),
        Envelope::builder("ledger.entry.posted", "/ledger")
            .id("rs-numbers-4")
            .time(time)
            .data("application/json", PRECISE_NUMBERS)
            .build()
            .unwrap(),
        // 10:00:00 at +05:30:15, an offset RFC 3339 cannot write: sent as 04:29:45Z.
        Envelope::builder("clock.tick.happened", "/clock")
            .id("rs-offset-5")
            .time(
                OffsetDateTime::parse("2026-11-26T10:00:00Z", &Rfc3339)
                    .unwrap()
                    .replace_offset(time::UtcOffset::from_hms(5, 30, 15).unwrap()),
            )
            .build()
            .unwrap(),
    ]
}

fn as_python_message(binding: &str, message: &TransportMessage) -> Value {
    let headers: BTreeMap<&str, &str> = message
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    json!({
        "binding": binding,
        "headers": headers,
        "content_type": message.content_type,
        "body_b64": BASE64.encode(&message.body),
    })
}

/// The attributes as the SDK reports them: every attribute as a string.
fn attribute_map(envelope: &Envelope) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    map.insert("specversion".into(), "1.0".into());
    map.insert("id".into(), envelope.id().into());
    map.insert("source".into(), envelope.source().into());
    map.insert("type".into(), envelope.ty().into());
    let optional = [
        ("subject", envelope.subject().map(str::to_owned)),
        (
            "datacontenttype",
            envelope.datacontenttype().map(str::to_owned),
        ),
        ("dataschema", envelope.dataschema().map(str::to_owned)),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            map.insert(name.into(), value);
        }
    }
    for (name, value) in envelope.extensions() {
        map.insert(name.into(), value.into());
    }
    map
}

/// The same data; JSON compared to the digit (the peer reports it exactly, compactly).
fn assert_same_data(content_type: Option<&str>, ours: &[u8], theirs: &[u8], context: &str) {
    if content_type.is_some_and(|ct| ct.contains("json")) {
        assert_eq!(compact_json(ours), compact_json(theirs), "{context}");
    } else {
        assert_eq!(ours, theirs, "{context}");
    }
}

fn assert_matches(envelope: &Envelope, attributes: &Value, data_b64: &Value, context: &str) {
    let expected = attribute_map(envelope);
    let mut actual: BTreeMap<String, String> = serde_json::from_value(attributes.clone()).unwrap();
    // The SDK stamps `time` (now) on events that arrive without one: an event we gave a time
    // must arrive with that instant, one without is not compared.
    let theirs = actual.remove("time");
    if let Some(time) = envelope.time() {
        let theirs = theirs.unwrap_or_else(|| panic!("{context}: no time"));
        let theirs = OffsetDateTime::parse(&theirs, &Rfc3339)
            .unwrap_or_else(|e| panic!("{context}: time {theirs:?}: {e}"));
        assert_eq!(theirs, time, "{context}: time");
    }
    assert_eq!(expected, actual, "{context}");
    let theirs = BASE64.decode(data_b64.as_str().unwrap()).unwrap();
    assert_same_data(
        envelope.datacontenttype(),
        envelope.data(),
        &theirs,
        context,
    );
}

#[test]
fn python_sdk_round_trips() {
    if !python_with_sdk("python_sdk_round_trips") {
        return;
    }
    let mut sent = Vec::new();
    let mut requests = Vec::new();
    for envelope in ours() {
        for (binding, values) in [
            ("http", HeaderValues::PercentEncoded),
            ("rabbitmq", HeaderValues::Raw),
        ] {
            for mode in [Mode::Binary, Mode::Structured] {
                let message = codec::encode(&envelope, mode, values);
                requests.push(as_python_message(binding, &message));
                sent.push((
                    envelope.clone(),
                    format!("{binding} {mode:?} {}", envelope.id()),
                ));
            }
        }
    }
    let reply = interop::peer(&json!({ "decode": requests }));

    // What we encoded, the SDK reads.
    let decoded = reply["decoded"].as_array().unwrap();
    assert_eq!(decoded.len(), sent.len());
    for ((envelope, context), theirs) in sent.iter().zip(decoded) {
        assert_matches(
            envelope,
            &theirs["attributes"],
            &theirs["data_b64"],
            context,
        );
    }

    // What the SDK encoded, we read.
    let encoded = reply["encoded"].as_array().unwrap();
    assert_eq!(encoded.len(), 16);
    for message in encoded {
        let values = if message["binding"] == "http" {
            HeaderValues::PercentEncoded
        } else {
            HeaderValues::Raw
        };
        let transport = TransportMessage {
            headers: serde_json::from_value::<BTreeMap<String, String>>(message["headers"].clone())
                .unwrap()
                .into_iter()
                .collect(),
            content_type: message["content_type"].as_str().map(str::to_owned),
            body: BASE64
                .decode(message["body_b64"].as_str().unwrap())
                .unwrap()
                .into(),
        };
        let context = format!("{} {}", message["binding"], message["mode"]);
        let envelope =
            codec::decode(&transport, values).unwrap_or_else(|e| panic!("{context}: {e}"));
        let expected = &message["expected"];
        assert_matches(
            &envelope,
            &expected["attributes"],
            &expected["data_b64"],
            &context,
        );
    }
}
