//! Which segment handles a partition key ([`Envelope::ordering_key`](ms_bus::Envelope::ordering_key)).

/// FNV-1a: stable across processes and releases (segments and lock slots depend on it), and
/// cheap for short keys.
pub(crate) fn key_hash(key: &str) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    key.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(PRIME)
    })
}

/// The segment of a key among `segments`.
pub(crate) fn segment_of(key: &str, segments: u16) -> u16 {
    u16::try_from(key_hash(key) % u32::from(segments.max(1))).unwrap_or(0)
}
