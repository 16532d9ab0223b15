//! The CloudEvents 1.0 envelope that every message on the bus travels in.

use std::collections::BTreeMap;

use bytes::Bytes;
use ms_tracing::CorrelationId;

/// The CloudEvents version this envelope implements.
pub const SPEC_VERSION: &str = "1.0";

/// The extension attribute that carries the correlation ID.
const CORRELATION_ID_EXTENSION: &str = "correlationid";

/// Attribute names the spec defines itself, which an extension may not reuse.
const RESERVED_ATTRIBUTES: [&str; 9] = [
    "id",
    "source",
    "specversion",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
];

/// Why an envelope could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// A required attribute (`id`, `source`, `type`) is empty; the spec requires a non-empty
    /// string.
    #[error("required attribute `{0}` is empty")]
    EmptyAttribute(&'static str),
    /// An extension name breaks the spec's naming rule (lower-case ASCII letters and digits)
    /// or reuses a context attribute's name.
    #[error("`{name}` is not a valid extension attribute name: {reason}")]
    InvalidExtensionName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
}

/// A CloudEvents 1.0 event: context attributes, extensions and opaque data bytes.
///
/// Required attributes are always present and non-empty; `specversion` is always
/// [`SPEC_VERSION`]. Cloning is cheap for the data (a [`Bytes`]) and copies the attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    id: String,
    source: String,
    ty: String,
    subject: Option<String>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    data: Bytes,
    extensions: BTreeMap<String, String>,
}

impl Envelope {
    /// Starts an envelope of event type `ty` (such as `invoicing.invoice.created`) from
    /// `source` (a URI-reference naming the producer, such as `/invoicing`). The id defaults to
    /// a fresh UUID v7.
    pub fn builder(ty: impl Into<String>, source: impl Into<String>) -> EnvelopeBuilder {
        EnvelopeBuilder {
            envelope: Envelope {
                id: uuid::Uuid::now_v7().to_string(),
                source: source.into(),
                ty: ty.into(),
                subject: None,
                datacontenttype: None,
                dataschema: None,
                data: Bytes::new(),
                extensions: BTreeMap::new(),
            },
        }
    }

    /// The event id; with `source`, it identifies the event (and is the broker dedup key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The producer, as a URI-reference.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Always [`SPEC_VERSION`].
    pub fn specversion(&self) -> &'static str {
        SPEC_VERSION
    }

    /// The event type (`type` in the spec; a keyword in Rust).
    pub fn ty(&self) -> &str {
        &self.ty
    }

    /// The subject of the event within its source, if any.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The media type of [`data`](Self::data), if any.
    pub fn datacontenttype(&self) -> Option<&str> {
        self.datacontenttype.as_deref()
    }

    /// The schema the data adheres to, if any.
    pub fn dataschema(&self) -> Option<&str> {
        self.dataschema.as_deref()
    }

    /// The data, as bytes (empty when the event has none).
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// An extension attribute's value.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions.get(name).map(String::as_str)
    }

    /// All extension attributes, sorted by name.
    pub fn extensions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.extensions
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The `correlationid` extension, when present and valid. An invalid value (from a foreign
    /// producer) reads as absent, so that it is never propagated further.
    pub fn correlation_id(&self) -> Option<CorrelationId> {
        self.extension(CORRELATION_ID_EXTENSION)
            .and_then(|text| CorrelationId::parse(text).ok())
    }
}

/// Builds an [`Envelope`].
#[derive(Debug, Clone)]
#[must_use]
pub struct EnvelopeBuilder {
    envelope: Envelope,
}

impl EnvelopeBuilder {
    /// Sets the id (default: a fresh UUID v7).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.envelope.id = id.into();
        self
    }

    /// Sets the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.envelope.subject = Some(subject.into());
        self
    }

    /// Sets the data schema URI.
    pub fn dataschema(mut self, schema: impl Into<String>) -> Self {
        self.envelope.dataschema = Some(schema.into());
        self
    }

    /// Sets the data and its media type.
    pub fn data(mut self, content_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        self.envelope.datacontenttype = Some(content_type.into());
        self.envelope.data = data.into();
        self
    }

    /// Sets the `correlationid` extension.
    pub fn correlation_id(mut self, id: &CorrelationId) -> Self {
        self.envelope
            .extensions
            .insert(CORRELATION_ID_EXTENSION.to_owned(), id.as_str().to_owned());
        self
    }

    /// Sets an extension attribute. The name must be lower-case ASCII letters and digits (the
    /// spec's rule) and must not be a context attribute's name.
    pub fn extension(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, EnvelopeError> {
        let name = name.into();
        validate_extension_name(&name)?;
        self.envelope.extensions.insert(name, value.into());
        Ok(self)
    }

    /// Checks the required attributes and returns the envelope.
    pub fn build(self) -> Result<Envelope, EnvelopeError> {
        let e = self.envelope;
        for (name, value) in [("id", &e.id), ("source", &e.source), ("type", &e.ty)] {
            if value.is_empty() {
                return Err(EnvelopeError::EmptyAttribute(name));
            }
        }
        Ok(e)
    }
}

fn validate_extension_name(name: &str) -> Result<(), EnvelopeError> {
    let invalid = |reason| {
        Err(EnvelopeError::InvalidExtensionName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return invalid("only lower-case ASCII letters and digits are allowed");
    }
    if RESERVED_ATTRIBUTES.contains(&name) {
        return invalid("it is a context attribute of the spec");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_attributes_must_not_be_empty() {
        assert_eq!(
            Envelope::builder("", "/s").build(),
            Err(EnvelopeError::EmptyAttribute("type"))
        );
        assert_eq!(
            Envelope::builder("t", "").build(),
            Err(EnvelopeError::EmptyAttribute("source"))
        );
        assert_eq!(
            Envelope::builder("t", "/s").id("").build(),
            Err(EnvelopeError::EmptyAttribute("id"))
        );
    }

    #[test]
    fn extension_names_follow_the_spec() {
        for bad in ["", "Upper", "with-dash", "data", "type", "ünï"] {
            assert!(
                Envelope::builder("t", "/s").extension(bad, "v").is_err(),
                "{bad:?}"
            );
        }
        let e = Envelope::builder("t", "/s")
            .extension("tenantid", "acme")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(e.extensions().collect::<Vec<_>>(), [("tenantid", "acme")]);
    }

    #[test]
    fn ids_default_to_fresh_uuids_and_invalid_correlation_ids_read_as_absent() {
        let a = Envelope::builder("t", "/s").build().unwrap();
        let b = Envelope::builder("t", "/s").build().unwrap();
        assert_ne!(a.id(), b.id());
        let hostile = Envelope::builder("t", "/s")
            .extension("correlationid", "bad id\r\n")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(hostile.correlation_id(), None);
    }
}
