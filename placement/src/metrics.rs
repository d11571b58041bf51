//! Placement's metrics, registered in the member's registry (next to the
//! Raft engine's) and served on its /metrics. `ringkv_placement_is_leader`
//! is exported by every member. The rest describe the cluster as the
//! leader's scheduler sees it: they are set by the member that leads and
//! removed when it stops leading, so that summing over members gives the
//! cluster's figures. Counters move on the member that leads while the
//! work happens.

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Registry};
use ringkv_common::metrics::{counter_vec, gauge, gauge_vec};

use ringkv_common::shard_health::HealthCounts;

/// The scheduler's metrics.
pub struct SchedulerMetrics {
    /// 1 on the member that leads placement.
    pub is_leader: IntGauge,
    /// Operators finished, by kind and outcome.
    pub operators: IntCounterVec,
    /// Operators in flight, by kind.
    pub operators_in_flight: IntGaugeVec,
    /// Leadership transfers asked of shard leaders, by reason.
    pub leader_transfers: IntCounterVec,
    /// Nodes by observed state (up, down, draining, maintenance, removed).
    pub nodes: IntGaugeVec,
    /// One series per storenode, labelled with its observed state.
    pub node_state: IntGaugeVec,
    /// Replicas per storenode.
    pub node_replicas: IntGaugeVec,
    /// Leaders per storenode.
    pub node_leaders: IntGaugeVec,
    /// Shards in the map.
    pub shard_count: IntGaugeVec,
    /// Shards by health class.
    pub shards: IntGaugeVec,
    /// Shards that need a move no node can take now.
    pub blocked: IntGaugeVec,
    /// 1 when every node is within one replica and one leader of its share.
    pub balanced: IntGaugeVec,
    /// Shards split, by reason (size, load, manual).
    pub splits: IntCounterVec,
}

/// A storenode as the metrics show it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeFigures {
    /// The node id.
    pub id: u64,
    /// `up`, `down`, `draining`, `maintenance` or `removed`.
    pub state: &'static str,
    /// Replicas it hosts.
    pub replicas: u32,
    /// Shards it leads.
    pub leaders: u32,
}

/// The node states, as metric labels.
pub const NODE_STATES: [&str; 5] = ["up", "down", "draining", "maintenance", "removed"];

impl SchedulerMetrics {
    /// The metrics, registered in `r`.
    pub fn new(r: &Registry) -> SchedulerMetrics {
        let storenode = &["storenode"];
        SchedulerMetrics {
            is_leader: gauge(r, "ringkv_placement_is_leader", "1 on the member that leads placement"),
            operators: counter_vec(
                r,
                "ringkv_placement_operators_total",
                "Operators finished, by kind and outcome",
                &["kind", "outcome"],
            ),
            operators_in_flight: gauge_vec(r, "ringkv_placement_operators_in_flight", "Operators in flight", &["kind"]),
            leader_transfers: counter_vec(
                r,
                "ringkv_placement_leader_transfers_total",
                "Leadership transfers asked, by reason",
                &["reason"],
            ),
            nodes: gauge_vec(r, "ringkv_placement_nodes", "Storenodes by observed state", &["state"]),
            node_state: gauge_vec(
                r,
                "ringkv_placement_node_state",
                "1 per storenode, labelled with its observed state",
                &["storenode", "state"],
            ),
            node_replicas: gauge_vec(r, "ringkv_placement_node_replicas", "Replicas per storenode", storenode),
            node_leaders: gauge_vec(r, "ringkv_placement_node_leaders", "Leaders per storenode", storenode),
            shard_count: gauge_vec(r, "ringkv_placement_shard_count", "Shards in the map", &[]),
            shards: gauge_vec(r, "ringkv_placement_shards", "Shards by health class", &["status"]),
            blocked: gauge_vec(r, "ringkv_placement_blocked_shards", "Shards needing a move no node can take now", &[]),
            balanced: gauge_vec(r, "ringkv_placement_balanced", "1 when replicas and leaders are balanced", &[]),
            splits: counter_vec(r, "ringkv_placement_splits_total", "Shards split, by reason", &["reason"]),
        }
    }

    /// Sets the cluster's figures (the leader, once per checker pass).
    /// Series of storenodes no longer listed go away.
    pub fn set_cluster(&self, nodes: &[NodeFigures], shards: u32, health: &HealthCounts) {
        for v in [&self.node_state, &self.node_replicas, &self.node_leaders] {
            v.reset();
        }
        for state in NODE_STATES {
            let n = nodes.iter().filter(|n| n.state == state).count();
            self.nodes.with_label_values(&[state]).set(n as i64);
        }
        for n in nodes {
            let id = n.id.to_string();
            self.node_state.with_label_values(&[&id, n.state]).set(1);
            self.node_replicas.with_label_values(&[&id]).set(n.replicas as i64);
            self.node_leaders.with_label_values(&[&id]).set(n.leaders as i64);
        }
        self.shard_count.with_label_values(&[]).set(shards as i64);
        for (status, n) in health.by_status() {
            self.shards.with_label_values(&[status]).set(n as i64);
        }
    }

    /// Removes every cluster figure: this member no longer leads.
    pub fn clear_cluster(&self) {
        for v in [
            &self.operators_in_flight,
            &self.nodes,
            &self.node_state,
            &self.node_replicas,
            &self.node_leaders,
            &self.shard_count,
            &self.shards,
            &self.blocked,
            &self.balanced,
        ] {
            v.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_leader_exports_cluster_figures_and_gone_nodes_disappear() {
        let r = Registry::new();
        let m = SchedulerMetrics::new(&r);
        let node = |id, state| NodeFigures { id, state, replicas: 3, leaders: 1 };
        let health = HealthCounts { leaderless: 2, ..Default::default() };
        m.set_cluster(&[node(1, "up"), node(2, "maintenance")], 8, &health);
        let text = ringkv_common::metrics::render(&r);
        assert!(text.contains("ringkv_placement_node_state{state=\"maintenance\",storenode=\"2\"} 1"), "{text}");
        assert!(text.contains("ringkv_placement_shards{status=\"leaderless\"} 2"), "{text}");
        assert!(text.contains("ringkv_placement_nodes{state=\"removed\"} 0"), "{text}");
        m.set_cluster(&[node(1, "up")], 8, &health);
        let text = ringkv_common::metrics::render(&r);
        assert!(!text.contains("storenode=\"2\""), "{text}");
        m.clear_cluster();
        let text = ringkv_common::metrics::render(&r);
        assert!(!text.contains("ringkv_placement_shard_count"), "{text}");
        assert!(text.contains("ringkv_placement_is_leader 0"), "every member exports it: {text}");
    }
}
