//! A shard as a Raft group of the engine: [`Shard`] wraps the shard
//! descriptor (`ShardDescriptor`: id, hash range, epoch, replicas) and tells
//! the engine what it needs to know of it: members, versions, the key ranges
//! its state occupies.

use prost::Message;
use ringkv_proto::meta::{Replica, ShardDescriptor};
use ringkv_raft::engine::Cf;
use ringkv_raft::{Group, Member, StateRange};

use crate::keys;

/// A shard descriptor as the engine's group descriptor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Shard(pub ShardDescriptor);

impl std::ops::Deref for Shard {
    type Target = ShardDescriptor;
    fn deref(&self) -> &ShardDescriptor {
        &self.0
    }
}

/// A shard replica as an engine member (the same three fields).
pub fn to_member(r: &Replica) -> Member {
    Member { replica_id: r.replica_id, node_id: r.node_id, role: r.role }
}

/// An engine member as a shard replica.
pub fn to_replica(m: &Member) -> Replica {
    Replica { replica_id: m.replica_id, node_id: m.node_id, role: m.role }
}

impl Group for Shard {
    fn id(&self) -> u64 {
        self.0.id
    }

    fn members(&self) -> Vec<Member> {
        self.0.replicas.iter().map(to_member).collect()
    }

    fn set_members(&mut self, members: Vec<Member>) {
        self.0.replicas = members.iter().map(to_replica).collect();
        self.0.epoch.get_or_insert_with(Default::default).conf_ver += 1;
    }

    fn conf_version(&self) -> u64 {
        self.0.epoch.as_ref().map_or(0, |e| e.conf_ver)
    }

    fn version(&self) -> u64 {
        self.0.epoch.as_ref().map_or(0, |e| e.version)
    }

    fn encode(&self) -> Vec<u8> {
        self.0.encode_to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let d = ShardDescriptor::decode(bytes).map_err(|e| format!("shard descriptor: {e}"))?;
        if d.id == 0 {
            return Err("shard descriptor without an id".into());
        }
        if d.end != 0 && d.end <= d.start {
            return Err(format!("shard {}: empty range [{}, {})", d.id, d.start, d.end));
        }
        Ok(Shard(d))
    }

    fn state_ranges(&self) -> Vec<StateRange> {
        let (lo, hi) = keys::data_range(self.0.start, self.0.end);
        let (dlo, dhi) = keys::meta_dedup_range(self.0.id);
        vec![StateRange { cf: Cf::Data, lo, hi }, StateRange { cf: Cf::Meta, lo: dlo, hi: dhi }]
    }

    fn overlaps(&self, other: &Self) -> bool {
        ringkv_common::hashing::ranges_overlap(self.0.start, self.0.end, other.0.start, other.0.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::meta::Epoch;

    fn shard(id: u64, start: u64, end: u64) -> Shard {
        Shard(ShardDescriptor { id, start, end, epoch: Some(Epoch { version: 1, conf_ver: 1 }), replicas: vec![] })
    }

    #[test]
    fn a_descriptor_without_an_id_or_with_an_empty_range_does_not_decode() {
        assert!(<Shard as Group>::decode(&[]).is_err(), "the default descriptor is the whole ring: refused");
        assert!(<Shard as Group>::decode(&shard(3, 10, 5).encode()).is_err());
        assert_eq!(<Shard as Group>::decode(&shard(3, 5, 10).encode()).unwrap(), shard(3, 5, 10));
        assert_eq!(<Shard as Group>::decode(&shard(3, 5, 0).encode()).unwrap(), shard(3, 5, 0));
    }

    #[test]
    fn ranges_overlap_only_when_they_share_a_hash() {
        assert!(!shard(1, 0, 10).overlaps(&shard(2, 10, 20)));
        assert!(shard(1, 0, 11).overlaps(&shard(2, 10, 20)));
        assert!(shard(1, 5, 0).overlaps(&shard(2, u64::MAX - 1, 0)));
        assert!(!shard(1, 0, 5).overlaps(&shard(2, 5, 0)));
    }

    #[test]
    fn membership_changes_bump_conf_ver_only() {
        let mut s = shard(1, 0, 0);
        s.set_members(vec![Member { replica_id: 7, node_id: 2, role: 0 }]);
        assert_eq!((s.version(), s.conf_version()), (1, 2));
        assert_eq!(s.replicas[0].replica_id, 7);
    }
}
