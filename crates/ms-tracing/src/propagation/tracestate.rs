//! The `tracestate` header (W3C Trace Context Level 2, §3.3).

use opentelemetry::trace::TraceState;

/// The most list members a `tracestate` may hold (§3.3.1.1).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The combined length (without optional whitespace) a vendor should at least propagate
/// (§3.3.1.5); past it, members are removed as that section says.
pub const TRACESTATE_PROPAGATION_LIMIT: usize = 512;

/// Members longer than this are the first removed when the header is over
/// [`TRACESTATE_PROPAGATION_LIMIT`] (§3.3.1.5).
const LARGE_MEMBER: usize = 128;

/// Why a `tracestate` was discarded (the `traceparent` is still used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidTracestate {
    /// More than [`MAX_TRACESTATE_MEMBERS`] list members.
    #[error("tracestate has {count} list members; at most 32 are allowed")]
    TooManyMembers {
        /// How many there were.
        count: usize,
    },
    /// A list member is not `key=value`, or its key or value breaks the grammar of §3.3.1.3.
    #[error("tracestate list member {index} is malformed")]
    MalformedMember {
        /// Its position, counting non-empty members from 0.
        index: usize,
    },
    /// Valid by the recommendation, but opentelemetry 0.33's `TraceState` refuses it, so it
    /// cannot be carried in a span context: its key check still follows Level 1's
    /// `tenant@system` split (one `@`, at most 13 characters after it), where Level 2's grammar
    /// allows `@` anywhere after the first character (`foo@@bar`, `t@` + 15 characters). The
    /// propagator still forwards such a `tracestate` (kept beside the span context); only
    /// [`parse_tracestate`] reports it.
    #[error("tracestate is valid but cannot be represented by opentelemetry's TraceState")]
    NotRepresentable,
}

/// Parses the values of every `tracestate` header of a request, combined in order as one list
/// (§3.3.1.1: "values from multiple headers... SHOULD be combined"). Empty members and optional
/// whitespace around members are allowed and skipped. A key that appears again is dropped, the
/// first one kept (§3.5: "vendors MAY also discard duplicate keys"). Any malformed member or
/// more than 32 members discards the whole list.
pub fn parse_tracestate<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<TraceState, InvalidTracestate> {
    to_trace_state(parse_members(values)?)
}

/// The list members of the `tracestate` headers, checked against the grammar and the limits,
/// repeated keys dropped.
pub(crate) fn parse_members<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<(&'a str, &'a str)>, InvalidTracestate> {
    let mut members: Vec<(&str, &str)> = Vec::new();
    // The limit counts the list members the sender wrote, repeats included.
    let mut count = 0;
    for member in values.into_iter().flat_map(|value| value.split(',')) {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let (key, value) = member
            .split_once('=')
            .filter(|(key, value)| valid_key(key) && valid_value(value))
            .ok_or(InvalidTracestate::MalformedMember { index: count })?;
        count += 1;
        if !members.iter().any(|(seen, _)| *seen == key) {
            members.push((key, value));
        }
    }
    if count > MAX_TRACESTATE_MEMBERS {
        return Err(InvalidTracestate::TooManyMembers { count });
    }
    Ok(members)
}

/// `state` with `key=value` added or updated. Per §3.3.1.4 (mutation), the member moves to
/// the left of the list; when the list would grow past 32 members the right-most one is
/// removed.
pub fn tracestate_with(
    state: &TraceState,
    key: &str,
    value: &str,
) -> Result<TraceState, InvalidTracestate> {
    if !(valid_key(key) && valid_value(value)) {
        return Err(InvalidTracestate::MalformedMember { index: 0 });
    }
    let members: Vec<(&str, &str)> = std::iter::once((key, value))
        .chain(state.into_iter().filter(|(k, _)| *k != key))
        .take(MAX_TRACESTATE_MEMBERS)
        .collect();
    to_trace_state(members)
}

/// The header value to send for `state`, shortened per §3.3.1.5 when longer than
/// [`TRACESTATE_PROPAGATION_LIMIT`]: first members longer than 128 characters are removed,
/// right to left, then any member from the right, until it fits.
pub fn tracestate_header(state: &TraceState) -> String {
    shortened_header(state.into_iter().collect())
}

/// The header value for `members`, shortened as [`tracestate_header`] says.
pub(crate) fn shortened_header(mut members: Vec<(&str, &str)>) -> String {
    let member_len = |(k, v): &(&str, &str)| k.len() + 1 + v.len();
    let total = |members: &[(&str, &str)]| {
        members.iter().map(member_len).sum::<usize>() + members.len().saturating_sub(1)
    };
    while total(&members) > TRACESTATE_PROPAGATION_LIMIT {
        match members.iter().rposition(|m| member_len(m) > LARGE_MEMBER) {
            Some(large) => members.remove(large),
            None => members.remove(members.len() - 1),
        };
    }
    let mut header = String::with_capacity(total(&members));
    for (n, (key, value)) in members.iter().enumerate() {
        if n > 0 {
            header.push(',');
        }
        header.push_str(key);
        header.push('=');
        header.push_str(value);
    }
    header
}

fn to_trace_state(members: Vec<(&str, &str)>) -> Result<TraceState, InvalidTracestate> {
    // Every member passed the grammar above; opentelemetry's own check is laxer in most places
    // and stricter in one (see `NotRepresentable`).
    TraceState::from_key_value(members).map_err(|_| InvalidTracestate::NotRepresentable)
}

/// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`,
/// `keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"` (Level 2, §3.3.1.3.1): 1 to 256
/// characters; `@` may appear anywhere but first, any number of times (Level 1's
/// `tenant@system` split and its 241/14 limits are gone).
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    (1..=256).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..].iter().all(|&c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
        })
}

/// `value = 0*255(chr) nblk-chr`, `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`,
/// `chr = %x20 / nblk-chr` (§3.3.1.3.2): 1 to 256 printable ASCII characters without `,` and
/// `=`, not ending in a space.
fn valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    (1..=256).contains(&b.len())
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
        && b[b.len() - 1] != b' '
}
