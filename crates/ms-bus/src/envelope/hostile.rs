//! Hostile attribute values for the adapters' property tests: every adapter must refuse them
//! with a typed error at build time or carry them intact, and never panic.

use proptest::prelude::*;

use super::{Envelope, EnvelopeError};

/// The attributes [`envelope`] can put hostile text into.
pub(crate) const ATTRIBUTES: usize = 6;

/// Text with line breaks and other control characters, the C1 range, Unicode line
/// separators and noncharacters, what percent-encoding escapes, and multi-byte characters,
/// among ordinary printable ASCII.
pub(crate) fn text() -> impl Strategy<Value = String> {
    let hostile = prop_oneof![
        Just('\r'),
        Just('\n'),
        Just('\t'),
        Just('\0'),
        Just('\u{7f}'),
        Just('\u{85}'),
        Just('\u{9f}'),
        Just('\u{2028}'),
        Just('\u{FFFE}'),
        Just('\u{FDD0}'),
        Just('%'),
        Just('€'),
        Just('😀'),
    ];
    let ordinary = proptest::char::range(' ', '~');
    proptest::collection::vec(prop_oneof![4 => ordinary, 1 => hostile], 0..16)
        .prop_map(|chars| chars.into_iter().collect())
}

/// An ordinary envelope whose attribute number `which` (id, source, subject,
/// datacontenttype, dataschema or an extension) is `text`: built, or the builder's error.
pub(crate) fn envelope(which: usize, text: String) -> Result<Envelope, EnvelopeError> {
    let mut builder = Envelope::builder("t.happened", "/source")
        .subject("s")
        .data("application/json", &br#"{"a":1}"#[..]);
    builder = match which % ATTRIBUTES {
        0 => builder.id(text),
        1 => Envelope::builder("t.happened", text).data("text/plain", "x"),
        2 => builder.subject(text),
        3 => builder.data(text, &b"x"[..]),
        4 => builder.dataschema(text),
        _ => builder.extension("x", text)?,
    };
    builder.build()
}

/// `built` is an envelope, or a refusal the builder is allowed to give hostile text.
pub(crate) fn accepted(built: Result<Envelope, EnvelopeError>) -> Option<Envelope> {
    match built {
        Ok(envelope) => Some(envelope),
        Err(EnvelopeError::EmptyAttribute(_) | EnvelopeError::InvalidCharacter { .. }) => None,
        Err(other) => panic!("an unexpected refusal: {other}"),
    }
}
