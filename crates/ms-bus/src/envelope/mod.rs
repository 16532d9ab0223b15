//! The CloudEvents 1.0 envelope that every message on the bus travels in.
//!
//! ```
//! use ms_bus::Envelope;
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct InvoiceCreated { number: String, total_cents: u64 }
//!
//! let created = InvoiceCreated { number: "inv-1001".into(), total_cents: 4200 };
//! let event = Envelope::builder("invoicing.invoice.created", "/invoicing")
//!     .partition_key("inv-1001")
//!     .tenant_id("acme")
//!     .time(time::OffsetDateTime::UNIX_EPOCH)
//!     .json_data(&created)?
//!     .build()?;
//!
//! assert_eq!(event.datacontenttype(), Some("application/json"));
//! assert_eq!(event.json_data::<InvoiceCreated>()?, created);
//! assert_eq!(event.partition_key(), Some("inv-1001"));
//! assert_eq!(event.tenant_id(), Some("acme"));
//! assert_eq!(event.time_rfc3339().as_deref(), Some("1970-01-01T00:00:00Z"));
//! assert_eq!(event.dedup_key(), format!("/invoicing {}", event.id()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`Envelope`]'s docs say how an event is identified and what every envelope satisfies.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ms_tracing::CorrelationId;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

mod dedup_key;
#[cfg(test)]
pub(crate) mod hostile;
mod key_hash;
mod rules;

pub use dedup_key::{MAX_DEDUP_KEY_LEN, dedup_key};
pub use key_hash::key_hash;
use rules::{check_extension_name, check_string, representable_time};

/// The CloudEvents version this envelope implements.
pub const SPEC_VERSION: &str = "1.0";

/// The extension attribute that carries the correlation ID (ms-tracing's
/// [`CORRELATION_ID`](ms_tracing::message::CORRELATION_ID)).
pub const CORRELATION_ID_EXTENSION: &str = ms_tracing::message::CORRELATION_ID;
/// The W3C `traceparent`, as the CloudEvents distributed-tracing extension names it (the
/// header name is ms-tracing's, [`TRACEPARENT`](ms_tracing::propagation::TRACEPARENT)).
pub const TRACEPARENT_EXTENSION: &str = ms_tracing::propagation::TRACEPARENT;
/// The W3C `tracestate`, as the CloudEvents distributed-tracing extension names it (the
/// header name is ms-tracing's, [`TRACESTATE`](ms_tracing::propagation::TRACESTATE)).
pub const TRACESTATE_EXTENSION: &str = ms_tracing::propagation::TRACESTATE;
/// The partitioning extension: events with the same key keep their order (see
/// [`Envelope::ordering_key`]).
pub const PARTITION_KEY_EXTENSION: &str = "partitionkey";
/// The extension that numbers an event among its partition key's events (1, 2, 3, …):
/// ms-cqrs's write side stamps it, and bus-fed projections use it to apply each key's events
/// once and in order.
pub const SEQUENCE_EXTENSION: &str = "sequence";
/// The tenant the event belongs to.
pub const TENANT_ID_EXTENSION: &str = "tenantid";
/// The media type [`EnvelopeBuilder::json_data`] sets.
pub const JSON_CONTENT_TYPE: &str = "application/json";

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
    /// Serializing typed data to JSON failed (a `Serialize` impl returned an error, or a map
    /// has non-string keys).
    #[error("data could not be serialized as JSON: {0}")]
    Serialize(String),
    /// A string attribute or extension value holds a character CloudEvents strings may not
    /// contain: a control character (U+0000 to U+001F, U+007F to U+009F, line breaks and tabs
    /// among them) or a Unicode noncharacter. Remove or escape it; a decoded message with one
    /// is dead-lettered with this reason.
    #[error(
        "attribute `{attribute}` contains U+{:04X}, which a CloudEvents string may not contain \
         (control characters and noncharacters are disallowed)",
        u32::from(*character)
    )]
    InvalidCharacter {
        /// The attribute (or extension) name.
        attribute: String,
        /// The first disallowed character.
        character: char,
    },
    /// `time` lies outside the years 0000 to 9999, which RFC 3339 (and so every codec)
    /// cannot write, even in UTC.
    #[error("time {0} cannot be written as RFC 3339, which has the years 0000 to 9999 only")]
    TimeOutOfRange(OffsetDateTime),
}

/// Why typed data could not be read from an envelope.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The envelope's `datacontenttype` is not JSON (`application/json` or a `+json` type).
    #[error("data is `{0}`, not JSON")]
    NotJson(String),
    /// The bytes are not valid JSON for the requested type.
    #[error("data is not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A CloudEvents 1.0 event: context attributes, extensions and opaque data bytes.
///
/// Required attributes are always present and non-empty; `specversion` is always
/// [`SPEC_VERSION`]. Cloning is cheap: the attributes and data are shared (copied on write,
/// which only [`set_extension`](Self::set_extension) does), so fanning one event out to many
/// consumers costs a reference count each.
///
/// # Identity and deduplication
///
/// An event is identified by its `source` and its `id` together, as CloudEvents defines it:
/// the id is unique only within its source, and two events with the same id from different
/// sources are two events. [`Envelope::dedup_key`] is that pair as one bounded, header-safe
/// string (see [`dedup_key`](crate::dedup_key) for its form), and it is the only key anything
/// deduplicates by: JetStream's `Nats-Msg-Id` (a republished envelope is dropped within the
/// stream's duplicate window), the AMQP `message-id`, ms-outbox's `Inbox` and ms-cqrs's
/// projection runner (for events without a `sequence`). To republish an event so that it is
/// recognised as the same one, keep both its source and its id; to publish a new event, give
/// it a new id (the default, a UUID v7) or a source of its own.
///
/// # What every envelope satisfies
///
/// [`EnvelopeBuilder::build`], which the decoders go through as well, checks what the spec
/// asks of the attributes, so that every envelope can be written by every codec and adapter:
/// `id`, `source` and `type` are not empty; no string attribute or extension value holds a
/// control character (a line break cannot go into a header) or a Unicode noncharacter;
/// extension names are lower-case letters and digits; and `time` is written as RFC 3339,
/// which has no seconds in a UTC offset: such a time is kept as the same instant in UTC (a
/// year outside 0000 to 9999 is [`EnvelopeError::TimeOutOfRange`]). A received message that
/// breaks a rule is dead-lettered with the error as the reason, never handed to a handler.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    attributes: Arc<Attributes>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.attributes.fmt(f)
    }
}

/// What an envelope holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attributes {
    id: String,
    source: String,
    ty: String,
    subject: Option<String>,
    time: Option<OffsetDateTime>,
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
            envelope: Attributes {
                id: uuid::Uuid::now_v7().to_string(),
                source: source.into(),
                ty: ty.into(),
                subject: None,
                time: None,
                datacontenttype: None,
                dataschema: None,
                data: Bytes::new(),
                extensions: BTreeMap::new(),
            },
        }
    }

    /// The event id, unique within its [`source`](Self::source): the two together identify
    /// the event (see [`dedup_key`](Self::dedup_key)).
    pub fn id(&self) -> &str {
        &self.attributes.id
    }

    /// The event's identity, `source` + `id`, as one key of at most [`MAX_DEDUP_KEY_LEN`]
    /// printable ASCII bytes: what brokers, the inbox and the projection runner deduplicate
    /// by. See [Identity and deduplication](Envelope#identity-and-deduplication).
    pub fn dedup_key(&self) -> String {
        dedup_key(&self.attributes.source, &self.attributes.id)
    }

    /// The producer, as a URI-reference.
    pub fn source(&self) -> &str {
        &self.attributes.source
    }

    /// Always [`SPEC_VERSION`].
    pub fn specversion(&self) -> &'static str {
        SPEC_VERSION
    }

    /// The event type (`type` in the spec; a keyword in Rust).
    pub fn ty(&self) -> &str {
        &self.attributes.ty
    }

    /// The subject of the event within its source, if any.
    pub fn subject(&self) -> Option<&str> {
        self.attributes.subject.as_deref()
    }

    /// When the occurrence happened, if the producer said: in the offset it was given in,
    /// or in UTC when RFC 3339 cannot write that offset (see [`EnvelopeBuilder::time`]).
    pub fn time(&self) -> Option<OffsetDateTime> {
        self.attributes.time
    }

    /// [`time`](Self::time) as RFC 3339 text, as the codecs write it (UTC as `Z`). Present
    /// whenever `time` is: the builder only keeps times RFC 3339 can write.
    pub fn time_rfc3339(&self) -> Option<String> {
        self.attributes.time.and_then(|t| t.format(&Rfc3339).ok())
    }

    /// The media type of [`data`](Self::data), if any.
    pub fn datacontenttype(&self) -> Option<&str> {
        self.attributes.datacontenttype.as_deref()
    }

    /// The schema the data adheres to, if any.
    pub fn dataschema(&self) -> Option<&str> {
        self.attributes.dataschema.as_deref()
    }

    /// The data, as bytes (empty when the event has none).
    pub fn data(&self) -> &Bytes {
        &self.attributes.data
    }

    /// An extension attribute's value.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.attributes.extensions.get(name).map(String::as_str)
    }

    /// All extension attributes, sorted by name.
    pub fn extensions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attributes
            .extensions
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Reads the data as JSON into `T`. The content type must be JSON (`application/json`, a
    /// `+json` type, or absent, which the JSON event format reads as JSON).
    pub fn json_data<T: serde::de::DeserializeOwned>(&self) -> Result<T, DataError> {
        if let Some(ct) = self.datacontenttype()
            && !is_json_content_type(ct)
        {
            return Err(DataError::NotJson(ct.to_owned()));
        }
        Ok(serde_json::from_slice(&self.attributes.data)?)
    }

    /// The W3C `traceparent` extension, as received (ms-tracing validates it).
    pub fn traceparent(&self) -> Option<&str> {
        self.extension(TRACEPARENT_EXTENSION)
    }

    /// The W3C `tracestate` extension, as received.
    pub fn tracestate(&self) -> Option<&str> {
        self.extension(TRACESTATE_EXTENSION)
    }

    /// The `partitionkey` extension.
    pub fn partition_key(&self) -> Option<&str> {
        self.extension(PARTITION_KEY_EXTENSION)
    }

    /// The key this event is kept in order with: its `partitionkey`, else its subject (the
    /// aggregate it is about), else its id (nothing to order it with).
    ///
    /// The one ordering rule: the ms-outbox relay publishes each key's events in commit order
    /// (its NATS publisher confirms one event of a key before it sends the next), the
    /// consumer runtime's lanes handle each key's deliveries one at a time, in delivery
    /// order, with a failed one retried in its lane ahead of the key's later ones, and
    /// ms-cqrs's runner applies each key's events in order. End to end, one consumer per
    /// group sees a key's events in commit order, through broker crashes mid-batch and
    /// handler failures (ms-outbox's `tests/kill_order.rs` and `tests/subject_order.rs`). It
    /// does not hold across several consumers of one group, which the broker feeds without
    /// regard to keys, nor for a message the broker redelivers after a lost settlement (a
    /// crash, a broken connection), which comes when the broker decides: see the consumer
    /// runtime's [ordering](crate::consumer#ordering).
    ///
    /// ```
    /// use ms_bus::Envelope;
    /// let event = Envelope::builder("invoicing.invoice.paid", "/invoicing").subject("inv-7").build()?;
    /// assert_eq!(event.ordering_key(), "inv-7");
    /// let keyed = Envelope::builder("invoicing.invoice.paid", "/invoicing")
    ///     .subject("inv-7")
    ///     .partition_key("customer-3")
    ///     .build()?;
    /// assert_eq!(keyed.ordering_key(), "customer-3");
    /// let loose = Envelope::builder("invoicing.report.ready", "/invoicing").build()?;
    /// assert_eq!(loose.ordering_key(), loose.id());
    /// # Ok::<(), ms_bus::EnvelopeError>(())
    /// ```
    pub fn ordering_key(&self) -> &str {
        self.partition_key()
            .or_else(|| self.subject())
            .unwrap_or_else(|| self.id())
    }

    /// The `tenantid` extension.
    pub fn tenant_id(&self) -> Option<&str> {
        self.extension(TENANT_ID_EXTENSION)
    }

    /// Sets (or replaces) an extension on a built envelope, under the same rules as
    /// [`EnvelopeBuilder::extension`] and [`EnvelopeBuilder::build`]. Context propagation uses
    /// this on publish.
    pub fn set_extension(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), EnvelopeError> {
        let (name, value) = (name.into(), value.into());
        check_extension_name(&name)?;
        check_string(&name, &value)?;
        Arc::make_mut(&mut self.attributes)
            .extensions
            .insert(name, value);
        Ok(())
    }

    /// Builds an envelope from decoded parts; the codecs' single way in, so that their
    /// output obeys the same rules as the builder's.
    pub(crate) fn from_parts(parts: EnvelopeParts) -> Result<Self, EnvelopeError> {
        for name in parts.extensions.keys() {
            check_extension_name(name)?;
        }
        EnvelopeBuilder {
            envelope: Attributes {
                id: parts.id,
                source: parts.source,
                ty: parts.ty,
                subject: parts.subject,
                time: parts.time,
                datacontenttype: parts.datacontenttype,
                dataschema: parts.dataschema,
                data: parts.data,
                extensions: parts.extensions,
            },
        }
        .build()
    }

    /// The `correlationid` extension, when present and valid. An invalid value (from a foreign
    /// producer) reads as absent, so that it is never propagated further.
    pub fn correlation_id(&self) -> Option<CorrelationId> {
        self.extension(CORRELATION_ID_EXTENSION)
            .and_then(|text| CorrelationId::parse(text).ok())
    }
}

/// Every attribute of an envelope, as a decoder found them.
#[derive(Debug, Default)]
pub(crate) struct EnvelopeParts {
    pub(crate) id: String,
    pub(crate) source: String,
    pub(crate) ty: String,
    pub(crate) subject: Option<String>,
    pub(crate) time: Option<OffsetDateTime>,
    pub(crate) datacontenttype: Option<String>,
    pub(crate) dataschema: Option<String>,
    pub(crate) data: Bytes,
    pub(crate) extensions: BTreeMap<String, String>,
}

/// Whether a media type is JSON: `application/json` or any `+json` structured suffix,
/// ignoring parameters such as `charset`.
pub(crate) fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// Builds an [`Envelope`].
#[derive(Debug, Clone)]
#[must_use]
pub struct EnvelopeBuilder {
    envelope: Attributes,
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

    /// Sets when the occurrence happened. RFC 3339, the only form the spec gives `time`, has
    /// no seconds in a UTC offset (historical zones have them: +00:19:32 was Amsterdam's)
    /// and no offsets beyond ±23:59: [`build`](Self::build) keeps such a time as the same
    /// instant in UTC rather than lose it. A year outside 0000 to 9999 is an error.
    pub fn time(mut self, time: OffsetDateTime) -> Self {
        self.envelope.time = Some(time);
        self
    }

    /// Sets the data schema URI.
    pub fn dataschema(mut self, schema: impl Into<String>) -> Self {
        self.envelope.dataschema = Some(schema.into());
        self
    }

    /// Sets the data and its media type. Data is carried as it is: byte for byte in binary
    /// mode, and in structured mode, for a JSON media type, as the JSON text it is (numbers
    /// keep every digit).
    pub fn data(mut self, content_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        self.envelope.datacontenttype = Some(content_type.into());
        self.envelope.data = data.into();
        self
    }

    /// Serializes `data` as JSON and sets `datacontenttype` to [`JSON_CONTENT_TYPE`].
    pub fn json_data<T: serde::Serialize + ?Sized>(self, data: &T) -> Result<Self, EnvelopeError> {
        let bytes =
            serde_json::to_vec(data).map_err(|e| EnvelopeError::Serialize(e.to_string()))?;
        Ok(self.data(JSON_CONTENT_TYPE, bytes))
    }

    /// Sets the `partitionkey` extension.
    pub fn partition_key(self, key: impl Into<String>) -> Self {
        self.known_extension(PARTITION_KEY_EXTENSION, key.into())
    }

    /// Sets the `tenantid` extension.
    pub fn tenant_id(self, tenant: impl Into<String>) -> Self {
        self.known_extension(TENANT_ID_EXTENSION, tenant.into())
    }

    /// Sets the `traceparent` extension (normally done by the publisher's propagation hook).
    pub fn traceparent(self, traceparent: impl Into<String>) -> Self {
        self.known_extension(TRACEPARENT_EXTENSION, traceparent.into())
    }

    /// Sets the `tracestate` extension (normally done by the publisher's propagation hook).
    pub fn tracestate(self, tracestate: impl Into<String>) -> Self {
        self.known_extension(TRACESTATE_EXTENSION, tracestate.into())
    }

    fn known_extension(mut self, name: &'static str, value: String) -> Self {
        self.envelope.extensions.insert(name.to_owned(), value);
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
    /// spec's rule) and must not be a context attribute's name; the value is checked by
    /// [`build`](Self::build).
    pub fn extension(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, EnvelopeError> {
        let name = name.into();
        check_extension_name(&name)?;
        self.envelope.extensions.insert(name, value.into());
        Ok(self)
    }

    /// Checks the attributes (see [What every envelope satisfies](Envelope#what-every-envelope-satisfies))
    /// and returns the envelope.
    pub fn build(self) -> Result<Envelope, EnvelopeError> {
        let mut e = self.envelope;
        for (name, value) in [("id", &e.id), ("source", &e.source), ("type", &e.ty)] {
            if value.is_empty() {
                return Err(EnvelopeError::EmptyAttribute(name));
            }
            check_string(name, value)?;
        }
        for (name, value) in [
            ("subject", &e.subject),
            ("datacontenttype", &e.datacontenttype),
            ("dataschema", &e.dataschema),
        ] {
            if let Some(value) = value {
                check_string(name, value)?;
            }
        }
        for (name, value) in &e.extensions {
            check_string(name, value)?;
        }
        if let Some(time) = e.time {
            e.time = Some(representable_time(time)?);
        }
        Ok(Envelope {
            attributes: Arc::new(e),
        })
    }
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
            .extension("correlationid", "bad id; with spaces")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(hostile.correlation_id(), None);
    }

    #[test]
    fn line_breaks_are_refused_in_every_string_attribute() {
        let bad = "a\r\nb";
        let error = |attribute: &str| EnvelopeError::InvalidCharacter {
            attribute: attribute.to_owned(),
            character: '\r',
        };
        let builder = || Envelope::builder("t", "/s");
        for (attribute, built) in [
            ("id", builder().id(bad).build()),
            ("source", Envelope::builder("t", bad).build()),
            ("type", Envelope::builder(bad, "/s").build()),
            ("subject", builder().subject(bad).build()),
            ("dataschema", builder().dataschema(bad).build()),
            ("datacontenttype", builder().data(bad, "x").build()),
            ("partitionkey", builder().partition_key(bad).build()),
            ("x", builder().extension("x", bad).unwrap().build()),
        ] {
            assert_eq!(built, Err(error(attribute)), "{attribute}");
        }
        let mut built = builder().build().unwrap();
        assert_eq!(built.set_extension("x", bad), Err(error("x")));
        assert_eq!(built.extension("x"), None);
    }

    #[test]
    fn a_time_rfc3339_cannot_write_is_kept_in_utc_never_dropped() {
        let offset = time::UtcOffset::from_hms(5, 30, 15).unwrap();
        let time = OffsetDateTime::UNIX_EPOCH.to_offset(offset);
        let event = Envelope::builder("t", "/s").time(time).build().unwrap();
        assert_eq!(event.time(), Some(time));
        assert_eq!(
            event.time_rfc3339().as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
        let ancient = time::Date::from_calendar_date(-44, time::Month::March, 15)
            .unwrap()
            .midnight()
            .assume_utc();
        assert_eq!(
            Envelope::builder("t", "/s").time(ancient).build(),
            Err(EnvelopeError::TimeOutOfRange(ancient))
        );
    }
}
