//! What operators see of the cluster, built from placement's answers: rows
//! of nodes, shards and operators, each shard's health, and a summary. The
//! `ringkv` CLI (`node list`, `shard list`, `operator list`, `cluster
//! status`) and the router's web console (`/ui`) both show these, so that
//! the two never disagree about what "under-replicated" or "leaders on a
//! node" means. A shard's health is the worst of its problems as
//! [`crate::shard_health`] finds them, which placement counts too.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use ringkv_proto::meta::ReplicaRole;
use ringkv_proto::placement::{
    ClusterStatusResponse, Node, NodeState, Operator, OperatorKind, OperatorStep, ShardInfo, ShardStat,
};
use serde::Serialize;

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A node state's name, lower-case ("unknown" for a value this build does not know).
pub fn state_name(s: i32) -> String {
    NodeState::try_from(s).map_or("unknown".into(), |s| s.as_str_name().to_lowercase())
}

/// The operator's kind, lower-case, for humans and metric labels.
pub fn kind_name(kind: i32) -> &'static str {
    match OperatorKind::try_from(kind) {
        Ok(OperatorKind::MoveReplica) => "move",
        Ok(OperatorKind::AddReplica) => "add",
        Ok(OperatorKind::RemoveReplica) => "remove",
        Err(_) => "unknown",
    }
}

/// The step's name, lower-case.
pub fn step_name(step: i32) -> &'static str {
    match OperatorStep::try_from(step) {
        Ok(OperatorStep::AddLearner) => "add-learner",
        Ok(OperatorStep::CatchUp) => "catch-up",
        Ok(OperatorStep::Promote) => "promote",
        Ok(OperatorStep::RemoveOld) => "remove-old",
        Ok(OperatorStep::Rollback) => "rollback",
        Err(_) => "unknown",
    }
}

/// One storenode as placement knows it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeRow {
    /// The node's id.
    pub id: u64,
    /// `up`, `down`, `draining` or `removed`.
    pub state: String,
    /// Planned downtime: a DOWN node in maintenance is expected to be down.
    pub maintenance: bool,
    /// gRPC address.
    pub address: String,
    /// HTTP address (/metrics).
    pub http_address: String,
    /// Its zone ("" when none was given).
    pub zone: String,
    /// Relative weight on the placement ring.
    pub capacity: u64,
    /// Since placement's leader last heard from it (0: never, or a new leader).
    pub last_heartbeat_ago_ms: u64,
}

impl NodeRow {
    /// The row of placement's `n`.
    pub fn new(n: &Node) -> NodeRow {
        NodeRow {
            id: n.id,
            state: state_name(n.state),
            maintenance: n.maintenance,
            address: n.address.clone(),
            http_address: n.http_address.clone(),
            zone: n.zone.clone(),
            capacity: n.capacity,
            last_heartbeat_ago_ms: n.last_heartbeat_ago_ms,
        }
    }

    /// The state as shown to people: "down (planned)" for a node in maintenance.
    pub fn shown_state(&self) -> String {
        match (self.maintenance, self.state.as_str()) {
            (true, "down") => "down (planned)".into(),
            (true, s) => format!("{s} (maintenance)"),
            (false, s) => s.to_string(),
        }
    }
}

/// How many replicas and leaders a node holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeCounts {
    /// Replicas of any role.
    pub replicas: usize,
    /// Shards it leads.
    pub leaders: usize,
}

/// Replicas and leaders per node id, counted from the shard map (a node
/// that holds nothing is absent). Placement's per-storenode metrics count
/// with it too.
pub fn node_counts<'a>(shards: impl IntoIterator<Item = &'a ShardInfo>) -> HashMap<u64, NodeCounts> {
    let mut counts: HashMap<u64, NodeCounts> = HashMap::new();
    for s in shards {
        for r in s.shard.iter().flat_map(|d| &d.replicas) {
            counts.entry(r.node_id).or_default().replicas += 1;
        }
        if s.leader_node_id != 0 {
            counts.entry(s.leader_node_id).or_default().leaders += 1;
        }
    }
    counts
}

/// One replica of a shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplicaRow {
    /// The replica's Raft id.
    pub replica_id: u64,
    /// The storenode that hosts it.
    pub node_id: u64,
    /// `voter` or `learner`.
    pub role: &'static str,
}

impl ReplicaRow {
    /// `ID@nodeN`, with `(learner)` after a learner: how the CLI prints it.
    pub fn label(&self) -> String {
        let learner = if self.role == "learner" { "(learner)" } else { "" };
        format!("{}@node{}{learner}", self.replica_id, self.node_id)
    }
}

/// A shard's health, worst first when a shard has several problems.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ShardHealth {
    /// Placement knows of no leader: the shard serves nothing.
    Leaderless,
    /// Fewer live replicas than the replication factor, or some lagging.
    UnderReplicated,
    /// Led, and every replica live.
    Ok,
}

impl ShardHealth {
    /// Its name, as the CLI prints it and JSON carries it.
    pub fn name(self) -> &'static str {
        match self {
            ShardHealth::Leaderless => "leaderless",
            ShardHealth::UnderReplicated => "under-replicated",
            ShardHealth::Ok => "ok",
        }
    }
}

impl Serialize for ShardHealth {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// What shard rows need beyond the shard map: which nodes are down, the
/// replication factor, and the leaders' size and load reports.
#[derive(Clone, Debug, Default)]
pub struct ShardContext {
    /// Nodes placement shows DOWN.
    pub down_nodes: Vec<u64>,
    /// Replicas each shard should have (0: unknown, only lagging replicas count).
    pub replication_factor: usize,
    /// Size and load by shard id.
    pub stats: HashMap<u64, ShardStat>,
}

impl ShardContext {
    /// The context placement's cluster status gives.
    pub fn from_status(st: &ClusterStatusResponse) -> ShardContext {
        ShardContext {
            down_nodes: st.nodes.iter().filter(|n| n.state == NodeState::Down as i32).map(|n| n.id).collect(),
            replication_factor: st.replication_factor as usize,
            stats: st.shard_stats.iter().map(|s| (s.shard_id, *s)).collect(),
        }
    }
}

/// The health of shard `s`: the worst of its problems
/// ([`crate::shard_health::problems`], which placement counts too).
pub fn shard_health(s: &ShardInfo, ctx: &ShardContext) -> ShardHealth {
    let p = crate::shard_health::problems(s, &ctx.down_nodes, ctx.replication_factor);
    if p.leaderless {
        ShardHealth::Leaderless
    } else if p.under_replicated {
        ShardHealth::UnderReplicated
    } else {
        ShardHealth::Ok
    }
}

/// One shard: range, epoch, replicas, leader, health, size and load.
#[derive(Clone, Debug, Serialize)]
pub struct ShardRow {
    /// The shard's id.
    pub id: u64,
    /// First hash of its range, 16 hex digits.
    pub start: String,
    /// End of its range (exclusive), 16 hex digits, or "end" for 2^64.
    pub end: String,
    /// Range version (bumps on a split).
    pub version: u64,
    /// Membership version (bumps on a replica change).
    pub conf_ver: u64,
    /// Its replicas.
    pub replicas: Vec<ReplicaRow>,
    /// The node of its leader (0: unknown).
    pub leader_node: u64,
    /// Replicas the leader reports lagging or unreachable.
    pub down_replicas: u32,
    /// See [`ShardHealth`].
    pub health: ShardHealth,
    /// Approximate bytes on disk, as the leader last measured (0: not yet).
    pub approximate_bytes: u64,
    /// Requests per second the leader served lately.
    pub qps: f64,
}

impl ShardRow {
    /// The row of placement's `s`, with what `ctx` knows of it.
    pub fn new(s: &ShardInfo, ctx: &ShardContext) -> ShardRow {
        let d = s.shard.clone().unwrap_or_default();
        let e = d.epoch.unwrap_or_default();
        let stat = ctx.stats.get(&d.id);
        ShardRow {
            id: d.id,
            start: format!("{:016x}", d.start),
            end: if d.end == 0 { "end".into() } else { format!("{:016x}", d.end) },
            version: e.version,
            conf_ver: e.conf_ver,
            replicas: d
                .replicas
                .iter()
                .map(|r| ReplicaRow {
                    replica_id: r.replica_id,
                    node_id: r.node_id,
                    role: if r.role == ReplicaRole::Learner as i32 { "learner" } else { "voter" },
                })
                .collect(),
            leader_node: s.leader_node_id,
            down_replicas: s.down_replicas,
            health: shard_health(s, ctx),
            approximate_bytes: stat.map_or(0, |x| x.approximate_bytes),
            qps: stat.map_or(0.0, |x| x.qps),
        }
    }
}

/// One operator in flight.
#[derive(Clone, Debug, Serialize)]
pub struct OperatorRow {
    /// The operator's id.
    pub id: u64,
    /// The shard it changes.
    pub shard: u64,
    /// `move`, `add` or `remove`.
    pub kind: String,
    /// The node a replica leaves (0: none).
    pub from_node: u64,
    /// The node a replica joins (0: none).
    pub to_node: u64,
    /// The step it is at (see [`step_name`]).
    pub step: String,
    /// Seconds since it was created.
    pub age_secs: u64,
    /// Seconds since it reached its step.
    pub step_age_secs: u64,
    /// Why it exists ("repair", "balance", ...).
    pub reason: String,
    /// Why it rolls back, else what its step waits for.
    pub note: String,
}

impl OperatorRow {
    /// The row of `o`, its ages as of `now_ms` (ms since the Unix epoch).
    pub fn new(o: &Operator, now_ms: u64) -> OperatorRow {
        OperatorRow {
            id: o.id,
            shard: o.shard_id,
            kind: kind_name(o.kind).into(),
            from_node: o.from_node,
            to_node: o.to_node,
            step: step_name(o.step).into(),
            age_secs: now_ms.saturating_sub(o.created_unix_ms) / 1000,
            step_age_secs: now_ms.saturating_sub(o.step_unix_ms) / 1000,
            reason: o.reason.clone(),
            note: match (o.rollback_reason.is_empty(), o.waiting_for.is_empty()) {
                (false, _) => o.rollback_reason.clone(),
                (true, false) => format!("(waiting: {})", o.waiting_for),
                (true, true) => String::new(),
            },
        }
    }
}

/// The cluster at a glance, from placement's cluster status.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterSummary {
    /// Version of the shard map.
    pub map_version: u64,
    /// Whether the first shards were created.
    pub bootstrapped: bool,
    /// The placement member that leads (0: unknown).
    pub placement_leader: u64,
    /// Storenodes UP.
    pub nodes_up: usize,
    /// Storenodes by shown state ("up", "down (planned)", ...).
    pub nodes_by_state: BTreeMap<String, usize>,
    /// Storenodes placement knows, in any state.
    pub nodes_total: usize,
    /// Shards.
    pub shards: u32,
    /// Shards with a known leader.
    pub shards_with_leader: u32,
    /// Shards without one.
    pub leaderless: u32,
    /// Shards under-replicated (see [`crate::shard_health::ShardProblems`]).
    pub under_replicated: u32,
    /// Replicas each shard should have.
    pub replication_factor: u32,
    /// Replicas per node if spread by capacity.
    pub ideal_replicas: f64,
    /// Leaders per node if spread by capacity.
    pub ideal_leaders: f64,
    /// Nothing to repair or move, and every node near its ideal.
    pub balanced: bool,
}

impl ClusterSummary {
    /// The summary of placement's `r`.
    pub fn new(r: &ClusterStatusResponse) -> ClusterSummary {
        let mut by_state = BTreeMap::new();
        for n in &r.nodes {
            *by_state.entry(NodeRow::new(n).shown_state()).or_insert(0) += 1;
        }
        ClusterSummary {
            map_version: r.map_version,
            bootstrapped: r.bootstrapped,
            placement_leader: r.placement.iter().find(|m| m.is_leader).map_or(0, |m| m.id),
            nodes_up: r.nodes.iter().filter(|n| n.state == NodeState::Up as i32).count(),
            nodes_by_state: by_state,
            nodes_total: r.nodes.len(),
            shards: r.shards,
            shards_with_leader: r.shards_with_leader,
            leaderless: r.leaderless,
            under_replicated: r.under_replicated,
            replication_factor: r.replication_factor,
            ideal_replicas: r.ideal_replicas,
            ideal_leaders: r.ideal_leaders,
            balanced: r.balanced,
        }
    }
}

#[cfg(test)]
mod tests {
    use ringkv_proto::meta::{Replica, ShardDescriptor};

    use super::*;

    fn shard(id: u64, leader: u64, nodes: &[u64], down_replicas: u32) -> ShardInfo {
        let replicas = nodes
            .iter()
            .enumerate()
            .map(|(i, &n)| Replica { replica_id: id * 10 + i as u64, node_id: n, role: ReplicaRole::Voter as i32 })
            .collect();
        ShardInfo {
            shard: Some(ShardDescriptor { id, replicas, ..Default::default() }),
            leader_node_id: leader,
            down_replicas,
        }
    }

    #[test]
    fn health_is_the_worst_problem_of_a_shard() {
        let ctx = ShardContext { down_nodes: vec![3], replication_factor: 3, ..Default::default() };
        assert_eq!(shard_health(&shard(1, 1, &[1, 2, 4], 0), &ctx), ShardHealth::Ok);
        assert_eq!(shard_health(&shard(1, 1, &[1, 2, 3], 0), &ctx), ShardHealth::UnderReplicated);
        assert_eq!(shard_health(&shard(1, 1, &[1, 2, 4], 1), &ctx), ShardHealth::UnderReplicated);
        assert_eq!(shard_health(&shard(1, 0, &[1, 2, 3], 1), &ctx), ShardHealth::Leaderless);
        assert!(
            ShardHealth::Leaderless < ShardHealth::UnderReplicated && ShardHealth::UnderReplicated < ShardHealth::Ok
        );
    }

    #[test]
    fn nodes_count_every_replica_and_only_known_leaders() {
        let counts = node_counts(&[shard(1, 1, &[1, 2, 3], 0), shard(2, 0, &[1, 2, 4], 0), shard(3, 2, &[2, 3, 4], 0)]);
        assert_eq!(counts[&1], NodeCounts { replicas: 2, leaders: 1 });
        assert_eq!(counts[&2], NodeCounts { replicas: 3, leaders: 1 });
        assert_eq!(counts[&4], NodeCounts { replicas: 2, leaders: 0 });
        assert!(!counts.contains_key(&0), "an unknown leader is nobody's");
    }

    #[test]
    fn a_shard_row_carries_roles_stats_and_the_open_end() {
        let mut s = shard(7, 2, &[1, 2], 0);
        if let Some(d) = s.shard.as_mut() {
            d.start = 0x8000_0000_0000_0000;
            d.replicas[1].role = ReplicaRole::Learner as i32;
        }
        let ctx = ShardContext {
            replication_factor: 1,
            stats: [(7, ShardStat { shard_id: 7, approximate_bytes: 4096, qps: 12.5 })].into(),
            ..Default::default()
        };
        let row = ShardRow::new(&s, &ctx);
        // A learner does not count towards the replication factor.
        let two = ShardContext { replication_factor: 2, ..ctx.clone() };
        assert_eq!(ShardRow::new(&s, &two).health, ShardHealth::UnderReplicated);
        assert_eq!((row.start.as_str(), row.end.as_str()), ("8000000000000000", "end"));
        assert_eq!(row.replicas[1].label(), "71@node2(learner)");
        assert_eq!(row.replicas[0].role, "voter");
        assert_eq!((row.approximate_bytes, row.qps, row.health), (4096, 12.5, ShardHealth::Ok));
    }

    #[test]
    fn operator_rows_say_why_before_what_they_wait_for() {
        let mut o = Operator {
            id: 1,
            shard_id: 2,
            kind: OperatorKind::MoveReplica as i32,
            step: OperatorStep::CatchUp as i32,
            created_unix_ms: 10_000,
            step_unix_ms: 15_000,
            waiting_for: "snapshot".into(),
            ..Default::default()
        };
        let row = OperatorRow::new(&o, 20_500);
        assert_eq!((row.kind.as_str(), row.step.as_str()), ("move", "catch-up"));
        assert_eq!((row.age_secs, row.step_age_secs), (10, 5));
        assert_eq!(row.note, "(waiting: snapshot)");
        o.rollback_reason = "timed out".into();
        assert_eq!(OperatorRow::new(&o, 0).note, "timed out");
    }
}
