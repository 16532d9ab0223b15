//! Between an envelope and a Kafka record, per the CloudEvents Kafka protocol binding: in
//! binary mode each attribute is a `ce_` header (UTF-8 text, not escaped), `datacontenttype`
//! is the `content-type` header and the data is the value; in structured mode the value is
//! the JSON event format with `content-type: application/cloudevents+json`.

use rdkafka::message::{Header, OwnedHeaders};

use crate::codec::{self, BinaryHeaderName, DecodeError, HeaderValues, Mode, TransportMessage};
use crate::{Envelope, TRACEPARENT_EXTENSION, TRACESTATE_EXTENSION};

use super::consume::Record;

/// The prefix of attribute headers in the Kafka binding (`ce-` in the HTTP and AMQP ones).
pub const KAFKA_HEADER_PREFIX: &str = "ce_";
/// The header that carries the content type in the Kafka binding.
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// The W3C trace-context headers OpenTelemetry's Kafka instrumentations read and write; the
/// adapter writes them beside `ce_traceparent` / `ce_tracestate` so that a consumer that does
/// not know CloudEvents continues the trace too.
pub const W3C_HEADERS: [&str; 2] = [
    ms_tracing::propagation::TRACEPARENT,
    ms_tracing::propagation::TRACESTATE,
];

/// The binding's header name of a spec attribute (`ce-id` → `ce_id`), without allocating.
fn attribute_header(name: &'static str) -> &'static str {
    match name {
        "ce-specversion" => "ce_specversion",
        "ce-id" => "ce_id",
        "ce-source" => "ce_source",
        "ce-type" => "ce_type",
        "ce-subject" => "ce_subject",
        "ce-time" => "ce_time",
        "ce-dataschema" => "ce_dataschema",
        // The codec's list of attributes is the list above; a new one would land here and be
        // written with the HTTP prefix, which the decoder below reads too.
        other => other,
    }
}

/// The record headers and value of `envelope` in `mode`.
pub(super) fn encode(envelope: &Envelope, mode: Mode) -> (OwnedHeaders, bytes::Bytes) {
    match mode {
        Mode::Structured => {
            let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                key: CONTENT_TYPE_HEADER,
                value: Some(codec::STRUCTURED_JSON_CONTENT_TYPE),
            });
            (headers, codec::to_json(envelope))
        }
        _ => {
            let mut headers = OwnedHeaders::new_with_capacity(10);
            if let Some(content_type) = envelope.datacontenttype() {
                headers = headers.insert(Header {
                    key: CONTENT_TYPE_HEADER,
                    value: Some(content_type),
                });
            }
            let mut extension = String::new();
            codec::for_each_binary_header(envelope, HeaderValues::Raw, |name, value| {
                let key = match name {
                    BinaryHeaderName::Attribute(name) => attribute_header(name),
                    BinaryHeaderName::Extension(name) => {
                        extension.clear();
                        extension.push_str(KAFKA_HEADER_PREFIX);
                        extension.push_str(name);
                        &extension
                    }
                };
                headers = std::mem::take(&mut headers).insert(Header {
                    key,
                    value: Some(value.as_ref()),
                });
            });
            for (header, extension) in W3C_HEADERS
                .into_iter()
                .zip([TRACEPARENT_EXTENSION, TRACESTATE_EXTENSION])
            {
                if let Some(value) = envelope.extension(extension) {
                    headers = headers.insert(Header {
                        key: header,
                        value: Some(value),
                    });
                }
            }
            (headers, envelope.data().clone())
        }
    }
}

/// Decodes a fetched record, and returns the headers that are not CloudEvents attributes
/// (for [`DeliveryInfo::headers`](crate::DeliveryInfo::headers)): text values only, since
/// the bus's headers are text.
pub(super) fn decode(record: &Record) -> (Result<Envelope, DecodeError>, Vec<(String, String)>) {
    let mut transport = TransportMessage {
        headers: Vec::with_capacity(record.headers.len()),
        content_type: None,
        body: record
            .payload
            .clone()
            .map(bytes::Bytes::from)
            .unwrap_or_default(),
    };
    let mut other = Vec::new();
    let mut broken = record
        .unreadable_headers
        .then(|| "<a header whose name is not UTF-8>".to_owned());
    for (name, value) in &record.headers {
        let attribute = name
            .get(..KAFKA_HEADER_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(KAFKA_HEADER_PREFIX))
            .map(|_| &name[KAFKA_HEADER_PREFIX.len()..]);
        let text = value.as_deref().map(std::str::from_utf8);
        match (attribute, text) {
            (Some(attribute), Some(Ok(text))) => transport.headers.push((
                format!("{}{attribute}", codec::HEADER_PREFIX),
                text.to_owned(),
            )),
            (Some(_), _) => {
                // An attribute without a value or with bytes that are not UTF-8: the binding
                // says header values are UTF-8 strings.
                broken.get_or_insert_with(|| name.clone());
            }
            (None, Some(Ok(text))) if name.eq_ignore_ascii_case(CONTENT_TYPE_HEADER) => {
                if transport.content_type.is_none() {
                    transport.content_type = Some(text.to_owned());
                }
            }
            (None, Some(Ok(text))) => other.push((name.clone(), text.to_owned())),
            // Binary or null values of other headers are kept in the record (a dead letter
            // carries them) but are not text headers of the bus.
            (None, _) => {}
        }
    }
    if let Some(name) = broken {
        return (Err(DecodeError::InvalidHeaderValue(name)), other);
    }
    (codec::decode(&transport, HeaderValues::Raw), other)
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers as _;

    use super::*;

    fn record_of(headers: &OwnedHeaders, value: &[u8]) -> Record {
        Record {
            partition: 0,
            offset: 0,
            key: None,
            payload: Some(value.to_vec()),
            unreadable_headers: false,
            headers: headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect(),
        }
    }

    fn event() -> Envelope {
        Envelope::builder("invoicing.invoice.created", "/invoicing")
            .subject("inv 1001 € ü")
            .partition_key("inv-1001")
            .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .data("application/json", &br#"{"total":4200}"#[..])
            .build()
            .unwrap()
    }

    #[test]
    fn binary_mode_uses_the_kafka_bindings_names_and_round_trips() {
        let event = event();
        let (headers, value) = encode(&event, Mode::Binary);
        let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
        assert!(names.contains(&"ce_id"), "{names:?}");
        assert!(names.contains(&"ce_partitionkey"), "{names:?}");
        assert!(names.contains(&"content-type"), "{names:?}");
        assert!(names.contains(&"traceparent"), "{names:?}");
        let subject = headers.iter().find(|h| h.key == "ce_subject").unwrap();
        // Kafka header values are UTF-8 bytes, not percent-encoded.
        assert_eq!(subject.value, Some("inv 1001 € ü".as_bytes()));
        let (decoded, other) = decode(&record_of(&headers, &value));
        assert_eq!(decoded.unwrap(), event);
        assert_eq!(
            other,
            [(
                "traceparent".to_owned(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()
            )]
        );
    }

    #[test]
    fn structured_mode_round_trips() {
        let event = event();
        let (headers, value) = encode(&event, Mode::Structured);
        assert_eq!(headers.count(), 1);
        assert_eq!(decode(&record_of(&headers, &value)).0.unwrap(), event);
    }

    #[test]
    fn hostile_headers_are_errors_not_panics() {
        let mut record = record_of(&OwnedHeaders::new(), b"x");
        record.headers = vec![
            ("ce_specversion".to_owned(), Some(b"1.0".to_vec())),
            ("ce_id".to_owned(), Some(vec![0xff, 0xfe])),
            ("ce_source".to_owned(), Some(b"/x".to_vec())),
            ("ce_type".to_owned(), Some(b"t".to_vec())),
            ("blob".to_owned(), Some(vec![0xff])),
        ];
        let (decoded, other) = decode(&record);
        assert_eq!(
            decoded,
            Err(DecodeError::InvalidHeaderValue("ce_id".to_owned()))
        );
        assert!(other.is_empty());
        record.headers[1].1 = None;
        assert!(decode(&record).0.is_err());
        record.headers.clear();
        record.payload = None;
        assert!(decode(&record).0.is_err());
    }
}
