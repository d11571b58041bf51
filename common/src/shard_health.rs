//! What is wrong with a shard, from placement's map and the nodes it sees
//! down, in classes counted the way PD's `pd_regions_status` counts
//! regions: one shard may be in several (a shard with a replica on a down
//! node is usually under-replicated too). Placement's
//! `ringkv_placement_shards{status}` metric and its cluster status count
//! these; the CLI and the console show the worst of them
//! ([`crate::cluster_view::shard_health`]).

use ringkv_proto::meta::ReplicaRole;
use ringkv_proto::placement::ShardInfo;

/// The classes a shard can be counted in (see [`HealthCounts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardProblems {
    /// No live leader known: none reported, or the one reported is on a
    /// down node.
    pub leaderless: bool,
    /// Fewer voters on live nodes than the replication factor, or its
    /// leader reports a voter down or far behind.
    pub under_replicated: bool,
    /// A replica on a down node.
    pub down_replica: bool,
    /// Its leader reports a follower far behind or not answering.
    pub pending_replica: bool,
    /// More voters than the replication factor (a move mid-way, or one
    /// that failed to remove its old replica).
    pub extra_replica: bool,
    /// A learner among its replicas (a move mid-way).
    pub learner: bool,
}

/// How many shards are in each class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthCounts {
    /// See [`ShardProblems::leaderless`].
    pub leaderless: u32,
    /// See [`ShardProblems::under_replicated`].
    pub under_replicated: u32,
    /// See [`ShardProblems::down_replica`].
    pub down_replica: u32,
    /// See [`ShardProblems::pending_replica`].
    pub pending_replica: u32,
    /// See [`ShardProblems::extra_replica`].
    pub extra_replica: u32,
    /// See [`ShardProblems::learner`].
    pub learner: u32,
}

impl HealthCounts {
    /// (metric label, count) of every class.
    pub fn by_status(&self) -> [(&'static str, u32); 6] {
        [
            ("leaderless", self.leaderless),
            ("under_replicated", self.under_replicated),
            ("down_replica", self.down_replica),
            ("pending_replica", self.pending_replica),
            ("extra_replica", self.extra_replica),
            ("learner", self.learner),
        ]
    }
}

/// What is wrong with one shard; `down` are the nodes observed down.
pub fn problems(info: &ShardInfo, down: &[u64], replication_factor: usize) -> ShardProblems {
    let Some(d) = info.shard.as_ref() else {
        return ShardProblems { leaderless: true, ..Default::default() };
    };
    let is_voter = |r: &&ringkv_proto::meta::Replica| r.role != ReplicaRole::Learner as i32;
    let voters = d.replicas.iter().filter(is_voter).count();
    let live_voters = d.replicas.iter().filter(is_voter).filter(|r| !down.contains(&r.node_id)).count();
    ShardProblems {
        leaderless: info.leader_node_id == 0 || down.contains(&info.leader_node_id),
        under_replicated: live_voters < replication_factor || info.down_replicas > 0,
        down_replica: d.replicas.iter().any(|r| down.contains(&r.node_id)),
        pending_replica: info.down_replicas > 0,
        extra_replica: voters > replication_factor,
        learner: d.replicas.iter().any(|r| r.role == ReplicaRole::Learner as i32),
    }
}

/// Counts `shards` by class.
pub fn count<'a>(
    shards: impl IntoIterator<Item = &'a ShardInfo>,
    down: &[u64],
    replication_factor: usize,
) -> HealthCounts {
    let mut c = HealthCounts::default();
    for info in shards {
        let h = problems(info, down, replication_factor);
        c.leaderless += h.leaderless as u32;
        c.under_replicated += h.under_replicated as u32;
        c.down_replica += h.down_replica as u32;
        c.pending_replica += h.pending_replica as u32;
        c.extra_replica += h.extra_replica as u32;
        c.learner += h.learner as u32;
    }
    c
}

#[cfg(test)]
mod tests {
    use ringkv_proto::meta::{Replica, ShardDescriptor};

    use super::*;

    fn shard(leader: u64, replicas: &[(u64, ReplicaRole)], down_replicas: u32) -> ShardInfo {
        let replicas = replicas
            .iter()
            .enumerate()
            .map(|(i, (node, role))| Replica { replica_id: i as u64 + 1, node_id: *node, role: *role as i32 })
            .collect();
        ShardInfo {
            shard: Some(ShardDescriptor { id: 1, replicas, ..Default::default() }),
            leader_node_id: leader,
            down_replicas,
        }
    }

    #[test]
    fn each_class_is_counted_when_it_applies_and_only_then() {
        use ReplicaRole::{Learner, Voter};
        let rf = 3;
        let none: [u64; 0] = [];
        let healthy = shard(1, &[(1, Voter), (2, Voter), (3, Voter)], 0);
        assert_eq!(problems(&healthy, &none, rf), ShardProblems::default());

        let down = [2];
        let h = problems(&healthy, &down, rf);
        assert!(h.down_replica && h.under_replicated && !h.leaderless, "{h:?}");
        let h = problems(&shard(2, &[(1, Voter), (2, Voter), (3, Voter)], 0), &down, rf);
        assert!(h.leaderless, "the reported leader is on a down node: {h:?}");
        assert!(problems(&shard(0, &[(1, Voter), (2, Voter), (3, Voter)], 0), &none, rf).leaderless);

        let moving = shard(1, &[(1, Voter), (2, Voter), (3, Voter), (4, Learner)], 0);
        let h = problems(&moving, &none, rf);
        assert!(h.learner && !h.extra_replica && !h.under_replicated, "{h:?}");
        let extra = shard(1, &[(1, Voter), (2, Voter), (3, Voter), (4, Voter)], 0);
        assert!(problems(&extra, &none, rf).extra_replica);
        let lagging = problems(&shard(1, &[(1, Voter), (2, Voter), (3, Voter)], 1), &none, rf);
        assert!(lagging.pending_replica && lagging.under_replicated, "{lagging:?}");

        let c = count([&healthy, &moving, &extra], &down, rf);
        assert_eq!(c.down_replica, 3);
        assert_eq!((c.learner, c.extra_replica, c.leaderless), (1, 1, 0));
    }
}
