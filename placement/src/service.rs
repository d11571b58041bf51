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
    placement_command::Op, ClusterStatusRequest, ClusterStatusResponse, GetShardMapRequest, ListNodesRequest,
    ListNodesResponse, Node, NodeHeartbeatRequest, NodeHeartbeatResponse, NodeState, PlacementCommand, PlacementMember,
    RegisterNodeRequest, RegisterNodeResponse, ReplicaAssignment, SetNodeStateRequest, SetNodeStateResponse, ShardInfo,
    ShardMap, ShardUpdates, WatchShardMapRequest,
};
use ringkv_raft::{LoopHandle, LoopRequest, ReadMode};
use ringkv_storenode::Error;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

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
}

impl Liveness {
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
}

/// An engine error as a gRPC status (typed details where the client can act).
pub fn to_status(e: ringkv_raft::Error) -> Status {
    let e: Error = e.into();
    e.into()
}

fn command_status(e: CommandError) -> Status {
    match e {
        CommandError::UnknownNode(_) => Status::not_found(e.to_string()),
        CommandError::NodeRemoved(_) => Status::failed_precondition(e.to_string()),
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
        res.map_err(to_status)?.map_err(command_status)
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

    fn map(&self, st: &ClusterState) -> ShardMap {
        let live = self.liveness.lock();
        ShardMap {
            version: st.version,
            shards: st.shards.values().cloned().collect(),
            nodes: st.nodes.values().map(|n| live.observed(n, self.settings.down_after)).collect(),
            bootstrapped: st.bootstrapped,
        }
    }

    /// Replicas `node_id` should host but did not report: the initial
    /// replicas of bootstrapped shards (created from the shard's first state).
    fn assignments(st: &ClusterState, node_id: u64, reported: &[u64]) -> Vec<ReplicaAssignment> {
        st.shards
            .values()
            .filter_map(|info| {
                let d = info.shard.as_ref()?;
                let r = d.replicas.iter().find(|r| r.node_id == node_id)?;
                if reported.contains(&d.id) {
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

type MapStream = Pin<Box<dyn Stream<Item = Result<ShardMap, Status>> + Send>>;

#[tonic::async_trait]
impl Placement for PlacementService {
    async fn register_node(&self, req: Request<RegisterNodeRequest>) -> Result<Response<RegisterNodeResponse>, Status> {
        let r = req.into_inner();
        if r.address.is_empty() || r.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!("address {:?}: expected HOST:PORT with an IP", r.address)));
        }
        match self.propose(Op::Register(r)).await? {
            Reply::Registered(node_id) => {
                self.liveness.lock().last_seen.insert(node_id, Instant::now());
                Ok(Response::new(RegisterNodeResponse { node_id }))
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
        self.liveness.lock().last_seen.insert(hb.node_id, Instant::now());
        // What the node's leaders report that placement does not know yet.
        let mut updates = Vec::new();
        for r in hb.replicas.iter().filter(|r| r.is_leader) {
            let Some(d) = &r.shard else { continue };
            let Some(cur) = st.shards.get(&d.id) else { continue };
            let info = ShardInfo { shard: Some(d.clone()), leader_node_id: hb.node_id, down_replicas: r.down_replicas };
            if *cur != info {
                updates.push(info);
            }
        }
        if !updates.is_empty() {
            self.propose(Op::UpdateShards(ShardUpdates { shards: updates })).await?;
        }
        let reported: Vec<u64> = hb.replicas.iter().filter_map(|r| r.shard.as_ref().map(|s| s.id)).collect();
        let st = self.shared.state.read();
        let nodes = st.nodes.values().filter(|n| n.state != NodeState::Removed as i32).cloned().collect();
        Ok(Response::new(NodeHeartbeatResponse { nodes, create: Self::assignments(&st, hb.node_id, &reported) }))
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
        if NodeState::try_from(r.state).is_err() {
            return Err(Status::invalid_argument(format!("unknown node state {}", r.state)));
        }
        match self.propose(Op::SetState(r)).await? {
            Reply::Node(n) => Ok(Response::new(SetNodeStateResponse { node: Some(n) })),
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
        let down: Vec<u64> = map.nodes.iter().filter(|n| n.state == NodeState::Down as i32).map(|n| n.id).collect();
        let under = map
            .shards
            .iter()
            .filter(|s| {
                let d = s.shard.as_ref();
                let voters = d.map_or(0, |d| d.replicas.iter().filter(|r| !down.contains(&r.node_id)).count());
                s.down_replicas > 0 || voters < self.settings.replication_factor
            })
            .count();
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
        Ok(Response::new(ClusterStatusResponse {
            map_version: st.version,
            bootstrapped: st.bootstrapped,
            placement,
            shards: map.shards.len() as u32,
            shards_with_leader: map.shards.iter().filter(|s| s.leader_node_id != 0).count() as u32,
            under_replicated: under as u32,
            replication_factor: self.settings.replication_factor as u32,
            nodes: map.nodes,
        }))
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
