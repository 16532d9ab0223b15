//! The `traceparent` header (W3C Trace Context Level 2, §3.2).

use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

/// The flags this implementation knows: `sampled` (Level 1) and `random` (Level 2). Other bits
/// are cleared, as §3.2.2.5 asks ("vendors MUST set those unknown flags to 0").
pub(crate) const KNOWN_FLAGS: u8 = 0x01 | 0x02;

/// The `random` flag of Level 2: the trace ID's right-most 7 bytes are random.
pub const RANDOM_FLAG: TraceFlags = TraceFlags::new(0x02);

/// The length of a version `00` header, and the least a future version may have.
const V00_LEN: usize = 55;

/// A parsed, valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    /// The trace ID (never all zeros).
    pub trace_id: TraceId,
    /// The caller's span ID (never all zeros).
    pub parent_id: SpanId,
    /// The flags, with unknown bits cleared.
    pub flags: TraceFlags,
}

/// Why a `traceparent` value was refused; the request then starts a new trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidTraceparent {
    /// Shorter than the 55 characters every version has at least.
    #[error("traceparent is {len} characters long; at least 55 are needed")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Version `00` is exactly 55 characters long.
    #[error("traceparent version 00 is {len} characters long, not 55")]
    WrongLengthForVersion00 {
        /// Its length.
        len: usize,
    },
    /// A field is not lowercase hex of the right length (uppercase hex is refused too).
    #[error("traceparent field `{field}` is not lowercase hex of the right length")]
    BadField {
        /// `version`, `trace-id`, `parent-id` or `trace-flags`.
        field: &'static str,
    },
    /// A dash is missing where the format puts one.
    #[error("traceparent has no dash at offset {offset}")]
    MissingDash {
        /// Where it was expected.
        offset: usize,
    },
    /// Version `ff` is forbidden.
    #[error("traceparent version ff is forbidden")]
    ForbiddenVersion,
    /// The trace ID is all zeros.
    #[error("traceparent trace-id is all zeros")]
    ZeroTraceId,
    /// The parent ID is all zeros.
    #[error("traceparent parent-id is all zeros")]
    ZeroParentId,
}

impl Traceparent {
    /// Parses one header value by the rules of §3.2 and §4.3 (versioning):
    ///
    /// - optional whitespace around the value (`OWS`, as in any HTTP field) is ignored;
    /// - every field is lowercase hex of its exact length, the separators are dashes;
    /// - version `ff` is refused, all-zero trace and parent IDs are refused;
    /// - version `00` is exactly 55 characters;
    /// - a higher (future) version is read as version `00` on its first 55 characters, which
    ///   must be followed by the end of the value or a dash; what follows is not interpreted.
    pub fn parse(value: &str) -> Result<Self, InvalidTraceparent> {
        let bytes = value.trim_matches([' ', '\t']).as_bytes();
        if bytes.len() < V00_LEN {
            return Err(InvalidTraceparent::TooShort { len: bytes.len() });
        }
        let version = hex_field(&bytes[0..2], "version")?;
        if version == 0xff {
            return Err(InvalidTraceparent::ForbiddenVersion);
        }
        for offset in [2, 35, 52] {
            if bytes[offset] != b'-' {
                return Err(InvalidTraceparent::MissingDash { offset });
            }
        }
        let trace_id = hex_field(&bytes[3..35], "trace-id")?;
        let parent_id = hex_field(&bytes[36..52], "parent-id")?;
        let flags = hex_field(&bytes[53..55], "trace-flags")?;
        if version == 0 && bytes.len() != V00_LEN {
            return Err(InvalidTraceparent::WrongLengthForVersion00 { len: bytes.len() });
        }
        if version > 0 && bytes.len() > V00_LEN && bytes[V00_LEN] != b'-' {
            return Err(InvalidTraceparent::MissingDash { offset: V00_LEN });
        }
        if trace_id == 0 {
            return Err(InvalidTraceparent::ZeroTraceId);
        }
        if parent_id == 0 {
            return Err(InvalidTraceparent::ZeroParentId);
        }
        // The `as` casts are exact: the fields were 16, 2 hex digits long.
        #[allow(clippy::cast_possible_truncation)]
        Ok(Self {
            trace_id: TraceId::from(trace_id),
            parent_id: SpanId::from(parent_id as u64),
            flags: TraceFlags::new(flags as u8 & KNOWN_FLAGS),
        })
    }

    /// The header value, always in version `00` (the version this implementation writes).
    pub fn to_header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.parent_id,
            self.flags.to_u8() & KNOWN_FLAGS
        )
    }
}

/// Lowercase hex of exactly `field.len()` digits, at most 32.
fn hex_field(field: &[u8], name: &'static str) -> Result<u128, InvalidTraceparent> {
    field.iter().try_fold(0u128, |acc, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return Err(InvalidTraceparent::BadField { field: name }),
        };
        Ok(acc << 4 | u128::from(digit))
    })
}
