//! Codecs between an [`Envelope`] and a transport message: binary content mode (attributes as
//! `ce-` headers, data as the body) and structured mode (`application/cloudevents+json`).
//!
//! Both adapters speak through one transport-neutral shape, [`TransportMessage`]: header
//! pairs, the content type, and the body. The NATS adapter writes the content type as the
//! `content-type` header; the RabbitMQ adapter writes it into the AMQP `content_type`
//! property and the `ce-` pairs into the application headers, as the CloudEvents RabbitMQ
//! binding (and the CloudEvents Python SDK) do.
//!
//! ```
//! use ms_bus::codec::{self, HeaderValues, Mode};
//! use ms_bus::Envelope;
//!
//! let event = Envelope::builder("invoicing.invoice.created", "/invoicing")
//!     .subject("inv 1001")
//!     .data("application/json", &br#"{"total":4200}"#[..])
//!     .build()?;
//!
//! let message = codec::encode(&event, Mode::Binary, HeaderValues::PercentEncoded);
//! assert_eq!(message.header("ce-type"), Some("invoicing.invoice.created"));
//! assert_eq!(message.header("ce-subject"), Some("inv%201001"));
//! assert_eq!(message.content_type.as_deref(), Some("application/json"));
//! assert_eq!(codec::decode(&message, HeaderValues::PercentEncoded)?, event);
//!
//! let structured = codec::encode(&event, Mode::Structured, HeaderValues::Raw);
//! assert_eq!(structured.content_type.as_deref(), Some("application/cloudevents+json"));
//! assert_eq!(codec::decode(&structured, HeaderValues::Raw)?, event);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Decoding never panics: anything that is not a valid CloudEvents event is a [`DecodeError`], which
//! a consumer sends to the dead-letter destination with the error as the reason.

mod binary;
mod error;
mod structured;

use bytes::Bytes;

use crate::Envelope;

pub use binary::BinaryHeaderName;
pub(crate) use binary::ESCAPED;
pub use error::DecodeError;

/// The media type of the JSON event format (structured mode).
pub const STRUCTURED_JSON_CONTENT_TYPE: &str = "application/cloudevents+json";
/// The prefix of every attribute header in binary mode.
pub const HEADER_PREFIX: &str = "ce-";

/// The content mode a publisher writes. Decoders accept both, whatever a publisher chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Attributes as `ce-` headers, data as the body untouched: the cheap mode, and the one
    /// brokers and routers can read without parsing the body.
    #[default]
    Binary,
    /// The whole event as one `application/cloudevents+json` document.
    Structured,
}

/// How `ce-` header values are written, which depends on the protocol binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderValues {
    /// Percent-encoded UTF-8 for space, `"`, `%` and everything outside printable ASCII, as
    /// the HTTP binding prescribes; NATS headers follow the HTTP header rules, so the NATS
    /// adapter uses this.
    PercentEncoded,
    /// Values as they are: AMQP headers carry any UTF-8 string, and the RabbitMQ binding (as
    /// the CloudEvents Python SDK implements it) does not escape them.
    Raw,
}

/// A message as a transport carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransportMessage {
    /// Header pairs: in binary mode the `ce-` attributes; adapters add their own headers
    /// (dead-letter reasons, dedup ids), which decoders ignore.
    pub headers: Vec<(String, String)>,
    /// The content type: `datacontenttype` in binary mode, the event format's media type in
    /// structured mode.
    pub content_type: Option<String>,
    /// The body.
    pub body: Bytes,
}

impl TransportMessage {
    /// The first header of that name, compared without regard to ASCII case (as NATS, HTTP and
    /// the CloudEvents bindings treat header names).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Encodes `envelope` in `mode`. Encoding cannot fail: every [`Envelope`] is a valid event.
pub fn encode(envelope: &Envelope, mode: Mode, values: HeaderValues) -> TransportMessage {
    match mode {
        Mode::Binary => binary::encode(envelope, values),
        Mode::Structured => TransportMessage {
            headers: Vec::new(),
            content_type: Some(STRUCTURED_JSON_CONTENT_TYPE.to_owned()),
            body: structured::encode(envelope),
        },
    }
}

/// Binary mode's `ce-` headers for `envelope`, without building a [`TransportMessage`]: for
/// adapters that write straight into their client's header type. The spec's attribute names
/// come as `&'static str`; the data and `datacontenttype` are the adapter's to place.
pub fn binary_headers(
    envelope: &Envelope,
    values: HeaderValues,
) -> Vec<(std::borrow::Cow<'static, str>, std::borrow::Cow<'_, str>)> {
    binary::headers(envelope, values)
}

/// Binary mode's `ce-` headers for `envelope`, handed to `write` one by one: for adapters on
/// a hot path, which then build no list and can reuse one buffer for extension header names
/// (`ce-` followed by the [`BinaryHeaderName::Extension`] name).
pub fn for_each_binary_header<'e>(
    envelope: &'e Envelope,
    values: HeaderValues,
    write: impl FnMut(BinaryHeaderName<'e>, std::borrow::Cow<'e, str>),
) {
    binary::for_each_header(envelope, values, write);
}

/// Decodes a message in either mode: structured when the content type is an
/// `application/cloudevents` type, binary when there is a `ce-specversion` header, and
/// structured again when there is neither a content type nor that header: the NATS binding's
/// structured mode is a bare JSON payload without headers.
pub fn decode(message: &TransportMessage, values: HeaderValues) -> Result<Envelope, DecodeError> {
    match message.content_type.as_deref() {
        Some(ct) if is_cloudevents_format(ct) => {
            let essence = essence(ct);
            if essence == STRUCTURED_JSON_CONTENT_TYPE {
                structured::decode(&message.body)
            } else {
                Err(DecodeError::UnsupportedFormat(ct.to_owned()))
            }
        }
        None if message.header("ce-specversion").is_none()
            && message.body.trim_ascii_start().starts_with(b"{") =>
        {
            structured::decode(&message.body)
        }
        _ => binary::decode(message, values),
    }
}

/// Encodes an envelope as one `application/cloudevents+json` document.
pub fn to_json(envelope: &Envelope) -> Bytes {
    structured::encode(envelope)
}

/// Decodes one `application/cloudevents+json` document.
pub fn from_json(json: &[u8]) -> Result<Envelope, DecodeError> {
    structured::decode(json)
}

fn is_cloudevents_format(content_type: &str) -> bool {
    essence(content_type).starts_with("application/cloudevents")
}

fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}
