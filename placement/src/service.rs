//! The Placement gRPC service. Writes (registration, heartbeats, node state)
//! go through the placement group's Raft log and are answered by the leader;
//! a follower answers `NotLeader` with the leader's address. The shard map is
//! served by any member from its applied state (routers correct a stale map
//! through `EpochMismatch`), and watched through a stream of whole maps.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ringkv_proto::placement::placement_server::Placement;
use ringkv_proto::placement::{
    placement_command::Op, AdvanceOperator, BlockedShard, CancelOperatorRequest, CancelOperatorResponse,
    ClusterStatusRequest, ClusterStatusResponse, GetShardMapRequest, ListNodesRequest, ListNodesResponse,
    ListOperatorsRequest, ListOperatorsResponse, MoveReplicaRequest, MoveReplicaResponse, Node, NodeHeartbeatRequest,
    NodeHeartbeatResponse, NodeLoad, NodeState, Operator, OperatorKind, OperatorStep, PlacementCommand,
    PlacementMember, PlannedMove, RegisterNodeRequest, RegisterNodeResponse, ReplicaAssignment, ReplicaReport,
    SetClusterId, SetMaintenanceRequest, SetMaintenanceResponse, SetNodeStateRequest, SetNodeStateResponse, ShardInfo,
    ShardMap, ShardStat, ShardUpdates, SplitShardRequest, SplitShardResponse, StaleReplica, WatchShardMapRequest,
};
use ringkv_raft::{LoopHandle, LoopRequest, ReadMode};
use ringkv_storenode::Error;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use ringkv_common::hashing::ranges_overlap;
use ringkv_proto::meta::ShardDescriptor;

use crate::metrics::SchedulerMetrics;
use crate::scheduler::driver::Driver;
use crate::scheduler::splitter::{self, ShardStats};
use crate::scheduler::{self, SchedulerStatus};
use crate::state::{ClusterState, CommandError, PlacementStateMachine, Reply, Shared};
use crate::{PlacementSettings, GROUP_ID};

/// Leader-local liveness: when each storenode was last heard from. A new
/// leader starts empty and gives every node a full timeout before calling it down.
#[derive(Default)]
pub struct Liveness {
    /// When this member became leader; `None` while it is not the leader.
    pub since_leader: Option<Instant>,
    /// Node id -> when its last heartbeat arrived.
    pub last_seen: HashMap<u64, Instant>,
    /// Replicas their nodes report fenced off: (shard id, replica id) -> why.
    pub failed: HashMap<(u64, u64), String>,
    /// What shard leaders last reported of their shard's size and load.
    pub shard_stats: HashMap<u64, ShardStats>,
}

impl Liveness {
    /// How long node `id` has been silent (since this member leads, at most).
    pub fn silent_for(&self, id: u64) -> Duration {
        self.last_seen.get(&id).copied().or(self.since_leader).map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// The node as clients should see it: stored state, or DOWN when silent.
    pub fn observed(&self, n: &Node, down_after: Duration) -> Node {
        let mut n = n.clone();
        let seen = self.last_seen.get(&n.id).copied();
        n.last_heartbeat_ago_ms = seen.map_or(0, |t| t.elapsed().as_millis() as u64);
        let silent_since = seen.or(self.since_leader);
        let silent = silent_since.is_none_or(|t| t.elapsed() > down_after);
        if n.state == NodeState::Up as i32 && silent {
            n.state = NodeState::Down as i32;
        }
        n
    }
}

/// The Placement gRPC service of one placement member.
#[derive(Clone)]
pub struct PlacementService {
    pub(crate) member_id: u64,
    pub(crate) loop_handle: LoopHandle<PlacementStateMachine>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) liveness: Arc<Mutex<Liveness>>,
    pub(crate) settings: PlacementSettings,
    /// Placement members: id -> gRPC address.
    pub(crate) members: Arc<HashMap<u64, String>>,
    /// What the scheduler found on its last pass (leader only).
    pub(crate) scheduler: Arc<Mutex<SchedulerStatus>>,
    /// The scheduler's metrics.
    pub(crate) metrics: Arc<SchedulerMetrics>,
    /// Connections to storenodes' Admin services (the scheduler's, and
    /// splits asked by hand).
    pub(crate) driver: Arc<Driver>,
}

/// An engine error as a gRPC status (typed details where the client can act).
pub fn to_status(e: ringkv_raft::Error) -> Status {
    let e: Error = e.into();
    e.into()
}

fn command_status(e: CommandError) -> Status {
    match e {
        CommandError::UnknownNode(_) | CommandError::UnknownShard(_) | CommandError::UnknownOperator(_) => {
            Status::not_found(e.to_string())
        }
        CommandError::IdentityMismatch(_) => Status::already_exists(e.to_string()),
        CommandError::NodeRemoved(_) | CommandError::WrongCluster { .. } | CommandError::Conflict(_) => {
            Status::failed_precondition(e.to_string())
        }
        CommandError::Invalid(_) => Status::invalid_argument(e.to_string()),
    }
}

impl PlacementService {
    /// Proposes a command and waits for it to apply.
    pub(crate) async fn propose(&self, op: Op) -> Result<Reply, Status> {
        let cmd = PlacementCommand { op: Some(op) };
        let deadline = std::time::Instant::now() + self.settings.request_timeout;
        let call = self.loop_handle.call(|cb| LoopRequest::Propose { group_id: GROUP_ID, cmd, deadline, cb });
        let res = tokio::time::timeout(self.settings.request_timeout + ringkv_raft::ANSWER_GRACE, call)
            .await
            .map_err(|_| Status::deadline_exceeded("placement: no answer in time (outcome unknown)"))?;
        res.map_err(to_status)?.value.map_err(command_status)
    }

    /// Ok when this member leads the placement group right now; otherwise the
    /// typed NotLeader error with the leader's address.
    pub(crate) async fn ensure_leader(&self) -> Result<(), Status> {
        let deadline = std::time::Instant::now() + self.settings.request_timeout;
        let call =
            self.loop_handle.call(|cb| LoopRequest::Read { group_id: GROUP_ID, mode: ReadMode::Leader, deadline, cb });
        match tokio::time::timeout(self.settings.request_timeout + ringkv_raft::ANSWER_GRACE, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(to_status(e)),
            Err(_) => Err(Status::unavailable("placement: no quorum in time")),
        }
    }

    /// The cluster's id, set by the first registration that needs it.
    async fn cluster_id(&self) -> Result<u64, Status> {
        let id = self.shared.state.read().cluster_id;
        if id != 0 {
            return Ok(id);
        }
        // 63 bits: storenodes keep it in TOML, whose integers are signed.
        let candidate = (rand::random::<u64>() >> 1).max(1);
        match self.propose(Op::SetClusterId(SetClusterId { cluster_id: candidate })).await? {
            Reply::ClusterId(id) => Ok(id),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Refuses to decommission `node_id` when fewer than the replication
    /// factor of UP nodes would remain (CockroachDB's and PD's pre-check).
    fn check_decommission(&self, st: &ClusterState, node_id: u64) -> Result<(), Status> {
        let node = st.nodes.get(&node_id).ok_or(CommandError::UnknownNode(node_id)).map_err(command_status)?;
        if node.state == NodeState::Removed as i32 {
            return Err(command_status(CommandError::NodeRemoved(node_id)));
        }
        let views = scheduler::node_views(self, st);
        let up: Vec<u64> = views
            .values()
            .filter(|v| v.node.id != node_id && v.node.state == NodeState::Up as i32)
            .map(|v| v.node.id)
            .collect();
        let rf = self.settings.replication_factor;
        if up.len() < rf {
            return Err(Status::failed_precondition(format!(
                "decommissioning node {node_id} would leave {} UP nodes ({up:?}), fewer than the replication factor {rf}: \
                 its replicas would have nowhere to go; add a node first. Nothing changed.",
                up.len()
            )));
        }
        Ok(())
    }

    /// The moves decommissioning `node_id` asks for, as the scheduler would
    /// plan them now (ignoring how many it runs at once).
    fn drain_plan(&self, st: &ClusterState, node_id: u64) -> Vec<PlannedMove> {
        let mut st = st.clone();
        if let Some(n) = st.nodes.get_mut(&node_id) {
            n.state = NodeState::Draining as i32;
        }
        let mut svc = self.clone();
        svc.settings.max_operators = usize::MAX;
        svc.settings.max_operators_per_node = usize::MAX;
        svc.settings.max_snapshots_per_node = usize::MAX;
        let plan = scheduler::plan(&svc, &st, &Default::default());
        let mut moves: Vec<PlannedMove> = plan
            .operators
            .into_iter()
            .filter(|o| o.from_node == node_id)
            .map(|o| PlannedMove { shard_id: o.shard_id, from_node: node_id, to_node: o.to_node, reason: o.reason })
            .collect();
        for (shard_id, reason) in plan.blocked {
            if st
                .shards
                .get(&shard_id)
                .and_then(|s| s.shard.as_ref())
                .is_some_and(|d| d.replicas.iter().any(|r| r.node_id == node_id))
            {
                moves.push(PlannedMove { shard_id, from_node: node_id, to_node: 0, reason });
            }
        }
        moves
    }

    fn map(&self, st: &ClusterState) -> ShardMap {
        let live = self.liveness.lock();
        ShardMap {
            version: st.version,
            shards: st.shards.values().cloned().collect(),
            nodes: st.nodes.values().map(|n| live.observed(n, self.settings.shown_down_after())).collect(),
            bootstrapped: st.bootstrapped,
        }
    }

    /// Replicas `node_id` should host but did not report: the initial
    /// replicas of bootstrapped shards (created from the shard's first
    /// state), and those of a split's new shard on a node that will not
    /// apply the split itself (created empty, caught up by snapshot). Not
    /// while the node reports a replica whose range overlaps: that is the
    /// unsplit parent, which creates the replica when it applies the split.
    fn assignments(st: &ClusterState, node_id: u64, reports: &[ReplicaReport]) -> Vec<ReplicaAssignment> {
        // A fenced-off replica's descriptor may be unreadable (the whole
        // ring): it blocks nothing.
        let local: Vec<&ShardDescriptor> =
            reports.iter().filter(|r| r.failure.is_empty()).filter_map(|r| r.shard.as_ref()).collect();
        st.shards
            .values()
            .filter_map(|info| {
                let d = info.shard.as_ref()?;
                let r = d.replicas.iter().find(|r| r.node_id == node_id)?;
                if local.iter().any(|l| l.id == d.id || ranges_overlap(l.start, l.end, d.start, d.end)) {
                    return None;
                }
                let initial = d.epoch.is_some_and(|e| e.conf_ver == 1 && e.version == 1);
                Some(ReplicaAssignment {
                    shard: Some(d.clone()),
                    replica_id: r.replica_id,
                    bootstrap: initial,
                    campaign: initial && info.leader_node_id == 0 && d.replicas.first() == Some(r),
                })
            })
            .collect()
    }
}

/// Replicas a node reports that placement's view of their shard has moved
/// past: not a member of the shard's newer configuration and not the learner
/// of an operator in flight. A replica whose own configuration is as new as
/// placement's and contains itself is left alone (placement may lag).
fn stale_replicas(st: &ClusterState, reports: &[ReplicaReport]) -> Vec<StaleReplica> {
    let mut out = Vec::new();
    for r in reports {
        let Some(local) = &r.shard else { continue };
        let Some(d) = st.shards.get(&local.id).and_then(|s| s.shard.as_ref()) else { continue };
        if d.replicas.iter().any(|m| m.replica_id == r.replica_id) {
            continue;
        }
        if st.operators.values().any(|o| o.shard_id == d.id && o.to_replica == r.replica_id) {
            continue;
        }
        let conf = |d: &ringkv_proto::meta::ShardDescriptor| d.epoch.unwrap_or_default().conf_ver;
        let knows_itself = local.replicas.iter().any(|m| m.replica_id == r.replica_id);
        if knows_itself && conf(local) >= conf(d) {
            continue;
        }
        out.push(StaleReplica { shard_id: d.id, replica_id: r.replica_id });
    }
    out
}

type MapStream = Pin<Box<dyn Stream<Item = Result<ShardMap, Status>> + Send>>;

#[tonic::async_trait]
impl Placement for PlacementService {
    async fn register_node(&self, req: Request<RegisterNodeRequest>) -> Result<Response<RegisterNodeResponse>, Status> {
        let r = req.into_inner();
        if r.address.is_empty() || r.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!("address {:?}: expected HOST:PORT with an IP", r.address)));
        }
        let cluster_id = self.cluster_id().await?;
        match self.propose(Op::Register(r)).await? {
            Reply::Registered(node_id) => {
                self.liveness.lock().last_seen.insert(node_id, Instant::now());
                Ok(Response::new(RegisterNodeResponse { node_id, cluster_id }))
            }
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn node_heartbeat(
        &self,
        req: Request<NodeHeartbeatRequest>,
    ) -> Result<Response<NodeHeartbeatResponse>, Status> {
        self.ensure_leader().await?;
        let hb = req.into_inner();
        let st = self.shared.state.read().clone();
        match st.nodes.get(&hb.node_id) {
            None => return Err(Status::not_found(format!("node {} is not registered", hb.node_id))),
            Some(n) if n.state == NodeState::Removed as i32 => {
                return Err(Status::failed_precondition(format!("node {} was removed", hb.node_id)))
            }
            Some(_) => {}
        }
        {
            let mut live = self.liveness.lock();
            live.last_seen.insert(hb.node_id, Instant::now());
            let node_shards: Vec<u64> = hb.replicas.iter().filter_map(|r| r.shard.as_ref().map(|d| d.id)).collect();
            live.failed.retain(|(shard, replica), _| {
                // Entries of this node's replicas are replaced by this report.
                !(node_shards.contains(shard)
                    && st.shards.get(shard).and_then(|s| s.shard.as_ref()).is_some_and(|d| {
                        d.replicas.iter().any(|r| r.replica_id == *replica && r.node_id == hb.node_id)
                    }))
            });
            for r in hb.replicas.iter().filter(|r| !r.failure.is_empty()) {
                if let Some(d) = &r.shard {
                    live.failed.insert((d.id, r.replica_id), r.failure.clone());
                }
            }
        }
        // What the node's leaders report that placement does not know yet.
        let mut updates = Vec::new();
        for r in hb.replicas.iter().filter(|r| r.is_leader) {
            let Some(d) = &r.shard else { continue };
            let version = d.epoch.unwrap_or_default().version;
            let qps = r.reads_per_sec + r.writes_per_sec;
            self.liveness.lock().shard_stats.entry(d.id).or_default().update(
                version,
                r.approximate_bytes,
                qps,
                r.load_split_hash,
                &self.settings,
            );
            if !st.shards.contains_key(&d.id) {
                // A shard a split made, reported by its leader before
                // placement recorded the split's answer.
                updates.push(ShardInfo {
                    shard: Some(d.clone()),
                    leader_node_id: hb.node_id,
                    down_replicas: r.down_replicas,
                });
                continue;
            }
            let Some(cur) = st.shards.get(&d.id) else { continue };
            let info = ShardInfo { shard: Some(d.clone()), leader_node_id: hb.node_id, down_replicas: r.down_replicas };
            if *cur != info {
                updates.push(info);
            }
        }
        if !updates.is_empty() {
            self.propose(Op::UpdateShards(ShardUpdates { shards: updates })).await?;
        }
        let st = self.shared.state.read();
        let nodes = st.nodes.values().filter(|n| n.state != NodeState::Removed as i32).cloned().collect();
        let remove = stale_replicas(&st, &hb.replicas);
        for r in &remove {
            tracing::info!(
                node = hb.node_id,
                shard = r.shard_id,
                replica = r.replica_id,
                "stale replica: asking its node to delete it"
            );
        }
        Ok(Response::new(NodeHeartbeatResponse {
            nodes,
            create: Self::assignments(&st, hb.node_id, &hb.replicas),
            remove,
        }))
    }

    async fn get_shard_map(&self, _: Request<GetShardMapRequest>) -> Result<Response<ShardMap>, Status> {
        let st = self.shared.state.read().clone();
        Ok(Response::new(self.map(&st)))
    }

    type WatchShardMapStream = MapStream;

    async fn watch_shard_map(&self, req: Request<WatchShardMapRequest>) -> Result<Response<MapStream>, Status> {
        let mut known = req.into_inner().known_version;
        let mut rx = self.shared.version.subscribe();
        let this = self.clone();
        let stream = async_stream_map(move |tx| async move {
            loop {
                let map = {
                    let st = this.shared.state.read().clone();
                    (st.version > known).then(|| this.map(&st))
                };
                if let Some(m) = map {
                    known = m.version;
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn list_nodes(&self, _: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        self.ensure_leader().await?;
        let st = self.shared.state.read().clone();
        Ok(Response::new(ListNodesResponse { nodes: self.map(&st).nodes }))
    }

    async fn set_node_state(
        &self,
        req: Request<SetNodeStateRequest>,
    ) -> Result<Response<SetNodeStateResponse>, Status> {
        let r = req.into_inner();
        let Ok(state) = NodeState::try_from(r.state) else {
            return Err(Status::invalid_argument(format!("unknown node state {}", r.state)));
        };
        let mut plan = Vec::new();
        if state == NodeState::Draining {
            self.ensure_leader().await?;
            let st = self.shared.state.read().clone();
            self.check_decommission(&st, r.node_id)?;
            plan = self.drain_plan(&st, r.node_id);
        }
        if r.dry_run {
            let st = self.shared.state.read().clone();
            let node = st
                .nodes
                .get(&r.node_id)
                .cloned()
                .ok_or(CommandError::UnknownNode(r.node_id))
                .map_err(command_status)?;
            return Ok(Response::new(SetNodeStateResponse { node: Some(node), plan }));
        }
        match self.propose(Op::SetState(r)).await? {
            Reply::Node(n) => Ok(Response::new(SetNodeStateResponse { node: Some(n), plan })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn cluster_status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        self.ensure_leader().await?;
        let st = self.shared.state.read().clone();
        let map = self.map(&st);
        let placement = self
            .members
            .iter()
            .map(|(&id, addr)| PlacementMember {
                id,
                address: addr.clone(),
                is_leader: id == self.member_id,
                reachable: true,
            })
            .collect();
        let failed = self.liveness.lock().failed.clone();
        let nodes = scheduler::node_views(self, &st);
        let health = ringkv_common::shard_health::count(
            &map.shards,
            &scheduler::down_nodes(&nodes),
            self.settings.replication_factor,
        );
        let (under, leaderless) = (health.under_replicated, health.leaderless);
        let view = crate::scheduler::checkers::View {
            state: &st,
            nodes,
            failed: &failed,
            settings: &self.settings,
            leader_cooldown: &Default::default(),
            shard_qps: &Default::default(),
        };
        let balance = crate::scheduler::checkers::measure(&view);
        let blocked = self.scheduler.lock().blocked.len();
        Ok(Response::new(ClusterStatusResponse {
            map_version: st.version,
            bootstrapped: st.bootstrapped,
            placement,
            shards: map.shards.len() as u32,
            shards_with_leader: map.shards.iter().filter(|s| s.leader_node_id != 0).count() as u32,
            under_replicated: under,
            replication_factor: self.settings.replication_factor as u32,
            nodes: map.nodes,
            leaderless,
            operators: st.operators.values().cloned().collect(),
            loads: balance
                .per_node
                .iter()
                .map(|(&node_id, &(replicas, leaders))| NodeLoad { node_id, replicas, leaders })
                .collect(),
            ideal_replicas: balance.ideal_replicas,
            ideal_leaders: balance.ideal_leaders,
            balanced: balance.balanced && st.operators.is_empty() && under == 0 && blocked == 0,
            shard_stats: {
                let live = self.liveness.lock();
                let mut stats: Vec<ShardStat> = st
                    .shards
                    .keys()
                    .filter_map(|id| live.shard_stats.get(id).map(|x| (id, x)))
                    .map(|(&shard_id, x)| ShardStat { shard_id, approximate_bytes: x.bytes, qps: x.qps })
                    .collect();
                stats.sort_by_key(|x| x.shard_id);
                stats
            },
        }))
    }

    async fn set_maintenance(
        &self,
        req: Request<SetMaintenanceRequest>,
    ) -> Result<Response<SetMaintenanceResponse>, Status> {
        match self.propose(Op::SetMaintenance(req.into_inner())).await? {
            Reply::Node(n) => Ok(Response::new(SetMaintenanceResponse { node: Some(n) })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn list_operators(
        &self,
        _: Request<ListOperatorsRequest>,
    ) -> Result<Response<ListOperatorsResponse>, Status> {
        self.ensure_leader().await?;
        let st = self.shared.state.read().clone();
        let sched = self.scheduler.lock();
        let operators = st
            .operators
            .values()
            .map(|o| {
                let mut o = o.clone();
                o.waiting_for = sched.notes.get(&o.id).cloned().unwrap_or_default();
                o
            })
            .collect();
        let blocked = sched
            .blocked
            .iter()
            .map(|(shard_id, reason)| BlockedShard { shard_id: *shard_id, reason: reason.clone() })
            .collect();
        Ok(Response::new(ListOperatorsResponse { operators, blocked }))
    }

    async fn cancel_operator(
        &self,
        req: Request<CancelOperatorRequest>,
    ) -> Result<Response<CancelOperatorResponse>, Status> {
        let id = req.into_inner().id;
        let cmd = AdvanceOperator {
            id,
            step: OperatorStep::Rollback as i32,
            unix_ms: scheduler::now_ms(),
            rollback_reason: "cancelled by an operator".into(),
            cancelled: true,
            shard: None,
        };
        match self.propose(Op::AdvanceOperator(cmd)).await? {
            Reply::Operator(o) => Ok(Response::new(CancelOperatorResponse { operator: Some(o) })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn move_replica(&self, req: Request<MoveReplicaRequest>) -> Result<Response<MoveReplicaResponse>, Status> {
        let r = req.into_inner();
        self.ensure_leader().await?;
        let st = self.shared.state.read().clone();
        // DOWN is observed, not stored: checked here, on the leader.
        let views = scheduler::node_views(self, &st);
        if views.get(&r.to_node).is_some_and(|v| v.node.state == NodeState::Down as i32) {
            return Err(Status::failed_precondition(format!("node {} is DOWN: it cannot take a replica", r.to_node)));
        }
        let op = Operator {
            shard_id: r.shard_id,
            kind: OperatorKind::MoveReplica as i32,
            from_node: r.from_node,
            to_node: r.to_node,
            created_unix_ms: scheduler::now_ms(),
            reason: "operator request".into(),
            ..Default::default()
        };
        crate::operator::validate(&st, &op).map_err(command_status)?;
        match self.propose(Op::AddOperator(ringkv_proto::placement::AddOperator { operator: Some(op) })).await? {
            Reply::Operator(o) => Ok(Response::new(MoveReplicaResponse { operator: Some(o) })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn split_shard(&self, req: Request<SplitShardRequest>) -> Result<Response<SplitShardResponse>, Status> {
        let r = req.into_inner();
        self.ensure_leader().await?;
        let st = self.shared.state.read().clone();
        let resp = splitter::split(self, &self.driver, &st, r.shard_id, r.split_hash, "manual").await?;
        Ok(Response::new(resp))
    }
}

/// A stream fed by a task: the task ends when the receiver is dropped.
fn async_stream_map<F, Fut>(f: F) -> MapStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<ShardMap, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
