//! Structured mode: the JSON event format (`application/cloudevents+json`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::DecodeError;
use super::binary::parse_time;
use crate::SPEC_VERSION;
use crate::envelope::{Envelope, EnvelopeParts, is_json_content_type};

pub(super) fn encode(envelope: &Envelope) -> Bytes {
    let mut doc = Map::new();
    let mut put = |k: &str, v: &str| {
        doc.insert(k.to_owned(), Value::String(v.to_owned()));
    };
    put("specversion", SPEC_VERSION);
    put("id", envelope.id());
    put("source", envelope.source());
    put("type", envelope.ty());
    if let Some(v) = envelope.subject() {
        put("subject", v);
    }
    if let Some(v) = envelope.time_rfc3339() {
        put("time", &v);
    }
    if let Some(v) = envelope.datacontenttype() {
        put("datacontenttype", v);
    }
    if let Some(v) = envelope.dataschema() {
        put("dataschema", v);
    }
    for (k, v) in envelope.extensions() {
        put(k, v);
    }
    let data = envelope.data();
    if !data.is_empty() || envelope.datacontenttype().is_some() {
        let json_value = envelope
            .datacontenttype()
            .is_none_or(is_json_content_type)
            .then(|| serde_json::from_slice::<Value>(data).ok())
            .flatten();
        match json_value {
            Some(value) => {
                doc.insert("data".to_owned(), value);
            }
            // Non-JSON data, or "JSON" bytes that do not parse: carried verbatim as base64,
            // so that nothing is lost or reinterpreted.
            None => {
                doc.insert("data_base64".to_owned(), Value::String(BASE64.encode(data)));
            }
        }
    }
    // Serializing a map of strings and parsed values cannot fail.
    Bytes::from(serde_json::to_vec(&Value::Object(doc)).unwrap_or_default())
}

pub(super) fn decode(body: &[u8]) -> Result<Envelope, DecodeError> {
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
