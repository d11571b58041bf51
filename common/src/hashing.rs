//! Where a key sits on the ring: `xxh3_64` of its hash part (the Redis
//! Cluster hash-tag convention). A shard owns the range `[start, end)` of
//! hashes, `end == 0` meaning 2^64.
//!
//! These are the pure functions routers and clients need. The storenode's
//! `keys` module (its RocksDB key layout) hashes keys the same way; the two
//! must never disagree, so it is meant to re-export these.

use xxhash_rust::xxh3::xxh3_64;

/// The part of a key that is hashed: the bytes inside the first `{…}` that has
/// at least one byte inside (the Redis Cluster hash-tag convention), otherwise
/// the whole key. Keys sharing a tag share a shard and sort next to each other.
pub fn hash_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The key's position on the ring.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(hash_part(key))
}

/// The ring position every key starting with `prefix` shares, when the
/// prefix already holds the key's complete hash tag (`…{tag}…`); `None` when
/// keys with this prefix can hash anywhere.
pub fn prefix_hash(prefix: &[u8]) -> Option<u64> {
    let open = prefix.iter().position(|&b| b == b'{')?;
    let len = prefix[open + 1..].iter().position(|&b| b == b'}')?;
    (len > 0).then(|| xxh3_64(&prefix[open + 1..open + 1 + len]))
}

/// The first key after every key that starts with `prefix` (None: no end).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Whether `h` falls in the shard range `[start, end)`, where `end == 0` means 2^64.
pub fn in_range(h: u64, start: u64, end: u64) -> bool {
    h >= start && (end == 0 || h < end)
}

/// Whether `h` may split the ring range `[start, end)`: strictly inside, so
/// both halves hold at least one hash.
pub fn splits(start: u64, end: u64, h: u64) -> bool {
    h > start && (end == 0 || h < end)
}

/// The end of a ring range as a number past every hash: an `end` of 0 is
/// the top of the ring, 2^64.
pub fn ring_end(end: u64) -> u128 {
    if end == 0 {
        1 << 64
    } else {
        end as u128
    }
}

/// Whether the ring ranges `[a_start, a_end)` and `[b_start, b_end)` share
/// a hash (an end of 0 is the top of the ring).
pub fn ranges_overlap(a_start: u64, a_end: u64, b_start: u64, b_end: u64) -> bool {
    (a_start as u128) < ring_end(b_end) && (b_start as u128) < ring_end(a_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_redis_cluster() {
        assert_eq!(hash_part(b"user:{42}:name"), b"42");
        assert_eq!(hash_part(b"{42}x"), b"42");
        assert_eq!(hash_part(b"a{}b{c}"), b"a{}b{c}", "empty tag means the whole key");
        assert_eq!(hash_part(b"no tag"), b"no tag");
        assert_eq!(hash_part(b"open{only"), b"open{only");
        assert_eq!(key_hash(b"user:{42}:name"), key_hash(b"order:{42}"));
    }

    #[test]
    fn the_hash_is_xxh3_of_the_hash_part() {
        // Stored data is laid out by this hash: it must never change.
        assert_eq!(key_hash(b"plain"), xxh3_64(b"plain"));
        assert_eq!(key_hash(b"user:{42}:name"), xxh3_64(b"42"));
    }

    #[test]
    fn prefixes_with_a_complete_tag_fix_the_hash() {
        assert_eq!(prefix_hash(b"user:{42}:"), Some(key_hash(b"user:{42}:name")));
        assert_eq!(prefix_hash(b"{42}"), Some(key_hash(b"{42}x")));
        assert_eq!(prefix_hash(b"user:{4"), None, "the tag is not complete yet");
        assert_eq!(prefix_hash(b"a{}"), None, "an empty tag hashes the whole key");
        assert_eq!(prefix_hash(b"plain"), None);
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn ranges() {
        assert!(in_range(5, 0, 0));
        assert!(in_range(u64::MAX, 10, 0));
        assert!(!in_range(9, 10, 0));
        assert!(in_range(10, 10, 20));
        assert!(!in_range(20, 10, 20));
    }
}
