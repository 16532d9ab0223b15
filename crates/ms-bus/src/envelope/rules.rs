//! The spec's rules for attribute values, checked whenever an envelope is built (by the
//! builder and by the codecs, which build through it).

use time::{OffsetDateTime, UtcOffset};

use super::EnvelopeError;

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

/// Checks a `String` attribute against the spec's type system: no control characters
/// (U+0000–U+001F, U+007F–U+009F) and no Unicode noncharacters. Surrogates cannot occur in a
/// Rust string. The rule matters beyond the letter of the spec: a line break cannot go into a
/// NATS or HTTP header, so an envelope that had one could be built but not published.
pub(super) fn check_string(attribute: &str, value: &str) -> Result<(), EnvelopeError> {
    // Printable ASCII, by far the common case, needs no look at characters.
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    match value
        .chars()
        .find(|&c| c.is_control() || is_noncharacter(c))
    {
        None => Ok(()),
        Some(character) => Err(EnvelopeError::InvalidCharacter {
            attribute: attribute.to_owned(),
            character,
        }),
    }
}

/// U+FDD0–U+FDEF, and the last two code points of every plane (U+FFFE, U+FFFF, U+1FFFE, …).
fn is_noncharacter(c: char) -> bool {
    let c = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&c) || c & 0xFFFE == 0xFFFE
}

/// `time` as the codecs can write it: RFC 3339 has no seconds in a UTC offset and no offsets
/// beyond ±23:59, so such a time is carried as the same instant in UTC; the offset itself is
/// not part of what the spec's `Timestamp` can express. A year outside 0000–9999 cannot be
/// written at all, whatever the offset: an error.
pub(super) fn representable_time(time: OffsetDateTime) -> Result<OffsetDateTime, EnvelopeError> {
    let time = if fits_rfc3339_offset(time.offset()) {
        time
    } else {
        time.checked_to_offset(UtcOffset::UTC)
            .ok_or(EnvelopeError::TimeOutOfRange(time))?
    };
    if (0..=9999).contains(&time.year()) {
        Ok(time)
    } else if time.offset() != UtcOffset::UTC
        && let Some(utc) = time.checked_to_offset(UtcOffset::UTC)
        && (0..=9999).contains(&utc.year())
    {
        // 9999-12-31T23:30Z at +01:00 is in the year 10000: in UTC it still fits.
        Ok(utc)
    } else {
        Err(EnvelopeError::TimeOutOfRange(time))
    }
}

fn fits_rfc3339_offset(offset: UtcOffset) -> bool {
    offset.seconds_past_minute() == 0 && offset.whole_hours().unsigned_abs() <= 23
}

/// The spec's naming rule for extensions: lower-case ASCII letters and digits, not a context
/// attribute's name.
pub(super) fn check_extension_name(name: &str) -> Result<(), EnvelopeError> {
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
    use time::format_description::well_known::Rfc3339;

    #[test]
    fn strings_refuse_control_characters_and_noncharacters_only() {
        for ok in [
            "",
            "plain",
            "tab-free ünïcode € 😀",
            "\u{A0}",
            "\u{FFFD}",
            "\u{10FFFD}",
        ] {
            assert_eq!(check_string("id", ok), Ok(()), "{ok:?}");
        }
        for (bad, character) in [
            ("a\nb", '\n'),
            ("\r", '\r'),
            ("nul\0", '\0'),
            ("tab\t", '\t'),
            ("del\u{7f}", '\u{7f}'),
            ("c1 \u{85}", '\u{85}'),
            ("\u{9f}", '\u{9f}'),
            ("\u{FDD0}", '\u{FDD0}'),
            ("\u{FFFE}", '\u{FFFE}'),
            ("\u{10FFFF}", '\u{10FFFF}'),
        ] {
            assert_eq!(
                check_string("subject", bad),
                Err(EnvelopeError::InvalidCharacter {
                    attribute: "subject".into(),
                    character
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn times_keep_their_offset_when_rfc3339_can_write_it_and_become_utc_otherwise() {
        let at = |year, hours, minutes, seconds| {
            let date = time::Date::from_calendar_date(year, time::Month::June, 1).unwrap();
            let offset = UtcOffset::from_hms(hours, minutes, seconds).unwrap();
            date.with_hms(10, 0, 0).unwrap().assume_offset(offset)
        };
        let minutes = at(2026, 5, 30, 0);
        assert_eq!(
            representable_time(minutes).unwrap().offset(),
            minutes.offset()
        );
        let seconds = at(2026, 5, 30, 15);
        let utc = representable_time(seconds).unwrap();
        assert_eq!(utc, seconds, "the same instant");
        assert_eq!(utc.format(&Rfc3339).unwrap(), "2026-06-01T04:29:45Z");
        let beyond_23_hours = at(2026, 25, 0, 0);
        assert_eq!(
            representable_time(beyond_23_hours).unwrap().offset(),
            UtcOffset::UTC
        );
        // 0000-06-01T10:00 at -23:00 is fine as it is; the year before only in UTC.
        let early = at(0, -23, 0, 0);
        assert_eq!(representable_time(early).unwrap().offset(), early.offset());
        let date = time::Date::from_calendar_date(-1, time::Month::December, 31).unwrap();
        let before_year_zero = date
            .with_hms(23, 0, 0)
            .unwrap()
            .assume_offset(UtcOffset::from_hms(-2, 0, 0).unwrap());
        let fixed = representable_time(before_year_zero).unwrap();
        assert_eq!((fixed.year(), fixed.offset()), (0, UtcOffset::UTC));
        for out in [at(-1, 0, 0, 0), at(-9999, 5, 30, 15)] {
            assert!(
                matches!(
                    representable_time(out),
                    Err(EnvelopeError::TimeOutOfRange(_))
                ),
                "{out}"
            );
        }
    }
}
