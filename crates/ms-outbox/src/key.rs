//! Partition keys: which events must stay in order, and the shard each belongs to.

/// The hash of a partition key, stored with each row (as its shard) and used as the key's
/// advisory-lock id on PostgreSQL: ms-bus's [`key_hash`](ms_bus::key_hash), stable across
/// versions and processes.
pub(crate) use ms_bus::key_hash;

/// The shard of a key: its hash reduced to `0..shards`.
pub(crate) fn shard_of(hash: u32, shards: u16) -> i16 {
    // `shards` is at most `MAX_SHARDS` (≤ i16::MAX), so the remainder fits.
    i16::try_from(hash % u32::from(shards.max(1))).unwrap_or(0)
}

/// The key as the 4-byte signed integer PostgreSQL's two-argument advisory locks take.
pub(crate) fn lock_id(hash: u32) -> i32 {
    hash.cast_signed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_and_stable() {
        // Reference values of 32-bit FNV-1a.
        assert_eq!(key_hash(""), 0x811c_9dc5);
        assert_eq!(key_hash("a"), 0xe40c_292c);
        assert_eq!(key_hash("foobar"), 0xbf9c_f968);
    }

    #[test]
    fn shards_stay_in_range() {
        for key in ["", "a", "invoice-42", "ünïcode"] {
            let shard = shard_of(key_hash(key), 32);
            assert!((0..32).contains(&shard));
        }
        assert_eq!(shard_of(12345, 1), 0);
        assert_eq!(shard_of(12345, 0), 0);
    }
}
