//! The codecs against the spec's own examples, hostile input, and properties: every envelope
//! round-trips in every mode, and no input makes a decoder panic.

use bytes::Bytes;
use ms_bus::Envelope;
use ms_bus::codec::{self, DecodeError, HeaderValues, Mode, TransportMessage};
use proptest::prelude::*;
use serde_json::json;
use time::OffsetDateTime;

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The JSON event format spec's first example (§4), verbatim but for whitespace.
#[test]
fn reads_the_json_format_spec_example() {
    let doc = br#"{
        "specversion" : "1.0",
        "type" : "com.example.someevent",
        "source" : "/mycontext",
        "subject": null,
        "id" : "C234-1234-1234",
        "time" : "2018-04-05T17:31:00Z",
        "comexampleextension1" : "value",
        "comexampleothervalue" : 5,
        "datacontenttype" : "application/json",
        "data" : { "appinfoA" : "abc", "appinfoB" : 123, "appinfoC" : true }
    }"#;
    let e = codec::from_json(doc).unwrap();
    assert_eq!(e.id(), "C234-1234-1234");
    assert_eq!(e.ty(), "com.example.someevent");
    assert_eq!(e.source(), "/mycontext");
    assert_eq!(e.subject(), None);
    assert_eq!(e.time_rfc3339().as_deref(), Some("2018-04-05T17:31:00Z"));
    assert_eq!(e.extension("comexampleextension1"), Some("value"));
    assert_eq!(e.extension("comexampleothervalue"), Some("5"));
    assert_eq!(
        e.json_data::<serde_json::Value>().unwrap(),
        json!({ "appinfoA": "abc", "appinfoB": 123, "appinfoC": true })
    );
}

/// The JSON format's binary-data and string-data examples.
#[test]
fn reads_data_base64_and_non_json_string_data() {
    let thrift = codec::from_json(
        br#"{"specversion":"1.0","type":"com.example.someevent","source":"/mycontext",
            "id":"A234-1234-1234","datacontenttype":"application/vnd.apache.thrift.binary",
            "data_base64":"AAEC+v8="}"#,
    )
    .unwrap();
    assert_eq!(thrift.data().as_ref(), &[0, 1, 2, 250, 255]);

    let xml = codec::from_json(
        br#"{"specversion":"1.0","type":"com.example.someevent","source":"/mycontext",
            "id":"B234-1234-1234","datacontenttype":"text/xml","data":"<much wow=\"xml\"/>"}"#,
    )
    .unwrap();
    assert_eq!(xml.data().as_ref(), br#"<much wow="xml"/>"#);
    // Written back, string data of a non-JSON type stays byte-exact (as data_base64).
    assert_eq!(codec::from_json(&codec::to_json(&xml)).unwrap(), xml);
}

/// The HTTP binding's binary-mode example, and its percent-encoding example (§3.1.3.2).
#[test]
fn reads_the_binary_mode_spec_example_with_percent_encoding() {
    let message = TransportMessage {
        headers: headers(&[
            ("ce-specversion", "1.0"),
            ("ce-type", "com.example.someevent"),
            ("ce-time", "2018-04-05T03:56:24Z"),
            ("ce-id", "1234-1234-1234"),
            ("ce-source", "/mycontext/subcontext"),
            ("CE-Subject", "Euro%20%E2%82%AC%20%F0%9F%98%80"),
            ("not-an-attribute", "ignored"),
        ]),
        content_type: Some("application/json; charset=utf-8".to_owned()),
        body: Bytes::from_static(br#"{"a":1}"#),
    };
    let e = codec::decode(&message, HeaderValues::PercentEncoded).unwrap();
    assert_eq!(e.subject(), Some("Euro € 😀"));
    assert_eq!(e.datacontenttype(), Some("application/json; charset=utf-8"));
    assert_eq!(e.extensions().count(), 0);
    let encoded = codec::encode(&e, Mode::Binary, HeaderValues::PercentEncoded);
    assert_eq!(
        encoded.header("ce-subject"),
        Some("Euro%20%E2%82%AC%20%F0%9F%98%80")
    );
}

#[test]
fn invalid_messages_are_typed_errors() {
    let binary = |pairs: &[(&str, &str)]| TransportMessage {
        headers: headers(pairs),
        content_type: None,
        body: Bytes::new(),
    };
    let full = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ];
    assert_eq!(
        codec::decode(&binary(&full[1..]), HeaderValues::Raw),
        Err(DecodeError::MissingAttribute("specversion"))
    );
    assert_eq!(
        codec::decode(&binary(&[("ce-specversion", "0.3")]), HeaderValues::Raw),
        Err(DecodeError::UnsupportedSpecVersion("0.3".into()))
    );
    let mut bad_time = full.to_vec();
    bad_time.push(("ce-time", "yesterday"));
    assert!(matches!(
        codec::decode(&binary(&bad_time), HeaderValues::Raw),
        Err(DecodeError::InvalidTime(_))
    ));
    let mut bad_escape = full.to_vec();
    bad_escape.push(("ce-subject", "%FF%FE"));
    assert!(matches!(
        codec::decode(&binary(&bad_escape), HeaderValues::PercentEncoded),
        Err(DecodeError::InvalidHeaderValue(_))
    ));
    let mut bad_extension = full.to_vec();
    bad_extension.push(("ce-", "empty name"));
    assert!(matches!(
        codec::decode(&binary(&bad_extension), HeaderValues::Raw),
        Err(DecodeError::Envelope(_))
    ));
    let mut empty_id = full.to_vec();
    empty_id[1] = ("ce-id", "");
    assert!(matches!(
        codec::decode(&binary(&empty_id), HeaderValues::Raw),
        Err(DecodeError::Envelope(_))
    ));

    let structured = |body: &'static [u8]| TransportMessage {
        headers: Vec::new(),
        content_type: Some("application/cloudevents+json; charset=utf-8".into()),
        body: Bytes::from_static(body),
    };
    for (body, check) in [
        (&b"not json"[..], "InvalidJson"),
        (b"[1,2]", "InvalidJson"),
        (br#"{"specversion":"1.0","id":1,"source":"/s","type":"t"}"#, "WrongType"),
        (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#, "DataAndDataBase64"),
        (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"***"}"#, "InvalidBase64"),
        (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":{"nested":1}}"#, "WrongType"),
        (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad-Name":"x"}"#, "Envelope"),
    ] {
        let error = codec::decode(&structured(body), HeaderValues::Raw).unwrap_err();
        assert!(format!("{error:?}").starts_with(check), "{error:?} for {:?}", String::from_utf8_lossy(body));
    }
    let batch = TransportMessage {
        content_type: Some("application/cloudevents-batch+json".into()),
        ..TransportMessage::default()
    };
    assert!(matches!(
        codec::decode(&batch, HeaderValues::Raw),
        Err(DecodeError::UnsupportedFormat(_))
    ));
}

fn arb_text() -> impl Strategy<Value = String> {
    // Printable ASCII, the characters percent-encoding must escape, and multi-byte UTF-8
    // (control characters are no CloudEvents string: the builder refuses them).
    proptest::string::string_regex("[ -~€😀ü%\"\u{a0}]{1,24}").unwrap()
}

prop_compose! {
    fn arb_envelope()(
        id in arb_text(),
        source in arb_text(),
        ty in arb_text(),
        subject in proptest::option::of(arb_text()),
        seconds in proptest::option::of(0_i64..4_000_000_000),
        nanos in 0_u32..1_000_000_000,
        // Every offset `time` has, seconds and beyond ±23:59 included (RFC 3339 has neither).
        offset in -93_599_i32..=93_599,
        json in any::<bool>(),
        data in proptest::collection::vec(any::<u8>(), 0..64),
        extensions in proptest::collection::btree_map("[a-z][a-z0-9]{0,8}", arb_text(), 0..4),
    ) -> Envelope {
        let mut builder = Envelope::builder(ty, source).id(id);
        if let Some(subject) = subject {
            builder = builder.subject(subject);
        }
        if let Some(seconds) = seconds {
            let time = OffsetDateTime::from_unix_timestamp(seconds).unwrap()
                .replace_nanosecond(nanos).unwrap()
                .to_offset(time::UtcOffset::from_whole_seconds(offset).unwrap());
            builder = builder.time(time);
        }
        builder = if json {
            builder.json_data(&data).unwrap()
        } else {
            builder.data("application/octet-stream", data)
        };
        for (name, value) in extensions {
            if let Ok(next) = builder.clone().extension(name, value) {
                builder = next;
            }
        }
        builder.build().unwrap()
    }
}

proptest! {
    /// Every attribute comes back, `time` as the same instant (in UTC where RFC 3339 could
    /// not write its offset).
    #[test]
    fn every_envelope_round_trips_in_every_mode(envelope in arb_envelope()) {
        for mode in [Mode::Binary, Mode::Structured] {
            for values in [HeaderValues::PercentEncoded, HeaderValues::Raw] {
                let message = codec::encode(&envelope, mode, values);
                prop_assert_eq!(&codec::decode(&message, values).unwrap(), &envelope);
            }
        }
    }

    #[test]
    fn percent_encoded_headers_are_printable_ascii(envelope in arb_envelope()) {
        let message = codec::encode(&envelope, Mode::Binary, HeaderValues::PercentEncoded);
        for (_, value) in &message.headers {
            prop_assert!(value.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{:?}", value);
        }
    }

    #[test]
    fn hostile_binary_messages_never_panic(
        pairs in proptest::collection::vec(
            ("(ce-|CE-|x-)?[a-z]{0,12}", "(\\PC|[\r\n\t\0\u{85}]|%0[AD]){0,16}"),
            0..12,
        ),
        content_type in proptest::option::of("(\\PC|[\r\n\u{85}]){0,30}"),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let message = TransportMessage { headers: pairs, content_type, body: body.into() };
        let _ = codec::decode(&message, HeaderValues::PercentEncoded);
        let _ = codec::decode(&message, HeaderValues::Raw);
    }

    #[test]
    fn hostile_structured_bodies_never_panic(
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..128),
            // Near-valid documents reach deeper into the decoder than random bytes.
            (arb_text(), any::<i64>(), "[a-zA-Z_]{1,10}").prop_map(|(s, n, k)| format!(
                r#"{{"specversion":"1.0","id":{s:?},"source":"/s","type":"t","time":{s:?},"{k}":{n},"data_base64":{s:?}}}"#
            ).into_bytes()),
            // Escaped line breaks and other control characters in the attributes.
            ("(\\PC|[\r\n\t\0\u{85}]){0,12}", "[a-z]{1,8}").prop_map(|(s, k)| serde_json::to_vec(
                &json!({"specversion": "1.0", "id": s, "source": s, "type": "t", "subject": s,
                        "datacontenttype": s, k: s, "data": s})
            ).unwrap()),
        ],
    ) {
        let _ = codec::from_json(&body);
    }
}

/// A line break (or any control character) in a decoded attribute is the builder's typed
/// error in every mode: such a message is dead-lettered with the reason, never handed to a
/// handler that might forward it into a header that cannot carry it.
#[test]
fn decoded_control_characters_are_refused_with_a_typed_error() {
    let invalid = |attribute: &str, character| {
        Err(DecodeError::Envelope(
            ms_bus::EnvelopeError::InvalidCharacter {
                attribute: attribute.to_owned(),
                character,
            },
        ))
    };
    let binary = |pairs: &[(&str, &str)], content_type: Option<&str>| TransportMessage {
        headers: headers(pairs),
        content_type: content_type.map(str::to_owned),
        body: Bytes::new(),
    };
    let full = [
        ("ce-specversion", "1.0"),
        ("ce-id", "a%0D%0Ab"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ];
    assert_eq!(
        codec::decode(&binary(&full, None), HeaderValues::PercentEncoded),
        invalid("id", '\r')
    );
    let mut extension = full.to_vec();
    extension[1] = ("ce-id", "1");
    extension.push(("ce-note", "tab%09"));
    assert_eq!(
        codec::decode(&binary(&extension, None), HeaderValues::PercentEncoded),
        invalid("note", '\t')
    );
    // AMQP carries raw values and any content type text.
    extension.pop();
    assert_eq!(
        codec::decode(&binary(&extension, Some("text/plain\n")), HeaderValues::Raw),
        invalid("datacontenttype", '\n')
    );
    let structured = |doc: serde_json::Value| TransportMessage {
        headers: Vec::new(),
        content_type: Some("application/cloudevents+json".to_owned()),
        body: serde_json::to_vec(&doc).unwrap().into(),
    };
    let doc = json!({"specversion": "1.0", "id": "a\r\nb", "source": "/s", "type": "t"});
    assert_eq!(
        codec::decode(&structured(doc), HeaderValues::Raw),
        invalid("id", '\r')
    );
    let doc = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t",
                     "datacontenttype": "application/json\n"});
    assert_eq!(
        codec::decode(&structured(doc), HeaderValues::Raw),
        invalid("datacontenttype", '\n')
    );
}

/// The NATS binding's structured mode: the JSON event format as a bare payload, no headers.
#[test]
fn a_bare_json_payload_without_headers_is_structured_mode() {
    let event = Envelope::builder("t", "/s")
        .data("text/plain", "hi")
        .build()
        .unwrap();
    let bare = TransportMessage {
        headers: Vec::new(),
        content_type: None,
        body: codec::to_json(&event),
    };
    assert_eq!(
        codec::decode(&bare, HeaderValues::PercentEncoded),
        Ok(event)
    );
    let not_json = TransportMessage {
        body: Bytes::from_static(b"plain bytes"),
        ..bare
    };
    assert_eq!(
        codec::decode(&not_json, HeaderValues::PercentEncoded),
        Err(DecodeError::MissingAttribute("specversion"))
    );
}
