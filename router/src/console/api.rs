//! The console's JSON: what `GET /ui/api/cluster` answers, shaped from
//! placement's shard map, cluster status and operator list with the same
//! rows the `ringkv` CLI prints (`ringkv_common::cluster_view`), and the
//! errors it answers when placement cannot be asked.

use axum::http::StatusCode;
use ringkv_common::cluster_view::{
    node_counts, ClusterSummary, NodeRow, OperatorRow, ShardContext, ShardHealth, ShardRow,
};
use ringkv_proto::placement::{ClusterStatusResponse, ListOperatorsResponse, ShardMap};
use serde::Serialize;
use tonic::Code;

/// The whole page's data at one moment.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    /// When the router built it (ms since the Unix epoch).
    pub generated_unix_ms: u64,
    /// The cluster at a glance (as `ringkv cluster status`).
    pub summary: ClusterSummary,
    /// Shards per health, every health present (0 when none).
    pub health_counts: HealthCounts,
    /// The placement members and which one leads.
    pub placement: Vec<PlacementMemberView>,
    /// Storenodes by id (as `ringkv node list`).
    pub nodes: Vec<NodeView>,
    /// Shards, the unhealthy first (worst first), then by id (as `ringkv shard list`).
    pub shards: Vec<ShardRow>,
    /// Operators in flight (as `ringkv operator list`).
    pub operators: Vec<OperatorRow>,
    /// Shards that need a move the scheduler cannot make now.
    pub blocked: Vec<BlockedView>,
}

/// Shards per health.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct HealthCounts {
    /// Shards that are led and fully replicated.
    pub ok: usize,
    /// Shards short of live replicas.
    pub under_replicated: usize,
    /// Shards without a known leader.
    pub leaderless: usize,
}

/// One placement member.
#[derive(Debug, Serialize)]
pub struct PlacementMemberView {
    /// Member id.
    pub id: u64,
    /// Its gRPC address.
    pub address: String,
    /// Whether it leads the placement group.
    pub is_leader: bool,
}

/// A storenode with what it holds.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// The node as the CLI shows it.
    #[serde(flatten)]
    pub node: NodeRow,
    /// Its state for people ("down (planned)" in maintenance).
    pub shown_state: String,
    /// Replicas it holds, of any role.
    pub replicas: usize,
    /// Shards it leads.
    pub leaders: usize,
}

/// A shard the scheduler cannot repair or move now.
#[derive(Debug, Serialize)]
pub struct BlockedView {
    /// The shard.
    pub shard: u64,
    /// Why.
    pub reason: String,
}

/// Builds the view from placement's three answers, operator ages as of `now_ms`.
pub fn cluster_view(
    map: &ShardMap,
    status: &ClusterStatusResponse,
    ops: &ListOperatorsResponse,
    now_ms: u64,
) -> ClusterView {
    let ctx = ShardContext::from_status(status);
    let mut shards: Vec<ShardRow> = map.shards.iter().map(|s| ShardRow::new(s, &ctx)).collect();
    shards.sort_by_key(|s| (s.health, s.id));
    let mut health_counts = HealthCounts::default();
    for s in &shards {
        match s.health {
            ShardHealth::Ok => health_counts.ok += 1,
            ShardHealth::UnderReplicated => health_counts.under_replicated += 1,
            ShardHealth::Leaderless => health_counts.leaderless += 1,
        }
    }
    let counts = node_counts(&map.shards);
    let mut nodes: Vec<NodeView> = status
        .nodes
        .iter()
        .map(|n| {
            let node = NodeRow::new(n);
            let c = counts.get(&n.id).copied().unwrap_or_default();
            NodeView { shown_state: node.shown_state(), node, replicas: c.replicas, leaders: c.leaders }
        })
        .collect();
    nodes.sort_by_key(|n| n.node.id);
    ClusterView {
        generated_unix_ms: now_ms,
        summary: ClusterSummary::new(status),
        health_counts,
        placement: status
            .placement
            .iter()
            .map(|m| PlacementMemberView { id: m.id, address: m.address.clone(), is_leader: m.is_leader })
            .collect(),
        nodes,
        shards,
        operators: ops.operators.iter().map(|o| OperatorRow::new(o, now_ms)).collect(),
        blocked: ops.blocked.iter().map(|b| BlockedView { shard: b.shard_id, reason: b.reason.clone() }).collect(),
    }
}

/// Why the console could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A call to placement failed.
    #[error("placement {call}: {message}")]
    Placement {
        /// Which call.
        call: &'static str,
        /// gRPC code placement (or the connection) answered.
        code: Code,
        /// What it said.
        message: String,
    },
}

impl ConsoleError {
    /// The error of placement call `call` answered with `s`.
    pub fn placement(call: &'static str, s: &tonic::Status) -> ConsoleError {
        ConsoleError::Placement { call, code: s.code(), message: s.message().to_string() }
    }

    /// The HTTP status it is answered with: placement unreachable or
    /// leaderless is 503 (try again), no answer in time 504, anything else
    /// 502 (the router is fine, what it asked is not).
    pub fn status(&self) -> StatusCode {
        match self {
            ConsoleError::Placement { code: Code::Unavailable, .. } => StatusCode::SERVICE_UNAVAILABLE,
            ConsoleError::Placement { code: Code::DeadlineExceeded, .. } => StatusCode::GATEWAY_TIMEOUT,
            ConsoleError::Placement { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Its JSON body: `{"error": "placement_unavailable", "message": ...}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": "placement_unavailable", "message": self.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use ringkv_proto::meta::{Replica, ReplicaRole, ShardDescriptor};
    use ringkv_proto::placement::{BlockedShard, Node, NodeState, Operator, PlacementMember, ShardInfo, ShardStat};

    use super::*;

    fn shard(id: u64, leader: u64, nodes: &[u64]) -> ShardInfo {
        let replicas = nodes
            .iter()
            .map(|&n| Replica { replica_id: id * 100 + n, node_id: n, role: ReplicaRole::Voter as i32 })
            .collect();
        ShardInfo {
            shard: Some(ShardDescriptor { id, start: id << 60, end: (id + 1) << 60, replicas, ..Default::default() }),
            leader_node_id: leader,
            down_replicas: 0,
        }
    }

    fn node(id: u64, state: NodeState) -> Node {
        Node { id, address: format!("127.0.0.1:{}", 20000 + id), state: state as i32, ..Default::default() }
    }

    fn fixture() -> (ShardMap, ClusterStatusResponse, ListOperatorsResponse) {
        let map = ShardMap {
            version: 9,
            shards: vec![shard(1, 1, &[1, 2, 3]), shard(2, 0, &[1, 2, 3]), shard(3, 2, &[1, 2, 4])],
            ..Default::default()
        };
        let status = ClusterStatusResponse {
            map_version: 9,
            bootstrapped: true,
            placement: vec![PlacementMember { id: 1, address: "p1".into(), is_leader: true, reachable: true }],
            nodes: vec![
                node(2, NodeState::Up),
                node(1, NodeState::Up),
                node(3, NodeState::Up),
                node(4, NodeState::Down),
            ],
            shards: 3,
            replication_factor: 3,
            shard_stats: vec![ShardStat { shard_id: 1, approximate_bytes: 1 << 20, qps: 42.0 }],
            ..Default::default()
        };
        let ops = ListOperatorsResponse {
            operators: vec![Operator { id: 5, shard_id: 3, created_unix_ms: 1_000, ..Default::default() }],
            blocked: vec![BlockedShard { shard_id: 3, reason: "no node to move to".into() }],
        };
        (map, status, ops)
    }

    #[test]
    fn the_view_puts_unhealthy_shards_first_and_counts_what_nodes_hold() {
        let (map, status, ops) = fixture();
        let v = cluster_view(&map, &status, &ops, 61_000);
        let order: Vec<(u64, ShardHealth)> = v.shards.iter().map(|s| (s.id, s.health)).collect();
        assert_eq!(order, vec![(2, ShardHealth::Leaderless), (3, ShardHealth::UnderReplicated), (1, ShardHealth::Ok)]);
        assert_eq!(v.health_counts, HealthCounts { ok: 1, under_replicated: 1, leaderless: 1 });
        let nodes: Vec<(u64, usize, usize)> = v.nodes.iter().map(|n| (n.node.id, n.replicas, n.leaders)).collect();
        assert_eq!(nodes, vec![(1, 3, 1), (2, 3, 1), (3, 2, 0), (4, 1, 0)]);
        assert_eq!(v.operators[0].age_secs, 60);
        assert_eq!(v.summary.placement_leader, 1);
        assert_eq!((v.shards[2].approximate_bytes, v.shards[2].qps), (1 << 20, 42.0));
    }

    #[test]
    fn the_json_has_the_fields_the_page_reads() {
        let (map, status, ops) = fixture();
        let j = serde_json::to_value(cluster_view(&map, &status, &ops, 0)).expect("serializable");
        assert_eq!(j["shards"][0]["health"], "leaderless");
        assert_eq!(j["shards"][1]["health"], "under-replicated");
        assert_eq!(
            j["shards"][2]["replicas"][0],
            serde_json::json!({"replica_id": 101, "node_id": 1, "role": "voter"})
        );
        assert_eq!(j["shards"][2]["start"], "1000000000000000");
        assert_eq!(j["nodes"][3]["state"], "down");
        assert_eq!(j["nodes"][3]["address"], "127.0.0.1:20004");
        assert_eq!(j["nodes"][0]["leaders"], 1);
        assert_eq!(j["summary"]["shards"], 3);
        assert_eq!(j["blocked"][0]["shard"], 3);
        assert_eq!(j["operators"][0]["shard"], 3);
    }

    #[test]
    fn placement_errors_become_retryable_or_gateway_statuses() {
        let e = ConsoleError::placement("cluster status", &tonic::Status::unavailable("no leader"));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.body()["message"], "placement cluster status: no leader");
        let e = ConsoleError::placement("shard map", &tonic::Status::deadline_exceeded("slow"));
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        let e = ConsoleError::placement("shard map", &tonic::Status::internal("bug"));
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    }
}
