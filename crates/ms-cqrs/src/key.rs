//! Which segment handles a partition key ([`Envelope::ordering_key`](ms_bus::Envelope::ordering_key)).

/// ms-bus's [`key_hash`](ms_bus::key_hash): stable across processes and releases (segments
/// and lock slots depend on it).
pub(crate) use ms_bus::key_hash;

/// The segment of a key among `segments`.
pub(crate) fn segment_of(key: &str, segments: u16) -> u16 {
    u16::try_from(key_hash(key) % u32::from(segments.max(1))).unwrap_or(0)
}
