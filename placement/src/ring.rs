//! Where replicas go: a consistent-hash ring of nodes (the `hashring` crate,
//! virtual nodes weighted by capacity). A shard's replicas are the first
//! distinct nodes clockwise from the shard's range start, skipping a node in a
//! zone already used when zones are set, so adding or losing a node moves few
//! shards. Leaders are then spread by picking, per shard, the replica whose
//! node leads the fewest shards so far.

use std::collections::{BTreeSet, HashMap};

use hashring::HashRing;
use ringkv_proto::meta::{Epoch, Replica, ReplicaRole, ShardDescriptor};
use ringkv_proto::placement::{Node, ShardInfo};

/// Virtual nodes per unit of capacity.
const VNODES_PER_CAPACITY: u64 = 32;
const MAX_VNODES: u64 = 1024;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
struct VNode {
    node_id: u64,
    i: u64,
}

/// The consistent-hash ring of a set of nodes.
pub struct Ring {
    ring: HashRing<VNode>,
    nodes: HashMap<u64, Node>,
}

impl Ring {
    /// A ring of `nodes`, each with virtual nodes in proportion to its capacity.
    pub fn new(nodes: &[Node]) -> Ring {
        let mut ring = HashRing::new();
        for n in nodes {
            for i in 0..(n.capacity.max(1) * VNODES_PER_CAPACITY).min(MAX_VNODES) {
                ring.add(VNode { node_id: n.id, i });
            }
        }
        Ring { ring, nodes: nodes.iter().map(|n| (n.id, n.clone())).collect() }
    }

    /// Up to `n` distinct nodes for the point `start`, zones spread when set.
    pub fn replicas_for(&self, start: u64, n: usize) -> Vec<u64> {
        let all = self.ring.get_with_replicas(&start, self.ring.len().saturating_sub(1)).unwrap_or_default();
        let mut out: Vec<u64> = Vec::new();
        let mut zones = BTreeSet::new();
        for pass in 0..2 {
            for v in &all {
                if out.len() == n {
                    return out;
                }
                if out.contains(&v.node_id) {
                    continue;
                }
                let zone = self.nodes.get(&v.node_id).map(|n| n.zone.as_str()).unwrap_or("");
                // First pass: one replica per zone. Second: fill up anyway.
                if pass == 0 && !zone.is_empty() && zones.contains(zone) {
                    continue;
                }
                zones.insert(zone.to_string());
                out.push(v.node_id);
            }
        }
        out
    }
}

/// The initial shards: `count` equal ranges covering the ring, replicas by the
/// ring, leader-to-be first (spread evenly). Ids are left 0 for the apply to
/// allocate.
pub fn initial_shards(nodes: &[Node], count: u64, replication: usize) -> Vec<ShardInfo> {
    let ring = Ring::new(nodes);
    let width = u64::MAX / count;
    let mut leads: HashMap<u64, usize> = HashMap::new();
    (0..count)
        .map(|i| {
            let start = i * width;
            let end = if i + 1 == count { 0 } else { (i + 1) * width };
            let mut chosen = ring.replicas_for(start, replication);
            if let Some(pos) = (0..chosen.len()).min_by_key(|&p| (leads.get(&chosen[p]).copied().unwrap_or(0), p)) {
                let first = chosen.remove(pos);
                *leads.entry(first).or_default() += 1;
                chosen.insert(0, first);
            }
            let replicas = chosen
                .into_iter()
                .map(|node_id| Replica { replica_id: 0, node_id, role: ReplicaRole::Voter as i32 })
                .collect();
            ShardInfo {
                shard: Some(ShardDescriptor {
                    id: 0,
                    start,
                    end,
                    epoch: Some(Epoch { version: 1, conf_ver: 1 }),
                    replicas,
                }),
                leader_node_id: 0,
                down_replicas: 0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, zone: &str) -> Node {
        Node { id, address: format!("127.0.0.1:{id}"), zone: zone.into(), capacity: 1, ..Default::default() }
    }

    #[test]
    fn initial_shards_cover_the_ring_with_distinct_replicas_and_even_leaders() {
        let nodes: Vec<Node> = (1..=3).map(|i| node(i, "")).collect();
        let shards = initial_shards(&nodes, 16, 3);
        assert_eq!(shards.len(), 16);
        let descs: Vec<&ShardDescriptor> = shards.iter().map(|s| s.shard.as_ref().unwrap()).collect();
        assert_eq!(descs[0].start, 0);
        assert_eq!(descs[15].end, 0, "the last shard runs to the end of the ring");
        for w in descs.windows(2) {
            assert_eq!(w[0].end, w[1].start, "no gap, no overlap");
        }
        let mut leaders: HashMap<u64, usize> = HashMap::new();
        for d in &descs {
            let ids: BTreeSet<u64> = d.replicas.iter().map(|r| r.node_id).collect();
            assert_eq!(ids.len(), 3, "three distinct nodes");
            *leaders.entry(d.replicas[0].node_id).or_default() += 1;
        }
        let (min, max) = (leaders.values().min().unwrap(), leaders.values().max().unwrap());
        assert!(max - min <= 1, "leaders spread evenly: {leaders:?}");
    }

    #[test]
    fn zones_are_spread_and_a_new_node_moves_few_shards() {
        let nodes = vec![node(1, "a"), node(2, "a"), node(3, "b"), node(4, "c")];
        let ring = Ring::new(&nodes);
        for i in 0..64u64 {
            let r = ring.replicas_for(i * (u64::MAX / 64), 3);
            let zones: BTreeSet<&str> = r.iter().map(|id| nodes[*id as usize - 1].zone.as_str()).collect();
            assert_eq!(zones.len(), 3, "one replica per zone: {r:?}");
        }
        let five: Vec<Node> = (1..=5).map(|i| node(i, "")).collect();
        let (before, after) = (Ring::new(&five[..4]), Ring::new(&five));
        let moved = (0..256u64)
            .filter(|i| {
                let p = i * (u64::MAX / 256);
                before.replicas_for(p, 1) != after.replicas_for(p, 1)
            })
            .count();
        assert!(moved < 256 / 2, "adding one node of five moves about a fifth of the points, not {moved}/256");
    }
}
