//! The placement group as an engine group: an id and its members (one voter
//! per placement member). It owns the whole `data` CF of the member's own
//! RocksDB (a placement process hosts nothing else).
//!
//! Encoded with the field numbers of the shard descriptor it replaced
//! (id = 1, epoch = 4, members = 5), so existing data directories decode.

use prost::Message;
use ringkv_proto::meta::Epoch;
use ringkv_raft::engine::Cf;
use ringkv_raft::{Group, Member, MemberRole, StateRange};

/// The placement group's id in its members' RocksDB.
pub const GROUP_ID: u64 = 1;

/// The placement group's descriptor.
#[derive(Clone, PartialEq, Message)]
pub struct PlacementGroup {
    /// Always [`GROUP_ID`].
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Membership version (`conf_ver`); `version` is unused.
    #[prost(message, optional, tag = "4")]
    pub epoch: Option<Epoch>,
    /// The members.
    #[prost(message, repeated, tag = "5")]
    pub members: Vec<Member>,
}

impl PlacementGroup {
    /// The group of a first start: one voter per member, replica id = member id.
    pub fn initial(member_ids: impl IntoIterator<Item = u64>) -> Self {
        PlacementGroup {
            id: GROUP_ID,
            epoch: Some(Epoch { version: 1, conf_ver: 1 }),
            members: member_ids
                .into_iter()
                .map(|id| Member { replica_id: id, node_id: id, role: MemberRole::Voter as i32 })
                .collect(),
        }
    }
}

impl Group for PlacementGroup {
    fn id(&self) -> u64 {
        self.id
    }

    fn members(&self) -> Vec<Member> {
        self.members.clone()
    }

    fn set_members(&mut self, members: Vec<Member>) {
        self.members = members;
        self.epoch.get_or_insert_with(Default::default).conf_ver += 1;
    }

    fn conf_version(&self) -> u64 {
        self.epoch.as_ref().map_or(0, |e| e.conf_ver)
    }

    fn version(&self) -> u64 {
        self.epoch.as_ref().map_or(0, |e| e.version)
    }

    fn encode(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let g = <PlacementGroup as Message>::decode(bytes).map_err(|e| format!("placement group: {e}"))?;
        if g.id != GROUP_ID {
            return Err(format!("placement group with id {}", g.id));
        }
        Ok(g)
    }

    fn state_ranges(&self) -> Vec<StateRange> {
        vec![StateRange { cf: Cf::Data, lo: Vec::new(), hi: vec![0xff; 9] }]
    }

    fn overlaps(&self, _other: &Self) -> bool {
        true // one group per placement member
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::meta::{Replica, ShardDescriptor};

    #[test]
    fn a_group_written_as_a_shard_descriptor_by_older_versions_still_decodes() {
        let old = ShardDescriptor {
            id: GROUP_ID,
            start: 0,
            end: 0,
            epoch: Some(Epoch { version: 1, conf_ver: 3 }),
            replicas: vec![Replica { replica_id: 2, node_id: 2, role: 0 }],
        };
        let g = <PlacementGroup as Group>::decode(&old.encode_to_vec()).unwrap();
        assert_eq!(g.conf_version(), 3);
        assert_eq!(g.members[0].replica_id, 2);
        assert!(<PlacementGroup as Group>::decode(&[]).is_err(), "a group without the placement id is refused");
    }
}
