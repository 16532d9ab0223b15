//! Why a transport message is not a valid CloudEvents event.

use crate::EnvelopeError;

/// Why a message could not be decoded into an [`Envelope`](crate::Envelope). Consumers send
/// such messages to the dead-letter destination with this error's text as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A required attribute (`id`, `source`, `type`, `specversion`) is missing.
    #[error("required attribute `{0}` is missing")]
    MissingAttribute(&'static str),
    /// `specversion` is not `1.0`.
    #[error("specversion `{0}` is not supported (only 1.0 is)")]
    UnsupportedSpecVersion(String),
    /// An attribute has the wrong JSON type (e.g. a number where the spec wants a string).
    #[error("attribute `{name}` has the wrong type: {reason}")]
    WrongType {
        /// The attribute.
        name: String,
        /// What was expected.
        reason: &'static str,
    },
    /// `time` is not an RFC 3339 timestamp.
    #[error("attribute `time` is not RFC 3339: `{0}`")]
    InvalidTime(String),
    /// A `ce-` header value's percent-encoding is broken or does not decode to UTF-8.
    #[error("header `{0}` is not valid percent-encoded UTF-8")]
    InvalidHeaderValue(String),
    /// The structured body is not a JSON object.
    #[error("the structured body is not a JSON object: {0}")]
    InvalidJson(String),
    /// `data_base64` is not valid base64.
    #[error("`data_base64` is not valid base64")]
    InvalidBase64,
    /// Both `data` and `data_base64` are present, which the JSON format forbids.
    #[error("both `data` and `data_base64` are present")]
    DataAndDataBase64,
    /// A CloudEvents format other than JSON (such as a batch), which the bus does not read.
    #[error("unsupported event format `{0}`")]
    UnsupportedFormat(String),
    /// The attributes break an envelope rule (empty required attribute, bad extension name).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}
