//! The engine's keys in the shared RocksDB.
//!
//! | CF     | key                                    | value                  |
//! |--------|----------------------------------------|------------------------|
//! | `raft` | `group_id (8 BE) ++ 0x01 ++ index (8 BE)` | a raft-rs `Entry`   |
//! | `raft` | `group_id (8 BE) ++ 0x02`              | a raft-rs `HardState`  |
//! | `meta` | `group_id (8 BE) ++ 0x01`              | `ReplicaState`         |
//! | `meta` | `group_id (8 BE) ++ 0x02`              | `ApplyState`           |
//! | `meta` | `group_id (8 BE) ++ 0xf0`              | `Tombstone`            |
//!
//! State machines may keep per-group records in the `meta` CF under the same
//! `group_id ++ kind` prefix with a kind in [`FIRST_STATE_MACHINE_KIND`,
//! `0xf0`): they are deleted with the replica (everything in
//! `[group_id, group_id + 1)` goes) and are theirs to snapshot through
//! [`crate::StateRange`]. Big-endian integers keep byte order equal to
//! numeric order, so a group's log is one contiguous, ordered range.

/// Name of the column family holding state machine data.
pub const CF_DATA: &str = "data";
/// Name of the column family holding Raft logs and hard states.
pub const CF_RAFT: &str = "raft";
/// Name of the column family holding replica, apply and state machine records.
pub const CF_META: &str = "meta";

const RAFT_LOG: u8 = 0x01;
const RAFT_HARD_STATE: u8 = 0x02;

const META_REPLICA_STATE: u8 = 0x01;
const META_APPLY_STATE: u8 = 0x02;
const META_TOMBSTONE: u8 = 0xf0;

/// The lowest `meta` kind byte a state machine may use for its own records.
pub const FIRST_STATE_MACHINE_KIND: u8 = 0x03;

/// `group_id ++ kind`: the prefix of every per-group key of a kind.
pub fn group_key(group_id: u64, kind: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&group_id.to_be_bytes());
    k.push(kind);
    k
}

/// The key of log entry `index` of a group.
pub fn raft_log_key(group_id: u64, index: u64) -> Vec<u8> {
    let mut k = group_key(group_id, RAFT_LOG);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The key of a group's Raft hard state.
pub fn raft_hard_state_key(group_id: u64) -> Vec<u8> {
    group_key(group_id, RAFT_HARD_STATE)
}

/// Every key of the group in the `raft` or `meta` CF: `[group_id, group_id + 1)`.
pub fn group_all_range(group_id: u64) -> (Vec<u8>, Vec<u8>) {
    (group_id.to_be_bytes().to_vec(), group_id.saturating_add(1).to_be_bytes().to_vec())
}

/// The log index inside a [`raft_log_key`].
pub fn raft_log_index(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(9..17)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The key of a replica's `ReplicaState`.
pub fn replica_state_key(group_id: u64) -> Vec<u8> {
    group_key(group_id, META_REPLICA_STATE)
}

/// The key of a replica's `ApplyState`.
pub fn apply_state_key(group_id: u64) -> Vec<u8> {
    group_key(group_id, META_APPLY_STATE)
}

/// The key of the tombstone a removed replica leaves.
pub fn tombstone_key(group_id: u64) -> Vec<u8> {
    group_key(group_id, META_TOMBSTONE)
}

/// The group id a `meta` or `raft` key belongs to.
pub fn group_of(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Whether a `meta` key is a replica state.
pub fn is_replica_state_key(key: &[u8]) -> bool {
    key.len() == 9 && key[8] == META_REPLICA_STATE
}

/// Whether a `meta` key is a tombstone.
pub fn is_tombstone_key(key: &[u8]) -> bool {
    key.len() == 9 && key[8] == META_TOMBSTONE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_keys_order_by_group_then_index() {
        assert!(raft_log_key(1, u64::MAX) < raft_log_key(2, 0));
        assert!(raft_log_key(1, 9) < raft_log_key(1, 10));
        assert_eq!(raft_log_index(&raft_log_key(7, 42)), Some(42));
        assert_eq!(group_of(&raft_log_key(7, 42)), Some(7));
        let (lo, hi) = group_all_range(7);
        for k in [raft_log_key(7, 0), raft_hard_state_key(7), tombstone_key(7), replica_state_key(7)] {
            assert!(lo <= k && k < hi);
        }
        assert!(is_tombstone_key(&tombstone_key(3)) && !is_replica_state_key(&tombstone_key(3)));
    }
}
