//! Binary content mode: each attribute a `ce-` header, the data the body, `datacontenttype`
//! the transport's content type.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{DecodeError, HEADER_PREFIX, HeaderValues, TransportMessage};
use crate::SPEC_VERSION;
use crate::envelope::{Envelope, EnvelopeParts};

/// What the HTTP binding (§3.1.3.2) escapes: space, `"`, `%`, controls and, implicitly through
/// UTF-8 percent-encoding, every non-ASCII character. The dedup key encodes its parts with it
/// too, so that both are header-safe by the same rule.
pub(crate) const ESCAPED: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// The name of one binary-mode header: a spec attribute's full header name, or an
/// extension's attribute name, to be written after the `ce-` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryHeaderName<'a> {
    /// A spec attribute: the whole header name, such as `ce-id`.
    Attribute(&'static str),
    /// An extension: its attribute name (such as `partitionkey`), without the prefix.
    Extension(&'a str),
}

/// Calls `write` with each `ce-` header of `envelope`, in the order of
/// [`headers`]; nothing is collected or allocated beyond percent-escaping and the time.
pub(super) fn for_each_header<'e>(
    envelope: &'e Envelope,
    values: HeaderValues,
    mut write: impl FnMut(BinaryHeaderName<'e>, Cow<'e, str>),
) {
    let value = |v| match values {
        HeaderValues::PercentEncoded => Cow::from(utf8_percent_encode(v, ESCAPED)),
        HeaderValues::Raw => Cow::Borrowed(v),
    };
    write(
        BinaryHeaderName::Attribute("ce-specversion"),
        Cow::Borrowed(SPEC_VERSION),
    );
    write(BinaryHeaderName::Attribute("ce-id"), value(envelope.id()));
    write(
        BinaryHeaderName::Attribute("ce-source"),
        value(envelope.source()),
    );
    write(BinaryHeaderName::Attribute("ce-type"), value(envelope.ty()));
    if let Some(subject) = envelope.subject() {
        write(BinaryHeaderName::Attribute("ce-subject"), value(subject));
    }
    if let Some(time) = envelope.time_rfc3339() {
        // RFC 3339 text is printable ASCII without space, `"` or `%`: nothing to escape.
        write(BinaryHeaderName::Attribute("ce-time"), Cow::Owned(time));
    }
    if let Some(schema) = envelope.dataschema() {
        write(BinaryHeaderName::Attribute("ce-dataschema"), value(schema));
    }
    for (name, v) in envelope.extensions() {
        write(BinaryHeaderName::Extension(name), value(v));
    }
}

/// The `ce-` headers of `envelope`: the spec's attribute names as static strings, extension
/// names built once each.
pub(super) fn headers(
    envelope: &Envelope,
    values: HeaderValues,
) -> Vec<(Cow<'static, str>, Cow<'_, str>)> {
    let mut headers = Vec::with_capacity(7 + envelope.extensions().size_hint().0);
    for_each_header(envelope, values, |name, value| {
        let name = match name {
            BinaryHeaderName::Attribute(name) => Cow::Borrowed(name),
            BinaryHeaderName::Extension(name) => Cow::Owned(format!("{HEADER_PREFIX}{name}")),
        };
        headers.push((name, value));
    });
    headers
}

pub(super) fn encode(envelope: &Envelope, values: HeaderValues) -> TransportMessage {
    TransportMessage {
        headers: headers(envelope, values)
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        content_type: envelope.datacontenttype().map(str::to_owned),
        body: envelope.data().clone(),
    }
}

pub(super) fn decode(
    message: &TransportMessage,
    values: HeaderValues,
) -> Result<Envelope, DecodeError> {
    let mut parts = EnvelopeParts::default();
    let (mut id, mut source, mut ty, mut specversion) = (None, None, None, None);
    for (name, raw) in &message.headers {
        let Some(attribute) = strip_prefix_ignore_case(name, HEADER_PREFIX) else {
            continue;
        };
        let attribute = attribute.to_ascii_lowercase();
        let value = match values {
            HeaderValues::PercentEncoded => percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| DecodeError::InvalidHeaderValue(name.clone()))?
                .into_owned(),
            HeaderValues::Raw => raw.clone(),
        };
        // The first header of a name wins, as `TransportMessage::header` reads it.
        match attribute.as_str() {
            "specversion" => set_once(&mut specversion, value),
            "id" => set_once(&mut id, value),
            "source" => set_once(&mut source, value),
            "type" => set_once(&mut ty, value),
            "subject" => set_once(&mut parts.subject, value),
            "dataschema" => set_once(&mut parts.dataschema, value),
            "time" => {
                if parts.time.is_none() {
                    parts.time = Some(parse_time(&value)?);
                }
            }
            // The transport's own content type is authoritative in binary mode.
            "datacontenttype" => {}
            _ => {
                parts.extensions.entry(attribute).or_insert(value);
            }
        }
    }
    let specversion = specversion.ok_or(DecodeError::MissingAttribute("specversion"))?;
    if specversion != SPEC_VERSION {
        return Err(DecodeError::UnsupportedSpecVersion(specversion));
    }
    parts.id = id.ok_or(DecodeError::MissingAttribute("id"))?;
    parts.source = source.ok_or(DecodeError::MissingAttribute("source"))?;
    parts.ty = ty.ok_or(DecodeError::MissingAttribute("type"))?;
    parts.datacontenttype.clone_from(&message.content_type);
    parts.data = message.body.clone();
    Ok(Envelope::from_parts(parts)?)
}

pub(super) fn parse_time(text: &str) -> Result<OffsetDateTime, DecodeError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| DecodeError::InvalidTime(text.to_owned()))
}

fn set_once(slot: &mut Option<String>, value: String) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}
