//! The stable hash of an ordering key: the one every crate of the family spreads keys with.

/// The 32-bit FNV-1a hash of a key (usually an [`Envelope::ordering_key`](crate::Envelope::ordering_key)).
///
/// ms-outbox stores it with each row (the row's shard, the key's advisory lock) and ms-cqrs
/// picks a key's segment and lock slot with it. It must never change between versions or
/// differ between processes, since writers, relays and runners of different builds share
/// the rows: that rules out `std`'s `DefaultHasher` and seeded hashers; FNV-1a is fixed by
/// its definition, and cheap for short keys.
///
/// ```
/// assert_eq!(ms_bus::key_hash("foobar"), 0xbf9c_f968);
/// ```
pub fn key_hash(key: &str) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    key.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::key_hash;

    #[test]
    fn the_hash_is_fnv1a_and_stable() {
        // Reference values of 32-bit FNV-1a.
        assert_eq!(key_hash(""), 0x811c_9dc5);
        assert_eq!(key_hash("a"), 0xe40c_292c);
        assert_eq!(key_hash("foobar"), 0xbf9c_f968);
    }
}
