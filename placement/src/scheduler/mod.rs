//! The placement leader's background work, every 200 ms while it leads:
//! bootstrap the initial shards once `replication_factor` storenodes are up,
//! drive every operator in flight one step (`driver`), and once a second run
//! the checkers (`checkers`) and carry out their plan: propose new operators,
//! ask shard leaders to transfer leadership, mark drained nodes REMOVED.
//!
//! Operators live in the replicated state, so a new leader picks them up
//! where the shards are; everything else here (when a node was last heard,
//! why a shard is blocked) is the leader's own and starts afresh with it.

pub mod checkers;
pub mod driver;
pub mod splitter;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ringkv_proto::placement::{
    placement_command::Op, AddOperator, AdvanceOperator, BootstrapShards, FinishOperator, Node, NodeState, Operator,
    OperatorOutcome, OperatorStep, SetNodeStateRequest,
};
use tokio::sync::watch;

use crate::metrics::NodeFigures;
use crate::operator::{kind_name, outcome_name};
use crate::ring::initial_shards;
use crate::service::PlacementService;
use crate::state::{ClusterState, Reply};
use crate::GROUP_ID;
use checkers::{NodeView, Plan, View};
use driver::{Driver, Outcome};

const INTERVAL: Duration = Duration::from_millis(200);
/// Checkers run every this many ticks.
const PLAN_EVERY: u32 = 5;
/// A shard whose leadership was moved is left alone this long (placement
/// learns the new leader from the next heartbeats).
const LEADER_COOLDOWN: Duration = Duration::from_secs(10);

/// What the scheduler tells the services (leader only).
#[derive(Default)]
pub struct SchedulerStatus {
    /// Shards that need a move nothing can make now, and why (last pass).
    pub blocked: Vec<(u64, String)>,
    /// Operator id -> what its last step attempt is waiting for.
    pub notes: HashMap<u64, String>,
}

pub use ringkv_common::cluster_view::now_ms;

/// The leader-local state of the scheduler.
struct Scheduler {
    svc: PlacementService,
    driver: Arc<Driver>,
    /// Operators with a step being driven right now.
    driving: Arc<Mutex<HashSet<u64>>>,
    /// Shard -> when its leadership was handed over, and to which node.
    leader_moved: HashMap<u64, (Instant, u64)>,
    ticks: u32,
}

/// Runs the leader's background loop every 200 ms until `stop` turns true.
pub async fn run(svc: PlacementService, mut stop: watch::Receiver<bool>) {
    let mut was_leader = false;
    let mut s = Scheduler {
        driver: svc.driver.clone(),
        svc,
        driving: Default::default(),
        leader_moved: HashMap::new(),
        ticks: 0,
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let leader = is_leader(&s.svc).await;
        s.svc.metrics.is_leader.set(leader as i64);
        if leader != was_leader {
            if !leader {
                s.svc.metrics.clear_cluster();
            }
            let mut live = s.svc.liveness.lock();
            live.last_seen.clear();
            live.failed.clear();
            live.since_leader = leader.then(Instant::now);
            *s.svc.scheduler.lock() = SchedulerStatus::default();
            tracing::info!(member = s.svc.member_id, leader, "placement leadership changed");
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        let st = s.svc.shared.state.read().clone();
        if !st.bootstrapped {
            maybe_bootstrap(&s.svc, &st).await;
            continue;
        }
        s.drive_all(&st);
        s.ticks += 1;
        if s.ticks.is_multiple_of(PLAN_EVERY) {
            s.plan_and_act(&st).await;
        }
    }
}

async fn is_leader(svc: &PlacementService) -> bool {
    let status = svc.loop_handle.status(vec![GROUP_ID]).await.unwrap_or_default();
    status.into_iter().next().is_some_and(|r| r.is_leader)
}

async fn maybe_bootstrap(svc: &PlacementService, st: &ClusterState) {
    // Only nodes heard from since this member became leader count.
    let ready: Vec<Node> = {
        let live = svc.liveness.lock();
        st.nodes
            .values()
            .filter(|n| n.state == NodeState::Up as i32 && live.last_seen.contains_key(&n.id))
            .cloned()
            .collect()
    };
    if ready.len() < svc.settings.replication_factor {
        return;
    }
    let shards = initial_shards(&ready, svc.settings.initial_shards, svc.settings.replication_factor);
    tracing::info!(nodes = ready.len(), shards = shards.len(), "bootstrapping the initial shards");
    if let Err(e) = svc.propose(Op::Bootstrap(BootstrapShards { shards })).await {
        tracing::warn!("bootstrap: {e}");
    }
}

/// The nodes as observed now (REMOVED ones left out), for the checkers.
pub fn node_views(svc: &PlacementService, st: &ClusterState) -> BTreeMap<u64, NodeView> {
    let live = svc.liveness.lock();
    st.nodes
        .values()
        .filter(|n| n.state != NodeState::Removed as i32)
        .map(|n| {
            let node = live.observed(n, svc.settings.shown_down_after());
            let down_for = (node.state == NodeState::Down as i32).then(|| live.silent_for(n.id));
            (n.id, NodeView { node, down_for })
        })
        .collect()
}

/// The storenodes observed down now.
pub fn down_nodes(nodes: &BTreeMap<u64, NodeView>) -> Vec<u64> {
    nodes.values().filter(|n| n.node.state == NodeState::Down as i32).map(|n| n.node.id).collect()
}

/// Sets the cluster's figures: nodes by state with their replicas and
/// leaders (removed nodes included, as `removed`), shards by health.
fn set_cluster_metrics(svc: &PlacementService, st: &ClusterState, views: &BTreeMap<u64, NodeView>) {
    let per_node = ringkv_common::cluster_view::node_counts(st.shards.values());
    let nodes: Vec<NodeFigures> = st
        .nodes
        .values()
        .map(|n| {
            let observed = views.get(&n.id).map(|v| &v.node);
            let state = match observed.map(|o| (NodeState::try_from(o.state), o.maintenance)) {
                None => "removed",
                Some((_, true)) => "maintenance",
                Some((Ok(NodeState::Down), _)) => "down",
                Some((Ok(NodeState::Draining), _)) => "draining",
                Some((Ok(NodeState::Removed), _)) => "removed",
                Some(_) => "up",
            };
            let c = per_node.get(&n.id).copied().unwrap_or_default();
            NodeFigures { id: n.id, state, replicas: c.replicas as u32, leaders: c.leaders as u32 }
        })
        .collect();
    let health =
        ringkv_common::shard_health::count(st.shards.values(), &down_nodes(views), svc.settings.replication_factor);
    svc.metrics.set_cluster(&nodes, st.shards.len() as u32, &health);
}

/// Plans a pass over `st` as this leader sees the nodes now.
pub fn plan(svc: &PlacementService, st: &ClusterState, cooldown: &BTreeMap<u64, u64>) -> Plan {
    let nodes = node_views(svc, st);
    let failed = svc.liveness.lock().failed.clone();
    let shard_qps: HashMap<u64, f64> = svc.liveness.lock().shard_stats.iter().map(|(id, x)| (*id, x.qps)).collect();
    let view = View {
        state: st,
        nodes,
        failed: &failed,
        settings: &svc.settings,
        leader_cooldown: cooldown,
        shard_qps: &shard_qps,
    };
    let plan = checkers::plan(&view, now_ms());
    let m = &svc.metrics;
    let balance = checkers::measure(&view);
    m.balanced
        .with_label_values(&[])
        .set(i64::from(balance.balanced && st.operators.is_empty() && plan.blocked.is_empty()));
    m.blocked.with_label_values(&[]).set(plan.blocked.len() as i64);
    set_cluster_metrics(svc, st, &view.nodes);
    for kind in ["move", "add", "remove"] {
        let n = st.operators.values().filter(|o| kind_name(o.kind) == kind).count();
        m.operators_in_flight.with_label_values(&[kind]).set(n as i64);
    }
    plan
}

impl Scheduler {
    /// Starts one step of every operator not already being driven.
    fn drive_all(&self, st: &ClusterState) {
        if st.operators.is_empty() {
            return;
        }
        // The driver sees nodes as observed (DOWN when silent): it does not
        // wait for a dead node to delete a replica it no longer serves.
        let mut st = st.clone();
        for (id, v) in node_views(&self.svc, &st) {
            if let Some(n) = st.nodes.get_mut(&id) {
                n.state = v.node.state;
            }
        }
        let st = &st;
        for op in st.operators.values() {
            if !self.driving.lock().insert(op.id) {
                continue;
            }
            let (svc, driver, driving, op, st) =
                (self.svc.clone(), self.driver.clone(), self.driving.clone(), op.clone(), st.clone());
            tokio::spawn(async move {
                step(&svc, &driver, &st, &op).await;
                driving.lock().remove(&op.id);
            });
        }
    }

    async fn plan_and_act(&mut self, st: &ClusterState) {
        self.leader_moved.retain(|_, (t, _)| t.elapsed() < LEADER_COOLDOWN);
        let cooldown: BTreeMap<u64, u64> = self.leader_moved.iter().map(|(s, (_, to))| (*s, *to)).collect();
        let plan = plan(&self.svc, st, &cooldown);
        self.svc.scheduler.lock().blocked = plan.blocked.clone();
        for op in plan.operators {
            let (shard, kind, reason) = (op.shard_id, kind_name(op.kind), op.reason.clone());
            match self.svc.propose(Op::AddOperator(AddOperator { operator: Some(op) })).await {
                Ok(Reply::Operator(o)) => tracing::info!(
                    op = o.id,
                    shard,
                    kind,
                    from = o.from_node,
                    to = o.to_node,
                    reason,
                    "operator created"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(shard, kind, "creating an operator: {}", e.message()),
            }
        }
        for t in plan.transfers {
            self.leader_moved.insert(t.shard_id, (Instant::now(), t.to_node));
            match self.driver.transfer_leader(st, t.from_node, t.shard_id, t.to_replica).await {
                Ok(()) => {
                    self.svc.metrics.leader_transfers.with_label_values(&[t.reason]).inc();
                    tracing::info!(
                        shard = t.shard_id,
                        from = t.from_node,
                        to = t.to_node,
                        reason = t.reason,
                        "leader transfer"
                    );
                }
                Err(e) => tracing::info!(shard = t.shard_id, "leader transfer: {e}"),
            }
        }
        let stats = self.svc.liveness.lock().shard_stats.clone();
        for p in splitter::split_candidates(st, &stats, &self.svc.settings) {
            if let Err(e) = splitter::split(&self.svc, &self.driver, st, p.shard_id, p.split_hash, p.reason).await {
                tracing::info!(shard = p.shard_id, reason = p.reason, "split: {}", e.message());
            }
            // Whatever happened, the next report of the shard decides again.
            self.svc.liveness.lock().shard_stats.remove(&p.shard_id);
        }
        for node_id in plan.drained {
            let req = SetNodeStateRequest { node_id, state: NodeState::Removed as i32, dry_run: false };
            match self.svc.propose(Op::SetState(req)).await {
                Ok(_) => tracing::info!(node_id, "decommissioned node holds no replica: REMOVED"),
                Err(e) => tracing::warn!(node_id, "marking a drained node REMOVED: {}", e.message()),
            }
        }
    }
}

/// Drives one step of `op` and records what it led to.
async fn step(svc: &PlacementService, driver: &Driver, st: &ClusterState, op: &Operator) {
    let s = &svc.settings;
    let elapsed = Duration::from_millis(now_ms().saturating_sub(op.step_unix_ms));
    let outcome = driver.drive(st, op, elapsed, s.operator_step_timeout, s.catch_up_timeout).await;
    let cmd = match outcome {
        Outcome::Wait(why) => {
            svc.scheduler.lock().notes.insert(op.id, why);
            return;
        }
        Outcome::Advance(step, shard) => Op::AdvanceOperator(AdvanceOperator {
            id: op.id,
            step: step as i32,
            unix_ms: now_ms(),
            shard,
            ..Default::default()
        }),
        Outcome::Rollback(reason) => {
            tracing::warn!(op = op.id, shard = op.shard_id, "operator rolls back: {reason}");
            Op::AdvanceOperator(AdvanceOperator {
                id: op.id,
                step: OperatorStep::Rollback as i32,
                unix_ms: now_ms(),
                rollback_reason: reason,
                ..Default::default()
            })
        }
        Outcome::Finish(outcome, shard) => {
            let cmd = Op::FinishOperator(FinishOperator { id: op.id, outcome: outcome as i32, shard });
            if svc.propose(cmd).await.is_ok() {
                svc.metrics.operators.with_label_values(&[kind_name(op.kind), outcome_name(outcome)]).inc();
                svc.scheduler.lock().notes.remove(&op.id);
                let level_ok = outcome == OperatorOutcome::Succeeded;
                tracing::info!(
                    op = op.id,
                    shard = op.shard_id,
                    ok = level_ok,
                    outcome = outcome_name(outcome),
                    "operator finished"
                );
            }
            return;
        }
    };
    svc.scheduler.lock().notes.remove(&op.id);
    if let Err(e) = svc.propose(cmd).await {
        tracing::warn!(op = op.id, "recording an operator step: {}", e.message());
    }
}
