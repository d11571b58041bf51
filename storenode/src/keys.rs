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

use ringkv_raft::keys::{group_key as shard_prefix, FIRST_STATE_MACHINE_KIND};

const META_DEDUP: u8 = FIRST_STATE_MACHINE_KIND;
const META_DEDUP_BY_INDEX: u8 = FIRST_STATE_MACHINE_KIND + 1;

use ringkv_common::hashing::ranges_overlap;
/// The ring's hashing (shared with the router, so both always agree).
pub use ringkv_common::hashing::{hash_part, in_range, key_hash, prefix_end, prefix_hash};

/// The `data` CF key of a user key: its hash, then the key.
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

/// The `meta` CF key of a shard's de-dup record for `request_id`.
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

/// `[lo, hi)` of the shard's de-dup records (by request id).
pub fn meta_dedup_records_range(shard_id: u64) -> (Vec<u8>, Vec<u8>) {
    (shard_prefix(shard_id, META_DEDUP), shard_prefix(shard_id, META_DEDUP + 1))
}

/// The request id inside a [`meta_dedup_key`].
pub fn dedup_request_id(key: &[u8]) -> &[u8] {
    &key[9.min(key.len())..]
}

/// Whether the hashes `[lo, hi]` (inclusive) meet the ring range `[start, end)`.
pub fn ranges_meet(lo: u64, hi: u64, start: u64, end: u64) -> bool {
    // `hi + 1` as a ring end: u64::MAX wraps to 0, the top of the ring.
    ranges_overlap(lo, hi.wrapping_add(1), start, end)
}

/// `[lo, hi)` of all the shard's de-duplication state in the `meta` CF.
pub fn meta_dedup_range(shard_id: u64) -> (Vec<u8>, Vec<u8>) {
    (shard_prefix(shard_id, META_DEDUP), shard_prefix(shard_id, META_DEDUP_BY_INDEX + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

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
