//! Between the codec's [`TransportMessage`] and an AMQP message: the `ce-` pairs go into the
//! headers table as long strings, the content type into the AMQP `content_type` property (the
//! CloudEvents RabbitMQ binding, as the CloudEvents Python SDK implements it).

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::BusError;
use crate::codec::TransportMessage;

/// The adapter's own header: which delivery the copy that carries it will be (absent on a
/// first publish, which is delivery 1). RabbitMQ 3.10 classic queues count nothing, so the
/// adapter counts: it writes `n + 1` whenever it republishes a message for another try.
pub(crate) const ATTEMPT_HEADER: &str = "ms-attempt";

/// AMQP `delivery_mode` 2: the broker writes the message to disk in a durable queue.
const PERSISTENT: u8 = 2;

/// The properties and body of an encoded envelope, ready for `basic_publish`; `message_id` is
/// the envelope's dedup key.
pub(crate) fn to_amqp(
    message: TransportMessage,
    message_id: &str,
) -> Result<(BasicProperties, bytes::Bytes), BusError> {
    let mut headers = FieldTable::default();
    for (name, value) in message.headers {
        headers.insert(short(name)?, AMQPValue::LongString(value.into()));
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if let Some(content_type) = message.content_type {
        properties = properties.with_content_type(short(content_type)?);
    }
    // The message id is not part of the binding; brokers' tools show it, and it costs little.
    // A dedup key is at most `MAX_DEDUP_KEY_LEN` (128) bytes: it always fits a short string.
    if let Ok(id) = ShortString::try_new(message_id) {
        properties = properties.with_message_id(id);
    }
    Ok((properties, message.body))
}

/// The codec's view of a received message: every header whose value is text (or a number,
/// written as text), the content type, the body. Headers of other AMQP types (RabbitMQ's
/// `x-death` table) are left out: no CloudEvents attribute has such a value.
pub(crate) fn to_transport(properties: &BasicProperties, body: bytes::Bytes) -> TransportMessage {
    let headers = properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter_map(|(name, value)| Some((name.to_string(), text(value)?)))
                .collect()
        })
        .unwrap_or_default();
    TransportMessage {
        headers,
        content_type: properties.content_type().as_ref().map(ToString::to_string),
        body,
    }
}

/// The text of a header value, if it has one.
fn text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok()?,
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

/// The attempt a received message is on: the adapter's header, else 1.
pub(crate) fn attempt(properties: &BasicProperties) -> u32 {
    properties
        .headers()
        .as_ref()
        .and_then(|table| table.inner().get(ATTEMPT_HEADER))
        .and_then(text)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// `properties` with `pairs` set in the headers table (replacing headers of the same name);
/// everything else, and the body, stay as received.
pub(crate) fn with_headers(
    properties: &BasicProperties,
    pairs: impl IntoIterator<Item = (String, String)>,
) -> Result<BasicProperties, BusError> {
    let mut table = properties.headers().clone().unwrap_or_default();
    for (name, value) in pairs {
        table.insert(short(name)?, AMQPValue::LongString(value.into()));
    }
    Ok(properties.clone().with_headers(table))
}

/// `properties` without the header `name`.
pub(crate) fn without(properties: &BasicProperties, name: &str) -> BasicProperties {
    match properties.headers() {
        Some(table) if table.contains_key(name) => {
            let mut inner = table.inner().clone();
            inner.remove(name);
            properties.clone().with_headers(FieldTable::from(inner))
        }
        _ => properties.clone(),
    }
}

/// An AMQP short string (header names, the content type), at most 255 bytes.
pub(crate) fn short(s: impl Into<String>) -> Result<ShortString, BusError> {
    let s = s.into();
    let len = s.len();
    ShortString::try_new(s).map_err(|_| {
        BusError::NotConfirmed(
            format!(
                "a {len}-byte header name or content type exceeds AMQP's 255-byte short string"
            )
            .into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;
    use crate::codec::{self, HeaderValues, Mode};
    use crate::envelope::hostile;
    use proptest::prelude::*;

    #[test]
    fn binary_mode_round_trips_through_amqp_properties() {
        let event = Envelope::builder("invoicing.invoice.created", "/invoicing")
            .subject("inv 1001 ü")
            .extension("partitionkey", "inv-1001")
            .unwrap()
            .data("application/json", &br#"{"total":4200}"#[..])
            .build()
            .unwrap();
        let message = codec::encode(&event, Mode::Binary, HeaderValues::Raw);
        let (properties, body) = to_amqp(message, &event.dedup_key()).unwrap();
        assert_eq!(
            properties.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert_eq!(
            properties.message_id().as_ref().map(ShortString::as_str),
            Some(format!("/invoicing {}", event.id()).as_str())
        );
        assert_eq!(properties.delivery_mode(), &Some(PERSISTENT));
        let back = codec::decode(&to_transport(&properties, body), HeaderValues::Raw).unwrap();
        assert_eq!(back, event);
        assert_eq!(attempt(&properties), 1);
    }

    proptest! {
        /// Whatever the attributes hold, building and encoding never panic: what the builder
        /// refuses is a typed error, what it accepts becomes AMQP properties (the dedup key as
        /// the message id) and is read back as it was, in both modes.
        #[test]
        fn hostile_attributes_are_refused_or_round_trip_never_panic(
            which in 0..hostile::ATTRIBUTES,
            text in hostile::text(),
        ) {
            let Some(envelope) = hostile::accepted(hostile::envelope(which, text)) else {
                return Ok(());
            };
            for mode in [Mode::Binary, Mode::Structured] {
                let message = codec::encode(&envelope, mode, HeaderValues::Raw);
                let (properties, body) = to_amqp(message, &envelope.dedup_key()).unwrap();
                let key = envelope.dedup_key();
                prop_assert_eq!(
                    properties.message_id().as_ref().map(ShortString::as_str),
                    Some(key.as_str())
                );
                let back = codec::decode(&to_transport(&properties, body), HeaderValues::Raw);
                prop_assert_eq!(back.as_ref(), Ok(&envelope));
            }
        }
    }

    #[test]
    fn an_overlong_content_type_is_an_error_not_a_panic() {
        let message = TransportMessage {
            content_type: Some("x".repeat(300)),
            ..TransportMessage::default()
        };
        assert!(matches!(
            to_amqp(message, "id"),
            Err(BusError::NotConfirmed(_))
        ));
    }

    #[test]
    fn attempt_reads_the_adapters_header_and_ignores_garbage() {
        let properties = with_headers(
            &BasicProperties::default(),
            [(ATTEMPT_HEADER.to_owned(), "3".to_owned())],
        )
        .unwrap();
        assert_eq!(attempt(&properties), 3);
        let garbage =
            with_headers(&properties, [(ATTEMPT_HEADER.to_owned(), "x".to_owned())]).unwrap();
        assert_eq!(attempt(&garbage), 1);
    }
}
