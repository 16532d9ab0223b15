//! The identity of an event as one key: its `source` and its `id`, together.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use percent_encoding::utf8_percent_encode;
use sha2::{Digest as _, Sha256};

use crate::codec::ESCAPED;

/// The longest key [`dedup_key`] writes; a readable key that would be longer becomes a
/// digest. 128 bytes keep typical keys (a path-like source and a UUID, about 50 bytes)
/// readable in broker tools while bounding what brokers and tables hold per event.
pub const MAX_DEDUP_KEY_LEN: usize = 128;

/// What starts a digest key.
const DIGEST_PREFIX: &str = "sha256:";

/// The dedup key of the event `id` from `source`;
/// [`Envelope::dedup_key`](crate::Envelope::dedup_key) is this for an envelope.
///
/// CloudEvents identifies an event by both: "Producers MUST ensure that `source` + `id` is
/// unique for each distinct event", and consumers "MAY assume that Events with identical
/// `source` and `id` are duplicates". An id alone is unique only within its producer: two
/// producers (or a forwarder and the producer it forwards) may pick the same one, and
/// deduplicating by it would drop the second event as a copy of the first. So everything that
/// deduplicates uses this key: JetStream's `Nats-Msg-Id`, the AMQP `message-id`, ms-outbox's
/// inbox and ms-cqrs's projection runner.
///
/// The key is written for where it goes (a NATS or HTTP header, an AMQP short string, a
/// primary-key column):
///
/// - **Readable** while short: the source and the id, each percent-encoded as the HTTP binding
///   encodes header values (space, `"`, `%`, control characters and everything outside ASCII),
///   joined by one space. Neither part can contain a space once encoded, so the pair is
///   recovered unambiguously: `/invoicing 0192f0c4-…` and `/in voicing` + `…` never meet.
/// - **A digest** once the readable form would pass [`MAX_DEDUP_KEY_LEN`] bytes: `sha256:`
///   and the unpadded base64url SHA-256 of the source's length (8 bytes, big-endian), the
///   source and the id. 50 bytes, no space, so it cannot equal a readable key either.
///
/// Either way the key is printable ASCII (and spaces), at most [`MAX_DEDUP_KEY_LEN`] bytes,
/// and the same in every process and version: it is stored in databases and compared by
/// brokers across deployments.
///
/// ```
/// use ms_bus::{dedup_key, MAX_DEDUP_KEY_LEN};
///
/// assert_eq!(dedup_key("/invoicing", "inv-1001"), "/invoicing inv-1001");
/// // The same id from another producer is another event.
/// assert_ne!(dedup_key("/invoicing", "inv-1001"), dedup_key("/billing", "inv-1001"));
/// // Long identities are hashed, so the key stays bounded.
/// let long = dedup_key("/invoicing", &"x".repeat(500));
/// assert!(long.starts_with("sha256:") && long.len() <= MAX_DEDUP_KEY_LEN);
/// ```
pub fn dedup_key(source: &str, id: &str) -> String {
    let mut key = String::with_capacity(source.len() + id.len() + 1);
    key.extend(utf8_percent_encode(source, ESCAPED));
    key.push(' ');
    key.extend(utf8_percent_encode(id, ESCAPED));
    if key.len() <= MAX_DEDUP_KEY_LEN {
        return key;
    }
    // The length prefix keeps ("ab", "c") and ("a", "bc") apart.
    let source_len = u64::try_from(source.len()).unwrap_or(u64::MAX);
    let digest = Sha256::new()
        .chain_update(source_len.to_be_bytes())
        .chain_update(source)
        .chain_update(id)
        .finalize();
    key.clear();
    key.push_str(DIGEST_PREFIX);
    URL_SAFE_NO_PAD.encode_string(digest, &mut key);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_keys_are_readable_and_escaped() {
        assert_eq!(
            dedup_key("/a b", "id\"%ü"),
            "/a%20b id%22%25%C3%BC",
            "each part percent-encoded, one space between"
        );
        assert_eq!(dedup_key("/s", "a b"), "/s a%20b");
        assert_ne!(dedup_key("/s a", "b"), dedup_key("/s", "a b"));
    }

    #[test]
    fn long_keys_are_a_fixed_digest() {
        let key = dedup_key("/s", &"i".repeat(MAX_DEDUP_KEY_LEN));
        // SHA-256 of 0x0000000000000002, "/s" and 128 × "i", in base64url, as Python's hashlib
        // computes it: a reference value, so that a change of the key's form cannot pass
        // unnoticed.
        assert_eq!(key, "sha256:oPSG2Gh45fkP3unUq935YWgXVwN-65lXn8GZ4yWhlko");
        assert_eq!(key.len(), 50);
        // The boundary: exactly MAX_DEDUP_KEY_LEN stays readable, one more byte is hashed.
        let fits = "i".repeat(MAX_DEDUP_KEY_LEN - 3);
        assert_eq!(dedup_key("/s", &fits).len(), MAX_DEDUP_KEY_LEN);
        assert!(dedup_key("/s", &format!("{fits}i")).starts_with(DIGEST_PREFIX));
    }

    proptest! {
        #[test]
        fn keys_are_bounded_header_safe_and_tell_identities_apart(
            a in ("\\PC{0,80}", "\\PC{0,80}"),
            b in ("\\PC{0,80}", "\\PC{0,80}"),
        ) {
            let (key_a, key_b) = (dedup_key(&a.0, &a.1), dedup_key(&b.0, &b.1));
            for key in [&key_a, &key_b] {
                prop_assert!(key.len() <= MAX_DEDUP_KEY_LEN, "{}", key);
                prop_assert!(key.bytes().all(|b| (0x20..0x7f).contains(&b)), "{:?}", key);
            }
            prop_assert_eq!(a == b, key_a == key_b, "{:?} {:?}", a, b);
        }

        #[test]
        fn moving_characters_between_source_and_id_changes_the_key(
            text in "\\PC{2,200}",
            split in any::<proptest::sample::Index>(),
        ) {
            let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
            prop_assume!(boundaries.len() >= 2);
            let at = boundaries[split.index(boundaries.len())];
            let next = boundaries.iter().copied().find(|&i| i > at).unwrap_or(text.len());
            let (one, other) = (text.split_at(at), text.split_at(next));
            prop_assert_ne!(dedup_key(one.0, one.1), dedup_key(other.0, other.1));
        }
    }
}
