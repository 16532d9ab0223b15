//! Structured mode: the JSON event format (`application/cloudevents+json`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
#[cfg(test)]
use serde_json::{Map, Value};

use super::DecodeError;
use super::binary::parse_time;
use crate::SPEC_VERSION;
use crate::envelope::{Envelope, EnvelopeParts, is_json_content_type};

pub(super) fn encode(envelope: &Envelope) -> Bytes {
    fn text(v: &str) -> Member<'_> {
        Member::Text(Cow::Borrowed(v))
    }
    let mut doc: Vec<(&str, Member<'_>)> = Vec::with_capacity(10);
    doc.push(("specversion", text(SPEC_VERSION)));
    doc.push(("id", text(envelope.id())));
    doc.push(("source", text(envelope.source())));
    doc.push(("type", text(envelope.ty())));
    if let Some(v) = envelope.subject() {
        doc.push(("subject", text(v)));
    }
    if let Some(v) = envelope.time_rfc3339() {
        doc.push(("time", Member::Text(Cow::Owned(v))));
    }
    if let Some(v) = envelope.datacontenttype() {
        doc.push(("datacontenttype", text(v)));
    }
    if let Some(v) = envelope.dataschema() {
        doc.push(("dataschema", text(v)));
    }
    // Extension names are lower-case letters and digits, never a spec attribute's name, nor
    // `data_base64`: no member is written twice.
    for (k, v) in envelope.extensions() {
        doc.push((k, text(v)));
    }
    let data = envelope.data();
    if !data.is_empty() || envelope.datacontenttype().is_some() {
        // JSON data goes in as the text it is, once checked to be JSON: through a
        // `serde_json::Value` it would come out with numbers beyond `f64` rounded
        // (12345678901234567890123 as 1.2345678901234568e22).
        let json = envelope
            .datacontenttype()
            .is_none_or(is_json_content_type)
            .then(|| serde_json::from_slice::<&RawValue>(data).ok())
            .flatten();
        match json {
            Some(raw) => doc.push(("data", Member::Json(raw))),
            // Non-JSON data, or "JSON" bytes that do not parse: carried verbatim as base64,
            // so that nothing is lost or reinterpreted.
            None => doc.push(("data_base64", Member::Text(Cow::Owned(BASE64.encode(data))))),
        }
    }
    // Serializing strings and checked JSON text into a buffer cannot fail.
    Bytes::from(serde_json::to_vec(&Document(&doc)).unwrap_or_default())
}

/// One member value of an encoded event.
enum Member<'a> {
    Text(Cow<'a, str>),
    Json(&'a RawValue),
}

impl serde::Serialize for Member<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Member::Text(text) => serializer.serialize_str(text),
            Member::Json(raw) => raw.serialize(serializer),
        }
    }
}

/// The members of an encoded event, in the order they are written.
struct Document<'d, 'a>(&'d [(&'a str, Member<'a>)]);

impl serde::Serialize for Document<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (*k, v)))
    }
}

/// A JSON object's members in document order, keys borrowed from the input where they have
/// no escapes, values left as raw JSON text: nothing is allocated for what is not kept.
struct Members<'a>(Vec<(Key<'a>, &'a RawValue)>);

struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // The words serde_json's own map visitor uses, so errors read the same.
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some(member) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// A string attribute: absent or `null` is `None`, a string is its text, anything else is the
/// wrong type.
fn string_member(
    raw: Option<&RawValue>,
    name: &'static str,
) -> Result<Option<String>, DecodeError> {
    let wrong = || DecodeError::WrongType {
        name: name.to_owned(),
        reason: "expected a string",
    };
    match raw {
        None => Ok(None),
        Some(raw) if is_null(raw) => Ok(None),
        Some(raw) if raw.get().starts_with('"') => serde_json::from_str::<String>(raw.get())
            .map(Some)
            .map_err(|_| wrong()),
        Some(_) => Err(wrong()),
    }
}

/// Decodes one structured event: as reading the document into a `serde_json::Map` would (the
/// last of repeated members wins, members are visited in name order, the same errors in the
/// same order), without building one. Member values are read from their raw text, and JSON
/// `data` is kept as the text it was sent as (validated, not re-serialised: re-serialising
/// through `serde_json::Value` would also round numbers beyond `f64`).
pub(super) fn decode(body: &[u8]) -> Result<Envelope, DecodeError> {
    let Members(mut doc) =
        serde_json::from_slice(body).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    // Name order and last-wins, as a `Map` (a BTreeMap) would have them: a stable sort keeps
    // repeated names in document order, and the last of each run is kept.
    doc.sort_by(|(a, _), (b, _)| a.0.cmp(&b.0));
    doc.dedup_by(|later, earlier| {
        let same = later.0.0 == earlier.0.0;
        if same {
            earlier.1 = later.1;
        }
        same
    });
    let member = |name: &str| {
        doc.binary_search_by(|(key, _)| key.0.as_ref().cmp(name))
            .ok()
            .map(|i| doc[i].1)
    };
    let string = |name: &'static str| string_member(member(name), name);
    let specversion = string("specversion")?.ok_or(DecodeError::MissingAttribute("specversion"))?;
    if specversion != SPEC_VERSION {
        return Err(DecodeError::UnsupportedSpecVersion(specversion));
    }
    let mut parts = EnvelopeParts {
        id: string("id")?.ok_or(DecodeError::MissingAttribute("id"))?,
        source: string("source")?.ok_or(DecodeError::MissingAttribute("source"))?,
        ty: string("type")?.ok_or(DecodeError::MissingAttribute("type"))?,
        subject: string("subject")?,
        time: string("time")?.as_deref().map(parse_time).transpose()?,
        datacontenttype: string("datacontenttype")?,
        dataschema: string("dataschema")?,
        ..EnvelopeParts::default()
    };
    let data = member("data").filter(|v| !is_null(v));
    let data_base64 = member("data_base64").filter(|v| !is_null(v));
    parts.data = match (data, data_base64) {
        (Some(_), Some(_)) => return Err(DecodeError::DataAndDataBase64),
        (None, Some(b64)) => {
            let b64 = string_member(Some(b64), "data_base64")?.unwrap_or_default();
            Bytes::from(BASE64.decode(b64).map_err(|_| DecodeError::InvalidBase64)?)
        }
        // A JSON string with a non-JSON content type is that text itself (JSON format §3.1).
        (Some(text), None)
            if text.get().starts_with('"')
                && parts
                    .datacontenttype
                    .as_deref()
                    .is_some_and(|ct| !is_json_content_type(ct)) =>
        {
            Bytes::from(
                string_member(Some(text), "data")?
                    .unwrap_or_default()
                    .into_bytes(),
            )
        }
        // The JSON text as sent (the parser has checked it is JSON).
        (Some(value), None) => Bytes::copy_from_slice(value.get().as_bytes()),
        (None, None) => Bytes::new(),
    };
    for (Key(name), value) in &doc {
        if matches!(
            name.as_ref(),
            "specversion"
                | "id"
                | "source"
                | "type"
                | "subject"
                | "time"
                | "datacontenttype"
                | "dataschema"
                | "data"
                | "data_base64"
        ) {
            continue;
        }
        // Extensions may be strings, integers or booleans; the envelope keeps their canonical
        // string form, which is how binary mode carries them anyway.
        let raw = value.get();
        let text = match raw.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(raw)
                .map_err(|e| DecodeError::InvalidJson(e.to_string()))?,
            Some(b't' | b'f') => raw.to_owned(),
            Some(b'n') => continue,
            Some(b'-' | b'0'..=b'9') => serde_json::from_str::<serde_json::Number>(raw)
                .map_err(|e| DecodeError::InvalidJson(e.to_string()))?
                .to_string(),
            _ => {
                return Err(DecodeError::WrongType {
                    name: name.clone().into_owned(),
                    reason: "an extension must be a string, a number or a boolean",
                });
            }
        };
        parts.extensions.insert(name.clone().into_owned(), text);
    }
    Ok(Envelope::from_parts(parts)?)
}

/// The straightforward decoder, through a `serde_json::Map`: the reference the fast one is
/// tested against.
#[cfg(test)]
fn decode_with_map(body: &[u8]) -> Result<Envelope, DecodeError> {
    let doc: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    let string = |name: &'static str| -> Result<Option<String>, DecodeError> {
        match doc.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(DecodeError::WrongType {
                name: name.to_owned(),
                reason: "expected a string",
            }),
        }
    };
    let specversion = string("specversion")?.ok_or(DecodeError::MissingAttribute("specversion"))?;
    if specversion != SPEC_VERSION {
        return Err(DecodeError::UnsupportedSpecVersion(specversion));
    }
    let mut parts = EnvelopeParts {
        id: string("id")?.ok_or(DecodeError::MissingAttribute("id"))?,
        source: string("source")?.ok_or(DecodeError::MissingAttribute("source"))?,
        ty: string("type")?.ok_or(DecodeError::MissingAttribute("type"))?,
        subject: string("subject")?,
        time: string("time")?.as_deref().map(parse_time).transpose()?,
        datacontenttype: string("datacontenttype")?,
        dataschema: string("dataschema")?,
        ..EnvelopeParts::default()
    };
    let data = doc.get("data").filter(|v| !v.is_null());
    let data_base64 = doc.get("data_base64").filter(|v| !v.is_null());
    parts.data = match (data, data_base64) {
        (Some(_), Some(_)) => return Err(DecodeError::DataAndDataBase64),
        (None, Some(Value::String(b64))) => {
            Bytes::from(BASE64.decode(b64).map_err(|_| DecodeError::InvalidBase64)?)
        }
        (None, Some(_)) => {
            return Err(DecodeError::WrongType {
                name: "data_base64".to_owned(),
                reason: "expected a string",
            });
        }
        // A JSON string with a non-JSON content type is that text itself (JSON format §3.1).
        (Some(Value::String(text)), None)
            if parts
                .datacontenttype
                .as_deref()
                .is_some_and(|ct| !is_json_content_type(ct)) =>
        {
            Bytes::from(text.clone().into_bytes())
        }
        (Some(value), None) => Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
        (None, None) => Bytes::new(),
    };
    for (name, value) in &doc {
        if matches!(
            name.as_str(),
            "specversion"
                | "id"
                | "source"
                | "type"
                | "subject"
                | "time"
                | "datacontenttype"
                | "dataschema"
                | "data"
                | "data_base64"
        ) {
            continue;
        }
        // Extensions may be strings, integers or booleans; the envelope keeps their canonical
        // string form, which is how binary mode carries them anyway.
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            _ => {
                return Err(DecodeError::WrongType {
                    name: name.clone(),
                    reason: "an extension must be a string, a number or a boolean",
                });
            }
        };
        parts.extensions.insert(name.clone(), text);
    }
    Ok(Envelope::from_parts(parts)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference re-serialises JSON data through `serde_json::Value`, the fast decoder
    /// keeps its text: equal as JSON, and as bytes whenever the text was canonical already.
    fn comparable(envelope: Envelope) -> (Envelope, Option<Value>) {
        let json = serde_json::from_slice::<Value>(envelope.data()).ok();
        (envelope, json)
    }

    fn same(body: &[u8]) {
        let fast = decode(body).map_err(|e| e.to_string());
        let reference = decode_with_map(body).map_err(|e| e.to_string());
        match (fast, reference) {
            (Ok(fast), Ok(reference)) => {
                let ((fast, fast_json), (reference, reference_json)) =
                    (comparable(fast), comparable(reference));
                assert_eq!(
                    fast_json,
                    reference_json,
                    "{}",
                    String::from_utf8_lossy(body)
                );
                if fast_json.is_none() {
                    assert_eq!(fast, reference, "{}", String::from_utf8_lossy(body));
                }
                assert_eq!(
                    (
                        fast.id(),
                        fast.ty(),
                        fast.source(),
                        fast.subject(),
                        fast.time()
                    ),
                    (
                        reference.id(),
                        reference.ty(),
                        reference.source(),
                        reference.subject(),
                        reference.time()
                    )
                );
                assert_eq!(
                    fast.extensions().collect::<Vec<_>>(),
                    reference.extensions().collect::<Vec<_>>()
                );
                assert_eq!(fast.datacontenttype(), reference.datacontenttype());
            }
            (fast, reference) => {
                assert_eq!(
                    fast.err(),
                    reference.err(),
                    "{}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn the_fast_decoder_agrees_with_the_reference_on_awkward_documents() {
        for body in [
            &br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#[..],
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","id":"2"}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","x":"a","x":null}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","x":1.50,"y":true,"z":-0}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","x":[1]}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","x":{"a":1}}"#,
            br#"{"specversion":"1.0","id":1,"source":"/s","type":"t"}"#,
            br#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
            br#"{"id":"1","source":"/s","type":"t"}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"b": 1, "a" : [1, 2.0]}}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"h\u00e9llo"}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"text"}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":12345678901234567890123}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":null,"data_base64":"aGk="}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"aGk="}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"!!"}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":7}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2026-11-26T17:00:00.5Z"}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","BAD-name":"x"}"#,
            br#"["not", "an", "object"]"#,
            br#"{"specversion":"1.0""#,
            b"",
        ] {
            same(body);
        }
    }

    #[test]
    fn json_data_keeps_its_text_and_so_its_precision() {
        let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"n":12345678901234567890123}}"#;
        assert_eq!(
            decode(body).unwrap().data().as_ref(),
            br#"{"n":12345678901234567890123}"#
        );
    }

    #[test]
    fn json_data_is_written_as_its_text_so_no_number_is_rounded() {
        for data in [
            &br#"{"big":12345678901234567890123}"#[..],
            br#"{"long":1234567890.123456789}"#,
            br"[-0.0,1e400,18446744073709551616,0.1000000000000000055511151231257827]",
            br#"{"nested":{"a":[1, 2.50, {"b":-99999999999999999999999999.9e-3}]}}"#,
            b"123456789012345678901234567890",
        ] {
            let event = Envelope::builder("t", "/s")
                .data("application/json", data)
                .build()
                .unwrap();
            let body = encode(&event);
            let text = String::from_utf8_lossy(&body);
            let data_text = std::str::from_utf8(data).unwrap();
            assert!(text.contains(&format!(r#""data":{data_text}"#)), "{text}");
            assert_eq!(decode(&body).unwrap(), event, "{text}");
        }
        // Surrounding whitespace is not part of the JSON value; the value stays as written.
        let padded = Envelope::builder("t", "/s")
            .data("application/json", &b" \n{\"n\": 1.10}\n"[..])
            .build()
            .unwrap();
        let back = decode(&encode(&padded)).unwrap();
        assert_eq!(back.data().as_ref(), br#"{"n": 1.10}"#);
    }

    proptest! {
        #[test]
        fn the_fast_decoder_agrees_with_the_reference_on_encoded_envelopes(
            subject in proptest::option::of("[a-z0-9/ \\\"é-]{0,12}"),
            extensions in proptest::collection::btree_map("x[a-z0-9]{0,6}", "[ -~é]{0,10}", 0..4),
            data in proptest::option::of(prop_oneof![
                Just(br#"{"z":1,"a":[true,null,"x"]}"#.to_vec()),
                Just(b"plain bytes \xff".to_vec()),
                Just(b"\"quoted\"".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..16),
            ]),
            json in any::<bool>(),
        ) {
            let mut builder = Envelope::builder("t.happened", "/source");
            if let Some(subject) = subject {
                builder = builder.subject(subject);
            }
            for (name, value) in extensions {
                builder = builder.extension(name, value).unwrap();
            }
            if let Some(data) = data {
                let ct = if json { "application/json" } else { "application/octet-stream" };
                builder = builder.data(ct, data);
            }
            let envelope = builder.build().unwrap();
            let body = encode(&envelope);
            same(&body);
            // JSON data is written as its text, so it comes back byte for byte (the
            // reference, re-serialising through a `Value`, sorts its keys).
            prop_assert_eq!(decode(&body).unwrap(), envelope);
        }
    }
}
