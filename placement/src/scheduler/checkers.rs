//! The checkers: pure functions from what placement knows (a [`View`]) to
//! what should change (a [`Plan`]): operators to create, leaderships to
//! transfer, drained nodes to mark REMOVED, and the shards that need a move
//! no node can take now (with the reason, for operators).
//!
//! In priority order, as PD and CockroachDB's allocator do:
//! 1. repair: a replica on a node DOWN for longer than its down timeout, on a
//!    REMOVED node, or fenced off after a local failure is replaced; a shard
//!    with too few voters gets one more, one with too many loses one;
//! 2. decommission: a replica on a DRAINING node moves off;
//! 3. balance: replicas per node proportional to capacity. A move is made
//!    only when it leaves the source at least as loaded as the target
//!    (relative to capacity), so the same replica never moves back and forth;
//!    the shard moved is one the consistent-hash ring would place on the
//!    target, when there is one, so placement stays close to the ring.
//!
//! Leaders: moved off nodes in maintenance or DRAINING, then spread evenly.
//! Every function here is deterministic in its input, so plans are tested
//! without a cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use ringkv_proto::meta::{ReplicaRole, ShardDescriptor};
use ringkv_proto::placement::{Node, NodeState, Operator, OperatorKind, OperatorStep, ShardInfo};

use crate::ring::Ring;
use crate::state::ClusterState;
use crate::PlacementSettings;

/// A node as the placement leader sees it now.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// The stored node with its observed state (DOWN when silent).
    pub node: Node,
    /// How long it has been silent, when it is DOWN.
    pub down_for: Option<Duration>,
}

impl NodeView {
    fn state(&self) -> NodeState {
        NodeState::try_from(self.node.state).unwrap_or(NodeState::Down)
    }

    /// Takes new replicas: UP, not decommissioning, not in maintenance.
    fn schedulable(&self) -> bool {
        self.state() == NodeState::Up && !self.node.maintenance
    }

    /// May lead shards: UP and not in maintenance.
    fn can_lead(&self) -> bool {
        self.state() == NodeState::Up && !self.node.maintenance
    }
}

/// Everything a planning pass reads.
pub struct View<'a> {
    /// The replicated state.
    pub state: &'a ClusterState,
    /// Every node not REMOVED, by id, as observed now.
    pub nodes: BTreeMap<u64, NodeView>,
    /// Replicas fenced off by their node: (shard id, replica id) -> why.
    pub failed: &'a HashMap<(u64, u64), String>,
    /// The scheduler's settings.
    pub settings: &'a PlacementSettings,
    /// Shards whose leadership was handed over recently, to which node: left
    /// alone for now, and counted as led by that node (placement learns the
    /// new leader only from its next heartbeat; counting the old one would
    /// move more leaders off the same node than it should).
    pub leader_cooldown: &'a BTreeMap<u64, u64>,
    /// Requests per second each shard's leader reported lately (shards not
    /// listed count as idle).
    pub shard_qps: &'a HashMap<u64, f64>,
}

/// A leadership to move: ask `from_node` (the leader) to hand shard
/// `shard_id` to replica `to_replica` on `to_node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The shard.
    pub shard_id: u64,
    /// The node that leads it now.
    pub from_node: u64,
    /// The node to lead it.
    pub to_node: u64,
    /// The replica (on `to_node`) to lead it.
    pub to_replica: u64,
    /// Why: "maintenance", "decommission" or "balance".
    pub reason: &'static str,
}

/// What one planning pass decided.
#[derive(Debug, Default)]
pub struct Plan {
    /// New operators (ids left 0: allocated on apply).
    pub operators: Vec<Operator>,
    /// Leaderships to move.
    pub transfers: Vec<Transfer>,
    /// DRAINING nodes that hold nothing any more: to mark REMOVED.
    pub drained: Vec<u64>,
    /// Shards that need a move nothing can make now, and why.
    pub blocked: Vec<(u64, String)>,
}

/// Load bookkeeping during one pass: replicas per node (operators in flight
/// counted as done, so a pass does not pile moves on the same target),
/// operators and snapshots in flight per node.
struct Load {
    replicas: HashMap<u64, i64>,
    in_flight: HashMap<u64, usize>,
    snapshots: HashMap<u64, usize>,
    total_ops: usize,
}

impl Load {
    fn new(view: &View<'_>) -> Load {
        let mut l =
            Load { replicas: HashMap::new(), in_flight: HashMap::new(), snapshots: HashMap::new(), total_ops: 0 };
        for d in view.state.shards.values().filter_map(|s| s.shard.as_ref()) {
            for r in &d.replicas {
                *l.replicas.entry(r.node_id).or_default() += 1;
            }
        }
        for op in view.state.operators.values() {
            l.count(op, OperatorStep::try_from(op.step).unwrap_or(OperatorStep::AddLearner));
        }
        l
    }

    fn count(&mut self, op: &Operator, step: OperatorStep) {
        self.total_ops += 1;
        for n in [op.from_node, op.to_node].into_iter().filter(|n| *n != 0) {
            *self.in_flight.entry(n).or_default() += 1;
        }
        let adding = matches!(step, OperatorStep::AddLearner | OperatorStep::CatchUp);
        if op.to_node != 0 && adding {
            *self.snapshots.entry(op.to_node).or_default() += 1;
            *self.replicas.entry(op.to_node).or_default() += 1;
        }
        if op.from_node != 0 && adding {
            *self.replicas.entry(op.from_node).or_default() -= 1;
        }
    }

    fn replicas(&self, node: u64) -> i64 {
        self.replicas.get(&node).copied().unwrap_or(0)
    }

    /// Whether `node` may take part in one more operator (and receive a
    /// snapshot when `receives`).
    fn has_room(&self, s: &PlacementSettings, node: u64, receives: bool) -> bool {
        self.in_flight.get(&node).copied().unwrap_or(0) < s.max_operators_per_node
            && (!receives || self.snapshots.get(&node).copied().unwrap_or(0) < s.max_snapshots_per_node)
    }
}

fn voters(d: &ShardDescriptor) -> usize {
    d.replicas.iter().filter(|r| r.role == ReplicaRole::Voter as i32).count()
}

/// Why the replica of `d` on `node` must be replaced now, if it must.
fn dead_reason(view: &View<'_>, d: &ShardDescriptor, replica_id: u64, node: u64) -> Option<String> {
    if let Some(why) = view.failed.get(&(d.id, replica_id)) {
        return Some(format!("repair: replica {replica_id} on node {node} failed: {why}"));
    }
    let Some(n) = view.nodes.get(&node) else {
        return Some(format!("repair: node {node} was removed"));
    };
    let down_for = n.down_for?;
    let limit = if n.node.maintenance { view.settings.maintenance_down_after } else { view.settings.down_after };
    (down_for >= limit).then(|| format!("repair: node {node} down for {}s", down_for.as_secs()))
}

/// Plans one pass. `now_ms` stamps the operators.
pub fn plan(view: &View<'_>, now_ms: u64) -> Plan {
    let s = view.settings;
    let mut plan = Plan::default();
    let mut load = Load::new(view);
    let nodes: Vec<Node> = view.nodes.values().filter(|n| n.schedulable()).map(|n| n.node.clone()).collect();
    let ring = Ring::new(&nodes);
    let mut busy: BTreeSet<u64> = view.state.operators.values().map(|o| o.shard_id).collect();

    // 1 and 2: repair, then decommission, shard by shard.
    for info in view.state.shards.values() {
        let Some(d) = info.shard.as_ref() else { continue };
        if busy.contains(&d.id) {
            continue;
        }
        let need = repair_or_drain(view, d);
        let Some((kind, from, reason)) = need else { continue };
        if load.total_ops >= s.max_operators {
            plan.blocked.push((d.id, format!("{reason}: waiting, {} operators in flight", load.total_ops)));
            continue;
        }
        let to = if kind == OperatorKind::RemoveReplica {
            Ok(0)
        } else {
            best_target(view, &ring, &load, d, from).map_err(|why| format!("{reason}: {why}"))
        };
        match to {
            Ok(to) if from == 0 || load.has_room(s, from, false) || is_gone(view, from) => {
                let op = new_operator(d, kind, from, to, &reason, now_ms);
                load.count(&op, OperatorStep::AddLearner);
                busy.insert(d.id);
                plan.operators.push(op);
            }
            Ok(_) => plan.blocked.push((d.id, format!("{reason}: node {from} has enough moves in flight"))),
            Err(why) => plan.blocked.push((d.id, why)),
        }
    }
    for n in view.nodes.values() {
        if n.node.state == NodeState::Draining as i32
            && load.replicas(n.node.id) == 0
            && load.in_flight.get(&n.node.id).copied().unwrap_or(0) == 0
            && view.state.replicas_on(n.node.id) == 0
        {
            plan.drained.push(n.node.id);
        }
    }

    // 3: balance, only when nothing needs repair or is being repaired, and
    // no node is down without a plan (it may be about to need repair).
    let repairing = !plan.operators.is_empty()
        || !plan.blocked.is_empty()
        || view.state.operators.values().any(|o| o.reason != BALANCE)
        || view.nodes.values().any(|n| n.node.state == NodeState::Down as i32 && !n.node.maintenance);
    if !repairing {
        balance(view, &ring, &mut load, &mut busy, &mut plan, now_ms);
    }
    plan.transfers = leaders(view);
    plan
}

const BALANCE: &str = "balance";

fn is_gone(view: &View<'_>, node: u64) -> bool {
    view.nodes.get(&node).is_none_or(|n| n.node.state == NodeState::Down as i32)
}

/// What a shard needs from the repair and decommission checkers.
fn repair_or_drain(view: &View<'_>, d: &ShardDescriptor) -> Option<(OperatorKind, u64, String)> {
    let rf = view.settings.replication_factor;
    for r in &d.replicas {
        if let Some(reason) = dead_reason(view, d, r.replica_id, r.node_id) {
            return Some((OperatorKind::MoveReplica, r.node_id, reason));
        }
    }
    let v = voters(d);
    if v < rf {
        return Some((OperatorKind::AddReplica, 0, format!("repair: {v} of {rf} replicas")));
    }
    if v > rf {
        // The replica on the most loaded node (draining first) goes.
        let worst = d.replicas.iter().max_by_key(|r| {
            let draining = view.nodes.get(&r.node_id).is_some_and(|n| n.node.state == NodeState::Draining as i32);
            (draining, view.state.replicas_on(r.node_id), r.node_id)
        })?;
        return Some((OperatorKind::RemoveReplica, worst.node_id, format!("{v} replicas, {rf} wanted")));
    }
    let draining = d
        .replicas
        .iter()
        .find(|r| view.nodes.get(&r.node_id).is_some_and(|n| n.node.state == NodeState::Draining as i32))?;
    Some((OperatorKind::MoveReplica, draining.node_id, format!("decommission node {}", draining.node_id)))
}

fn new_operator(d: &ShardDescriptor, kind: OperatorKind, from: u64, to: u64, reason: &str, now_ms: u64) -> Operator {
    Operator {
        shard_id: d.id,
        kind: kind as i32,
        from_node: from,
        from_replica: d.replicas.iter().find(|r| r.node_id == from).map_or(0, |r| r.replica_id),
        to_node: to,
        created_unix_ms: now_ms,
        reason: reason.to_string(),
        epoch: d.epoch,
        ..Default::default()
    }
}

/// The node that should take a new replica of `d` (replacing the one on
/// `leaving`, 0 for none): schedulable, without a replica of `d`, with room
/// for one more operator and snapshot, in a zone the shard's other replicas
/// do not use when possible; then the least loaded relative to capacity,
/// preferring the nodes the ring picks for the shard.
fn best_target(view: &View<'_>, ring: &Ring, load: &Load, d: &ShardDescriptor, leaving: u64) -> Result<u64, String> {
    let s = view.settings;
    let holders: BTreeSet<u64> = d.replicas.iter().map(|r| r.node_id).collect();
    let zones: BTreeSet<&str> = d
        .replicas
        .iter()
        .filter(|r| r.node_id != leaving)
        .filter_map(|r| view.nodes.get(&r.node_id))
        .map(|n| n.node.zone.as_str())
        .filter(|z| !z.is_empty())
        .collect();
    let ring_pick = ring.replicas_for(d.start, s.replication_factor);
    let candidates: Vec<&NodeView> =
        view.nodes.values().filter(|n| n.schedulable() && !holders.contains(&n.node.id)).collect();
    if candidates.is_empty() {
        return Err(format!("every schedulable node already holds a replica of shard {}", d.id));
    }
    let roomy: Vec<&NodeView> = candidates.into_iter().filter(|n| load.has_room(s, n.node.id, true)).collect();
    if roomy.is_empty() {
        return Err("every candidate node has its maximum of moves or snapshots in flight".into());
    }
    let key = |n: &&NodeView| {
        let new_zone = n.node.zone.is_empty() || !zones.contains(n.node.zone.as_str());
        // Replicas per unit of capacity, in millionths (an integer sorts).
        let score = (load.replicas(n.node.id) + 1).max(0) as u64 * 1_000_000 / n.node.capacity.max(1);
        (!new_zone, score, !ring_pick.contains(&n.node.id), n.node.id)
    };
    Ok(roomy.into_iter().min_by_key(key).map(|n| n.node.id).unwrap_or(0))
}

/// Replicas per unit of capacity.
fn score(load: &Load, n: &Node, delta: i64) -> f64 {
    (load.replicas(n.id) + delta) as f64 / n.capacity.max(1) as f64
}

fn balance(view: &View<'_>, ring: &Ring, load: &mut Load, busy: &mut BTreeSet<u64>, plan: &mut Plan, now_ms: u64) {
    let s = view.settings;
    let nodes: Vec<&Node> = view.nodes.values().filter(|n| n.schedulable()).map(|n| &n.node).collect();
    if nodes.len() < 2 {
        return;
    }
    while load.total_ops < s.max_operators {
        let by_score = |a: &&&Node, b: &&&Node| {
            score(load, a, 0).partial_cmp(&score(load, b, 0)).unwrap_or(std::cmp::Ordering::Equal).then(a.id.cmp(&b.id))
        };
        let mut order: Vec<&&Node> = nodes.iter().collect();
        order.sort_by(by_score);
        // The most loaded source and least loaded target with room, such that
        // the move does not invert them (hysteresis: no oscillation).
        let mut chosen = None;
        'outer: for src in order.iter().rev() {
            if !load.has_room(s, src.id, false) {
                continue;
            }
            for dst in order.iter() {
                if dst.id == src.id || score(load, src, -1) < score(load, dst, 1) {
                    break;
                }
                if !load.has_room(s, dst.id, true) {
                    continue;
                }
                if let Some(d) = balance_candidate(view, ring, busy, src.id, dst.id) {
                    chosen = Some((d, src.id, dst.id));
                    break 'outer;
                }
            }
        }
        let Some((d, from, to)) = chosen else { return };
        let op = new_operator(d, OperatorKind::MoveReplica, from, to, BALANCE, now_ms);
        load.count(&op, OperatorStep::AddLearner);
        busy.insert(d.id);
        plan.operators.push(op);
    }
}

/// A shard on `src` to move to `dst`: not busy, not on `dst`, keeping zones
/// apart; the ring's choices first.
fn balance_candidate<'a>(
    view: &View<'a>,
    ring: &Ring,
    busy: &BTreeSet<u64>,
    src: u64,
    dst: u64,
) -> Option<&'a ShardDescriptor> {
    let dst_zone = view.nodes.get(&dst).map_or("", |n| n.node.zone.as_str());
    let mut best: Option<(&ShardDescriptor, u8)> = None;
    for d in view.state.shards.values().filter_map(|s| s.shard.as_ref()) {
        if busy.contains(&d.id) || !d.replicas.iter().any(|r| r.node_id == src) {
            continue;
        }
        // A shard with a replica on a node that is not UP keeps its shape: a
        // move needs a quorum of both configurations.
        let healthy = |r: &ringkv_proto::meta::Replica| {
            view.nodes.get(&r.node_id).is_some_and(|n| n.node.state != NodeState::Down as i32)
        };
        if d.replicas.iter().any(|r| r.node_id == dst) || !d.replicas.iter().all(healthy) {
            continue;
        }
        let zone_clash = !dst_zone.is_empty()
            && d.replicas
                .iter()
                .filter(|r| r.node_id != src)
                .any(|r| view.nodes.get(&r.node_id).is_some_and(|n| n.node.zone == dst_zone));
        if zone_clash {
            continue;
        }
        let pick = ring.replicas_for(d.start, view.settings.replication_factor);
        let rank = match (pick.contains(&dst), pick.contains(&src)) {
            (true, false) => 0,
            (true, true) | (false, false) => 1,
            (false, true) => 2,
        };
        if best.is_none_or(|(_, r)| rank < r) {
            best = Some((d, rank));
            if rank == 0 {
                break;
            }
        }
    }
    best.map(|(d, _)| d)
}

/// Leadership moves: off nodes that should not lead, then one move from the
/// node leading the most shards to the one leading the fewest when they
/// differ by two or more.
fn leaders(view: &View<'_>) -> Vec<Transfer> {
    let mut out = Vec::new();
    let mut led: BTreeMap<u64, i64> = view.nodes.iter().filter(|(_, n)| n.can_lead()).map(|(id, _)| (*id, 0)).collect();
    let mut unknown = false;
    for (id, info) in &view.state.shards {
        let leader = view.leader_cooldown.get(id).copied().unwrap_or(info.leader_node_id);
        unknown |= leader == 0;
        if let Some(c) = led.get_mut(&leader) {
            *c += 1;
        }
    }
    let candidates = |d: &ShardDescriptor, led: &BTreeMap<u64, i64>| -> Option<(u64, u64)> {
        d.replicas
            .iter()
            .filter(|r| r.role == ReplicaRole::Voter as i32 && led.contains_key(&r.node_id))
            .min_by_key(|r| (led.get(&r.node_id).copied().unwrap_or(0), r.node_id))
            .map(|r| (r.node_id, r.replica_id))
    };
    for info in view.state.shards.values() {
        let Some(d) = info.shard.as_ref() else { continue };
        if view.leader_cooldown.contains_key(&d.id) || view.state.operator_on(d.id).is_some() {
            continue;
        }
        let Some(leader) = view.nodes.get(&info.leader_node_id) else { continue };
        if leader.can_lead() {
            continue;
        }
        let reason = if leader.node.maintenance { "maintenance" } else { "decommission" };
        if let Some((to_node, to_replica)) = candidates(d, &led) {
            *led.entry(to_node).or_default() += 1;
            out.push(Transfer { shard_id: d.id, from_node: leader.node.id, to_node, to_replica, reason });
        }
    }
    // Balance only on a full picture: not while some shard's leader is
    // unknown (an election, or a bootstrap whose leaders have not reported).
    if !out.is_empty() || unknown {
        return out;
    }
    let (Some((&max_node, &max)), Some((&min_node, &min))) =
        (led.iter().max_by_key(|(id, c)| (**c, std::cmp::Reverse(**id))), led.iter().min_by_key(|(id, c)| (**c, **id)))
    else {
        return out;
    };
    if max - min < 2 {
        return by_load(view, &led);
    }
    // The coolest shard of the node that leads the most moves: a hot one
    // is where the load balancing below put it.
    let qps = |id: &u64| view.shard_qps.get(id).copied().unwrap_or(0.0);
    let mut shards: Vec<&ShardInfo> = view.state.shards.values().collect();
    shards.sort_by(|a, b| {
        let (ia, ib) = (a.shard.as_ref().map_or(0, |d| d.id), b.shard.as_ref().map_or(0, |d| d.id));
        qps(&ia).total_cmp(&qps(&ib)).then(ia.cmp(&ib))
    });
    for info in shards {
        let Some(d) = info.shard.as_ref() else { continue };
        if info.leader_node_id != max_node
            || view.leader_cooldown.contains_key(&d.id)
            || view.state.operator_on(d.id).is_some()
        {
            continue;
        }
        if let Some(r) = d.replicas.iter().find(|r| r.node_id == min_node && r.role == ReplicaRole::Voter as i32) {
            out.push(Transfer {
                shard_id: d.id,
                from_node: max_node,
                to_node: min_node,
                to_replica: r.replica_id,
                reason: BALANCE,
            });
            break;
        }
    }
    out
}

/// Below this many requests per second in the whole cluster, leaders are
/// balanced by count only: the load is noise.
const MIN_BALANCED_QPS: f64 = 200.0;
/// A node leads too much of the load when it has this much more than the
/// average node.
const HOT_NODE_FACTOR: f64 = 1.25;
/// A load move must lower the busiest node's load by this share of the
/// average node's.
const MIN_GAIN: f64 = 0.1;

/// With leader counts balanced, one leadership move from the node whose
/// leaders serve the most requests to the node serving the fewest: the
/// busiest shard it leads whose move lowers the peak (its load is less than
/// the two nodes' difference) and keeps counts within one.
fn by_load(view: &View<'_>, led: &BTreeMap<u64, i64>) -> Vec<Transfer> {
    let qps = |id: u64| view.shard_qps.get(&id).copied().unwrap_or(0.0);
    let mut load: BTreeMap<u64, f64> = led.keys().map(|n| (*n, 0.0)).collect();
    for (id, info) in &view.state.shards {
        if let Some(l) = load.get_mut(&info.leader_node_id) {
            *l += qps(*id);
        }
    }
    let total: f64 = load.values().sum();
    let avg = total / load.len().max(1) as f64;
    let Some((&hot_node, &hot)) = load.iter().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0))) else {
        return Vec::new();
    };
    if total < MIN_BALANCED_QPS || hot < avg * HOT_NODE_FACTOR {
        return Vec::new();
    }
    let mut best: Option<(f64, Transfer)> = None;
    for info in view.state.shards.values() {
        let Some(d) = info.shard.as_ref() else { continue };
        if info.leader_node_id != hot_node
            || view.leader_cooldown.contains_key(&d.id)
            || view.state.operator_on(d.id).is_some()
        {
            continue;
        }
        let q = qps(d.id);
        for r in d.replicas.iter().filter(|r| r.role == ReplicaRole::Voter as i32 && r.node_id != hot_node) {
            let Some(&to_load) = load.get(&r.node_id) else { continue };
            // Leader counts may end two apart: the count balancing then
            // moves the coolest leader of the fuller node back, which makes
            // the pair of moves a swap of a hot leader for a cool one.
            let after = |n: u64, c: i64| c + i64::from(n == r.node_id) - i64::from(n == hot_node);
            let counts: Vec<i64> = led.iter().map(|(n, c)| after(*n, *c)).collect();
            let spread = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0);
            // The new peak of the two nodes must come down by a tenth of
            // the average at least: smaller gains are not worth a move (and
            // would chase each other).
            let peak = (hot - q).max(to_load + q);
            if q <= 0.0 || spread > 2 || hot - peak < avg * MIN_GAIN {
                continue;
            }
            if best.as_ref().is_none_or(|(p, _)| peak < *p) {
                let t = Transfer {
                    shard_id: d.id,
                    from_node: hot_node,
                    to_node: r.node_id,
                    to_replica: r.replica_id,
                    reason: "load",
                };
                best = Some((peak, t));
            }
        }
    }
    best.map(|(_, t)| vec![t]).unwrap_or_default()
}

/// Replicas and leaders per schedulable node, the ideal of each (by
/// capacity) and whether every node is within one of it.
pub struct Balance {
    /// Node id -> (replicas, leaders).
    pub per_node: BTreeMap<u64, (u32, u32)>,
    /// Ideal replicas per unit of capacity times the node's capacity, for a
    /// node of capacity 1.
    pub ideal_replicas: f64,
    /// Ideal leaders per node.
    pub ideal_leaders: f64,
    /// Every node within one replica and one leader of its ideal.
    pub balanced: bool,
}

/// Measures how balanced the cluster is over its schedulable nodes.
pub fn measure(view: &View<'_>) -> Balance {
    let nodes: Vec<&Node> = view.nodes.values().filter(|n| n.schedulable()).map(|n| &n.node).collect();
    let mut per_node: BTreeMap<u64, (u32, u32)> = nodes.iter().map(|n| (n.id, (0, 0))).collect();
    let mut total = 0u32;
    for info in view.state.shards.values() {
        let Some(d) = info.shard.as_ref() else { continue };
        for r in &d.replicas {
            total += 1;
            if let Some(e) = per_node.get_mut(&r.node_id) {
                e.0 += 1;
            }
        }
        if let Some(e) = per_node.get_mut(&info.leader_node_id) {
            e.1 += 1;
        }
    }
    let cap: u64 = nodes.iter().map(|n| n.capacity.max(1)).sum::<u64>().max(1);
    let ideal_replicas = total as f64 / cap as f64;
    let ideal_leaders = view.state.shards.len() as f64 / nodes.len().max(1) as f64;
    let balanced = nodes.iter().all(|n| {
        let (r, l) = per_node[&n.id];
        (r as f64 - ideal_replicas * n.capacity.max(1) as f64).abs() <= 1.0 && (l as f64 - ideal_leaders).abs() <= 1.0
    });
    Balance { per_node, ideal_replicas, ideal_leaders, balanced }
}

#[cfg(test)]
mod tests {
    use ringkv_proto::meta::{Epoch, Replica};

    use super::*;
    use crate::ring::initial_shards;

    fn node(id: u64, zone: &str) -> Node {
        Node { id, address: format!("127.0.0.1:{id}"), zone: zone.into(), capacity: 1, ..Default::default() }
    }

    /// A bootstrapped cluster of `nodes` with `shards` shards placed by the ring.
    fn cluster(nodes: &[Node], shards: u64) -> ClusterState {
        let mut st = ClusterState::default();
        let mut next = 1000;
        for (i, mut info) in initial_shards(nodes, shards, 3).into_iter().enumerate() {
            let d = info.shard.as_mut().unwrap();
            d.id = i as u64 + 1;
            for r in &mut d.replicas {
                next += 1;
                r.replica_id = next;
            }
            info.leader_node_id = d.replicas[0].node_id;
            st.shards.insert(d.id, info);
        }
        st.nodes = nodes.iter().map(|n| (n.id, n.clone())).collect();
        st.next_id = next + 1;
        st
    }

    struct Sim {
        st: ClusterState,
        down: BTreeMap<u64, Duration>,
        settings: PlacementSettings,
        moves: usize,
        /// Requests per second by shard, as leaders would report them.
        qps: HashMap<u64, f64>,
    }

    impl Sim {
        fn new(st: ClusterState) -> Sim {
            Sim { st, down: BTreeMap::new(), settings: PlacementSettings::default(), moves: 0, qps: HashMap::new() }
        }

        fn plan(&self) -> Plan {
            let nodes = self
                .st
                .nodes
                .values()
                .filter(|n| n.state != NodeState::Removed as i32)
                .map(|n| {
                    let mut n = n.clone();
                    let down_for = self.down.get(&n.id).copied();
                    if down_for.is_some() && n.state == NodeState::Up as i32 {
                        n.state = NodeState::Down as i32;
                    }
                    (n.id, NodeView { node: n, down_for })
                })
                .collect();
            self.with_view(nodes, |view| plan(view, 0))
        }

        /// Runs `f` on a view of the simulated cluster with `nodes`.
        fn with_view<R>(&self, nodes: BTreeMap<u64, NodeView>, f: impl FnOnce(&View<'_>) -> R) -> R {
            let (failed, cooldown) = (HashMap::new(), BTreeMap::new());
            f(&View {
                state: &self.st,
                nodes,
                failed: &failed,
                settings: &self.settings,
                leader_cooldown: &cooldown,
                shard_qps: &self.qps,
            })
        }

        /// Carries out every planned operator at once (as if it succeeded)
        /// and every transfer; how many operators there were.
        fn step(&mut self) -> usize {
            let plan = self.plan();
            for op in &plan.operators {
                let info = self.st.shards.get_mut(&op.shard_id).unwrap();
                let d = info.shard.as_mut().unwrap();
                d.replicas.retain(|r| r.node_id != op.from_node || op.from_node == 0);
                if op.to_node != 0 {
                    self.st.next_id += 1;
                    d.replicas.push(Replica { replica_id: self.st.next_id, node_id: op.to_node, role: 0 });
                }
                let e = d.epoch.get_or_insert(Epoch::default());
                e.conf_ver += 1;
                if !d.replicas.iter().any(|r| r.node_id == info.leader_node_id) {
                    info.leader_node_id = d.replicas[0].node_id;
                }
            }
            for t in &plan.transfers {
                self.st.shards.get_mut(&t.shard_id).unwrap().leader_node_id = t.to_node;
            }
            for id in &plan.drained {
                self.st.nodes.get_mut(id).unwrap().state = NodeState::Removed as i32;
            }
            self.moves += plan.operators.len();
            plan.operators.len() + plan.transfers.len() + plan.drained.len()
        }

        /// Steps until a pass plans nothing (bounded).
        fn settle(&mut self) {
            for _ in 0..500 {
                if self.step() == 0 {
                    return;
                }
            }
            panic!("the scheduler never settles: it oscillates");
        }

        fn measure(&self) -> Balance {
            let nodes = self
                .st
                .nodes
                .values()
                .filter(|n| n.state != NodeState::Removed as i32)
                .map(|n| (n.id, NodeView { node: n.clone(), down_for: None }))
                .collect();
            self.with_view(nodes, measure)
        }

        fn replicas_on(&self, node: u64) -> usize {
            self.st.replicas_on(node)
        }
    }

    #[test]
    fn a_fourth_node_gets_its_fair_share_with_the_ideal_number_of_moves_and_nothing_oscillates() {
        let three: Vec<Node> = (1..=3).map(|i| node(i, "")).collect();
        let mut sim = Sim::new(cluster(&three, 48));
        assert_eq!(sim.step(), 0, "a balanced cluster plans nothing");
        sim.st.nodes.insert(4, node(4, ""));
        sim.settle();
        // 144 replicas over 4 nodes: 36 each, so 36 moves are the ideal.
        assert!(sim.moves <= 40, "moves {} > 1.1 × the ideal 36", sim.moves);
        for n in 1..=4 {
            assert!(sim.replicas_on(n).abs_diff(36) <= 1, "node {n}: {} replicas", sim.replicas_on(n));
        }
        let b = sim.measure();
        assert!(b.balanced, "replicas and leaders within one of the ideal: {:?}", b.per_node);
        for d in sim.st.descriptors() {
            let nodes: BTreeSet<u64> = d.replicas.iter().map(|r| r.node_id).collect();
            assert_eq!(nodes.len(), 3, "shard {}: replicas on distinct nodes", d.id);
        }
        let before = sim.moves;
        sim.settle();
        assert_eq!(sim.moves, before, "a balanced cluster stays put");
    }

    /// Three nodes, six shards, two leaders per node (the first two shards
    /// on node 1); the shard ids in order.
    fn two_leaders_per_node() -> (Sim, Vec<u64>) {
        let three: Vec<Node> = (1..=3).map(|i| node(i, "")).collect();
        let mut sim = Sim::new(cluster(&three, 6));
        let ids: Vec<u64> = sim.st.shards.keys().copied().collect();
        for (i, id) in ids.iter().enumerate() {
            sim.st.shards.get_mut(id).unwrap().leader_node_id = 1 + (i as u64 / 2);
        }
        (sim, ids)
    }

    #[test]
    fn hot_leaders_spread_over_nodes_keeping_counts_balanced_and_nothing_oscillates() {
        // The two hot shards led by one node.
        let (mut sim, ids) = two_leaders_per_node();
        sim.qps = ids.iter().map(|id| (*id, 10.0)).collect();
        sim.qps.insert(ids[0], 1000.0);
        sim.qps.insert(ids[1], 1000.0);
        sim.settle();
        let leader = |id: u64| sim.st.shards[&id].leader_node_id;
        assert_ne!(leader(ids[0]), leader(ids[1]), "the hot shards are led by different nodes");
        let b = sim.measure();
        assert!(b.balanced, "leader counts stay balanced: {:?}", b.per_node);
    }

    #[test]
    fn idle_or_even_load_moves_no_leader() {
        let (mut sim, ids) = two_leaders_per_node();
        // Below the cluster-wide floor: noise.
        sim.qps = HashMap::from([(ids[0], 100.0)]);
        assert!(sim.plan().transfers.is_empty());
        // Even: every node serves the same.
        sim.qps = ids.iter().map(|id| (*id, 500.0)).collect();
        assert!(sim.plan().transfers.is_empty());
    }

    #[test]
    fn a_dead_node_is_repaired_only_after_its_down_timeout_and_only_where_a_replica_fits() {
        let four: Vec<Node> = (1..=4).map(|i| node(i, "")).collect();
        let mut sim = Sim::new(cluster(&four, 16));
        let held = sim.replicas_on(2);
        assert!(held > 0);
        sim.down.insert(2, Duration::from_secs(10));
        assert!(sim.plan().operators.is_empty(), "down for less than down_after: nothing moves");
        sim.down.insert(2, sim.settings.down_after);
        let plan = sim.plan();
        assert!(plan.operators.iter().all(|o| o.from_node == 2 && o.to_node != 2 && o.reason.starts_with("repair")));
        sim.settle();
        assert_eq!(sim.replicas_on(2), 0, "every replica of the dead node replaced");
        for d in sim.st.descriptors() {
            assert_eq!(d.replicas.len(), 3);
        }
        // A node in maintenance waits for the longer timeout.
        let mut sim = Sim::new(cluster(&four, 16));
        sim.st.nodes.get_mut(&3).unwrap().maintenance = true;
        sim.down.insert(3, sim.settings.down_after);
        assert!(sim.plan().operators.is_empty(), "planned downtime is not repaired at down_after");
        sim.down.insert(3, sim.settings.maintenance_down_after);
        assert!(!sim.plan().operators.is_empty());
    }

    #[test]
    fn with_three_nodes_and_one_dead_the_shards_are_blocked_with_a_reason_not_moved() {
        let three: Vec<Node> = (1..=3).map(|i| node(i, "")).collect();
        let mut sim = Sim::new(cluster(&three, 4));
        sim.down.insert(1, sim.settings.down_after * 2);
        let plan = sim.plan();
        assert!(plan.operators.is_empty());
        assert_eq!(plan.blocked.len(), 4);
        assert!(plan.blocked[0].1.contains("already holds a replica"), "{:?}", plan.blocked);
    }

    #[test]
    fn a_decommissioned_node_is_emptied_then_removed_and_leadership_leaves_it_first() {
        let four: Vec<Node> = (1..=4).map(|i| node(i, "")).collect();
        let mut sim = Sim::new(cluster(&four, 16));
        sim.st.nodes.get_mut(&4).unwrap().state = NodeState::Draining as i32;
        let plan = sim.plan();
        assert!(plan.operators.len() <= sim.settings.max_operators_per_node, "limits hold: {}", plan.operators.len());
        assert!(plan.transfers.iter().all(|t| t.from_node == 4 && t.reason == "decommission"));
        sim.settle();
        assert_eq!(sim.replicas_on(4), 0);
        assert_eq!(sim.st.nodes[&4].state, NodeState::Removed as i32);
        assert!(sim.st.shards.values().all(|s| s.leader_node_id != 4));
    }

    #[test]
    fn maintenance_moves_leaders_off_without_moving_replicas() {
        let four: Vec<Node> = (1..=4).map(|i| node(i, "")).collect();
        let mut sim = Sim::new(cluster(&four, 16));
        let held = sim.replicas_on(1);
        sim.st.nodes.get_mut(&1).unwrap().maintenance = true;
        sim.settle();
        assert_eq!(sim.replicas_on(1), held, "replicas stay");
        assert!(sim.st.shards.values().all(|s| s.leader_node_id != 1), "no shard led by the node in maintenance");
    }

    #[test]
    fn moves_keep_replicas_of_a_shard_in_distinct_zones() {
        let nodes = [node(1, "a"), node(2, "b"), node(3, "c"), node(4, "c")];
        let mut sim = Sim::new(cluster(&nodes[..3], 24));
        sim.st.nodes.insert(4, nodes[3].clone());
        sim.settle();
        assert!(sim.replicas_on(4) > 0, "the new node got replicas");
        for d in sim.st.descriptors() {
            let zones: BTreeSet<&str> = d.replicas.iter().map(|r| sim.st.nodes[&r.node_id].zone.as_str()).collect();
            assert_eq!(zones.len(), 3, "shard {}: {:?}", d.id, d.replicas);
        }
    }

    #[test]
    fn an_over_replicated_shard_loses_a_replica_and_an_under_replicated_one_gains_one() {
        let four: Vec<Node> = (1..=4).map(|i| node(i, "")).collect();
        let mut sim = Sim::new(cluster(&four, 2));
        let d1 = sim.st.shards.get_mut(&1).unwrap().shard.as_mut().unwrap();
        let spare = (1..=4).find(|n| !d1.replicas.iter().any(|r| r.node_id == *n)).unwrap();
        d1.replicas.push(Replica { replica_id: 9000, node_id: spare, role: 0 });
        sim.st.shards.get_mut(&2).unwrap().shard.as_mut().unwrap().replicas.pop();
        let plan = sim.plan();
        let kinds: BTreeSet<(u64, i32)> = plan.operators.iter().map(|o| (o.shard_id, o.kind)).collect();
        assert!(kinds.contains(&(1, OperatorKind::RemoveReplica as i32)), "{kinds:?}");
        assert!(kinds.contains(&(2, OperatorKind::AddReplica as i32)), "{kinds:?}");
        sim.settle();
        assert!(sim.st.descriptors().iter().all(|d| d.replicas.len() == 3));
    }
}
