//! The driver: performs an operator's current step against the storenodes
//! (Admin gRPC) and says what the step led to. It reads the shard's state
//! from its leader every time instead of remembering what it did, so a new
//! placement leader resumes an operator where the shard actually is, and a
//! step retried after a lost answer is harmless: creating a replica is
//! idempotent, and every membership change carries the epoch it was decided
//! at (a change made twice is refused the second time as stale).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use ringkv_common::wire_error::WireError;
use ringkv_proto::meta::{Replica, ReplicaRole, ShardDescriptor};
use ringkv_proto::placement::{NodeState, Operator, OperatorKind, OperatorOutcome, OperatorStep, ShardInfo};
use ringkv_proto::raft::admin_client::AdminClient;
use ringkv_proto::raft::{
    ChangeKind, ChangeReplicasRequest, CreateReplicaRequest, RemoveReplicaRequest, ReplicaChange, ReplicaStatus,
    ShardStatusRequest, TransferLeaderRequest,
};
use tonic::transport::Channel;

use crate::operator::step_name;
use crate::state::ClusterState;

/// A learner within this many entries of the leader's commit index has
/// caught up: the rest arrives with the next append.
const CATCH_UP_SLACK: u64 = 100;

/// What a step led to.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Nothing to record yet (waiting, or retrying): why.
    Wait(String),
    /// The operator reached `step`; the shard as it is now, if it changed.
    Advance(OperatorStep, Option<ShardInfo>),
    /// The operator must roll back: why.
    Rollback(String),
    /// The operator is over.
    Finish(OperatorOutcome, Option<ShardInfo>),
}

/// Connections to storenodes' Admin services and the step logic.
pub struct Driver {
    conns: Mutex<HashMap<String, AdminClient<Channel>>>,
    /// How long one Admin call may take.
    pub call_timeout: Duration,
}

impl Driver {
    /// A driver whose Admin calls give up after `call_timeout`.
    pub fn new(call_timeout: Duration) -> Driver {
        Driver { conns: Mutex::new(HashMap::new()), call_timeout }
    }

    async fn admin(&self, st: &ClusterState, node_id: u64) -> Result<AdminClient<Channel>, String> {
        let addr = st.nodes.get(&node_id).map(|n| n.address.clone()).ok_or(format!("node {node_id} is unknown"))?;
        if let Some(c) = self.conns.lock().get(&addr) {
            return Ok(c.clone());
        }
        let ch = tokio::time::timeout(self.call_timeout, ringkv_common::net::connect(&addr))
            .await
            .map_err(|_| format!("node {node_id} ({addr}): connect timed out"))?
            .map_err(|e| format!("node {node_id} ({addr}): {e}"))?;
        let c = AdminClient::new(ch);
        self.conns.lock().insert(addr, c.clone());
        Ok(c)
    }

    /// Runs one Admin call on `node_id` with the call timeout.
    async fn call<T, F, Fut>(&self, st: &ClusterState, node_id: u64, f: F) -> Result<T, CallError>
    where
        F: FnOnce(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let failed = |message: String, wire: Option<WireError>| CallError { node: node_id, message, wire };
        let c = self.admin(st, node_id).await.map_err(|e| failed(e, None))?;
        match tokio::time::timeout(self.call_timeout, f(c)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(failed(s.message().to_string(), Some(WireError::from_status(&s)))),
            Err(_) => Err(failed(format!("no answer in {:?}", self.call_timeout), None)),
        }
    }

    /// The status of shard `shard_id` from its leader: the node placement
    /// last saw leading first, then every node of the shard.
    pub async fn leader_status(&self, st: &ClusterState, shard_id: u64) -> Result<(u64, ReplicaStatus), String> {
        let info = st.shards.get(&shard_id).ok_or(format!("shard {shard_id} is unknown"))?;
        let mut nodes = vec![info.leader_node_id];
        nodes.extend(info.shard.iter().flat_map(|d| d.replicas.iter().map(|r| r.node_id)));
        let mut last = format!("no replica of shard {shard_id} answered");
        let mut tried = Vec::new();
        for node in nodes.into_iter().filter(|n| *n != 0) {
            if tried.contains(&node) || node_down(st, node) {
                continue;
            }
            tried.push(node);
            let req = ShardStatusRequest { shard_ids: vec![shard_id] };
            match self.call(st, node, |mut c| async move { c.shard_status(req).await }).await {
                Ok(resp) => {
                    if let Some(r) = resp.replicas.into_iter().find(|r| r.is_leader) {
                        return Ok((node, r));
                    }
                    last = format!("shard {shard_id} has no leader on node {node}");
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// Performs `op`'s current step once. `elapsed` is the time spent in the
    /// step so far; `step_timeout` and `catch_up_timeout` bound it.
    pub async fn drive(
        &self,
        st: &ClusterState,
        op: &Operator,
        elapsed: Duration,
        step_timeout: Duration,
        catch_up_timeout: Duration,
    ) -> Outcome {
        let step = OperatorStep::try_from(op.step).unwrap_or(OperatorStep::Rollback);
        let rollable = matches!(step, OperatorStep::AddLearner | OperatorStep::CatchUp);
        let (leader_node, status) = match self.leader_status(st, op.shard_id).await {
            Ok(s) => s,
            Err(e) if rollable && elapsed > step_timeout => return Outcome::Rollback(e),
            Err(e) if step == OperatorStep::Rollback && elapsed > step_timeout => {
                // Nothing reachable to undo on: the learner, if any, is
                // removed by the repair checker or its node's clean-up.
                tracing::warn!(op = op.id, "rollback without a reachable leader: {e}");
                return Outcome::Finish(rolled_back(op), None);
            }
            Err(_) if step == OperatorStep::RemoveOld && elapsed > step_timeout => {
                return Outcome::Finish(OperatorOutcome::Succeeded, None);
            }
            Err(e) => return Outcome::Wait(e),
        };
        let Some(d) = status.shard.clone() else { return Outcome::Wait("leader sent no descriptor".into()) };
        let info = |d: ShardDescriptor| ShardInfo { shard: Some(d), leader_node_id: leader_node, down_replicas: 0 };
        if d.epoch.map(|e| e.version) != op.epoch.map(|e| e.version) && rollable {
            return Outcome::Rollback("the shard's range changed".into());
        }
        let find = |id: u64| d.replicas.iter().find(|r| r.replica_id == id && id != 0).cloned();
        let (to, from) = (find(op.to_replica), find(op.from_replica));
        let is_voter = |r: &Option<Replica>| r.as_ref().is_some_and(|r| r.role == ReplicaRole::Voter as i32);
        let res = match step {
            OperatorStep::AddLearner => {
                if to.is_some() {
                    return Outcome::Advance(OperatorStep::CatchUp, Some(info(d)));
                }
                if elapsed > step_timeout {
                    return Outcome::Rollback(format!("the learner was not added within {step_timeout:?}"));
                }
                self.add_learner(st, op, leader_node, &d)
                    .await
                    .map(|d| Outcome::Advance(OperatorStep::CatchUp, Some(info(d))))
            }
            OperatorStep::CatchUp => {
                if to.is_none() {
                    return Outcome::Rollback("the learner is no longer a member".into());
                }
                let matched = status.progress.get(&op.to_replica).copied().unwrap_or(0);
                if matched > 0 && matched + CATCH_UP_SLACK >= status.commit_index {
                    return Outcome::Advance(OperatorStep::Promote, None);
                }
                if elapsed > catch_up_timeout {
                    return Outcome::Rollback(format!(
                        "the learner did not catch up within {catch_up_timeout:?} (at {matched} of {})",
                        status.commit_index
                    ));
                }
                Ok(Outcome::Wait(format!("catching up: at {matched} of {}", status.commit_index)))
            }
            OperatorStep::Promote => {
                self.promote(st, op, leader_node, &status, &d, &to, &from).await.map(|o| match o {
                    Some(d) if op.kind == OperatorKind::AddReplica as i32 => {
                        Outcome::Finish(OperatorOutcome::Succeeded, Some(info(d)))
                    }
                    Some(d) => Outcome::Advance(OperatorStep::RemoveOld, Some(info(d))),
                    None => Outcome::Wait(format!("moving leadership off node {}", op.from_node)),
                })
            }
            OperatorStep::RemoveOld => {
                if from.is_some() {
                    return Outcome::Wait(format!("replica {} is still a member", op.from_replica));
                }
                let removed = self.remove_replica(st, op.from_node, op.shard_id).await;
                match removed {
                    Ok(()) => Ok(Outcome::Finish(OperatorOutcome::Succeeded, Some(info(d)))),
                    // A node that is down deletes it when it comes back
                    // (placement lists it as stale in its heartbeat answer).
                    Err(_) if node_down(st, op.from_node) || elapsed > step_timeout => {
                        Ok(Outcome::Finish(OperatorOutcome::Succeeded, Some(info(d))))
                    }
                    Err(e) => Err(e),
                }
            }
            OperatorStep::Rollback => {
                if is_voter(&to) {
                    // Promoted before the rollback was decided: the move is done.
                    return Outcome::Finish(OperatorOutcome::Succeeded, Some(info(d)));
                }
                if let Some(r) = to {
                    self.change(st, leader_node, &d, vec![(ChangeKind::Remove, r)]).await.map(|d| {
                        Outcome::Wait(format!(
                            "learner removed (shard at conf {})",
                            d.epoch.unwrap_or_default().conf_ver
                        ))
                    })
                } else {
                    if let Err(e) = self.remove_replica(st, op.to_node, op.shard_id).await {
                        tracing::info!(
                            op = op.id,
                            "rollback: the learner's replica stays for its node's clean-up: {e}"
                        );
                    }
                    Ok(Outcome::Finish(rolled_back(op), Some(info(d))))
                }
            }
        };
        res.unwrap_or_else(|e| {
            if rollable && elapsed > step_timeout {
                Outcome::Rollback(e)
            } else {
                Outcome::Wait(format!("{}: {e}", step_name(op.step)))
            }
        })
    }

    async fn add_learner(
        &self,
        st: &ClusterState,
        op: &Operator,
        leader_node: u64,
        d: &ShardDescriptor,
    ) -> Result<ShardDescriptor, String> {
        let create = CreateReplicaRequest {
            shard: Some(d.clone()),
            replica_id: op.to_replica,
            bootstrap: false,
            campaign: false,
        };
        self.call(st, op.to_node, |mut c| async move { c.create_replica(create).await }).await?;
        let learner = Replica { replica_id: op.to_replica, node_id: op.to_node, role: ReplicaRole::Learner as i32 };
        self.change(st, leader_node, d, vec![(ChangeKind::AddLearner, learner)]).await
    }

    /// The membership change of PROMOTE; `None` when leadership had to move
    /// off the leaving replica first (asked, not yet done).
    #[allow(clippy::too_many_arguments)]
    async fn promote(
        &self,
        st: &ClusterState,
        op: &Operator,
        leader_node: u64,
        status: &ReplicaStatus,
        d: &ShardDescriptor,
        to: &Option<Replica>,
        from: &Option<Replica>,
    ) -> Result<Option<ShardDescriptor>, String> {
        let kind = OperatorKind::try_from(op.kind).unwrap_or(OperatorKind::MoveReplica);
        let to_voter = to.as_ref().is_some_and(|r| r.role == ReplicaRole::Voter as i32);
        let adds = kind != OperatorKind::RemoveReplica;
        let removes = kind != OperatorKind::AddReplica;
        if (!adds || to_voter) && (!removes || from.is_none()) {
            return Ok(Some(d.clone()));
        }
        if removes && from.is_some() && status.replica_id == op.from_replica {
            self.transfer_away(st, leader_node, d, op.from_replica).await?;
            return Ok(None);
        }
        let mut changes = Vec::new();
        if adds && !to_voter {
            let Some(mut r) = *to else { return Err("the learner is not a member".into()) };
            r.role = ReplicaRole::Voter as i32;
            changes.push((ChangeKind::AddVoter, r));
        }
        if let (true, Some(r)) = (removes, *from) {
            changes.push((ChangeKind::Remove, r));
        }
        self.change(st, leader_node, d, changes).await.map(Some)
    }

    /// Asks the leader to hand leadership to another voter, on a live node.
    async fn transfer_away(
        &self,
        st: &ClusterState,
        leader_node: u64,
        d: &ShardDescriptor,
        leaving: u64,
    ) -> Result<(), String> {
        let to = d
            .replicas
            .iter()
            .filter(|r| r.replica_id != leaving && r.role == ReplicaRole::Voter as i32)
            .min_by_key(|r| (node_down(st, r.node_id), st.nodes.get(&r.node_id).is_some_and(|n| n.maintenance)))
            .ok_or("no other voter to take the leadership")?;
        self.transfer_leader(st, leader_node, d.id, to.replica_id).await
    }

    /// Asks `leader_node` to hand shard `shard_id`'s leadership to `to_replica`.
    pub async fn transfer_leader(
        &self,
        st: &ClusterState,
        leader_node: u64,
        shard_id: u64,
        to_replica: u64,
    ) -> Result<(), String> {
        let req = TransferLeaderRequest { shard_id, to_replica_id: to_replica };
        self.call(st, leader_node, |mut c| async move { c.transfer_leader(req).await }).await?;
        Ok(())
    }

    async fn change(
        &self,
        st: &ClusterState,
        leader_node: u64,
        d: &ShardDescriptor,
        changes: Vec<(ChangeKind, Replica)>,
    ) -> Result<ShardDescriptor, String> {
        let req = ChangeReplicasRequest {
            shard_id: d.id,
            epoch: d.epoch,
            changes: changes.into_iter().map(|(k, r)| ReplicaChange { kind: k as i32, replica: Some(r) }).collect(),
        };
        let resp = self.call(st, leader_node, |mut c| async move { c.change_replicas(req).await }).await?;
        resp.shard.ok_or_else(|| "the leader answered without a descriptor".to_string())
    }

    /// Asks the shard's leader on `leader_node` to split it.
    pub async fn split(
        &self,
        st: &ClusterState,
        leader_node: u64,
        req: ringkv_proto::raft::SplitShardRequest,
    ) -> Result<ringkv_proto::raft::SplitShardResponse, CallError> {
        self.call(st, leader_node, |mut c| async move { c.split_shard(req).await }).await
    }

    /// Deletes `node_id`'s replica of `shard_id` (tombstoned there).
    pub async fn remove_replica(&self, st: &ClusterState, node_id: u64, shard_id: u64) -> Result<(), String> {
        let req = RemoveReplicaRequest { shard_id };
        match self.call(st, node_id, |mut c| async move { c.remove_replica(req).await }).await {
            Ok(_) => Ok(()),
            // Already gone (a retried step): done.
            Err(CallError { wire: Some(WireError::ShardNotFound(_)), .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// An Admin call that failed: on which node, and the storenode's typed error
/// when it answered with one.
#[derive(Debug)]
pub struct CallError {
    /// The node called.
    pub node: u64,
    /// What went wrong, for humans.
    pub message: String,
    /// The storenode's error, when it answered.
    pub wire: Option<WireError>,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {}: {}", self.node, self.message)
    }
}

impl From<CallError> for tonic::Status {
    /// For placement's own callers: a request the storenode refused as
    /// malformed is theirs to fix; a stale epoch is worth retrying; anything
    /// else is the node's unavailability.
    fn from(e: CallError) -> tonic::Status {
        match &e.wire {
            Some(WireError::InvalidArgument { .. }) => tonic::Status::invalid_argument(e.to_string()),
            Some(WireError::EpochMismatch(_)) => tonic::Status::aborted(e.to_string()),
            _ => tonic::Status::unavailable(e.to_string()),
        }
    }
}

impl From<CallError> for String {
    fn from(e: CallError) -> String {
        e.to_string()
    }
}

fn rolled_back(op: &Operator) -> OperatorOutcome {
    if op.cancelled {
        OperatorOutcome::Cancelled
    } else {
        OperatorOutcome::RolledBack
    }
}

fn node_down(st: &ClusterState, node: u64) -> bool {
    // The scheduler hands the driver the observed states: DOWN when silent.
    st.nodes.get(&node).is_none_or(|n| n.state == NodeState::Removed as i32 || n.state == NodeState::Down as i32)
}
