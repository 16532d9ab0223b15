//! An envelope as a NATS message: its headers and its payload.
//!
//! async-nats panics on a header value with a line break (`HeaderValue::from(&str)` asserts),
//! so every value goes through the fallible `HeaderValue::from_str`. A built envelope never
//! trips it (no attribute holds a control character, `ce-` values are percent-encoded, the
//! dedup key is printable ASCII); a value that still did would fail its publish with
//! [`BusError::Unencodable`] rather than bring the publisher down.

use std::str::FromStr as _;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use super::{CONTENT_TYPE_HEADER, MSG_ID_HEADER};
use crate::codec::{self, BinaryHeaderName, HeaderValues, Mode};
use crate::{BusError, Envelope};

/// The headers and payload of `envelope` in `mode`: binary mode's `ce-` headers (percent-
/// encoded, as the HTTP binding has them) with `datacontenttype` as `content-type` and the
/// data as the payload, or structured mode's JSON document; `Nats-Msg-Id` in both.
pub(super) fn message(envelope: &Envelope, mode: Mode) -> Result<(HeaderMap, Bytes), BusError> {
    let mut headers = HeaderMap::new();
    insert(
        &mut headers,
        HeaderName::from_static(MSG_ID_HEADER),
        &envelope.dedup_key(),
    )?;
    let content_type = HeaderName::from_static(CONTENT_TYPE_HEADER);
    if mode == Mode::Structured {
        insert(
            &mut headers,
            content_type,
            codec::STRUCTURED_JSON_CONTENT_TYPE,
        )?;
        return Ok((headers, codec::to_json(envelope)));
    }
    if let Some(value) = envelope.datacontenttype() {
        insert(&mut headers, content_type, value)?;
    }
    // One buffer for the extension header names of this message.
    let mut extension_name = String::new();
    let mut failed = Ok(());
    codec::for_each_binary_header(envelope, HeaderValues::PercentEncoded, |name, value| {
        if failed.is_err() {
            return;
        }
        let name = match name {
            BinaryHeaderName::Attribute(name) => HeaderName::from_static(name),
            BinaryHeaderName::Extension(name) => {
                extension_name.clear();
                extension_name.push_str(codec::HEADER_PREFIX);
                extension_name.push_str(name);
                // `ce-` and lower-case letters and digits: always a valid name.
                match HeaderName::from_str(&extension_name) {
                    Ok(name) => name,
                    Err(_) => {
                        failed = Err(unencodable(&extension_name, name));
                        return;
                    }
                }
            }
        };
        failed = insert(&mut headers, name, &value);
    });
    failed?;
    Ok((headers, envelope.data().clone()))
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) -> Result<(), BusError> {
    let value = HeaderValue::from_str(value).map_err(|_| unencodable(name.as_ref(), value))?;
    headers.insert(name, value);
    Ok(())
}

fn unencodable(name: &str, value: &str) -> BusError {
    BusError::Unencodable(format!(
        "NATS header `{name}` cannot carry {value:?} (no line breaks, names of visible ASCII)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::hostile;
    use proptest::prelude::*;

    /// What a subscriber reads: the message as async-nats delivers it.
    fn received(headers: HeaderMap, payload: Bytes) -> async_nats::Message {
        async_nats::Message {
            subject: "ms.ev.t".into(),
            reply: None,
            length: payload.len(),
            payload,
            headers: Some(headers),
            status: None,
            description: None,
        }
    }

    proptest! {
        /// Whatever the attributes hold, building and publishing never panic: what the
        /// builder refuses is a typed error, and what it accepts is written into headers
        /// without a line break and read back as it was, in both modes.
        #[test]
        fn hostile_attributes_are_refused_or_round_trip_never_panic(
            which in 0..hostile::ATTRIBUTES,
            text in hostile::text(),
        ) {
            let Some(envelope) = hostile::accepted(hostile::envelope(which, text)) else {
                return Ok(());
            };
            for mode in [Mode::Binary, Mode::Structured] {
                let (headers, payload) = message(&envelope, mode).unwrap();
                for (_, values) in headers.iter() {
                    for value in values {
                        prop_assert!(!value.as_str().contains(['\r', '\n']), "{:?}", value);
                    }
                }
                let id = headers.get(MSG_ID_HEADER).map(HeaderValue::as_str);
                let key = envelope.dedup_key();
                prop_assert_eq!(id, Some(key.as_str()));
                let transport = super::super::transport_message(&received(headers, payload));
                let back = codec::decode(&transport, HeaderValues::PercentEncoded).unwrap();
                prop_assert_eq!(&back, &envelope);
            }
        }
    }

    #[test]
    fn the_message_id_is_source_and_id_not_the_id_alone() {
        let a = Envelope::builder("t", "/producer-a")
            .id("same")
            .build()
            .unwrap();
        let b = Envelope::builder("t", "/producer-b")
            .id("same")
            .build()
            .unwrap();
        let id = |e: &Envelope| {
            let (headers, _) = message(e, Mode::Binary).unwrap();
            headers.get(MSG_ID_HEADER).unwrap().as_str().to_owned()
        };
        assert_eq!(id(&a), "/producer-a same");
        assert_ne!(id(&a), id(&b));
    }
}
