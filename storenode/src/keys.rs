//! Key layout of the one RocksDB a storenode shares among all its replicas.
//!
//! | CF     | key                                   | value                          |
//! |--------|---------------------------------------|--------------------------------|
//! | `data` | `h (8 BE) ++ user_key`                | value header ++ value          |
//! | `meta` | `shard_id (8 BE) ++ 0x03 ++ request_id` | de-dup record                |
//! | `meta` | `shard_id (8 BE) ++ 0x04 ++ index (8 BE) ++ request_id` | (empty): de-dup records by index |
//!
//! The engine's own keys (Raft log, hard state, replica and apply state,
//! tombstones) are laid out by [`ringkv_raft::keys`].
//!
//! `h = xxh3_64(hash_part(user_key))`, so a shard, which owns a contiguous range
//! of `h`, owns one contiguous range of the `data` CF: a snapshot is a range
//! scan and dropping a replica is one `DeleteRange`. Big-endian integers keep
//! byte order equal to numeric order.

use xxhash_rust::xxh3::xxh3_64;

use ringkv_raft::keys::{group_key as shard_prefix, FIRST_STATE_MACHINE_KIND};

const META_DEDUP: u8 = FIRST_STATE_MACHINE_KIND;
const META_DEDUP_BY_INDEX: u8 = FIRST_STATE_MACHINE_KIND + 1;

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

pub fn data_key(user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + user_key.len());
    k.extend_from_slice(&key_hash(user_key).to_be_bytes());
    k.extend_from_slice(user_key);
    k
}

/// The user key inside a `data` CF key.
pub fn user_key(data_key: &[u8]) -> &[u8] {
    &data_key[8.min(data_key.len())..]
}

/// Keys are never longer than this, whatever the configured limit, so that the
/// top shard's `data` range has a concrete exclusive end (see [`data_range`]).
pub const MAX_KEY_LEN_HARD: usize = 64 * 1024;

/// `[lo, hi)` bounds of the `data` CF covering the ring range `[start, end)`.
/// For the top of the ring (`end == 0`) `hi` is `0xff` repeated one byte past
/// the longest possible data key, which sorts after every such key.
pub fn data_range(start: u64, end: u64) -> (Vec<u8>, Vec<u8>) {
    let lo = start.to_be_bytes().to_vec();
    let hi = if end == 0 { vec![0xff; 8 + MAX_KEY_LEN_HARD + 1] } else { end.to_be_bytes().to_vec() };
    (lo, hi)
}

pub fn meta_dedup_key(shard_id: u64, request_id: &[u8]) -> Vec<u8> {
    let mut k = shard_prefix(shard_id, META_DEDUP);
    k.extend_from_slice(request_id);
    k
}

/// The second index of de-dup records, by the Raft index that wrote them, so
/// that expiring old records is a range scan.
pub fn meta_dedup_by_index_key(shard_id: u64, index: u64, request_id: &[u8]) -> Vec<u8> {
    let mut k = shard_prefix(shard_id, META_DEDUP_BY_INDEX);
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(request_id);
    k
}

/// The request id inside a [`meta_dedup_by_index_key`].
pub fn dedup_by_index_request_id(key: &[u8]) -> &[u8] {
    &key[17.min(key.len())..]
}

/// `[lo, hi)` of the shard's de-dup records written below `index`.
pub fn meta_dedup_by_index_range(shard_id: u64, below: u64) -> (Vec<u8>, Vec<u8>) {
    let mut hi = shard_prefix(shard_id, META_DEDUP_BY_INDEX);
    hi.extend_from_slice(&below.to_be_bytes());
    (shard_prefix(shard_id, META_DEDUP_BY_INDEX), hi)
}

/// `[lo, hi)` of all the shard's de-duplication state in the `meta` CF.
pub fn meta_dedup_range(shard_id: u64) -> (Vec<u8>, Vec<u8>) {
    (shard_prefix(shard_id, META_DEDUP), shard_prefix(shard_id, META_DEDUP_BY_INDEX + 1))
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
    fn prefixes_with_a_complete_tag_fix_the_hash() {
        assert_eq!(prefix_hash(b"user:{42}:"), Some(key_hash(b"user:{42}:name")));
        assert_eq!(prefix_hash(b"{42}"), Some(key_hash(b"{42}x")));
        assert_eq!(prefix_hash(b"user:{4"), None, "the tag is not complete yet");
        assert_eq!(prefix_hash(b"a{}"), None, "an empty tag hashes the whole key");
        assert_eq!(prefix_hash(b"plain"), None);
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn data_keys_sort_by_hash_then_key() {
        let a = data_key(b"{t}a");
        let b = data_key(b"{t}b");
        assert!(a < b);
        assert_eq!(&a[..8], &b[..8]);
        assert_eq!(user_key(&a), b"{t}a");
    }

    #[test]
    fn ranges() {
        assert!(in_range(5, 0, 0));
        assert!(in_range(u64::MAX, 10, 0));
        assert!(!in_range(9, 10, 0));
        assert!(!in_range(20, 10, 20));
        let top = data_key(&vec![0xff; MAX_KEY_LEN_HARD]);
        let (lo, hi) = data_range(u64::MAX - 1, 0);
        assert!(lo.as_slice() < top.as_slice() || key_hash(&top[8..]) < u64::MAX - 1);
        assert!(top < hi);
        let (lo, hi) = data_range(10, 20);
        assert_eq!((lo, hi), (10u64.to_be_bytes().to_vec(), 20u64.to_be_bytes().to_vec()));
    }
}
