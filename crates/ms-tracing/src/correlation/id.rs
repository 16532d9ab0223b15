//! The correlation ID: one opaque, validated token that follows a piece of work across calls
//! and messages.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;

/// The longest correlation ID accepted from outside, in bytes.
///
/// Long enough for any UUID, ULID or `service:uuid` scheme; short enough that a hostile caller
/// cannot make every log line of the request carry kilobytes of junk.
pub const MAX_CORRELATION_ID_LEN: usize = 128;

/// A correlation ID: 1 to [`MAX_CORRELATION_ID_LEN`] bytes of ASCII letters, digits and
/// `-`, `_`, `.`, `:`.
///
/// The character set is deliberately narrow: an ID is echoed into response headers and written
/// into every log line of the request, so anything that could break a header (CR, LF),
/// a log format (quotes, spaces, control characters) or a terminal is refused at the boundary
/// rather than escaped everywhere it is used.
///
/// Cloning is cheap (the text is shared behind an [`Arc`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CorrelationId(Arc<str>);

/// Why a string is not a valid [`CorrelationId`].
///
/// The offending text is deliberately not included: it is untrusted input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidCorrelationId {
    /// The ID is empty.
    #[error("correlation ID is empty")]
    Empty,
    /// The ID is longer than [`MAX_CORRELATION_ID_LEN`] bytes.
    #[error("correlation ID is {len} bytes long; at most {MAX_CORRELATION_ID_LEN} are accepted")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The ID holds a byte outside `A-Z a-z 0-9 - _ . :`.
    #[error("correlation ID has a forbidden byte at offset {offset}")]
    ForbiddenByte {
        /// The offset of the first such byte.
        offset: usize,
    },
}

impl CorrelationId {
    /// Checks `text` against the rules above and wraps it.
    pub fn parse(text: &str) -> Result<Self, InvalidCorrelationId> {
        validate(text.as_bytes())?;
        Ok(Self(Arc::from(text)))
    }

    /// Checks raw header bytes (which need not be UTF-8) and wraps them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidCorrelationId> {
        validate(bytes)?;
        // Every accepted byte is ASCII, so this cannot fail; map it anyway rather than unwrap.
        std::str::from_utf8(bytes)
            .map(|text| Self(Arc::from(text)))
            .map_err(|e| InvalidCorrelationId::ForbiddenByte {
                offset: e.valid_up_to(),
            })
    }

    /// A fresh, time-ordered ID (a UUID v7 in its hyphenated form), so IDs sort by creation
    /// time in logs and indexes.
    pub fn generate() -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        Self(Arc::from(
            &*uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf),
        ))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The correlation ID of the work the calling task is doing, if any.
    ///
    /// [`CorrelationIdLayer`](super::CorrelationIdLayer) sets it for everything a request's
    /// handler does; [`CorrelationId::scope`] sets it by hand (a consumer, a background job).
    /// Outgoing calls ([`ClientTraceLayer`](crate::ClientTraceLayer)) and published messages
    /// ([`message::inject`](crate::message::inject)) read it from here, so no one has to pass
    /// it along by hand.
    ///
    /// It is a tokio task-local: a task started with `tokio::spawn` does not inherit it; wrap
    /// the spawned future in [`CorrelationId::scope`] to carry it over.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `future` with `self` as the [current](CorrelationId::current) correlation ID.
    pub fn scope<F: Future>(self, future: F) -> tokio::task::futures::TaskLocalFuture<Self, F> {
        CURRENT.scope(self, future)
    }

    /// Runs `f` with `self` as the [current](CorrelationId::current) correlation ID.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }
}

tokio::task_local! {
    static CURRENT: CorrelationId;
}

fn validate(bytes: &[u8]) -> Result<(), InvalidCorrelationId> {
    if bytes.is_empty() {
        return Err(InvalidCorrelationId::Empty);
    }
    if bytes.len() > MAX_CORRELATION_ID_LEN {
        return Err(InvalidCorrelationId::TooLong { len: bytes.len() });
    }
    match bytes
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')))
    {
        Some(offset) => Err(InvalidCorrelationId::ForbiddenByte { offset }),
        None => Ok(()),
    }
}

impl FromStr for CorrelationId {
    type Err = InvalidCorrelationId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for CorrelationId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CorrelationId").field(&&*self.0).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_ids_are_kept_verbatim() {
        for id in [
            "a",
            "0190f7c4-7f3a-7cc2-9d0e-3b1f3e0c2a11",
            "svc:order-42_retry.1",
            "ABC",
        ] {
            assert_eq!(CorrelationId::parse(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn hostile_ids_are_refused_with_the_reason() {
        assert_eq!(CorrelationId::parse(""), Err(InvalidCorrelationId::Empty));
        let long = "a".repeat(MAX_CORRELATION_ID_LEN + 1);
        assert_eq!(
            CorrelationId::parse(&long),
            Err(InvalidCorrelationId::TooLong { len: 129 })
        );
        assert!(CorrelationId::parse(&"a".repeat(MAX_CORRELATION_ID_LEN)).is_ok());
        for (id, offset) in [
            ("ab\r\nx-admin: 1", 2),
            ("with space", 4),
            ("quote\"", 5),
            ("é", 0),
            ("tab\t", 3),
            ("semi;colon", 4),
        ] {
            assert_eq!(
                CorrelationId::parse(id),
                Err(InvalidCorrelationId::ForbiddenByte { offset }),
                "{id:?}"
            );
        }
        assert_eq!(
            CorrelationId::from_bytes(b"ok\xff"),
            Err(InvalidCorrelationId::ForbiddenByte { offset: 2 })
        );
    }

    #[tokio::test]
    async fn scope_sets_the_current_id_and_nesting_restores_it() {
        assert_eq!(CorrelationId::current(), None);
        let outer = CorrelationId::parse("outer").unwrap();
        let inner = CorrelationId::parse("inner").unwrap();
        outer
            .clone()
            .scope(async {
                assert_eq!(CorrelationId::current().as_ref(), Some(&outer));
                inner
                    .clone()
                    .scope(async {
                        assert_eq!(CorrelationId::current().as_ref(), Some(&inner));
                    })
                    .await;
                assert_eq!(CorrelationId::current().as_ref(), Some(&outer));
                assert_eq!(
                    inner.clone().sync_scope(CorrelationId::current).as_ref(),
                    Some(&inner)
                );
            })
            .await;
        assert_eq!(CorrelationId::current(), None);
    }

    #[test]
    fn generated_ids_are_valid_unique_and_time_ordered() {
        let ids: Vec<_> = (0..100).map(|_| CorrelationId::generate()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{:?} !< {:?}", pair[0], pair[1]);
        }
        for id in &ids {
            assert_eq!(CorrelationId::parse(id.as_str()).as_ref(), Ok(id));
        }
    }
}
